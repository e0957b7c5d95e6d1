//! Weir Connect: records, the `Source` and `Sink` traits, and the tasks that move records
//! between external systems and topics with at-least-once delivery (DESIGN.md §4).
//!
//! **Invariants:** a sink task commits its consumer group's offsets only after the sink has
//! written *and flushed* every record below them; a source task commits a position only after
//! the broker acknowledged every record up to it. A crash or restart can repeat records but
//! never skip one. **API boundary:** connect talks to the broker only through
//! `weir_broker::Messaging`, so it runs the same against the embedded broker or, later, a
//! remote one. The worker (supervision, REST API) lives in the `weir` binary; `conformance` (feature
//! `conformance`) is the test kit every connector's tests run.

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
pub mod positions;
mod record;
pub mod sink_task;
pub mod source_task;

pub use error::{ConnectError, Result, RetryHint, SinkError};
pub use positions::{FilePositionStore, Position, PositionStore};
pub use record::{PROPERTY_RECORD_KEY, Record, SinkRecord, now_ms, set_message_key};
pub use sink_task::{BatchPreparer, ErrorTolerance, PreparedBatch, Sink, SinkTaskConfig, SinkTaskStats, run_sink_task};
pub use source_task::{Source, SourceError, SourceRecord, SourceTaskConfig, SourceTaskStats, run_source_task};
