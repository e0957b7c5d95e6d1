//! Storage engine tests: round trips across files, recovery, corruption, retention, locking.

use std::time::{Duration, SystemTime};

use weir_broker::Error;
use weir_broker::storage::{FlushMode, MessageFilter, MessageRecord, MessageStore, QueueRange, ReadLimits};

const LIMITS: ReadLimits = ReadLimits { messages_max: 64, bytes_max: 1 << 20, scan_entries_max: 1024 };

use super::{new_message, small_config};

struct AllMessages;
impl MessageFilter for AllMessages {
    fn matches_tag_hash(&self, _: u64) -> bool {
        true
    }
    fn matches(&self, _: &MessageRecord) -> bool {
        true
    }
}

fn read_all(store: &MessageStore, topic: &str, queue_id: u32) -> weir_broker::Result<Vec<MessageRecord>> {
    let range = store.queue_range(topic, queue_id);
    let mut offset = range.min_offset;
    let mut all = Vec::new();
    while offset < range.max_offset {
        let read = store.read_queue(topic, queue_id, offset, LIMITS, &AllMessages)?;
        assert!(read.next_offset > offset, "reads make progress");
        offset = read.next_offset;
        all.extend(read.messages);
    }
    Ok(all)
}

/// Deletes a topic and waits for the store to finish.
fn delete_topic(store: &MessageStore, topic: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    store.delete_topic(topic, Box::new(move |result| tx.send(result).unwrap())).unwrap();
    rx.recv().unwrap().unwrap();
}

fn bodies(messages: &[MessageRecord]) -> Vec<String> {
    messages.iter().map(|m| String::from_utf8_lossy(&m.body).into_owned()).collect()
}

/// Appends `count` messages `prefix-i` to topic `t`, queue `i % 2`, one request each.
fn fill(store: &MessageStore, prefix: &str, count: usize) {
    for i in 0..count {
        let body = format!("{prefix}-{i:04}-{}", "x".repeat(200));
        store
            .append_blocking(vec![new_message("t", (i % 2) as u32, body.as_bytes(), Some("A"), Some(&format!("k{i}")))])
            .unwrap();
    }
}

#[test]
fn appends_span_segments_and_survive_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Unpaced prefault (segments ready in time) and a crawl (every roll falls back to sparse).
    for (flush_mode, prefault_pace) in [(FlushMode::Async, 0), (FlushMode::Sync, 0), (FlushMode::Async, 1)] {
        let data = dir.path().join(format!("{flush_mode:?}-{prefault_pace}"));
        let config = || {
            let mut config = small_config(&data, flush_mode);
            config.segment_prefault_bytes_per_sec_max = prefault_pace;
            config
        };
        let store = MessageStore::open(config(), None).unwrap();
        fill(&store, "m", 120);
        let before: Vec<_> = (0..2).map(|q| bodies(&read_all(&store, "t", q).unwrap())).collect();
        assert_eq!(before[0].len(), 60);
        assert!(store.commit_log_offsets().1 > 3 * 8192, "several segments were used");
        store.close().unwrap();
        drop(store);
        let store = MessageStore::open(config(), None).unwrap();
        let after: Vec<_> = (0..2).map(|q| bodies(&read_all(&store, "t", q).unwrap())).collect();
        assert_eq!(before, after);
        assert_eq!(store.queue_range("t", 0), QueueRange { min_offset: 0, max_offset: 60 });
        // Appends continue the queue offsets.
        let placed = store.append_blocking(vec![new_message("t", 0, b"next", None, None)]).unwrap();
        assert_eq!(placed[0].queue_offset, 60);
        let found = store.lookup_key("t", "k17", 10).unwrap();
        assert_eq!(bodies(&found), vec![format!("m-0017-{}", "x".repeat(200))]);
        assert!(store.lookup_key("t", "nope", 10).unwrap().is_empty());
        assert!(store.lookup_key("other", "k17", 10).unwrap().is_empty());
    }
}

#[test]
fn batch_append_is_contiguous_and_offsets_lookup_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    let batch: Vec<_> = (0..10).map(|i| new_message("t", 0, format!("b{i}").as_bytes(), None, None)).collect();
    let placed = store.append_blocking(batch).unwrap();
    let offsets: Vec<u64> = placed.iter().map(|p| p.queue_offset).collect();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    for pair in placed.windows(2) {
        assert!(pair[1].physical_offset >= pair[0].physical_offset + u64::from(pair[0].size_bytes));
    }
    let first_time = placed[0].store_timestamp_ms;
    assert_eq!(store.offset_for_timestamp("t", 0, first_time - 1000).unwrap(), 0);
    assert_eq!(store.offset_for_timestamp("t", 0, first_time + 60_000).unwrap(), 10);
    let read = store.read(placed[3].physical_offset).unwrap();
    assert_eq!(&read.body[..], b"b3");
}

#[test]
fn size_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Async), None).unwrap();
    let error = store.append_blocking(vec![new_message("t", 0, &[0; 2000], None, None)]).unwrap_err();
    assert!(matches!(error, Error::MessageTooLarge { max_bytes: 1024, .. }), "{error}");
    assert!(error.to_string().contains("exceeds the maximum of 1024 bytes"));
}

#[test]
fn second_process_gets_a_lock_error_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let _store = MessageStore::open(small_config(dir.path(), FlushMode::Async), None).unwrap();
    let error = MessageStore::open(small_config(dir.path(), FlushMode::Async), None).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::DataDirLocked { .. }), "{text}");
    assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
}

/// Waits (with a deadline) until the checkpoint file says the whole log is flushed.
fn wait_for_checkpoint(dir: &std::path::Path, end: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let checkpoint: Option<weir_broker::storage::Checkpoint> =
            std::fs::read(dir.join("checkpoint")).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok());
        if checkpoint.is_some_and(|c| c.commit_log_flushed_offset >= end) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "checkpoint never reached {end}");
        std::thread::yield_now();
    }
}

#[test]
fn damage_below_the_flushed_offset_after_a_crash_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 40);
    let (_, end, _) = store.commit_log_offsets();
    wait_for_checkpoint(dir.path(), end);
    // A message appended after the checkpoint: recovery scans it, so damage before it is seen.
    store.append_blocking(vec![new_message("t", 0, b"late", None, None)]).unwrap();
    store.crash();
    drop(store);
    let segment = dir.path().join("commitlog").join(format!("{:020}", end - end % 8192));
    let mut bytes = std::fs::read(&segment).unwrap();
    let position = (end % 8192) as usize;
    bytes[position + 10] ^= 0xFF; // inside the "late" record, which starts at the old end
    std::fs::write(&segment, &bytes).unwrap();
    let opened = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None);
    // The late record lies past the checkpoint's flushed offset: indistinguishable from a
    // torn write, so it is truncated and everything before it survives.
    let store = opened.unwrap();
    assert_eq!(store.commit_log_offsets().1, end);
    assert_eq!(read_all(&store, "t", 0).unwrap().len(), 20);
    let last = (0..2).flat_map(|q| read_all(&store, "t", q).unwrap()).max_by_key(|m| m.physical_offset).unwrap();
    store.close().unwrap();
    drop(store);
    // Damage inside the checkpointed region after an unclean stop is refused.
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let checkpoint = weir_broker::storage::Checkpoint {
        commit_log_flushed_offset: end,
        dispatched_offset: last.physical_offset,
        timestamp_ms: 0,
        ..Default::default()
    };
    std::fs::write(dir.path().join("checkpoint"), serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let segment =
        dir.path().join("commitlog").join(format!("{:020}", last.physical_offset - last.physical_offset % 8192));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[(last.physical_offset % 8192) as usize + 100] ^= 0xFF; // inside the last record
    std::fs::write(&segment, &bytes).unwrap();
    let error = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap_err();
    assert!(matches!(error, Error::CommitLogCorrupt { .. }), "{error}");
    assert!(error.to_string().contains("not a torn write"), "{error}");
}

#[test]
fn unflushed_tail_lost_in_a_crash_is_truncated_and_queues_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), FlushMode::Async);
    config.flush_interval_ms = 60_000;
    config.checkpoint_interval_ms = 60_000;
    let store = MessageStore::open(config.clone(), None).unwrap();
    fill(&store, "m", 30);
    store.crash();
    let (_, end, flushed) = store.commit_log_offsets();
    drop(store);
    assert_eq!(flushed, 0, "nothing was flushed: the whole log is an unflushed tail");
    // Lose the last segment's second half, as an OS crash would lose unwritten pages.
    let base = end - end % 8192;
    let cut = base + (end - base) / 2;
    let segment = dir.path().join("commitlog").join(format!("{base:020}"));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[(cut - base) as usize..].fill(0);
    std::fs::write(&segment, &bytes).unwrap();
    let store = MessageStore::open(config, None).unwrap();
    let (_, recovered_end, _) = store.commit_log_offsets();
    assert!(recovered_end <= cut && recovered_end > base, "{recovered_end} vs cut {cut}");
    let survivors: Vec<_> = (0..2).flat_map(|q| read_all(&store, "t", q).unwrap()).collect();
    assert!(survivors.iter().all(|m| m.physical_offset + u64::from(m.size_bytes) <= recovered_end));
    let mut indices: Vec<usize> =
        survivors.iter().map(|m| String::from_utf8_lossy(&m.body)[2..6].parse().unwrap()).collect();
    indices.sort();
    assert_eq!(indices, (0..indices.len()).collect::<Vec<_>>(), "the survivors are a prefix");
    assert!(indices.len() < 30);
    // New appends continue right after the survivors in each queue.
    let placed = store.append_blocking(vec![new_message("t", 0, b"after", None, None)]).unwrap();
    assert_eq!(placed[0].queue_offset, survivors.iter().filter(|m| m.queue_id == 0).count() as u64);
}

#[test]
fn flipped_byte_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 10);
    let victim = read_all(&store, "t", 0).unwrap()[2].clone();
    store.close().unwrap();
    drop(store);
    let segment =
        dir.path().join("commitlog").join(format!("{:020}", victim.physical_offset - victim.physical_offset % 8192));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[(victim.physical_offset % 8192) as usize + 150] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    let error = read_all(&store, "t", 0).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::ConsumeQueueCorrupt { queue_offset: 2, .. }), "{text}");
    assert!(text.contains("CRC mismatch"), "{text}");
    let error = store.read(victim.physical_offset).unwrap_err();
    assert!(matches!(error, Error::CommitLogCorrupt { .. }), "{error}");
    // Queue 1 is untouched.
    assert_eq!(read_all(&store, "t", 1).unwrap().len(), 5);
}

#[test]
fn garbage_consume_queue_is_rebuilt_from_the_commitlog() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 50);
    let expected = bodies(&read_all(&store, "t", 1).unwrap());
    store.close().unwrap();
    drop(store);
    let queue_dir = dir.path().join("consumequeue").join("t").join("1");
    let mut files: Vec<_> = std::fs::read_dir(&queue_dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let garbage: Vec<u8> = (0..16 * 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(files.last().unwrap(), &garbage).unwrap();
    std::fs::write(&files[0], b"short").unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(bodies(&read_all(&store, "t", 1).unwrap()), expected);
    assert_eq!(read_all(&store, "t", 0).unwrap().len(), 25);
}

#[test]
fn truncated_segment_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 30);
    let (_, end, _) = store.commit_log_offsets();
    store.close().unwrap();
    drop(store);
    let segment = dir.path().join("commitlog").join(format!("{:020}", end - end % 8192));
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.set_len(end % 8192 / 2).unwrap();
    let error = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap_err();
    assert!(error.to_string().contains("truncated"), "{error}");
}

#[test]
fn one_sync_flush_serves_many_waiting_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap());
    let writers = 16;
    let appends_per_writer = 20;
    let threads: Vec<_> = (0..writers)
        .map(|writer| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..appends_per_writer {
                    let body = format!("w{writer}-{i}");
                    store.append_blocking(vec![new_message("t", 0, body.as_bytes(), None, None)]).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let (commits, appends) = store.group_commit_counts();
    assert_eq!(appends, (writers * appends_per_writer) as u64, "every append was acknowledged by a group commit");
    // Sixteen writers, each waiting for its flush: the flusher must batch them.
    assert!(commits < appends, "{commits} flushes for {appends} appends: no group commit");
    let (_, end, flushed) = store.commit_log_offsets();
    assert_eq!(flushed, end, "acknowledged means flushed");
}

#[test]
fn disk_pressure_removes_the_oldest_segment_one_per_pass() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), FlushMode::Sync);
    // Any real disk is fuller than this: every pass is under pressure.
    config.disk_usage_ratio_max = 1e-12;
    let store = MessageStore::open(config, None).unwrap();
    fill(&store, "m", 120);
    let segments = || std::fs::read_dir(dir.path().join("commitlog")).unwrap().count();
    let before = segments();
    assert!(before >= 4, "{before} segments");
    let mut minimums = vec![store.queue_range("t", 0).min_offset];
    for pass in 1..=2 {
        assert_eq!(store.remove_expired(SystemTime::now()).unwrap(), 1, "pass {pass}: one segment per pass");
        assert_eq!(segments(), before - pass);
        minimums.push(store.queue_range("t", 0).min_offset);
    }
    assert!(minimums.windows(2).all(|pair| pair[0] < pair[1]), "queue minimums move with the log: {minimums:?}");
    // The segment holding the log end is never removed, however full the disk.
    while store.remove_expired(SystemTime::now()).unwrap() > 0 {}
    let (log_min, end, _) = store.commit_log_offsets();
    assert!(log_min < end, "the last segment stays: {log_min}..{end}");
    assert_eq!(read_all(&store, "t", 1).unwrap().last().unwrap().queue_offset, 59);
}

#[test]
fn retention_removes_old_segments_and_moves_queue_minimums() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 120);
    let segments = std::fs::read_dir(dir.path().join("commitlog")).unwrap().count();
    assert!(segments >= 4);
    // Nothing is old yet.
    assert_eq!(store.remove_expired(SystemTime::now()).unwrap(), 0);
    // Messages read before retention share the mapped segments: they stay readable after
    // their files are removed.
    let held = read_all(&store, "t", 0).unwrap();
    let later = SystemTime::now() + Duration::from_secs(73 * 3600);
    let removed = store.remove_expired(later).unwrap();
    assert!(removed >= 3, "removed {removed}");
    assert_eq!(std::fs::read_dir(dir.path().join("commitlog")).unwrap().count(), segments - removed);
    let expected: Vec<String> = (0..120).step_by(2).map(|i| format!("m-{i:04}-{}", "x".repeat(200))).collect();
    assert_eq!(bodies(&held), expected);
    assert!(held.iter().all(|m| m.topic == "t" && m.keys().count() == 1));
    drop(held);
    let (log_min, _, _) = store.commit_log_offsets();
    let range = store.queue_range("t", 0);
    assert!(range.min_offset > 0 && range.min_offset < range.max_offset);
    let error = store.read_queue("t", 0, 0, LIMITS, &AllMessages).unwrap_err();
    assert!(error.is_offset_below_minimum(), "{error}");
    let rest = read_all(&store, "t", 0).unwrap();
    assert!(rest.iter().all(|m| m.physical_offset >= log_min));
    assert_eq!(rest.last().unwrap().queue_offset, 59);
    // Retention survives a restart.
    store.close().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(store.queue_range("t", 0), range);
}

#[test]
fn deleted_topic_stays_deleted_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 10);
    delete_topic(&store, "t");
    assert_eq!(store.queue_range("t", 0), QueueRange::default());
    store.crash();
    drop(store);
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(store.queue_range("t", 0), QueueRange::default());
}

#[test]
fn deleted_topic_stays_deleted_through_a_full_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 10);
    store.append_blocking(vec![new_message("u", 0, b"keep", None, None)]).unwrap();
    delete_topic(&store, "t");
    store.close().unwrap();
    drop(store);
    // Damage u's queue so that recovery rebuilds every queue from the first segment.
    let queue_file = dir.path().join("consumequeue/u/0").join(format!("{:020}", 0));
    std::fs::write(&queue_file, b"garbage").unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(store.queue_range("t", 0), QueueRange::default(), "the deleted topic is not resurrected");
    assert_eq!(bodies(&read_all(&store, "u", 0).unwrap()), vec!["keep".to_string()]);
}

#[test]
fn missing_consume_queue_directory_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 40);
    let expected = bodies(&read_all(&store, "t", 1).unwrap());
    store.close().unwrap();
    drop(store);
    std::fs::remove_dir_all(dir.path().join("consumequeue/t/1")).unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(bodies(&read_all(&store, "t", 1).unwrap()), expected);
}

#[test]
fn layout_settings_cannot_change_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Async), None).unwrap();
    store.close().unwrap();
    drop(store);
    let mut config = small_config(dir.path(), FlushMode::Async);
    config.segment_size_bytes = 16384;
    let error = MessageStore::open(config, None).unwrap_err();
    assert!(matches!(error, Error::ConfigInvalid { field: "segment_size_bytes", .. }), "{error}");
    assert!(error.to_string().contains("created with 8192 and the config says 16384"), "{error}");
}

#[test]
fn lowering_the_message_maximum_keeps_stored_records_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), FlushMode::Sync);
    config.message_size_max_bytes = 2048;
    let store = MessageStore::open(config.clone(), None).unwrap();
    store.append_blocking(vec![new_message("t", 0, &[b'z'; 1500], None, None)]).unwrap();
    store.crash();
    drop(store);
    config.message_size_max_bytes = 1024;
    let store = MessageStore::open(config, None).unwrap();
    assert_eq!(read_all(&store, "t", 0).unwrap()[0].body.len(), 1500);
    assert!(store.append_blocking(vec![new_message("t", 0, &[b'z'; 1500], None, None)]).is_err());
}

#[test]
fn store_rejects_topics_that_cannot_be_directory_names() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Async), None).unwrap();
    for topic in ["a.b", "../x", "sp ace"] {
        let error = store.append_blocking(vec![new_message(topic, 0, b"x", None, None)]).unwrap_err();
        assert!(matches!(error, Error::TopicNameInvalid { .. }), "{topic}: {error}");
    }
}

#[test]
fn a_queue_rebuilt_after_retention_reopens_without_another_rebuild() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    fill(&store, "m", 120);
    store.remove_expired(SystemTime::now() + Duration::from_secs(73 * 3600)).unwrap();
    let expected: Vec<_> = (0..2).map(|q| bodies(&read_all(&store, "t", q).unwrap())).collect();
    let range = store.queue_range("t", 0);
    assert!(range.min_offset > 0);
    store.close().unwrap();
    drop(store);
    // Force a full rebuild: the rebuilt queues start mid-file, after retention.
    std::fs::write(dir.path().join("consumequeue/t/1").join(format!("{:020}", 48)), b"garbage").unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!((0..2).map(|q| bodies(&read_all(&store, "t", q).unwrap())).collect::<Vec<_>>(), expected);
    assert_eq!(store.queue_range("t", 0).max_offset, range.max_offset);
    store.close().unwrap();
    drop(store);
    let inode = |path: &str| std::fs::metadata(dir.path().join(path)).unwrap().ino();
    let queue_dir = std::fs::read_dir(dir.path().join("consumequeue/t/0")).unwrap().next().unwrap().unwrap().path();
    let queue_file = queue_dir.strip_prefix(dir.path()).unwrap().to_str().unwrap().to_string();
    let before = inode(&queue_file);
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(inode(&queue_file), before, "a clean reopen keeps the queue files (no second rebuild)");
    assert_eq!((0..2).map(|q| bodies(&read_all(&store, "t", q).unwrap())).collect::<Vec<_>>(), expected);
}

#[test]
fn a_recreated_topic_does_not_see_its_deleted_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    store.append_blocking(vec![new_message("t", 0, b"old", None, Some("k"))]).unwrap();
    delete_topic(&store, "t");
    let placed = store.append_blocking(vec![new_message("t", 0, b"new", None, Some("k"))]).unwrap();
    assert_eq!(placed[0].queue_offset, 0, "a re-created topic starts at offset 0");
    assert_eq!(bodies(&store.lookup_key("t", "k", 10).unwrap()), vec!["new".to_string()]);
    store.crash();
    drop(store);
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(bodies(&read_all(&store, "t", 0).unwrap()), vec!["new".to_string()]);
    assert_eq!(bodies(&store.lookup_key("t", "k", 10).unwrap()), vec!["new".to_string()]);
}

#[test]
fn the_next_segment_is_prefaulted_only_as_far_as_the_writer_has_come() {
    const MIB: u64 = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), FlushMode::Async);
    config.segment_size_bytes = 8 * MIB;
    config.segment_prefault_bytes_per_sec_max = 0; // unpaced: only the allowance holds it back
    config.segment_prefault_ahead_bytes_max = MIB;
    let store = MessageStore::open(config, None).unwrap();
    fill(&store, "m", 10); // a few KiB: the allowance is 1 MiB and a little
    let next = dir.path().join("commitlog").join("00000000000008388608.tmp");
    let started = std::time::Instant::now();
    while std::fs::metadata(&next).map_or(0, |m| m.len()) < MIB {
        assert!(started.elapsed() < Duration::from_secs(10), "the next segment's prefault never started");
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    std::thread::sleep(Duration::from_millis(200)); // time to run past the allowance, if it would
    assert_eq!(std::fs::metadata(&next).unwrap().len(), MIB, "the prefault stopped at its allowance");
    assert!(!store.segment_preparation_working(), "a prefault waiting for its allowance is not working");
    // Past the middle of the segment the allowance covers all of the next one: it is prepared
    // and the writer rolls into it.
    let body = vec![b'x'; 800];
    for _ in 0..5 {
        let batch: Vec<_> = (0..1000).map(|i| new_message("t", i % 2, &body, None, None)).collect();
        store.append_blocking(batch).unwrap();
    }
    let started = std::time::Instant::now();
    while next.exists() {
        assert!(started.elapsed() < Duration::from_secs(30), "the next segment was never completed");
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    {
        use std::os::unix::fs::MetadataExt;
        let prepared = std::fs::metadata(next.with_extension("")).expect("the prepared segment is in place");
        assert_eq!(prepared.len(), 8 * MIB);
        assert!(prepared.blocks() * 512 >= 8 * MIB, "prepared, not sparse: {} blocks", prepared.blocks());
    }
    let idle_by = std::time::Instant::now() + Duration::from_secs(5);
    while store.segment_preparation_working() {
        assert!(std::time::Instant::now() < idle_by, "the finished preparation still counts as working");
        std::thread::sleep(Duration::from_millis(10)); // poll interval
    }
    // Appends before the writer rolls grow an allowance nothing is left to use: still idle.
    let batch: Vec<_> = (0..1000).map(|i| new_message("t", i % 2, &body, None, None)).collect();
    store.append_blocking(batch).unwrap();
    assert!(!store.segment_preparation_working(), "idle once the next segment is prepared");
    for _ in 0..4 {
        let batch: Vec<_> = (0..1000).map(|i| new_message("t", i % 2, &body, None, None)).collect();
        store.append_blocking(batch).unwrap();
    }
    assert!(store.commit_log_offsets().1 > 8 * MIB, "the log rolled into the next segment");
    assert_eq!(read_all(&store, "t", 0).unwrap().len(), 5 + 5000);
    // A store closed while a prefault waits for its allowance closes promptly, leaving no
    // half-prepared file.
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        store.close().unwrap();
        drop(store);
        closed_tx.send(()).unwrap();
    });
    closed_rx.recv_timeout(Duration::from_secs(10)).expect("the store closes within 10 s");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("commitlog"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn message_size_limit_fits_the_32_bit_record_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = small_config(dir.path(), FlushMode::Async);
    config.segment_size_bytes = 1 << 32;
    config.message_size_max_bytes = weir_broker::storage::MESSAGE_SIZE_MAX_BYTES_LIMIT + 1;
    let error = config.validate().unwrap_err();
    assert!(matches!(error, Error::ConfigInvalid { field: "message_size_max_bytes", .. }), "{error}");
}

#[test]
fn a_fully_expired_queue_keeps_its_offsets_through_a_full_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    for i in 0..3 {
        store.append_blocking(vec![new_message("old", 0, format!("o{i}").as_bytes(), None, None)]).unwrap();
    }
    fill(&store, "m", 120);
    store.remove_expired(SystemTime::now() + Duration::from_secs(73 * 3600)).unwrap();
    assert_eq!(store.queue_range("old", 0), QueueRange { min_offset: 3, max_offset: 3 }, "every record expired");
    store.close().unwrap();
    drop(store);
    // Force a full rebuild: nothing in the log names queue old/0 any more.
    std::fs::write(dir.path().join("consumequeue/t/1").join(format!("{:020}", 48)), b"garbage").unwrap();
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(store.queue_range("old", 0), QueueRange { min_offset: 3, max_offset: 3 });
    let appended = store.append_blocking(vec![new_message("old", 0, b"o3", None, None)]).unwrap();
    assert_eq!(appended[0].queue_offset, 3, "the next message continues the queue's offsets");
    store.close().unwrap();
    drop(store);
    let store = MessageStore::open(small_config(dir.path(), FlushMode::Sync), None).unwrap();
    assert_eq!(store.queue_range("old", 0), QueueRange { min_offset: 3, max_offset: 4 });
    assert_eq!(bodies(&read_all(&store, "old", 0).unwrap()), ["o3"]);
}
