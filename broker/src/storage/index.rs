//! The message index: hash files from `topic#key` and `topic#unique id` to commitlog offsets.
//!
//! Each file is a fixed-size hash table with chaining (layout in the `storage` module doc).
//! Entries are numbered from 1; a slot or `previous` of 0 ends a chain, and chains only ever
//! point to lower-numbered entries, so a damaged file can never loop a lookup.
//! **Invariant:** the index only ever gives candidates; callers verify every hit against the
//! commitlog record, so a stale or colliding entry can cost a read but never a wrong answer.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::mapped_file::{Blocks, MappedFile, list_offset_files};
use crate::error::{Error, Result};

const HEADER_BYTES: usize = 40;
const SLOT_BYTES: usize = 4;
const ENTRY_BYTES: usize = 20;
/// Most chain links one lookup follows per file, bounding a lookup's cost.
const CHAIN_STEPS_MAX: usize = 100_000;

struct IndexFile {
    file: Arc<MappedFile>,
    begin_timestamp_ms: i64,
    end_timestamp_ms: i64,
    begin_physical_offset: u64,
    end_physical_offset: u64,
    slots_used: u32,
    entry_count: u32,
}

impl IndexFile {
    fn slot_position(&self, slot: u32) -> usize {
        HEADER_BYTES + slot as usize * SLOT_BYTES
    }

    fn entry_position(&self, slots: u32, number: u32) -> usize {
        HEADER_BYTES + slots as usize * SLOT_BYTES + (number as usize - 1) * ENTRY_BYTES
    }

    fn read_u32(&self, position: usize) -> u32 {
        // SAFETY: the index is only touched under the `IndexService` owner's lock.
        u32::from_le_bytes(unsafe { self.file.slice(position, 4) }.try_into().expect("4 bytes"))
    }

    fn write_header(&self) {
        // SAFETY: as above.
        let out = unsafe { self.file.slice_mut(0, HEADER_BYTES) };
        out[0..8].copy_from_slice(&self.begin_timestamp_ms.to_le_bytes());
        out[8..16].copy_from_slice(&self.end_timestamp_ms.to_le_bytes());
        out[16..24].copy_from_slice(&self.begin_physical_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.end_physical_offset.to_le_bytes());
        out[32..36].copy_from_slice(&self.slots_used.to_le_bytes());
        out[36..40].copy_from_slice(&self.entry_count.to_le_bytes());
    }
}

/// All index files, oldest first. Not thread-safe by itself: the store keeps it in a mutex.
pub(crate) struct IndexService {
    dir: PathBuf,
    slots: u32,
    entries_max: u32,
    files: Vec<IndexFile>,
    /// Files from this position on may hold unflushed entries.
    dirty_from: usize,
}

impl IndexService {
    pub fn open(dir: &Path, slots: u32, entries_max: u32) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let file_bytes = Self::file_bytes(slots, entries_max);
        let mut files = Vec::new();
        for (begin, path) in list_offset_files(dir)? {
            let size = std::fs::metadata(&path).map_err(|e| Error::io("cannot stat", &path, e))?.len();
            if size != file_bytes {
                tracing::warn!(path = %path.display(), size, "index file has the wrong size; removing it");
                std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
                continue;
            }
            let file = Arc::new(MappedFile::open(&path, begin, file_bytes, false)?);
            // SAFETY: no other user of the file exists yet.
            let header = unsafe { file.slice(0, HEADER_BYTES) }.to_vec();
            let field = |range: std::ops::Range<usize>| u64::from_le_bytes(header[range].try_into().expect("8 bytes"));
            let count = u32::from_le_bytes(header[36..40].try_into().expect("4 bytes"));
            files.push(IndexFile {
                file,
                begin_timestamp_ms: field(0..8) as i64,
                end_timestamp_ms: field(8..16) as i64,
                begin_physical_offset: field(16..24),
                end_physical_offset: field(24..32),
                slots_used: u32::from_le_bytes(header[32..36].try_into().expect("4 bytes")),
                entry_count: count.min(entries_max),
            });
        }
        let dirty_from = files.len().saturating_sub(1);
        Ok(IndexService { dir: dir.to_path_buf(), slots, entries_max, files, dirty_from })
    }

    fn file_bytes(slots: u32, entries_max: u32) -> u64 {
        (HEADER_BYTES + slots as usize * SLOT_BYTES + entries_max as usize * ENTRY_BYTES) as u64
    }

    /// Hash of an index key (`topic#key`).
    pub fn key_hash(topic: &str, key: &str) -> u32 {
        let hash = super::fnv1a_64_parts(&[topic.as_bytes(), b"#", key.as_bytes()]);
        (hash ^ (hash >> 32)) as u32
    }

    /// Adds one entry.
    pub fn insert(&mut self, key_hash: u32, physical_offset: u64, store_timestamp_ms: i64) -> Result<()> {
        let needs_file = self.files.last().is_none_or(|f| f.entry_count >= self.entries_max);
        if needs_file {
            let path = self.dir.join(super::offset_file_name(physical_offset));
            let file = Arc::new(MappedFile::create(
                &path,
                physical_offset,
                Self::file_bytes(self.slots, self.entries_max),
                Blocks::Reserved,
            )?);
            self.files.push(IndexFile {
                file,
                begin_timestamp_ms: store_timestamp_ms,
                end_timestamp_ms: store_timestamp_ms,
                begin_physical_offset: physical_offset,
                end_physical_offset: physical_offset,
                slots_used: 0,
                entry_count: 0,
            });
        }
        let slots = self.slots;
        let index = self.files.last_mut().expect("an index file");
        let slot = key_hash % slots;
        let slot_position = index.slot_position(slot);
        let mut previous = index.read_u32(slot_position);
        if previous > index.entry_count {
            previous = 0; // written before a crash, never counted in the header
        }
        if previous == 0 {
            index.slots_used += 1;
        }
        let number = index.entry_count + 1;
        let time_delta_s = ((store_timestamp_ms - index.begin_timestamp_ms).max(0) / 1000) as i32;
        let position = index.entry_position(slots, number);
        // SAFETY: the index is only touched under its owner's lock.
        let out = unsafe { index.file.slice_mut(position, ENTRY_BYTES) };
        out[0..4].copy_from_slice(&key_hash.to_le_bytes());
        out[4..12].copy_from_slice(&physical_offset.to_le_bytes());
        out[12..16].copy_from_slice(&time_delta_s.to_le_bytes());
        out[16..20].copy_from_slice(&previous.to_le_bytes());
        // SAFETY: as above.
        unsafe { index.file.slice_mut(slot_position, SLOT_BYTES) }.copy_from_slice(&number.to_le_bytes());
        index.entry_count = number;
        index.end_timestamp_ms = index.end_timestamp_ms.max(store_timestamp_ms);
        index.end_physical_offset = index.end_physical_offset.max(physical_offset);
        index.write_header();
        Ok(())
    }

    /// Candidate physical offsets for `key_hash` stored within `store_time_ms` (inclusive, to
    /// the second the entries keep), newest first, at most `results_max`. Files whose time
    /// span misses the range are not read.
    pub fn lookup(&self, key_hash: u32, results_max: usize, store_time_ms: &RangeInclusive<i64>) -> Vec<u64> {
        let mut found = Vec::new();
        for index in self.files.iter().rev() {
            if index.end_timestamp_ms < *store_time_ms.start() || index.begin_timestamp_ms > *store_time_ms.end() {
                continue;
            }
            let mut number = index.read_u32(index.slot_position(key_hash % self.slots));
            let mut steps = 0;
            while number != 0 && number <= index.entry_count && steps < CHAIN_STEPS_MAX {
                let position = index.entry_position(self.slots, number);
                // SAFETY: the index is only touched under its owner's lock.
                let bytes = unsafe { index.file.slice(position, ENTRY_BYTES) };
                let hash = u32::from_le_bytes(bytes[0..4].try_into().expect("4 bytes"));
                let previous = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
                let time_delta_s = i32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes"));
                let stored_from_ms = index.begin_timestamp_ms.saturating_add(i64::from(time_delta_s) * 1000);
                let in_range = stored_from_ms <= *store_time_ms.end()
                    && stored_from_ms.saturating_add(999) >= *store_time_ms.start();
                if hash == key_hash && in_range {
                    let offset = u64::from_le_bytes(bytes[4..12].try_into().expect("8 bytes"));
                    if !found.contains(&offset) {
                        found.push(offset);
                        if found.len() >= results_max {
                            return found;
                        }
                    }
                }
                if previous >= number {
                    break; // chains only point backwards; anything else is damage
                }
                number = previous;
                steps += 1;
            }
        }
        found
    }

    /// The files written since the last call, for the caller to msync without holding the
    /// index's lock (msync of a mapping is safe while it is being written).
    pub fn take_dirty_files(&mut self) -> Vec<Arc<MappedFile>> {
        let dirty = self.files[self.dirty_from.min(self.files.len())..].iter().map(|f| f.file.clone()).collect();
        self.dirty_from = self.files.len().saturating_sub(1);
        dirty
    }

    /// Removes files whose entries all point below `log_min`, keeping the newest file.
    pub fn remove_below(&mut self, log_min: u64) -> Result<()> {
        while self.files.len() > 1 && self.files[1].begin_physical_offset <= log_min {
            let removed = self.files.remove(0);
            self.dirty_from = self.dirty_from.saturating_sub(1);
            std::fs::remove_file(removed.file.path())
                .map_err(|e| Error::io("cannot remove", removed.file.path(), e))?;
        }
        Ok(())
    }
}
