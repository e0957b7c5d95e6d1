//! Source task tests: the conformance kit over an in-memory source (and over deliberately
//! broken ones, to show the kit can fail), dead letters, and the position file.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Messaging, PullRequest};
use weir_connect::conformance::{Faults, check_source};
use weir_connect::{
    ConnectError, ErrorTolerance, FilePositionStore, Position, PositionStore, Record, Source, SourceError,
    SourceRecord, SourceTaskConfig, run_source_task,
};

/// Lines of a log that only grows; position = index of the next line.
struct MemorySource {
    lines: Arc<Vec<Vec<u8>>>,
    next: usize,
    /// Skips this many lines after each batch: a broken source that loses records.
    skip: usize,
}

impl MemorySource {
    fn new(lines: Arc<Vec<Vec<u8>>>) -> Self {
        MemorySource { lines, next: 0, skip: 0 }
    }
}

#[async_trait]
impl Source for MemorySource {
    async fn open(&mut self, position: Option<Position>) -> Result<(), SourceError> {
        self.next = match position {
            None => 0,
            Some(position) => {
                position["next"].as_u64().ok_or_else(|| SourceError::permanent(format!("bad position {position}")))?
                    as usize
            }
        };
        Ok(())
    }

    async fn poll(&mut self, records_max: usize, wait: Duration) -> Result<Vec<SourceRecord>, SourceError> {
        if self.next >= self.lines.len() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        let end = (self.next + records_max).min(self.lines.len());
        let records = (self.next..end)
            .map(|index| SourceRecord {
                record: Record { topic: "events".into(), value: self.lines[index].clone(), ..Record::default() },
                position: json!({ "next": index + 1 + self.skip }),
            })
            .collect();
        self.next = end + self.skip;
        Ok(records)
    }
}

fn lines(count: usize) -> Arc<Vec<Vec<u8>>> {
    Arc::new((0..count).map(|i| format!("{{\"line\":{i}}}").into_bytes()).collect())
}

#[test]
fn an_in_memory_source_passes_the_conformance_kit() {
    let lines = lines(300);
    check_source(|| Box::new(MemorySource::new(lines.clone())), &lines, &Faults::default());
}

#[test]
fn the_kit_catches_a_source_that_loses_records() {
    let lines = lines(100);
    let faults = Faults { deadline: Duration::from_secs(3), ..Faults::default() };
    let outcome = std::panic::catch_unwind(|| {
        check_source(|| Box::new(MemorySource { lines: lines.clone(), next: 0, skip: 1 }), &lines, &faults)
    });
    let message = *outcome.expect_err("a lossy source must fail").downcast::<String>().unwrap();
    assert!(message.contains("never reached the broker"), "{message}");
}

fn open_broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir.join("broker"));
    config.store.set_segment_size_bytes(4 << 20);
    config.store.message_size_max_bytes = 128 << 10;
    config.auto_create_topics = true;
    Broker::open(config).unwrap()
}

async fn topic_bodies(broker: &Broker, topic: &str) -> Vec<Vec<u8>> {
    let mut bodies = Vec::new();
    for queue_id in 0..broker.topic(topic).map_or(0, |t| t.queue_count) {
        let mut request = PullRequest::new("reader", topic, queue_id, 0);
        request.messages_max = 1000;
        bodies.extend(broker.pull(request).await.unwrap().messages.into_iter().map(|m| m.body.to_vec()));
    }
    bodies
}

/// Runs the task until the source is drained (all lines sent), then stops it.
async fn run_to_end(
    broker: &Broker,
    source: &mut MemorySource,
    positions: &FilePositionStore,
    config: &SourceTaskConfig,
) -> Result<weir_connect::SourceTaskStats, ConnectError> {
    let (stop, mut stopped) = watch::channel(false);
    let total = source.lines.len();
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let task = run_source_task(messaging, source, positions, config, &mut stopped);
    tokio::pin!(task);
    tokio::select! {
        outcome = &mut task => return outcome,
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    let _ = stop.send(true);
    let outcome = task.await;
    assert!(total > 0);
    outcome
}

#[tokio::test]
async fn a_record_the_broker_refuses_goes_to_the_dead_letter_topic_with_tolerance_all() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    let mut lines: Vec<Vec<u8>> = (0..5).map(|i| format!("ok-{i}").into_bytes()).collect();
    lines[2] = vec![b'x'; 200 << 10]; // over the 128 KiB message maximum
    let lines = Arc::new(lines);
    let positions = FilePositionStore::open(dir.path().join("positions.json")).unwrap();
    let mut config = SourceTaskConfig::new("big");
    config.errors_tolerance = ErrorTolerance::All;
    let stats = run_to_end(&broker, &mut MemorySource::new(lines.clone()), &positions, &config).await.unwrap();
    assert_eq!((stats.records_sent, stats.records_dead_lettered), (4, 1));
    assert_eq!(stats.committed, Some(json!({ "next": 5 })));
    let mut sent = topic_bodies(&broker, "events").await;
    sent.sort();
    assert_eq!(sent, ["ok-0", "ok-1", "ok-3", "ok-4"].map(|s| s.as_bytes().to_vec()));
    let mut request = PullRequest::new("reader", "%DLQ%big", 0, 0);
    request.messages_max = 10;
    let dead = broker.pull(request).await.unwrap().messages;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body.len(), 64 << 10, "cut to the dead-letter body maximum");
    assert!(dead[0].properties["DLQ_ERROR"].contains("exceeds the maximum"), "{:?}", dead[0].properties);
    assert_eq!(dead[0].properties["DLQ_SOURCE_POSITION"], r#"{"next":3}"#);
    assert_eq!(dead[0].properties["DLQ_BODY_TRUNCATED"], (200 << 10).to_string());
}

#[tokio::test]
async fn without_tolerance_a_refused_record_stops_the_task_before_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    let mut lines: Vec<Vec<u8>> = (0..5).map(|i| format!("ok-{i}").into_bytes()).collect();
    lines[2] = vec![b'x'; 200 << 10];
    let positions = FilePositionStore::open(dir.path().join("positions.json")).unwrap();
    let mut config = SourceTaskConfig::new("strict");
    config.batch_records_max = 2; // batches [0,1] [2,3] [4]
    let error = run_to_end(&broker, &mut MemorySource::new(Arc::new(lines)), &positions, &config).await.unwrap_err();
    assert!(matches!(error, ConnectError::Broker(weir_broker::Error::MessageTooLarge { .. })), "{error}");
    assert_eq!(positions.load("strict").await.unwrap(), Some(json!({ "next": 2 })), "the batch before the bad one");
}

#[tokio::test]
async fn a_restarted_source_resumes_from_its_committed_position() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(dir.path());
    let lines = lines(50);
    let path = dir.path().join("state/positions.json");
    let config = SourceTaskConfig::new("resume");
    let positions = FilePositionStore::open(&path).unwrap();
    run_to_end(&broker, &mut MemorySource::new(lines.clone()), &positions, &config).await.unwrap();
    // A new store on the same file: as after a process restart.
    let positions = FilePositionStore::open(&path).unwrap();
    assert_eq!(positions.load("resume").await.unwrap(), Some(json!({ "next": 50 })));
    let stats = run_to_end(&broker, &mut MemorySource::new(lines.clone()), &positions, &config).await.unwrap();
    assert_eq!(stats.records_sent, 0, "nothing is sent twice after a clean stop");
    assert_eq!(topic_bodies(&broker, "events").await.len(), 50);
}

#[test]
fn a_damaged_position_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("positions.json");
    std::fs::write(&path, b"{\"a\": 1,").unwrap();
    let error = FilePositionStore::open(&path).err().expect("refused").to_string();
    assert!(error.contains("positions.json"), "{error}");
}

#[tokio::test]
async fn bad_source_config_is_refused_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let broker: Arc<dyn Messaging> = Arc::new(open_broker(dir.path()));
    let positions = FilePositionStore::open(dir.path().join("p.json")).unwrap();
    type Change = fn(&mut SourceTaskConfig);
    let cases: [(&str, Change); 6] = [
        ("batch_records_max", |c| c.batch_records_max = 0),
        ("in_flight_batches_max", |c| c.in_flight_batches_max = 1000),
        ("connector", |c| c.connector = "no spaces".into()),
        ("backoff_initial", |c| c.backoff_initial = Duration::ZERO),
        ("backoff_max", |c| c.backoff_max = Duration::from_millis(1)),
        ("retries_max", |c| c.retries_max = 1_000_000),
    ];
    for (field, change) in cases {
        let mut config = SourceTaskConfig::new("bad");
        change(&mut config);
        let mut source = MemorySource::new(lines(1));
        let (_stop, mut stopped) = watch::channel(false);
        let error = run_source_task(broker.clone(), &mut source, &positions, &config, &mut stopped).await.unwrap_err();
        assert!(error.to_string().contains(&format!("`{field}`")), "{field}: {error}");
    }
}
