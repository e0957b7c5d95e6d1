//! The commitlog: one append-only log of fixed-size segments holding every message.
//!
//! **Invariant:** `write_offset` is the end of the readable log. The writer thread writes only
//! at or beyond it and publishes new bytes with a release store; readers load it with acquire
//! and read only below it. Segments are only added at the end (by the writer, before it
//! publishes bytes in them) and removed from the front (retention), never changed in between.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::mapped_file::{
    Blocks, MappedFile, PREALLOCATE_CHUNK_BYTES, Pace, list_offset_files, shared_prefix, sync_dir,
};
use super::record::{self, Decoded, END_MARKER_BYTES, MessageRecord, NewMessage, Placement};
use crate::error::{Error, Result};

/// Encoded records the writer holds before writing them to the segment file.
const WRITE_BUFFER_BYTES_MAX: usize = 4 << 20;

/// Page size used when zeroing a torn tail.
const PAGE_BYTES: usize = 4096;

pub(crate) struct CommitLog {
    dir: PathBuf,
    segment_size_bytes: u64,
    /// Decoding bound for a record's length: the segment size (the configured message
    /// maximum only limits new appends, so lowering it never hides stored records).
    decode_size_max: usize,
    segments: RwLock<Vec<Arc<MappedFile>>>,
    write_offset: AtomicU64,
    flushed_offset: AtomicU64,
    flush_lock: Mutex<()>,
    /// An fdatasync failed: nothing more is ever counted as flushed (set under `flush_lock`).
    sync_failed: std::sync::atomic::AtomicBool,
    /// Set when the last segment file was shorter than a segment: where its bytes ended.
    truncated_at: Option<u64>,
    /// Whether the writer's allocator is preparing a segment now (not waiting for a request,
    /// nor for the writer to come far enough for its next chunk).
    segment_preparation_working: Arc<AtomicBool>,
}

/// A reader's view of one segment: the bytes that were published when it was taken, sharing
/// the mapping, so records decoded from it are slices that can outlive the read.
pub(crate) struct SegmentView {
    segment: Arc<MappedFile>,
    bytes: Bytes,
}

impl SegmentView {
    pub(crate) fn base_offset(&self) -> u64 {
        self.segment.base_offset()
    }
}

/// Result of scanning the log during recovery.
pub(crate) struct ScanOutcome {
    /// Where the valid log ends.
    pub end_offset: u64,
    /// Why the scan stopped, when it stopped at something other than zeros.
    pub stop_reason: Option<String>,
}

impl CommitLog {
    /// Opens the segments under `dir` (creating the first when there is none). The log is not
    /// readable until `recover` has found its end.
    /// `prefault` applies to the first segment of a new log (later ones are prepared by the
    /// writer's allocator).
    pub fn open(dir: &Path, segment_size_bytes: u64, prefault: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create", dir, e))?;
        sweep_temp_files(dir)?;
        let files = list_offset_files(dir)?;
        let mut truncated_at = None;
        let mut segments = Vec::with_capacity(files.len());
        for (index, (base, path)) in files.iter().enumerate() {
            if base % segment_size_bytes != 0 {
                return Err(Error::CommitLogCorrupt {
                    path: path.clone(),
                    offset: *base,
                    reason: format!("segment start is not a multiple of {segment_size_bytes}"),
                });
            }
            if let Some(previous) = segments.last().map(|s: &Arc<MappedFile>| s.base_offset())
                && previous + segment_size_bytes != *base
            {
                return Err(Error::CommitLogCorrupt {
                    path: path.clone(),
                    offset: previous + segment_size_bytes,
                    reason: "a segment is missing before this one".to_string(),
                });
            }
            let is_last = index + 1 == files.len();
            if is_last {
                let len = std::fs::metadata(path).map_err(|e| Error::io("cannot stat", path, e))?.len();
                if len < segment_size_bytes {
                    truncated_at = Some(base + len);
                }
            }
            segments.push(Arc::new(MappedFile::open(path, *base, segment_size_bytes, is_last)?));
        }
        if segments.is_empty() {
            let path = dir.join(super::offset_file_name(0));
            tracing::info!(path = %path.display(), segment_size_bytes, prefault, "creating the first commitlog segment");
            segments.push(Arc::new(MappedFile::create(&path, 0, segment_size_bytes, blocks_for(prefault))?));
        }
        let min = segments[0].base_offset();
        Ok(CommitLog {
            dir: dir.to_path_buf(),
            segment_size_bytes,
            decode_size_max: segment_size_bytes as usize,
            segments: RwLock::new(segments),
            write_offset: AtomicU64::new(min),
            flushed_offset: AtomicU64::new(min),
            flush_lock: Mutex::new(()),
            sync_failed: std::sync::atomic::AtomicBool::new(false),
            truncated_at,
            segment_preparation_working: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The first readable physical offset.
    pub fn min_offset(&self) -> u64 {
        self.segments.read().expect("segments lock").first().map_or(0, |s| s.base_offset())
    }

    /// The end of the readable log.
    pub fn max_offset(&self) -> u64 {
        self.write_offset.load(Ordering::Acquire)
    }

    /// Where a short last segment file ended, if it was short (bytes after it are lost).
    pub fn truncated_at(&self) -> Option<u64> {
        self.truncated_at
    }

    /// The segment start at or below `offset`.
    pub fn segment_base(&self, offset: u64) -> u64 {
        offset - offset % self.segment_size_bytes
    }

    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    fn segment_for(&self, offset: u64) -> Option<Arc<MappedFile>> {
        let segments = self.segments.read().expect("segments lock");
        let first = segments.first()?.base_offset();
        if offset < first {
            return None;
        }
        let index = ((offset - first) / self.segment_size_bytes) as usize;
        segments.get(index).cloned()
    }

    fn last_segment(&self) -> Arc<MappedFile> {
        self.segments.read().expect("segments lock").last().cloned().expect("at least one segment")
    }

    /// Reads the message at `physical_offset`; `size_hint` (from a consume queue) bounds the
    /// read when known. Corrupt bytes are an error, never a message.
    pub fn read(&self, physical_offset: u64, size_hint: Option<u32>) -> Result<MessageRecord> {
        self.read_with(physical_offset, size_hint, &mut None)
    }

    /// `read`, reusing the segment view in `view_cache` when it holds the record (sequential
    /// reads then skip the segment table's lock and the view's allocation), and leaving the
    /// view read from there. The record's text and body are slices of the view, which keeps
    /// its segment mapped — even after retention removed it — until the last slice is dropped.
    pub(crate) fn read_with(
        &self,
        physical_offset: u64,
        size_hint: Option<u32>,
        view_cache: &mut Option<SegmentView>,
    ) -> Result<MessageRecord> {
        let end = self.max_offset();
        if physical_offset >= end {
            return Err(Error::MessageNotFound {
                what: format!("physical offset {physical_offset} is at or past the log end {end}"),
            });
        }
        let holds_record = |view: &SegmentView| {
            let Some(position) = physical_offset.checked_sub(view.segment.base_offset()) else { return false };
            size_hint.is_some_and(|size| position + u64::from(size) <= view.bytes.len() as u64)
        };
        let view = match view_cache.as_ref().filter(|view| holds_record(view)) {
            Some(view) => view,
            None => {
                let in_cached = view_cache.as_ref().map(|view| view.segment.clone()).filter(|segment| {
                    physical_offset >= segment.base_offset()
                        && physical_offset < segment.base_offset() + segment.len() as u64
                });
                let segment = match in_cached {
                    Some(segment) => segment,
                    None => self.segment_for(physical_offset).ok_or_else(|| Error::MessageNotFound {
                        what: format!("physical offset {physical_offset} is below the log start {}", self.min_offset()),
                    })?,
                };
                let published = (end - segment.base_offset()).min(segment.len() as u64) as usize;
                // SAFETY: [0, published) lies below the published write offset; bytes below it
                // are never written again while the segment file is mapped (segments are
                // removed whole, and recovery truncates before any reader exists).
                let bytes = unsafe { shared_prefix(&segment, published) };
                view_cache.insert(SegmentView { segment, bytes })
            }
        };
        let segment = &view.segment;
        let position = (physical_offset - segment.base_offset()) as usize;
        let readable = view.bytes.len() - position;
        let len = match size_hint {
            Some(size) if (size as usize) <= readable => size as usize,
            Some(size) => {
                return Err(self.corrupt(segment, physical_offset, format!("size {size} runs past the log end")));
            }
            None => readable,
        };
        match record::decode(&view.bytes, position..position + len, physical_offset, self.decode_size_max) {
            Decoded::Message(message) => Ok(message),
            Decoded::EndOfSegment => Err(Error::MessageNotFound {
                what: format!("physical offset {physical_offset} is an end-of-segment marker"),
            }),
            Decoded::Invalid(reason) => Err(self.corrupt(segment, physical_offset, reason)),
        }
    }

    fn corrupt(&self, segment: &MappedFile, offset: u64, reason: String) -> Error {
        Error::CommitLogCorrupt { path: segment.path().to_path_buf(), offset, reason }
    }

    /// Scans from `start_offset` validating every record, calling `on_message` for each valid
    /// one, until the first invalid bytes: that is the end of the log. Run before any reader.
    pub fn scan(&self, start_offset: u64, mut on_message: impl FnMut(&MessageRecord)) -> ScanOutcome {
        let mut offset = start_offset.max(self.min_offset());
        let last = self.last_segment();
        offset = offset.min(last.base_offset() + self.segment_size_bytes);
        let mut view: Option<SegmentView> = None;
        loop {
            let Some(segment) = self.segment_for(offset) else {
                return ScanOutcome { end_offset: offset, stop_reason: None };
            };
            if view.as_ref().is_none_or(|view| view.segment.base_offset() != segment.base_offset()) {
                // SAFETY: recovery runs before the writer thread and readers exist, and the
                // records it hands to `on_message` do not outlive the scan.
                let bytes = unsafe { shared_prefix(&segment, segment.len()) };
                view = Some(SegmentView { segment: segment.clone(), bytes });
            }
            let segment_bytes = &view.as_ref().expect("set above").bytes;
            let position = (offset - segment.base_offset()) as usize;
            let bytes = &segment_bytes[position..];
            if bytes.len() >= 4 && bytes[..8.min(bytes.len())].iter().all(|b| *b == 0) {
                return ScanOutcome { end_offset: offset, stop_reason: None };
            }
            match record::decode(segment_bytes, position..segment_bytes.len(), offset, self.decode_size_max) {
                Decoded::Message(message) => {
                    on_message(&message);
                    offset += u64::from(message.size_bytes);
                }
                Decoded::EndOfSegment => offset = segment.base_offset() + self.segment_size_bytes,
                Decoded::Invalid(reason) => {
                    return ScanOutcome { end_offset: offset, stop_reason: Some(reason) };
                }
            }
        }
    }

    /// Makes `end_offset` the end of the log: zeroes what follows in its segment (when
    /// `zero_tail`) and removes every later segment. Run before any reader.
    pub fn truncate(&self, end_offset: u64, zero_tail: bool) -> Result<()> {
        let mut segments = self.segments.write().expect("segments lock");
        while segments.len() > 1 && segments.last().expect("non-empty").base_offset() > end_offset {
            let removed = segments.pop().expect("non-empty");
            tracing::warn!(path = %removed.path().display(), end_offset, "removing a segment past the end of the log");
            std::fs::remove_file(removed.path()).map_err(|e| Error::io("cannot remove", removed.path(), e))?;
        }
        sync_dir(&self.dir)?;
        let last = segments.last().expect("non-empty").clone();
        drop(segments);
        let start = end_offset.saturating_sub(last.base_offset()) as usize;
        let remaining = last.len().saturating_sub(start);
        if remaining > 0 && remaining < END_MARKER_BYTES {
            return Err(Error::CommitLogCorrupt {
                path: last.path().to_path_buf(),
                offset: end_offset,
                reason: format!("the log ends {remaining} bytes before its segment end, too close for any record"),
            });
        }
        if zero_tail && start < last.len() {
            let mut position = start;
            while position < last.len() {
                let page_end = ((position / PAGE_BYTES) + 1) * PAGE_BYTES;
                let len = page_end.min(last.len()) - position;
                // SAFETY: recovery runs before the writer thread and readers exist.
                let bytes = unsafe { last.slice_mut(position, len) };
                if bytes.iter().any(|b| *b != 0) {
                    bytes.fill(0);
                }
                position += len;
            }
            last.flush(start, last.len() - start)?;
        }
        self.write_offset.store(end_offset, Ordering::Release);
        // Whether the recovered bytes reached the disk is unknown: the next flush syncs every
        // segment (cheap when nothing is dirty) before anything counts as flushed.
        self.flushed_offset.store(self.min_offset(), Ordering::Release);
        Ok(())
    }

    /// Makes everything written below `offset` durable (fdatasync of each segment touched).
    /// Returns the new flushed offset.
    pub fn flush_to(&self, offset: u64) -> Result<u64> {
        let _guard = self.flush_lock.lock().expect("flush lock");
        // A failed fdatasync may have dropped dirty pages, and Linux reports the error once
        // per file: a later sync that succeeds proves nothing, so none counts again.
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(Error::StoreClosed);
        }
        let target = offset.min(self.max_offset());
        // Retention may have removed segments below the flushed offset's segment.
        let mut from = self.flushed_offset().max(self.min_offset());
        while from < target {
            let Some(segment) = self.segment_for(from) else { break };
            let segment_end = segment.base_offset() + segment.len() as u64;
            if let Err(error) = segment.sync_data() {
                self.sync_failed.store(true, Ordering::Release);
                return Err(error);
            }
            from = target.min(segment_end);
        }
        if from > self.flushed_offset() {
            self.flushed_offset.store(from, Ordering::Release);
        }
        Ok(self.flushed_offset())
    }

    /// Removes the oldest segments chosen by `expired` (given each segment's path), never
    /// the one holding the log end. Returns the number removed.
    pub fn remove_oldest_segments(&self, mut expired: impl FnMut(&Path) -> bool) -> Result<usize> {
        let end = self.max_offset();
        let mut removed = 0;
        loop {
            let mut segments = self.segments.write().expect("segments lock");
            if segments.len() < 2 {
                break;
            }
            let first = segments[0].clone();
            let first_end = first.base_offset() + self.segment_size_bytes;
            if first_end > end || first_end > self.flushed_offset() || !expired(first.path()) {
                break;
            }
            segments.remove(0);
            drop(segments);
            match std::fs::remove_file(first.path()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("cannot remove", first.path(), e)),
            }
            tracing::info!(path = %first.path().display(), "retention removed a commitlog segment");
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// Whether a segment is being prepared (written and synced) in the background now.
    pub fn segment_preparation_working(&self) -> bool {
        self.segment_preparation_working.load(Ordering::Relaxed)
    }

    /// Paths of all segments, oldest first.
    pub fn segment_paths(&self) -> Vec<PathBuf> {
        self.segments.read().expect("segments lock").iter().map(|s| s.path().to_path_buf()).collect()
    }

    fn publish(&self, offset: u64) {
        debug_assert!(offset >= self.write_offset.load(Ordering::Relaxed));
        self.write_offset.store(offset, Ordering::Release);
    }
}

/// The writer thread's side of the commitlog: places records and rolls segments.
pub(crate) struct CommitLogWriter {
    log: Arc<CommitLog>,
    /// The segment holding `position`.
    segment: Arc<MappedFile>,
    /// The next record's physical offset (not yet published).
    position: u64,
    /// Records encoded but not yet written to the segment; they start at `buffer_start`.
    buffer: Vec<u8>,
    buffer_start: u64,
    allocator: SegmentAllocator,
}

impl CommitLogWriter {
    pub fn new(log: Arc<CommitLog>, config: &super::StoreConfig) -> Self {
        let position = log.max_offset();
        let working = log.segment_preparation_working.clone();
        let allocator = SegmentAllocator::start(log.dir.clone(), log.segment_size_bytes, config, working);
        let segment = log.last_segment();
        CommitLogWriter { log, segment, position, buffer: Vec::new(), buffer_start: position, allocator }
    }

    /// The unpublished end of what was written.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Encodes `message` at the end of the log (rolling to a new segment when it does not
    /// fit) and returns its physical offset and size. The bytes stay invisible until
    /// `publish`.
    pub fn append(&mut self, message: &NewMessage, queue_offset: u64, store_timestamp_ms: i64) -> Result<(u64, u32)> {
        let size = message.encoded_len();
        assert!(
            (size + END_MARKER_BYTES) as u64 <= self.log.segment_size_bytes,
            "validated message must fit a segment"
        );
        let segment_size = self.log.segment_size_bytes;
        let mut segment_end = self.segment.base_offset() + segment_size;
        assert!(self.position >= self.segment.base_offset() && self.position <= segment_end);
        if self.position + (size + END_MARKER_BYTES) as u64 > segment_end {
            let remaining = (segment_end - self.position) as usize;
            if remaining > 0 {
                assert!(remaining >= END_MARKER_BYTES, "a record always leaves room for the marker");
                let start = self.buffer.len();
                self.buffer.resize(start + END_MARKER_BYTES, 0);
                record::encode_end_marker(remaining as u32, &mut self.buffer[start..]);
            }
            self.write_buffer()?;
            self.segment = self.roll(segment_end)?;
            self.position = segment_end;
            self.buffer_start = segment_end;
            segment_end += segment_size;
        }
        if self.buffer.len() + size > WRITE_BUFFER_BYTES_MAX {
            self.write_buffer()?;
        }
        let physical_offset = self.position;
        let start = self.buffer.len();
        self.buffer.resize(start + size, 0);
        let placement = Placement { queue_offset, physical_offset, store_timestamp_ms };
        record::encode_into(message, placement, &mut self.buffer[start..]);
        self.position += size as u64;
        debug_assert!(self.position <= segment_end);
        // Have the next segment prepared in the background while this one fills.
        self.allocator.request(segment_end, self.position - (segment_end - segment_size));
        Ok((physical_offset, size as u32))
    }

    /// Writes the encoded-but-unwritten bytes into the current segment (still unpublished).
    fn write_buffer(&mut self) -> Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let position = (self.buffer_start - self.segment.base_offset()) as usize;
        self.segment.write_at(position, &self.buffer)?;
        self.buffer_start += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    fn roll(&mut self, base: u64) -> Result<Arc<MappedFile>> {
        let segment = Arc::new(self.allocator.take(base)?);
        self.log.segments.write().expect("segments lock").push(segment.clone());
        tracing::debug!(base, "commitlog rolled to a new segment");
        Ok(segment)
    }

    /// Writes what was encoded and makes it readable.
    pub fn publish(&mut self) -> Result<()> {
        self.write_buffer()?;
        debug_assert_eq!(self.buffer_start, self.position);
        self.log.publish(self.position);
        Ok(())
    }
}

/// Creates and pre-faults the next segment on its own thread, off the append path.
///
/// Prefaulting is paced (`prefault_bytes_per_sec_max`) and never makes the writer wait: when
/// the writer needs a segment that is not ready, the preparation is cancelled and the writer
/// creates a sparse segment itself. So a lightly loaded store writes into prefaulted segments
/// (overwrites are about twice as fast), and a store writing faster than the pace does not
/// write every byte twice. It also keeps pace with the writer: the next segment is prepared no
/// further than twice what the writer has filled of the current one, plus
/// `segment_prefault_ahead_bytes_max`, so a store that writes little does not zero a whole segment it
/// may not reach for a long time (on virtual machines, touching fresh page-cache pages is the
/// expensive part), while a writer slower than half the pace finds the next segment prepared
/// and synced by the time it is half way through the current one.
struct SegmentAllocator {
    dir: PathBuf,
    segment_size_bytes: u64,
    requests: Option<SyncSender<(u64, Arc<Preparation>)>>,
    ready: Receiver<(u64, Result<MappedFile>)>,
    /// The base being prepared and its controls.
    pending: Option<(u64, Arc<Preparation>)>,
    /// How far ahead of twice the writer's place in its segment the next one may be prepared.
    prefault_ahead_bytes_max: u64,
    /// Whether a preparation is under way (`CommitLog::segment_preparation_working`).
    working: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The writer's controls over a segment being prepared.
struct Preparation {
    cancel: AtomicBool,
    /// Bytes of the next segment that may be prefaulted by now.
    allowed_bytes: AtomicU64,
}

impl SegmentAllocator {
    fn start(dir: PathBuf, segment_size_bytes: u64, config: &super::StoreConfig, working: Arc<AtomicBool>) -> Self {
        let (prefault, prefault_bytes_per_sec_max) =
            (config.segment_prefault, config.segment_prefault_bytes_per_sec_max);
        let (request_tx, request_rx) = sync_channel::<(u64, Arc<Preparation>)>(1);
        let (ready_tx, ready_rx) = sync_channel(1);
        let thread_dir = dir.clone();
        let thread_working = working.clone();
        let thread = std::thread::Builder::new()
            .name("weir-segment-alloc".into())
            .spawn(move || {
                lower_thread_priority();
                for (base, preparation) in request_rx {
                    thread_working.store(true, Ordering::Relaxed);
                    let path = thread_dir.join(super::offset_file_name(base));
                    let _ = std::fs::remove_file(&path); // a leftover from a crash mid-allocation
                    let pace = Pace {
                        bytes_per_sec_max: Some(prefault_bytes_per_sec_max).filter(|rate| *rate > 0),
                        allowed_bytes: &preparation.allowed_bytes,
                        working: Some(&thread_working),
                    };
                    let cancel = &preparation.cancel;
                    let made =
                        MappedFile::create_paced(&path, base, segment_size_bytes, blocks_for(prefault), cancel, pace);
                    thread_working.store(false, Ordering::Relaxed);
                    if ready_tx.send((base, made)).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn segment allocator thread");
        SegmentAllocator {
            dir,
            segment_size_bytes,
            requests: Some(request_tx),
            ready: ready_rx,
            pending: None,
            prefault_ahead_bytes_max: config.segment_prefault_ahead_bytes_max,
            working,
            thread: Some(thread),
        }
    }

    /// Unparks the allocator thread (a prefault waiting for its allowance or a cancel).
    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Has the segment at `base` prepared, now that the writer is `filled_bytes` into the
    /// one before it.
    fn request(&mut self, base: u64, filled_bytes: u64) {
        let allowed_bytes = filled_bytes.saturating_mul(2).saturating_add(self.prefault_ahead_bytes_max);
        match &self.pending {
            Some((_, preparation)) => {
                let before = preparation.allowed_bytes.swap(allowed_bytes, Ordering::Relaxed);
                // Wake a prefault waiting for more room: at most once per chunk of room, and
                // once when the room first covers the whole segment (whose size need not be a
                // whole number of chunks). The thread marks itself working when it wakes.
                let chunk = PREALLOCATE_CHUNK_BYTES as u64;
                let size = self.segment_size_bytes;
                if allowed_bytes / chunk != before / chunk || (before < size && allowed_bytes >= size) {
                    self.wake();
                }
            }
            None => {
                let Some(requests) = &self.requests else { return };
                let preparation = Arc::new(Preparation {
                    cancel: AtomicBool::new(false),
                    allowed_bytes: AtomicU64::new(allowed_bytes),
                });
                // Working from the request on (the thread may not have taken it yet).
                self.working.store(true, Ordering::Relaxed);
                if requests.send((base, preparation.clone())).is_ok() {
                    self.pending = Some((base, preparation));
                } else {
                    self.working.store(false, Ordering::Relaxed); // the thread is gone
                }
            }
        }
    }

    /// The segment starting at `base`: the prepared one if it is ready, else a sparse one.
    fn take(&mut self, base: u64) -> Result<MappedFile> {
        if let Some((pending, preparation)) = self.pending.take() {
            let ready = match self.ready.try_recv() {
                Ok(ready) => Some(ready),
                Err(_) => {
                    // Not ready: stop it (within one chunk) rather than wait for it.
                    preparation.cancel.store(true, Ordering::Relaxed);
                    self.wake();
                    self.ready.recv().ok()
                }
            };
            if let Some((made_base, made)) = ready {
                debug_assert_eq!(made_base, pending);
                match made {
                    Ok(made) if made_base == base => {
                        metrics::counter!("weir_store_segments_prefaulted_total").increment(1);
                        return Ok(made);
                    }
                    Ok(stale) => {
                        let _ = std::fs::remove_file(stale.path());
                    }
                    Err(_) => {}
                }
            }
        }
        metrics::counter!("weir_store_segments_sparse_total").increment(1);
        tracing::debug!(base, "next segment not prepared in time; creating a sparse one");
        let path = self.dir.join(super::offset_file_name(base));
        MappedFile::create(&path, base, self.segment_size_bytes, Blocks::Sparse)
    }
}

/// Segments are prefaulted when the store is configured so, else sparse (the commitlog is
/// written with `pwrite`, which reports a full disk as an error).
fn blocks_for(prefault: bool) -> Blocks {
    if prefault { Blocks::Prefaulted } else { Blocks::Sparse }
}

impl Drop for SegmentAllocator {
    fn drop(&mut self) {
        self.requests.take();
        if let Some((pending, preparation)) = self.pending.take() {
            preparation.cancel.store(true, Ordering::Relaxed);
            self.wake();
            // The prepared segment was never used: remove it so the log has no empty tail.
            if let Ok((_, Ok(unused))) = self.ready.recv() {
                let _ = std::fs::remove_file(unused.path());
            } else {
                let _ = std::fs::remove_file(self.dir.join(super::offset_file_name(pending)));
            }
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Preparing segments is background work: it runs at a lower CPU priority (nice 10) than the
/// writer and the request threads, so on a small machine it does not slow appends down.
fn lower_thread_priority() {
    // SAFETY: setpriority on this thread's own id; failure only leaves the priority as is.
    unsafe {
        let thread_id = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, thread_id as libc::id_t, 10);
    }
}

/// Removes `*.tmp` files a crash left behind while a segment was being prepared.
fn sweep_temp_files(dir: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io("cannot list", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io("cannot list", dir, e))?.path();
        if path.extension().is_some_and(|extension| extension == "tmp") {
            tracing::warn!(path = %path.display(), "removing a half-prepared segment");
            std::fs::remove_file(&path).map_err(|e| Error::io("cannot remove", &path, e))?;
        }
    }
    Ok(())
}
