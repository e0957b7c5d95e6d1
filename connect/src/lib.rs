//! Weir Connect: records, the `Sink` trait, and the sink task that moves messages from a
//! topic into an external system with at-least-once delivery (DESIGN.md §4).
//!
//! **Invariant:** a sink task commits its consumer group's offsets only after the sink has
//! written *and flushed* every record below them, so a crash or restart can repeat records but
//! never skip one. **API boundary:** connect talks to the broker only through
//! `weir_broker::Messaging`, so it runs the same against the embedded broker or, later, a
//! remote one. Sources, the worker with its REST API, and pipelines wiring come next.

mod error;
mod record;
pub mod sink_task;

pub use error::{ConnectError, Result, RetryHint, SinkError};
pub use record::{Record, SinkRecord};
pub use sink_task::{ErrorTolerance, Sink, SinkTaskConfig, SinkTaskStats, run_sink_task};
