//! Helpers the sink tests share: an embedded broker, topics filled with values, a sink task
//! run until it has committed everything, and the dead-letter topic read back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, PullRequest, TopicConfig};
use weir_connect::{ErrorTolerance, Sink, SinkRecord, SinkTaskConfig, SinkTaskStats, run_sink_task};

/// Longest any helper waits for a sink task.
pub const TASK_DEADLINE: Duration = Duration::from_secs(60);

/// A multi-threaded runtime for one test.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A broker in `dir` with a topic of `queues` queues.
pub fn broker_with_topic(dir: &std::path::Path, topic: &str, queues: u32) -> Broker {
    let mut config = BrokerConfig::new(dir.join("broker"));
    config.store.set_segment_size_bytes(8 << 20);
    let broker = Broker::open(config).unwrap();
    broker.create_topic(TopicConfig::new(topic, queues)).unwrap();
    broker
}

/// Sends values (empty: a tombstone) with optional keys.
pub async fn send(broker: &Broker, topic: &str, values: &[(Option<&str>, Vec<u8>)]) {
    for chunk in values.chunks(256) {
        let messages = chunk
            .iter()
            .map(|(key, value)| {
                let mut message = Message::new(topic, value.clone());
                if let Some(key) = key {
                    message.keys = vec![key.to_string()];
                    message.sharding_key = Some(key.to_string());
                }
                message
            })
            .collect();
        broker.send_batch(messages).await.unwrap();
    }
}

/// A sink task's settings for tests: small batches, quick retries, dead-lettering on.
pub fn task_config(connector: &str, topic: &str) -> SinkTaskConfig {
    let mut config = SinkTaskConfig::new(connector, topic);
    config.batch_records_max = 100;
    config.linger = Duration::from_millis(5);
    config.backoff_initial = Duration::from_millis(5);
    config.backoff_max = Duration::from_millis(100);
    config.retries_max = 200;
    config.errors_tolerance = ErrorTolerance::All;
    config
}

/// Records committed by the task's group over all queues.
pub fn committed(broker: &Broker, config: &SinkTaskConfig) -> u64 {
    broker.group_offsets(&config.group(), &config.topic).values().sum()
}

/// Runs a sink task until its group has committed every message of the topic, then stops it
/// cleanly; panics when that takes longer than `TASK_DEADLINE`.
pub async fn drain(broker: &Broker, sink: &mut dyn Sink, config: &SinkTaskConfig) -> SinkTaskStats {
    let total: u64 = (0..broker.topic(&config.topic).unwrap().queue_count)
        .map(|queue_id| broker.queue_range(&config.topic, queue_id).max_offset)
        .sum();
    let (stop, mut stopped) = watch::channel(false);
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let task = run_sink_task(messaging, sink, config, &mut stopped);
    tokio::pin!(task);
    let started = Instant::now();
    loop {
        tokio::select! {
            outcome = &mut task => panic!("the sink task ended on its own: {outcome:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {} // poll interval of the condition below
        }
        if committed(broker, config) >= total {
            break;
        }
        assert!(started.elapsed() < TASK_DEADLINE, "sink task committed {} of {total}", committed(broker, config));
    }
    stop.send(true).unwrap();
    task.await.unwrap()
}

/// The dead-letter topic's messages: body and properties.
pub async fn dead_letters(broker: &Broker, config: &SinkTaskConfig) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    messages_of(broker, &config.dead_letter_topic()).await
}

/// A sink record for direct `Sink::write` calls.
pub fn record(queue_id: u32, queue_offset: u64, key: Option<&str>, value: &str) -> SinkRecord {
    SinkRecord {
        record: weir_connect::Record {
            topic: "t".into(),
            key: key.map(str::to_string),
            value: value.as_bytes().to_vec(),
            ..Default::default()
        },
        queue_id,
        queue_offset,
        message_id: format!("m{queue_id}-{queue_offset}"),
    }
}

/// Serves the router `make_router` builds on a free loopback port from a background thread
/// (its own runtime, so it outlives the test's runtimes); returns `http://127.0.0.1:PORT`.
pub fn serve_in_background(make_router: impl FnOnce() -> axum::Router + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, make_router()).await.unwrap();
        });
    });
    url
}

/// Standard base64 with padding (for basic-auth headers).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Every message of a topic: body and properties.
pub async fn messages_of(broker: &Broker, topic: &str) -> Vec<(Vec<u8>, BTreeMap<String, String>)> {
    let Some(found) = broker.topic(topic) else { return Vec::new() };
    let mut out = Vec::new();
    for queue_id in 0..found.queue_count {
        let mut offset = 0;
        loop {
            let mut request = PullRequest::new("test-reader", topic, queue_id, offset);
            request.messages_max = weir_broker::PULL_MESSAGES_MAX;
            let result = broker.pull(request).await.unwrap();
            if result.messages.is_empty() {
                break;
            }
            offset = result.next_offset;
            out.extend(result.messages.into_iter().map(|m| (m.body.to_vec(), m.properties)));
        }
    }
    out
}
