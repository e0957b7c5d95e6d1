//! Integration tests of the broker crate: storage engine, model-based crash test, embedded API.

mod broker_api;
mod model;
mod storage;

use std::path::Path;

use weir_broker::storage::{FlushMode, NewMessage, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID, StoreConfig};

/// A store config with tiny files, so tests cross segment, consume queue and index files.
pub fn small_config(dir: &Path, flush_mode: FlushMode) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_size_bytes = 8192;
    config.message_size_max_bytes = 1024;
    config.consume_queue_entries_per_file = 16;
    config.index_slots = 64;
    config.index_entries_max = 128;
    config.flush_mode = flush_mode;
    config.flush_interval_ms = 20;
    config.checkpoint_interval_ms = 50;
    config
}

/// A store-ready message.
pub fn new_message(topic: &str, queue_id: u32, body: &[u8], tag: Option<&str>, key: Option<&str>) -> NewMessage {
    let mut properties = Vec::new();
    if let Some(tag) = tag {
        properties.push((PROPERTY_TAGS.to_string(), tag.to_string()));
    }
    if let Some(key) = key {
        properties.push((PROPERTY_KEYS.to_string(), key.to_string()));
    }
    let id = format!("{topic}-{queue_id}-{:016x}", weir_broker::storage::fnv1a_64(body));
    properties.push((PROPERTY_UNIQUE_ID.to_string(), id));
    NewMessage {
        topic: topic.to_string(),
        queue_id,
        flags: 0,
        born_timestamp_ms: 1,
        born_host: "127.0.0.1:1".parse().expect("address"),
        reconsume_count: 0,
        prepared_transaction_offset: 0,
        properties,
        body: body.to_vec(),
    }
}
