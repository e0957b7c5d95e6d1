//! Model-based property test: random appends, reads, clean restarts and crashes that lose
//! the unflushed tail at a random byte, checked against an in-memory model.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;
use weir_broker::filter::TagExpression;
use weir_broker::storage::{FlushMode, MessageStore, ReadLimits};

use super::{new_message, small_config};

#[derive(Clone, Debug)]
enum Op {
    Append { topic: u8, queue: u8, body_len: u16, tag: Option<u8>, batch: u8 },
    Read { topic: u8, queue: u8, start_permille: u16, tag: Option<u8> },
    Restart,
    Crash { cut_permille: u16, loss: Loss },
}

/// How a crash loses the commitlog's unflushed tail.
#[derive(Clone, Copy, Debug)]
enum Loss {
    /// Pages never written: zeros from the cut on.
    Zeros,
    /// Pages half written: garbage from the cut on.
    Garbage,
    /// The file itself cut short (later segment files gone).
    Truncation,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..2, 0u8..3, 0u16..700, proptest::option::of(0u8..3), 1u8..5)
            .prop_map(|(topic, queue, body_len, tag, batch)| Op::Append { topic, queue, body_len, tag, batch }),
        3 => (0u8..2, 0u8..3, 0u16..1000, proptest::option::of(0u8..3))
            .prop_map(|(topic, queue, start_permille, tag)| Op::Read { topic, queue, start_permille, tag }),
        1 => Just(Op::Restart),
        1 => (0u16..=1000, prop_oneof![Just(Loss::Zeros), Just(Loss::Garbage), Just(Loss::Truncation)])
            .prop_map(|(cut_permille, loss)| Op::Crash { cut_permille, loss }),
    ]
}

#[derive(Clone, Debug, PartialEq)]
struct Expected {
    body: Vec<u8>,
    tag: Option<String>,
    physical_offset: u64,
    size_bytes: u32,
}

type Model = BTreeMap<(String, u32), Vec<Expected>>;

fn topic_name(topic: u8) -> String {
    format!("topic-{topic}")
}

fn tag_name(tag: u8) -> String {
    format!("Tag{tag}")
}

/// Reads `[start, max)` of a queue through the store with a tag filter.
fn read(store: &MessageStore, topic: &str, queue: u32, start: u64, filter: &TagExpression) -> Vec<(u64, Vec<u8>)> {
    let mut offset = start;
    let mut found = Vec::new();
    let max = store.queue_range(topic, queue).max_offset;
    while offset < max {
        let read = store
            .read_queue(
                topic,
                queue,
                offset,
                ReadLimits { messages_max: 7, bytes_max: 3000, scan_entries_max: 50 },
                filter,
            )
            .expect("read succeeds");
        assert!(read.next_offset > offset);
        offset = read.next_offset;
        found.extend(read.messages.into_iter().map(|m| (m.queue_offset, m.body.to_vec())));
    }
    found
}

fn verify(store: &MessageStore, model: &Model) {
    for ((topic, queue), expected) in model {
        let range = store.queue_range(topic, *queue);
        assert_eq!(range.max_offset, expected.len() as u64, "{topic}/{queue} length");
        let all = read(store, topic, *queue, 0, &TagExpression::All);
        let bodies: Vec<_> = all.into_iter().map(|(_, body)| body).collect();
        let expected_bodies: Vec<_> = expected.iter().map(|e| e.body.clone()).collect();
        assert_eq!(bodies, expected_bodies, "{topic}/{queue} content");
    }
}

/// Loses every commitlog byte from `cut` on, as an OS crash loses unwritten pages.
fn lose_tail(dir: &Path, cut: u64, segment_size: u64, loss: Loss) {
    for entry in std::fs::read_dir(dir.join("commitlog")).unwrap() {
        let path = entry.unwrap().path();
        let Some(base) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if base + segment_size <= cut {
            continue;
        }
        let from = cut.saturating_sub(base) as usize;
        match loss {
            Loss::Truncation if base >= cut => std::fs::remove_file(&path).unwrap(),
            Loss::Truncation => {
                std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(from as u64).unwrap();
            }
            Loss::Zeros | Loss::Garbage => {
                let mut bytes = std::fs::read(&path).unwrap();
                for (i, byte) in bytes[from..].iter_mut().enumerate() {
                    *byte = match loss {
                        Loss::Garbage => (i as u8).wrapping_mul(31).wrapping_add(7),
                        _ => 0,
                    };
                }
                std::fs::write(&path, &bytes).unwrap();
            }
        }
    }
}

fn run(ops: Vec<Op>, flush_mode: FlushMode) {
    let dir = tempfile::tempdir().unwrap();
    let config = small_config(dir.path(), flush_mode);
    let mut store = MessageStore::open(config.clone(), None).unwrap();
    let mut model = Model::new();
    let mut serial = 0u64;
    for op in ops {
        match op {
            Op::Append { topic, queue, body_len, tag, batch } => {
                let topic = topic_name(topic);
                let tag = tag.map(tag_name);
                let messages: Vec<_> = (0..batch)
                    .map(|_| {
                        serial += 1;
                        let mut body = format!("{serial}:").into_bytes();
                        body.resize(body_len as usize + body.len(), b'a' + (serial % 26) as u8);
                        new_message(&topic, u32::from(queue), &body, tag.as_deref(), Some(&format!("key{serial}")))
                    })
                    .collect();
                let placed = store.append_blocking(messages.clone()).unwrap();
                let queue_model = model.entry((topic, u32::from(queue))).or_default();
                for (message, placed) in messages.into_iter().zip(placed) {
                    assert_eq!(placed.queue_offset, queue_model.len() as u64, "queue offsets are dense");
                    queue_model.push(Expected {
                        body: message.body,
                        tag: tag.clone(),
                        physical_offset: placed.physical_offset,
                        size_bytes: placed.size_bytes,
                    });
                }
            }
            Op::Read { topic, queue, start_permille, tag } => {
                let key = (topic_name(topic), u32::from(queue));
                let Some(expected) = model.get(&key) else {
                    continue;
                };
                let start = expected.len() as u64 * u64::from(start_permille) / 1000;
                let filter = TagExpression::parse(&tag.map(tag_name).unwrap_or_else(|| "*".into())).unwrap();
                let got = read(&store, &key.0, key.1, start, &filter);
                let want: Vec<_> = expected
                    .iter()
                    .enumerate()
                    .skip(start as usize)
                    .filter(|(_, e)| filter.matches_tag(e.tag.as_deref()))
                    .map(|(offset, e)| (offset as u64, e.body.clone()))
                    .collect();
                assert_eq!(got, want, "read {key:?} from {start}");
            }
            Op::Restart => {
                store.close().unwrap();
                drop(store);
                store = MessageStore::open(config.clone(), None).unwrap();
                verify(&store, &model);
            }
            Op::Crash { cut_permille, loss } => {
                store.crash();
                let (_, end, flushed) = store.commit_log_offsets();
                drop(store);
                let cut = flushed + (end - flushed) * u64::from(cut_permille) / 1000;
                if cut < end {
                    lose_tail(dir.path(), cut, config.segment_size_bytes, loss);
                }
                if flush_mode == FlushMode::Sync {
                    assert_eq!(flushed, end, "sync mode acknowledges only flushed appends");
                }
                for messages in model.values_mut() {
                    messages.retain(|e| e.physical_offset + u64::from(e.size_bytes) <= cut);
                }
                store = MessageStore::open(config.clone(), None).unwrap();
                verify(&store, &model);
            }
        }
    }
    verify(&store, &model);
    // Every surviving message is found again by its key.
    for expected in model.values().flatten().take(20) {
        let serial = String::from_utf8_lossy(&expected.body).split(':').next().unwrap().to_string();
        let topics = ["topic-0", "topic-1"];
        let hits: usize = topics.iter().map(|t| store.lookup_key(t, &format!("key{serial}"), 4).unwrap().len()).sum();
        assert_eq!(hits, 1, "key{serial}");
    }
    store.close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn storage_matches_model_async(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops, FlushMode::Async);
    }

    #[test]
    fn storage_matches_model_sync(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FlushMode::Sync);
    }
}
