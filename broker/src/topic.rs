//! Topic configs, name rules and the persisted topic table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::storage::metadata;

/// Longest topic or group name (RocketMQ's limit).
pub const NAME_LENGTH_MAX: usize = 127;
/// Most queues a topic may have.
pub const QUEUE_COUNT_MAX: u32 = 1024;

/// Read/write permission of a topic (RocketMQ's `perm`: 6 = read + write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permission {
    pub readable: bool,
    pub writable: bool,
}

impl Default for Permission {
    fn default() -> Self {
        Permission { readable: true, writable: true }
    }
}

/// One topic's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    pub name: String,
    /// Number of queues messages are spread over.
    pub queue_count: u32,
    #[serde(default)]
    pub permission: Permission,
}

impl TopicConfig {
    pub fn new(name: impl Into<String>, queue_count: u32) -> Self {
        TopicConfig { name: name.into(), queue_count, permission: Permission::default() }
    }

    pub fn validate(&self) -> Result<()> {
        validate_topic_name(&self.name)?;
        if self.queue_count == 0 || self.queue_count > QUEUE_COUNT_MAX {
            return Err(Error::TopicConfigInvalid {
                topic: self.name.clone(),
                reason: format!("queue_count {} is not in 1..={QUEUE_COUNT_MAX}", self.queue_count),
            });
        }
        Ok(())
    }
}

fn validate_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        return Err("must not be empty");
    }
    if name.len() > NAME_LENGTH_MAX {
        return Err("longer than 127 characters");
    }
    if !crate::storage::is_name_chars(name) {
        return Err("only letters, digits, `%`, `_` and `-` are allowed");
    }
    Ok(())
}

/// RocketMQ's topic rules: `[A-Za-z0-9%_-]`, 1 to 127 characters.
pub fn validate_topic_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|reason| Error::TopicNameInvalid { name: name.to_string(), reason })
}

/// Consumer group names follow the same rules.
pub fn validate_group_name(name: &str) -> Result<()> {
    validate_name(name).map_err(|reason| Error::GroupNameInvalid { name: name.to_string(), reason })
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicFile {
    topics: BTreeMap<String, TopicConfig>,
}

/// A topic as the send path sees it: its config and its round-robin queue counter.
#[derive(Debug)]
pub(crate) struct TopicEntry {
    pub config: TopicConfig,
    pub next_queue: AtomicU32,
}

/// The topic table, persisted atomically to `config/topics.json` on every change.
pub(crate) struct TopicTable {
    path: PathBuf,
    /// Readers (every send and pull) never wait for a write's fsyncs: a change is built and
    /// persisted beside the table, then swapped in.
    topics: RwLock<BTreeMap<String, Arc<TopicEntry>>>,
    /// Serialises changes.
    writer: Mutex<()>,
}

fn entry(config: TopicConfig) -> Arc<TopicEntry> {
    Arc::new(TopicEntry { config, next_queue: AtomicU32::new(0) })
}

impl TopicTable {
    pub fn load(path: PathBuf) -> Result<Self> {
        let file: TopicFile = metadata::read_json(&path)?.unwrap_or_default();
        for (name, config) in &file.topics {
            if let Err(error) = config.validate() {
                return Err(Error::MetadataInvalid { path, reason: error.to_string() });
            }
            if name != &config.name {
                return Err(Error::MetadataInvalid {
                    path,
                    reason: format!("topic entry {name:?} holds the config of {:?}", config.name),
                });
            }
        }
        let topics = file.topics.into_iter().map(|(name, config)| (name, entry(config))).collect();
        Ok(TopicTable { path, topics: RwLock::new(topics), writer: Mutex::new(()) })
    }

    pub fn get(&self, name: &str) -> Option<TopicConfig> {
        self.entry(name).map(|entry| entry.config.clone())
    }

    /// The shared entry (no copy of the config): the send path's lookup.
    pub fn entry(&self, name: &str) -> Option<Arc<TopicEntry>> {
        self.topics.read().expect("topics lock").get(name).cloned()
    }

    pub fn list(&self) -> Vec<TopicConfig> {
        self.topics.read().expect("topics lock").values().map(|entry| entry.config.clone()).collect()
    }

    fn persist(&self, topics: &BTreeMap<String, Arc<TopicEntry>>) -> Result<()> {
        let file = TopicFile { topics: topics.iter().map(|(name, e)| (name.clone(), e.config.clone())).collect() };
        metadata::write_json_atomic(&self.path, &file)
    }

    /// Inserts or replaces; `must_be_new` refuses an existing name.
    pub fn put(&self, config: TopicConfig, must_be_new: bool) -> Result<()> {
        config.validate()?;
        let _writer = self.writer.lock().expect("topic writer lock");
        let mut next = self.topics.read().expect("topics lock").clone();
        if must_be_new && next.contains_key(&config.name) {
            return Err(Error::TopicExists { topic: config.name });
        }
        next.insert(config.name.clone(), entry(config));
        self.persist(&next)?;
        *self.topics.write().expect("topics lock") = next;
        Ok(())
    }

    pub fn remove(&self, name: &str) -> Result<TopicConfig> {
        let _writer = self.writer.lock().expect("topic writer lock");
        let mut next = self.topics.read().expect("topics lock").clone();
        let removed = next.remove(name).ok_or_else(|| Error::TopicNotFound { topic: name.to_string() })?;
        self.persist(&next)?;
        *self.topics.write().expect("topics lock") = next;
        Ok(removed.config.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        for good in ["orders", "Orders_2", "%RETRY%group-a", &"a".repeat(127)] {
            assert!(validate_topic_name(good).is_ok(), "{good}");
        }
        for bad in ["", "has space", "dot.ted", "slash/x", "é", &"a".repeat(128)] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }
}
