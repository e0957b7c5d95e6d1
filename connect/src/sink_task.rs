//! The sink task: consumes a topic as a consumer group, writes batches to a `Sink`, flushes,
//! and only then commits offsets (at-least-once). Retries follow the sink's retry hint with
//! exponential backoff and jitter; records the sink cannot take go to a dead-letter topic
//! (`errors_tolerance: all`) or stop the task (`none`).

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use weir_broker::{Message, Messaging, PullRequest, PullStatus, TopicConfig};

use crate::error::{ConnectError, Result, RetryHint, SinkError};
use crate::record::SinkRecord;

/// Most records one batch may hold.
pub const BATCH_RECORDS_MAX: usize = 10_000;
/// Largest `batch_bytes_max` (a batch is held in memory whole).
pub const BATCH_BYTES_MAX: usize = 64 << 20;
/// Longest `linger`.
pub const LINGER_MAX: Duration = Duration::from_secs(60);
/// Longest backoff between retries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Most retries of one operation.
pub const RETRIES_MAX: u32 = 1_000;

/// Checks the retry settings every task has; errors name the field.
pub(crate) fn validate_retry(
    connector: &str,
    retries_max: u32,
    backoff_initial: Duration,
    backoff_max: Duration,
) -> Result<()> {
    let invalid = |field, reason: String| Err(ConnectError::Config { connector: connector.to_string(), field, reason });
    if retries_max > RETRIES_MAX {
        return invalid("retries_max", format!("is {retries_max}; must be at most {RETRIES_MAX}"));
    }
    if backoff_initial.is_zero() || backoff_initial > BACKOFF_MAX {
        return invalid("backoff_initial", format!("is {backoff_initial:?}; must be in 1 ms..={BACKOFF_MAX:?}"));
    }
    if backoff_max < backoff_initial || backoff_max > BACKOFF_MAX {
        return invalid(
            "backoff_max",
            format!("is {backoff_max:?}; must be in backoff_initial ({backoff_initial:?})..={BACKOFF_MAX:?}"),
        );
    }
    Ok(())
}

/// Where records go. Implementations may buffer in `write`; `flush` makes them durable.
#[async_trait]
pub trait Sink: Send {
    /// Writes a batch. A retryable error means nothing of it counts as written (it is written
    /// again); a permanent one lists the records at fault (all, when empty) and the rest
    /// counts as written.
    async fn write(&mut self, batch: &[SinkRecord]) -> std::result::Result<(), SinkError>;
    /// Makes everything written so far durable in the target.
    async fn flush(&mut self) -> std::result::Result<(), SinkError>;
    /// Decoding the sink can do without itself (records into commands or rows, as the sink is
    /// now): the task runs it on the next batch, on another thread, while the current batch is
    /// written, so decoding overlaps the target's work. Asked before each batch. Default: none.
    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        None
    }
    /// `write` for a batch this sink's preparer decoded, with the same contract. A sink whose
    /// state changed since (a table's columns) decodes again. Default: `write`.
    async fn write_prepared(
        &mut self,
        batch: &[SinkRecord],
        prepared: PreparedBatch,
    ) -> std::result::Result<(), SinkError> {
        drop(prepared);
        self.write(batch).await
    }
}

/// A batch as a sink's preparer left it, for that sink's `write_prepared`.
pub type PreparedBatch = Box<dyn std::any::Any + Send>;

/// Decodes batches for a sink (see `Sink::preparer`); runs on a blocking thread.
pub trait BatchPreparer: Send + Sync {
    /// `batch` decoded for `write_prepared`, which gets it with this same batch only. It may
    /// depend on the sink's state only as far as `write_prepared` checks that state is
    /// unchanged. A panic here costs the prepared form only (the batch is written by
    /// `write`). A wrapper sink that changes records on their way must not pass its inner
    /// sink's preparer on.
    fn prepare(&self, batch: &[SinkRecord]) -> PreparedBatch;
}

/// What a permanent sink error does (Kafka Connect's `errors.tolerance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorTolerance {
    /// The task stops with the error; offsets stay before the failed batch.
    None,
    /// The records at fault go to the dead-letter topic with the error attached; the task
    /// goes on.
    All,
}

/// A sink task's settings.
#[derive(Clone, Debug)]
pub struct SinkTaskConfig {
    /// Connector name: consumer group `connect-<name>`, dead-letter topic `%DLQ%<name>`.
    pub connector: String,
    /// Topic consumed.
    pub topic: String,
    /// `*` or `TagA || TagB`.
    pub tag_expression: String,
    /// Most records per batch.
    pub batch_records_max: usize,
    /// About this many bytes per batch at most.
    pub batch_bytes_max: usize,
    /// How long a partial batch waits for more records.
    pub linger: Duration,
    /// Retries of one write or flush before the task fails.
    pub retries_max: u32,
    /// First backoff; it doubles per retry up to `backoff_max`, with ±25 % jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub errors_tolerance: ErrorTolerance,
}

impl SinkTaskConfig {
    /// Defaults for a connector on a topic.
    pub fn new(connector: impl Into<String>, topic: impl Into<String>) -> Self {
        SinkTaskConfig {
            connector: connector.into(),
            topic: topic.into(),
            tag_expression: "*".into(),
            batch_records_max: 500,
            batch_bytes_max: 4 << 20,
            linger: Duration::from_millis(100),
            retries_max: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            errors_tolerance: ErrorTolerance::None,
        }
    }

    /// The consumer group whose offsets record the sink's progress.
    pub fn group(&self) -> String {
        format!("connect-{}", self.connector)
    }

    /// Where records the sink cannot take go.
    pub fn dead_letter_topic(&self) -> String {
        format!("%DLQ%{}", self.connector)
    }

    /// Checks every setting against its limit; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field, reason: String| Err(ConnectError::Config { connector: self.connector.clone(), field, reason });
        if weir_broker::topic::validate_group_name(&self.group()).is_err() {
            return invalid("connector", "must be letters, digits, `%`, `_` and `-`".into());
        }
        if self.batch_records_max == 0 || self.batch_records_max > BATCH_RECORDS_MAX {
            return invalid("batch_records_max", format!("must be in 1..={BATCH_RECORDS_MAX}"));
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > BATCH_BYTES_MAX {
            return invalid("batch_bytes_max", format!("must be in 1..={BATCH_BYTES_MAX}"));
        }
        if self.linger > LINGER_MAX {
            return invalid("linger", format!("must be at most {LINGER_MAX:?}"));
        }
        validate_retry(&self.connector, self.retries_max, self.backoff_initial, self.backoff_max)
    }
}

/// What a sink task did before it stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SinkTaskStats {
    pub records_written: u64,
    pub records_dead_lettered: u64,
    pub batches: u64,
}

/// Runs until `shutdown` turns true (then returns after the current batch is flushed and
/// committed) or a failure the tolerance does not allow.
pub async fn run_sink_task(
    broker: Arc<dyn Messaging>,
    sink: &mut dyn Sink,
    config: &SinkTaskConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SinkTaskStats> {
    config.validate()?;
    let topic = broker
        .topic(&config.topic)
        .await?
        .ok_or_else(|| weir_broker::Error::TopicNotFound { topic: config.topic.clone() })?;
    if config.errors_tolerance == ErrorTolerance::All {
        broker.ensure_topic(TopicConfig::new(config.dead_letter_topic(), 1)).await?;
    }
    let group = config.group();
    let mut positions = Vec::with_capacity(topic.queue_count as usize);
    for queue_id in 0..topic.queue_count {
        let committed = broker.committed_offset(&group, &config.topic, queue_id).await?;
        let start = match committed {
            Some(offset) => offset,
            None => broker.queue_range(&config.topic, queue_id).await?.min_offset,
        };
        positions.push(start);
    }
    tracing::info!(connector = %config.connector, topic = %config.topic, %group, "sink task started");
    let mut stats = SinkTaskStats::default();
    let mut first_queue = 0usize;
    // The next batch is gathered while the current one is written. Offsets are committed only
    // after a batch is written and flushed, and a gathered batch is read from past the one
    // being written, so at-least-once holds; a stop drops the gathered batch uncommitted.
    // The sink's preparer decodes each gathered batch on a blocking thread, so the next batch's
    // decoding overlaps the current one's write too.
    let mut gathered =
        gather_prepared(broker.as_ref(), config, &positions, first_queue, &mut shutdown.clone(), sink.preparer())
            .await?;
    // A dropped sender counts as a stop, like `true`.
    while !*shutdown.borrow() && shutdown.has_changed().is_ok() {
        let Gathered { batch, next_positions, prepared } = gathered;
        first_queue = (first_queue + 1) % positions.len().max(1);
        let mut gather_shutdown = shutdown.clone();
        let preparer = sink.preparer();
        let prefetch =
            gather_prepared(broker.as_ref(), config, &next_positions, first_queue, &mut gather_shutdown, preparer);
        let write = write_and_commit(
            broker.as_ref(),
            sink,
            config,
            (&batch, prepared),
            &positions,
            &next_positions,
            &mut stats,
            shutdown,
        );
        // A failed write returns at once; the prefetched batch is dropped (pulls commit nothing).
        let (written, prefetched) = tokio::try_join!(write, prefetch)?;
        if !written {
            break; // stopped mid-retry: nothing of this batch is committed
        }
        positions = next_positions;
        gathered = prefetched;
    }
    tracing::info!(connector = %config.connector, ?stats, "sink task stopped");
    Ok(stats)
}

/// Writes and flushes `batch` (read from `positions` up to `next_positions`), then commits
/// `next_positions`. Returns `false` when shutdown interrupted a retry (nothing committed).
#[allow(clippy::too_many_arguments)]
async fn write_and_commit(
    broker: &dyn Messaging,
    sink: &mut dyn Sink,
    config: &SinkTaskConfig,
    (batch, prepared): (&[SinkRecord], Option<PreparedBatch>),
    positions: &[u64],
    next_positions: &[u64],
    stats: &mut SinkTaskStats,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let group = config.group();
    if !batch.is_empty() {
        let bytes: u64 = batch.iter().map(|r| r.record.value.len() as u64).sum();
        metrics::counter!("weir_connect_sink_records_in_total", "connector" => config.connector.clone())
            .increment(batch.len() as u64);
        metrics::counter!("weir_connect_sink_bytes_in_total", "connector" => config.connector.clone()).increment(bytes);
        let started = Instant::now();
        let Some(dead) = deliver(broker, sink, config, batch, prepared, shutdown).await? else {
            return Ok(false);
        };
        stats.batches += 1;
        stats.records_written += (batch.len() - dead) as u64;
        stats.records_dead_lettered += dead as u64;
        metrics::histogram!("weir_connect_sink_batch_seconds", "connector" => config.connector.clone())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("weir_connect_sink_records_total", "connector" => config.connector.clone())
            .increment((batch.len() - dead) as u64);
        metrics::counter!("weir_connect_sink_bytes_total", "connector" => config.connector.clone()).increment(bytes);
    }
    // Everything below `next_positions` is written and flushed (or dead-lettered).
    for (queue_id, (old, new)) in positions.iter().zip(next_positions).enumerate() {
        if new != old {
            broker.commit_offset(&group, &config.topic, queue_id as u32, *new).await?;
        }
    }
    if next_positions != positions || stats.batches == 0 {
        let mut lag = 0;
        for (queue_id, position) in next_positions.iter().enumerate() {
            lag += broker.queue_range(&config.topic, queue_id as u32).await?.max_offset.saturating_sub(*position);
        }
        metrics::gauge!("weir_connect_sink_lag_records", "connector" => config.connector.clone()).set(lag as f64);
    }
    Ok(true)
}

/// A gathered batch: its records, the positions just past them, and what the sink's preparer
/// made of them.
struct Gathered {
    batch: Vec<SinkRecord>,
    next_positions: Vec<u64>,
    prepared: Option<PreparedBatch>,
}

/// `gather`, then the batch through `preparer` on a blocking thread (decoding is CPU work).
async fn gather_prepared(
    broker: &dyn Messaging,
    config: &SinkTaskConfig,
    positions: &[u64],
    first_queue: usize,
    shutdown: &mut watch::Receiver<bool>,
    preparer: Option<Arc<dyn BatchPreparer>>,
) -> Result<Gathered> {
    let (batch, next_positions) = gather(broker, config, positions, first_queue, shutdown).await?;
    let Some(preparer) = preparer.filter(|_| !batch.is_empty()) else {
        return Ok(Gathered { batch, next_positions, prepared: None });
    };
    let shared = Arc::new(batch);
    let for_preparer = shared.clone();
    let prepared = tokio::task::spawn_blocking(move || preparer.prepare(&for_preparer)).await;
    let batch = Arc::into_inner(shared).expect("the preparer's reference is dropped with its task");
    match prepared {
        Ok(prepared) => Ok(Gathered { batch, next_positions, prepared: Some(prepared) }),
        Err(error) => {
            // `write` decodes the batch instead.
            if error.is_panic() {
                tracing::error!(connector = %config.connector, %error, "the sink's batch preparer panicked");
            }
            Ok(Gathered { batch, next_positions, prepared: None })
        }
    }
}

/// Pulls a batch: up to the limits, waiting at most `linger` for more once one record is in.
async fn gather(
    broker: &dyn Messaging,
    config: &SinkTaskConfig,
    positions: &[u64],
    first_queue: usize,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(Vec<SinkRecord>, Vec<u64>)> {
    let mut next = positions.to_vec();
    let mut batch = Vec::new();
    let mut bytes = 0usize;
    let deadline = tokio::time::Instant::now() + config.linger;
    loop {
        let mut progressed = false;
        for step in 0..next.len() {
            let queue_id = (first_queue + step) % next.len();
            if batch.len() >= config.batch_records_max || bytes >= config.batch_bytes_max {
                return Ok((batch, next));
            }
            let mut request = PullRequest::new(&config.group(), &config.topic, queue_id as u32, next[queue_id]);
            request.messages_max = (config.batch_records_max - batch.len()).min(weir_broker::PULL_MESSAGES_MAX);
            request.bytes_max = config.batch_bytes_max - bytes;
            request.tag_expression = config.tag_expression.clone();
            let result = broker.pull(request).await?;
            if result.status == PullStatus::OffsetTooSmall {
                tracing::warn!(
                    connector = %config.connector, queue_id, from = next[queue_id], to = result.next_offset,
                    "retention removed unconsumed messages; skipping to the queue's minimum"
                );
            }
            progressed |= result.next_offset != next[queue_id];
            next[queue_id] = result.next_offset;
            for message in result.messages {
                bytes += message.body.len();
                batch.push(SinkRecord::from(message));
            }
        }
        let now = tokio::time::Instant::now();
        if (!batch.is_empty() && now >= deadline) || (batch.is_empty() && progressed) || *shutdown.borrow() {
            return Ok((batch, next));
        }
        if !progressed {
            // Nothing new anywhere: wait for a message on the first queue, the linger at most.
            let queue_id = first_queue % next.len().max(1);
            let mut request = PullRequest::new(&config.group(), &config.topic, queue_id as u32, next[queue_id]);
            request.messages_max = 1;
            request.tag_expression = config.tag_expression.clone();
            request.long_poll_timeout = config.linger.max(Duration::from_millis(1));
            tokio::select! {
                _ = broker.pull(request) => {}
                _ = shutdown.wait_for(|stop| *stop) => {}
            }
            if batch.is_empty() {
                return Ok((batch, next));
            }
        }
    }
}

/// Writes (the first time from its prepared form, if any) and flushes a batch, retrying on the
/// sink's hint: a retryable failure of either call writes the (remaining) batch again before
/// the next flush, so a flush that failed after the target dropped buffered data cannot be
/// followed by a commit. Returns how many records
/// went to the dead-letter topic, or `None` when shutdown interrupted a retry (nothing is
/// committed then).
async fn deliver(
    broker: &dyn Messaging,
    sink: &mut dyn Sink,
    config: &SinkTaskConfig,
    batch: &[SinkRecord],
    mut prepared: Option<PreparedBatch>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<usize>> {
    let mut dead = 0;
    // Borrowed until records are dead-lettered out of it (copying every batch cost a copy of
    // every record's bytes).
    let mut pending: std::borrow::Cow<'_, [SinkRecord]> = std::borrow::Cow::Borrowed(batch);
    let mut attempts = 0u32;
    let mut backoff = config.backoff_initial;
    loop {
        attempts += 1;
        // The prepared form serves the first attempt only (a retry may write fewer records).
        let written = match prepared.take() {
            Some(prepared) => sink.write_prepared(&pending, prepared).await,
            None => sink.write(&pending).await,
        };
        let result = match written {
            Ok(()) => sink.flush().await.map_err(|error| (error, true)),
            Err(error) if error.retry == RetryHint::Permanent => {
                let failed = failed_indexes(&error, pending.len());
                let Some(sent) = dead_letter(broker, config, &pending, &failed, attempts, &error, shutdown).await?
                else {
                    return Ok(None);
                };
                dead += sent;
                let mut index = 0;
                pending.to_mut().retain(|_| {
                    index += 1;
                    !failed.contains(&(index - 1))
                });
                if pending.is_empty() {
                    return Ok(Some(dead));
                }
                sink.flush().await.map_err(|error| (error, true))
            }
            Err(error) => Err((error, false)),
        };
        let (error, in_flush) = match result {
            Ok(()) => return Ok(Some(dead)),
            Err(failure) => failure,
        };
        metrics::counter!("weir_connect_sink_errors_total", "connector" => config.connector.clone()).increment(1);
        let call = if in_flush { "flush" } else { "write" };
        let after = match error.retry {
            RetryHint::Permanent => {
                // A flush that cannot succeed: nothing of the batch is known to be written.
                let all: Vec<usize> = (0..pending.len()).collect();
                let sent = dead_letter(broker, config, &pending, &all, attempts, &error, shutdown).await?;
                return Ok(sent.map(|sent| dead + sent));
            }
            RetryHint::Retry { .. } if attempts > config.retries_max => {
                // Out of retries: a transient outage, not bad records; stop rather than
                // dead-letter the topic. The supervisor restarts the task later.
                let source = SinkError { message: format!("{call}: {}", error.message), ..error };
                return Err(ConnectError::Sink { connector: config.connector.clone(), attempts, source });
            }
            RetryHint::Retry { after } => after.unwrap_or_default().max(jitter(backoff)),
        };
        tracing::warn!(connector = %config.connector, attempts, call, error = %error.message, retry_in_ms = after.as_millis() as u64, "sink call failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(after) => {} // backoff between retries
            _ = shutdown.wait_for(|stop| *stop) => return Ok(None),
        }
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// The batch indexes a permanent error names (all when it names none), sorted and unique.
fn failed_indexes(error: &SinkError, len: usize) -> Vec<usize> {
    if error.failed_records.is_empty() {
        return (0..len).collect();
    }
    let mut failed: Vec<usize> = error.failed_records.iter().copied().filter(|index| *index < len).collect();
    failed.sort_unstable();
    failed.dedup();
    failed
}

/// `duration` ± 25 %.
pub(crate) fn jitter(duration: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    let unit = (hasher.finish() % 10_001) as f64 / 10_000.0; // 0.0..=1.0
    duration.mul_f64(0.75 + unit * 0.5)
}

/// Longest error text attached to a dead-lettered record.
const DEAD_LETTER_ERROR_BYTES_MAX: usize = 1024;

/// Dead-letters `failed` records of `batch` (tolerance `all`) or stops the task (`none`).
async fn dead_letter(
    broker: &dyn Messaging,
    config: &SinkTaskConfig,
    batch: &[SinkRecord],
    failed: &[usize],
    attempts: u32,
    error: &SinkError,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<usize>> {
    if config.errors_tolerance == ErrorTolerance::None {
        let source = SinkError {
            message: error.message.clone(),
            retry: error.retry,
            failed_records: failed.to_vec(),
            record_errors: error.record_errors.clone(),
        };
        return Err(ConnectError::Sink { connector: config.connector.clone(), attempts, source });
    }
    let bounded = |text: &str| {
        let mut cut = text.len().min(DEAD_LETTER_ERROR_BYTES_MAX);
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text[..cut].to_string()
    };
    let reason = bounded(&error.message);
    let messages: Vec<Message> = failed
        .iter()
        .filter_map(|index| Some((batch.get(*index)?, error.record_errors.get(index))))
        .map(|(record, record_error)| {
            let mut message = record.record.to_message();
            message.topic = config.dead_letter_topic();
            let mut context = BTreeMap::new();
            let reason = record_error.map_or_else(|| reason.clone(), |text| bounded(text));
            context.insert("DLQ_ERROR".to_string(), reason);
            context.insert("DLQ_CONNECTOR".to_string(), config.connector.clone());
            context.insert("DLQ_ORIGIN_TOPIC".to_string(), record.record.topic.clone());
            context.insert("DLQ_ORIGIN_QUEUE_ID".to_string(), record.queue_id.to_string());
            context.insert("DLQ_ORIGIN_QUEUE_OFFSET".to_string(), record.queue_offset.to_string());
            message.properties.extend(context);
            message
        })
        .collect();
    let count = messages.len();
    for chunk in messages.chunks(weir_broker::SEND_BATCH_MESSAGES_MAX) {
        match send_dead_letters(broker, config, chunk.to_vec(), shutdown).await {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            // Some dead letter is refused as it is (the record was near the size limit, and
            // its context made it too large, or its own properties are): each alone, and a
            // refused one cut down to its context and the start of its body.
            Err(error) if error.is_message_rejected() => {
                for message in chunk {
                    let sent = match send_dead_letters(broker, config, vec![message.clone()], shutdown).await {
                        Err(error) if error.is_message_rejected() => {
                            let body_max =
                                crate::source_task::DEAD_LETTER_BODY_BYTES_MAX.min(broker.message_size_max_bytes() / 2);
                            send_dead_letters(broker, config, vec![cut_down(message, body_max)], shutdown).await
                        }
                        other => other,
                    };
                    match sent {
                        Ok(true) => {}
                        Ok(false) => return Ok(None),
                        Err(error) => return Err(error.into()),
                    }
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
    tracing::warn!(connector = %config.connector, records = count, error = %reason, "records sent to the dead-letter topic");
    metrics::counter!("weir_connect_sink_dead_lettered_total", "connector" => config.connector.clone())
        .increment(count as u64);
    Ok(Some(count))
}

/// Sends dead letters, waiting out a busy broker (bounded); `Ok(false)` when the task is
/// stopped meanwhile.
async fn send_dead_letters(
    broker: &dyn Messaging,
    config: &SinkTaskConfig,
    messages: Vec<Message>,
    shutdown: &mut watch::Receiver<bool>,
) -> std::result::Result<bool, weir_broker::Error> {
    let mut backoff = config.backoff_initial;
    let mut retries = 0;
    loop {
        match broker.send_batch(messages.clone()).await {
            Ok(_) => return Ok(true),
            Err(error) if error.is_transient() && retries < config.retries_max => {
                retries += 1;
                tracing::warn!(connector = %config.connector, %error, "dead-letter send failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(jitter(backoff)) => {} // backoff between retries
                    _ = shutdown.wait_for(|stop| *stop) => return Ok(false),
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
            Err(error) => return Err(error),
        }
    }
}

/// A dead letter the broker refused as it was: only its `DLQ_*` context, and its body cut to
/// `body_max` bytes (with `DLQ_BODY_TRUNCATED` = the original length).
fn cut_down(message: &Message, body_max: usize) -> Message {
    let mut reduced = Message::new(message.topic.clone(), message.body.clone());
    reduced.properties = message
        .properties
        .iter()
        .filter(|(name, _)| name.starts_with("DLQ_"))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    if reduced.body.len() > body_max {
        reduced.properties.insert("DLQ_BODY_TRUNCATED".to_string(), reduced.body.len().to_string());
        reduced.body.truncate(body_max);
    }
    reduced
}
