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
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["--segment-size-bytes", "1048576", "run"])
        .arg(&file)
        .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
        .env("E2E_TOKEN", "secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.starts_with("running") {
            break;
        }
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let written = loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.lines().count() >= 5 {
            break text;
        }
        assert!(Instant::now() < deadline, "the file sink did not write the events");
        std::thread::sleep(Duration::from_millis(20)); // poll interval for the file
    };
    let mut records: Vec<serde_json::Value> = written.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
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
        "weir_broker_sent_messages_total",
        "weir_store_appended_messages_total",
        "weir_connect_sink_records_total",
        "weir_connect_sink_batch_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    // Pause, resume and restart through the admin API.
    let wait_for_state = |wanted: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, text) = http(admin_port, "GET", "/connectors/to_file/status", &[], b"");
            if text.contains(&format!("\"state\":\"{wanted}\"")) {
                return;
            }
            assert!(Instant::now() < deadline, "to_file never became {wanted}: {text}");
            std::thread::sleep(Duration::from_millis(20)); // poll interval for the status
        }
    };
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/pause", &[], b"").0, 202);
    wait_for_state("PAUSED");
    let (status, _) = http(port, "POST", "/v1/logs", &auth, b"{\"id\":\"a6\",\"level\":\"info\"}\n");
    assert_eq!(status, 200, "the source keeps taking events while the sink is paused");
    assert_eq!(http(admin_port, "PUT", "/connectors/to_file/resume", &[], b"").0, 202);
    wait_for_state("RUNNING");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out).unwrap_or_default().contains("\"a6\"") {
        assert!(Instant::now() < deadline, "the resumed sink did not deliver the event sent while paused");
        std::thread::sleep(Duration::from_millis(20)); // poll interval for the file
    }
    assert_eq!(http(admin_port, "POST", "/connectors/to_file/restart", &[], b"").0, 202);
    wait_for_state("RUNNING");
    assert_eq!(http(admin_port, "PUT", "/connectors/web/pause", &[], b"").0, 409);
    assert_eq!(http(admin_port, "PUT", "/connectors/nope/pause", &[], b"").0, 404);
    // SIGINT stops it cleanly.
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "exit {status:?}; output {rest:?}");
    assert!(rest.iter().any(|l| l == "stopped"), "{rest:?}");
    assert!(!dir.path().join("data/abort").exists(), "the store closed cleanly");
}
