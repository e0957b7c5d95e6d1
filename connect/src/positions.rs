//! Source positions: where each source connector resumes. `FilePositionStore` keeps them in
//! one JSON file written atomically (temp file, fsync, rename, fsync of the directory), like
//! Kafka Connect's standalone offset file; a crash leaves the previous or the new content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::{ConnectError, Result};

/// A source's opaque resume point (a file offset, a binlog file and position, …). JSON, so the
/// admin API can show and set it.
pub type Position = serde_json::Value;

/// Most connectors one position file holds.
pub const POSITION_CONNECTORS_MAX: usize = 10_000;
/// Largest position of one connector, as JSON text.
pub const POSITION_BYTES_MAX: usize = 64 << 10;

/// Durable storage of source positions, by connector name.
#[async_trait]
pub trait PositionStore: Send + Sync {
    /// The connector's last committed position.
    async fn load(&self, connector: &str) -> Result<Option<Position>>;
    /// Replaces the connector's position (`None` forgets it) durably before returning.
    async fn save(&self, connector: &str, position: Option<&Position>) -> Result<()>;
}

/// Positions of every source in one atomically replaced JSON file.
#[derive(Clone)]
pub struct FilePositionStore {
    path: Arc<PathBuf>,
    /// The file's content; the lock also orders writers.
    positions: Arc<Mutex<BTreeMap<String, Position>>>,
}

impl FilePositionStore {
    /// Opens (or starts) the file at `path`; a file that is not a JSON object of positions is
    /// an error naming it, never silently reset.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let invalid = |reason: String| ConnectError::PositionStore { path: path.clone(), reason };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| invalid(format!("cannot create its directory: {e}")))?;
        }
        let positions = weir_broker::storage::metadata::read_json::<BTreeMap<String, Position>>(&path)
            .map_err(|e| invalid(e.to_string()))?
            .unwrap_or_default();
        Ok(FilePositionStore { path: Arc::new(path), positions: Arc::new(Mutex::new(positions)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored position.
    pub fn all(&self) -> BTreeMap<String, Position> {
        self.positions.lock().expect("positions lock").clone()
    }
}

#[async_trait]
impl PositionStore for FilePositionStore {
    async fn load(&self, connector: &str) -> Result<Option<Position>> {
        Ok(self.positions.lock().expect("positions lock").get(connector).cloned())
    }

    async fn save(&self, connector: &str, position: Option<&Position>) -> Result<()> {
        if let Some(position) = position {
            let bytes = position.to_string().len();
            if bytes > POSITION_BYTES_MAX {
                return Err(ConnectError::PositionStore {
                    path: self.path.to_path_buf(),
                    reason: format!("position of {connector:?} is {bytes} bytes; the maximum is {POSITION_BYTES_MAX}"),
                });
            }
        }
        let (store, connector, position) = (self.clone(), connector.to_string(), position.cloned());
        // fsync and rename: off the async threads.
        tokio::task::spawn_blocking(move || {
            let invalid = |reason: String| ConnectError::PositionStore { path: store.path.to_path_buf(), reason };
            let mut positions = store.positions.lock().expect("positions lock");
            let mut next = positions.clone();
            match position {
                Some(position) => {
                    next.insert(connector, position);
                }
                None => {
                    next.remove(&connector);
                }
            }
            if next.len() > POSITION_CONNECTORS_MAX {
                return Err(invalid(format!("more than {POSITION_CONNECTORS_MAX} connectors")));
            }
            weir_broker::storage::metadata::write_json_atomic(&store.path, &next)
                .map_err(|e| invalid(e.to_string()))?;
            *positions = next;
            Ok(())
        })
        .await
        .map_err(|e| ConnectError::PositionStore {
            path: self.path.to_path_buf(),
            reason: format!("position writer panicked: {e}"),
        })?
    }
}
