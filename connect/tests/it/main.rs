//! Connect tests against the embedded broker. Here: the sink task — at-least-once under
//! injected failures, offsets only after flush, dead letters, restarts, the conformance kit.

mod source_task;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, PullRequest, TopicConfig};
use weir_connect::{
    BatchPreparer, ConnectError, ErrorTolerance, PreparedBatch, Sink, SinkError, SinkRecord, SinkTaskConfig,
    run_sink_task,
};

/// What the in-memory sink received and made durable.
#[derive(Default)]
struct Target {
    /// Written but not yet flushed.
    pending: Vec<String>,
    /// Flushed, in order (duplicates possible after retries: at-least-once).
    durable: Vec<String>,
    /// Retryable failures still to inject into `write`.
    write_failures_left: u32,
    /// Retryable failures still to inject into `flush`.
    flush_failures_left: u32,
    /// Bodies that are poison (permanent errors).
    poison: BTreeSet<String>,
    /// Flush fails permanently.
    flush_broken: bool,
    /// Writes that got their batch decoded ahead by the preparer.
    prepared_writes: u64,
}

/// A sink whose records are decoded ahead (bodies as text) by its preparer, as a database
/// sink's are, so every test here runs the task's prepare-ahead path too.
#[derive(Clone, Default)]
struct MemorySink(Arc<Mutex<Target>>);

struct BodyDecoder;

impl BatchPreparer for BodyDecoder {
    fn prepare(&self, batch: &[SinkRecord]) -> PreparedBatch {
        Box::new(bodies(batch))
    }
}

fn bodies(batch: &[SinkRecord]) -> Vec<String> {
    batch.iter().map(|record| String::from_utf8(record.record.value.clone()).unwrap()).collect()
}

impl MemorySink {
    fn write_bodies(&mut self, bodies: Vec<String>) -> Result<(), SinkError> {
        let mut target = self.0.lock().unwrap();
        if target.write_failures_left > 0 {
            target.write_failures_left -= 1;
            return Err(SinkError::retryable("injected: connection reset"));
        }
        let mut poison = Vec::new();
        for (index, body) in bodies.into_iter().enumerate() {
            if target.poison.contains(&body) {
                poison.push(index);
            } else {
                target.pending.push(body);
            }
        }
        if poison.is_empty() { Ok(()) } else { Err(SinkError::poison("injected: type error in column `n`", poison)) }
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        self.write_bodies(bodies(batch))
    }

    fn preparer(&self) -> Option<Arc<dyn BatchPreparer>> {
        Some(Arc::new(BodyDecoder))
    }

    async fn write_prepared(&mut self, batch: &[SinkRecord], prepared: PreparedBatch) -> Result<(), SinkError> {
        let prepared = *prepared.downcast::<Vec<String>>().expect("this sink's own preparer");
        assert_eq!(prepared, bodies(batch), "the prepared form is of the batch being written");
        self.0.lock().unwrap().prepared_writes += 1;
        self.write_bodies(prepared)
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let mut target = self.0.lock().unwrap();
        if target.flush_broken {
            return Err(SinkError {
                failed_records: Vec::new(),
                ..SinkError::poison("injected: table dropped", vec![])
            });
        }
        if target.flush_failures_left > 0 {
            target.flush_failures_left -= 1;
            // Like a target that lost its buffer: what was written is gone, not durable.
            target.pending.clear();
            return Err(SinkError::retryable("injected: flush timeout"));
        }
        let pending = std::mem::take(&mut target.pending);
        target.durable.extend(pending);
        Ok(())
    }
}

fn open(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir);
    config.store.segment_size_bytes = 1 << 20;
    config.store.message_size_max_bytes = 1 << 19;
    Broker::open(config).unwrap()
}

fn config(connector: &str, tolerance: ErrorTolerance) -> SinkTaskConfig {
    let mut config = SinkTaskConfig::new(connector, "events");
    config.batch_records_max = 37;
    config.linger = Duration::from_millis(20);
    config.backoff_initial = Duration::from_millis(1);
    config.backoff_max = Duration::from_millis(5);
    config.errors_tolerance = tolerance;
    config
}

/// A broker in a temp dir with topic `events` of `queues` queues holding `e0`..`e{count-1}`.
async fn topic_with_events(queues: u32, count: usize) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("events", queues)).unwrap();
    if count > 0 {
        send(&broker, (0..count).map(|i| format!("e{i}"))).await;
    }
    (dir, broker)
}

async fn send(broker: &Broker, bodies: impl IntoIterator<Item = String>) {
    let messages: Vec<Message> = bodies.into_iter().map(|body| Message::new("events", body)).collect();
    broker.send_batch(messages).await.unwrap();
}

/// Runs a sink task until `done` says the target is complete (deadline 30 s), then stops it.
async fn run_until(
    broker: &Broker,
    sink: MemorySink,
    config: SinkTaskConfig,
    done: impl Fn(&Target) -> bool,
) -> Result<weir_connect::SinkTaskStats, ConnectError> {
    let (stop, mut stopped) = watch::channel(false);
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let state = sink.0.clone();
    let task = tokio::spawn(async move {
        let mut sink = sink;
        run_sink_task(messaging, &mut sink, &config, &mut stopped).await
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if task.is_finished() || done(&state.lock().unwrap()) {
            break;
        }
        assert!(Instant::now() < deadline, "sink task did not finish in time");
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval for the condition
    }
    let _ = stop.send(true);
    task.await.unwrap()
}

fn committed(broker: &Broker, group: &str) -> BTreeMap<u32, u64> {
    broker.group_offsets(group, "events")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_everything_through_retries_and_resumes_after_a_restart() {
    let (_dir, broker) = topic_with_events(4, 300).await;
    let sink = MemorySink::default();
    {
        let mut target = sink.0.lock().unwrap();
        target.write_failures_left = 3;
        target.flush_failures_left = 2;
    }
    let all: BTreeSet<String> = (0..300).map(|i| format!("e{i}")).collect();
    let stats = run_until(&broker, sink.clone(), config("mem", ErrorTolerance::None), |t| {
        t.durable.iter().collect::<BTreeSet<_>>().len() == 300
    })
    .await
    .unwrap();
    assert!(stats.records_written >= 300);
    let durable: BTreeSet<String> = sink.0.lock().unwrap().durable.iter().cloned().collect();
    assert_eq!(durable, all, "every message reached the target");
    assert!(sink.0.lock().unwrap().prepared_writes > 0, "batches were decoded ahead of their write");
    // Offsets: committed only for what is durable, and all of it once the task stopped.
    let offsets = committed(&broker, "connect-mem");
    let ends: BTreeMap<u32, u64> = (0..4).map(|q| (q, broker.queue_range("events", q).max_offset)).collect();
    assert_eq!(offsets, ends);
    // A restarted task continues after the committed offsets.
    send(&broker, (300..350).map(|i| format!("e{i}"))).await;
    let second = MemorySink::default();
    run_until(&broker, second.clone(), config("mem", ErrorTolerance::None), |t| t.durable.len() >= 50).await.unwrap();
    let resumed: Vec<String> = second.0.lock().unwrap().durable.clone();
    let expected: BTreeSet<String> = (300..350).map(|i| format!("e{i}")).collect();
    assert_eq!(resumed.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(resumed.len(), 50, "nothing before the committed offsets was delivered again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic_with_the_error() {
    let (_dir, broker) = topic_with_events(2, 40).await;
    let sink = MemorySink::default();
    sink.0.lock().unwrap().poison = ["e7".to_string(), "e23".to_string()].into();
    let stats =
        run_until(&broker, sink.clone(), config("dlq", ErrorTolerance::All), |t| t.durable.len() == 38).await.unwrap();
    assert_eq!(stats.records_dead_lettered, 2);
    let mut dead = Vec::new();
    let mut request = PullRequest::new("inspect", "%DLQ%dlq", 0, 0);
    request.messages_max = 10;
    for message in broker.pull(request).await.unwrap().messages {
        assert_eq!(message.properties["DLQ_ERROR"], "injected: type error in column `n`");
        assert_eq!(message.properties["DLQ_ORIGIN_TOPIC"], "events");
        assert_eq!(message.properties["DLQ_CONNECTOR"], "dlq");
        dead.push(String::from_utf8(message.body.to_vec()).unwrap());
    }
    dead.sort();
    assert_eq!(dead, vec!["e23".to_string(), "e7".to_string()]);
    assert_eq!(committed(&broker, "connect-dlq").values().sum::<u64>(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_too_large_to_dead_letter_whole_is_dead_lettered_cut_down() {
    let (_dir, broker) = topic_with_events(1, 0).await;
    // The largest body the broker takes (within 16 bytes): its dead letter, with the error
    // context added, is over the limit.
    let mut size = 1 << 19;
    let big = loop {
        let body = "x".repeat(size);
        if broker.send(Message::new("events", body.clone())).await.is_ok() {
            break body;
        }
        size -= 16;
    };
    send(&broker, ["after".to_string()]).await;
    let sink = MemorySink::default();
    sink.0.lock().unwrap().poison = [big.clone()].into();
    let stats =
        run_until(&broker, sink.clone(), config("big", ErrorTolerance::All), |t| t.durable.len() == 1).await.unwrap();
    assert_eq!(stats.records_dead_lettered, 1);
    let messages = broker.pull(PullRequest::new("inspect", "%DLQ%big", 0, 0)).await.unwrap().messages;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].properties["DLQ_BODY_TRUNCATED"], big.len().to_string());
    assert_eq!(messages[0].properties["DLQ_ERROR"], "injected: type error in column `n`");
    assert_eq!(messages[0].body.len(), 64 << 10);
    assert_eq!(committed(&broker, "connect-big").values().sum::<u64>(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tolerance_a_poison_record_stops_the_task_before_its_offsets() {
    let (_dir, broker) = topic_with_events(1, 10).await;
    let sink = MemorySink::default();
    sink.0.lock().unwrap().poison = ["e3".to_string()].into();
    let error = run_until(&broker, sink, config("strict", ErrorTolerance::None), |_| false).await.unwrap_err();
    assert!(matches!(error, ConnectError::Sink { .. }), "{error}");
    assert!(error.to_string().contains("type error"), "{error}");
    assert_eq!(committed(&broker, "connect-strict").get(&0), None, "the failed batch is not committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_that_cannot_succeed_never_commits() {
    let (_dir, broker) = topic_with_events(1, 5).await;
    let sink = MemorySink::default();
    sink.0.lock().unwrap().flush_broken = true;
    let error = run_until(&broker, sink.clone(), config("broken", ErrorTolerance::None), |_| false).await.unwrap_err();
    assert!(error.to_string().contains("table dropped"), "{error}");
    assert!(sink.0.lock().unwrap().durable.is_empty());
    assert_eq!(committed(&broker, "connect-broken").get(&0), None);
}

#[tokio::test]
async fn bad_config_is_refused_by_field() {
    let (_dir, broker) = topic_with_events(1, 0).await;
    let mut config = config("bad name", ErrorTolerance::None);
    let error = run_until(&broker, MemorySink::default(), config.clone(), |_| false).await.unwrap_err();
    assert!(error.to_string().contains("`connector`"), "{error}");
    config.connector = "ok".into();
    config.batch_records_max = 0;
    let error = run_until(&broker, MemorySink::default(), config, |_| false).await.unwrap_err();
    assert!(error.to_string().contains("`batch_records_max`"), "{error}");
    // Every limit, through `validate` (what `weir validate` calls on pipeline files).
    type Change = fn(&mut SinkTaskConfig);
    let cases: [(&str, Change); 5] = [
        ("batch_bytes_max", |c| c.batch_bytes_max = usize::MAX),
        ("linger", |c| c.linger = Duration::from_secs(3600)),
        ("retries_max", |c| c.retries_max = u32::MAX),
        ("backoff_initial", |c| c.backoff_initial = Duration::ZERO),
        ("backoff_max", |c| c.backoff_max = Duration::from_secs(3600)),
    ];
    for (field, change) in cases {
        let mut config = SinkTaskConfig::new("ok", "events");
        change(&mut config);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains(&format!("`{field}`")), "{field}: {error}");
    }
    assert!(SinkTaskConfig::new("ok", "events").validate().is_ok());
}

#[test]
fn an_in_memory_sink_passes_the_conformance_kit() {
    let sink = MemorySink::default();
    let values: Vec<Vec<u8>> = (0..400).map(|i| format!("value-{i}").into_bytes()).collect();
    let target = sink.0.clone();
    weir_connect::conformance::check_sink(
        || Box::new(sink.clone()),
        || target.lock().unwrap().durable.iter().map(|v| v.clone().into_bytes()).collect(),
        &values,
        &weir_connect::conformance::Faults::default(),
    );
}

/// Says a flush succeeded while it dropped what was written.
struct LyingSink;

#[async_trait]
impl Sink for LyingSink {
    async fn write(&mut self, _batch: &[SinkRecord]) -> Result<(), SinkError> {
        Ok(())
    }
    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn the_kit_catches_a_sink_that_loses_records() {
    let values: Vec<Vec<u8>> = (0..50).map(|i| format!("value-{i}").into_bytes()).collect();
    let outcome = std::panic::catch_unwind(|| {
        weir_connect::conformance::check_sink(
            || Box::new(LyingSink),
            Vec::new,
            &values,
            &weir_connect::conformance::Faults::default(),
        )
    });
    let message = *outcome.expect_err("a lossy sink must fail").downcast::<String>().unwrap();
    assert!(message.contains("never reached the sink's target"), "{message}");
}
