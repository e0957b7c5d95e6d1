//! Embedded broker API tests: topics, send, pull statuses, tag filters, long polling,
//! offsets and queries.

use std::time::{Duration, Instant};

use weir_broker::{Broker, BrokerConfig, Error, Message, OffsetReset, PullRequest, PullStatus, TopicConfig};

fn open(dir: &std::path::Path) -> Broker {
    let mut config = BrokerConfig::new(dir);
    config.store = super::small_config(dir, weir_broker::storage::FlushMode::Sync);
    Broker::open(config).unwrap()
}

#[tokio::test]
async fn topic_lifecycle_and_name_rules() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("orders", 4)).unwrap();
    assert!(matches!(broker.create_topic(TopicConfig::new("orders", 4)), Err(Error::TopicExists { .. })));
    let error = broker.create_topic(TopicConfig::new("bad name", 4)).unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid topic name \"bad name\": only letters, digits, `%`, `_` and `-` are allowed"
    );
    assert!(broker.create_topic(TopicConfig::new("zero", 0)).is_err());
    broker.update_topic(TopicConfig::new("orders", 8)).unwrap();
    assert_eq!(broker.topic("orders").unwrap().queue_count, 8);
    let error = broker.send(Message::new("missing", "x")).await.unwrap_err();
    assert!(matches!(error, Error::TopicNotFound { .. }), "{error}");
    broker.send(Message::new("orders", "x")).await.unwrap();
    broker.delete_topic("orders").await.unwrap();
    assert!(broker.topics().is_empty());
    broker.close().unwrap();
    drop(broker);
    let broker = open(dir.path());
    assert!(broker.topics().is_empty(), "deletion is persisted");

    // A crash right after a deletion can leave the topic's offsets in the offsets file (it
    // is written on an interval): they are dropped at open, so a topic re-created under the
    // name starts its groups afresh instead of past its first messages.
    broker.create_topic(TopicConfig::new("orders", 1)).unwrap();
    broker.commit_offset("g", "orders", 0, 1000).unwrap();
    broker.close().unwrap();
    drop(broker);
    let offsets_file = dir.path().join("config/consumer_offsets.json");
    let offsets_before_delete = std::fs::read(&offsets_file).unwrap();
    let broker = open(dir.path());
    broker.delete_topic("orders").await.unwrap();
    broker.close().unwrap();
    drop(broker);
    std::fs::write(&offsets_file, offsets_before_delete).unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("orders", 1)).unwrap();
    assert_eq!(broker.committed_offset("g", "orders", 0), None);
}

#[tokio::test]
async fn sharding_key_keeps_order_and_round_robin_spreads() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 4)).unwrap();
    let mut queues = std::collections::BTreeSet::new();
    for i in 0..8 {
        queues.insert(broker.send(Message::new("t", format!("{i}"))).await.unwrap().queue_id);
    }
    assert_eq!(queues.len(), 4, "round robin uses every queue");
    let mut sharded = Vec::new();
    for i in 0..10 {
        sharded.push(broker.send(Message::new("t", format!("o{i}")).with_sharding_key("order-42")).await.unwrap());
    }
    assert!(sharded.iter().all(|r| r.queue_id == sharded[0].queue_id));
    assert!(sharded.windows(2).all(|w| w[1].queue_offset == w[0].queue_offset + 1));
}

/// One pull case: (from offset, tag expression, expected status, expected bodies, next).
type PullCase = (u64, &'static str, PullStatus, &'static [&'static str], u64);

#[tokio::test]
async fn pull_statuses_and_tag_filters() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 1)).unwrap();
    for (body, tag) in [("a0", "A"), ("b1", "B"), ("a2", "A"), ("c3", "C"), ("n4", "")] {
        let message = Message::new("t", body);
        let message = if tag.is_empty() { message } else { message.with_tag(tag) };
        broker.send(message).await.unwrap();
    }
    let cases: &[PullCase] = &[
        (0, "*", PullStatus::Found, &["a0", "b1", "a2", "c3", "n4"], 5),
        (1, "A", PullStatus::Found, &["a2"], 5),
        (0, "A || C", PullStatus::Found, &["a0", "a2", "c3"], 5),
        (3, "B", PullStatus::NoMatchedMessage, &[], 5),
        (5, "*", PullStatus::NoNewMessage, &[], 5),
        (9, "*", PullStatus::OffsetTooLarge, &[], 5),
    ];
    for (offset, tags, status, bodies, next) in cases {
        let mut request = PullRequest::new("g", "t", 0, *offset);
        request.tag_expression = tags.to_string();
        let result = broker.pull(request).await.unwrap();
        let got: Vec<&str> = result.messages.iter().map(|m| std::str::from_utf8(&m.body).unwrap()).collect();
        assert_eq!(
            (result.status, got.as_slice(), result.next_offset),
            (*status, *bodies, *next),
            "pull {offset} {tags}"
        );
    }
    let mut request = PullRequest::new("g", "t", 0, 0);
    request.tag_expression = "A ||".into();
    assert!(matches!(broker.pull(request).await, Err(Error::TagExpressionInvalid { .. })));
    assert!(matches!(broker.pull(PullRequest::new("g", "t", 7, 0)).await, Err(Error::QueueNotFound { .. })));
    let mut request = PullRequest::new("g", "t", 0, 0);
    request.messages_max = 2;
    assert_eq!(broker.pull(request).await.unwrap().messages.len(), 2);
    let mut request = PullRequest::new("g", "t", 0, 0);
    request.bytes_max = 1;
    let result = broker.pull(request).await.unwrap();
    assert_eq!((result.messages.len(), result.next_offset), (1, 1), "at least one message, then the byte limit");
}

/// Starts a pull of queue 0 from offset 0 that long-polls for `timeout`.
fn spawn_long_poll(
    broker: &Broker,
    topic: &str,
    timeout: Duration,
) -> tokio::task::JoinHandle<weir_broker::Result<weir_broker::PullResult>> {
    let mut request = PullRequest::new("g", topic, 0, 0);
    request.long_poll_timeout = timeout;
    let broker = broker.clone();
    tokio::spawn(async move { broker.pull(request).await })
}

#[tokio::test]
async fn long_poll_returns_when_a_message_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 1)).unwrap();
    let started = Instant::now();
    let waiting = spawn_long_poll(&broker, "t", Duration::from_secs(20));
    // The pull is parked; a send wakes it.
    tokio::task::yield_now().await;
    broker.send(Message::new("t", "wake")).await.unwrap();
    let result = waiting.await.unwrap().unwrap();
    assert_eq!(result.status, PullStatus::Found);
    assert_eq!(&result.messages[0].body[..], b"wake");
    assert!(started.elapsed() < Duration::from_secs(15));
    // With nothing arriving, the pull waits for its timeout and reports no new message.
    let mut request = PullRequest::new("g", "t", 0, 1);
    request.long_poll_timeout = Duration::from_millis(200);
    let started = Instant::now();
    let result = broker.pull(request).await.unwrap();
    assert_eq!(result.status, PullStatus::NoNewMessage);
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn offsets_commit_reset_and_persist() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 2)).unwrap();
    for i in 0..10 {
        broker.send(Message::new("t", format!("{i}"))).await.unwrap();
    }
    broker.commit_offset("g", "t", 0, 3).unwrap();
    assert_eq!(broker.committed_offset("g", "t", 0), Some(3));
    assert!(broker.commit_offset("bad group", "t", 0, 1).is_err());
    assert_eq!(broker.reset_offsets("g", "t", OffsetReset::Latest).await.unwrap(), vec![(0, 5), (1, 5)]);
    assert_eq!(broker.reset_offsets("g", "t", OffsetReset::Earliest).await.unwrap(), vec![(0, 0), (1, 0)]);
    let future = chrono_like_now_ms() + 60_000;
    assert_eq!(broker.reset_offsets("g", "t", OffsetReset::Timestamp(future)).await.unwrap(), vec![(0, 5), (1, 5)]);
    broker.commit_offset("g", "t", 1, 4).unwrap();
    broker.close().unwrap();
    drop(broker);
    let broker = open(dir.path());
    assert_eq!(broker.group_offsets("g", "t").into_iter().collect::<Vec<_>>(), vec![(0, 5), (1, 4)]);
}

fn chrono_like_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn query_by_key_id_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 2)).unwrap();
    let sent = broker.send(Message::new("t", "hello").with_key("order-1").with_property("color", "red")).await.unwrap();
    broker.send(Message::new("t", "again").with_key("order-1")).await.unwrap();
    let by_key = broker.query_by_key("t", "order-1", 10).await.unwrap();
    assert_eq!(by_key.len(), 2);
    let stored_at = by_key[1].store_timestamp_ms;
    let cases = [
        (stored_at - 60_000, stored_at + 60_000, 2),
        (stored_at + 3_600_000, i64::MAX, 0),
        (i64::MIN, stored_at - 3_600_000, 0),
    ];
    for (begin, end, expected) in cases {
        let found = broker.query_by_key_between("t", "order-1", 10, begin, end).await.unwrap();
        assert_eq!(found.len(), expected, "between {begin} and {end}");
    }
    let by_id = broker.query_by_id("t", &sent.message_id).await.unwrap();
    assert_eq!(&by_id.body[..], b"hello");
    assert_eq!(by_id.properties.get("color").map(String::as_str), Some("red"));
    assert_eq!(by_id.keys, vec!["order-1".to_string()]);
    let by_offset = broker.query_by_offset(sent.physical_offset).await.unwrap();
    assert_eq!(by_offset.message_id, sent.message_id);
    assert!(matches!(broker.query_by_id("t", "0000").await, Err(Error::MessageNotFound { .. })));
}

#[tokio::test]
async fn auto_create_topics_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = BrokerConfig::new(dir.path());
    config.store = super::small_config(dir.path(), weir_broker::storage::FlushMode::Async);
    config.auto_create_topics = true;
    let broker = Broker::open(config).unwrap();
    broker.send(Message::new("fresh", "x")).await.unwrap();
    assert_eq!(broker.topic("fresh").unwrap().queue_count, 4);
    assert!(broker.send(Message::new("bad/name", "x")).await.is_err());
}

#[tokio::test]
async fn deleting_a_topic_ends_long_polls_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path());
    broker.create_topic(TopicConfig::new("t", 1)).unwrap();
    let started = Instant::now();
    let waiting = spawn_long_poll(&broker, "t", Duration::from_secs(30));
    // Whether the pull is parked yet or not, it must end with the topic gone.
    tokio::task::yield_now().await;
    broker.delete_topic("t").await.unwrap();
    let result = waiting.await.unwrap();
    assert!(matches!(result, Err(Error::TopicNotFound { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_secs(25), "the long poll did not wait out its timeout");
    assert!(matches!(broker.send(Message::new("t", "x")).await, Err(Error::TopicNotFound { .. })));
}
