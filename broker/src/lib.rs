//! Weir broker: commitlog storage, consume queues and index, and the embedded messaging core
//! (topics, send, pull with long polling, consumer offsets, queries).
//!
//! `storage` is synchronous and owns the files; `Broker` is the async embedded API on top of
//! it; `client::Messaging` is the trait that a network client will also implement, so
//! connect and streams work the same against an embedded or a remote broker.

mod broker;
pub mod byte_str;
pub mod client;
pub mod error;
pub mod filter;
pub mod message;
mod offsets;
pub mod storage;
pub mod topic;

pub use broker::{
    Broker, BrokerConfig, LONG_POLL_TIMEOUT_MAX, OffsetReset, PULL_MESSAGES_MAX, PullRequest, PullResult, PullStatus,
    QUERY_RESULTS_MAX, SEND_BATCH_MESSAGES_MAX,
};
pub use byte_str::ByteStr;
pub use client::Messaging;
pub use error::{Error, Result};
pub use message::{Message, SendResult, StoredMessage};
pub use topic::{Permission, TopicConfig};
