//! A fixed-size, preallocated, memory-mapped file: the unit of commitlog, consume queue and
//! index storage.
//!
//! **Invariant:** a mapped file is written by exactly one thread (the store's writer, or
//! recovery before any reader exists) and readers only read ranges that the owning structure
//! has published with a release store after the bytes were written. That protocol lives in
//! the owners (`CommitLog`, `ConsumeQueue`); this type only hands out raw slices, which is why
//! those accessors are `unsafe`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use memmap2::{MmapOptions, MmapRaw};

use crate::error::{Error, Result};

/// Zero-fill chunk used to preallocate files.
pub(crate) const PREALLOCATE_CHUNK_BYTES: usize = 1 << 20;
/// Longest sleep of a prefault waiting for its allowance to grow; whoever grows it past the
/// next chunk, or cancels, unparks the thread sooner.
const ALLOWANCE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// How fast, and how far, a file being created may be prefaulted.
#[derive(Clone, Copy)]
pub(crate) struct Pace<'a> {
    /// Zeros written per second at most (`None`: as fast as the disk takes them).
    pub bytes_per_sec_max: Option<u64>,
    /// How many bytes from the start may be prefaulted so far; it may grow while the file is
    /// prepared, and preparation waits for it.
    pub allowed_bytes: &'a AtomicU64,
    /// Cleared while the preparation waits for its allowance to grow, set again after.
    pub working: Option<&'a AtomicBool>,
}

pub(crate) struct MappedFile {
    path: PathBuf,
    /// The logical offset of byte 0 (physical offset for the commitlog, entry index × 20 for
    /// consume queues).
    base_offset: u64,
    map: MmapRaw,
    file: File,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile").field("path", &self.path).field("base", &self.base_offset).finish()
    }
}

/// How a new file's blocks are prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocks {
    /// Sparse: allocated as they are written. For the commitlog, written with `pwrite`, which
    /// reports a full disk as an error.
    Sparse,
    /// Reserved with `fallocate` (no zeros written): for files written through the mapping
    /// (consume queues, index), where a full disk would otherwise be a SIGBUS at the first
    /// write of a page.
    Reserved,
    /// Written with zeros and synced, so later writes overwrite allocated blocks instead of
    /// allocating (several times faster on virtual disks), and the mapping populated.
    Prefaulted,
}

impl MappedFile {
    /// Creates a new file of `size_bytes` with its blocks prepared as `blocks` says.
    /// The file is prepared under a `.tmp` name and renamed into place, so a crash never
    /// leaves a short file under a real name.
    pub fn create(path: &Path, base_offset: u64, size_bytes: u64, blocks: Blocks) -> Result<Self> {
        let unpaced = Pace { bytes_per_sec_max: None, allowed_bytes: &AtomicU64::new(u64::MAX), working: None };
        Self::create_paced(path, base_offset, size_bytes, blocks, &AtomicBool::new(false), unpaced)
    }

    /// `create`, writing the zeros as `pace` allows and giving up (with an error, leaving
    /// nothing behind) once `cancel` is set.
    pub fn create_paced(
        path: &Path,
        base_offset: u64,
        size_bytes: u64,
        blocks: Blocks,
        cancel: &AtomicBool,
        pace: Pace<'_>,
    ) -> Result<Self> {
        let temp_path = path.with_extension("tmp");
        let _ = std::fs::remove_file(&temp_path);
        let prepared = Self::prepare(&temp_path, size_bytes, blocks, cancel, pace);
        let file = match prepared {
            Ok(file) => file,
            Err(error) => {
                let _ = std::fs::remove_file(&temp_path); // never leave a large half-file behind
                return Err(error);
            }
        };
        std::fs::rename(&temp_path, path).map_err(|e| Error::io("cannot rename into", path, e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        // A writer waiting for this file (a cancel came during the final sync) gets it without
        // the page-table population, which would make it wait longer still.
        let populate = blocks == Blocks::Prefaulted && !cancel.load(Ordering::Relaxed);
        Self::map(path, file, base_offset, size_bytes, populate)
    }

    fn prepare(temp_path: &Path, size_bytes: u64, blocks: Blocks, cancel: &AtomicBool, pace: Pace<'_>) -> Result<File> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(temp_path)
            .map_err(|e| Error::io("cannot create", temp_path, e))?;
        if blocks == Blocks::Prefaulted {
            let zeros = vec![0u8; PREALLOCATE_CHUNK_BYTES];
            let mut written = 0u64;
            // The rate is kept from this instant and byte count on.
            let mut paced_from = (std::time::Instant::now(), 0u64);
            while written < size_bytes {
                if cancel.load(Ordering::Relaxed) {
                    let cancelled = std::io::Error::new(std::io::ErrorKind::Interrupted, "preparation cancelled");
                    return Err(Error::io("stopped preparing", temp_path, cancelled));
                }
                let chunk = (size_bytes - written).min(PREALLOCATE_CHUNK_BYTES as u64) as usize;
                if written + chunk as u64 > pace.allowed_bytes.load(Ordering::Relaxed) {
                    // Not that far ahead yet: park until the writer grows the allowance past
                    // the next chunk or cancels (it unparks this thread), and keep to the rate
                    // from then on (no burst to make up for the wait).
                    pace.working.inspect(|working| working.store(false, Ordering::Relaxed));
                    std::thread::park_timeout(ALLOWANCE_WAIT_MAX);
                    pace.working.inspect(|working| working.store(true, Ordering::Relaxed));
                    paced_from = (std::time::Instant::now(), written);
                    continue;
                }
                file.write_all(&zeros[..chunk]).map_err(|e| Error::io("cannot preallocate", temp_path, e))?;
                start_writeback(&file, written, chunk as u64);
                written += chunk as u64;
                if let Some(rate) = pace.bytes_per_sec_max {
                    // Background work keeps to its pace: wait out the rest of this chunk's
                    // share, in short steps so a cancel is seen within 10 ms.
                    let (since, written_then) = paced_from;
                    let due = std::time::Duration::from_secs_f64((written - written_then) as f64 / rate as f64);
                    while since.elapsed() < due && !cancel.load(Ordering::Relaxed) {
                        let pace_interval =
                            due.saturating_sub(since.elapsed()).min(std::time::Duration::from_millis(10));
                        std::thread::sleep(pace_interval);
                    }
                }
            }
            if cancel.load(Ordering::Relaxed) {
                let cancelled = std::io::Error::new(std::io::ErrorKind::Interrupted, "preparation cancelled");
                return Err(Error::io("stopped preparing", temp_path, cancelled));
            }
            // Small: the zeros were sent to disk chunk by chunk (below).
            file.sync_data().map_err(|e| Error::io("cannot sync", temp_path, e))?;
        } else if blocks == Blocks::Reserved {
            allocate(&file, size_bytes).map_err(|e| Error::io("cannot allocate", temp_path, e))?;
        } else {
            file.set_len(size_bytes).map_err(|e| Error::io("cannot size", temp_path, e))?;
        }
        Ok(file)
    }

    /// Opens an existing file, which must be exactly `size_bytes` long unless `extend` allows
    /// growing a short (truncated) file with zeros.
    pub fn open(path: &Path, base_offset: u64, size_bytes: u64, extend: bool) -> Result<Self> {
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let actual = file.metadata().map_err(|e| Error::io("cannot stat", path, e))?.len();
        if actual != size_bytes {
            if !(extend && actual < size_bytes) {
                return Err(Error::CommitLogCorrupt {
                    path: path.to_path_buf(),
                    offset: base_offset,
                    reason: format!("file is {actual} bytes, expected {size_bytes}"),
                });
            }
            tracing::warn!(path = %path.display(), actual, size_bytes, "extending a truncated file");
            file.set_len(size_bytes).map_err(|e| Error::io("cannot extend", path, e))?;
        }
        Self::map(path, file, base_offset, size_bytes, false)
    }

    fn map(path: &Path, file: File, base_offset: u64, size_bytes: u64, populate: bool) -> Result<Self> {
        let mut options = MmapOptions::new();
        options.len(size_bytes as usize);
        if populate {
            options.populate();
        }
        let map = options.map_raw(&file).map_err(|e| Error::io("cannot map", path, e))?;
        Ok(MappedFile { path: path.to_path_buf(), base_offset, map, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Bytes `[position, position + len)` for reading.
    ///
    /// # Safety
    /// No thread may write these bytes while the slice lives (see the module invariant).
    pub unsafe fn slice(&self, position: usize, len: usize) -> &[u8] {
        assert!(position + len <= self.map.len(), "read past the end of {}", self.path.display());
        // SAFETY: in bounds (asserted); the caller guarantees no concurrent writer.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(position), len) }
    }

    /// Bytes `[position, position + len)` for writing.
    ///
    /// # Safety
    /// The caller is the file's only writer and no reader reads these bytes until they are
    /// published (see the module invariant); no other slice of them is alive.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, position: usize, len: usize) -> &mut [u8] {
        assert!(position + len <= self.map.len(), "write past the end of {}", self.path.display());
        // SAFETY: in bounds (asserted); exclusivity is the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(position), len) }
    }

    /// Writes `bytes` at `position` through the page cache (pwrite), visible to the mapping.
    /// Same single-writer contract as `slice_mut`, without its write-protect faults.
    pub fn write_at(&self, position: usize, bytes: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        assert!(position + bytes.len() <= self.map.len(), "write past the end of {}", self.path.display());
        self.file.write_all_at(bytes, position as u64).map_err(|e| Error::io("cannot write", &self.path, e))
    }

    /// fdatasyncs the whole file (for files written with `write_at`).
    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| Error::io("cannot fdatasync", &self.path, e))
    }

    /// msyncs `[position, position + len)` to disk.
    pub fn flush(&self, position: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.map.flush_range(position, len).map_err(|e| Error::io("cannot msync", &self.path, e))
    }
}

/// The first `len` bytes of a mapped file as the owner of a `Bytes`: slices of it keep the
/// file mapped for as long as any of them lives, after the file's owner dropped it.
struct MappedPrefix {
    file: Arc<MappedFile>,
    len: usize,
}

impl AsRef<[u8]> for MappedPrefix {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `shared_prefix`'s caller guaranteed these bytes are never written again.
        unsafe { self.file.slice(0, self.len) }
    }
}

/// Bytes `[0, len)` of `file` as shared `Bytes`, without copying them.
///
/// # Safety
/// No thread may write these bytes again while the mapping exists — not only while the
/// returned `Bytes` (or a slice of it) is alive, since it keeps the mapping alive itself.
pub(crate) unsafe fn shared_prefix(file: &Arc<MappedFile>, len: usize) -> Bytes {
    assert!(len <= file.len(), "shared prefix past the end of {}", file.path.display());
    Bytes::from_owner(MappedPrefix { file: file.clone(), len })
}

/// Starts writing `[offset, offset + len)` of `file` back to disk without waiting for it, so the
/// final fdatasync of a prepared file has little left to do (the writer may be waiting for
/// it). Failure only leaves the work to that fdatasync.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range on an open descriptor we own; it reads no memory of ours.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// fsyncs a directory so that created, renamed and removed entries survive a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(|e| Error::io("cannot sync directory", dir, e))
}

/// Lists the offset-named files of `dir`, sorted by offset; other names are ignored.
pub(crate) fn list_offset_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(Error::io("cannot list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("cannot list", dir, e))?;
        if let Some(offset) = entry.file_name().to_str().and_then(super::parse_offset_file_name) {
            files.push((offset, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// Sizes a new file with its blocks reserved (`fallocate`, no zeros written), so a full disk
/// is an error here rather than a SIGBUS when a page of the mapping is first written;
/// filesystems without `fallocate` get a sparse file.
fn allocate(file: &File, size_bytes: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let length =
        libc::off_t::try_from(size_bytes).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open for writing and owned by `file` for the call.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) } == 0 {
        return Ok(());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EOPNOTSUPP) => file.set_len(size_bytes),
        _ => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_files_have_their_blocks_and_sparse_ones_do_not() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let size = 4 << 20;
        for (name, blocks, reserved) in [("reserved", Blocks::Reserved, true), ("sparse", Blocks::Sparse, false)] {
            let path = dir.path().join(name);
            let file = MappedFile::create(&path, 0, size, blocks).unwrap();
            let allocated = std::fs::metadata(&path).unwrap().blocks() * 512;
            assert_eq!(file.len() as u64, size);
            // A filesystem without fallocate gets a sparse file for both: only check where
            // the reservation took.
            if reserved && allocated > 0 {
                assert!(allocated >= size, "{name}: {allocated} of {size} bytes allocated");
            }
            if !reserved {
                assert!(allocated < size, "{name}: {allocated} of {size} bytes allocated");
            }
        }
    }

    /// Waits (10 ms poll interval, 10 s deadline) until `path` is `len` bytes long.
    fn wait_for_len(path: &Path, len: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(path).map_or(0, |m| m.len()) != len {
            assert!(std::time::Instant::now() < deadline, "{} never reached {len} bytes", path.display());
            std::thread::sleep(std::time::Duration::from_millis(10)); // poll interval
        }
    }

    #[test]
    fn a_prefault_goes_no_further_than_its_allowance() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000000000000000000");
        let chunk = PREALLOCATE_CHUNK_BYTES as u64;
        let allowed_bytes = AtomicU64::new(chunk);
        let cancel = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let preparing = scope.spawn(|| {
                let pace = Pace { bytes_per_sec_max: None, allowed_bytes: &allowed_bytes, working: None };
                MappedFile::create_paced(&path, 0, 4 * chunk, Blocks::Prefaulted, &cancel, pace)
            });
            let temp_path = path.with_extension("tmp");
            wait_for_len(&temp_path, chunk);
            std::thread::sleep(std::time::Duration::from_millis(100)); // time to overstep, if it would
            assert_eq!(std::fs::metadata(&temp_path).unwrap().len(), chunk, "stopped at its allowance");
            allowed_bytes.store(u64::MAX, Ordering::Relaxed);
            preparing.thread().unpark();
            let made = preparing.join().unwrap().unwrap();
            assert_eq!(made.len() as u64, 4 * chunk);
            assert!(!temp_path.exists());
        });
    }
}
