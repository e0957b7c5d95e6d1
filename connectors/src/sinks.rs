//! Sinks: where records leave Weir.

mod blackhole;
#[cfg(feature = "doris")]
pub mod doris;
#[cfg(feature = "elasticsearch")]
pub mod elasticsearch;
mod file;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "redis")]
pub mod redis;
mod stdout;

pub use blackhole::BlackholeSink;
pub use file::{FileSink, FileSinkConfig};
pub use stdout::StdoutSink;

use weir_connect::SinkRecord;

/// A Debezium change envelope (`{before, after, op}`, optionally under `payload`) as the row
/// image a sink keeping one key, document or row per table row writes: `(false, after)` for
/// creates, snapshot reads and updates, `(true, before)` for deletes.
#[cfg(any(feature = "redis", feature = "elasticsearch", feature = "doris"))]
pub(crate) fn change_image(json: &serde_json::Value) -> Result<(bool, serde_json::Value), String> {
    let envelope = json.get("payload").filter(|p| p.is_object()).unwrap_or(json);
    let op = envelope.get("op").and_then(serde_json::Value::as_str).ok_or("the change has no `op` (c, r, u or d)")?;
    let (delete, image) = match op {
        "c" | "r" | "u" => (false, "after"),
        "d" => (true, "before"),
        other => return Err(format!("unknown change op {other:?} (expected c, r, u or d)")),
    };
    match envelope.get(image) {
        Some(row @ serde_json::Value::Object(_)) => Ok((delete, row.clone())),
        _ => Err(format!("the change (op {op}) has no `{image}` object")),
    }
}

/// An update's `before` image when the change has one (the row as it was: a sink keyed by a
/// template renders the old key from it, and removes it when the key changed).
#[cfg(any(feature = "redis", feature = "elasticsearch", feature = "doris"))]
pub(crate) fn previous_image(json: &serde_json::Value) -> Option<&serde_json::Value> {
    let envelope = json.get("payload").filter(|p| p.is_object()).unwrap_or(json);
    if envelope.get("op").and_then(serde_json::Value::as_str) != Some("u") {
        return None;
    }
    envelope.get("before").filter(|before| before.is_object())
}

/// The JSON line a record becomes in line-oriented sinks: the record's place and metadata,
/// and its value (as JSON when it parses, else as a string).
pub fn json_line(record: &SinkRecord) -> String {
    let value = match serde_json::from_slice::<serde_json::Value>(&record.record.value) {
        Ok(json) => json,
        Err(_) => serde_json::Value::String(String::from_utf8_lossy(&record.record.value).into_owned()),
    };
    let line = serde_json::json!({
        "topic": record.record.topic,
        "queue_id": record.queue_id,
        "queue_offset": record.queue_offset,
        "message_id": record.message_id,
        "key": record.record.key,
        "tag": record.record.tag,
        "timestamp_ms": record.record.timestamp_ms,
        "value": value,
    });
    line.to_string()
}
