//! `type: blackhole`: consumes and drops records (for benchmarks), counting them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use weir_connect::{Sink, SinkError, SinkRecord};

/// Drops every record; `received` counts them.
#[derive(Clone, Debug, Default)]
pub struct BlackholeSink {
    pub received: Arc<AtomicU64>,
}

#[async_trait]
impl Sink for BlackholeSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        self.received.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}
