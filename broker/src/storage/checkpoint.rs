//! The checkpoint file: how far consume queues and index are durably built from the log.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::metadata;
use crate::error::Result;

/// Written atomically by the maintenance thread after syncing commitlog, consume queues and
/// index.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    /// Every commitlog byte below this offset was fdatasynced.
    pub commit_log_flushed_offset: u64,
    /// Every message below this offset has its consume queue and index entries msynced;
    /// recovery re-dispatches from here.
    pub dispatched_offset: u64,
    /// When the checkpoint was written, ms since the Unix epoch.
    pub timestamp_ms: i64,
    /// Durable entries of every consume queue (`topic/queue id` → max offset): recovery
    /// rebuilds the queues when one has gone missing or lost entries.
    #[serde(default)]
    pub queue_max_offsets: std::collections::BTreeMap<String, u64>,
}

/// The key of a queue in `Checkpoint::queue_max_offsets`.
pub(crate) fn queue_key(topic: &str, queue_id: u32) -> String {
    format!("{topic}/{queue_id}")
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Option<Checkpoint>> {
        metadata::read_json(path)
    }

    pub fn store(&self, path: &Path) -> Result<()> {
        metadata::write_json_atomic(path, self)
    }
}
