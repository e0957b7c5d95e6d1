//! Weir streams: windowed ETL SQL over topics, planned and executed with DataFusion
//! (DESIGN.md §6).
//!
//! A job is SQL text: `CREATE TABLE` statements declare topics as tables (schema, JSON
//! format, event-time column and watermark), `INSERT INTO <topic> SELECT …` statements are
//! the queries whose rows become messages. `sql` parses what DataFusion does not know
//! (watermarks, topic options, window table functions), `decode` turns messages into Arrow
//! rows, `job` plans the queries once and runs micro-batches through them, and `window` is
//! the event-time window operator stock DataFusion lacks (incremental aggregation over
//! panes, emitted once when the watermark passes a window's end). `checkpoint` saves input
//! offsets, watermarks and window state together; `runner` drives a job against the broker
//! with exactly-once window results in its output topics.
//!
//! It depends on `weir-broker` only (messages and, for the runner, the `Messaging` trait).

pub mod checkpoint;
pub mod decode;
pub mod error;
pub mod functions;
pub mod inspect;
pub mod job;
pub mod join;
pub mod runner;
pub mod session;
pub mod slot;
pub mod sql;
pub mod window;

/// The DataFusion (and Arrow) this crate plans with, for callers that print its batches.
pub use datafusion;
pub use error::{Result, StreamsError};
pub use job::{Job, JobOutput, JobSnapshot};
pub use runner::{JobProgress, JobRunConfig, JobStats, run_job};
pub use sql::{JobSql, parse_job};
