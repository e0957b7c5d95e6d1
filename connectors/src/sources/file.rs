//! The `file` source: follows a growing text file (an application log) and sends one record
//! per line, like Vector's `file` source or Kafka Connect's FileStream source.
//!
//! The position is `{"path", "inode", "offset"}`: the byte after the last line handed out. A
//! line is sent only once its newline is written, so a half-written last line waits. When the
//! path's inode changes (the log was rotated by rename) the source finishes the old file through
//! its open handle, then starts the new one at 0; when the file shrinks below the position (it
//! was truncated) it starts again at 0. After a restart with a different inode at the path, the
//! rest of the old file is not read (it can no longer be found by name); that is logged.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use weir_connect::{Position, Record, Source, SourceError, SourceRecord};

/// Bytes read at once.
const READ_CHUNK_BYTES: usize = 256 << 10;
/// Reads one poll makes at most.
const READ_CHUNKS_PER_POLL_MAX: usize = 16;
/// Longest line accepted by default; longer lines are skipped and counted.
pub const LINE_BYTES_MAX_DEFAULT: usize = 100 << 10;
/// Largest `line_bytes_max` (a line must fit one read).
pub const LINE_BYTES_MAX: usize = READ_CHUNK_BYTES - 1;

/// Where a file source starts when it has no position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

/// A file source's settings.
#[derive(Clone, Debug)]
pub struct FileSourceConfig {
    /// Connector name (metrics label).
    pub name: String,
    pub path: PathBuf,
    pub topic: String,
    /// Tag of every record.
    pub tag: Option<String>,
    pub start_at: StartAt,
    /// Longest line (at most `LINE_BYTES_MAX`); a longer one is skipped with a warning and
    /// counted.
    pub line_bytes_max: usize,
}

impl FileSourceConfig {
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>, topic: impl Into<String>) -> Self {
        FileSourceConfig {
            name: name.into(),
            path: path.into(),
            topic: topic.into(),
            tag: None,
            start_at: StartAt::Beginning,
            line_bytes_max: LINE_BYTES_MAX_DEFAULT,
        }
    }
}

/// Follows one file.
pub struct FileSource {
    config: FileSourceConfig,
    /// The open file, its inode and the offset of the next unread byte.
    file: Option<(std::fs::File, u64)>,
    offset: u64,
    /// Inside an over-long line: skip until its newline.
    skipping: bool,
}

impl FileSource {
    pub fn new(config: FileSourceConfig) -> Self {
        FileSource { config, file: None, offset: 0, skipping: false }
    }

    /// Opens the path; `None` while it does not exist.
    fn open_path(&self) -> Result<Option<(std::fs::File, u64, u64)>, SourceError> {
        match std::fs::File::open(&self.config.path) {
            Ok(file) => {
                let metadata = file.metadata().map_err(|e| self.io_error("cannot stat", e))?;
                Ok(Some((file, metadata.ino(), metadata.len())))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io_error("cannot open", e)),
        }
    }

    fn io_error(&self, what: &str, error: std::io::Error) -> SourceError {
        let message = format!("file source {}: {what} {}: {error}", self.config.name, self.config.path.display());
        match error.kind() {
            std::io::ErrorKind::PermissionDenied => SourceError::permanent(message),
            _ => SourceError::retryable(message),
        }
    }

    fn position(&self, offset: u64) -> Position {
        let inode = self.file.as_ref().map_or(0, |(_, inode)| *inode);
        json!({ "path": self.config.path, "inode": inode, "offset": offset })
    }

    /// Reads complete lines from the open file (blocking; call off the async threads).
    fn read_lines(&mut self, records_max: usize) -> Result<Vec<SourceRecord>, SourceError> {
        let mut records = Vec::new();
        let mut buffer = vec![0; READ_CHUNK_BYTES];
        for _ in 0..READ_CHUNKS_PER_POLL_MAX {
            let Some((file, _)) = &self.file else { break };
            let read = file.read_at(&mut buffer, self.offset).map_err(|e| self.io_error("cannot read", e))?;
            let consumed = self.split_lines(&buffer[..read], records_max, &mut records);
            if consumed == 0 && read == READ_CHUNK_BYTES {
                // A whole chunk inside one line: longer than any allowed line; skip to its end.
                self.skipping = true;
                self.offset += read as u64;
                continue;
            }
            self.offset += consumed as u64;
            if records.len() >= records_max || consumed == 0 || read < READ_CHUNK_BYTES {
                break;
            }
        }
        Ok(records)
    }

    /// Turns the complete lines at the start of `chunk` (read at `self.offset`) into records;
    /// returns the bytes consumed.
    fn split_lines(&mut self, chunk: &[u8], records_max: usize, records: &mut Vec<SourceRecord>) -> usize {
        let now_ms = weir_connect::now_ms();
        let mut consumed = 0;
        while records.len() < records_max {
            let Some(newline) = chunk[consumed..].iter().position(|b| *b == b'\n') else { break };
            let mut line = &chunk[consumed..consumed + newline];
            consumed += newline + 1;
            if std::mem::take(&mut self.skipping) || line.len() > self.config.line_bytes_max {
                self.skip_line(line.len());
                continue;
            }
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let record = Record {
                topic: self.config.topic.clone(),
                value: line.to_vec(),
                tag: self.config.tag.clone(),
                timestamp_ms: now_ms,
                ..Record::default()
            };
            records.push(SourceRecord { record, position: self.position(self.offset + consumed as u64) });
        }
        consumed
    }

    fn skip_line(&self, bytes: usize) {
        tracing::warn!(source = %self.config.name, path = %self.config.path.display(), offset = self.offset, bytes, max = self.config.line_bytes_max, "line over line_bytes_max skipped");
        metrics::counter!("weir_file_source_lines_skipped_total", "connector" => self.config.name.clone()).increment(1);
    }

    /// At the end of the open file: follows a rotation or a truncation.
    fn check_rotation(&mut self) -> Result<(), SourceError> {
        let Some((file, inode, length)) = self.open_path()? else { return Ok(()) };
        match &self.file {
            Some((_, current)) if *current == inode => {
                if length < self.offset {
                    tracing::warn!(source = %self.config.name, path = %self.config.path.display(), "file truncated; reading it from the start");
                    self.offset = 0;
                    self.skipping = false;
                }
            }
            Some((old, _)) => {
                // Lines the writer appended to the old file after our last read and before
                // it renamed it are read first (through the open handle); only a last line
                // without its newline is left behind, with a warning.
                let old_length = old.metadata().map_err(|e| self.io_error("cannot stat", e))?.len();
                if old_length > self.offset {
                    let mut tail = vec![0; (old_length - self.offset).min(READ_CHUNK_BYTES as u64) as usize];
                    let read = old.read_at(&mut tail, self.offset).map_err(|e| self.io_error("cannot read", e))?;
                    if tail[..read].contains(&b'\n') {
                        return Ok(());
                    }
                    tracing::warn!(source = %self.config.name, path = %self.config.path.display(), bytes = old_length - self.offset, "the rotated file ends in a line without a newline; it is not read");
                }
                tracing::info!(source = %self.config.name, path = %self.config.path.display(), "file rotated; reading the new one");
                self.file = Some((file, inode));
                self.offset = 0;
                self.skipping = false;
            }
            None => {
                self.file = Some((file, inode));
                self.offset = 0;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Source for FileSource {
    async fn open(&mut self, position: Option<Position>) -> Result<(), SourceError> {
        if self.config.line_bytes_max == 0 || self.config.line_bytes_max > LINE_BYTES_MAX {
            let message = format!("file source {}: line_bytes_max must be in 1..={LINE_BYTES_MAX}", self.config.name);
            return Err(SourceError::permanent(message));
        }
        let opened = self.open_path()?;
        self.skipping = false;
        let Some((file, inode, length)) = opened else {
            tracing::info!(source = %self.config.name, path = %self.config.path.display(), "file does not exist yet; waiting for it");
            self.file = None;
            self.offset = 0;
            return Ok(());
        };
        self.offset = match position {
            Some(position) => {
                let saved_inode = position["inode"].as_u64();
                let saved_offset = position["offset"].as_u64().ok_or_else(|| {
                    SourceError::permanent(format!(
                        "file source {}: position {position} has no offset",
                        self.config.name
                    ))
                })?;
                if saved_inode != Some(inode) {
                    tracing::warn!(source = %self.config.name, path = %self.config.path.display(), "the file was replaced since the last position; reading the new one from the start");
                    0
                } else if saved_offset > length {
                    tracing::warn!(source = %self.config.name, path = %self.config.path.display(), "the file is shorter than the last position; reading it from the start");
                    0
                } else {
                    saved_offset
                }
            }
            None if self.config.start_at == StartAt::End => length,
            None => 0,
        };
        self.file = Some((file, inode));
        Ok(())
    }

    async fn poll(&mut self, records_max: usize, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        let mut this = std::mem::replace(self, FileSource::new(self.config.clone()));
        // File reads can block: off the async threads. The state travels along and back.
        let (this, records) = tokio::task::spawn_blocking(move || {
            let mut records = this.read_lines(records_max);
            if matches!(&records, Ok(r) if r.is_empty()) {
                records = this.check_rotation().and_then(|()| this.read_lines(records_max));
            }
            (this, records)
        })
        .await
        .map_err(|e| SourceError::permanent(format!("file reader panicked: {e}")))?;
        *self = this;
        let records = records?;
        if records.is_empty() {
            tokio::time::sleep(wait.min(Duration::from_millis(250))).await;
        }
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn values(records: Vec<SourceRecord>) -> Vec<String> {
        records.into_iter().map(|r| String::from_utf8(r.record.value).unwrap()).collect()
    }

    #[tokio::test]
    async fn lines_written_to_the_old_file_just_before_a_rotation_are_read_before_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "a\n");
        let mut source = FileSource::new(FileSourceConfig::new("tail", &path, "logs"));
        source.open(None).await.unwrap();
        assert_eq!(values(source.read_lines(10).unwrap()), ["a"]);
        // Between a read that found nothing and the rotation check, the writer finishes a
        // line and a half into the old file and renames it; a new file starts.
        append(&path, "b\nc-without-newline");
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&path, "d\n");
        source.check_rotation().unwrap();
        assert_eq!(values(source.read_lines(10).unwrap()), ["b"], "the old file first");
        source.check_rotation().unwrap();
        assert_eq!(values(source.read_lines(10).unwrap()), ["d"], "then the new one (the unfinished line is left)");
    }
}
