//! The file source: the conformance kit, then following a file through appends, half-written
//! lines, rotation, truncation, over-long lines and restarts.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use weir_connect::conformance::{Faults, check_source};
use weir_connect::{Position, Source};
use weir_connectors::sources::file::{FileSource, FileSourceConfig, StartAt};

fn config(path: &Path) -> FileSourceConfig {
    FileSourceConfig::new("tail", path, "app-logs")
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

/// Polls until a poll comes back empty; the lines and the last position.
async fn drain(source: &mut FileSource) -> (Vec<String>, Option<Position>) {
    let (mut lines, mut position) = (Vec::new(), None);
    loop {
        let records = source.poll(3, Duration::from_millis(1)).await.unwrap();
        if records.is_empty() {
            return (lines, position);
        }
        for record in records {
            lines.push(String::from_utf8(record.record.value).unwrap());
            position = Some(record.position);
        }
    }
}

async fn opened(config: FileSourceConfig, position: Option<Position>) -> FileSource {
    let mut source = FileSource::new(config);
    source.open(position).await.unwrap();
    source
}

#[test]
fn the_file_source_passes_the_conformance_kit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let lines: Vec<Vec<u8>> = (0..300).map(|i| format!("GET /page/{i} 200").into_bytes()).collect();
    let text: String = lines.iter().map(|l| format!("{}\n", String::from_utf8_lossy(l))).collect();
    append(&path, &text);
    check_source(|| Box::new(FileSource::new(config(&path))), &lines, &Faults::default());
}

#[tokio::test]
async fn follows_appends_and_waits_for_the_newline_of_a_half_written_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let mut source = opened(config(&path), None).await; // the file does not exist yet
    assert_eq!(drain(&mut source).await.0, Vec::<String>::new());
    append(&path, "one\r\ntw");
    assert_eq!(drain(&mut source).await.0, ["one"]);
    append(&path, "o\nthree\n");
    assert_eq!(drain(&mut source).await.0, ["two", "three"]);
}

#[tokio::test]
async fn finishes_a_rotated_file_then_reads_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "a\nb\n");
    let mut source = opened(config(&path), None).await;
    assert_eq!(drain(&mut source).await.0, ["a", "b"]);
    // logrotate: rename, the writer finishes its line into the old file, a new file starts.
    let mut old_writer = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
    old_writer.write_all(b"c\n").unwrap();
    append(&path, "d\n");
    assert_eq!(drain(&mut source).await.0, ["c", "d"]);
}

#[tokio::test]
async fn a_truncated_file_is_read_again_from_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "first line\nsecond line\n");
    let mut source = opened(config(&path), None).await;
    drain(&mut source).await;
    std::fs::write(&path, "x\n").unwrap();
    assert_eq!(drain(&mut source).await.0, ["x"]);
}

#[tokio::test]
async fn over_long_lines_are_skipped_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    let huge = "y".repeat(600 << 10); // more than one read
    append(&path, &format!("short\n{}\nok\n{huge}\nlast\n", "x".repeat(20)));
    let mut config = config(&path);
    config.line_bytes_max = 10;
    let mut source = opened(config, None).await;
    assert_eq!(drain(&mut source).await.0, ["short", "ok", "last"]);
}

#[tokio::test]
async fn resumes_from_a_position_and_can_start_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.log");
    append(&path, "1\n2\n3\n");
    let mut source = opened(config(&path), None).await;
    let (lines, position) = drain(&mut source).await;
    assert_eq!(lines, ["1", "2", "3"]);
    append(&path, "4\n");
    let mut restarted = opened(config(&path), position.clone()).await;
    assert_eq!(drain(&mut restarted).await.0, ["4"]);
    // A position of another file (another inode) starts the new file from its beginning.
    std::fs::remove_file(&path).unwrap();
    append(&path, "new\n");
    let mut replaced = opened(config(&path), position).await;
    assert_eq!(drain(&mut replaced).await.0, ["new"]);
    let mut at_end = config(&path);
    at_end.start_at = StartAt::End;
    let mut tail = opened(at_end, None).await;
    append(&path, "after\n");
    assert_eq!(drain(&mut tail).await.0, ["after"]);
}
