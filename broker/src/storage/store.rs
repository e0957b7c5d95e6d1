//! `MessageStore`: opens and recovers the data directory and runs the writer, flusher,
//! maintenance and segment-allocator threads behind a bounded append channel.
//!
//! The writer thread takes every queued append request it can get (up to
//! `write_batch_messages_max` messages) per wake-up, writes the records into the commitlog,
//! writes their consume queue and index entries, then publishes them all at once. In sync
//! flush mode it hands the batch's completions to the flusher, which fdatasyncs once for every
//! batch waiting (group commit) before acknowledging; in async mode it acknowledges at once
//! and the flusher fdatasyncs on an interval.
//!
//! **API boundary:** callers get completions through a callback, so the store needs no async
//! runtime; the broker turns callbacks into futures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::checkpoint::Checkpoint;
use super::commit_log::{CommitLog, CommitLogWriter};
use super::consume_queue::{self, ConsumeQueue};
use super::file_lock::DataDirLock;
use super::index::IndexService;
use super::mapped_file::sync_dir;
use super::record::{
    MessageRecord, NewMessage, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID, TOPIC_BYTES_MAX, tag_hash,
};
use crate::error::{Error, Result};

/// When the commitlog reaches the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlushMode {
    /// Acknowledge after the write; fdatasync every `flush_interval_ms` (RocketMQ ASYNC_FLUSH).
    Async,
    /// Acknowledge only after fdatasync; one sync serves every waiting append (SYNC_FLUSH).
    Sync,
}

/// Most bytes of records one key or id lookup returns (at least one record).
pub const LOOKUP_RESULT_BYTES_MAX: usize = 64 << 20;

/// The largest `message_size_max_bytes`: a record's length is a `u32` (1 GiB leaves room).
pub const MESSAGE_SIZE_MAX_BYTES_LIMIT: usize = 1 << 30;

/// Storage settings. Defaults follow RocketMQ where it has one.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Root of every file the store owns.
    pub data_dir: PathBuf,
    /// Size of each commitlog segment (RocketMQ: 1 GiB).
    pub segment_size_bytes: u64,
    /// Write zeros through new segments before use: the first one when a data directory is
    /// created (opening a new directory takes as long as writing one segment), later ones on
    /// the allocator thread, off the append path. Overwrites are about twice as fast as
    /// writes to fresh blocks on this kind of disk.
    pub segment_prefault: bool,
    /// Pace of the background prefault (0 = unpaced). It also goes no further into the next
    /// segment than twice how far the writer has filled the current one, plus
    /// `segment_prefault_ahead_bytes_max`. A
    /// segment not ready when the writer needs it is cancelled (the writer waits for the step
    /// in progress: one 1 MiB chunk or the final fdatasync; a waiting prefault is woken) and
    /// created sparse instead.
    pub segment_prefault_bytes_per_sec_max: u64,
    /// How far the background prefault may run ahead of twice the writer's place in its
    /// segment (64 MiB).
    pub segment_prefault_ahead_bytes_max: u64,
    /// Largest record accepted, header included.
    pub message_size_max_bytes: usize,
    pub flush_mode: FlushMode,
    /// Async mode: fdatasync period. Sync mode: unused for appends.
    pub flush_interval_ms: u64,
    /// How often consume queues and index are msynced and the checkpoint written.
    pub checkpoint_interval_ms: u64,
    /// Entries per consume queue file (RocketMQ: 300,000 = 6,000,000 bytes).
    pub consume_queue_entries_per_file: u64,
    /// Hash slots per index file.
    pub index_slots: u32,
    /// Entries per index file.
    pub index_entries_max: u32,
    /// Append requests that may wait for the writer; more are refused with `Busy`.
    pub append_queue_requests_max: usize,
    /// Most messages the writer takes per wake-up.
    pub write_batch_messages_max: usize,
    /// Segments whose last write is older than this are removed (RocketMQ: 72 hours).
    pub retention_hours: u64,
    /// Above this used fraction of the data disk, the oldest segments are removed early.
    pub disk_usage_ratio_max: f64,
    /// How often retention runs.
    pub retention_check_interval_ms: u64,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            data_dir: data_dir.into(),
            segment_size_bytes: 1 << 30,
            segment_prefault: true,
            segment_prefault_bytes_per_sec_max: 32 << 20,
            segment_prefault_ahead_bytes_max: 64 << 20,
            message_size_max_bytes: 4 << 20,
            flush_mode: FlushMode::Async,
            flush_interval_ms: 500,
            checkpoint_interval_ms: 1000,
            consume_queue_entries_per_file: 300_000,
            index_slots: 1_000_000,
            index_entries_max: 4_000_000,
            append_queue_requests_max: 1024,
            write_batch_messages_max: 4096,
            retention_hours: 72,
            disk_usage_ratio_max: 0.85,
            retention_check_interval_ms: 10_000,
        }
    }

    /// Sets the segment size, capping the message maximum at half a segment so the pair
    /// always validates (tools and tests pick small segments).
    pub fn set_segment_size_bytes(&mut self, segment_size_bytes: u64) {
        self.segment_size_bytes = segment_size_bytes;
        self.message_size_max_bytes = self.message_size_max_bytes.min(segment_size_bytes as usize / 2);
    }

    /// Takes the file-layout settings (segment size, consume queue and index file sizes)
    /// from an existing data directory's `store.json`, so a tool opens any directory whatever
    /// layout it was created with. A new directory keeps this config's values.
    pub fn adopt_existing_layout(&mut self) -> Result<()> {
        if let Some(found) = super::metadata::read_json::<StoreFormat>(&self.data_dir.join("store.json"))? {
            self.segment_size_bytes = found.segment_size_bytes;
            self.consume_queue_entries_per_file = found.consume_queue_entries_per_file;
            self.index_slots = found.index_slots;
            self.index_entries_max = found.index_entries_max;
            self.message_size_max_bytes =
                self.message_size_max_bytes.min((found.segment_size_bytes as usize).saturating_sub(8));
        }
        Ok(())
    }

    /// Checks ranges and relations between settings.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason: String| Err(Error::ConfigInvalid { field, reason });
        // Record lengths and consume-queue sizes are 32-bit.
        if self.message_size_max_bytes < 1024 || self.message_size_max_bytes > MESSAGE_SIZE_MAX_BYTES_LIMIT {
            return invalid(
                "message_size_max_bytes",
                format!("must be between 1024 and {MESSAGE_SIZE_MAX_BYTES_LIMIT}"),
            );
        }
        if self.segment_size_bytes < (self.message_size_max_bytes as u64 + 8) || self.segment_size_bytes > (1 << 40) {
            return invalid(
                "segment_size_bytes",
                format!("must be between message_size_max_bytes + 8 ({}) and 1 TiB", self.message_size_max_bytes + 8),
            );
        }
        if self.consume_queue_entries_per_file == 0 || self.consume_queue_entries_per_file > 50_000_000 {
            return invalid("consume_queue_entries_per_file", "must be 1..=50000000".into());
        }
        if self.index_slots == 0 || self.index_entries_max == 0 {
            let field = if self.index_slots == 0 { "index_slots" } else { "index_entries_max" };
            return invalid(field, "must be positive".into());
        }
        if self.append_queue_requests_max == 0 || self.write_batch_messages_max == 0 {
            let field = if self.append_queue_requests_max == 0 {
                "append_queue_requests_max"
            } else {
                "write_batch_messages_max"
            };
            return invalid(field, "must be positive".into());
        }
        if self.flush_interval_ms == 0 || self.checkpoint_interval_ms == 0 || self.retention_check_interval_ms == 0 {
            let field = if self.flush_interval_ms == 0 {
                "flush_interval_ms"
            } else if self.checkpoint_interval_ms == 0 {
                "checkpoint_interval_ms"
            } else {
                "retention_check_interval_ms"
            };
            return invalid(field, "must be positive".into());
        }
        if !(self.disk_usage_ratio_max > 0.0 && self.disk_usage_ratio_max <= 1.0) {
            return invalid("disk_usage_ratio_max", format!("{} is not in (0, 1]", self.disk_usage_ratio_max));
        }
        Ok(())
    }
}

/// Where an appended message landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendedMessage {
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub size_bytes: u32,
    pub store_timestamp_ms: i64,
}

/// Called once per append request with its outcome, from a storage thread. Must not block.
pub type AppendDone = Box<dyn FnOnce(Result<Vec<AppendedMessage>>) + Send>;

/// Called from the writer thread after each batch with `(topic, queue id, new max offset)`
/// for every queue that grew. Must not block.
pub type DispatchListener = Arc<dyn Fn(&str, u32, u64) + Send + Sync>;

/// The readable range of one queue: `[min_offset, max_offset)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueRange {
    pub min_offset: u64,
    pub max_offset: u64,
}

/// Decides which messages a queue read returns: first by the tag hash in the consume queue
/// (no commitlog read), then exactly on the decoded message.
pub trait MessageFilter {
    fn matches_tag_hash(&self, tag_hash: u64) -> bool;
    fn matches(&self, message: &MessageRecord) -> bool;
}

/// Bounds of one queue read.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most messages returned.
    pub messages_max: usize,
    /// About this many bytes at most (at least one message is returned when any matches).
    pub bytes_max: usize,
    /// Most consume queue entries inspected (bounds a read whose filter matches little).
    pub scan_entries_max: usize,
}

/// Messages read from one queue.
#[derive(Debug, Default)]
pub struct QueueRead {
    pub messages: Vec<MessageRecord>,
    /// Where the next read should start (past filtered-out entries too).
    pub next_offset: u64,
    pub range: QueueRange,
}

enum Command {
    Append { messages: Vec<NewMessage>, done: AppendDone },
    DeleteTopic { topic: String, done: Box<dyn FnOnce(Result<()>) + Send> },
    Shutdown { clean: bool },
}

struct FlushRequest {
    offset: u64,
    completions: Vec<(AppendDone, Result<Vec<AppendedMessage>>)>,
}

type QueueMap = HashMap<String, HashMap<u32, Arc<ConsumeQueue>>>;

/// The writer's next queue offset per topic and queue id.
type Cursors = HashMap<String, HashMap<u32, u64>>;

/// The cursor of a queue (starting at `initial` when new), allocating the topic key only the
/// first time the topic is seen.
fn cursor_mut<'a>(cursors: &'a mut Cursors, topic: &str, queue_id: u32, initial: u64) -> &'a mut u64 {
    if !cursors.contains_key(topic) {
        cursors.insert(topic.to_string(), HashMap::new());
    }
    cursors.get_mut(topic).expect("inserted above").entry(queue_id).or_insert(initial)
}

struct Shared {
    config: StoreConfig,
    commit_log: Arc<CommitLog>,
    queues: RwLock<QueueMap>,
    index: Mutex<IndexService>,
    /// Every message below this physical offset is in its consume queue and the index.
    dispatched_offset: AtomicU64,
    last_checkpoint: Mutex<Checkpoint>,
    tombstones: Mutex<Tombstones>,
    retention: Mutex<()>,
    failed: AtomicBool,
    /// Sync-mode flushes done and the appends they acknowledged (group commit's ratio).
    group_commits: AtomicU64,
    group_committed_appends: AtomicU64,
}

/// The storage engine. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct MessageStore {
    shared: Arc<Shared>,
    commands: SyncSender<Command>,
    closed: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
    maintainer: Mutex<Option<(SyncSender<()>, JoinHandle<()>)>>,
    _lock: DataDirLock,
}

impl std::fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStore").field("data_dir", &self.shared.config.data_dir).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Whether a directory name can be a topic we wrote (guards recovery against strays).
fn is_topic_dir_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= TOPIC_BYTES_MAX && super::record::is_name_chars(name)
}

impl MessageStore {
    /// Opens `config.data_dir`, recovering after an unclean shutdown, and starts the threads.
    pub fn open(config: StoreConfig, listener: Option<DispatchListener>) -> Result<MessageStore> {
        config.validate()?;
        let dir = config.data_dir.clone();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create data directory", &dir, e))?;
        let lock = DataDirLock::acquire(&dir)?;
        check_format(&config)?;
        let abort_path = dir.join("abort");
        let unclean = abort_path.exists();
        let checkpoint = Checkpoint::load(&dir.join("checkpoint"))?;
        let tombstones = Tombstones::load(&dir)?;
        let started = Instant::now();

        let commit_log =
            Arc::new(CommitLog::open(&dir.join("commitlog"), config.segment_size_bytes, config.segment_prefault)?);
        let recovery = match recover(&config, &commit_log, checkpoint.as_ref(), &tombstones, false) {
            Err(RecoveryError::Rebuild(reason)) => {
                tracing::warn!(%reason, "consume queues are inconsistent; rebuilding them all from the commitlog");
                recover(&config, &commit_log, checkpoint.as_ref(), &tombstones, true)
            }
            other => other,
        };
        let Recovery { queues, mut cursors, index, outcome, start } = match recovery {
            Ok(recovery) => recovery,
            Err(RecoveryError::Rebuild(reason)) => {
                return Err(Error::ConsumeQueueCorrupt {
                    topic: String::new(),
                    queue_id: 0,
                    queue_offset: 0,
                    reason: format!("still inconsistent after a full rebuild: {reason}"),
                });
            }
            Err(RecoveryError::Fatal(error)) => return Err(error),
        };
        let flushed = checkpoint.as_ref().map_or(0, |c| c.commit_log_flushed_offset);
        if outcome.end_offset < flushed {
            // Whatever stopped the scan, data that was flushed is missing: not a torn write.
            let path = commit_log.segment_paths().last().cloned().unwrap_or_default();
            let found = outcome.stop_reason.clone().unwrap_or_else(|| "zeros or a missing segment".to_string());
            return Err(Error::CommitLogCorrupt {
                path,
                offset: outcome.end_offset,
                reason: format!("{found}; this is below the last flushed offset {flushed}, so it is not a torn write"),
            });
        }
        if let Some(reason) = &outcome.stop_reason {
            tracing::warn!(end_offset = outcome.end_offset, reason = %reason, "truncating a torn commitlog tail");
        }
        let damaged = unclean || outcome.stop_reason.is_some() || commit_log.truncated_at().is_some();
        commit_log.truncate(outcome.end_offset, damaged)?;
        for by_id in queues.values() {
            for queue in by_id.values() {
                let (topic, queue_id) = (queue.topic().to_string(), queue.queue_id());
                queue.publish(*cursor_mut(&mut cursors, &topic, queue_id, 0));
                queue.trim_to_log_end(outcome.end_offset)?;
                *cursor_mut(&mut cursors, &topic, queue_id, 0) = queue.max_offset();
                queue.remove_below(commit_log.min_offset())?;
            }
        }
        tracing::info!(
            data_dir = %dir.display(),
            unclean,
            start_offset = start,
            end_offset = outcome.end_offset,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );

        std::fs::write(&abort_path, b"").map_err(|e| Error::io("cannot create", &abort_path, e))?;
        sync_dir(&dir)?;

        let shared = Arc::new(Shared {
            config: config.clone(),
            commit_log: commit_log.clone(),
            queues: RwLock::new(queues),
            index: Mutex::new(index),
            dispatched_offset: AtomicU64::new(outcome.end_offset),
            group_commits: AtomicU64::new(0),
            group_committed_appends: AtomicU64::new(0),
            last_checkpoint: Mutex::new(checkpoint.unwrap_or_default()),
            tombstones: Mutex::new(tombstones),
            retention: Mutex::new(()),
            failed: AtomicBool::new(false),
        });
        // Make what recovery rebuilt durable before anything new arrives.
        checkpoint_now(&shared)?;
        let (command_tx, command_rx) = sync_channel(config.append_queue_requests_max);
        let (flush_tx, flush_rx) = sync_channel(config.append_queue_requests_max);
        let (maintain_stop_tx, maintain_stop_rx) = sync_channel::<()>(1);
        let writer = Writer {
            shared: shared.clone(),
            log: CommitLogWriter::new(commit_log, &config),
            cursors,
            listener,
            flush: flush_tx,
        };
        let spawn = |name: &str, body: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.to_string())
                .spawn(body)
                .map_err(|e| Error::io("cannot spawn a storage thread", &dir, e))
        };
        let writer_thread = spawn("weir-store-writer", Box::new(move || writer.run(command_rx)))?;
        let flusher_shared = shared.clone();
        let flusher_thread = spawn("weir-store-flusher", Box::new(move || Flusher::new(flusher_shared).run(flush_rx)))?;
        let maintainer_shared = shared.clone();
        let maintainer_thread =
            spawn("weir-store-maint", Box::new(move || run_maintenance(&maintainer_shared, maintain_stop_rx)))?;
        Ok(MessageStore {
            shared,
            commands: command_tx,
            closed: AtomicBool::new(false),
            threads: Mutex::new(vec![writer_thread, flusher_thread]),
            maintainer: Mutex::new(Some((maintain_stop_tx, maintainer_thread))),
            _lock: lock,
        })
    }

    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// Queues `messages` for appending; `done` runs with the outcome once they are written
    /// (async flush) or durable (sync flush). Returns `Busy` without blocking when
    /// `append_queue_requests_max` requests are already waiting.
    pub fn append(&self, messages: Vec<NewMessage>, done: AppendDone) -> Result<()> {
        if self.closed.load(Ordering::Acquire) || self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::StoreClosed);
        }
        if messages.is_empty() {
            return Err(Error::BatchInvalid { reason: "no messages".into() });
        }
        for message in &messages {
            message.validate(self.shared.config.message_size_max_bytes)?;
        }
        match self.commands.try_send(Command::Append { messages, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                Err(Error::Busy { requests_max: self.shared.config.append_queue_requests_max })
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::StoreClosed),
        }
    }

    /// Appends and waits for the outcome, blocking the calling thread while the append
    /// queue is full (not for async code).
    pub fn append_blocking(&self, messages: Vec<NewMessage>) -> Result<Vec<AppendedMessage>> {
        if self.closed.load(Ordering::Acquire) || self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::StoreClosed);
        }
        for message in &messages {
            message.validate(self.shared.config.message_size_max_bytes)?;
        }
        let (tx, rx) = sync_channel(1);
        let done: AppendDone = Box::new(move |result| {
            let _ = tx.send(result);
        });
        self.commands.send(Command::Append { messages, done }).map_err(|_| Error::StoreClosed)?;
        rx.recv().map_err(|_| Error::StoreClosed)?
    }

    /// Reads the message at a commitlog offset.
    pub fn read(&self, physical_offset: u64) -> Result<MessageRecord> {
        self.shared.commit_log.read(physical_offset, None)
    }

    /// `[min, max)` of a queue; `0..0` for a queue never written.
    pub fn queue_range(&self, topic: &str, queue_id: u32) -> QueueRange {
        match self.queue(topic, queue_id) {
            Some(queue) => QueueRange { min_offset: queue.min_offset(), max_offset: queue.max_offset() },
            None => QueueRange::default(),
        }
    }

    fn queue(&self, topic: &str, queue_id: u32) -> Option<Arc<ConsumeQueue>> {
        self.shared.queues.read().expect("queues lock").get(topic)?.get(&queue_id).cloned()
    }

    /// Reads matching messages from `queue_offset` within `limits`.
    pub fn read_queue(
        &self,
        topic: &str,
        queue_id: u32,
        queue_offset: u64,
        limits: ReadLimits,
        filter: &dyn MessageFilter,
    ) -> Result<QueueRead> {
        let ReadLimits { messages_max: count_max, bytes_max, scan_entries_max: scan_max } = limits;
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(QueueRead { messages: Vec::new(), next_offset: queue_offset, range: QueueRange::default() });
        };
        let range = QueueRange { min_offset: queue.min_offset(), max_offset: queue.max_offset() };
        if queue_offset < range.min_offset {
            return Err(Error::OffsetBelowMinimum {
                topic: topic.to_string(),
                queue_id,
                offset: queue_offset,
                min_offset: range.min_offset,
            });
        }
        let mut messages = Vec::new();
        let mut segment_cache = None;
        let mut next = queue_offset;
        let mut scanned = 0usize;
        let mut bytes = 0usize;
        'read: while messages.len() < count_max && scanned < scan_max {
            let entries = queue.entries(next, (scan_max - scanned).min(256));
            if entries.is_empty() {
                break;
            }
            for entry in entries {
                if !filter.matches_tag_hash(entry.tag_hash) {
                    next += 1;
                    scanned += 1;
                    continue;
                }
                if !messages.is_empty() && bytes + entry.size_bytes as usize > bytes_max {
                    break 'read;
                }
                let message = match self.read_entry(&queue, next, entry, &mut segment_cache) {
                    Ok(message) => message,
                    // Retention removed the entry's segment while this read ran: what was
                    // read stands, and a read from here finds the offset below the minimum.
                    Err(_) if entry.physical_offset < self.shared.commit_log.min_offset() && !messages.is_empty() => {
                        break 'read;
                    }
                    Err(_) if entry.physical_offset < self.shared.commit_log.min_offset() => {
                        return Err(Error::OffsetBelowMinimum {
                            topic: topic.to_string(),
                            queue_id,
                            offset: next,
                            min_offset: queue.min_offset().max(next + 1),
                        });
                    }
                    Err(error) => return Err(error),
                };
                next += 1;
                scanned += 1;
                if filter.matches(&message) {
                    bytes += entry.size_bytes as usize;
                    messages.push(message);
                    if messages.len() >= count_max {
                        break 'read;
                    }
                }
            }
        }
        Ok(QueueRead { messages, next_offset: next, range })
    }

    fn read_entry(
        &self,
        queue: &ConsumeQueue,
        queue_offset: u64,
        entry: consume_queue::Entry,
        segment_cache: &mut Option<super::commit_log::SegmentView>,
    ) -> Result<MessageRecord> {
        let log = &self.shared.commit_log;
        let cached = segment_cache.as_ref().is_some_and(|view| entry.physical_offset >= view.base_offset());
        if !cached && entry.physical_offset < log.min_offset() {
            return Err(Error::OffsetBelowMinimum {
                topic: queue.topic().to_string(),
                queue_id: queue.queue_id(),
                offset: queue_offset,
                min_offset: queue.min_offset().max(queue_offset + 1),
            });
        }
        let corrupt = |reason: String| Error::ConsumeQueueCorrupt {
            topic: queue.topic().to_string(),
            queue_id: queue.queue_id(),
            queue_offset,
            reason,
        };
        let message =
            log.read_with(entry.physical_offset, Some(entry.size_bytes), segment_cache).map_err(
                |error| match error {
                    Error::CommitLogCorrupt { offset, reason, .. } => corrupt(format!(
                        "entry points at physical offset {offset}, which is not a valid record: {reason}"
                    )),
                    other => other,
                },
            )?;
        if message.topic != queue.topic()
            || message.queue_id != queue.queue_id()
            || message.queue_offset != queue_offset
        {
            return Err(corrupt(format!(
                "entry points at {}/{} offset {}",
                message.topic, message.queue_id, message.queue_offset
            )));
        }
        Ok(message)
    }

    /// Messages whose `KEYS` include `key`, newest first, at most `results_max`.
    pub fn lookup_key(&self, topic: &str, key: &str, results_max: usize) -> Result<Vec<MessageRecord>> {
        self.lookup_key_between(topic, key, results_max, i64::MIN..=i64::MAX)
    }

    /// Messages whose `KEYS` include `key` and that were stored within `store_time_ms`,
    /// newest first (RocketMQ's query by key with begin and end time).
    pub fn lookup_key_between(
        &self,
        topic: &str,
        key: &str,
        results_max: usize,
        store_time_ms: std::ops::RangeInclusive<i64>,
    ) -> Result<Vec<MessageRecord>> {
        self.lookup(topic, key, results_max, &store_time_ms, |message| {
            store_time_ms.contains(&message.store_timestamp_ms) && message.keys().any(|k| k == key)
        })
    }

    /// The message with this unique id, if it is still stored.
    pub fn lookup_unique_id(&self, topic: &str, unique_id: &str) -> Result<Option<MessageRecord>> {
        let all_time = i64::MIN..=i64::MAX;
        Ok(self.lookup(topic, unique_id, 1, &all_time, |message| message.unique_id() == Some(unique_id))?.pop())
    }

    fn lookup(
        &self,
        topic: &str,
        key: &str,
        results_max: usize,
        store_time_ms: &std::ops::RangeInclusive<i64>,
        is_match: impl Fn(&MessageRecord) -> bool,
    ) -> Result<Vec<MessageRecord>> {
        let hash = IndexService::key_hash(topic, key);
        let candidates_max = results_max.saturating_mul(4).max(16);
        let candidates = self.shared.index.lock().expect("index lock").lookup(hash, candidates_max, store_time_ms);
        let log = &self.shared.commit_log;
        let mut found: Vec<MessageRecord> = Vec::new();
        let mut found_bytes = 0usize;
        for offset in candidates {
            // Bounded in bytes as a pull is (the newest come first; at least one is returned).
            if found_bytes >= LOOKUP_RESULT_BYTES_MAX {
                break;
            }
            if offset < log.min_offset() || offset >= log.max_offset() {
                continue;
            }
            if self.shared.tombstones.lock().expect("tombstones lock").covers(topic, offset) {
                continue; // a deleted incarnation of the topic
            }
            match log.read(offset, None) {
                Ok(message) if message.topic == topic && is_match(&message) => {
                    found_bytes += message.size_bytes as usize;
                    found.push(message);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(offset, %error, "index points at an unreadable record")
                }
            }
            if found.len() >= results_max {
                break;
            }
        }
        Ok(found)
    }

    /// The first queue offset whose message was stored at or after `timestamp_ms`
    /// (the max offset when none was).
    pub fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> Result<u64> {
        let Some(queue) = self.queue(topic, queue_id) else {
            return Ok(0);
        };
        let (mut low, mut high) = (queue.min_offset(), queue.max_offset());
        while low < high {
            let middle = low + (high - low) / 2;
            let Some(entry) = queue.entry(middle) else {
                low = middle + 1;
                continue;
            };
            match self.read_entry(&queue, middle, entry, &mut None) {
                Ok(message) if message.store_timestamp_ms < timestamp_ms => low = middle + 1,
                Ok(_) => high = middle,
                Err(error) if error.is_offset_below_minimum() => low = middle + 1,
                Err(error) => return Err(error),
            }
        }
        Ok(low)
    }

    /// Every (topic, queue id) with a consume queue.
    pub fn queues(&self) -> Vec<(String, u32)> {
        let queues = self.shared.queues.read().expect("queues lock");
        let mut all: Vec<_> =
            queues.iter().flat_map(|(topic, by_id)| by_id.keys().map(move |id| (topic.clone(), *id))).collect();
        all.sort();
        all
    }

    /// Removes a topic's consume queues (its messages stay in the commitlog until retention).
    /// Blocks while the append queue is full (call it from a blocking context).
    pub fn delete_topic(&self, topic: &str, done: Box<dyn FnOnce(Result<()>) + Send>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::StoreClosed);
        }
        self.commands.send(Command::DeleteTopic { topic: topic.to_string(), done }).map_err(|_| Error::StoreClosed)
    }

    /// `[min, max)` of the commitlog and its flushed offset.
    pub fn commit_log_offsets(&self) -> (u64, u64, u64) {
        let log = &self.shared.commit_log;
        (log.min_offset(), log.max_offset(), log.flushed_offset())
    }

    /// Whether the next commitlog segment is being prepared in the background now (it is
    /// prefaulted at a paced rate, as far ahead as the writer has come): benchmarks wait for
    /// a preload's preparation to end before they time a phase.
    pub fn segment_preparation_working(&self) -> bool {
        self.shared.commit_log.segment_preparation_working()
    }

    /// Sync-mode group commits so far and the appends they acknowledged: with many writers
    /// waiting, one fdatasync serves several appends.
    pub fn group_commit_counts(&self) -> (u64, u64) {
        let shared = &self.shared;
        (shared.group_commits.load(Ordering::Relaxed), shared.group_committed_appends.load(Ordering::Relaxed))
    }

    /// Runs retention now (it also runs every `retention_check_interval_ms`); segments last
    /// modified before `now - retention_hours` go. Returns the number of segments removed.
    pub fn remove_expired(&self, now: SystemTime) -> Result<usize> {
        remove_expired(&self.shared, now)
    }

    /// Flushes everything, writes the checkpoint, stops the threads and marks the shutdown
    /// clean. Appends queued before the call are completed first.
    pub fn close(&self) -> Result<()> {
        self.stop(true)
    }

    /// Stops the threads as a crash would: no final flush, no checkpoint, `abort` stays.
    /// For crash tests; bytes already written stay in the files (as after `kill -9`).
    #[doc(hidden)]
    pub fn crash(&self) {
        let _ = self.stop(false);
    }

    fn stop(&self, clean: bool) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        if let Some((stop, thread)) = self.maintainer.lock().expect("maintainer lock").take() {
            let _ = stop.send(());
            if thread.join().is_err() {
                tracing::error!("the storage maintenance thread panicked");
                self.shared.failed.store(true, Ordering::Release);
            }
        }
        let _ = self.commands.send(Command::Shutdown { clean });
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a storage thread panicked; the shutdown is not clean");
                self.shared.failed.store(true, Ordering::Release);
            }
        }
        if !clean {
            return Ok(());
        }
        if self.shared.failed.load(Ordering::Acquire) {
            return Err(Error::StoreClosed);
        }
        checkpoint_now(&self.shared)?;
        let abort_path = self.shared.config.data_dir.join("abort");
        std::fs::remove_file(&abort_path).map_err(|e| Error::io("cannot remove", &abort_path, e))?;
        sync_dir(&self.shared.config.data_dir)?;
        tracing::info!(data_dir = %self.shared.config.data_dir.display(), "message store closed cleanly");
        Ok(())
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if let Err(error) = self.stop(true) {
            tracing::error!(%error, "message store did not close cleanly");
        }
    }
}

/// File-layout settings fixed when a data directory is created (`store.json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFormat {
    format_version: u32,
    segment_size_bytes: u64,
    consume_queue_entries_per_file: u64,
    index_slots: u32,
    index_entries_max: u32,
}

/// Records the layout of a new data directory, or checks the config against an existing one.
fn check_format(config: &StoreConfig) -> Result<()> {
    let path = config.data_dir.join("store.json");
    let wanted = StoreFormat {
        format_version: super::record::VERSION as u32,
        segment_size_bytes: config.segment_size_bytes,
        consume_queue_entries_per_file: config.consume_queue_entries_per_file,
        index_slots: config.index_slots,
        index_entries_max: config.index_entries_max,
    };
    let Some(found) = super::metadata::read_json::<StoreFormat>(&path)? else {
        return super::metadata::write_json_atomic(&path, &wanted);
    };
    let mismatch = |field: &'static str, found: u64, wanted: u64| {
        Err(Error::ConfigInvalid {
            field,
            reason: format!(
                "the data directory {} was created with {found} and the config says {wanted}; \
                 the layout cannot change in place",
                config.data_dir.display()
            ),
        })
    };
    if found.format_version != wanted.format_version {
        return mismatch("format_version", found.format_version.into(), wanted.format_version.into());
    }
    if found.segment_size_bytes != wanted.segment_size_bytes {
        return mismatch("segment_size_bytes", found.segment_size_bytes, wanted.segment_size_bytes);
    }
    if found.consume_queue_entries_per_file != wanted.consume_queue_entries_per_file {
        return mismatch(
            "consume_queue_entries_per_file",
            found.consume_queue_entries_per_file,
            wanted.consume_queue_entries_per_file,
        );
    }
    if found.index_slots != wanted.index_slots {
        return mismatch("index_slots", found.index_slots.into(), wanted.index_slots.into());
    }
    if found.index_entries_max != wanted.index_entries_max {
        return mismatch("index_entries_max", found.index_entries_max.into(), wanted.index_entries_max.into());
    }
    Ok(())
}

/// Deleted topics and the log end at deletion (`topic_tombstones.json`): recovery never
/// re-dispatches a deleted topic's older records, even when it rebuilds every queue.
struct Tombstones {
    path: PathBuf,
    topics: std::collections::BTreeMap<String, u64>,
}

impl Tombstones {
    fn load(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("topic_tombstones.json");
        let topics = super::metadata::read_json(&path)?.unwrap_or_default();
        Ok(Tombstones { path, topics })
    }

    /// Whether a record of `topic` at `physical_offset` predates the topic's deletion.
    fn covers(&self, topic: &str, physical_offset: u64) -> bool {
        self.topics.get(topic).is_some_and(|deleted_at| physical_offset < *deleted_at)
    }

    fn add(&mut self, topic: &str, log_end: u64) -> Result<()> {
        self.topics.insert(topic.to_string(), log_end);
        super::metadata::write_json_atomic(&self.path, &self.topics)
    }

    /// Forgets tombstones whose records retention has removed.
    fn prune(&mut self, log_min: u64) -> Result<()> {
        let before = self.topics.len();
        self.topics.retain(|_, deleted_at| *deleted_at > log_min);
        if self.topics.len() != before {
            super::metadata::write_json_atomic(&self.path, &self.topics)?;
        }
        Ok(())
    }
}

/// What recovery rebuilt, before the log is truncated to `outcome.end_offset`.
struct Recovery {
    queues: QueueMap,
    cursors: Cursors,
    index: IndexService,
    outcome: super::commit_log::ScanOutcome,
    start: u64,
}

enum RecoveryError {
    /// Consume queues disagree with the log: rebuild them all from the first segment.
    Rebuild(String),
    Fatal(Error),
}

impl From<Error> for RecoveryError {
    fn from(error: Error) -> Self {
        RecoveryError::Fatal(error)
    }
}

/// Loads queues and index and re-dispatches the log from the checkpoint (or, with
/// `full_rebuild`, from scratch into emptied consume queues).
fn recover(
    config: &StoreConfig,
    commit_log: &CommitLog,
    checkpoint: Option<&Checkpoint>,
    tombstones: &Tombstones,
    full_rebuild: bool,
) -> std::result::Result<Recovery, RecoveryError> {
    if full_rebuild {
        // Queues and index are derived data: both are rebuilt from the first segment.
        for derived in ["consumequeue", "index"] {
            let root = config.data_dir.join(derived);
            match std::fs::remove_dir_all(&root) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", &root, e).into()),
            }
        }
    }
    let mut index = IndexService::open(&config.data_dir.join("index"), config.index_slots, config.index_entries_max)?;
    let (mut queues, inconsistent) = load_queues(config)?;
    if inconsistent && !full_rebuild {
        return Err(RecoveryError::Rebuild("a consume queue file failed validation".into()));
    }
    let mut cursors = Cursors::new();
    for (topic, by_id) in &queues {
        for (queue_id, queue) in by_id {
            *cursor_mut(&mut cursors, topic, *queue_id, 0) = queue.max_offset();
        }
    }
    // A checkpoint claiming more dispatched than flushed is not trusted.
    let checkpoint = checkpoint.filter(|c| c.dispatched_offset <= c.commit_log_flushed_offset);
    if !full_rebuild && let Some(checkpoint) = checkpoint {
        for (key, durable_max) in &checkpoint.queue_max_offsets {
            let (topic, queue_id) = key.rsplit_once('/').unwrap_or((key, ""));
            let loaded = queue_id.parse().ok().and_then(|id: u32| queues.get(topic)?.get(&id).map(|q| q.max_offset()));
            if loaded.is_none() && tombstones.topics.contains_key(topic) {
                continue; // deleted after that checkpoint
            }
            if loaded.unwrap_or(0) < *durable_max {
                return Err(RecoveryError::Rebuild(format!(
                    "queue {key} had {durable_max} durable entries at the last checkpoint but {} now",
                    loaded.unwrap_or(0)
                )));
            }
        }
    }
    let mut start = match checkpoint {
        Some(checkpoint) if !full_rebuild => checkpoint.dispatched_offset,
        _ => commit_log.min_offset(),
    };
    let flushed = checkpoint.map_or(0, |c| c.commit_log_flushed_offset);
    if let Some(truncated_at) = commit_log.truncated_at() {
        if truncated_at < flushed {
            return Err(Error::CommitLogCorrupt {
                path: commit_log.segment_paths().last().cloned().unwrap_or_default(),
                offset: truncated_at,
                reason: format!("the segment file is truncated below the last flushed offset {flushed}"),
            }
            .into());
        }
        start = start.min(commit_log.segment_base(truncated_at).max(commit_log.min_offset()));
    }
    let mut failure = None;
    let outcome = commit_log.scan(start, |message| {
        if failure.is_some() || tombstones.covers(&message.topic, message.physical_offset) {
            return;
        }
        let known = queues.get(message.topic.as_str()).is_some_and(|by_id| by_id.contains_key(&message.queue_id));
        if !known && !full_rebuild && message.queue_offset > 0 {
            failure = Some(RecoveryError::Rebuild(format!(
                "queue {}/{} has no files but the log continues it at offset {}",
                message.topic, message.queue_id, message.queue_offset
            )));
            return;
        }
        let item = DispatchItem::from_record(message);
        match dispatch(config, &mut queues, &mut cursors, &mut index, &item) {
            Ok(()) => {}
            Err(error @ Error::ConsumeQueueCorrupt { .. }) => {
                failure = Some(RecoveryError::Rebuild(error.to_string()));
            }
            Err(error) => failure = Some(RecoveryError::Fatal(error)),
        }
    });
    if let Some(failure) = failure {
        return Err(failure);
    }
    if full_rebuild && let Some(checkpoint) = checkpoint {
        // A queue whose records all expired has nothing in the log to rebuild it from: it
        // keeps the offsets the last checkpoint knew (its consumers' committed offsets stay
        // valid, and its next message does not start again at 0).
        for (key, durable_max) in &checkpoint.queue_max_offsets {
            let Some((topic, queue_id)) = key.rsplit_once('/') else { continue };
            let Ok(queue_id) = queue_id.parse::<u32>() else { continue };
            let rebuilt = queues.get(topic).is_some_and(|by_id| by_id.contains_key(&queue_id));
            if *durable_max == 0 || rebuilt || tombstones.topics.contains_key(topic) {
                continue;
            }
            let dir = config.data_dir.join("consumequeue").join(topic).join(queue_id.to_string());
            ConsumeQueue::write_start_marker(&dir, *durable_max)?;
            let queue = open_new_queue(config, topic, queue_id)?;
            *cursor_mut(&mut cursors, topic, queue_id, 0) = queue.max_offset();
            queues.entry(topic.to_string()).or_default().insert(queue_id, Arc::new(queue));
            tracing::info!(
                topic,
                queue_id,
                offset = durable_max,
                "kept an expired queue's offsets through the rebuild"
            );
        }
    }
    Ok(Recovery { queues, cursors, index, outcome, start })
}

fn load_queues(config: &StoreConfig) -> Result<(QueueMap, bool)> {
    let decode_size_max = config.segment_size_bytes as usize;
    let root = config.data_dir.join("consumequeue");
    std::fs::create_dir_all(&root).map_err(|e| Error::io("cannot create", &root, e))?;
    let mut queues = QueueMap::new();
    let mut rebuild = false;
    let topics = std::fs::read_dir(&root).map_err(|e| Error::io("cannot list", &root, e))?;
    for topic_entry in topics {
        let topic_entry = topic_entry.map_err(|e| Error::io("cannot list", &root, e))?;
        let Some(topic) = topic_entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !is_topic_dir_name(&topic) || !topic_entry.path().is_dir() {
            continue;
        }
        let queue_dirs =
            std::fs::read_dir(topic_entry.path()).map_err(|e| Error::io("cannot list", topic_entry.path(), e))?;
        for queue_entry in queue_dirs {
            let queue_entry = queue_entry.map_err(|e| Error::io("cannot list", topic_entry.path(), e))?;
            let Some(queue_id) = queue_entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let path = queue_entry.path();
            let opened =
                ConsumeQueue::open(&path, &topic, queue_id, config.consume_queue_entries_per_file, decode_size_max)?;
            let queue = match opened {
                Some(queue) => queue,
                None => {
                    rebuild = true;
                    std::fs::remove_dir_all(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
                    ConsumeQueue::open(
                        &path,
                        &topic,
                        queue_id,
                        config.consume_queue_entries_per_file,
                        config.segment_size_bytes as usize,
                    )?
                    .expect("an empty queue is consistent")
                }
            };
            queues.entry(topic.clone()).or_default().insert(queue_id, Arc::new(queue));
        }
    }
    Ok((queues, rebuild))
}

/// What dispatch needs to know of one written message.
struct DispatchItem<'a> {
    topic: &'a str,
    queue_id: u32,
    queue_offset: u64,
    physical_offset: u64,
    size_bytes: u32,
    tag: Option<&'a str>,
    keys: Option<&'a str>,
    unique_id: Option<&'a str>,
    store_timestamp_ms: i64,
}

impl<'a> DispatchItem<'a> {
    fn from_record(message: &'a MessageRecord) -> Self {
        DispatchItem {
            topic: &message.topic,
            queue_id: message.queue_id,
            queue_offset: message.queue_offset,
            physical_offset: message.physical_offset,
            size_bytes: message.size_bytes,
            tag: message.property(PROPERTY_TAGS),
            keys: message.property(PROPERTY_KEYS),
            unique_id: message.property(PROPERTY_UNIQUE_ID),
            store_timestamp_ms: message.store_timestamp_ms,
        }
    }
}

/// Writes one message's consume queue entry and index entries (recovery path).
fn dispatch(
    config: &StoreConfig,
    queues: &mut QueueMap,
    cursors: &mut Cursors,
    index: &mut IndexService,
    item: &DispatchItem<'_>,
) -> Result<()> {
    let queue = match queues.get(item.topic).and_then(|by_id| by_id.get(&item.queue_id)) {
        Some(queue) => queue.clone(),
        None => {
            let queue = Arc::new(open_new_queue(config, item.topic, item.queue_id)?);
            queues.entry(item.topic.to_string()).or_default().insert(item.queue_id, queue.clone());
            queue
        }
    };
    let cursor = cursor_mut(cursors, item.topic, item.queue_id, queue.max_offset());
    let entry = consume_queue::Entry {
        physical_offset: item.physical_offset,
        size_bytes: item.size_bytes,
        tag_hash: tag_hash(item.tag),
    };
    queue.put(item.queue_offset, entry, cursor)?;
    index_message(index, item)
}

fn index_message(index: &mut IndexService, item: &DispatchItem<'_>) -> Result<()> {
    for key in item.keys.unwrap_or("").split(' ').filter(|key| !key.is_empty()) {
        index.insert(IndexService::key_hash(item.topic, key), item.physical_offset, item.store_timestamp_ms)?;
    }
    if let Some(unique_id) = item.unique_id.filter(|id| !id.is_empty()) {
        index.insert(IndexService::key_hash(item.topic, unique_id), item.physical_offset, item.store_timestamp_ms)?;
    }
    Ok(())
}

fn open_new_queue(config: &StoreConfig, topic: &str, queue_id: u32) -> Result<ConsumeQueue> {
    let dir = config.data_dir.join("consumequeue").join(topic).join(queue_id.to_string());
    let queue = ConsumeQueue::open(
        &dir,
        topic,
        queue_id,
        config.consume_queue_entries_per_file,
        config.segment_size_bytes as usize,
    )?;
    Ok(queue.expect("a new queue is consistent"))
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    log: CommitLogWriter,
    /// The next queue offset of every queue (the unpublished truth).
    cursors: Cursors,
    listener: Option<DispatchListener>,
    flush: SyncSender<FlushRequest>,
}

impl Writer {
    fn run(mut self, commands: Receiver<Command>) {
        let mut batch: Vec<Command> = Vec::new();
        let mut touched: Vec<(Arc<ConsumeQueue>, u64)> = Vec::new();
        'run: while let Ok(first) = commands.recv() {
            let mut messages = command_messages(&first);
            batch.push(first);
            while messages < self.shared.config.write_batch_messages_max {
                match commands.try_recv() {
                    Ok(command) => {
                        messages += command_messages(&command);
                        batch.push(command);
                    }
                    Err(_) => break,
                }
            }
            let mut completions = Vec::new();
            let mut shutdown = None;
            let mut failed = false;
            // One clock read per wake-up: the batch is written within microseconds.
            let store_timestamp_ms = now_ms();
            let mut rest = batch.drain(..);
            for command in rest.by_ref() {
                match command {
                    Command::Append { messages, done } if !failed => {
                        let result = self.write(&messages, store_timestamp_ms, &mut touched);
                        if let Err(error) = &result {
                            tracing::error!(%error, "commitlog write failed; the store stops accepting appends");
                            failed = true;
                        }
                        completions.push((done, result));
                    }
                    Command::DeleteTopic { topic, done } if !failed => {
                        failed = !self.publish(&mut touched);
                        done(if failed { Err(Error::StoreClosed) } else { self.delete_topic(&topic) });
                    }
                    Command::Shutdown { clean } => {
                        shutdown = Some(clean);
                        break;
                    }
                    other => fail_command(other),
                }
            }
            rest.for_each(fail_command);
            if !failed {
                failed = !self.publish(&mut touched);
            }
            if failed {
                // Nothing of a failed batch is published or acknowledged; producers retry.
                // (Bytes already written past the published end may reappear after a
                // restart: an append that failed may still be stored, never lost silently.)
                self.shared.failed.store(true, Ordering::Release);
                touched.clear();
                for (_, result) in &mut completions {
                    if result.is_ok() {
                        *result = Err(Error::StoreClosed);
                    }
                }
            }
            match self.shared.config.flush_mode {
                FlushMode::Async => {
                    for (done, result) in completions {
                        done(result);
                    }
                }
                FlushMode::Sync if !completions.is_empty() => {
                    let request = FlushRequest { offset: self.log.position(), completions };
                    if let Err(unsent) = self.flush.send(request) {
                        for (done, _) in unsent.0.completions {
                            done(Err(Error::StoreClosed));
                        }
                    }
                }
                FlushMode::Sync => {}
            }
            if let Some(clean) = shutdown {
                if !clean {
                    // A simulated crash: forget everything still queued.
                    while let Ok(command) = commands.try_recv() {
                        fail_command(command);
                    }
                }
                break 'run;
            }
            if self.shared.failed.load(Ordering::Acquire) {
                break;
            }
        }
        // Refuse whatever is still queued (a shutdown or a failure ended the loop).
        while let Ok(command) = commands.try_recv() {
            fail_command(command);
        }
    }

    fn write(
        &mut self,
        messages: &[NewMessage],
        store_timestamp_ms: i64,
        touched: &mut Vec<(Arc<ConsumeQueue>, u64)>,
    ) -> Result<Vec<AppendedMessage>> {
        let mut appended = Vec::with_capacity(messages.len());
        let shared = self.shared.clone();
        // One index lock per request (a roll inside waits at most for one prefault chunk).
        let mut index = shared.index.lock().expect("index lock");
        for message in messages {
            let slot = writer_queue(&shared, &message.topic, message.queue_id, touched)?;
            let queue = touched[slot].0.clone();
            let cursor = cursor_mut(&mut self.cursors, &message.topic, message.queue_id, queue.max_offset());
            let queue_offset = *cursor;
            let (physical_offset, size_bytes) = self.log.append(message, queue_offset, store_timestamp_ms)?;
            let item = DispatchItem {
                topic: &message.topic,
                queue_id: message.queue_id,
                queue_offset,
                physical_offset,
                size_bytes,
                tag: message.property(PROPERTY_TAGS),
                keys: message.property(PROPERTY_KEYS),
                unique_id: message.property(PROPERTY_UNIQUE_ID),
                store_timestamp_ms,
            };
            let entry = consume_queue::Entry { physical_offset, size_bytes, tag_hash: tag_hash(item.tag) };
            queue.put(queue_offset, entry, cursor)?;
            index_message(&mut index, &item)?;
            touched[slot].1 = *cursor;
            appended.push(AppendedMessage {
                queue_id: message.queue_id,
                queue_offset,
                physical_offset,
                size_bytes,
                store_timestamp_ms,
            });
        }
        metrics::counter!("weir_store_appended_messages_total").increment(messages.len() as u64);
        metrics::counter!("weir_store_appended_bytes_total")
            .increment(appended.iter().map(|a| u64::from(a.size_bytes)).sum());
        Ok(appended)
    }

    /// Makes the written records readable: commitlog first, then consume queues. False when
    /// the bytes could not be written (then nothing becomes visible).
    fn publish(&mut self, touched: &mut Vec<(Arc<ConsumeQueue>, u64)>) -> bool {
        if let Err(error) = self.log.publish() {
            tracing::error!(%error, "commitlog write failed; the store stops accepting appends");
            touched.clear();
            return false;
        }
        for (queue, max_offset) in touched.iter() {
            queue.publish(*max_offset);
        }
        self.shared.dispatched_offset.store(self.log.position(), Ordering::Release);
        if let Some(listener) = &self.listener {
            for (queue, max_offset) in touched.iter() {
                listener(queue.topic(), queue.queue_id(), *max_offset);
            }
        }
        touched.clear();
        true
    }

    fn delete_topic(&mut self, topic: &str) -> Result<()> {
        // Tombstone first: recovery then skips the topic's older records (even in a full
        // rebuild), whatever state a crash leaves the queue files in.
        self.shared.tombstones.lock().expect("tombstones lock").add(topic, self.log.position())?;
        let removed = self.shared.queues.write().expect("queues lock").remove(topic);
        self.cursors.remove(topic);
        if let Some(by_id) = removed
            && let Some(queue) = by_id.values().next()
            && let Some(topic_dir) = queue.dir().parent()
        {
            std::fs::remove_dir_all(topic_dir).map_err(|e| Error::io("cannot remove", topic_dir, e))?;
        }
        checkpoint_now(&self.shared)
    }
}

/// The consume queue the writer appends to, created on first use.
/// Returns the queue's slot in `touched` (the queues this batch writes), adding it there
/// (created on first use) when the batch has not written it yet.
fn writer_queue(
    shared: &Shared,
    topic: &str,
    queue_id: u32,
    touched: &mut Vec<(Arc<ConsumeQueue>, u64)>,
) -> Result<usize> {
    if let Some(slot) = touched.iter().position(|(q, _)| q.queue_id() == queue_id && q.topic() == topic) {
        return Ok(slot);
    }
    let known = shared.queues.read().expect("queues lock").get(topic).and_then(|m| m.get(&queue_id)).cloned();
    let queue = match known {
        Some(queue) => queue,
        None => {
            let queue = Arc::new(open_new_queue(&shared.config, topic, queue_id)?);
            let mut queues = shared.queues.write().expect("queues lock");
            queues.entry(topic.to_string()).or_default().insert(queue_id, queue.clone());
            queue
        }
    };
    let max_offset = queue.max_offset();
    touched.push((queue, max_offset));
    Ok(touched.len() - 1)
}

fn command_messages(command: &Command) -> usize {
    match command {
        Command::Append { messages, .. } => messages.len(),
        _ => 1,
    }
}

fn fail_command(command: Command) {
    match command {
        Command::Append { done, .. } => done(Err(Error::StoreClosed)),
        Command::DeleteTopic { done, .. } => done(Err(Error::StoreClosed)),
        Command::Shutdown { .. } => {}
    }
}

/// Syncs the commitlog (fdatasync), consume queues and index (msync) up to the dispatched
/// offset, then records it.
fn checkpoint_now(shared: &Shared) -> Result<()> {
    // Held throughout so the writer (topic deletion) and the flusher never interleave.
    let mut last = shared.last_checkpoint.lock().expect("checkpoint lock");
    let dispatched = shared.dispatched_offset.load(Ordering::Acquire);
    let flushed = shared.commit_log.flush_to(dispatched)?;
    let queues: Vec<Arc<ConsumeQueue>> =
        shared.queues.read().expect("queues lock").values().flat_map(|m| m.values().cloned()).collect();
    let mut queue_max_offsets = std::collections::BTreeMap::new();
    for queue in queues {
        // Read before flushing: the flush covers at least this many entries.
        queue_max_offsets.insert(super::checkpoint::queue_key(queue.topic(), queue.queue_id()), queue.max_offset());
        queue.flush()?;
    }
    let dirty_index_files = shared.index.lock().expect("index lock").take_dirty_files();
    for file in dirty_index_files {
        file.flush(0, file.len())?;
    }
    let checkpoint = Checkpoint {
        commit_log_flushed_offset: flushed,
        dispatched_offset: dispatched,
        timestamp_ms: now_ms(),
        queue_max_offsets,
    };
    checkpoint.store(&shared.config.data_dir.join("checkpoint"))?;
    *last = checkpoint;
    Ok(())
}

fn disk_usage_ratio(path: &Path) -> Option<f64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stats) } != 0 || stats.f_blocks == 0 {
        return None;
    }
    let used = stats.f_blocks.saturating_sub(stats.f_bavail);
    Some(used as f64 / stats.f_blocks as f64)
}

/// Most segments one retention pass removes for disk pressure (expired ones are unlimited):
/// when other files fill the disk, the log shrinks step by step, not all at once.
const DISK_PRESSURE_SEGMENTS_PER_PASS_MAX: usize = 1;

fn remove_expired(shared: &Shared, now: SystemTime) -> Result<usize> {
    // One pass at a time: the maintenance thread and `MessageStore::remove_expired` may race.
    let _pass = shared.retention.lock().expect("retention lock");
    let retention = Duration::from_secs(shared.config.retention_hours * 3600);
    let data_dir = shared.config.data_dir.clone();
    let ratio_max = shared.config.disk_usage_ratio_max;
    let mut pressure_removals = 0;
    let removed = shared.commit_log.remove_oldest_segments(|path| {
        let too_old = std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|modified| modified + retention <= now);
        if too_old {
            return true;
        }
        let disk_full = disk_usage_ratio(&data_dir).is_some_and(|ratio| ratio > ratio_max);
        if disk_full && pressure_removals < DISK_PRESSURE_SEGMENTS_PER_PASS_MAX {
            tracing::warn!(path = %path.display(), "disk usage above disk_usage_ratio_max; removing the oldest segment early");
            pressure_removals += 1;
            return true;
        }
        false
    })?;
    // Queues and index follow the log start on every pass, so an earlier failure heals.
    let log_min = shared.commit_log.min_offset();
    let queues: Vec<Arc<ConsumeQueue>> =
        shared.queues.read().expect("queues lock").values().flat_map(|m| m.values().cloned()).collect();
    for queue in queues {
        if let Err(error) = queue.remove_below(log_min) {
            tracing::warn!(topic = queue.topic(), queue_id = queue.queue_id(), %error, "retention could not trim a queue");
        }
    }
    shared.index.lock().expect("index lock").remove_below(log_min)?;
    shared.tombstones.lock().expect("tombstones lock").prune(log_min)?;
    Ok(removed)
}

/// The maintenance thread: checkpoints and retention, off the flush path.
fn run_maintenance(shared: &Shared, stop: Receiver<()>) {
    let config = &shared.config;
    let checkpoint_interval = Duration::from_millis(config.checkpoint_interval_ms);
    let retention_interval = Duration::from_millis(config.retention_check_interval_ms);
    let (mut last_checkpoint, mut last_retention) = (Instant::now(), Instant::now());
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(checkpoint_interval.min(retention_interval)) {
        // A failed store takes no more checkpoints, but retention still frees disk space.
        if !shared.failed.load(Ordering::Acquire) && last_checkpoint.elapsed() >= checkpoint_interval {
            last_checkpoint = Instant::now();
            let dispatched = shared.dispatched_offset.load(Ordering::Acquire);
            let previous = shared.last_checkpoint.lock().expect("checkpoint lock").dispatched_offset;
            if dispatched != previous
                && let Err(error) = checkpoint_now(shared)
            {
                tracing::error!(%error, "checkpoint failed; the store stops accepting appends");
                shared.failed.store(true, Ordering::Release);
            }
        }
        if last_retention.elapsed() >= retention_interval {
            last_retention = Instant::now();
            if let Err(error) = remove_expired(shared, SystemTime::now()) {
                tracing::error!(%error, "retention failed");
            }
        }
    }
}

/// The flusher thread: group commit in sync mode, interval flushes in async mode.
struct Flusher {
    shared: Arc<Shared>,
}

impl Flusher {
    fn new(shared: Arc<Shared>) -> Self {
        Flusher { shared }
    }

    fn run(mut self, requests: Receiver<FlushRequest>) {
        let config = self.shared.config.clone();
        let tick = Duration::from_millis(config.flush_interval_ms);
        loop {
            match requests.recv_timeout(tick) {
                Ok(first) => {
                    let mut pending = vec![first];
                    while let Ok(more) = requests.try_recv() {
                        pending.push(more);
                    }
                    self.group_commit(pending);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if config.flush_mode == FlushMode::Async {
                        let target = self.shared.commit_log.max_offset();
                        if let Err(error) = self.shared.commit_log.flush_to(target) {
                            self.fail(&error);
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
    }

    fn group_commit(&mut self, pending: Vec<FlushRequest>) {
        if self.shared.failed.load(Ordering::Acquire) {
            // After a failed fdatasync the kernel may have dropped dirty pages and cleared the
            // error: a later successful sync proves nothing, so nothing more is acknowledged.
            for request in pending {
                for (done, _) in request.completions {
                    done(Err(Error::StoreClosed));
                }
            }
            return;
        }
        let target = pending.iter().map(|request| request.offset).max().unwrap_or(0);
        let started = Instant::now();
        let flushed = self.shared.commit_log.flush_to(target);
        metrics::histogram!("weir_store_flush_seconds").record(started.elapsed().as_secs_f64());
        match flushed {
            Ok(flushed) if flushed < target => {
                let error = Error::CommitLogCorrupt {
                    path: self.shared.config.data_dir.join("commitlog"),
                    offset: flushed,
                    reason: format!("a flush stopped short of {target}: a segment is missing"),
                };
                self.fail(&error);
                for request in pending {
                    for (done, _) in request.completions {
                        done(Err(Error::StoreClosed));
                    }
                }
            }
            Ok(_) => {
                let appends: usize = pending.iter().map(|request| request.completions.len()).sum();
                self.shared.group_commits.fetch_add(1, Ordering::Relaxed);
                self.shared.group_committed_appends.fetch_add(appends as u64, Ordering::Relaxed);
                for request in pending {
                    for (done, result) in request.completions {
                        done(result);
                    }
                }
            }
            Err(error) => {
                self.fail(&error);
                for request in pending {
                    for (done, _) in request.completions {
                        done(Err(Error::StoreClosed));
                    }
                }
            }
        }
    }

    fn fail(&self, error: &Error) {
        tracing::error!(%error, "flush failed; the store stops accepting appends");
        self.shared.failed.store(true, Ordering::Release);
    }
}
