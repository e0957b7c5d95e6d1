//! `type: file`: records as JSON lines appended to a file, rotated by size.
//!
//! Rotation renames the full file to `<path>.<n>` (n = 1, 2, …, never reused) and starts a new
//! one. `flush` fdatasyncs, so offsets are committed only for lines on disk. A retried batch
//! may append some lines twice (at-least-once).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use weir_connect::{Sink, SinkError, SinkRecord};

/// Settings of a file sink.
#[derive(Clone, Debug)]
pub struct FileSinkConfig {
    /// The file written; rotated files get a numeric suffix.
    pub path: PathBuf,
    /// Rotate once the file would grow past this many bytes.
    pub rotate_bytes: u64,
}

impl FileSinkConfig {
    /// Default rotation size.
    pub const ROTATE_BYTES_DEFAULT: u64 = 100 << 20;

    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileSinkConfig { path: path.into(), rotate_bytes: Self::ROTATE_BYTES_DEFAULT }
    }
}

struct OpenFile {
    file: File,
    size_bytes: u64,
    /// The suffix the next rotation uses.
    next_suffix: u64,
}

/// Appends JSON lines to a file.
pub struct FileSink {
    config: FileSinkConfig,
    open: Option<OpenFile>,
}

impl FileSink {
    pub fn new(config: FileSinkConfig) -> Self {
        FileSink { config, open: None }
    }
}

/// One lock per output path, held while a blocking append, rotation or sync runs: a sink
/// whose task was dropped mid-write (a crash of the worker) may still have its blocking
/// append running when the restarted task's sink opens the same path, and two rotations
/// racing for the same suffix would overwrite a rotated file.
fn path_lock(path: &Path) -> Arc<Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> = OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(path.to_path_buf()).or_default().clone()
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> SinkError {
    SinkError::retryable(format!("cannot {what} {}: {error}", path.display()))
}

fn open(config: &FileSinkConfig) -> Result<OpenFile, SinkError> {
    let path = &config.path;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_error("create", parent, e))?;
    }
    let existed = path.exists();
    let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| io_error("open", path, e))?;
    if !existed {
        // The new name (and a rotation's rename just before it) must survive a power loss
        // before any line in it counts as flushed.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| io_error("sync the directory of", path, e))?;
    }
    let size_bytes = file.metadata().map_err(|e| io_error("stat", path, e))?.len();
    let mut next_suffix = 1;
    while rotated_path(path, next_suffix).exists() {
        next_suffix += 1;
    }
    Ok(OpenFile { file, size_bytes, next_suffix })
}

fn rotated_path(path: &Path, suffix: u64) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    PathBuf::from(name)
}

fn append(config: &FileSinkConfig, open_file: &mut Option<OpenFile>, lines: &[String]) -> Result<(), SinkError> {
    for line in lines {
        if open_file.is_none() {
            *open_file = Some(open(config)?);
        }
        let current = open_file.as_mut().expect("opened above");
        let line_bytes = line.len() as u64 + 1;
        if current.size_bytes > 0 && current.size_bytes + line_bytes > config.rotate_bytes {
            current.file.sync_data().map_err(|e| io_error("sync", &config.path, e))?;
            // Another sink of this path (a dropped task's) may have rotated since this one
            // opened: take the next suffix that is free now, never overwrite one.
            while rotated_path(&config.path, current.next_suffix).exists() {
                current.next_suffix += 1;
            }
            let target = rotated_path(&config.path, current.next_suffix);
            std::fs::rename(&config.path, &target).map_err(|e| io_error("rotate", &config.path, e))?;
            tracing::info!(path = %target.display(), "file sink rotated");
            *open_file = Some(open(config)?);
        }
        let current = open_file.as_mut().expect("opened above");
        let written = current.file.write_all(line.as_bytes()).and_then(|()| current.file.write_all(b"\n"));
        if let Err(error) = written {
            // Cut a half-written line off, so a retry does not glue a line onto it.
            let _ = current.file.set_len(current.size_bytes);
            return Err(io_error("write", &config.path, error));
        }
        current.size_bytes += line_bytes;
    }
    Ok(())
}

#[async_trait]
impl Sink for FileSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let lines: Vec<String> = batch.iter().map(super::json_line).collect();
        let config = self.config.clone();
        let mut open_file = self.open.take();
        // File I/O blocks: off the async threads.
        let (open_file, result) = tokio::task::spawn_blocking(move || {
            let lock = path_lock(&config.path);
            let _held = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = append(&config, &mut open_file, &lines);
            (open_file, result)
        })
        .await
        .map_err(|error| SinkError::retryable(format!("file sink worker failed: {error}")))?;
        self.open = open_file;
        result
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let Some(open_file) = self.open.take() else { return Ok(()) };
        let path = self.config.path.clone();
        let (open_file, result) = tokio::task::spawn_blocking(move || {
            let lock = path_lock(&path);
            let _held = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let result = open_file.file.sync_data().map_err(|e| io_error("sync", &path, e));
            (open_file, result)
        })
        .await
        .map_err(|error| SinkError::retryable(format!("file sink worker failed: {error}")))?;
        self.open = Some(open_file);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_connect::Record;

    fn record(offset: u64, value: &str) -> SinkRecord {
        SinkRecord {
            record: Record { topic: "logs".into(), value: value.as_bytes().to_vec(), ..Record::default() },
            queue_id: 0,
            queue_offset: offset,
            message_id: format!("id{offset}"),
        }
    }

    #[tokio::test]
    async fn writes_json_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/app.jsonl");
        let mut sink = FileSink::new(FileSinkConfig { path: path.clone(), rotate_bytes: 400 });
        let batch: Vec<_> = (0..10).map(|i| record(i, &format!(r#"{{"n":{i},"msg":"hello"}}"#))).collect();
        sink.write(&batch).await.unwrap();
        sink.write(&[record(10, "plain text")]).await.unwrap();
        sink.flush().await.unwrap();
        let mut lines = Vec::new();
        let mut suffix = 1;
        while rotated_path(&path, suffix).exists() {
            let text = std::fs::read_to_string(rotated_path(&path, suffix)).unwrap();
            assert!(text.len() <= 400, "rotated file {suffix} is {} bytes", text.len());
            lines.extend(text.lines().map(str::to_string));
            suffix += 1;
        }
        assert!(suffix > 2, "several rotations happened");
        lines.extend(std::fs::read_to_string(&path).unwrap().lines().map(str::to_string));
        let values: Vec<serde_json::Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(values.len(), 11);
        for (i, value) in values.iter().take(10).enumerate() {
            assert_eq!(value["queue_offset"], i as u64);
            assert_eq!(value["value"]["n"], i as u64, "JSON values stay JSON");
        }
        assert_eq!(values[10]["value"], "plain text", "other values become strings");
        // A new sink on the same path continues the rotation numbering.
        let mut again = FileSink::new(FileSinkConfig { path: path.clone(), rotate_bytes: 400 });
        again.write(&(11..16).map(|i| record(i, "x")).collect::<Vec<_>>()).await.unwrap();
        again.flush().await.unwrap();
        assert!(rotated_path(&path, suffix).exists(), "the next rotation takes the next free suffix");
        let total: usize = (1..=suffix + 1)
            .map(|n| rotated_path(&path, n))
            .chain([path.clone()])
            .filter(|p| p.exists())
            .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
            .sum();
        assert_eq!(total, 16, "no line lost or overwritten across sinks and rotations");
    }
}
