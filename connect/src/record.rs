//! Records: what connectors read from and write to external systems.

use std::collections::BTreeMap;

use weir_broker::{Message, StoredMessage};

/// Milliseconds since the Unix epoch, now (a record's receive time).
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_millis() as i64
}

/// A record outside the broker; a source record becomes a message, a message becomes a sink
/// record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub key: Option<String>,
    pub value: Vec<u8>,
    pub tag: Option<String>,
    pub properties: BTreeMap<String, String>,
    /// Event time, ms since the Unix epoch.
    pub timestamp_ms: i64,
}

impl Record {
    /// The value parsed as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.value)
    }

    /// The message a source sends for this record. The key is also the sharding key: records
    /// of one key land in one queue, in order (as a Kafka key picks the partition).
    pub fn to_message(&self) -> Message {
        let mut message = Message::new(&self.topic, self.value.clone());
        message.tag = self.tag.clone();
        message.keys = self.key.iter().cloned().collect();
        message.sharding_key = self.key.clone();
        message.properties = self.properties.clone();
        message.born_timestamp_ms = Some(self.timestamp_ms);
        message
    }
}

/// A record read from a topic, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRecord {
    pub record: Record,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub message_id: String,
}

impl From<StoredMessage> for SinkRecord {
    fn from(message: StoredMessage) -> Self {
        SinkRecord {
            queue_id: message.queue_id,
            queue_offset: message.queue_offset,
            message_id: message.message_id,
            record: Record {
                topic: message.topic,
                key: message.keys.into_iter().next(),
                value: message.body,
                tag: message.tag,
                properties: message.properties,
                timestamp_ms: message.born_timestamp_ms,
            },
        }
    }
}
