//! Golden tests of streams jobs: each `tests/golden/*.sql` file holds a job's SQL, its
//! input micro-batches and the messages it must produce. `UPDATE_EXPECT=1` rewrites the
//! expected sections from what the job produced (review the diff).
//!
//! File format: sections start with `== sql`, `== input` (one micro-batch: lines of
//! `<queue id> <json body>`; several sections are several batches, in order) and
//! `== queues N` (the topic has N queues: one that has delivered nothing holds the watermark
//! back), `== idle Q` (queue Q is idle: it stops holding the watermark back; both take a
//! `topic/` prefix for another table's topic, as input lines do),
//! `== restart` (checkpoint the job to a file, plan it anew and restore it: state must
//! survive) and `== expected` (one line per produced message: `<kind> <topic> key=<key>
//! <body>`, with the reason for dead-lettered and late rows; `discarded N rows` for the
//! results a micro-batch gave blackhole tables).

use std::path::Path;

use weir_streams::checkpoint::{self, Offsets};
use weir_streams::{Job, parse_job};

#[tokio::test]
async fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "golden files missing in {}", dir.display());
    let mut failures = Vec::new();
    for file in files {
        if let Err(failure) = check(&file).await {
            failures.push(format!("{}: {failure}", file.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Runs one golden file; `Err` describes the difference.
async fn check(file: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(file).unwrap();
    let (mut sql, mut batches, mut expected) = (String::new(), Vec::<Step>::new(), None::<String>);
    let mut section = "";
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("== ") {
            section = name.trim();
            match section {
                "input" => batches.push(Step::Input(Vec::new())),
                "restart" => batches.push(Step::Restart),
                other if other.starts_with("queues ") => {
                    let (topic, count) = topic_prefixed(&other[7..]);
                    batches.push(Step::Queues(topic, count.parse().expect("== queues [topic/]<count>")))
                }
                other if other.starts_with("idle ") => {
                    let (topic, queue) = topic_prefixed(&other[5..]);
                    batches.push(Step::Idle(topic, queue.parse().expect("== idle [topic/]<queue id>")))
                }
                "expected" => expected = Some(String::new()),
                "sql" => {}
                other => panic!("{}: unknown section {other}", file.display()),
            }
            continue;
        }
        match section {
            "sql" => {
                sql.push_str(line);
                sql.push('\n');
            }
            "input" if !line.trim().is_empty() => {
                let (place, body) = line.split_once(' ').expect("input lines are `[<topic>/]<queue> <json>`");
                let (topic, queue) = place.rsplit_once('/').map_or((None, place), |(t, q)| (Some(t.to_string()), q));
                let Some(Step::Input(batch)) = batches.last_mut() else { panic!("input line outside == input") };
                batch.push((topic, queue.parse().expect("queue id"), body.to_string()));
            }
            "expected" => {
                let expected = expected.as_mut().unwrap();
                expected.push_str(line);
                expected.push('\n');
            }
            _ => {}
        }
    }
    let actual = match run(&sql, &batches).await {
        Ok(actual) => actual,
        Err(error) => format!("error {error}\n"),
    };
    let expected = expected.unwrap_or_default();
    if actual.trim_end() == expected.trim_end() {
        return Ok(());
    }
    if std::env::var_os("UPDATE_EXPECT").is_some() {
        let head = text.split("\n== expected").next().unwrap().trim_end();
        std::fs::write(file, format!("{head}\n== expected\n{actual}")).unwrap();
        return Ok(());
    }
    Err(format!("expected:\n{expected}\nactual:\n{actual}"))
}

/// One step of a golden file.
enum Step {
    /// A micro-batch: (topic, queue id, body) lines; the topic defaults to the first table's.
    Input(Vec<(Option<String>, u32, String)>),
    /// Checkpoint to a file, plan the job anew and restore it from the file.
    Restart,
    /// Declare a topic's queue count (default: the first table's): unseen queues hold the
    /// watermark back.
    Queues(Option<String>, u32),
    /// Report a queue idle, then let the job emit what the watermark closed.
    Idle(Option<String>, u32),
}

/// `topic/rest` → (Some(topic), rest); `rest` → (None, rest).
fn topic_prefixed(text: &str) -> (Option<String>, &str) {
    match text.trim().split_once('/') {
        Some((topic, rest)) => (Some(topic.to_string()), rest),
        None => (None, text.trim()),
    }
}

/// Plans the job and feeds it the batches; every produced message as one line.
async fn run(sql: &str, steps: &[Step]) -> Result<String, String> {
    let parsed = parse_job(sql).map_err(|e| e.to_string())?;
    let mut job = Job::plan_with("golden", &parsed, &[shout()]).await.map_err(|e| e.to_string())?;
    // Input lines without a topic go to the first stream (not lookup) table's.
    let topic = job.source_topics().into_iter().map(|(t, _)| t).find(|t| !job.is_lookup_topic(t)).unwrap_or_default();
    let mut out = String::new();
    let dir = tempfile::tempdir().unwrap();
    for step in steps {
        let batch = match step {
            Step::Input(batch) => batch,
            Step::Queues(step_topic, count) => {
                job.declare_queues(step_topic.as_ref().unwrap_or(&topic), *count);
                continue;
            }
            Step::Idle(step_topic, queue) => {
                let step_topic = step_topic.as_ref().unwrap_or(&topic);
                job.set_queue_idle(step_topic, *queue, true);
                let output = job.advance(step_topic).await.map_err(|e| e.to_string())?;
                print_output(&mut out, &output);
                continue;
            }
            Step::Restart => {
                let file = checkpoint::path(dir.path(), "golden");
                let snapshot = job.snapshot().map_err(|e| e.to_string())?;
                let fingerprint = checkpoint::sql_fingerprint(&parsed);
                checkpoint::save(&file, "golden", &fingerprint, &Offsets::default(), &snapshot)
                    .map_err(|e| e.to_string())?;
                job = Job::plan_with("golden", &parsed, &[shout()]).await.map_err(|e| e.to_string())?;
                let layout = job.state_layout().map_err(|e| e.to_string())?;
                let (_, snapshot) =
                    checkpoint::load(&file, "golden", &fingerprint, &layout).map_err(|e| e.to_string())?.unwrap();
                job.restore(snapshot).map_err(|e| e.to_string())?;
                out.push_str("restarted\n");
                continue;
            }
        };
        // One micro-batch per (topic, queue), in the order each first appears.
        let mut places: Vec<(String, u32)> = Vec::new();
        for (line_topic, queue, _) in batch {
            let place = (line_topic.clone().unwrap_or_else(|| topic.clone()), *queue);
            if !places.contains(&place) {
                places.push(place);
            }
        }
        for (place_topic, queue) in places {
            let bodies: Vec<&[u8]> = batch
                .iter()
                .filter(|(t, q, _)| t.as_deref().unwrap_or(&topic) == place_topic && *q == queue)
                .map(|(_, _, b)| b.as_bytes())
                .collect();
            let output = job.process(&place_topic, queue, &bodies).await.map_err(|e| e.to_string())?;
            print_output(&mut out, &output);
        }
    }
    Ok(out)
}

/// One line per produced message.
fn print_output(out: &mut String, output: &weir_streams::JobOutput) {
    for (kind, messages) in [("result", &output.results), ("dlq", &output.dead_letters), ("late", &output.late)] {
        for message in messages {
            let key = message.keys.first().map(String::as_str).unwrap_or("-");
            let reason = message.properties.get("STREAMS_REASON").map(|r| format!(" ({r})")).unwrap_or_default();
            let body = String::from_utf8_lossy(&message.body);
            out.push_str(&format!("{kind} {} key={key} {body}{reason}\n", message.topic));
        }
    }
    if output.discarded_rows > 0 {
        out.push_str(&format!("discarded {} rows\n", output.discarded_rows));
    }
}

mod runner;

/// A caller's UDF for the golden files: `shout('a')` is `A!`.
fn shout() -> weir_streams::datafusion::logical_expr::ScalarUDF {
    use std::sync::Arc;

    use weir_streams::datafusion::arrow::array::{Array, StringArray};
    use weir_streams::datafusion::arrow::datatypes::DataType;
    use weir_streams::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
    create_udf(
        "shout",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let array = args[0].to_array(1)?;
            let texts = weir_streams::datafusion::arrow::array::as_string_array(&array);
            let shouted: StringArray = (0..texts.len())
                .map(|row| texts.is_valid(row).then(|| format!("{}!", texts.value(row).to_uppercase())))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(shouted)))
        }),
    )
}
