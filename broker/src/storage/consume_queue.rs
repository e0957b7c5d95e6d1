//! Consume queues: per (topic, queue id), fixed 20-byte entries mapping a queue offset to the
//! message's place in the commitlog and its tag hash.
//!
//! **Invariant:** entries below `max_offset` are written and never change (except that
//! recovery may trim the tail before any reader exists); the writer thread writes entry
//! `max_offset` and then publishes it with a release store.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::mapped_file::{Blocks, MappedFile, list_offset_files, sync_dir};
use super::record::RECORD_BYTES_MIN;
use crate::error::{Error, Result};

/// Bytes per consume queue entry.
pub(crate) const ENTRY_BYTES: usize = 20;

/// One consume queue entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub physical_offset: u64,
    pub size_bytes: u32,
    pub tag_hash: u64,
}

impl Entry {
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.physical_offset.to_le_bytes());
        out[8..12].copy_from_slice(&self.size_bytes.to_le_bytes());
        out[12..20].copy_from_slice(&self.tag_hash.to_le_bytes());
    }

    fn decode(bytes: &[u8]) -> Entry {
        Entry {
            physical_offset: u64::from_le_bytes(bytes[0..8].try_into().expect("8 bytes")),
            size_bytes: u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")),
            tag_hash: u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")),
        }
    }

    fn is_plausible(&self, message_size_max_bytes: usize) -> bool {
        (self.size_bytes as usize) >= RECORD_BYTES_MIN && (self.size_bytes as usize) <= message_size_max_bytes
    }
}

pub(crate) struct ConsumeQueue {
    topic: String,
    queue_id: u32,
    dir: PathBuf,
    entries_per_file: u64,
    files: RwLock<Vec<Arc<MappedFile>>>,
    min_offset: AtomicU64,
    max_offset: AtomicU64,
    flushed_offset: AtomicU64,
}

impl ConsumeQueue {
    /// Opens (or starts) the queue in `dir`. Returns `Ok(None)` when the files on disk are
    /// inconsistent: the caller then removes them and rebuilds the queue from the commitlog.
    pub fn open(
        dir: &Path,
        topic: &str,
        queue_id: u32,
        entries_per_file: u64,
        message_size_max_bytes: usize,
    ) -> Result<Option<Self>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        let file_bytes = entries_per_file * ENTRY_BYTES as u64;
        let mut files = Vec::new();
        for (first_offset, path) in list_offset_files(dir)? {
            let expected_first = files.last().map(|f: &Arc<MappedFile>| f.base_offset() + entries_per_file);
            let size = std::fs::metadata(&path).map_err(|e| Error::io("cannot stat", &path, e))?.len();
            if first_offset % entries_per_file != 0
                || expected_first.is_some_and(|expected| expected != first_offset)
                || size != file_bytes
            {
                tracing::warn!(topic, queue_id, path = %path.display(), "consume queue file is inconsistent; rebuilding the queue");
                return Ok(None);
            }
            files.push(Arc::new(MappedFile::open(&path, first_offset, file_bytes, false)?));
        }
        let queue = ConsumeQueue {
            topic: topic.to_string(),
            queue_id,
            dir: dir.to_path_buf(),
            entries_per_file,
            files: RwLock::new(Vec::new()),
            min_offset: AtomicU64::new(0),
            max_offset: AtomicU64::new(0),
            flushed_offset: AtomicU64::new(0),
        };
        // Count the valid entries of the last file: a non-decreasing run of plausible entries.
        // An empty last file after a non-empty one (its entries were trimmed or never made it
        // to disk) is removed, and the one before it is counted instead.
        let mut count;
        let mut first_entry = 0u64;
        loop {
            let Some(last) = files.last().cloned() else {
                // No entries: the queue starts at its start marker's offset (every record of
                // it expired before a full rebuild), or at 0.
                let start = read_start_marker(dir)?;
                queue.min_offset.store(start, Ordering::Release);
                queue.max_offset.store(start, Ordering::Release);
                queue.flushed_offset.store(start, Ordering::Release);
                return Ok(Some(queue));
            };
            count = 0u64;
            if files.len() == 1 {
                // A queue rebuilt after retention starts mid-file: skip the empty entries before
                // its first one.
                while count < entries_per_file {
                    // SAFETY: no writer or reader exists yet.
                    let bytes = unsafe { last.slice(count as usize * ENTRY_BYTES, ENTRY_BYTES) };
                    if bytes.iter().any(|b| *b != 0) {
                        break;
                    }
                    count += 1;
                }
                if count == entries_per_file {
                    count = 0; // an empty file: the queue starts at its base
                }
                first_entry = count;
            }
            let mut previous_end = 0u64;
            while count < entries_per_file {
                // SAFETY: no writer or reader exists yet.
                let entry = Entry::decode(unsafe { last.slice(count as usize * ENTRY_BYTES, ENTRY_BYTES) });
                if entry.size_bytes == 0 && entry.physical_offset == 0 && entry.tag_hash == 0 {
                    break;
                }
                if !entry.is_plausible(message_size_max_bytes) || entry.physical_offset < previous_end {
                    tracing::warn!(
                        topic,
                        queue_id,
                        queue_offset = last.base_offset() + count,
                        "implausible consume queue entry; rebuilding the queue"
                    );
                    return Ok(None);
                }
                previous_end = entry.physical_offset + u64::from(entry.size_bytes);
                count += 1;
            }
            if count > 0 || files.len() == 1 {
                break;
            }
            files.pop();
            std::fs::remove_file(last.path()).map_err(|e| Error::io("cannot remove", last.path(), e))?;
        }
        let last = files.last().cloned().expect("at least one file");
        let first_base = files[0].base_offset() + first_entry;
        let max = last.base_offset() + count;
        *queue.files.write().expect("files lock") = files;
        queue.min_offset.store(first_base, Ordering::Release);
        queue.max_offset.store(max, Ordering::Release);
        queue.flushed_offset.store(max, Ordering::Release);
        Ok(Some(queue))
    }

    /// Makes the queue in `dir` (which holds no entry files) start at `offset` when opened:
    /// a full rebuild keeps a queue whose records all expired where it was.
    pub fn write_start_marker(dir: &Path, offset: u64) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        crate::storage::metadata::write_json_atomic(&dir.join(START_MARKER), &offset)
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn queue_id(&self) -> u32 {
        self.queue_id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn min_offset(&self) -> u64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// One past the last readable entry.
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    fn file_for(&self, queue_offset: u64) -> Option<Arc<MappedFile>> {
        let files = self.files.read().expect("files lock");
        let first = files.first()?.base_offset();
        if queue_offset < first {
            return None;
        }
        files.get(((queue_offset - first) / self.entries_per_file) as usize).cloned()
    }

    /// Reads up to `count_max` published entries starting at `queue_offset` (fewer at a file
    /// boundary or the end). The caller checked `min_offset <= queue_offset`.
    pub fn entries(&self, queue_offset: u64, count_max: usize) -> Vec<Entry> {
        let max = self.max_offset();
        if queue_offset >= max || count_max == 0 {
            return Vec::new();
        }
        let Some(file) = self.file_for(queue_offset) else {
            return Vec::new();
        };
        let file_end = file.base_offset() + self.entries_per_file;
        let end = max.min(file_end).min(queue_offset + count_max as u64);
        let count = (end - queue_offset) as usize;
        let position = (queue_offset - file.base_offset()) as usize * ENTRY_BYTES;
        // SAFETY: all these entries are below the published max offset and never rewritten.
        let bytes = unsafe { file.slice(position, count * ENTRY_BYTES) };
        bytes.chunks_exact(ENTRY_BYTES).map(Entry::decode).collect()
    }

    /// The entry at `queue_offset`, if published and not removed.
    pub fn entry(&self, queue_offset: u64) -> Option<Entry> {
        if queue_offset < self.min_offset() {
            return None;
        }
        self.entries(queue_offset, 1).pop()
    }

    /// Writes entry `queue_offset` (writer thread, or recovery). Offsets must arrive in order:
    /// equal to the current max, or below it (recovery rewrites), or anywhere for an empty
    /// queue. Not readable until `publish`.
    pub fn put(&self, queue_offset: u64, entry: Entry, writer_max: &mut u64) -> Result<()> {
        let empty = self.files.read().expect("files lock").is_empty();
        if empty {
            *writer_max = queue_offset;
            self.min_offset.store(queue_offset, Ordering::Release);
            self.max_offset.store(queue_offset, Ordering::Release);
            self.flushed_offset.store(queue_offset, Ordering::Release);
        } else if queue_offset > *writer_max {
            return Err(Error::ConsumeQueueCorrupt {
                topic: self.topic.clone(),
                queue_id: self.queue_id,
                queue_offset,
                reason: format!("gap: next entry expected at {}", *writer_max),
            });
        }
        if queue_offset < self.min_offset() {
            return Ok(()); // below retention: nothing to rewrite
        }
        let file = match self.file_for(queue_offset) {
            Some(file) => file,
            None => self.add_file(queue_offset)?,
        };
        let position = (queue_offset - file.base_offset()) as usize * ENTRY_BYTES;
        // SAFETY: the writer thread is the only writer; entry `queue_offset` is either
        // unpublished, or recovery is rewriting it with identical bytes before readers exist.
        entry.encode(unsafe { file.slice_mut(position, ENTRY_BYTES) });
        if queue_offset == *writer_max {
            *writer_max += 1;
        }
        Ok(())
    }

    fn add_file(&self, queue_offset: u64) -> Result<Arc<MappedFile>> {
        let base = queue_offset - queue_offset % self.entries_per_file;
        let path = self.dir.join(super::offset_file_name(base));
        let file =
            Arc::new(MappedFile::create(&path, base, self.entries_per_file * ENTRY_BYTES as u64, Blocks::Reserved)?);
        let mut files = self.files.write().expect("files lock");
        if let Some(last) = files.last() {
            assert_eq!(last.base_offset() + self.entries_per_file, base, "consume queue files are contiguous");
        }
        files.push(file.clone());
        Ok(file)
    }

    /// Makes entries below `max_offset` readable.
    pub fn publish(&self, max_offset: u64) {
        self.max_offset.store(max_offset, Ordering::Release);
    }

    /// Drops trailing entries whose messages start at or past `log_end` (recovery only).
    pub fn trim_to_log_end(&self, log_end: u64) -> Result<()> {
        let mut max = self.max_offset();
        let min = self.min_offset();
        while max > min {
            let Some(entry) = self.entries(max - 1, 1).pop() else {
                break;
            };
            if entry.physical_offset + u64::from(entry.size_bytes) <= log_end {
                break;
            }
            let file = self.file_for(max - 1).expect("entry exists");
            let position = (max - 1 - file.base_offset()) as usize * ENTRY_BYTES;
            // SAFETY: recovery runs before readers and the writer thread exist.
            unsafe { file.slice_mut(position, ENTRY_BYTES) }.fill(0);
            max -= 1;
        }
        if max < self.max_offset() {
            tracing::warn!(topic = %self.topic, queue_id = self.queue_id, max_offset = max, "trimmed consume queue to the commitlog end");
            // The zeroed entries may have been durable: sync the zeros, or a second crash
            // before writeback would bring the trimmed entries back.
            let mut from = max;
            while from < self.max_offset() {
                let file = self.file_for(from).expect("entry exists");
                let to = self.max_offset().min(file.base_offset() + self.entries_per_file);
                let position = (from - file.base_offset()) as usize * ENTRY_BYTES;
                file.flush(position, (to - from) as usize * ENTRY_BYTES)?;
                from = to;
            }
            self.max_offset.store(max, Ordering::Release);
            self.flushed_offset.store(self.flushed_offset.load(Ordering::Acquire).min(max), Ordering::Release);
        }
        Ok(())
    }

    /// msyncs the entries written since the last flush.
    pub fn flush(&self) -> Result<()> {
        let max = self.max_offset();
        let mut from = self.flushed_offset.load(Ordering::Acquire).max(self.min_offset());
        while from < max {
            let Some(file) = self.file_for(from) else {
                break;
            };
            let to = max.min(file.base_offset() + self.entries_per_file);
            let position = (from - file.base_offset()) as usize * ENTRY_BYTES;
            file.flush(position, (to - from) as usize * ENTRY_BYTES)?;
            from = to;
        }
        self.flushed_offset.store(max, Ordering::Release);
        Ok(())
    }

    /// After retention moved the commitlog start to `log_min`: removes files wholly below it
    /// and moves `min_offset` to the first entry at or past it.
    pub fn remove_below(&self, log_min: u64) -> Result<()> {
        let max = self.max_offset();
        loop {
            let mut files = self.files.write().expect("files lock");
            if files.len() < 2 {
                break;
            }
            let first = files[0].clone();
            let last_of_first = first.base_offset() + self.entries_per_file - 1;
            drop(files);
            let Some(entry) = self.entries(last_of_first, 1).pop() else {
                break;
            };
            if entry.physical_offset >= log_min {
                break;
            }
            // Readers see the new minimum before the file's entries go: never an empty read
            // in the middle of the queue.
            let next_base = last_of_first + 1;
            if next_base > self.min_offset() {
                self.min_offset.store(next_base, Ordering::Release);
            }
            files = self.files.write().expect("files lock");
            files.remove(0);
            drop(files);
            std::fs::remove_file(first.path()).map_err(|e| Error::io("cannot remove", first.path(), e))?;
        }
        sync_dir(&self.dir)?;
        // Binary search the first entry at or past log_min.
        let (mut low, mut high) = (self.min_offset().max(self.first_file_base()), max);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.entries(middle, 1).pop() {
                Some(entry) if entry.physical_offset < log_min => low = middle + 1,
                _ => high = middle,
            }
        }
        if low > self.min_offset() {
            self.min_offset.store(low, Ordering::Release);
        }
        Ok(())
    }

    fn first_file_base(&self) -> u64 {
        self.files.read().expect("files lock").first().map_or(0, |f| f.base_offset())
    }
}

/// The file holding an entry-less queue's first offset.
const START_MARKER: &str = "start.json";

/// An entry-less queue's first offset: its start marker's, else 0.
fn read_start_marker(dir: &Path) -> Result<u64> {
    let path = dir.join(START_MARKER);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::ConsumeQueueCorrupt {
            topic: String::new(),
            queue_id: 0,
            queue_offset: 0,
            reason: format!("{}: {e}", path.display()),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io("cannot read", &path, e)),
    }
}
