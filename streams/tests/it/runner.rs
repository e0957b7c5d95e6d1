//! The job runner against an embedded broker: results reach the output topic, and across a
//! crash (the task dropped between checkpoints) and a clean restart each window result is
//! in the output topic exactly once, with window state carried by the checkpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, PullRequest, TopicConfig};
use weir_streams::{JobRunConfig, run_job};

const SQL: &str = "
CREATE TABLE clicks (user_id TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'clicks');
INSERT INTO clicks_per_minute
SELECT user_id, window_start, count(*) AS clicks
FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE)
GROUP BY user_id, window_start, window_end;
";

fn open_broker(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir);
    config.store.set_segment_size_bytes(1 << 20);
    Broker::open(config).unwrap()
}

async fn send(broker: &Broker, seconds: &[i64]) {
    for second in seconds {
        let body = format!(r#"{{"user_id":"u1","ts":{}}}"#, second * 1000);
        broker.send(Message::new("clicks", body)).await.unwrap();
    }
}

/// Every message of the output topic: (window_start, clicks).
async fn output(broker: &Broker) -> Vec<(String, i64)> {
    let mut rows = Vec::new();
    for queue_id in 0..4 {
        let mut request = PullRequest::new("test-reader", "clicks_per_minute", queue_id, 0);
        request.messages_max = 1000;
        for message in broker.pull(request).await.unwrap().messages {
            let row: serde_json::Value = serde_json::from_slice(&message.body).unwrap();
            rows.push((row["window_start"].as_str().unwrap().to_string(), row["clicks"].as_i64().unwrap()));
        }
    }
    rows.sort();
    rows
}

async fn wait_for_rows(broker: &Broker, count: usize) -> Vec<(String, i64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = output(broker).await;
        if rows.len() >= count {
            return rows;
        }
        assert!(Instant::now() < deadline, "{} of {count} results: {rows:?}", rows.len());
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval of the output topic
    }
}

/// A broker with the input and output topics, and the job's settings (checkpoints in `dir`).
fn setup(dir: &std::path::Path) -> (Broker, JobRunConfig) {
    let broker = open_broker(&dir.join("data"));
    broker.create_topic(TopicConfig::new("clicks", 1)).unwrap();
    broker.create_topic(TopicConfig::new("clicks_per_minute", 4)).unwrap();
    let mut config = JobRunConfig::new("per_minute", SQL, dir.join("checkpoints"));
    config.idle_wait = Duration::from_millis(10);
    (broker, config)
}

/// Expected output rows: (minute as `HH:MM:SS`, clicks).
fn minutes(rows: &[(&str, i64)]) -> Vec<(String, i64)> {
    rows.iter().map(|(time, clicks)| (format!("1970-01-01T{time}"), *clicks)).collect()
}

fn start(broker: &Broker, config: &JobRunConfig) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let config = config.clone();
    let task = tokio::spawn(async move {
        run_job(messaging, &config, &mut stopped).await.unwrap();
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_window_result_is_written_once_across_a_crash_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut config) = setup(dir.path());
    // Run 1 checkpoints only when it starts, then crashes after sending two results.
    config.checkpoint_interval = Duration::from_secs(3600);
    send(&broker, &[1, 2, 61, 125]).await;
    let (_stop, task) = start(&broker, &config);
    assert_eq!(wait_for_rows(&broker, 2).await.len(), 2);
    task.abort();
    let _ = task.await;
    // Run 2 replays from the first checkpoint: the two results are recognised, not resent.
    config.checkpoint_interval = Duration::from_millis(20);
    let (stop, task) = start(&broker, &config);
    send(&broker, &[130, 190]).await; // closes the third minute (125 s and 130 s)
    let rows = wait_for_rows(&broker, 3).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    // Run 3 restores the open minute (190 s) from run 2's last checkpoint.
    let (stop, task) = start(&broker, &config);
    send(&broker, &[250]).await;
    wait_for_rows(&broker, 4).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let all = output(&broker).await; // after the stop: a late duplicate would show
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(all, minutes(&[("00:00:00", 2), ("00:01:00", 1), ("00:02:00", 2), ("00:03:00", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_crash_during_the_replay_still_writes_each_result_once() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut config) = setup(dir.path());
    config.checkpoint_interval = Duration::from_secs(3600); // only the checkpoint at start
    let checkpoint = weir_streams::checkpoint::path(&config.checkpoint_dir, &config.name);
    send(&broker, &[1, 2, 61, 125]).await;
    // Run 1 sends two results after its only checkpoint, then crashes.
    let (_stop, task) = start(&broker, &config);
    assert_eq!(wait_for_rows(&broker, 2).await.len(), 2);
    task.abort();
    let _ = task.await;
    // Run 2 writes its start checkpoint (past those results in the output topic), then
    // crashes too.
    let written = std::fs::metadata(&checkpoint).unwrap().modified().unwrap();
    let (_stop, task) = start(&broker, &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&checkpoint).unwrap().modified().unwrap() == written {
        assert!(Instant::now() < deadline, "run 2 wrote no checkpoint");
        tokio::time::sleep(Duration::from_millis(5)).await; // poll interval of the checkpoint file
    }
    task.abort();
    let _ = task.await;
    // Run 3 replays from run 2's checkpoint: the first two results are still recognised.
    config.checkpoint_interval = Duration::from_millis(20);
    let (stop, task) = start(&broker, &config);
    send(&broker, &[190]).await;
    wait_for_rows(&broker, 3).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    let rows = output(&broker).await;
    assert_eq!(rows, minutes(&[("00:00:00", 2), ("00:01:00", 1), ("00:02:00", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_computes_another_value_for_a_window_does_not_send_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let (broker, mut config) = setup(dir.path());
    config.checkpoint_interval = Duration::from_secs(3600); // only the checkpoint at start
    // Run 1: minute 0 closes with one click (5 s), then a click at 30 s arrives late.
    let (_stop, task) = start(&broker, &config);
    send(&broker, &[5, 65]).await;
    assert_eq!(wait_for_rows(&broker, 1).await, minutes(&[("00:00:00", 1)]));
    send(&broker, &[30]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let request = PullRequest::new("test-reader", "%LATE%per_minute", 0, 0);
        if broker.topic("%LATE%per_minute").is_some() && !broker.pull(request).await.unwrap().messages.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the click at 30 s was not reported late");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval of the late topic
    }
    task.abort();
    let _ = task.await;
    // Run 2 replays all three clicks in one batch: nothing is late before its watermark
    // moves, so minute 0 counts two. Its result is the same window and key as the one
    // already sent, and is not sent again.
    config.checkpoint_interval = Duration::from_millis(20);
    let (stop, task) = start(&broker, &config);
    send(&broker, &[130]).await; // closes minute 1
    wait_for_rows(&broker, 2).await;
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(output(&broker).await, minutes(&[("00:00:00", 1), ("00:01:00", 1)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_tables_are_loaded_before_stream_rows_are_joined() {
    const LOOKUP_SQL: &str = "
CREATE TABLE customers (id TEXT, name TEXT) WITH (topic = 'customers', lookup_key = 'id');
CREATE TABLE orders (id BIGINT, customer_id TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts) WITH (topic = 'orders');
INSERT INTO enriched
SELECT o.id AS key, c.name FROM orders o JOIN customers c ON o.customer_id = c.id;
";
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(&dir.path().join("data"));
    for topic in ["customers", "orders", "enriched"] {
        broker.create_topic(TopicConfig::new(topic, 1)).unwrap();
    }
    // Far more customers than one pull reads: an order read in the first round must still
    // find its customer.
    for i in 0..50 {
        let body = format!(r#"{{"id":"c{i}","name":"n{i}"}}"#);
        broker.send(Message::new("customers", body)).await.unwrap();
    }
    for i in 0..50 {
        let body = format!(r#"{{"id":{i},"customer_id":"c{i}","ts":{}}}"#, i * 1000);
        broker.send(Message::new("orders", body)).await.unwrap();
    }
    let mut config = JobRunConfig::new("lookup", LOOKUP_SQL, dir.path().join("checkpoints"));
    config.idle_wait = Duration::from_millis(10);
    config.batch_messages_max = 8;
    let (stop, task) = start(&broker, &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.queue_range("enriched", 0).max_offset < 50 {
        assert!(Instant::now() < deadline, "{} of 50 orders joined", broker.queue_range("enriched", 0).max_offset);
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval of the output topic
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(broker.queue_range("enriched", 0).max_offset, 50, "every order joined once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackhole_job_counts_its_results_and_writes_no_topic() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open_broker(&dir.path().join("data"));
    broker.create_topic(TopicConfig::new("clicks", 2)).unwrap();
    let sql = format!("{}\nCREATE TABLE clicks_per_minute WITH (connector = 'blackhole');", SQL.trim());
    let mut config = JobRunConfig::new("blackhole", sql, dir.path().join("checkpoints"));
    config.idle_wait = Duration::from_millis(10);
    send(&broker, &[1, 2, 61, 125]).await; // closes two minutes
    let (stop, task) = start(&broker, &config);
    let deadline = Instant::now() + Duration::from_secs(30);
    let progress = config.progress.clone();
    while progress.results_discarded.load(std::sync::atomic::Ordering::Relaxed) < 2 {
        assert!(Instant::now() < deadline, "{progress:?}");
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval of the job's counts
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(progress.messages_read.load(std::sync::atomic::Ordering::Relaxed), 4);
    assert_eq!(progress.results_discarded.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(progress.results_sent.load(std::sync::atomic::Ordering::Relaxed), 0);
    assert!(broker.topic("clicks_per_minute").is_none(), "a blackhole table is not a topic");
}
