//! `weir run` end to end: an HTTP source into a topic and a file sink out of it, with the
//! HTTP edge's errors, then a clean stop on SIGINT.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One HTTP/1.1 request on a fresh connection; returns (status, body).
fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    (status, body)
}

/// (method, path, headers, body, expected status, text the response contains)
type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], &'a [u8], u16, &'a str);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn http_to_file_pipeline_runs_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin_port = free_port();
    let out = dir.path().join("out/logs.jsonl");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "pipeline: e2e
broker: {{ embedded: {{ data_dir: {data} }} }}
topics:
  logs: {{ queues: 2 }}
sources:
  web:
    type: http
    listen: 127.0.0.1:{port}
    body_bytes_max: 1024
    request_timeout_ms: 500
    auth_token: ${{E2E_TOKEN}}
    routes:
      - {{ path: /v1/logs, topic: logs, format: ndjson, tag: \"{{{{level}}}}\", key: \"{{{{id}}}}\" }}
sinks:
  to_file:
    type: file
    topic: logs
    path: {out}
",
            data = dir.path().join("data").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    let (running, banner) = start(&file, admin_port, &[("E2E_TOKEN", "secret")]);
    assert!(banner.contains(&format!("POST http://127.0.0.1:{port}/v1/logs -> topic logs")), "{banner}");
    let auth = [("Authorization", "Bearer secret")];
    let gzip = |text: &[u8]| {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text).unwrap();
        encoder.finish().unwrap()
    };
    let gzip_line = gzip(b"{\"id\":\"a4\",\"level\":\"warn\"}\n");
    let gzip_bomb = gzip(&[b' '; 5000]);
    let zstd_line = zstd::encode_all(&b"{\"id\":\"a5\",\"level\":\"debug\"}"[..], 3).unwrap();
    let gzip_headers = [("Authorization", "Bearer secret"), ("Content-Encoding", "gzip")];
    let zstd_headers = [("Authorization", "Bearer secret"), ("Content-Encoding", "zstd")];
    let cases: &[Case] = &[
        ("GET", "/health", &[], b"", 200, "ok"),
        ("POST", "/v1/logs", &[], b"{\"id\":\"x\"}\n", 401, "bearer token"),
        ("POST", "/v1/logs", &auth, b"{\"id\":\"a0\",\"level\":\"info\"}\n{\"id\": oops}\n", 400, "line 2:"),
        ("POST", "/v1/logs", &auth, &[b'x'; 2000], 413, ""),
        ("POST", "/v1/logs", &[("Authorization", "Bearer secret"), ("Content-Encoding", "br")], b"{}", 415, "br"),
        ("POST", "/v1/logs", &gzip_headers, &gzip_line, 200, "{\"accepted\":1}"),
        ("POST", "/v1/logs", &zstd_headers, &zstd_line, 200, "{\"accepted\":1}"),
        ("POST", "/v1/logs", &gzip_headers, &gzip_bomb, 413, "decompressed body"),
        ("POST", "/v1/logs", &gzip_headers, b"not gzip", 400, "bad gzip body"),
        (
            "POST",
            "/v1/logs",
            &auth,
            b"{\"id\":\"a1\",\"level\":\"info\",\"msg\":\"one\"}\n\n{\"id\":\"a2\",\"level\":\"error\",\"msg\":\"two\"}\n{\"id\":\"a3\",\"msg\":\"three\"}\n",
            200,
            "{\"accepted\":3}",
        ),
    ];
    for (method, path, headers, body, status, needle) in cases {
        let (got, text) = http(port, method, path, headers, body);
        assert_eq!(got, *status, "{method} {path}: {text}");
        assert!(text.contains(needle), "{method} {path}: {text:?} lacks {needle:?}");
    }
    // A client that stops mid-upload gets 408 instead of holding the source forever.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    slow.write_all(
        b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\nContent-Length: 100\r\n\r\n{\"id\"",
    )
    .unwrap();
    let mut response = vec![0u8; 256];
    let read = slow.read(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response[..read]);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    // The file sink receives exactly the accepted events (the 400 request wrote nothing).
    let written = wait_for_lines(&out, 5);
    let mut records: Vec<serde_json::Value> = written.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    records.sort_by_key(|r| r["value"]["id"].as_str().unwrap().to_string());
    let summary: Vec<(String, String, String)> =
        records.iter().map(|r| (r["value"]["id"].to_string(), r["key"].to_string(), r["tag"].to_string())).collect();
    assert_eq!(
        summary,
        vec![
            ("\"a1\"".into(), "\"a1\"".into(), "\"info\"".into()),
            ("\"a2\"".into(), "\"a2\"".into(), "\"error\"".into()),
            ("\"a3\"".into(), "\"a3\"".into(), "null".into()),
            ("\"a4\"".into(), "\"a4\"".into(), "\"warn\"".into()),
            ("\"a5\"".into(), "\"a5\"".into(), "\"debug\"".into()),
        ]
    );
    // The admin API reports the connectors and every component's metrics.
    let (status, text) = http(admin_port, "GET", "/connectors", &[], b"");
    assert_eq!((status, text.trim()), (200, r#"["to_file","web"]"#));
    let (status, text) = http(admin_port, "GET", "/connectors/to_file/status", &[], b"");
    assert_eq!(status, 200, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((json["type"].as_str(), json["tasks"][0]["state"].as_str()), (Some("sink"), Some("RUNNING")), "{text}");
    assert_eq!(http(admin_port, "GET", "/connectors/nope/status", &[], b"").0, 404);
    let (status, metrics) = http(admin_port, "GET", "/metrics", &[], b"");
    assert_eq!(status, 200);
    for name in [
        "weir_http_source_requests_total",
        "weir_http_source_events_total",
        "weir_http_source_errors_total",
        "weir_http_source_request_seconds",
        "weir_broker_sent_messages_total",
        "weir_store_appended_messages_total",
        "weir_connect_sink_records_total",
        "weir_connect_sink_batch_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    // Pause, resume and restart through the admin API.
    let wait_for_state = |wanted: &str| {
        wait_until(&format!("to_file is {wanted}"), || {
            let (_, text) = http(admin_port, "GET", "/connectors/to_file/status", &[], b"");
            text.contains(&format!("\"state\":\"{wanted}\""))
        })
    };
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/pause", &[], b"").0, 202);
    wait_for_state("PAUSED");
    let (status, _) = http(port, "POST", "/v1/logs", &auth, b"{\"id\":\"a6\",\"level\":\"info\"}\n");
    assert_eq!(status, 200, "the source keeps taking events while the sink is paused");
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/resume", &[], b"").0, 202);
    wait_for_state("RUNNING");
    wait_until("the resumed sink delivers the event sent while paused", || {
        std::fs::read_to_string(&out).unwrap_or_default().contains("\"a6\"")
    });
    assert_eq!(http(admin_port, "POST", "/connectors/to_file/restart", &[], b"").0, 202);
    wait_for_state("RUNNING");
    assert_eq!(http(admin_port, "PUT", "/connectors/nope/pause", &[], b"").0, 404);
    // Offsets: read; changing them needs a paused sink; rewinding replays into the file.
    // The file shows a6 before the sink's flush returns and its offset is committed (and the
    // status reads RUNNING before the old run has stopped): wait for the commit.
    let read_offsets = || {
        let (status, text) = http(admin_port, "GET", "/connectors/to_file/offsets", &[], b"");
        assert_eq!(status, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    let committed = |offsets: &serde_json::Value| -> u64 {
        offsets["offsets"].as_array().unwrap().iter().map(|o| o["offset"]["queue_offset"].as_u64().unwrap()).sum()
    };
    wait_until("the six records' offsets are committed", || committed(&read_offsets()) >= 6);
    let offsets = read_offsets();
    assert_eq!(committed(&offsets), 6, "{offsets}");
    assert_eq!(http(admin_port, "DELETE", "/connectors/to_file/offsets", &[], b"").0, 409, "running");
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/pause", &[], b"").0, 202);
    wait_for_state("PAUSED");
    let rewind = br#"{"offsets":[{"partition":{"topic":"logs","queue_id":0},"offset":{"queue_offset":0}}]}"#;
    let bad_queue = br#"{"offsets":[{"partition":{"topic":"logs","queue_id":9},"offset":{"queue_offset":0}}]}"#;
    let (status, text) = http(admin_port, "PATCH", "/connectors/to_file/offsets", &[], bad_queue);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("offsets[0].partition.queue_id"), "{text}");
    assert_eq!(http(admin_port, "PATCH", "/connectors/to_file/offsets", &[], rewind).0, 200);
    let queue_0 = offsets["offsets"][0]["offset"]["queue_offset"].as_u64().unwrap() as usize;
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/resume", &[], b"").0, 202);
    wait_for_lines(&out, 6 + queue_0);
    // A paused HTTP source answers 503 (its health check too) and takes events after resume.
    assert_eq!(http(admin_port, "POST", "/connectors/web/restart", &[], b"").0, 409);
    assert_eq!(http(admin_port, "PUT", "/connectors/web/pause", &[], b"").0, 202);
    wait_until("the HTTP source's health check says paused", || http(port, "GET", "/health", &[], b"").0 == 503);
    let (status, text) = http(port, "POST", "/v1/logs", &auth, b"{\"id\":\"a7\"}\n");
    assert_eq!(status, 503, "{text}");
    assert_eq!(http(admin_port, "PUT", "/connectors/web/resume", &[], b"").0, 202);
    wait_until("the HTTP source takes events again", || {
        http(port, "POST", "/v1/logs", &auth, b"{\"id\":\"a7\"}\n").0 == 200
    });
    stop(running);
    assert!(!dir.path().join("data/abort").exists(), "the store closed cleanly");
}

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// A running `weir run`; dropped without `stop` (a failed assertion), it is killed, so a
/// failing test never leaves a pipeline behind.
struct Running {
    child: std::process::Child,
    lines: Lines,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `weir run FILE`; returns once it prints its `running` line, with the banner.
fn start(file: &std::path::Path, admin_port: u16, env: &[(&str, &str)]) -> (Running, String) {
    start_in(&std::env::temp_dir(), file, admin_port, env)
}

/// `start` with the working directory `dir` (where a pipeline's relative paths land).
fn start_in(dir: &std::path::Path, file: &std::path::Path, admin_port: u16, env: &[(&str, &str)]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(dir)
        .args(["--segment-size-bytes", "1048576", "run"])
        .arg(file)
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut running = Running { child, lines };
    let mut banner = String::new();
    for line in running.lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("running") {
            return (running, banner);
        }
    }
    panic!("weir run stopped before running: {banner}");
}

/// Stops it with SIGINT and checks it stopped cleanly (within a deadline: a hung stop fails).
fn stop(mut running: Running) {
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(running.child.id() as libc::pid_t, libc::SIGINT) };
    let pid = running.child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            // SAFETY: killing our own child process, which did not stop in time.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let rest: Vec<String> = running.lines.by_ref().map(|l| l.unwrap()).collect();
    let status = running.child.wait().unwrap();
    let _ = done_tx.send(());
    assert!(status.success(), "exit {status:?}; output {rest:?}");
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
}

/// Polls `condition` every 20 ms until it holds; fails after 30 s naming `what`.
fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20)); // poll interval
    }
}

/// Waits until `path` holds at least `count` lines; returns them.
fn wait_for_lines(path: &std::path::Path, count: usize) -> Vec<String> {
    let read = || std::fs::read_to_string(path).unwrap_or_default();
    wait_until(&format!("{} has {count} lines", path.display()), || read().lines().count() >= count);
    read().lines().map(str::to_string).collect()
}

#[test]
fn a_file_source_resumes_after_a_restart_without_repeating_lines() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let log = dir.path().join("app.log");
    let out = dir.path().join("out.jsonl");
    let file = dir.path().join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "pipeline: tail
broker: {{ embedded: {{ data_dir: {data} }} }}
topics:
  app-logs: {{ queues: 1 }}
sources:
  app:
    type: file
    path: {log}
    topic: app-logs
    tag: app
sinks:
  out:
    type: file
    topic: app-logs
    path: {out}
",
            data = dir.path().join("data").display(),
            log = log.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    std::fs::write(&log, "line 1\nline 2\n").unwrap();
    let (running, banner) = start(&file, admin_port, &[]);
    assert!(banner.contains("source app: file"), "{banner}");
    wait_for_lines(&out, 2);
    // The position is committed within its flush interval (1 s) although the file went quiet.
    wait_until("the position after line 2 is committed", || {
        let (status, text) = http(admin_port, "GET", "/connectors/app/offsets", &[], b"");
        status == 200 && text.contains("\"offset\":14")
    });
    stop(running);
    // Lines written while it was down are read after the restart; nothing is read twice.
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"line 3\n").unwrap();
    let (running, _) = start(&file, admin_port, &[]);
    // Once the source committed the position after line 3 (so the broker holds all it sent)
    // and the sink has no lag, the file holds everything the source sent.
    wait_until("the position after line 3 is committed", || {
        http(admin_port, "GET", "/connectors/app/offsets", &[], b"").1.contains("\"offset\":21")
    });
    wait_until("the sink has no lag", || {
        http(admin_port, "GET", "/connectors/out/status", &[], b"").1.contains("\"lag\":0")
    });
    let written = wait_for_lines(&out, 3);
    assert_eq!(written.len(), 3, "{written:?}");
    let values: Vec<String> = written
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, ["line 1", "line 2", "line 3"]);
    // Resetting the position while paused makes the source read the file again.
    assert_eq!(http(admin_port, "PUT", "/connectors/app/pause", &[], b"").0, 202);
    wait_until("the paused source lets its position be reset", || {
        http(admin_port, "DELETE", "/connectors/app/offsets", &[], b"").0 == 200
    });
    let (status, text) =
        http(admin_port, "PATCH", "/connectors/app/offsets", &[], br#"{"offsets":[{"offset":"abc"}]}"#);
    assert_eq!(status, 400, "a position that is not an object is refused: {text}");
    assert!(text.contains("must be a JSON object"), "{text}");
    assert_eq!(http(admin_port, "PUT", "/connectors/app/resume", &[], b"").0, 202);
    wait_for_lines(&out, 6);
    stop(running);
}

#[test]
fn a_failing_sink_is_reported_and_restarted_with_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let admin_port = free_port();
    let log = dir.path().join("app.log");
    let file = dir.path().join("pipeline.yaml");
    // Every write to /dev/full fails with ENOSPC: an outage, retried, then the task fails.
    std::fs::write(
        &file,
        format!(
            "pipeline: full
broker: {{ embedded: {{ data_dir: {data} }} }}
topics:
  app-logs: {{ queues: 1 }}
sources:
  app: {{ type: file, path: {log}, topic: app-logs }}
sinks:
  out:
    type: file
    topic: app-logs
    path: /dev/full
    retry: {{ retries_max: 1, backoff_initial_ms: 10, backoff_max_ms: 10 }}
",
            data = dir.path().join("data").display(),
            log = log.display(),
        ),
    )
    .unwrap();
    std::fs::write(&log, "line 1\n").unwrap();
    let (running, _) = start(&file, admin_port, &[]);
    wait_until("the sink is reported failed with its error", || {
        let (_, text) = http(admin_port, "GET", "/connectors/out/status", &[], b"");
        text.contains("\"state\":\"FAILED\"") && text.contains("No space left")
    });
    // Two attempts per run (retries_max: 1); a third error means the supervisor restarted it.
    wait_until("the failed sink is restarted", || {
        let (_, metrics) = http(admin_port, "GET", "/metrics", &[], b"");
        metrics.lines().any(|line| {
            line.starts_with("weir_connect_sink_errors_total{connector=\"out\"}")
                && line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).is_some_and(|v| v >= 3.0)
        })
    });
    let (_, offsets) = http(admin_port, "GET", "/connectors/out/offsets", &[], b"");
    assert!(offsets.contains("\"queue_offset\":0"), "nothing was committed: {offsets}");
    stop(running);
}

#[test]
fn a_stream_job_turns_posted_logs_into_window_results_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let out = dir.path().join("stats.jsonl");
    let file = stream_pipeline(dir.path(), port, &out);
    let post = |lines: &str| {
        let (status, text) = http(port, "POST", "/logs", &[], lines.as_bytes());
        assert_eq!(status, 200, "{text}");
    };
    // One domain per queue (the key shards): each queue's watermark moves with its own rows.
    let (running, banner) = start(&file, admin_port, &[]);
    assert!(banner.contains("stream job per_domain: access-logs -> domain-stats"), "{banner}");
    post("{\"domain\":\"a\",\"status\":200,\"ts\":1000}\n{\"domain\":\"a\",\"status\":503,\"ts\":2000}\n");
    post("{\"domain\":\"b\",\"status\":200,\"ts\":3000}\n");
    // The first minute closes once every queue's watermark passes 60 s.
    post("{\"domain\":\"a\",\"status\":200,\"ts\":61000}\n{\"domain\":\"b\",\"status\":200,\"ts\":62000}\n");
    let first = wait_for_lines(&out, 2);
    let (_, status) = http(admin_port, "GET", "/connectors/per_domain/status", &[], b"");
    assert!(status.contains("\"type\":\"stream\""), "{status}");
    let (_, metrics) = http(admin_port, "GET", "/metrics", &[], b"");
    for name in [
        "weir_streams_messages_read_total",
        "weir_streams_results_total",
        "weir_streams_checkpoints_total",
        "weir_streams_watermark_ms",
        "weir_streams_lag_messages",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    stop(running);
    // After a restart the open minute (61 s, 62 s) continues from the checkpoint.
    let (running, _) = start(&file, admin_port, &[]);
    post("{\"domain\":\"a\",\"status\":500,\"ts\":125000}\n{\"domain\":\"b\",\"status\":200,\"ts\":125000}\n");
    let all = wait_for_lines(&out, 4);
    stop(running);
    let mut rows: Vec<String> = all
        .iter()
        .map(|line| {
            let value = &serde_json::from_str::<serde_json::Value>(line).unwrap()["value"];
            format!("{} {} {} {}", value["domain"], value["window_start"], value["hits"], value["errors"])
        })
        .collect();
    rows.sort();
    assert_eq!(
        rows,
        [
            "\"a\" \"1970-01-01T00:00:00\" 2 1",
            "\"a\" \"1970-01-01T00:01:00\" 1 0",
            "\"b\" \"1970-01-01T00:00:00\" 1 0",
            "\"b\" \"1970-01-01T00:01:00\" 1 0",
        ],
        "{first:?}"
    );
}

/// A pipeline: HTTP logs (key = domain) → `access-logs` → a per-domain one-minute window job
/// (checkpoint every 50 ms) → `domain-stats` → a file sink at `out`.
fn stream_pipeline(dir: &std::path::Path, port: u16, out: &std::path::Path) -> std::path::PathBuf {
    let file = dir.join("pipeline.yaml");
    std::fs::write(
        &file,
        format!(
            "pipeline: analytics
broker: {{ embedded: {{ data_dir: {data} }} }}
topics:
  access-logs: {{ queues: 2 }}
  domain-stats: {{ queues: 2 }}
sources:
  web:
    type: http
    listen: 127.0.0.1:{port}
    routes:
      - {{ path: /logs, topic: access-logs, format: ndjson, key: \"{{{{domain}}}}\", timestamp_field: ts }}
streams:
  per_domain:
    checkpoint_interval_ms: 50
    sql: |
      CREATE TABLE logs (domain TEXT, status INT, ts TIMESTAMP, WATERMARK FOR ts AS ts)
        WITH (topic = 'access-logs');
      INSERT INTO \"domain-stats\"
      SELECT domain, window_start, count(*) AS hits, sum(CASE WHEN status >= 500 THEN 1 ELSE 0 END) AS errors
      FROM TUMBLE(logs, ts, INTERVAL '1' MINUTE)
      GROUP BY domain, window_start, window_end;
sinks:
  stats:
    type: file
    topic: domain-stats
    path: {out}
",
            data = dir.join("data").display(),
            out = out.display(),
        ),
    )
    .unwrap();
    file
}

#[test]
fn a_stream_job_killed_mid_window_writes_each_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let out = dir.path().join("stats.jsonl");
    let file = stream_pipeline(dir.path(), port, &out);
    let post = |lines: &str| {
        let (status, text) = http(port, "POST", "/logs", &[], lines.as_bytes());
        assert_eq!(status, 200, "{text}");
    };
    let (mut running, _) = start(&file, admin_port, &[]);
    post("{\"domain\":\"a\",\"status\":200,\"ts\":1000}\n{\"domain\":\"a\",\"status\":503,\"ts\":2000}\n");
    post("{\"domain\":\"b\",\"status\":200,\"ts\":3000}\n");
    post("{\"domain\":\"a\",\"status\":200,\"ts\":61000}\n{\"domain\":\"b\",\"status\":200,\"ts\":62000}\n");
    wait_for_lines(&out, 2);
    post("{\"domain\":\"a\",\"status\":500,\"ts\":70000}\n");
    // SIGKILL wherever the job is: its last checkpoint may or may not hold the 70 s row.
    running.child.kill().unwrap();
    running.child.wait().unwrap();
    drop(running);
    let (running, _) = start(&file, admin_port, &[]);
    post("{\"domain\":\"a\",\"status\":200,\"ts\":125000}\n{\"domain\":\"b\",\"status\":200,\"ts\":125000}\n");
    wait_for_lines(&out, 4);
    stop(running);
    // The output topic (not the at-least-once file) holds each window result once.
    let data = dir.path().join("data");
    let query = r#"SELECT domain, window_start, hits, errors FROM "domain-stats" ORDER BY domain, window_start"#;
    let output = super::weir(&data, &["sql", query]);
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}{}", String::from_utf8_lossy(&output.stderr));
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| a") || l.starts_with("| b")).collect();
    assert_eq!(
        rows,
        [
            "| a      | 1970-01-01T00:00:00 | 2    | 1      |",
            "| a      | 1970-01-01T00:01:00 | 2    | 1      |",
            "| b      | 1970-01-01T00:00:00 | 1    | 0      |",
            "| b      | 1970-01-01T00:01:00 | 1    | 0      |",
        ],
        "{table}"
    );
}

#[test]
fn the_runnable_pipelines_run() {
    let pipelines = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    // quickstart: HTTP logs -> topic -> file.
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let (running, _) =
        start_in(dir.path(), &pipelines.join("quickstart.yaml"), admin_port, &[("WEIR_HTTP_LISTEN", &listen)]);
    let body =
        b"{\"level\":\"info\",\"request_id\":\"r1\",\"msg\":\"hello\"}\n{\"level\":\"error\",\"request_id\":\"r2\"}\n";
    assert_eq!(http(port, "POST", "/v1/logs", &[], body), (200, "{\"accepted\":2}\n".to_string()));
    wait_for_lines(&dir.path().join("out/app-logs.jsonl"), 2);
    stop(running);
    // web-analytics: HTTP access logs -> per-domain one-minute counts by SQL -> file.
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let listen = format!("127.0.0.1:{port}");
    let (running, _) =
        start_in(dir.path(), &pipelines.join("web-analytics.yaml"), admin_port, &[("WEIR_HTTP_LISTEN", &listen)]);
    // The first minute, then rows two minutes later in (nearly) every queue to close it; a
    // queue left without rows stops holding the watermark back after its idle timeout.
    assert_eq!(http(port, "POST", "/v1/logs", &[], &access_logs(0)).0, 200);
    assert_eq!(http(port, "POST", "/v1/logs", &[], &access_logs(2)).0, 200);
    let stats = wait_for_lines(&dir.path().join("out/domain-stats.jsonl"), 2);
    stop(running);
    let mut rows: Vec<String> = stats
        .iter()
        .map(|line| {
            let value = &serde_json::from_str::<serde_json::Value>(line).unwrap()["value"];
            format!("{} {} {}", value["domain"], value["hits"], value["errors"])
        })
        .collect();
    rows.sort();
    assert_eq!(rows, ["\"a.com\" 30 0", "\"b.com\" 10 10"]);
}

/// One-minute access-log lines for the `web-analytics`-shaped pipelines: 30 `a.com` hits with
/// status 200 and 10 `b.com` hits with 503, in minute `minute`.
fn access_logs(minute: u64) -> Vec<u8> {
    (0..40)
        .map(|i| {
            let (domain, status) = if i % 4 == 0 { ("b.com", 503) } else { ("a.com", 200) };
            let ts = minute * 60_000 + i * 100;
            format!("{{\"domain\":\"{domain}\",\"status\":{status},\"request_id\":\"m{minute}-{i}\",\"ts\":{ts}}}\n")
        })
        .collect::<String>()
        .into_bytes()
}

#[test]
fn the_sink_pipelines_run_against_mysql_and_redis() {
    use mysql_async::prelude::Queryable;
    let pipelines = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // stats-to-mysql: HTTP access logs -> per-domain one-minute counts by SQL -> MySQL upsert.
    if let Some(server) = weir_testsvc::mariadb() {
        let database = server.fresh_database_name("stats");
        runtime.block_on(async {
            let mut conn = mysql_async::Conn::from_url(server.url("")).await.unwrap();
            conn.query_drop(format!("CREATE DATABASE `{database}`")).await.unwrap();
        });
        let url = server.url(&database);
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let listen = format!("127.0.0.1:{port}");
        let env = [("WEIR_HTTP_LISTEN", listen.as_str()), ("WEIR_MYSQL_URL", url.as_str())];
        let (running, banner) = start_in(dir.path(), &pipelines.join("stats-to-mysql.yaml"), admin_port, &env);
        assert!(banner.contains("mysql table domain_stats"), "{banner}");
        assert_eq!(http(port, "POST", "/v1/logs", &[], &access_logs(0)).0, 200);
        assert_eq!(http(port, "POST", "/v1/logs", &[], &access_logs(2)).0, 200);
        let query = "SELECT domain, window_start, hits, errors FROM domain_stats ORDER BY domain";
        let rows = || -> Vec<(String, String, i64, i64)> {
            runtime.block_on(async {
                let mut conn = mysql_async::Conn::from_url(url.as_str()).await.unwrap();
                conn.query(query).await.unwrap_or_default()
            })
        };
        wait_until("domain_stats holds both domains' first minute", || rows().len() >= 2);
        stop(running);
        let expected = [("a.com", "1970-01-01 00:00:00", 30, 0), ("b.com", "1970-01-01 00:00:00", 10, 10)]
            .map(|(d, w, h, e)| (d.to_string(), w.to_string(), h, e));
        assert_eq!(rows(), expected);
    }
    // metrics-to-redis: Influx line protocol over HTTP -> latest point per series in a hash.
    if let Some(server) = weir_testsvc::redis() {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let listen = format!("127.0.0.1:{port}");
        let redis_url = server.url();
        let env = [("WEIR_HTTP_LISTEN", listen.as_str()), ("WEIR_REDIS_URL", redis_url.as_str())];
        let (running, _) = start_in(dir.path(), &pipelines.join("metrics-to-redis.yaml"), admin_port, &env);
        let body = b"cpu,host=web1 usage=0.5,cores=8i 1700000000000000000\ncpu,host=web2 usage=0.7 1700000000000000000\ncpu,host=web1 usage=0.9 1700000001000000000\n";
        assert_eq!(http(port, "POST", "/v1/metrics", &[], body).0, 200);
        let hash = |key: &str| -> std::collections::BTreeMap<String, String> {
            runtime.block_on(async {
                let client = redis::Client::open(redis_url.as_str()).unwrap();
                let mut conn = client.get_multiplexed_async_connection().await.unwrap();
                redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.unwrap()
            })
        };
        wait_until("both series are in Redis", || {
            hash("metric:cpu:web2").contains_key("fields")
                && hash("metric:cpu:web1").get("timestamp").is_some_and(|t| t.ends_with("1000000000"))
        });
        stop(running);
        let web1 = hash("metric:cpu:web1");
        assert_eq!(web1["measurement"], "cpu");
        assert_eq!(web1["fields"], r#"{"usage":0.9}"#, "the latest point replaced the first");
    }
}

#[test]
fn the_cdc_pipeline_keeps_redis_in_sync_with_a_mysql_table() {
    use mysql_async::prelude::Queryable;
    let (Some(mariadb), Some(redis_server)) = (weir_testsvc::mariadb(), weir_testsvc::redis()) else { return };
    let pipelines = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let database = mariadb.fresh_database_name("shop");
    let execute = |statements: &[&str]| {
        runtime.block_on(async {
            let mut conn = mysql_async::Conn::from_url(mariadb.url("")).await.unwrap();
            for statement in statements {
                conn.query_drop(statement.replace("DB", &database)).await.unwrap();
            }
            conn.disconnect().await.unwrap();
        })
    };
    execute(&[
        "CREATE DATABASE DB",
        "CREATE TABLE DB.customers (id INT PRIMARY KEY, name VARCHAR(40), tier ENUM('free','gold'))",
        "INSERT INTO DB.customers VALUES (1, 'ann', 'free'), (2, 'bob', 'gold'), (3, 'cy', 'free')",
    ]);
    let redis_url = redis_server.url();
    let customer = |id: u32| -> std::collections::BTreeMap<String, String> {
        runtime.block_on(async {
            let client = redis::Client::open(redis_url.as_str()).unwrap();
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("HGETALL").arg(format!("customer:{id}")).query_async(&mut conn).await.unwrap()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let (listen, mysql_url) = (format!("127.0.0.1:{port}"), mariadb.url(""));
    let env = [
        ("WEIR_HTTP_LISTEN", listen.as_str()),
        ("WEIR_MYSQL_URL", mysql_url.as_str()),
        ("WEIR_CDC_DATABASE", database.as_str()),
        ("WEIR_REDIS_URL", redis_url.as_str()),
    ];
    let (running, banner) = start_in(dir.path(), &pipelines.join("mysql-cdc-to-redis.yaml"), admin_port, &env);
    assert!(banner.contains("mysql_cdc"), "{banner}");
    wait_until("the snapshot reached Redis", || customer(3).get("name").is_some_and(|n| n == "cy"));
    assert_eq!(customer(2)["tier"], "gold");
    execute(&[
        "UPDATE DB.customers SET name = 'ann2', tier = 'gold' WHERE id = 1",
        "DELETE FROM DB.customers WHERE id = 2",
        "INSERT INTO DB.customers VALUES (4, 'dee', NULL)",
    ]);
    wait_until("the changes reached Redis", || customer(4).contains_key("id") && customer(2).is_empty());
    assert_eq!((customer(1)["name"].as_str(), customer(1)["tier"].as_str()), ("ann2", "gold"));
    assert_eq!(customer(4)["tier"], "null", "a NULL column is stored as JSON null");
    // kill -9 mid-stream, changes while it is down, then a restart resumes from the committed
    // position (no new snapshot: customer 3's name changed in Redis only by the binlog). The
    // source commits its position every `position_flush_interval`: the kill waits for one.
    let positions = dir.path().join("data/connect/source-positions.json");
    wait_until("a binlog position is committed", || {
        std::fs::read_to_string(&positions).is_ok_and(|text| text.contains("\"pos\""))
    });
    let mut writes = Vec::new();
    for i in 0..200 {
        writes.push(format!("INSERT INTO DB.customers VALUES ({}, 'bulk{i}', 'free')", 100 + i));
    }
    let writes: Vec<&str> = writes.iter().map(String::as_str).collect();
    execute(&writes[..100]);
    drop(running); // SIGKILL
    execute(&writes[100..]);
    execute(&["UPDATE DB.customers SET name = 'cy2' WHERE id = 3", "DELETE FROM DB.customers WHERE id = 150"]);
    let (running, _) = start_in(dir.path(), &pipelines.join("mysql-cdc-to-redis.yaml"), admin_port, &env);
    wait_until("the changes after the kill reached Redis", || {
        customer(3).get("name").is_some_and(|n| n == "cy2")
            && customer(299).contains_key("id")
            && customer(150).is_empty()
    });
    for id in (100..300).filter(|id| *id != 150) {
        assert_eq!(customer(id)["name"], format!("bulk{}", id - 100), "customer {id}");
    }
    stop(running);
}
