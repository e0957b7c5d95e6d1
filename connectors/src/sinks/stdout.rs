//! `type: stdout`: prints each record as a JSON line.

use async_trait::async_trait;
use tokio::io::AsyncWriteExt;
use weir_connect::{Sink, SinkError, SinkRecord};

/// Writes JSON lines to standard output.
#[derive(Debug, Default)]
pub struct StdoutSink;

#[async_trait]
impl Sink for StdoutSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut text = String::new();
        for record in batch {
            text.push_str(&super::json_line(record));
            text.push('\n');
        }
        tokio::io::stdout()
            .write_all(text.as_bytes())
            .await
            .map_err(|error| SinkError::retryable(format!("cannot write to stdout: {error}")))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        tokio::io::stdout().flush().await.map_err(|error| SinkError::retryable(format!("cannot flush stdout: {error}")))
    }
}
