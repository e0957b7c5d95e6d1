//! `weir tour`: the README's first command — create a topic, send, consume, query by key.

use std::time::Duration;

use anyhow::Result;
use weir_broker::{Message, PullRequest, TopicConfig};

use crate::admin::{StoreArgs, open_broker, print_message};

pub async fn run(store: &StoreArgs) -> Result<()> {
    let data_dir = store.data_dir.as_path();
    let broker = open_broker(store)?;
    println!("1. opened an embedded broker in {}", data_dir.display());
    if broker.topic("tour-orders").is_none() {
        broker.create_topic(TopicConfig::new("tour-orders", 4))?;
        println!("2. created topic tour-orders with 4 queues");
    } else {
        println!("2. topic tour-orders already exists (tour ran before)");
    }
    let mut last_key = String::new();
    for (i, tag) in ["created", "paid", "shipped", "created", "paid"].iter().enumerate() {
        let order = format!("order-{}", 1000 + i % 3);
        let body = format!(r#"{{"order":"{order}","event":"{tag}"}}"#);
        let message = Message::new("tour-orders", body).with_tag(*tag).with_key(&order).with_sharding_key(&order);
        let sent = broker.send(message).await?;
        println!(
            "3. sent {tag:<8} key={order} -> queue {} offset {} id {}",
            sent.queue_id, sent.queue_offset, sent.message_id
        );
        last_key = order;
    }
    println!("4. consumed as group tour-group, tags `paid || shipped`:");
    for queue_id in 0..4 {
        let offset = broker.committed_offset("tour-group", "tour-orders", queue_id).unwrap_or(0);
        let mut request = PullRequest::new("tour-group", "tour-orders", queue_id, offset);
        request.tag_expression = "paid || shipped".into();
        request.long_poll_timeout = Duration::ZERO;
        let result = broker.pull(request).await?;
        for message in &result.messages {
            print!("   ");
            print_message(message);
        }
        broker.commit_offset("tour-group", "tour-orders", queue_id, result.next_offset)?;
    }
    println!("5. query by key {last_key}:");
    for message in broker.query_by_key("tour-orders", &last_key, 16).await? {
        print!("   ");
        print_message(&message);
    }
    broker.close()?;
    println!("done; try `weir --data-dir {} topic describe tour-orders`", data_dir.display());
    Ok(())
}
