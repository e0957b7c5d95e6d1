//! Runs a job against the broker through `Messaging`: reads every queue of its source topics
//! in micro-batches, sends results, dead letters and late rows, and checkpoints every
//! `checkpoint_interval`.
//!
//! Exactly-once results in the output topics: a checkpoint holds the input offsets, the
//! window state and each output queue's end offset, saved together. After a crash the job
//! restarts from the checkpoint and replays the input after it; window results carry a
//! deterministic unique id (job, query, window, row content), and before sending anything the
//! runner reads what the output topics received after the checkpoint, so a result already
//! there is not sent again. Ids read that way and not yet produced again are saved with the
//! next checkpoints, so a second crash during the replay still skips them. Stateless results
//! are at-least-once (rows after the checkpoint may be sent twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_broker::{Message, Messaging, PullRequest, PullResult, PullStatus, TopicConfig};

use crate::checkpoint::{self, Offsets};
use crate::error::{Result, StreamsError};
use crate::job::{Job, PROPERTY_JOB};
use crate::sql::parse_job;

/// Most result ids remembered from the output topics after a checkpoint.
pub const REPLAYED_RESULT_IDS_MAX: usize = 1_000_000;
/// Most messages read from one queue per micro-batch.
pub const PULL_MESSAGES_MAX: usize = weir_broker::PULL_MESSAGES_MAX;

/// A job's run settings.
#[derive(Clone, Debug)]
pub struct JobRunConfig {
    /// Job name: checkpoint file, `%DLQ%<name>` and `%LATE%<name>` topics, metrics label.
    pub name: String,
    pub sql: String,
    /// Directory of the checkpoint file.
    pub checkpoint_dir: PathBuf,
    pub checkpoint_interval: Duration,
    /// Messages read from one queue per micro-batch.
    pub batch_messages_max: usize,
    /// How long an idle job waits before reading again.
    pub idle_wait: Duration,
    /// Queues of the topics the job creates (results, dead letters, late rows) when missing.
    pub output_queues: u32,
    /// A queue caught up and quiet this long stops holding the watermark back.
    pub idle_timeout: Duration,
    /// Scalar UDFs the queries may call, besides DataFusion's and `functions::builtin`.
    pub udfs: Vec<datafusion::logical_expr::ScalarUDF>,
    /// Live counts of the run, for whoever holds a clone (the metrics carry the same).
    pub progress: Arc<JobProgress>,
}

impl JobRunConfig {
    pub fn new(name: impl Into<String>, sql: impl Into<String>, checkpoint_dir: impl Into<PathBuf>) -> Self {
        JobRunConfig {
            name: name.into(),
            sql: sql.into(),
            checkpoint_dir: checkpoint_dir.into(),
            checkpoint_interval: Duration::from_secs(1),
            batch_messages_max: 1024,
            idle_wait: Duration::from_millis(100),
            output_queues: 4,
            idle_timeout: Duration::from_secs(5),
            udfs: Vec::new(),
            progress: Arc::default(),
        }
    }
}

/// A running job's counts so far, updated after every micro-batch.
#[derive(Debug, Default)]
pub struct JobProgress {
    pub messages_read: AtomicU64,
    pub results_sent: AtomicU64,
    pub results_discarded: AtomicU64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobStats {
    pub messages_read: u64,
    pub results_sent: u64,
    /// Result rows of queries into blackhole tables.
    pub results_discarded: u64,
    pub results_skipped_as_replayed: u64,
    pub dead_lettered: u64,
    pub late: u64,
    pub checkpoints: u64,
}

/// Runs until `stop` turns true (then checkpoints and returns) or an error.
///
/// Cancel safety: not cancel safe; stop it through `stop` so it checkpoints.
pub async fn run_job(
    broker: Arc<dyn Messaging>,
    config: &JobRunConfig,
    stop: &mut watch::Receiver<bool>,
) -> Result<JobStats> {
    let sql = parse_job(&config.sql)?;
    let mut job = Job::plan_with(&config.name, &sql, &config.udfs).await?;
    let mut outputs = job.sink_topics();
    outputs.push(job.dead_letter_topic());
    outputs.push(job.late_topic());
    for topic in &outputs {
        broker.ensure_topic(TopicConfig::new(topic, config.output_queues)).await?;
    }
    let file = checkpoint::path(&config.checkpoint_dir, &config.name);
    let layout = job.state_layout()?;
    let fingerprint = checkpoint::sql_fingerprint(&sql);
    let loaded = {
        let (file, name, fingerprint) = (file.clone(), config.name.clone(), fingerprint.clone());
        tokio::task::spawn_blocking(move || checkpoint::load(&file, &name, &fingerprint, &layout))
            .await
            .map_err(|e| StreamsError::Checkpoint(format!("checkpoint reader failed: {e}")))??
    };
    let mut offsets = Offsets::default();
    let mut replayed = HashSet::new();
    if let Some((saved, snapshot)) = loaded {
        job.restore(snapshot)?;
        replayed = results_after(broker.as_ref(), &config.name, &saved.sink_end).await?;
        replayed.extend(saved.replayed_pending.iter().cloned());
        tracing::info!(job = %config.name, replayed = replayed.len(), "resuming from checkpoint");
        offsets = saved;
    }
    let sources = job.source_topics();
    let group = format!("streams-{}", config.name);
    for (topic, _) in &sources {
        let queues = broker
            .topic(topic)
            .await?
            .ok_or_else(|| StreamsError::Plan(format!("source topic {topic} does not exist")))?
            .queue_count;
        job.declare_queues(topic, queues);
        let positions = offsets.source.entry(topic.clone()).or_default();
        if job.is_lookup_topic(topic) {
            positions.clear(); // rebuilt from the start: lookup rows are not checkpointed
        }
        for queue_id in 0..queues {
            if let std::collections::btree_map::Entry::Vacant(entry) = positions.entry(queue_id) {
                entry.insert(broker.queue_range(topic, queue_id).await?.min_offset);
            }
        }
    }
    // Lookup tables are rebuilt from their topics before any stream row is read: stream rows
    // wait until every lookup queue has been read up to where it ended at start, so a
    // replay (or a first start) joins against whole tables, not half-loaded ones.
    let mut lookup_targets: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let lookup_queues: Vec<(String, u32)> = sources
        .iter()
        .filter(|(topic, _)| job.is_lookup_topic(topic))
        .flat_map(|(topic, _)| offsets.source[topic].keys().map(|queue_id| (topic.clone(), *queue_id)))
        .collect();
    for (topic, queue_id) in lookup_queues {
        let end = broker.queue_range(&topic, queue_id).await?.max_offset;
        lookup_targets.insert((topic, queue_id), end);
    }
    let mut stats = JobStats::default();
    let mut read_ahead = ReadAhead::default();
    // A first checkpoint before anything is sent: a crash before the next one replays from
    // here and still recognises the results it already sent.
    save_checkpoint(broker.as_ref(), &mut job, config, &fingerprint, &mut offsets, &replayed, &group).await?;
    let mut last_checkpoint = Instant::now();
    // When each queue last delivered (or was found behind), for idleness.
    let mut last_active: BTreeMap<(String, u32), Instant> = BTreeMap::new();
    // Messages not yet read, per queue, for the lag gauge.
    let mut lag_by_queue: BTreeMap<(String, u32), u64> = BTreeMap::new();
    while !*stop.borrow() {
        let mut progressed = false;
        lookup_targets.retain(|(topic, queue_id), target| offsets.source[topic][queue_id] < *target);
        for (topic, tag_expression) in &sources {
            if !lookup_targets.is_empty() && !job.is_lookup_topic(topic) {
                continue; // lookup tables still loading
            }
            let queues: Vec<(u32, u64)> = offsets.source[topic].iter().map(|(q, o)| (*q, *o)).collect();
            for (queue_id, offset) in queues {
                let mut request = PullRequest::new(&group, topic, queue_id, offset);
                request.messages_max = config.batch_messages_max;
                request.tag_expression = tag_expression.clone();
                let pulled = read_ahead.take(broker.as_ref(), &request).await?;
                let next = match pulled.status {
                    PullStatus::OffsetTooSmall => {
                        tracing::warn!(job = %config.name, topic, queue_id, offset, min = pulled.min_offset, "input removed by retention; skipping ahead");
                        pulled.min_offset
                    }
                    _ => pulled.next_offset,
                };
                if !pulled.messages.is_empty() {
                    // This queue's next batch is read while this one is processed.
                    request.queue_offset = next;
                    read_ahead.start(broker.clone(), request);
                }
                let active = last_active.entry((topic.clone(), queue_id)).or_insert_with(Instant::now);
                if !pulled.messages.is_empty() || next < pulled.max_offset {
                    *active = Instant::now();
                }
                job.set_queue_idle(topic, queue_id, active.elapsed() >= config.idle_timeout);
                let output = if pulled.messages.is_empty() {
                    job.advance(topic).await?
                } else {
                    let bodies: Vec<&[u8]> = pulled.messages.iter().map(|m| &m.body[..]).collect();
                    stats.messages_read += bodies.len() as u64;
                    config.progress.messages_read.fetch_add(bodies.len() as u64, Ordering::Relaxed);
                    metrics::counter!("weir_streams_messages_read_total", "job" => config.name.clone())
                        .increment(bodies.len() as u64);
                    job.process(topic, queue_id, &bodies).await?
                };
                let mut results = Vec::with_capacity(output.results.len());
                for message in output.results {
                    // Produced again by the replay: skipped, and no longer pending.
                    if message.unique_id.as_ref().is_some_and(|id| replayed.remove(id)) {
                        stats.results_skipped_as_replayed += 1;
                    } else {
                        results.push(message);
                    }
                }
                stats.results_sent += results.len() as u64;
                stats.results_discarded += output.discarded_rows;
                stats.dead_lettered += output.dead_letters.len() as u64;
                stats.late += output.late.len() as u64;
                metrics::counter!("weir_streams_results_total", "job" => config.name.clone())
                    .increment(results.len() as u64);
                metrics::counter!("weir_streams_results_discarded_total", "job" => config.name.clone())
                    .increment(output.discarded_rows);
                metrics::counter!("weir_streams_dead_lettered_total", "job" => config.name.clone())
                    .increment(output.dead_letters.len() as u64);
                metrics::counter!("weir_streams_late_rows_total", "job" => config.name.clone())
                    .increment(output.late.len() as u64);
                progressed |= !pulled.messages.is_empty();
                let sent = results.len() as u64;
                for messages in [results, output.dead_letters, output.late] {
                    send_all(broker.as_ref(), messages, stop).await?;
                }
                config.progress.results_sent.fetch_add(sent, Ordering::Relaxed);
                config.progress.results_discarded.fetch_add(output.discarded_rows, Ordering::Relaxed);
                if next != offset {
                    offsets.source.get_mut(topic).expect("listed").insert(queue_id, next);
                }
                lag_by_queue.insert((topic.clone(), queue_id), pulled.max_offset.saturating_sub(next));
            }
            let lag: u64 = lag_by_queue.iter().filter(|((t, _), _)| t == topic).map(|(_, lag)| *lag).sum();
            metrics::gauge!("weir_streams_lag_messages", "job" => config.name.clone(), "topic" => topic.clone())
                .set(lag as f64);
            if let Some(watermark) = job.watermark_ms(topic) {
                metrics::gauge!("weir_streams_watermark_ms", "job" => config.name.clone(), "topic" => topic.clone())
                    .set(watermark as f64);
            }
        }
        if last_checkpoint.elapsed() >= config.checkpoint_interval {
            save_checkpoint(broker.as_ref(), &mut job, config, &fingerprint, &mut offsets, &replayed, &group).await?;
            stats.checkpoints += 1;
            last_checkpoint = Instant::now();
        }
        if !progressed {
            tokio::select! {
                _ = tokio::time::sleep(config.idle_wait) => {} // poll interval of an idle job
                _ = stop.wait_for(|stop| *stop) => {}
            }
        }
    }
    save_checkpoint(broker.as_ref(), &mut job, config, &fingerprint, &mut offsets, &replayed, &group).await?;
    stats.checkpoints += 1;
    tracing::info!(job = %config.name, ?stats, "stream job stopped");
    Ok(stats)
}

/// Writes the checkpoint (state, input offsets, output ends) and mirrors the input offsets
/// into the job's consumer group, so lag shows in the usual place.
async fn save_checkpoint(
    broker: &dyn Messaging,
    job: &mut Job,
    config: &JobRunConfig,
    fingerprint: &str,
    offsets: &mut Offsets,
    replayed: &HashSet<String>,
    group: &str,
) -> Result<()> {
    offsets.replayed_pending = replayed.iter().cloned().collect();
    offsets.sink_end.clear();
    for topic in job.sink_topics() {
        let queues = broker.topic(&topic).await?.map_or(0, |t| t.queue_count);
        let mut ends = BTreeMap::new();
        for queue_id in 0..queues {
            ends.insert(queue_id, broker.queue_range(&topic, queue_id).await?.max_offset);
        }
        offsets.sink_end.insert(topic, ends);
    }
    let snapshot = job.snapshot()?;
    let (file, name, saved) =
        (checkpoint::path(&config.checkpoint_dir, &config.name), config.name.clone(), offsets.clone());
    let fingerprint = fingerprint.to_string();
    tokio::task::spawn_blocking(move || checkpoint::save(&file, &name, &fingerprint, &saved, &snapshot))
        .await
        .map_err(|e| StreamsError::Checkpoint(format!("checkpoint writer failed: {e}")))??;
    for (topic, queues) in &offsets.source {
        for (queue_id, offset) in queues {
            broker.commit_offset(group, topic, *queue_id, *offset).await?;
        }
    }
    metrics::counter!("weir_streams_checkpoints_total", "job" => config.name.clone()).increment(1);
    Ok(())
}

/// Unique ids of `job`'s results the output topics received after `ends` (other producers'
/// messages in a shared output topic are neither remembered nor counted).
async fn results_after(
    broker: &dyn Messaging,
    job: &str,
    ends: &BTreeMap<String, BTreeMap<u32, u64>>,
) -> Result<HashSet<String>> {
    let mut ids = HashSet::new();
    for (topic, queues) in ends {
        for (queue_id, end) in queues {
            let mut offset = *end;
            loop {
                let mut request = PullRequest::new("streams-replay-check", topic, *queue_id, offset);
                request.messages_max = PULL_MESSAGES_MAX;
                let pulled = broker.pull(request).await?;
                if pulled.messages.is_empty() {
                    break;
                }
                for message in pulled.messages {
                    if message.properties.get(PROPERTY_JOB).map(String::as_str) != Some(job) {
                        continue;
                    }
                    if ids.len() >= REPLAYED_RESULT_IDS_MAX {
                        return Err(StreamsError::Checkpoint(format!(
                            "more than {REPLAYED_RESULT_IDS_MAX} results after the checkpoint"
                        )));
                    }
                    ids.insert(String::from(message.message_id));
                }
                offset = pulled.next_offset;
            }
        }
    }
    Ok(ids)
}

/// Pulls started ahead, at most one per queue: a queue's next batch is read (on the broker's
/// read threads) while the job processes its current one, so reading and processing overlap
/// and the job's thread does not wait for each read. A pull has no side effects, so one whose
/// request no longer matches (the offset moved, the job skipped the queue) is dropped.
#[derive(Default)]
struct ReadAhead {
    pulls: HashMap<(String, u32), PullAhead>,
}

/// The offset a pull started ahead reads from, and the pull.
type PullAhead = (u64, tokio::task::JoinHandle<weir_broker::Result<PullResult>>);

impl ReadAhead {
    fn start(&mut self, broker: Arc<dyn Messaging>, request: PullRequest) {
        let key = (request.topic.clone(), request.queue_id);
        let offset = request.queue_offset;
        let pull = tokio::spawn(async move { broker.pull(request).await });
        if let Some((_, stale)) = self.pulls.insert(key, (offset, pull)) {
            stale.abort();
        }
    }

    /// The batch `request` asks for: the pull started ahead for it when that found messages,
    /// else a pull now (an empty or failed answer read ahead may be stale by now).
    async fn take(&mut self, broker: &dyn Messaging, request: &PullRequest) -> weir_broker::Result<PullResult> {
        let key = (request.topic.clone(), request.queue_id);
        if let Some((offset, pull)) = self.pulls.remove(&key) {
            if offset != request.queue_offset {
                pull.abort();
            } else if let Ok(Ok(pulled)) = pull.await
                && pulled.status == PullStatus::Found
            {
                return Ok(pulled);
            }
        }
        broker.pull(request.clone()).await
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        for (_, pull) in self.pulls.values() {
            pull.abort();
        }
    }
}

/// Sends in broker-sized batches, waiting out a busy broker (bounded by `stop`).
async fn send_all(broker: &dyn Messaging, messages: Vec<Message>, stop: &mut watch::Receiver<bool>) -> Result<()> {
    for chunk in messages.chunks(weir_broker::SEND_BATCH_MESSAGES_MAX) {
        let mut backoff = Duration::from_millis(10);
        loop {
            match broker.send_batch(chunk.to_vec()).await {
                Ok(_) => break,
                Err(error) if error.is_transient() => {
                    if *stop.borrow() {
                        return Err(error.into());
                    }
                    tokio::time::sleep(backoff).await; // backoff while the broker is busy
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(error) => return Err(error.into()),
            }
        }
    }
    Ok(())
}
