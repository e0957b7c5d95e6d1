//! The broker's storage engine: commitlog, consume queues, index, checkpoint and metadata files.
//!
//! Everything here is synchronous: it owns its threads (a writer, a flusher, a maintenance
//! thread for checkpoints and retention, a segment allocator) and talks to the rest of the
//! broker through bounded channels and callbacks.
//! **Invariant:** storage knows nothing of tokio, of consumers or of the network; it stores
//! messages, maps queue offsets to them and finds them again.
//!
//! # Directory layout
//!
//! ```text
//! <data_dir>/
//!   LOCK                                  flock(2)-held by the owning process; holds its pid
//!   abort                                 exists while a store is open; present at open => crash
//!   checkpoint                            JSON, written atomically (see `Checkpoint`)
//!   store.json                            layout fixed at creation (segment, queue, index sizes)
//!   topic_tombstones.json                 deleted topics and the log end at their deletion
//!   commitlog/<20-digit start offset>     preallocated segments, `segment_size_bytes` each
//!   consumequeue/<topic>/<queue id>/<20-digit first queue offset>
//!   consumequeue/<topic>/<queue id>/start.json   an entry-less queue's first offset (below)
//!   index/<20-digit first physical offset>
//!   config/topics.json, config/consumer_offsets.json   (written atomically)
//! ```
//!
//! # Commitlog record format (version 1, little-endian)
//!
//! Every message of every topic is appended to one log. A record never spans two segments.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0  | 4 | total length of the record in bytes, this field included |
//! | 4  | 2 | magic `0xE1E7` |
//! | 6  | 1 | format version (1) |
//! | 7  | 1 | kind: 1 = message, 2 = end-of-segment marker |
//! | 8  | 4 | CRC32C (Castagnoli) of bytes `12..total_length` |
//! | 12 | 4 | flags (bit 0: transaction prepared, bit 1: transaction commit; rest reserved, 0) |
//! | 16 | 4 | queue id |
//! | 20 | 8 | queue offset |
//! | 28 | 8 | physical offset (the record's own position in the log) |
//! | 36 | 8 | born timestamp, ms since the Unix epoch |
//! | 44 | 8 | store timestamp, ms since the Unix epoch |
//! | 52 | 16 | born host IPv6 address (IPv4 as `::ffff:a.b.c.d`) |
//! | 68 | 2 | born host port |
//! | 70 | 4 | reconsume count |
//! | 74 | 8 | prepared transaction offset (0 when none) |
//! | 82 | 1 | topic length `t` (1..=127) |
//! | 83 | t | topic, UTF-8 |
//! | 83+t | 2 | properties length `p` (0..=32767) |
//! | 85+t | p | properties: repeated `key_len u16, key, value_len u16, value` |
//! | 85+t+p | 4 | body length `b` |
//! | 89+t+p | b | body |
//!
//! Tags, keys and the unique message id are properties named as in RocketMQ: `TAGS`, `KEYS`
//! (space separated) and `UNIQ_KEY`. An end-of-segment marker is 8 bytes (length = the
//! segment's remaining bytes, magic, version, kind 2) and fills the rest of the segment; a
//! record is only placed where at least 8 bytes stay free behind it, so the marker always
//! fits. Limits: total length ≤ `message_size_max_bytes` (default 4 MiB), properties ≤ 32767
//! bytes, topic ≤ 127 bytes; `segment_size_bytes` must exceed the message maximum + 8.
//!
//! # Consume queue format
//!
//! Per (topic, queue id) a sequence of files of `consume_queue_entries_per_file` entries of
//! exactly 20 bytes: commitlog physical offset `u64`, record size `u32`, tag hash `u64`
//! (FNV-1a 64 of the tag, 0 for no tag). Entry `n` of the queue is at byte `20 * (n - first)`
//! of the file whose name is `first`. An all-zero entry is empty (real records are never 0
//! bytes long).
//!
//! # Index format
//!
//! Files of a 40-byte header (begin/end store timestamp ms `i64`, begin/end physical offset
//! `u64`, used slots `u32`, entry count `u32`), `index_slots` 4-byte hash slots and
//! `index_entries_max` 20-byte entries (key hash `u32`, physical offset `u64`, store time minus
//! begin time in seconds `i32`, previous entry in the chain `u32`; entry 0 means none).
//! Keys are `topic#key` for every message key and `topic#unique id`. A lookup walks the chain
//! and verifies each hit against the record itself, so collisions and stale entries are
//! filtered, never returned.
//!
//! # Durability and recovery
//!
//! - The commitlog is written with `pwrite` and made durable with `fdatasync`. `flush: async`
//!   syncs every `flush_interval_ms`; `flush: sync` acknowledges an append only after its
//!   bytes are synced, and one sync serves every append written before it (group commit).
//!   After a failed sync nothing more is acknowledged: the failure is sticky in the commitlog
//!   (whichever thread's sync saw it), because Linux reports a writeback error once per file
//!   and a later sync that succeeds says nothing about the pages the failed one dropped.
//!   Consume-queue entries trimmed at recovery are zeroed and synced, so a second crash
//!   cannot bring them back.
//! - Every `checkpoint_interval_ms` the maintenance thread syncs the commitlog, the consume
//!   queues and the index up to the dispatched offset `D`, then writes `checkpoint`
//!   atomically with `D`, the flushed offset `F` and every queue's durable max offset.
//! - On open, a present `abort` file means the last run did not close cleanly. Recovery scans
//!   the commitlog from `D` (or the first segment without a checkpoint), verifying length,
//!   magic, CRC and physical offset of every record and re-dispatching it into consume queues
//!   and index (records of deleted topics, per the tombstones, are skipped). The first invalid
//!   record is the end of the log: when that end lies below `F`, flushed data is missing and
//!   the store refuses to open (corruption, not a torn write); otherwise the rest of that
//!   segment is zeroed and later segments are removed. Consume queue entries that point at or
//!   past the end are trimmed. When a queue fails validation, is missing, or holds fewer
//!   entries than the checkpoint recorded, all queues and the index are rebuilt from the
//!   first segment; a queue the checkpoint knew whose records all expired (nothing in the log
//!   names it) is recreated empty at its durable max offset, recorded in its `start.json`, so
//!   its offsets go on where they were. Index hits are verified on read.
//! - Reads check the CRC again and that the record belongs to the queue and offset the
//!   consume queue claims; a mismatch is reported as corruption, never returned as data.

mod checkpoint;
mod commit_log;
mod consume_queue;
mod file_lock;
mod index;
mod mapped_file;
pub mod metadata;
mod record;
mod store;

pub use checkpoint::Checkpoint;
pub use record::{
    MessageRecord, NewMessage, PROPERTY_KEYS, PROPERTY_TAGS, PROPERTY_UNIQUE_ID, Properties, is_name_chars,
    properties_size, tag_hash,
};
pub use store::{
    AppendDone, AppendedMessage, DispatchListener, FlushMode, MESSAGE_SIZE_MAX_BYTES_LIMIT, MessageFilter,
    MessageStore, QueueRange, QueueRead, ReadLimits, StoreConfig,
};

/// FNV-1a 64-bit hash: stable across versions and processes, so it can live in files.
pub fn fnv1a_64(bytes: &[u8]) -> u64 {
    fnv1a_64_parts(&[bytes])
}

/// FNV-1a 64 of the concatenation of `parts`, without building it.
pub fn fnv1a_64_parts(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// The 20-digit zero-padded file name used for every offset-named file.
pub(crate) fn offset_file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Parses a 20-digit offset file name; `None` for anything else.
pub(crate) fn parse_offset_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) { name.parse().ok() } else { None }
}
