//! Pipeline files: every file under `pipelines/` validates, and bad files get an error that
//! names the file, line and field.

use std::path::Path;
use std::process::Command;

/// Runs `weir validate` on `path` with extra environment variables.
fn validate(path: &Path, env: &[(&str, &str)]) -> (bool, String, String) {
    let output =
        Command::new(env!("CARGO_BIN_EXE_weir")).arg("validate").arg(path).envs(env.iter().copied()).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_pipeline_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "pipelines/ holds the example pipelines");
    for file in files {
        let (ok, stdout, stderr) = validate(&file, &[]);
        assert!(ok, "{}: {stderr}", file.display());
        assert!(stdout.starts_with("ok: pipeline "), "{stdout}");
    }
}

/// A valid base the cases below break one line of.
const BASE: &str = "pipeline: p
topics:
  orders: { queues: 2 }
sources:
  web:
    type: http
    listen: 127.0.0.1:8080
    routes:
      - path: /v1/orders
        topic: orders
        format: ndjson
        tag: \"{{kind}}\"
sinks:
  out:
    type: file
    topic: orders
    tags: \"paid || refunded\"
    path: ./out.jsonl
";

/// (replace this, with this, environment, expected `file:line:column: …` tail or None for ok)
type Case = (&'static str, &'static str, &'static [(&'static str, &'static str)], Option<&'static str>);

#[test]
fn bad_pipelines_name_file_line_and_field() {
    let cases: &[Case] = &[
        ("pipeline: p", "pipeline: p", &[], None),
        ("pipeline: p", "pipeline: p\nbogus: 1", &[], Some(":2:1: bogus: unknown field `bogus`")),
        ("sinks:\n  out:", "sinks:\n  web:", &[], Some(":14:3: sinks.web: the name is already used in sources")),
        // Positions match whole keys and values: `topic: ord` is not the route's `topic: orders`.
        ("    topic: orders\n    tags", "    topic: ord\n    tags", &[], Some(":16:5: sinks.out.topic: topic \"ord\"")),
        ("    path: ./out.jsonl", "    path: ./out.jsonl\n    colour: red", &[], Some(":19:5: colour: unknown field")),
        ("    type: http", "    type: kafka", &[], Some(":6:5: type: unknown variant `kafka`")),
        (
            "    topic: orders\n    tags",
            "    topic: missing\n    tags",
            &[],
            Some(":16:5: sinks.out.topic: topic \"missing\""),
        ),
        (
            "  orders: { queues: 2 }",
            "  orders: { queues: 2 }\n  bad.name: {}",
            &[],
            Some(":4:3: topics.bad.name: invalid topic name"),
        ),
        ("{ queues: 2 }", "{ queues: 0 }", &[], Some("topics.orders.queues: 0 is not in 1..=1024")),
        (
            "127.0.0.1:8080",
            "localhost",
            &[],
            Some(":7:5: sources.web.listen: \"localhost\" is not an `ip:port` address"),
        ),
        ("paid || refunded", "paid || ", &[], Some(":17:5: sinks.out.tags: invalid tag expression")),
        ("{{kind}}", "{{kind", &[], Some(":12:9: sources.web.routes[0].tag: \"{{kind\" opens `{{`")),
        ("format: ndjson", "format: text", &[], Some("sources.web.routes[0].tag: plain text lines have no fields")),
        (
            "path: /v1/orders",
            "path: v1/orders",
            &[],
            Some("sources.web.routes[0].path: \"v1/orders\" must start with `/`"),
        ),
        (
            "pipeline: p",
            "pipeline: p\nbroker: { namesrv: 127.0.0.1:9876 }",
            &[],
            Some("broker.namesrv: a remote broker"),
        ),
        ("path: /v1/orders", "path: /v1/:id", &[], Some("sources.web.routes[0].path: \"/v1/:id\"")),
        ("  out:\n    type: file", "  o.ut:\n    type: file", &[], Some(":14:3: sinks.o.ut: a name is")),
        ("127.0.0.1:8080", "${WEB_LISTEN}", &[("WEB_LISTEN", "127.0.0.1:9999")], None),
        ("127.0.0.1:8080", "${UNSET_WEIR_TEST_VAR:-127.0.0.1:1}", &[], None),
        (
            "127.0.0.1:8080",
            "${UNSET_WEIR_TEST_VAR}",
            &[],
            Some(":7:13: environment variable UNSET_WEIR_TEST_VAR is not set"),
        ),
        ("127.0.0.1:8080", "${BAD-NAME}", &[], Some(":7:13: `${BAD-NAME}` is not a valid environment variable name")),
        // Values are text: escaped in quoted scalars, refused where YAML would read them
        // otherwise, never looked for in comments.
        ("pipeline: p", "pipeline: p # export ${UNSET_WEIR_TEST_VAR} first", &[], None),
        (
            "127.0.0.1:8080",
            "${WEB_LISTEN}",
            &[("WEB_LISTEN", "127.0.0.1:1 #x")],
            Some(
                ":7:13: environment variable WEB_LISTEN holds ` #` or a tab, so it would not read back as itself here; quote it",
            ),
        ),
        ("127.0.0.1:8080", "${WEB_LISTEN}", &[("WEB_LISTEN", "*anchor")], Some("starts with a YAML indicator")),
        ("    path: ./out.jsonl", "    path: \"${OUT_PATH}\"", &[("OUT_PATH", "./a \"b\" \\c #d.jsonl")], None),
        ("    path: ./out.jsonl", "    path: '${OUT_PATH}'", &[("OUT_PATH", "./it's.jsonl")], None),
        ("    path: ./out.jsonl", "    path: \"${OUT_PATH}\"", &[("OUT_PATH", "./a\nb.jsonl")], None),
        ("    path: ./out.jsonl", "    path: ./out.jsonl\n    errors: { tolerance: all }", &[], None),
        (
            "    path: ./out.jsonl",
            "    path: ./out.jsonl\n    errors: { tolerance: some }",
            &[],
            Some(":19:15: tolerance: unknown variant `some`"),
        ),
        (
            "    path: ./out.jsonl",
            "    path: ./out.jsonl\n    batch:\n      records_max: 0",
            &[],
            Some(":20:7: sinks.out.batch.records_max: must be in 1..=10000"),
        ),
        (
            "    path: ./out.jsonl",
            "    path: ./out.jsonl\n    batch: { records_max: 100, linger_ms: 250 }\n    retry: { backoff_initial_ms: 500, backoff_max_ms: 100 }",
            &[],
            Some(":20:39: sinks.out.retry.backoff_max_ms: is 100ms; must be in backoff_initial (500ms)"),
        ),
        (
            "    path: ./out.jsonl",
            "    path: ./out.jsonl\n    batch: { records: 5 }",
            &[],
            Some("unknown field `records`"),
        ),
        ("    type: file", "    type: mysql", &[], Some(":18:5: sinks.out.path: unknown field `path`")),
        (
            "type: file\n    topic: orders\n    tags: \"paid || refunded\"\n    path: ./out.jsonl",
            "type: mysql\n    topic: orders\n    url: mysql://u:p@127.0.0.1/db\n    table: t\n    mode: merge",
            &[],
            Some(":19:5: sinks.out.mode: unknown variant `merge`"),
        ),
        (
            "type: file\n    topic: orders\n    tags: \"paid || refunded\"\n    path: ./out.jsonl",
            "type: mysql\n    topic: orders\n    url: mysql://u:p@127.0.0.1/db\n    table: t\n    mode: upsert",
            &[],
            Some(":14:3: sinks.out.key_columns: must name the row's key columns"),
        ),
        (
            "type: file\n    topic: orders\n    tags: \"paid || refunded\"\n    path: ./out.jsonl",
            "type: redis\n    topic: orders\n    url: redis://127.0.0.1/\n    command: hset\n    key: \"k:{{id\"",
            &[],
            Some(":19:5: sinks.out.key: template \"k:{{id\" has `{{` without `}}`"),
        ),
        (
            "type: file\n    topic: orders\n    tags: \"paid || refunded\"\n    path: ./out.jsonl",
            "type: doris\n    topic: orders\n    url: http://fe:8030\n    database: db\n    table: t",
            &[],
            Some("missing field `username`"),
        ),
        (
            "type: file\n    topic: orders\n    tags: \"paid || refunded\"\n    path: ./out.jsonl",
            "type: elasticsearch\n    topic: orders\n    url: http://es:9200\n    index: logs-%Q",
            &[],
            Some("sinks.out.index: template \"logs-%Q\" has an invalid % date pattern"),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (index, (from, to, env, expected)) in cases.iter().enumerate() {
        assert!(BASE.contains(from), "case {index}: base lacks {from:?}");
        let file = dir.path().join(format!("case{index}.yaml"));
        std::fs::write(&file, BASE.replacen(from, to, 1)).unwrap();
        let (ok, stdout, stderr) = validate(&file, env);
        match expected {
            None => assert!(ok, "case {index} should validate: {stderr}"),
            Some(tail) => {
                assert!(!ok, "case {index} should fail: {stdout}");
                let line = stderr.trim();
                assert!(line.starts_with(&format!("error: {}", file.display())), "case {index}: {line}");
                assert!(line.contains(tail), "case {index}: expected {tail:?} in {line}");
                assert_eq!(line.lines().count(), 1, "case {index}: one line: {line}");
            }
        }
    }
}

#[test]
fn block_scalars_are_text_and_do_not_change_how_later_values_are_quoted() {
    // The SQL has quotes after `,` and `-` and a `#`, which a YAML scanner must not take for
    // the start of a quoted scalar or a comment: the value after it still gets escaped.
    let pipeline = r#"pipeline: p
topics:
  logs: { queues: 1 }
  stats: { queues: 1 }
sources:
  web:
    type: http
    listen: 127.0.0.1:8080
    routes:
      - { path: /v1/logs, topic: logs, format: ndjson, timestamp_field: ts }
streams:
  counts:
    sql: |
      CREATE TABLE logs (domain TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'logs');
      INSERT INTO stats
      SELECT concat_ws(',', domain, '-') AS d, window_start, count(*) AS n # ${TAG_PART}
      FROM TUMBLE(logs, ts, INTERVAL '1' MINUTE) WHERE domain <> '-'
      GROUP BY domain, window_start, window_end;
sinks:
  out:
    type: file
    topic: stats
    path: "${OUT_PATH}"
"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("block.yaml");
    std::fs::write(&file, pipeline).unwrap();
    let env = [("TAG_PART", "x"), ("OUT_PATH", r#"./a "b" \c.jsonl"#)];
    let (ok, stdout, stderr) = validate(&file, &env);
    assert!(ok, "{stdout}{stderr}");
}
