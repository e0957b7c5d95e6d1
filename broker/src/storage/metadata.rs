//! Small metadata files (topic configs, consumer offsets, checkpoint) written atomically:
//! temp file, fsync, rename, fsync of the directory.

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::mapped_file::sync_dir;
use crate::error::{Error, Result};

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temp_path = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temp_path).map_err(|e| Error::io("cannot create", &temp_path, e))?;
    file.write_all(bytes).map_err(|e| Error::io("cannot write", &temp_path, e))?;
    file.sync_all().map_err(|e| Error::io("cannot sync", &temp_path, e))?;
    drop(file);
    std::fs::rename(&temp_path, path).map_err(|e| Error::io("cannot rename into", path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Serializes `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::MetadataInvalid { path: path.to_path_buf(), reason: e.to_string() })?;
    write_atomic(path, &bytes)
}

/// Reads a JSON file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::MetadataInvalid { path: path.to_path_buf(), reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}
