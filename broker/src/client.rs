//! `Messaging`: what connect and streams need from a broker, implemented by the embedded
//! `Broker` now and by the network client later, so either can stand in for the other.

use async_trait::async_trait;

use crate::broker::{Broker, PullRequest, PullResult};
use crate::error::Result;
use crate::message::{Message, SendResult};
use crate::storage::QueueRange;
use crate::topic::TopicConfig;

/// A broker as a client sees it.
#[async_trait]
pub trait Messaging: Send + Sync {
    /// Creates the topic, or does nothing when it exists.
    async fn ensure_topic(&self, config: TopicConfig) -> Result<TopicConfig>;
    /// The topic's config, if it exists.
    async fn topic(&self, name: &str) -> Result<Option<TopicConfig>>;
    async fn send(&self, message: Message) -> Result<SendResult>;
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>>;
    async fn pull(&self, request: PullRequest) -> Result<PullResult>;
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> Result<()>;
    async fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>>;
    async fn queue_range(&self, topic: &str, queue_id: u32) -> Result<QueueRange>;
    /// The first offset of a queue stored at or after `timestamp_ms` (RocketMQ's
    /// `searchOffset`).
    async fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64>;
    /// The largest message the broker stores, encoded with its properties (RocketMQ's
    /// `maxMessageSize`): a client refuses a larger one before sending anything.
    fn message_size_max_bytes(&self) -> usize;
}

#[async_trait]
impl Messaging for Broker {
    fn message_size_max_bytes(&self) -> usize {
        self.config().store.message_size_max_bytes
    }
    async fn ensure_topic(&self, config: TopicConfig) -> Result<TopicConfig> {
        if let Some(existing) = Broker::topic(self, &config.name) {
            return Ok(existing);
        }
        let broker = self.clone();
        let new_config = config.clone();
        // topics.json is fsynced: off the async threads.
        let created = tokio::task::spawn_blocking(move || broker.create_topic(new_config))
            .await
            .map_err(|_| crate::Error::StoreClosed)?;
        match created {
            Ok(()) => Ok(config),
            Err(crate::Error::TopicExists { .. }) => Ok(Broker::topic(self, &config.name).unwrap_or(config)),
            Err(error) => Err(error),
        }
    }
    async fn topic(&self, name: &str) -> Result<Option<TopicConfig>> {
        Ok(Broker::topic(self, name))
    }
    async fn send(&self, message: Message) -> Result<SendResult> {
        Broker::send(self, message).await
    }
    async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
        Broker::send_batch(self, messages).await
    }
    async fn pull(&self, request: PullRequest) -> Result<PullResult> {
        Broker::pull(self, request).await
    }
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> Result<()> {
        Broker::commit_offset(self, group, topic, queue_id, offset)
    }
    async fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> Result<Option<u64>> {
        Ok(Broker::committed_offset(self, group, topic, queue_id))
    }
    async fn queue_range(&self, topic: &str, queue_id: u32) -> Result<QueueRange> {
        Ok(Broker::queue_range(self, topic, queue_id))
    }
    async fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64> {
        Broker::offset_for_timestamp(self, topic, queue_id, timestamp_ms).await
    }
}
