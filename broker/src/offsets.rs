//! Consumer group offsets: committed per (group, topic, queue), persisted atomically to
//! `config/consumer_offsets.json` by a background thread every `offset_persist_interval_ms`
//! and on close.
//!
//! A crash can lose commits of the last interval; consumers then see those messages again
//! (at-least-once, as in RocketMQ).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::storage::metadata;

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OffsetFile {
    /// Keyed `topic@group` as in RocketMQ's consumerOffset.json.
    offsets: BTreeMap<String, BTreeMap<u32, u64>>,
}

pub(crate) struct OffsetTable {
    path: PathBuf,
    offsets: Mutex<BTreeMap<String, BTreeMap<u32, u64>>>,
    dirty: AtomicBool,
}

fn key(group: &str, topic: &str) -> String {
    format!("{topic}@{group}")
}

impl OffsetTable {
    pub fn load(path: PathBuf) -> Result<Self> {
        let file: OffsetFile = metadata::read_json(&path)?.unwrap_or_default();
        Ok(OffsetTable { path, offsets: Mutex::new(file.offsets), dirty: AtomicBool::new(false) })
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: u32, offset: u64) {
        self.offsets.lock().expect("offsets lock").entry(key(group, topic)).or_default().insert(queue_id, offset);
        self.dirty.store(true, Ordering::Release);
    }

    pub fn get(&self, group: &str, topic: &str, queue_id: u32) -> Option<u64> {
        self.offsets.lock().expect("offsets lock").get(&key(group, topic))?.get(&queue_id).copied()
    }

    /// All committed offsets of a group on a topic.
    pub fn for_group(&self, group: &str, topic: &str) -> BTreeMap<u32, u64> {
        self.offsets.lock().expect("offsets lock").get(&key(group, topic)).cloned().unwrap_or_default()
    }

    /// Every (group, topic) with committed offsets.
    pub fn groups(&self) -> Vec<(String, String)> {
        self.offsets
            .lock()
            .expect("offsets lock")
            .keys()
            .filter_map(|k| k.split_once('@').map(|(topic, group)| (group.to_string(), topic.to_string())))
            .collect()
    }

    pub fn remove_topic(&self, topic: &str) {
        self.offsets.lock().expect("offsets lock").retain(|k, _| !k.starts_with(&format!("{topic}@")));
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the table if anything changed since the last write.
    pub fn persist(&self) -> Result<()> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let snapshot = self.offsets.lock().expect("offsets lock").clone();
        let result = metadata::write_json_atomic(&self.path, &OffsetFile { offsets: snapshot });
        if result.is_err() {
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}
