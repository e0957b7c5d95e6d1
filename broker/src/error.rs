//! The broker crate's one error type; each variant says who is at fault.

use std::path::PathBuf;

/// Result alias for the broker crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the broker, grouped by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- the caller's input ---
    /// A topic name breaks RocketMQ's rules.
    #[error("invalid topic name {name:?}: {reason}")]
    TopicNameInvalid { name: String, reason: &'static str },
    /// A consumer group name breaks RocketMQ's rules.
    #[error("invalid group name {name:?}: {reason}")]
    GroupNameInvalid { name: String, reason: &'static str },
    /// The topic does not exist (and auto-create is off).
    #[error("topic {topic:?} does not exist")]
    TopicNotFound { topic: String },
    /// `create_topic` on a name that is already taken.
    #[error("topic {topic:?} already exists")]
    TopicExists { topic: String },
    /// A topic setting is out of range.
    #[error("invalid topic config for {topic:?}: {reason}")]
    TopicConfigInvalid { topic: String, reason: String },
    /// The topic's permission forbids the operation.
    #[error("topic {topic:?} is not {operation}")]
    TopicPermissionDenied { topic: String, operation: &'static str },
    /// A queue id beyond the topic's queue count.
    #[error("queue {queue_id} does not exist in topic {topic:?} ({queue_count} queues)")]
    QueueNotFound { topic: String, queue_id: u32, queue_count: u32 },
    /// The encoded message is over the configured limit.
    #[error("message of {size_bytes} bytes exceeds the maximum of {max_bytes} bytes")]
    MessageTooLarge { size_bytes: usize, max_bytes: usize },
    /// The encoded properties are over the format's limit.
    #[error("message properties of {size_bytes} bytes exceed the maximum of {max_bytes} bytes")]
    PropertiesTooLarge { size_bytes: usize, max_bytes: usize },
    /// A property name or value cannot be stored.
    #[error("invalid message property {name:?}: {reason}")]
    PropertyInvalid { name: String, reason: &'static str },
    /// A batch with no messages, or more than the batch maximum.
    #[error("invalid batch: {reason}")]
    BatchInvalid { reason: String },
    /// A tag subscription expression that does not parse.
    #[error("invalid tag expression {expression:?}: {reason}")]
    TagExpressionInvalid { expression: String, reason: &'static str },
    /// A read below the queue's minimum offset (retention removed it); reset the consumer.
    #[error("offset {offset} of {topic}/{queue_id} is below the minimum offset {min_offset}")]
    OffsetBelowMinimum { topic: String, queue_id: u32, offset: u64, min_offset: u64 },
    /// No message at that physical offset, id or key.
    #[error("message not found: {what}")]
    MessageNotFound { what: String },
    /// A configuration value is out of range.
    #[error("invalid storage config field `{field}`: {reason}")]
    ConfigInvalid { field: &'static str, reason: String },

    // --- the environment ---
    /// Another process holds the data directory.
    #[error("data directory {path} is locked by another process ({holder})")]
    DataDirLocked { path: PathBuf, holder: String },
    /// An I/O error from the operating system.
    #[error("{context} {path}: {source}")]
    Io { context: &'static str, path: PathBuf, source: std::io::Error },
    /// A metadata file that does not parse.
    #[error("metadata file {path} is invalid: {reason}")]
    MetadataInvalid { path: PathBuf, reason: String },
    /// Too many appends are queued; retry after a moment.
    #[error("storage is busy: the append queue holds its maximum of {requests_max} requests")]
    Busy { requests_max: usize },
    /// The store was closed (or its writer stopped after an I/O error).
    #[error("message store is closed")]
    StoreClosed,

    // --- the data on disk ---
    /// A commitlog segment's bytes fail validation.
    #[error("commitlog corrupt at physical offset {offset} ({path}): {reason}")]
    CommitLogCorrupt { path: PathBuf, offset: u64, reason: String },
    /// A consume queue entry disagrees with the commitlog.
    #[error("consume queue {topic}/{queue_id} corrupt at queue offset {queue_offset}: {reason}")]
    ConsumeQueueCorrupt { topic: String, queue_id: u32, queue_offset: u64, reason: String },
}

impl Error {
    /// The same request may succeed later (the store is busy); a client retries it.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Busy { .. })
    }

    /// The message itself is refused: sending it again unchanged can never succeed.
    pub fn is_message_rejected(&self) -> bool {
        matches!(self, Error::MessageTooLarge { .. } | Error::PropertiesTooLarge { .. } | Error::PropertyInvalid { .. })
    }

    pub(crate) fn io(context: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { context, path: path.into(), source }
    }

    /// True when the caller should reset its offset (the data was removed by retention).
    pub fn is_offset_below_minimum(&self) -> bool {
        matches!(self, Error::OffsetBelowMinimum { .. })
    }
}
