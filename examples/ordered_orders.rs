//! Ordered messages through the embedded broker's `Messaging` API (the one a network client
//! implements too): a producer sends each customer's order events with the customer as
//! sharding key, a consumer group reads every queue with long polling and checks that each
//! customer's events arrive in the order they were sent.
//!
//! `cargo run --example ordered_orders` (a temporary data directory; nothing to set up).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use weir_broker::{Broker, BrokerConfig, Message, Messaging, PullRequest, TopicConfig};

const TOPIC: &str = "orders";
const GROUP: &str = "billing";
const QUEUES: u32 = 4;
const CUSTOMERS: usize = 5;
const EVENTS: [&str; 4] = ["created", "paid", "packed", "shipped"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let mut config = BrokerConfig::new(data_dir.path());
    config.store.set_segment_size_bytes(4 << 20);
    let broker = Broker::open(config)?;
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    messaging.ensure_topic(TopicConfig::new(TOPIC, QUEUES)).await?;

    // Consumers first: they long-poll until the producer's events arrive.
    let total = CUSTOMERS * EVENTS.len();
    let mut consumers = Vec::new();
    for queue_id in 0..QUEUES {
        let messaging = messaging.clone();
        consumers.push(tokio::spawn(async move { consume_queue(messaging.as_ref(), queue_id, total).await }));
    }
    for (step, event) in EVENTS.iter().enumerate() {
        for customer in 0..CUSTOMERS {
            let customer = format!("customer-{customer}");
            let body = serde_json::json!({ "customer": customer, "event": event, "step": step }).to_string();
            let message = Message::new(TOPIC, body).with_tag(*event).with_key(&customer).with_sharding_key(&customer);
            let sent = messaging.send(message).await?;
            println!("sent {customer} {event:<8} -> queue {} offset {}", sent.queue_id, sent.queue_offset);
        }
    }

    // Each customer's events come from one queue, in the order sent.
    let mut steps_by_customer: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for consumer in consumers {
        for (customer, step) in consumer.await?? {
            steps_by_customer.entry(customer).or_default().push(step);
        }
    }
    let received: usize = steps_by_customer.values().map(Vec::len).sum();
    anyhow::ensure!(received == total, "received {received} events of {total}");
    for (customer, steps) in &steps_by_customer {
        anyhow::ensure!(steps == &[0, 1, 2, 3], "{customer}: events out of order: {steps:?}");
    }
    println!("received all {total} events; every customer's events in order");
    broker.close()?;
    Ok(())
}

/// Pulls one queue as the group until the topic's `total` events are all sent and this queue
/// is drained; commits offsets as it goes. Returns (customer, step) in queue order.
async fn consume_queue(messaging: &dyn Messaging, queue_id: u32, total: usize) -> anyhow::Result<Vec<(String, u64)>> {
    let mut seen = Vec::new();
    let mut offset = messaging.committed_offset(GROUP, TOPIC, queue_id).await?.unwrap_or(0);
    loop {
        let mut request = PullRequest::new(GROUP, TOPIC, queue_id, offset);
        request.long_poll_timeout = Duration::from_millis(500);
        let result = messaging.pull(request).await?;
        for message in &result.messages {
            let event: serde_json::Value = serde_json::from_slice(&message.body)?;
            let customer = event["customer"].as_str().unwrap_or_default().to_string();
            seen.push((customer, event["step"].as_u64().unwrap_or(u64::MAX)));
        }
        offset = result.next_offset;
        messaging.commit_offset(GROUP, TOPIC, queue_id, offset).await?;
        // Stop once every queue together holds all events and this one is read to its end
        // (its end read after the total: a send may have landed since the pull).
        let mut stored = 0;
        for queue in 0..QUEUES {
            stored += messaging.queue_range(TOPIC, queue).await?.max_offset;
        }
        if stored as usize >= total && offset >= messaging.queue_range(TOPIC, queue_id).await?.max_offset {
            return Ok(seen);
        }
    }
}
