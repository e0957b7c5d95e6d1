//! SIGKILL crash test: a child process appends in sync-flush mode and prints every
//! acknowledgement; after `kill -9` at varying points every acknowledged message must be
//! readable, in order, with the right content.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weir_broker::{Broker, BrokerConfig, PullRequest};

const PRODUCERS: u32 = 4;
const SEGMENT_SIZE_BYTES: u64 = 65536;

/// The writer's data directory, opened with the layout it was created with.
fn crash_config(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::new(dir);
    config.store.adopt_existing_layout().unwrap();
    config
}

/// Reads every message of the producer's queue and checks each body against its offset.
async fn verify(broker: &Broker, acked: &BTreeMap<u32, u64>) {
    for producer in 0..PRODUCERS {
        let max = broker.queue_range("crash", producer).max_offset;
        let must_have = acked.get(&producer).map_or(0, |highest| highest + 1);
        assert!(max >= must_have, "producer {producer}: {max} stored, {must_have} acknowledged");
        let mut offset = 0;
        while offset < max {
            let mut request = PullRequest::new("verifier", "crash", producer, offset);
            request.messages_max = 256;
            let result = broker.pull(request).await.unwrap();
            for message in &result.messages {
                let expected = format!(
                    "p{producer}-{}-{}",
                    message.queue_offset,
                    "x".repeat((message.queue_offset % 300) as usize)
                );
                assert_eq!(String::from_utf8_lossy(&message.body), expected, "producer {producer}");
                assert_eq!(message.queue_offset, offset, "dense, in order");
                offset += 1;
            }
            assert!(!result.messages.is_empty(), "queue {producer} readable up to {max}, stuck at {offset}");
        }
    }
}

#[tokio::test]
async fn acknowledged_sync_appends_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: BTreeMap<u32, u64> = BTreeMap::new();
    for (round, kill_after) in [150usize, 420, 60, 700, 333, 1500, 90, 2500].into_iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["debug", "crash-writer", "--producers", &PRODUCERS.to_string()])
            .args(["--segment-size-bytes", &SEGMENT_SIZE_BYTES.to_string(), "--dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = 0;
        let mut record = |line: &str| {
            let fields: Vec<u64> = line.split(' ').skip(1).map(|f| f.parse().unwrap()).collect();
            let [producer, seq, queue_id, queue_offset] = fields[..] else { panic!("bad line {line}") };
            assert_eq!((producer, seq), (queue_id, queue_offset), "each producer owns its queue");
            let highest = acked.entry(producer as u32).or_insert(0);
            *highest = (*highest).max(queue_offset);
        };
        while seen < kill_after {
            let line = lines.next().expect("the writer keeps acknowledging").unwrap();
            record(&line);
            seen += 1;
            assert!(Instant::now() < deadline, "round {round}: too slow");
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Lines printed before the kill are acknowledgements too.
        for line in lines {
            record(&line.unwrap());
        }
        let broker = Broker::open(crash_config(dir.path())).unwrap();
        verify(&broker, &acked).await;
        broker.close().unwrap();
    }
    assert_eq!(acked.len(), PRODUCERS as usize);
}
