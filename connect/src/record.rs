//! Records: what connectors read from and write to external systems.

use std::collections::BTreeMap;

use weir_broker::{Message, StoredMessage};

/// Milliseconds since the Unix epoch, now (a record's receive time).
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    since_epoch.as_millis() as i64
}

/// Carries a record key that cannot be a message key (see `Record::to_message`).
pub const PROPERTY_RECORD_KEY: &str = "WEIR_RECORD_KEY";

/// Makes `key` `message`'s key and sharding key; a key RocketMQ cannot index (empty, or with
/// whitespace) goes into `PROPERTY_RECORD_KEY` instead of the message's keys.
pub fn set_message_key(message: &mut Message, key: Option<String>) {
    message.sharding_key = key.clone();
    match key {
        Some(key) if !key.is_empty() && !key.contains(char::is_whitespace) => message.keys = vec![key],
        Some(key) => {
            message.properties.insert(PROPERTY_RECORD_KEY.to_string(), key);
        }
        None => {}
    }
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
    ///
    /// A key RocketMQ cannot index (empty, or with whitespace: its `KEYS` property is a
    /// space-separated list — a CDC row whose primary key is `'New York'`) travels in the
    /// `PROPERTY_RECORD_KEY` property instead and still shards; a sink record gets it back
    /// as its key.
    pub fn to_message(&self) -> Message {
        let mut message = Message::new(&self.topic, self.value.clone());
        message.tag = self.tag.clone();
        message.properties = self.properties.clone();
        set_message_key(&mut message, self.key.clone());
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
        let mut properties = message.properties;
        let key = properties.remove(PROPERTY_RECORD_KEY).or_else(|| message.keys.into_iter().next().map(String::from));
        SinkRecord {
            queue_id: message.queue_id,
            queue_offset: message.queue_offset,
            message_id: message.message_id.into(),
            record: Record {
                topic: message.topic.into(),
                key,
                value: message.body.to_vec(),
                tag: message.tag.map(String::from),
                properties,
                timestamp_ms: message.born_timestamp_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_a_message_cannot_index_survive_the_round_trip() {
        for key in [None, Some("r1"), Some("New York"), Some(""), Some("a\tb")] {
            let record =
                Record { topic: "t".into(), key: key.map(str::to_string), value: b"v".to_vec(), ..Record::default() };
            let message = record.to_message();
            message.validate().unwrap_or_else(|e| panic!("{key:?}: {e}"));
            assert_eq!(message.sharding_key, record.key, "{key:?} still shards");
            let stored = StoredMessage {
                topic: message.topic.into(),
                queue_id: 0,
                queue_offset: 0,
                physical_offset: 0,
                message_id: "id".into(),
                tag: message.tag.map(Into::into),
                keys: message.keys.into_iter().map(Into::into).collect(),
                properties: message.properties,
                body: message.body.into(),
                born_timestamp_ms: 0,
                store_timestamp_ms: 0,
                reconsume_count: 0,
            };
            let back = SinkRecord::from(stored).record;
            assert_eq!(back.key, record.key);
            assert!(back.properties.is_empty(), "{key:?}: {:?}", back.properties);
        }
    }
}
