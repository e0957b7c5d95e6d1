//! The CLI on an embedded data directory: each case is a command, its exit status and text
//! its stdout (or stderr, for failures) must contain.

use super::weir;

/// Runs the cases in order against one data directory.
fn check(cases: &[(&[&str], bool, &[&str])]) {
    let dir = tempfile::tempdir().unwrap();
    for (args, success, expected) in cases {
        let output = weir(dir.path(), args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.success(), *success, "weir {args:?}\nstdout: {stdout}\nstderr: {stderr}");
        let text = if *success { stdout.to_string() } else { stderr.to_string() };
        for needle in *expected {
            assert!(text.contains(needle), "weir {args:?}: expected {needle:?} in\n{text}\nstderr: {stderr}");
        }
        if !success {
            let errors: Vec<&str> = stderr.lines().filter(|line| line.starts_with("error:")).collect();
            assert_eq!(errors.len(), 1, "one-line error for {args:?}: {stderr}");
            assert_eq!(stderr.trim().lines().last(), Some(errors[0]), "the error is the last line: {stderr}");
        }
    }
}

#[test]
fn topic_send_consume_query_and_offsets() {
    check(&[
        (&["topic", "create", "orders", "--queues", "2"], true, &["created topic orders with 2 queues"]),
        (&["topic", "create", "orders"], false, &["error: topic \"orders\" already exists"]),
        (&["topic", "create", "bad name"], false, &["invalid topic name \"bad name\""]),
        (&["topic", "list"], true, &["orders\tqueues=2"]),
        (&["send", "--topic", "orders", "--tag", "paid", "--key", "o-1", "hello"], true, &["sent id=", "offset=0"]),
        (
            &["send", "--topic", "orders", "--tag", "new", "--key", "o-2", "--sharding-key", "x", "world"],
            true,
            &["sent"],
        ),
        (&["send", "--topic", "missing", "x"], false, &["topic \"missing\" does not exist"]),
        (&["send", "--topic", "orders", "--property", "novalue", "x"], false, &["is not name=value"]),
        (
            &["consume", "--topic", "orders", "--group", "g1", "--tag-expression", "paid"],
            true,
            &["tag=paid keys=o-1 body=hello"],
        ),
        (&["consume", "--topic", "orders", "--group", "g1"], true, &[]),
        (&["group", "offsets", "--group", "g1", "--topic", "orders"], true, &["lag=0"]),
        (&["group", "offsets", "--group", "g1", "--topic", "orders", "--reset", "earliest"], true, &["committed=0"]),
        (
            &["group", "offsets", "--group", "g1", "--topic", "orders", "--reset", "soon"],
            false,
            &["not earliest, latest"],
        ),
        (&["consume", "--topic", "orders", "--group", "g1"], true, &["body=hello", "body=world"]),
        (&["message", "query", "--topic", "orders", "--key", "o-2"], true, &["body=world"]),
        (&["message", "query", "--topic", "orders", "--id", "nope"], false, &["message not found"]),
        (&["topic", "describe", "orders"], true, &["queue 0", "queue 1", "max_offset="]),
        (&["topic", "delete", "orders"], true, &["deleted topic orders"]),
        (&["topic", "describe", "orders"], false, &["does not exist"]),
        (&["consume", "--topic"], false, &[]),
    ]);
}

#[test]
fn tour_runs_and_reruns() {
    check(&[
        (&["tour"], true, &["created topic tour-orders", "query by key order-1001", "body={\"order\":\"order-1001\""]),
        (&["tour"], true, &["already exists"]),
    ]);
}

#[test]
fn a_second_process_is_refused_with_the_holder_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = weir_broker::BrokerConfig::new(dir.path());
    config.store.segment_size_bytes = 1 << 20;
    config.store.message_size_max_bytes = 1 << 19;
    let broker = weir_broker::Broker::open(config).unwrap();
    let output = weir(dir.path(), &["topic", "list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("locked by another process (pid {})", std::process::id())), "{stderr}");
    broker.close().unwrap();
}

#[test]
fn storage_benchmark_prints_one_json_line_with_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench");
    let output = weir(
        dir.path(),
        &["bench", "storage", "--messages", "3000", "--producers", "4", "--dir", bench_dir.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let line: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "msgs_per_sec",
        "mb_per_sec",
        "append_p50_us",
        "append_p99_us",
        "consume_msgs_per_sec",
        "baseline_mb_per_sec",
        "ratio",
    ] {
        // A tiny run can round a ratio towards zero, never below it.
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0 || (key == "ratio" && v >= 0.0)), "{key} in {line}");
    }
    assert_eq!(line["messages"], 3000);
    assert!(!bench_dir.join("store").exists(), "the benchmark cleans up its store");
}

#[test]
fn ingest_benchmark_prints_one_json_line_with_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let bench_dir = dir.path().join("bench");
    let args = ["bench", "ingest", "--duration-secs", "1", "--connections", "2", "--dir", bench_dir.to_str().unwrap()];
    let output = weir(dir.path(), &args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["mib_per_sec", "events_per_sec", "request_p99_ms", "cpu_cores_used", "baseline_mib_per_sec", "ratio"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0 || key == "ratio"), "{key} in {line}");
    }
    assert!(line["events"].as_u64().unwrap() > 0);
}

#[test]
fn sql_queries_topics_of_json_messages() {
    check(&[
        (&["topic", "create", "app-logs", "--queues", "2"], true, &[]),
        (&["send", "--topic", "app-logs", r#"{"level":"info","ms":5}"#], true, &[]),
        (&["send", "--topic", "app-logs", r#"{"level":"error","ms":7}"#], true, &[]),
        (&["send", "--topic", "app-logs", r#"{"level":"error","ms":9}"#], true, &[]),
        (&["send", "--topic", "app-logs", "not json"], true, &[]),
        (
            &["sql", r#"SELECT level, count(*) AS n, sum(ms) AS total FROM "app-logs" GROUP BY level ORDER BY level"#],
            true,
            &["| error | 2 | 16    |", "| info  | 1 | 5     |"],
        ),
        (&["sql", "--explain", r#"SELECT level FROM "app-logs""#], true, &["logical_plan", "TableScan: app-logs"]),
        (&["topic", "create", "one", "--queues", "1"], true, &[]),
        (&["send", "--topic", "one", r#"{"n":1}"#], true, &[]),
        (&["send", "--topic", "one", r#"{"n":2}"#], true, &[]),
        (&["send", "--topic", "one", r#"{"n":3}"#], true, &[]),
        (&["sql", "--from", "latest", "--limit", "2", "SELECT sum(n) AS total FROM one"], true, &["| 5     |"]),
        (&["sql", "SELECT * FROM missing"], false, &["no topic named \"missing\""]),
        (&["sql", "SELEKT 1"], false, &["error:"]),
        (&["sql", "--from", "soon", "SELECT 1"], false, &["use earliest, latest or a time in ms"]),
    ]);
}

#[test]
fn nexmark_benchmark_prints_one_json_line_with_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let output = weir(dir.path(), &["bench", "nexmark", "--query", "q1", "--events", "20000"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    for key in ["events_per_sec", "events_per_sec_per_core", "baseline_events_per_sec", "ratio", "cpu_cores_used"] {
        assert!(line[key].as_f64().is_some_and(|v| v > 0.0), "{key} in {line}");
    }
    // q1 converts every bid: one result per bid read.
    assert_eq!(line["results"], line["events_read"], "{line}");
    assert!(line["events_read"].as_u64().unwrap() > 15_000, "{line}");
    // The windowed queries (hot items, highest bid, new users): the job emits as many results
    // as the batch baseline (the command fails otherwise).
    for query in ["q5", "q7", "q8"] {
        let output = weir(dir.path(), &["bench", "nexmark", "--query", query, "--events", "20000"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{query}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(line["results"].as_u64().unwrap() > 0, "{line}");
    }
    check(&[(&["bench", "nexmark", "--query", "q9"], false, &["unknown query \"q9\""])]);
}
