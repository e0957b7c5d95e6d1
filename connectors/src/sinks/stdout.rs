//! `type: stdout`: prints each record as a JSON line.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use weir_connect::{Sink, SinkError, SinkRecord};

/// Writes JSON lines to standard output through one handle, so `flush` waits for every
/// earlier write.
#[derive(Debug)]
pub struct StdoutSink {
    out: tokio::io::Stdout,
}

impl Default for StdoutSink {
    fn default() -> Self {
        StdoutSink { out: tokio::io::stdout() }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut text = String::new();
        for record in batch {
            text.push_str(&super::json_line(record));
            text.push('\n');
        }
        self.out
            .write_all(text.as_bytes())
            .await
            .map_err(|error| SinkError::retryable(format!("cannot write to stdout: {error}")))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().await.map_err(|error| SinkError::retryable(format!("cannot flush stdout: {error}")))
    }
}
