//! The embedded broker: topics, send, pull with long polling, consumer offsets and queries
//! over one `MessageStore`, as an async Rust API.
//!
//! **API boundary:** everything a client does goes through `client::Messaging`, which this
//! type implements; the network client will implement it too. Storage calls that touch
//! files run on tokio's blocking pool or on storage threads, never on a runtime thread.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore, oneshot};

use crate::error::{Error, Result};
use crate::filter::TagExpression;
use crate::message::{Message, SendResult, StoredMessage, new_message_id_at};
use crate::offsets::OffsetTable;
use crate::storage::{
    DispatchListener, MessageStore, NewMessage, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID, QueueRange,
    ReadLimits, StoreConfig,
};
use crate::topic::{TopicConfig, TopicEntry, TopicTable, validate_group_name, validate_topic_name};

/// Most messages one pull returns.
pub const PULL_MESSAGES_MAX: usize = 1024;
/// Most messages one send batch holds.
pub const SEND_BATCH_MESSAGES_MAX: usize = 4096;
/// Most messages one query by key returns.
pub const QUERY_RESULTS_MAX: usize = 1024;
/// Longest long-poll wait a pull may ask for.
pub const LONG_POLL_TIMEOUT_MAX: Duration = Duration::from_secs(60);

/// Broker settings on top of the store's.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    pub store: StoreConfig,
    /// Create a topic on first send instead of refusing (RocketMQ `autoCreateTopicEnable`).
    pub auto_create_topics: bool,
    /// Queues of an auto-created topic.
    pub default_queue_count: u32,
    /// Most bytes of messages one pull returns (at least one message is always returned).
    pub pull_bytes_max: usize,
    /// Most consume queue entries one pull inspects when filtering by tag.
    pub pull_scan_entries_max: usize,
    /// How often committed consumer offsets are written to disk.
    pub offset_persist_interval_ms: u64,
}

impl BrokerConfig {
    pub fn new(data_dir: impl Into<std::path::PathBuf>) -> Self {
        BrokerConfig {
            store: StoreConfig::new(data_dir),
            auto_create_topics: false,
            default_queue_count: 4,
            pull_bytes_max: 4 << 20,
            pull_scan_entries_max: 16_384,
            offset_persist_interval_ms: 5000,
        }
    }
}

/// How a pull went (RocketMQ's PullStatus, with OFFSET_ILLEGAL split in two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullStatus {
    /// Messages returned.
    Found,
    /// The offset is the queue's max: nothing new (after the long-poll wait, if any).
    NoNewMessage,
    /// Entries were scanned but none matched the tag expression; continue at `next_offset`.
    NoMatchedMessage,
    /// Below the queue's minimum (removed by retention); `next_offset` is the minimum.
    OffsetTooSmall,
    /// Beyond the queue's max; `next_offset` is the max.
    OffsetTooLarge,
}

/// A pull of one queue.
#[derive(Clone, Debug)]
pub struct PullRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub messages_max: usize,
    /// Most bytes of messages returned (capped by the broker's `pull_bytes_max`; at least one
    /// message is returned when any matches).
    pub bytes_max: usize,
    /// `*`, or `TagA || TagB`.
    pub tag_expression: String,
    /// Wait up to this long for a message when there is none (0 = answer at once).
    pub long_poll_timeout: Duration,
}

impl PullRequest {
    pub fn new(group: &str, topic: &str, queue_id: u32, queue_offset: u64) -> Self {
        PullRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id,
            queue_offset,
            messages_max: 32,
            bytes_max: usize::MAX,
            tag_expression: "*".to_string(),
            long_poll_timeout: Duration::ZERO,
        }
    }
}

/// What a pull returned.
#[derive(Clone, Debug)]
pub struct PullResult {
    pub status: PullStatus,
    pub messages: Vec<StoredMessage>,
    pub next_offset: u64,
    pub min_offset: u64,
    pub max_offset: u64,
}

/// Where to move a group's offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    Earliest,
    Latest,
    /// The first message stored at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

/// Long-poll wake-ups per (topic, queue id), created when a pull first waits on a queue.
type Waiters = Mutex<HashMap<(String, u32), Arc<Notify>>>;

struct Inner {
    config: BrokerConfig,
    store: Arc<MessageStore>,
    topics: TopicTable,
    offsets: Arc<OffsetTable>,
    waiters: Arc<Waiters>,
    /// Topics being deleted: sends to them are refused until the deletion ends.
    deleting: Mutex<std::collections::HashSet<String>>,
    /// Sends hold it shared from their topic check until their append is queued; a deletion
    /// takes it exclusively to mark the topic deleting, so no send that passed the check can
    /// be queued behind the store's delete command.
    topic_gate: tokio::sync::RwLock<()>,
    append_permits: Arc<Semaphore>,
    born_host: SocketAddr,
    persister: Mutex<Option<(std::sync::mpsc::SyncSender<()>, JoinHandle<()>)>>,
}

/// The embedded broker. Clones share one store.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("data_dir", &self.inner.config.store.data_dir).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Broker {
    /// Opens (and recovers) the data directory. Blocking: call it before serving, or from
    /// `spawn_blocking`.
    pub fn open(config: BrokerConfig) -> Result<Broker> {
        let waiters: Arc<Waiters> = Arc::default();
        let listener_waiters = waiters.clone();
        let listener: DispatchListener = Arc::new(move |topic, queue_id, _max_offset| {
            let waiters = listener_waiters.lock().expect("waiters lock");
            if waiters.is_empty() {
                return;
            }
            if let Some(notify) = waiters.get(&(topic.to_string(), queue_id)) {
                notify.notify_waiters();
            }
        });
        let store = Arc::new(MessageStore::open(config.store.clone(), Some(listener))?);
        let config_dir = config.store.data_dir.join("config");
        std::fs::create_dir_all(&config_dir).map_err(|e| Error::io("cannot create", &config_dir, e))?;
        let topics = TopicTable::load(config_dir.join("topics.json"))?;
        let offsets = Arc::new(OffsetTable::load(config_dir.join("consumer_offsets.json"))?);
        // Offsets of a topic deleted just before a crash (they are persisted on an interval):
        // a topic re-created under that name must start its groups afresh.
        for (_, topic) in offsets.groups() {
            if topics.get(&topic).is_none() {
                tracing::info!(topic, "dropping consumer offsets of a deleted topic");
                offsets.remove_topic(&topic);
            }
        }
        let (stop_tx, stop_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let persist_offsets = offsets.clone();
        let interval = Duration::from_millis(config.offset_persist_interval_ms.max(10));
        let persister = std::thread::Builder::new()
            .name("weir-offset-persist".into())
            .spawn(move || {
                // Every interval, and once more when the broker closes or is dropped without
                // `close` (the sender goes away), so committed offsets are not lost.
                loop {
                    let stopping = !matches!(stop_rx.recv_timeout(interval), Err(RecvTimeoutError::Timeout));
                    if let Err(error) = persist_offsets.persist() {
                        tracing::error!(%error, "cannot persist consumer offsets");
                    }
                    if stopping {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("cannot spawn offset thread", &config_dir, e))?;
        let permits = config.store.append_queue_requests_max;
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                store,
                topics,
                offsets,
                waiters,
                deleting: Mutex::new(std::collections::HashSet::new()),
                topic_gate: tokio::sync::RwLock::new(()),
                append_permits: Arc::new(Semaphore::new(permits)),
                born_host: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                persister: Mutex::new(Some((stop_tx, persister))),
            }),
        })
    }

    /// The underlying store (for tools and benchmarks).
    pub fn store(&self) -> &MessageStore {
        &self.inner.store
    }

    pub fn config(&self) -> &BrokerConfig {
        &self.inner.config
    }

    /// Persists offsets, flushes and closes the store. Other clones become unusable.
    pub fn close(&self) -> Result<()> {
        if let Some((stop, thread)) = self.inner.persister.lock().expect("persister lock").take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
        self.inner.offsets.persist()?;
        self.inner.store.close()
    }

    // ----- topics -----

    /// Creates a topic; an existing name is an error.
    pub fn create_topic(&self, config: TopicConfig) -> Result<()> {
        self.inner.topics.put(config, true)
    }

    /// Creates or replaces a topic's config. Lowering the queue count stops sends and pulls
    /// on the queues above it; their messages stay stored (until retention) and come back if
    /// the count is raised again.
    pub fn update_topic(&self, config: TopicConfig) -> Result<()> {
        if self.inner.topics.get(&config.name).is_none() {
            return Err(Error::TopicNotFound { topic: config.name });
        }
        self.inner.topics.put(config, false)
    }

    pub fn topic(&self, name: &str) -> Option<TopicConfig> {
        self.inner.topics.get(name)
    }

    pub fn topics(&self) -> Vec<TopicConfig> {
        self.inner.topics.list()
    }

    /// Deletes a topic, its consume queues and its consumer offsets.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let config = self.inner.topics.get(name).ok_or_else(|| Error::TopicNotFound { topic: name.to_string() })?;
        // Refuse sends (and auto-creation) while the deletion runs; sends already past their
        // check finish queueing first.
        {
            let _gate = self.inner.topic_gate.write().await;
            self.inner.deleting.lock().expect("deleting lock").insert(name.to_string());
        }
        let result = self.delete_topic_steps(name).await;
        if result.is_ok() {
            // Before sends may re-create the topic: its groups start afresh.
            self.inner.offsets.remove_topic(name);
        }
        self.inner.deleting.lock().expect("deleting lock").remove(name);
        result?;
        // Wake long polls on the deleted topic: they see it gone and return.
        let waiters: Vec<Arc<Notify>> = {
            let mut waiters = self.inner.waiters.lock().expect("waiters lock");
            let keys: Vec<_> = (0..config.queue_count).map(|queue_id| (name.to_string(), queue_id)).collect();
            keys.iter().filter_map(|key| waiters.remove(key)).collect()
        };
        for notify in waiters {
            notify.notify_waiters();
        }
        Ok(())
    }

    /// The store first (tombstone, queues), then `topics.json`: a crash in between leaves an
    /// empty topic to delete again, never a deleted topic whose old messages come back.
    async fn delete_topic_steps(&self, name: &str) -> Result<()> {
        // The delete command takes a slot of the append queue like an append: with a permit,
        // so an append holding one never finds the queue full.
        let _permit = self.inner.append_permits.clone().acquire_owned().await.map_err(|_| Error::StoreClosed)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let broker = self.clone();
        let topic = name.to_string();
        tokio::task::spawn_blocking(move || {
            broker.inner.store.delete_topic(
                &topic,
                Box::new(move |result| {
                    let _ = tx.send(result);
                }),
            )
        })
        .await
        .map_err(|_| Error::StoreClosed)??;
        rx.await.map_err(|_| Error::StoreClosed)??;
        let broker = self.clone();
        let topic = name.to_string();
        // topics.json is fsynced: off the async threads.
        tokio::task::spawn_blocking(move || broker.inner.topics.remove(&topic))
            .await
            .map_err(|_| Error::StoreClosed)??;
        Ok(())
    }

    async fn topic_for_send(&self, name: &str) -> Result<Arc<TopicEntry>> {
        if self.inner.deleting.lock().expect("deleting lock").contains(name) {
            return Err(Error::TopicNotFound { topic: name.to_string() });
        }
        if let Some(entry) = self.inner.topics.entry(name) {
            if !entry.config.permission.writable {
                return Err(Error::TopicPermissionDenied { topic: name.to_string(), operation: "writable" });
            }
            return Ok(entry);
        }
        validate_topic_name(name)?;
        if !self.inner.config.auto_create_topics {
            return Err(Error::TopicNotFound { topic: name.to_string() });
        }
        let config = TopicConfig::new(name, self.inner.config.default_queue_count);
        let broker = self.clone();
        // topics.json is fsynced: off the async threads.
        let created = tokio::task::spawn_blocking(move || broker.inner.topics.put(config, true))
            .await
            .map_err(|_| Error::StoreClosed)?;
        match created {
            Ok(()) => tracing::info!(topic = name, "auto-created topic"),
            Err(Error::TopicExists { .. }) => {}
            Err(error) => return Err(error),
        }
        self.inner.topics.entry(name).ok_or_else(|| Error::TopicNotFound { topic: name.to_string() })
    }

    fn select_queue(&self, topic: &TopicEntry, sharding_key: Option<&str>) -> u32 {
        let queue_count = topic.config.queue_count;
        match sharding_key {
            Some(key) => (crate::storage::fnv1a_64(key.as_bytes()) % u64::from(queue_count)) as u32,
            None => topic.next_queue.fetch_add(1, Ordering::Relaxed) % queue_count,
        }
    }

    // ----- send -----

    /// Sends one message; see `send_batch`.
    pub async fn send(&self, message: Message) -> Result<SendResult> {
        let mut results = self.send_batch(vec![message]).await?;
        Ok(results.pop().expect("one result per message"))
    }

    /// Sends messages (any topics) as one append: they are stored contiguously and
    /// acknowledged together, after they are durable in sync-flush mode.
    ///
    /// Cancel safety: dropping the future may still store the messages.
    pub async fn send_batch(&self, messages: Vec<Message>) -> Result<Vec<SendResult>> {
        if messages.is_empty() || messages.len() > SEND_BATCH_MESSAGES_MAX {
            return Err(Error::BatchInvalid {
                reason: format!("{} messages; a batch holds 1..={SEND_BATCH_MESSAGES_MAX}", messages.len()),
            });
        }
        let born_timestamp_ms = now_ms();
        // Held until the append is queued (see `topic_gate`).
        let gate = self.inner.topic_gate.read().await;
        let mut stored = Vec::with_capacity(messages.len());
        let mut message_ids = Vec::with_capacity(messages.len());
        let mut last_topic: Option<Arc<TopicEntry>> = None;
        for message in messages {
            message.validate()?;
            // Batches are mostly one topic: look each topic up once per batch.
            let topic = match &last_topic {
                Some(entry) if entry.config.name == message.topic => entry.clone(),
                _ => {
                    let entry = self.topic_for_send(&message.topic).await?;
                    last_topic = Some(entry.clone());
                    entry
                }
            };
            let queue_id = self.select_queue(&topic, message.sharding_key.as_deref());
            let message_id =
                message.unique_id.clone().unwrap_or_else(|| new_message_id_at(born_timestamp_ms.max(0) as u64));
            let mut properties = Vec::with_capacity(message.properties.len() + 3);
            if let Some(tag) = message.tag {
                properties.push((PROPERTY_TAGS.to_string(), tag));
            }
            if !message.keys.is_empty() {
                properties.push((PROPERTY_KEYS.to_string(), message.keys.join(" ")));
            }
            properties.push((PROPERTY_UNIQUE_ID.to_string(), message_id.clone()));
            properties.extend(message.properties);
            stored.push(NewMessage {
                topic: message.topic,
                queue_id,
                flags: 0,
                born_timestamp_ms: message.born_timestamp_ms.unwrap_or(born_timestamp_ms),
                born_host: self.inner.born_host,
                reconsume_count: 0,
                prepared_transaction_offset: 0,
                properties,
                body: message.body,
            });
            message_ids.push(message_id);
        }
        metrics::counter!("weir_broker_send_requests_total").increment(1);
        let appended = self.enqueue(stored).await?;
        drop(gate);
        let appended = appended.await.map_err(|_| Error::StoreClosed)??;
        metrics::counter!("weir_broker_sent_messages_total").increment(appended.len() as u64);
        Ok(appended
            .into_iter()
            .zip(message_ids)
            .map(|(placed, message_id)| SendResult {
                message_id,
                queue_id: placed.queue_id,
                queue_offset: placed.queue_offset,
                physical_offset: placed.physical_offset,
            })
            .collect())
    }

    /// Appends store-ready messages, waiting for room in the append queue (backpressure).
    pub async fn append(&self, messages: Vec<NewMessage>) -> Result<Vec<crate::storage::AppendedMessage>> {
        self.enqueue(messages).await?.await.map_err(|_| Error::StoreClosed)?
    }

    /// Queues an append once there is room in the append queue; the receiver gets its outcome.
    async fn enqueue(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<oneshot::Receiver<Result<Vec<crate::storage::AppendedMessage>>>> {
        let permit = self.inner.append_permits.clone().acquire_owned().await.map_err(|_| Error::StoreClosed)?;
        let (tx, rx) = oneshot::channel();
        self.inner.store.append(
            messages,
            Box::new(move |result| {
                drop(permit);
                let _ = tx.send(result);
            }),
        )?;
        Ok(rx)
    }

    // ----- pull -----

    /// Pulls from one queue, waiting up to `long_poll_timeout` when nothing is there yet.
    ///
    /// Cancel safety: safe; a pull has no side effects.
    pub async fn pull(&self, request: PullRequest) -> Result<PullResult> {
        validate_group_name(&request.group)?;
        let topic = self
            .inner
            .topics
            .get(&request.topic)
            .ok_or_else(|| Error::TopicNotFound { topic: request.topic.clone() })?;
        if !topic.permission.readable {
            return Err(Error::TopicPermissionDenied { topic: topic.name, operation: "readable" });
        }
        if request.queue_id >= topic.queue_count {
            return Err(Error::QueueNotFound {
                topic: topic.name,
                queue_id: request.queue_id,
                queue_count: topic.queue_count,
            });
        }
        let filter = Arc::new(TagExpression::parse(&request.tag_expression)?);
        let limits = ReadLimits {
            messages_max: request.messages_max.clamp(1, PULL_MESSAGES_MAX),
            bytes_max: request.bytes_max.min(self.inner.config.pull_bytes_max),
            scan_entries_max: self.inner.config.pull_scan_entries_max,
        };
        let deadline = tokio::time::Instant::now() + request.long_poll_timeout.min(LONG_POLL_TIMEOUT_MAX);
        let mut offset = request.queue_offset;
        loop {
            let notify = (!request.long_poll_timeout.is_zero()).then(|| self.waiter(&request.topic, request.queue_id));
            let notified = notify.as_ref().map(|n| n.notified());
            let mut notified = notified.map(Box::pin);
            if let Some(notified) = notified.as_mut() {
                notified.as_mut().enable();
            }
            let result = self.pull_once(&request.topic, request.queue_id, offset, limits, filter.clone()).await?;
            let waiting_helps = matches!(result.status, PullStatus::NoNewMessage | PullStatus::NoMatchedMessage)
                && result.next_offset >= result.max_offset;
            let Some(notified) = notified.filter(|_| waiting_helps) else {
                return Ok(result);
            };
            if tokio::time::Instant::now() >= deadline {
                return Ok(result);
            }
            offset = result.next_offset;
            tokio::select! {
                _ = notified => {
                    if self.inner.topics.entry(&request.topic).is_none() {
                        return Err(Error::TopicNotFound { topic: request.topic.clone() });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return self.pull_once(&request.topic, request.queue_id, offset, limits, filter).await;
                }
            }
        }
    }

    fn waiter(&self, topic: &str, queue_id: u32) -> Arc<Notify> {
        let mut waiters = self.inner.waiters.lock().expect("waiters lock");
        waiters.entry((topic.to_string(), queue_id)).or_default().clone()
    }

    async fn pull_once(
        &self,
        topic: &str,
        queue_id: u32,
        offset: u64,
        limits: ReadLimits,
        filter: Arc<TagExpression>,
    ) -> Result<PullResult> {
        let store = self.inner.store.clone();
        let topic_name = topic.to_string();
        let read = tokio::task::spawn_blocking(move || {
            let range = store.queue_range(&topic_name, queue_id);
            if offset < range.min_offset {
                return Ok((PullStatus::OffsetTooSmall, Vec::new(), range.min_offset, range));
            }
            if offset > range.max_offset {
                return Ok((PullStatus::OffsetTooLarge, Vec::new(), range.max_offset, range));
            }
            if offset == range.max_offset {
                return Ok((PullStatus::NoNewMessage, Vec::new(), offset, range));
            }
            match store.read_queue(&topic_name, queue_id, offset, limits, filter.as_ref()) {
                Ok(read) => {
                    let status =
                        if read.messages.is_empty() { PullStatus::NoMatchedMessage } else { PullStatus::Found };
                    Ok((status, read.messages, read.next_offset, read.range))
                }
                Err(Error::OffsetBelowMinimum { min_offset, .. }) => {
                    let range = store.queue_range(&topic_name, queue_id);
                    Ok((PullStatus::OffsetTooSmall, Vec::new(), min_offset.max(range.min_offset), range))
                }
                Err(error) => Err(error),
            }
        })
        .await
        .map_err(|_| Error::StoreClosed)?;
        let (status, records, next_offset, range): (PullStatus, Vec<_>, u64, QueueRange) = read?;
        metrics::counter!("weir_broker_pull_requests_total").increment(1);
        metrics::counter!("weir_broker_pulled_messages_total").increment(records.len() as u64);
        Ok(PullResult {
            status,
            messages: records.into_iter().map(StoredMessage::from).collect(),
            next_offset,
            min_offset: range.min_offset,
            max_offset: range.max_offset,
        })
    }

    // ----- offsets -----

    /// `[min, max)` of a queue.
    pub fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        self.inner.store.queue_range(topic, queue_id)
    }

    /// Records a group's consume progress (the next offset to consume).
    pub fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> Result<()> {
        validate_group_name(group)?;
        let config = self.inner.topics.get(topic).ok_or_else(|| Error::TopicNotFound { topic: topic.to_string() })?;
        if queue_id >= config.queue_count {
            return Err(Error::QueueNotFound { topic: topic.to_string(), queue_id, queue_count: config.queue_count });
        }
        self.inner.offsets.commit(group, topic, queue_id, offset);
        Ok(())
    }

    pub fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.inner.offsets.get(group, topic, queue_id)
    }

    /// Committed offsets of a group on a topic, by queue.
    pub fn group_offsets(&self, group: &str, topic: &str) -> std::collections::BTreeMap<u32, u64> {
        self.inner.offsets.for_group(group, topic)
    }

    /// Every (group, topic) pair with committed offsets.
    pub fn groups(&self) -> Vec<(String, String)> {
        self.inner.offsets.groups()
    }

    /// Moves a group's offsets on every queue of a topic; returns the new offsets.
    pub async fn reset_offsets(&self, group: &str, topic: &str, to: OffsetReset) -> Result<Vec<(u32, u64)>> {
        validate_group_name(group)?;
        let config = self.inner.topics.get(topic).ok_or_else(|| Error::TopicNotFound { topic: topic.to_string() })?;
        let store = self.inner.store.clone();
        let topic_name = topic.to_string();
        let offsets = tokio::task::spawn_blocking(move || {
            (0..config.queue_count)
                .map(|queue_id| {
                    let range = store.queue_range(&topic_name, queue_id);
                    let offset = match to {
                        OffsetReset::Earliest => Ok(range.min_offset),
                        OffsetReset::Latest => Ok(range.max_offset),
                        OffsetReset::Timestamp(ms) => store.offset_for_timestamp(&topic_name, queue_id, ms),
                    };
                    offset.map(|offset| (queue_id, offset))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|_| Error::StoreClosed)??;
        for (queue_id, offset) in &offsets {
            self.inner.offsets.commit(group, topic, *queue_id, *offset);
        }
        Ok(offsets)
    }

    // ----- queries -----

    /// Messages with this key, newest first.
    pub async fn query_by_key(&self, topic: &str, key: &str, results_max: usize) -> Result<Vec<StoredMessage>> {
        self.query_by_key_between(topic, key, results_max, i64::MIN, i64::MAX).await
    }

    /// Messages with this key stored between `begin_ms` and `end_ms` (inclusive, ms since the
    /// Unix epoch), newest first, at most `results_max` (≤ 1024).
    pub async fn query_by_key_between(
        &self,
        topic: &str,
        key: &str,
        results_max: usize,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<StoredMessage>> {
        let store = self.inner.store.clone();
        let (topic, key) = (topic.to_string(), key.to_string());
        let results_max = results_max.clamp(1, QUERY_RESULTS_MAX);
        let found =
            tokio::task::spawn_blocking(move || store.lookup_key_between(&topic, &key, results_max, begin_ms..=end_ms))
                .await
                .map_err(|_| Error::StoreClosed)??;
        Ok(found.into_iter().map(StoredMessage::from).collect())
    }

    /// The message with this unique id.
    pub async fn query_by_id(&self, topic: &str, message_id: &str) -> Result<StoredMessage> {
        let store = self.inner.store.clone();
        let (topic, id) = (topic.to_string(), message_id.to_string());
        let found = tokio::task::spawn_blocking(move || store.lookup_unique_id(&topic, &id))
            .await
            .map_err(|_| Error::StoreClosed)??;
        found
            .map(StoredMessage::from)
            .ok_or_else(|| Error::MessageNotFound { what: format!("message id {message_id}") })
    }

    /// The message at a commitlog offset.
    pub async fn query_by_offset(&self, physical_offset: u64) -> Result<StoredMessage> {
        let store = self.inner.store.clone();
        let found = tokio::task::spawn_blocking(move || store.read(physical_offset))
            .await
            .map_err(|_| Error::StoreClosed)??;
        Ok(found.into())
    }

    /// The first offset of a queue stored at or after `timestamp_ms`.
    pub async fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64> {
        let store = self.inner.store.clone();
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || store.offset_for_timestamp(&topic, queue_id, timestamp_ms))
            .await
            .map_err(|_| Error::StoreClosed)?
    }
}
