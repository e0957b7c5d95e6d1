//! Connect's errors; a sink's error carries the retry hint the runtime acts on.

use std::collections::BTreeMap;
use std::time::Duration;

/// Result alias for the connect crate.
pub type Result<T, E = ConnectError> = std::result::Result<T, E>;

/// What the runtime should do about a failed sink call. The runtime retries on the hint,
/// never by parsing an error's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryHint {
    /// Transient (timeout, overload, connection lost): retry, after at least `after` if given.
    Retry { after: Option<Duration> },
    /// The records cannot be written as they are (type error, rejected by the target).
    Permanent,
}

/// A failed `Sink::write` or `Sink::flush`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    pub retry: RetryHint,
    /// With `Permanent`: the indexes (in the batch) of the records at fault; empty means the
    /// whole batch. The others count as written.
    pub failed_records: Vec<usize>,
    /// With `Permanent`: why each record failed, by batch index, when the target said (the
    /// dead-letter message carries it instead of `message`).
    pub record_errors: BTreeMap<usize, String>,
}

impl SinkError {
    /// A transient failure of the whole call.
    pub fn retryable(message: impl Into<String>) -> Self {
        SinkError {
            message: message.into(),
            retry: RetryHint::Retry { after: None },
            failed_records: Vec::new(),
            record_errors: BTreeMap::new(),
        }
    }

    /// Records that can never be written, each with its own reason; the rest of the batch
    /// was written. `message` summarises.
    pub fn poison_each(message: impl Into<String>, record_errors: BTreeMap<usize, String>) -> Self {
        let failed_records = record_errors.keys().copied().collect();
        SinkError { message: message.into(), retry: RetryHint::Permanent, failed_records, record_errors }
    }

    /// A transient failure that should wait at least `after` before the retry.
    pub fn retry_after(message: impl Into<String>, after: std::time::Duration) -> Self {
        SinkError { retry: RetryHint::Retry { after: Some(after) }, ..SinkError::retryable(message) }
    }

    /// Records that can never be written (poison); the rest of the batch was written.
    pub fn poison(message: impl Into<String>, failed_records: Vec<usize>) -> Self {
        SinkError {
            message: message.into(),
            retry: RetryHint::Permanent,
            failed_records,
            record_errors: BTreeMap::new(),
        }
    }
}

/// Everything that can stop a connector task, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A setting is out of range.
    #[error("invalid config for connector {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
    /// The broker refused or failed.
    #[error("broker: {0}")]
    Broker(#[from] weir_broker::Error),
    /// The sink failed and the error tolerance does not allow skipping.
    #[error("connector {connector:?}: sink failed after {attempts} attempts: {source}")]
    Sink {
        connector: String,
        attempts: u32,
        #[source]
        source: SinkError,
    },
    /// The source failed and retrying is not allowed or did not help.
    #[error("connector {connector:?}: source failed after {attempts} attempts: {source}")]
    Source {
        connector: String,
        attempts: u32,
        #[source]
        source: crate::source_task::SourceError,
    },
    /// The source position file cannot be read or written.
    #[error("source positions {path}: {reason}")]
    PositionStore { path: std::path::PathBuf, reason: String },
}
