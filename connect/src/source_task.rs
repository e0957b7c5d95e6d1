//! The source task: polls a `Source` for records, sends them to the broker in order, and
//! commits the source's position only after the broker acknowledged every record up to it
//! (at-least-once). Polling and sending overlap through a bounded channel of
//! `in_flight_batches_max` batches, so a slow broker slows the source instead of growing
//! memory. Sends happen one batch at a time, in poll order: what the source emitted in order
//! for a key stays in order in its queue, and the acknowledged records are always an unbroken
//! prefix of what was polled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use weir_broker::{Message, Messaging, TopicConfig};

use crate::error::{ConnectError, Result, RetryHint};
use crate::positions::{Position, PositionStore};
use crate::record::Record;
use crate::sink_task::{ErrorTolerance, jitter, validate_retry};

/// Most records one source batch may hold (the broker's batch maximum).
pub const SOURCE_BATCH_RECORDS_MAX: usize = weir_broker::SEND_BATCH_MESSAGES_MAX;
/// Most polled batches waiting for the broker.
pub const IN_FLIGHT_BATCHES_MAX: usize = 64;

/// A record from an external system and the source position just after it: resuming from
/// that position yields the records that follow it.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceRecord {
    pub record: Record,
    pub position: Position,
}

/// A failed `Source::open` or `Source::poll`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    pub message: String,
    /// `Retry`: the call is repeated after a backoff; `Permanent`: the task stops (the
    /// supervisor restarts it later from the last committed position).
    pub retry: RetryHint,
}

impl SourceError {
    /// A transient failure (connection lost, timeout).
    pub fn retryable(message: impl Into<String>) -> Self {
        SourceError { message: message.into(), retry: RetryHint::Retry { after: None } }
    }

    /// A failure retrying cannot fix (bad credentials, position no longer available).
    pub fn permanent(message: impl Into<String>) -> Self {
        SourceError { message: message.into(), retry: RetryHint::Permanent }
    }
}

/// Where records come from.
#[async_trait]
pub trait Source: Send {
    /// Prepares to read from just after `position` (`None`: nothing was ever committed; start
    /// where the source's config says).
    async fn open(&mut self, position: Option<Position>) -> std::result::Result<(), SourceError>;
    /// Up to `records_max` records in source order, waiting about `wait` at most when none are
    /// ready; an empty batch means nothing new.
    async fn poll(&mut self, records_max: usize, wait: Duration)
    -> std::result::Result<Vec<SourceRecord>, SourceError>;
}

/// A source task's settings.
#[derive(Clone, Debug)]
pub struct SourceTaskConfig {
    /// Connector name: position key, dead-letter topic `%DLQ%<name>`, metrics label.
    pub connector: String,
    /// Most records asked of one poll.
    pub batch_records_max: usize,
    /// How long one poll may wait for records.
    pub poll_wait: Duration,
    /// Polled batches that may wait for the broker.
    pub in_flight_batches_max: usize,
    /// How often the acknowledged position is written to the position store (and at stop).
    pub position_flush_interval: Duration,
    /// Retries of one poll or send before the task fails.
    pub retries_max: u32,
    /// First backoff; it doubles per retry up to `backoff_max`, with ±25 % jitter.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// What a record the broker rejects (too large, bad property) does.
    pub errors_tolerance: ErrorTolerance,
}

impl SourceTaskConfig {
    /// Defaults for a connector.
    pub fn new(connector: impl Into<String>) -> Self {
        SourceTaskConfig {
            connector: connector.into(),
            batch_records_max: 1000,
            poll_wait: Duration::from_millis(500),
            in_flight_batches_max: 4,
            position_flush_interval: Duration::from_secs(1),
            retries_max: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            errors_tolerance: ErrorTolerance::None,
        }
    }

    /// Where records the broker rejects go.
    pub fn dead_letter_topic(&self) -> String {
        format!("%DLQ%{}", self.connector)
    }

    /// Checks every setting against its limit; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |field, reason: String| Err(ConnectError::Config { connector: self.connector.clone(), field, reason });
        if weir_broker::topic::validate_topic_name(&self.dead_letter_topic()).is_err() {
            return invalid("connector", "must be letters, digits, `%`, `_` and `-`".into());
        }
        if self.batch_records_max == 0 || self.batch_records_max > SOURCE_BATCH_RECORDS_MAX {
            return invalid("batch_records_max", format!("must be in 1..={SOURCE_BATCH_RECORDS_MAX}"));
        }
        if self.in_flight_batches_max == 0 || self.in_flight_batches_max > IN_FLIGHT_BATCHES_MAX {
            return invalid("in_flight_batches_max", format!("must be in 1..={IN_FLIGHT_BATCHES_MAX}"));
        }
        validate_retry(&self.connector, self.retries_max, self.backoff_initial, self.backoff_max)
    }
}

/// What a source task did before it stopped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceTaskStats {
    pub records_sent: u64,
    pub records_dead_lettered: u64,
    pub batches: u64,
    /// The last position written to the position store by this run.
    pub committed: Option<Position>,
}

/// Runs until `shutdown` turns true (then sends what was already polled, commits the
/// position and returns) or a failure the settings do not allow.
pub async fn run_source_task(
    broker: Arc<dyn Messaging>,
    source: &mut dyn Source,
    positions: &dyn PositionStore,
    config: &SourceTaskConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<SourceTaskStats> {
    config.validate()?;
    if config.errors_tolerance == ErrorTolerance::All {
        broker.ensure_topic(TopicConfig::new(config.dead_letter_topic(), 1)).await?;
    }
    let start = positions.load(&config.connector).await?;
    tracing::info!(connector = %config.connector, position = ?start, "source task starting");
    let mut retry = Retry::new(config);
    loop {
        match source.open(start.clone()).await {
            Ok(()) => break,
            Err(error) => {
                if !retry.wait(config, "open", &error, shutdown).await? {
                    return Ok(SourceTaskStats::default());
                }
            }
        }
    }
    let (batches_tx, batches_rx) = mpsc::channel(config.in_flight_batches_max);
    let poller = poll_loop(source, config, batches_tx, shutdown.clone());
    let sender = send_loop(broker.as_ref(), positions, config, batches_rx, shutdown.clone());
    let (polled, sent) = tokio::join!(poller, sender);
    let stats = sent?;
    polled?;
    tracing::info!(connector = %config.connector, ?stats, "source task stopped");
    Ok(stats)
}

/// Counts retries of one call and sleeps the backoff between them.
struct Retry {
    attempts: u32,
    backoff: Duration,
}

impl Retry {
    fn new(config: &SourceTaskConfig) -> Self {
        Retry { attempts: 0, backoff: config.backoff_initial }
    }

    /// After a failure: `Ok(true)` once the backoff passed, `Ok(false)` when shutdown came
    /// first, an error when retrying is not allowed or exhausted.
    async fn wait(
        &mut self,
        config: &SourceTaskConfig,
        call: &'static str,
        error: &SourceError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool> {
        self.attempts += 1;
        metrics::counter!("weir_connect_source_errors_total", "connector" => config.connector.clone()).increment(1);
        let after = match error.retry {
            RetryHint::Retry { after } if self.attempts <= config.retries_max => {
                after.unwrap_or_default().max(jitter(self.backoff))
            }
            _ => {
                let source = SourceError { message: format!("{call}: {}", error.message), retry: error.retry };
                return Err(ConnectError::Source {
                    connector: config.connector.clone(),
                    attempts: self.attempts,
                    source,
                });
            }
        };
        tracing::warn!(connector = %config.connector, attempts = self.attempts, call, error = %error.message, retry_in_ms = after.as_millis() as u64, "source call failed; retrying");
        self.backoff = (self.backoff * 2).min(config.backoff_max);
        tokio::select! {
            _ = tokio::time::sleep(after) => Ok(true), // backoff between retries
            _ = shutdown.wait_for(|stop| *stop) => Ok(false),
        }
    }
}

/// Polls until shutdown or until the sender goes away; dropping `batches` tells the sender
/// nothing more comes.
async fn poll_loop(
    source: &mut dyn Source,
    config: &SourceTaskConfig,
    batches: mpsc::Sender<Vec<SourceRecord>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut retry = Retry::new(config);
    while !*shutdown.borrow() && shutdown.has_changed().is_ok() {
        let polled = tokio::select! {
            polled = source.poll(config.batch_records_max, config.poll_wait) => polled,
            _ = shutdown.wait_for(|stop| *stop) => break,
        };
        let mut records = match polled {
            Ok(records) => {
                retry = Retry::new(config);
                records
            }
            Err(error) => {
                if retry.wait(config, "poll", &error, &mut shutdown).await? {
                    continue;
                }
                break;
            }
        };
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(config.batch_records_max));
            if batches.send(records).await.is_err() {
                return Ok(()); // the sender stopped; it reports why
            }
            records = rest;
        }
    }
    Ok(())
}

/// Sends batches in order and commits positions behind the acknowledgements. Returns after
/// the poller is done and every polled batch is sent (or at shutdown during a retry).
async fn send_loop(
    broker: &dyn Messaging,
    positions: &dyn PositionStore,
    config: &SourceTaskConfig,
    mut batches: mpsc::Receiver<Vec<SourceRecord>>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SourceTaskStats> {
    let connector = config.connector.clone();
    let mut stats = SourceTaskStats::default();
    // Every record up to this position is acknowledged by the broker.
    let mut acknowledged: Option<Position> = None;
    let mut last_flush = Instant::now();
    loop {
        // An acknowledged position waits at most one flush interval, even when the source
        // goes quiet after it (`recv` is cancel safe).
        let pending = acknowledged.is_some() && acknowledged != stats.committed;
        let flush_at = tokio::time::Instant::from_std(last_flush + config.position_flush_interval);
        let batch = tokio::select! {
            batch = batches.recv() => batch,
            _ = tokio::time::sleep_until(flush_at), if pending => {
                commit(positions, config, &mut stats, &acknowledged).await?;
                last_flush = Instant::now();
                continue;
            }
        };
        let Some(batch) = batch else { break };
        let started = Instant::now();
        let bytes: usize = batch.iter().map(|r| r.record.value.len()).sum();
        let dead = match send_batch(broker, config, &batch, &mut shutdown).await {
            Ok(Some(dead)) => dead,
            Ok(None) => break, // shutdown interrupted a retry: this batch is not acknowledged
            Err(error) => {
                // What the broker acknowledged before the failure still counts.
                commit(positions, config, &mut stats, &acknowledged).await?;
                return Err(error);
            }
        };
        stats.batches += 1;
        stats.records_sent += (batch.len() - dead) as u64;
        stats.records_dead_lettered += dead as u64;
        metrics::counter!("weir_connect_source_records_total", "connector" => connector.clone())
            .increment((batch.len() - dead) as u64);
        metrics::counter!("weir_connect_source_bytes_total", "connector" => connector.clone()).increment(bytes as u64);
        metrics::histogram!("weir_connect_source_batch_seconds", "connector" => connector.clone())
            .record(started.elapsed().as_secs_f64());
        acknowledged = batch.last().map(|r| r.position.clone());
        if last_flush.elapsed() >= config.position_flush_interval {
            commit(positions, config, &mut stats, &acknowledged).await?;
            last_flush = Instant::now();
        }
    }
    commit(positions, config, &mut stats, &acknowledged).await?;
    Ok(stats)
}

async fn commit(
    positions: &dyn PositionStore,
    config: &SourceTaskConfig,
    stats: &mut SourceTaskStats,
    acknowledged: &Option<Position>,
) -> Result<()> {
    let Some(position) = acknowledged else { return Ok(()) };
    if stats.committed.as_ref() == Some(position) {
        return Ok(());
    }
    positions.save(&config.connector, Some(position)).await?;
    stats.committed = Some(position.clone());
    metrics::counter!("weir_connect_source_position_commits_total", "connector" => config.connector.clone())
        .increment(1);
    Ok(())
}

/// Sends one batch, retrying transient broker errors. A batch the broker rejects is sent
/// record by record to find the records at fault, which go to the dead-letter topic
/// (tolerance `all`) or stop the task (`none`). Returns how many were dead-lettered, or
/// `None` when shutdown interrupted a retry.
async fn send_batch(
    broker: &dyn Messaging,
    config: &SourceTaskConfig,
    batch: &[SourceRecord],
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<usize>> {
    let messages = || batch.iter().map(|r| r.record.to_message()).collect();
    match send_with_retry(broker, config, messages, shutdown).await? {
        Sent::Acknowledged => return Ok(Some(0)),
        Sent::Interrupted => return Ok(None),
        Sent::Rejected(_) => {}
    }
    // Find the records at fault, one send each, in order.
    let mut dead = 0;
    for record in batch {
        match send_with_retry(broker, config, || vec![record.record.to_message()], shutdown).await? {
            Sent::Acknowledged => {}
            Sent::Interrupted => return Ok(None),
            Sent::Rejected(error) => {
                if config.errors_tolerance == ErrorTolerance::None {
                    return Err(ConnectError::Broker(error));
                }
                if !dead_letter(broker, config, record, &error, shutdown).await? {
                    return Ok(None);
                }
                dead += 1;
            }
        }
    }
    Ok(Some(dead))
}

enum Sent {
    Acknowledged,
    /// The broker refuses these messages as they are.
    Rejected(weir_broker::Error),
    Interrupted,
}

/// Sends the messages `messages` builds (once per attempt, so the first attempt copies
/// nothing it does not send).
async fn send_with_retry(
    broker: &dyn Messaging,
    config: &SourceTaskConfig,
    messages: impl Fn() -> Vec<Message>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Sent> {
    let mut retry = Retry::new(config);
    loop {
        let error = match broker.send_batch(messages()).await {
            Ok(_) => return Ok(Sent::Acknowledged),
            Err(error) if error.is_message_rejected() => return Ok(Sent::Rejected(error)),
            Err(error) if error.is_transient() => error,
            Err(error) => return Err(error.into()),
        };
        if !retry.wait(config, "send", &SourceError::retryable(error.to_string()), shutdown).await? {
            return Ok(Sent::Interrupted);
        }
    }
}

/// A body too large for the broker is dead-lettered cut to this many bytes.
pub(crate) const DEAD_LETTER_BODY_BYTES_MAX: usize = 64 << 10;

async fn dead_letter(
    broker: &dyn Messaging,
    config: &SourceTaskConfig,
    record: &SourceRecord,
    error: &weir_broker::Error,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool> {
    let mut body = record.record.value.clone();
    let mut context = BTreeMap::new();
    if matches!(error, weir_broker::Error::MessageTooLarge { .. }) && body.len() > DEAD_LETTER_BODY_BYTES_MAX {
        body.truncate(DEAD_LETTER_BODY_BYTES_MAX);
        context.insert("DLQ_BODY_TRUNCATED".to_string(), record.record.value.len().to_string());
    }
    // The record's own properties may be what the broker refused: only the context goes along.
    let mut message = Message::new(config.dead_letter_topic(), body);
    context.insert("DLQ_ERROR".to_string(), error.to_string());
    context.insert("DLQ_CONNECTOR".to_string(), config.connector.clone());
    context.insert("DLQ_ORIGIN_TOPIC".to_string(), record.record.topic.clone());
    context.insert("DLQ_SOURCE_POSITION".to_string(), record.position.to_string());
    message.properties = context;
    match send_with_retry(broker, config, || vec![message.clone()], shutdown).await? {
        Sent::Acknowledged => {}
        Sent::Interrupted => return Ok(false),
        Sent::Rejected(error) => return Err(ConnectError::Broker(error)),
    }
    tracing::warn!(connector = %config.connector, error = %error, "record sent to the dead-letter topic");
    metrics::counter!("weir_connect_source_dead_lettered_total", "connector" => config.connector.clone()).increment(1);
    Ok(true)
}
