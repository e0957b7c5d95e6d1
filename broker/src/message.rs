//! Messages as producers build them and consumers receive them, and message ids.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::byte_str::ByteStr;
use crate::error::{Error, Result};
use crate::storage::{MessageRecord, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID};

/// Property names the broker sets itself; user properties may not use them.
pub const RESERVED_PROPERTIES: &[&str] = &[PROPERTY_TAGS, PROPERTY_KEYS, PROPERTY_UNIQUE_ID, "SHARDING_KEY"];

/// A message to send.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// One tag for broker-side filtering (`TagA`); no spaces or `||`.
    pub tag: Option<String>,
    /// Keys for `query by key`; no spaces inside a key.
    pub keys: Vec<String>,
    /// Messages with the same sharding key go to the same queue, in order.
    pub sharding_key: Option<String>,
    /// A caller-chosen unique id; generated when `None`.
    pub unique_id: Option<String>,
    /// When the message was made, in ms since the Unix epoch (RocketMQ's born timestamp, set
    /// by the producer; a source sets its record's event time). The broker's clock at send
    /// when `None`.
    pub born_timestamp_ms: Option<i64>,
    pub properties: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Message {
    pub fn new(topic: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Message { topic: topic.into(), body: body.into(), ..Message::default() }
    }
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.keys.push(key.into());
        self
    }
    pub fn with_sharding_key(mut self, key: impl Into<String>) -> Self {
        self.sharding_key = Some(key.into());
        self
    }
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Checks tag, keys and property names; the broker calls this before storing.
    pub fn validate(&self) -> Result<()> {
        if let Some(tag) = &self.tag
            && (tag.is_empty()
                || tag.as_bytes().windows(2).any(|pair| pair == b"||")
                || tag.contains(char::is_whitespace)
                || tag == "*")
        {
            return Err(Error::PropertyInvalid {
                name: PROPERTY_TAGS.into(),
                reason: "a tag is non-empty, not `*`, and holds no whitespace or `||`",
            });
        }
        for key in &self.keys {
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(Error::PropertyInvalid {
                    name: PROPERTY_KEYS.into(),
                    reason: "a key is non-empty and holds no whitespace",
                });
            }
        }
        for name in self.properties.keys() {
            if RESERVED_PROPERTIES.contains(&name.as_str()) {
                return Err(Error::PropertyInvalid { name: name.clone(), reason: "reserved for the broker" });
            }
        }
        Ok(())
    }
}

/// Where a sent message was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendResult {
    /// The unique message id (RocketMQ's `msgId`).
    pub message_id: String,
    pub queue_id: u32,
    pub queue_offset: u64,
    /// The commitlog offset (what RocketMQ encodes in `offsetMsgId`).
    pub physical_offset: u64,
}

/// A stored message as consumers see it. Its text and body share the bytes they were read
/// from (for the embedded broker, the mapped commitlog segment): reading copies nothing,
/// and the message can be kept for as long as it is needed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub topic: ByteStr,
    pub queue_id: u32,
    pub queue_offset: u64,
    pub physical_offset: u64,
    pub message_id: ByteStr,
    pub tag: Option<ByteStr>,
    pub keys: Vec<ByteStr>,
    /// User properties only (the reserved ones are in their own fields).
    pub properties: BTreeMap<String, String>,
    pub body: Bytes,
    pub born_timestamp_ms: i64,
    pub store_timestamp_ms: i64,
    pub reconsume_count: u32,
}

impl From<MessageRecord> for StoredMessage {
    fn from(record: MessageRecord) -> Self {
        let (mut tag, mut keys, mut message_id) = (None, Vec::new(), ByteStr::default());
        let mut properties = BTreeMap::new();
        // The reserved properties become slices of the record; only user properties are copied.
        for (name, value) in record.properties.iter() {
            match name {
                PROPERTY_TAGS => tag = Some(record.properties.share(value)),
                PROPERTY_KEYS => {
                    keys = value.split(' ').filter(|k| !k.is_empty()).map(|k| record.properties.share(k)).collect()
                }
                PROPERTY_UNIQUE_ID => message_id = record.properties.share(value),
                other if RESERVED_PROPERTIES.contains(&other) => {}
                _ => {
                    properties.insert(name.to_string(), value.to_string());
                }
            }
        }
        StoredMessage {
            topic: record.topic,
            queue_id: record.queue_id,
            queue_offset: record.queue_offset,
            physical_offset: record.physical_offset,
            message_id,
            tag,
            keys,
            properties,
            body: record.body,
            born_timestamp_ms: record.born_timestamp_ms,
            store_timestamp_ms: record.store_timestamp_ms,
            reconsume_count: record.reconsume_count,
        }
    }
}

/// Generates a unique message id: 32 upper-case hex digits (RocketMQ's length) made of a
/// 48-bit ms timestamp, 16 bits of pid, a 32-bit per-process random nonce and a 32-bit
/// counter. Unique across processes on a host and across restarts.
pub fn new_message_id() -> String {
    new_message_id_at(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
}

/// `new_message_id` for a send that already read the clock (`now_ms`, ms since the epoch).
pub fn new_message_id_at(now_ms: u64) -> String {
    static NONCE: OnceLock<(u32, u16)> = OnceLock::new();
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let (nonce, pid) = *NONCE.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        (hasher.finish() as u32, std::process::id() as u16)
    });
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut id = [0u8; 32];
    let fields = [(now_ms & 0xFFFF_FFFF_FFFF, 12), (u64::from(pid), 4), (u64::from(nonce), 8), (u64::from(counter), 8)];
    let mut position = 0;
    for (value, digits) in fields {
        for shift in (0..digits).rev() {
            id[position] = b"0123456789ABCDEF"[((value >> (shift * 4)) & 0xF) as usize];
            position += 1;
        }
    }
    String::from_utf8(id.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_unique_and_fixed_length() {
        let a = new_message_id();
        let b = new_message_id();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase()), "{a}");
        assert_ne!(a, b);
        let counter_a = u32::from_str_radix(&a[24..], 16).unwrap();
        let counter_b = u32::from_str_radix(&b[24..], 16).unwrap();
        assert_eq!(counter_b, counter_a.wrapping_add(1), "{a} {b}");
    }

    #[test]
    fn reserved_and_malformed_fields_are_rejected() {
        let cases = [
            Message::new("t", "x").with_tag("a b"),
            Message::new("t", "x").with_tag("A||B"),
            Message::new("t", "x").with_key("has space"),
            Message::new("t", "x").with_property("TAGS", "x"),
        ];
        for message in cases {
            assert!(message.validate().is_err(), "{message:?}");
        }
        assert!(Message::new("t", "x").with_tag("A").with_key("k1").validate().is_ok());
    }
}
