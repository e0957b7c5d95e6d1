//! The streams crate's error: who is at fault (the job's SQL, its input data, the broker,
//! or an internal DataFusion failure).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StreamsError {
    /// The job's SQL is wrong (user config): which statement and why.
    #[error("statement {statement}: {reason}")]
    Sql { statement: usize, reason: String },
    /// The job's queries cannot run as streams (user config).
    #[error("cannot plan: {0}")]
    Plan(String),
    /// DataFusion failed (planning or execution).
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// Arrow failed while decoding or building batches.
    #[error("arrow: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// A checkpoint cannot be written or read (resources, or a damaged file).
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The broker refused or failed (external system).
    #[error("broker: {0}")]
    Broker(#[from] weir_broker::Error),
}

pub type Result<T, E = StreamsError> = std::result::Result<T, E>;
