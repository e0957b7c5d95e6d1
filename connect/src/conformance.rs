//! The connector conformance kit: every connector's tests call `check_source` or `check_sink`
//! with a factory for the connector, and the kit runs it against an embedded broker while it
//! injects failures, stops and crashes, then checks the contract of DESIGN.md §4:
//!
//! - **at-least-once**: every record reaches its destination, whatever failed on the way;
//! - **progress only behind acknowledgement**: a source position is never committed past a
//!   record the broker has not acknowledged, and a sink's offsets never past a record the sink
//!   has not flushed;
//! - **metrics**: the task counted what it moved.
//!
//! Injected faults: transient broker errors (`Busy`) before a send, acknowledgements lost after
//! a send (the retry duplicates), transient sink write and flush errors, clean stops and
//! abrupt stops (the task's future dropped mid-flight, as in a crash of the worker). Each
//! `check_*` builds its own current-thread runtime and metrics recorder; call it from a plain
//! `#[test]`, not from inside a runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use tokio::sync::watch;
use weir_broker::storage::QueueRange;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, PullRequest, PullResult, SendResult, TopicConfig};

use crate::error::Result;
use crate::positions::{FilePositionStore, Position, PositionStore};
use crate::sink_task::{BatchPreparer, PreparedBatch, Sink, SinkTaskConfig, run_sink_task};
use crate::source_task::{Source, SourceError, SourceRecord, SourceTaskConfig, run_source_task};
use crate::{SinkError, SinkRecord};

/// What a source emitted in the current run: each record's position and value, in order.
type Emitted = Arc<Mutex<Vec<(Position, Vec<u8>)>>>;

/// How hard the kit pushes.
#[derive(Clone, Debug)]
pub struct Faults {
    /// Every n-th broker send fails with `Busy` before anything is stored (0: never).
    pub send_busy_every: u64,
    /// Every n-th broker send is stored but its acknowledgement is lost (0: never).
    pub ack_lost_every: u64,
    /// Every n-th source poll fails transiently before reaching the source (0: never).
    pub source_poll_error_every: u64,
    /// Every n-th sink write fails transiently (0: never).
    pub sink_write_error_every: u64,
    /// Every n-th sink flush fails transiently before reaching the sink (0: never).
    pub sink_flush_error_every: u64,
    /// Task runs (each ended by a stop or a crash) before the last one runs to the end.
    pub interruptions: u32,
    /// Time allowed for the whole check.
    pub deadline: Duration,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            send_busy_every: 3,
            ack_lost_every: 5,
            source_poll_error_every: 4,
            sink_write_error_every: 4,
            sink_flush_error_every: 3,
            interruptions: 4,
            deadline: Duration::from_secs(60),
        }
    }
}

/// Runs a source made by `make_source` (a fresh instance per run, reading the same external
/// data) until the broker holds every value of `expected`, with `faults` injected, and panics
/// with a list of violations when the contract is broken. Records go to the topics the source
/// names; the kit's broker creates them on first send.
pub fn check_source(mut make_source: impl FnMut() -> Box<dyn Source>, expected: &[Vec<u8>], faults: &Faults) {
    let dir = tempfile::tempdir().expect("temp dir");
    let recorder = CountingRecorder::default();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let violations = runtime.block_on(async {
        let broker = open_broker(dir.path());
        let faulty = Arc::new(FaultyMessaging::new(broker.clone(), faults.clone()));
        let emitted: Emitted = Arc::default();
        let positions = CheckedPositions {
            inner: FilePositionStore::open(dir.path().join("positions.json")).expect("position file"),
            emitted: emitted.clone(),
            broker: faulty.clone(),
            violations: Arc::default(),
        };
        let mut config = SourceTaskConfig::new("conformance-source");
        config.batch_records_max = 7; // small batches: many positions, many commits
        config.poll_wait = Duration::from_millis(20);
        config.position_flush_interval = Duration::ZERO;
        config.backoff_initial = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(20);
        config.retries_max = 1000;
        let wanted: BTreeSet<&[u8]> = expected.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        for run in 0..=faults.interruptions {
            emitted.lock().expect("emitted lock").clear();
            let mut source =
                RecordingSource { inner: make_source(), emitted: emitted.clone(), faults: faults.clone(), polls: 0 };
            let (stop, mut stopped) = watch::channel(false);
            let last = run == faults.interruptions;
            let goal = if last {
                expected.len()
            } else {
                expected.len() * (run as usize + 1) / (faults.interruptions as usize + 2)
            };
            let task = run_source_task(faulty.clone(), &mut source, &positions, &config, &mut stopped);
            let reached = async {
                while faulty.acknowledged_distinct(&wanted) < goal.max(1) && started.elapsed() < faults.deadline {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::pin!(task);
            tokio::select! {
                outcome = &mut task => panic!("source task ended on its own in run {run}: {outcome:?}"),
                _ = reached => {}
            }
            if run % 2 == 1 && !last {
                continue; // crash: the task is dropped mid-flight, nothing flushed
            }
            let _ = stop.send(true);
            if let Err(error) = task.await {
                panic!("source task failed in run {run}: {error}");
            }
        }
        let mut violations = positions.violations.lock().expect("violations lock").clone();
        let stored = faulty.stored_bodies().await;
        for (index, value) in expected.iter().enumerate() {
            if !stored.contains(value) {
                violations.push(format!("record {index} ({}) never reached the broker", preview(value)));
            }
        }
        for value in &stored {
            if !wanted.contains(value.as_slice()) {
                violations.push(format!("the broker holds an unexpected record: {}", preview(value)));
            }
        }
        if started.elapsed() >= faults.deadline {
            violations.push(format!("not done within {:?}", faults.deadline));
        }
        violations.extend(recorder.require_positive(&[
            "weir_connect_source_records_total",
            "weir_connect_source_bytes_total",
            "weir_connect_source_position_commits_total",
        ]));
        broker.close().expect("close broker");
        violations
    });
    assert!(violations.is_empty(), "source conformance violations:\n  {}", violations.join("\n  "));
}

/// A sink that connects on its first call, inside the kit's runtime: connectors whose
/// constructor is async (it opens a pool or a connection tied to the runtime) pass
/// `|| connect_lazily(|| async { Box::new(MySink::connect(..).await.unwrap()) as Box<dyn Sink> })`.
pub fn connect_lazily<F, Fut>(connect: F) -> Box<dyn Sink>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Box<dyn Sink>> + Send + 'static,
{
    Box::new(LazySink { connect: Some(Box::new(move || Box::pin(connect()) as SinkFuture)), sink: None })
}

type SinkFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Box<dyn Sink>> + Send>>;

struct LazySink {
    connect: Option<Box<dyn FnOnce() -> SinkFuture + Send>>,
    sink: Option<Box<dyn Sink>>,
}

impl LazySink {
    async fn sink(&mut self) -> &mut Box<dyn Sink> {
        if let Some(connect) = self.connect.take() {
            self.sink = Some(connect().await);
        }
        self.sink.as_mut().expect("connected above")
    }
}

#[async_trait]
impl Sink for LazySink {
    async fn write(&mut self, batch: &[SinkRecord]) -> std::result::Result<(), SinkError> {
        self.sink().await.write(batch).await
    }

    async fn flush(&mut self) -> std::result::Result<(), SinkError> {
        self.sink().await.flush().await
    }

    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        self.sink.as_ref()?.preparer() // none before the first call connects
    }

    async fn write_prepared(
        &mut self,
        batch: &[SinkRecord],
        prepared: PreparedBatch,
    ) -> std::result::Result<(), SinkError> {
        self.sink().await.write_prepared(batch, prepared).await
    }
}

/// Sends `values` to a topic, runs a sink made by `make_sink` (a fresh instance per run) until
/// it has consumed them all, with `faults` injected, then calls `read_back` for everything the
/// external system holds; panics with a list of violations when the contract is broken.
pub fn check_sink(
    mut make_sink: impl FnMut() -> Box<dyn Sink>,
    mut read_back: impl FnMut() -> Vec<Vec<u8>>,
    values: &[Vec<u8>],
    faults: &Faults,
) {
    const TOPIC: &str = "conformance-sink";
    let dir = tempfile::tempdir().expect("temp dir");
    let recorder = CountingRecorder::default();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut violations = runtime.block_on(async {
        let broker = open_broker(dir.path());
        broker.create_topic(TopicConfig::new(TOPIC, 4)).expect("create topic");
        for chunk in values.chunks(100) {
            let messages = chunk.iter().map(|value| Message::new(TOPIC, value.clone())).collect();
            broker.send_batch(messages).await.expect("send the values");
        }
        let flushed: Arc<Mutex<BTreeSet<(u32, u64)>>> = Arc::default();
        let checked =
            Arc::new(CheckedCommits { broker: broker.clone(), flushed: flushed.clone(), violations: Arc::default() });
        let mut config = SinkTaskConfig::new("conformance-sink", TOPIC);
        config.batch_records_max = 13;
        config.linger = Duration::from_millis(5);
        config.backoff_initial = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(20);
        config.retries_max = 1000;
        let calls = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        for run in 0..=faults.interruptions {
            let last = run == faults.interruptions;
            let total = values.len() as u64;
            let goal = if last { total } else { total * (run as u64 + 1) / (faults.interruptions as u64 + 2) };
            let mut sink = FaultySink {
                inner: make_sink(),
                faults: faults.clone(),
                calls: calls.clone(),
                written: Vec::new(),
                flushed: flushed.clone(),
            };
            let (stop, mut stopped) = watch::channel(false);
            let task = run_sink_task(checked.clone(), &mut sink, &config, &mut stopped);
            let reached = async {
                while checked.committed_total(TOPIC, &config.group()).await < goal.max(1)
                    && started.elapsed() < faults.deadline
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::pin!(task);
            tokio::select! {
                outcome = &mut task => panic!("sink task ended on its own in run {run}: {outcome:?}"),
                _ = reached => {}
            }
            if run % 2 == 1 && !last {
                continue; // crash: dropped mid-flight
            }
            let _ = stop.send(true);
            if let Err(error) = task.await {
                panic!("sink task failed in run {run}: {error}");
            }
        }
        let mut violations = checked.violations.lock().expect("violations lock").clone();
        if started.elapsed() >= faults.deadline {
            violations.push(format!("not done within {:?}", faults.deadline));
        }
        violations.extend(recorder.require_positive(&[
            "weir_connect_sink_records_total",
            "weir_connect_sink_bytes_total",
            "weir_connect_sink_records_in_total",
        ]));
        broker.close().expect("close broker");
        violations
    });
    let held: BTreeSet<Vec<u8>> = read_back().into_iter().collect();
    for (index, value) in values.iter().enumerate() {
        if !held.contains(value) {
            violations.push(format!("record {index} ({}) never reached the sink's target", preview(value)));
        }
    }
    assert!(violations.is_empty(), "sink conformance violations:\n  {}", violations.join("\n  "));
}

fn open_broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir.join("broker"));
    config.store.set_segment_size_bytes(8 << 20);
    config.auto_create_topics = true;
    Broker::open(config).expect("open the kit's broker")
}

fn preview(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut cut = text.len().min(60);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}", &text[..cut])
}

/// A broker that fails sends on a schedule and remembers what it acknowledged.
struct FaultyMessaging {
    broker: Broker,
    faults: Faults,
    sends: AtomicU64,
    /// Bodies of acknowledged messages, with how often.
    acknowledged: Mutex<BTreeMap<Vec<u8>, u64>>,
}

impl FaultyMessaging {
    fn new(broker: Broker, faults: Faults) -> Self {
        FaultyMessaging { broker, faults, sends: AtomicU64::new(0), acknowledged: Mutex::default() }
    }

    fn acknowledged_distinct(&self, wanted: &BTreeSet<&[u8]>) -> usize {
        let acknowledged = self.acknowledged.lock().expect("acknowledged lock");
        wanted.iter().filter(|value| acknowledged.contains_key(**value)).count()
    }

    fn is_acknowledged(&self, value: &[u8]) -> bool {
        self.acknowledged.lock().expect("acknowledged lock").contains_key(value)
    }

    /// Every body stored in any topic.
    async fn stored_bodies(&self) -> BTreeSet<Vec<u8>> {
        let mut bodies = BTreeSet::new();
        for topic in self.broker.topics() {
            for queue_id in 0..topic.queue_count {
                let range = self.broker.queue_range(&topic.name, queue_id);
                let mut offset = range.min_offset;
                while offset < range.max_offset {
                    let mut request = PullRequest::new("conformance-reader", &topic.name, queue_id, offset);
                    request.messages_max = weir_broker::PULL_MESSAGES_MAX;
                    let result = self.broker.pull(request).await.expect("read back the topic");
                    offset = result.next_offset.max(offset + 1);
                    bodies.extend(result.messages.into_iter().map(|m| m.body.to_vec()));
                }
            }
        }
        bodies
    }

    fn fault(&self) -> (bool, bool) {
        let n = self.sends.fetch_add(1, Ordering::Relaxed) + 1;
        let every = |k: u64| k > 0 && n.is_multiple_of(k);
        (every(self.faults.send_busy_every), every(self.faults.ack_lost_every))
    }

    fn record(&self, messages: &[Message]) {
        let mut acknowledged = self.acknowledged.lock().expect("acknowledged lock");
        for message in messages {
            *acknowledged.entry(message.body.clone()).or_default() += 1;
        }
    }
}

const INJECTED_BUSY: weir_broker::Error = weir_broker::Error::Busy { requests_max: 0 };

#[async_trait]
impl Messaging for FaultyMessaging {
    fn message_size_max_bytes(&self) -> usize {
        Messaging::message_size_max_bytes(&self.broker)
    }
    async fn ensure_topic(&self, config: TopicConfig) -> weir_broker::Result<TopicConfig> {
        Messaging::ensure_topic(&self.broker, config).await
    }
    async fn topic(&self, name: &str) -> weir_broker::Result<Option<TopicConfig>> {
        Ok(self.broker.topic(name))
    }
    async fn send(&self, message: Message) -> weir_broker::Result<SendResult> {
        Ok(self.send_batch(vec![message]).await?.remove(0))
    }
    async fn send_batch(&self, messages: Vec<Message>) -> weir_broker::Result<Vec<SendResult>> {
        let (busy, ack_lost) = self.fault();
        if busy {
            return Err(INJECTED_BUSY);
        }
        let results = self.broker.send_batch(messages.clone()).await?;
        if ack_lost {
            return Err(INJECTED_BUSY);
        }
        self.record(&messages);
        Ok(results)
    }
    async fn pull(&self, request: PullRequest) -> weir_broker::Result<PullResult> {
        self.broker.pull(request).await
    }
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> weir_broker::Result<()> {
        self.broker.commit_offset(group, topic, queue_id, offset)
    }
    async fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> weir_broker::Result<Option<u64>> {
        Ok(self.broker.committed_offset(group, topic, queue_id))
    }
    async fn queue_range(&self, topic: &str, queue_id: u32) -> weir_broker::Result<QueueRange> {
        Ok(self.broker.queue_range(topic, queue_id))
    }
    async fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> weir_broker::Result<u64> {
        self.broker.offset_for_timestamp(topic, queue_id, timestamp_ms).await
    }
}

/// Passes a source through, remembering what it emitted in this run and failing polls on
/// schedule.
struct RecordingSource {
    inner: Box<dyn Source>,
    emitted: Emitted,
    faults: Faults,
    polls: u64,
}

#[async_trait]
impl Source for RecordingSource {
    async fn open(&mut self, position: Option<Position>) -> std::result::Result<(), SourceError> {
        self.inner.open(position).await
    }
    async fn poll(
        &mut self,
        records_max: usize,
        wait: Duration,
    ) -> std::result::Result<Vec<SourceRecord>, SourceError> {
        self.polls += 1;
        let every = self.faults.source_poll_error_every;
        if every > 0 && self.polls.is_multiple_of(every) {
            return Err(SourceError::retryable("injected: poll failed"));
        }
        let records = self.inner.poll(records_max, wait).await?;
        let mut emitted = self.emitted.lock().expect("emitted lock");
        emitted.extend(records.iter().map(|r| (r.position.clone(), r.record.value.clone())));
        Ok(records)
    }
}

/// A position store that checks each commit against what the broker acknowledged.
struct CheckedPositions {
    inner: FilePositionStore,
    emitted: Emitted,
    broker: Arc<FaultyMessaging>,
    violations: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl PositionStore for CheckedPositions {
    async fn load(&self, connector: &str) -> Result<Option<Position>> {
        self.inner.load(connector).await
    }
    async fn save(&self, connector: &str, position: Option<&Position>) -> Result<()> {
        if let Some(position) = position {
            let emitted = self.emitted.lock().expect("emitted lock");
            match emitted.iter().rposition(|(p, _)| p == position) {
                None => self.violation(format!("committed position {position} was never emitted in this run")),
                Some(last) => {
                    if let Some((_, value)) = emitted[..=last].iter().find(|(_, v)| !self.broker.is_acknowledged(v)) {
                        self.violation(format!(
                            "committed position {position} before the broker acknowledged {}",
                            preview(value)
                        ));
                    }
                }
            }
        }
        self.inner.save(connector, position).await
    }
}

impl CheckedPositions {
    fn violation(&self, text: String) {
        self.violations.lock().expect("violations lock").push(text);
    }
}

/// Injects sink failures and tracks which records the inner sink flushed.
struct FaultySink {
    inner: Box<dyn Sink>,
    faults: Faults,
    calls: Arc<AtomicU64>,
    /// Written to the inner sink since its last successful flush.
    written: Vec<(u32, u64)>,
    flushed: Arc<Mutex<BTreeSet<(u32, u64)>>>,
}

impl FaultySink {
    fn inject(&self, every: u64, what: &str) -> std::result::Result<(), SinkError> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if every > 0 && n.is_multiple_of(every) {
            return Err(SinkError::retryable(format!("injected: {what} failed")));
        }
        Ok(())
    }
}

#[async_trait]
impl Sink for FaultySink {
    async fn write(&mut self, batch: &[SinkRecord]) -> std::result::Result<(), SinkError> {
        self.inject(self.faults.sink_write_error_every, "write")?;
        self.inner.write(batch).await?;
        self.written.extend(batch.iter().map(|r| (r.queue_id, r.queue_offset)));
        Ok(())
    }
    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        self.inner.preparer()
    }
    async fn write_prepared(
        &mut self,
        batch: &[SinkRecord],
        prepared: PreparedBatch,
    ) -> std::result::Result<(), SinkError> {
        self.inject(self.faults.sink_write_error_every, "write")?;
        self.inner.write_prepared(batch, prepared).await?;
        self.written.extend(batch.iter().map(|r| (r.queue_id, r.queue_offset)));
        Ok(())
    }
    async fn flush(&mut self) -> std::result::Result<(), SinkError> {
        self.inject(self.faults.sink_flush_error_every, "flush")?;
        self.inner.flush().await?;
        self.flushed.lock().expect("flushed lock").extend(self.written.drain(..));
        Ok(())
    }
}

/// The broker as a sink task sees it, checking each offset commit against what was flushed.
struct CheckedCommits {
    broker: Broker,
    flushed: Arc<Mutex<BTreeSet<(u32, u64)>>>,
    violations: Arc<Mutex<Vec<String>>>,
}

impl CheckedCommits {
    async fn committed_total(&self, topic: &str, group: &str) -> u64 {
        let queues = self.broker.topic(topic).map_or(0, |t| t.queue_count);
        (0..queues).map(|q| self.broker.committed_offset(group, topic, q).unwrap_or(0)).sum()
    }
}

#[async_trait]
impl Messaging for CheckedCommits {
    fn message_size_max_bytes(&self) -> usize {
        Messaging::message_size_max_bytes(&self.broker)
    }
    async fn ensure_topic(&self, config: TopicConfig) -> weir_broker::Result<TopicConfig> {
        Messaging::ensure_topic(&self.broker, config).await
    }
    async fn topic(&self, name: &str) -> weir_broker::Result<Option<TopicConfig>> {
        Ok(self.broker.topic(name))
    }
    async fn send(&self, message: Message) -> weir_broker::Result<SendResult> {
        self.broker.send(message).await
    }
    async fn send_batch(&self, messages: Vec<Message>) -> weir_broker::Result<Vec<SendResult>> {
        self.broker.send_batch(messages).await
    }
    async fn pull(&self, request: PullRequest) -> weir_broker::Result<PullResult> {
        self.broker.pull(request).await
    }
    async fn commit_offset(&self, group: &str, topic: &str, queue_id: u32, offset: u64) -> weir_broker::Result<()> {
        let from = self.broker.committed_offset(group, topic, queue_id).unwrap_or(0);
        let flushed = self.flushed.lock().expect("flushed lock");
        if let Some(missing) = (from..offset).find(|o| !flushed.contains(&(queue_id, *o))) {
            self.violations
                .lock()
                .expect("violations lock")
                .push(format!("offset {offset} of queue {queue_id} committed before offset {missing} was flushed"));
        }
        drop(flushed);
        self.broker.commit_offset(group, topic, queue_id, offset)
    }
    async fn committed_offset(&self, group: &str, topic: &str, queue_id: u32) -> weir_broker::Result<Option<u64>> {
        Ok(self.broker.committed_offset(group, topic, queue_id))
    }
    async fn queue_range(&self, topic: &str, queue_id: u32) -> weir_broker::Result<QueueRange> {
        Ok(self.broker.queue_range(topic, queue_id))
    }
    async fn offset_for_timestamp(&self, topic: &str, queue_id: u32, timestamp_ms: i64) -> weir_broker::Result<u64> {
        self.broker.offset_for_timestamp(topic, queue_id, timestamp_ms).await
    }
}

/// A metrics recorder that keeps counters (by name and labels) and ignores the rest; install
/// it with `metrics::set_default_local_recorder` on a current-thread runtime to read what a
/// connector counted.
#[derive(Default)]
pub struct CountingRecorder {
    counters: Mutex<Vec<(Key, Arc<AtomicU64>)>>,
}

impl CountingRecorder {
    /// The sum of the counters named `name` whose labels include every one of `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let counters = self.counters.lock().expect("counters lock");
        counters
            .iter()
            .filter(|(key, _)| key.name() == name)
            .filter(|(key, _)| labels.iter().all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v)))
            .map(|(_, value)| value.load(Ordering::Relaxed))
            .sum()
    }

    fn require_positive(&self, names: &[&str]) -> Vec<String> {
        names
            .iter()
            .filter(|name| self.counter(name, &[]) == 0)
            .map(|name| format!("metric {name} was not emitted"))
            .collect()
    }
}

impl Recorder for CountingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().expect("counters lock");
        if let Some((_, value)) = counters.iter().find(|(known, _)| known == key) {
            return Counter::from_arc(value.clone());
        }
        let value = Arc::new(AtomicU64::new(0));
        counters.push((key.clone(), value.clone()));
        Counter::from_arc(value)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}
