//! `weir bench …`: benchmarks as commands, each printing one JSON line that includes a
//! baseline measured in the same run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use weir_broker::storage::FlushMode;
use weir_broker::{Broker, BrokerConfig, Message, PullRequest, TopicConfig};

mod cdc;
mod ingest;
mod nexmark;
mod sink;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Write N messages through the embedded API with P producers, then read them back.
    Storage(StorageArgs),
    /// NDJSON over HTTP into the broker through the HTTP source, against a discard baseline.
    Ingest(ingest::IngestArgs),
    /// A Nexmark query as a streams job over an embedded topic, against DataFusion in batch.
    Nexmark(nexmark::NexmarkArgs),
    /// N JSON rows drained through the MySQL or Redis sink, against a plain client loop.
    Sink(sink::SinkArgs),
    /// N rows inserted into MySQL, streamed and snapshotted by the CDC source, against a
    /// plain binlog client.
    Cdc(cdc::CdcArgs),
}

#[derive(Args)]
pub struct StorageArgs {
    /// Messages to write.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Body size of each message in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Concurrent producers.
    #[arg(long, default_value_t = 64)]
    producers: u64,
    /// Messages per send call (1 = one `send` per message).
    #[arg(long, default_value_t = 1)]
    batch: u64,
    /// async or sync.
    #[arg(long, default_value = "async")]
    flush: String,
    /// Async mode: the store's flush interval (and the baseline's).
    #[arg(long, default_value_t = 500)]
    flush_interval_ms: u64,
    /// Queues of the benchmark topic.
    #[arg(long, default_value_t = 8)]
    queues: u32,
    /// Directory to write in (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs a benchmark; its stores get `segment_size_bytes` segments.
pub async fn run(command: BenchCommand, segment_size_bytes: u64) -> Result<()> {
    match command {
        BenchCommand::Storage(args) => storage(args, segment_size_bytes).await,
        BenchCommand::Ingest(args) => ingest::run(args, segment_size_bytes).await,
        BenchCommand::Nexmark(args) => nexmark::run(args, segment_size_bytes).await,
        BenchCommand::Sink(args) => sink::run(args, segment_size_bytes).await,
        BenchCommand::Cdc(args) => cdc::run(args, segment_size_bytes).await,
    }
}

async fn storage(args: StorageArgs, segment_size_bytes: u64) -> Result<()> {
    let flush_mode = match args.flush.as_str() {
        "async" => FlushMode::Async,
        "sync" => FlushMode::Sync,
        other => bail!("--flush must be async or sync, not {other:?}"),
    };
    if args.messages == 0 || args.producers == 0 || args.batch == 0 || args.size == 0 {
        bail!("--messages, --producers, --batch and --size must be positive");
    }
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("weir-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let store_dir = root.join("store");
    if store_dir.exists() {
        bail!("{} already exists; give an empty --dir", store_dir.display());
    }
    let total_bytes = args.messages * args.size as u64;
    let flush_interval = Duration::from_millis(args.flush_interval_ms.max(1));
    let group_bytes = (args.producers * args.batch) as usize * args.size;
    settle_page_cache();
    let baseline_dir = root.clone();
    let baseline = tokio::task::spawn_blocking(move || {
        baseline_write(&baseline_dir, total_bytes, flush_mode, group_bytes, flush_interval)
    })
    .await??;

    settle_page_cache();
    let mut config = BrokerConfig::new(&store_dir);
    config.store.flush_mode = flush_mode;
    config.store.flush_interval_ms = args.flush_interval_ms;
    config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(config)?;
    broker.create_topic(TopicConfig::new("bench", args.queues))?;
    let body = vec![b'w'; args.size];
    let per_producer = args.messages / args.producers;
    let extra = args.messages % args.producers;
    let started = Instant::now();
    let mut producers = Vec::new();
    for producer in 0..args.producers {
        let broker = broker.clone();
        let body = body.clone();
        let count = per_producer + u64::from(producer < extra);
        let batch = args.batch;
        producers.push(tokio::spawn(async move {
            let mut latencies_us = Vec::with_capacity((count / batch + 1) as usize);
            let mut sent = 0;
            while sent < count {
                let n = batch.min(count - sent);
                let messages: Vec<Message> = (0..n).map(|_| Message::new("bench", body.clone())).collect();
                let call = Instant::now();
                broker.send_batch(messages).await?;
                latencies_us.push(call.elapsed().as_micros() as u64);
                sent += n;
            }
            anyhow::Ok(latencies_us)
        }));
    }
    let mut latencies_us = Vec::new();
    for producer in producers {
        latencies_us.extend(producer.await??);
    }
    let write_elapsed = started.elapsed();
    latencies_us.sort_unstable();
    let percentile = |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p) as usize];

    let started = Instant::now();
    let mut readers = Vec::new();
    for queue_id in 0..args.queues {
        let broker = broker.clone();
        let size = args.size;
        readers.push(tokio::spawn(async move {
            let max = broker.queue_range("bench", queue_id).max_offset;
            let (mut offset, mut count) = (0, 0u64);
            while offset < max {
                let mut request = PullRequest::new("bench-reader", "bench", queue_id, offset);
                request.messages_max = weir_broker::PULL_MESSAGES_MAX;
                let result = broker.pull(request).await?;
                if let Some(bad) = result.messages.iter().find(|m| m.body.len() != size) {
                    bail!("read back a {}-byte body at offset {}", bad.body.len(), bad.queue_offset);
                }
                count += result.messages.len() as u64;
                offset = result.next_offset;
            }
            anyhow::Ok(count)
        }));
    }
    let mut read = 0;
    for reader in readers {
        read += reader.await??;
    }
    let read_elapsed = started.elapsed();
    if read != args.messages {
        bail!("read back {read} messages, wrote {}", args.messages);
    }
    broker.close()?;
    drop(broker);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        let _ = std::fs::remove_dir_all(&store_dir);
    }

    let mb_per_sec = total_bytes as f64 / 1e6 / write_elapsed.as_secs_f64();
    let line = serde_json::json!({
        "bench": "storage",
        "messages": args.messages,
        "size_bytes": args.size,
        "producers": args.producers,
        "batch": args.batch,
        "queues": args.queues,
        "flush": args.flush,
        "write_s": round(write_elapsed.as_secs_f64()),
        "msgs_per_sec": round(args.messages as f64 / write_elapsed.as_secs_f64()),
        "mb_per_sec": round(mb_per_sec),
        "append_p50_us": percentile(0.50),
        "append_p99_us": percentile(0.99),
        "consume_msgs_per_sec": round(read as f64 / read_elapsed.as_secs_f64()),
        "baseline_mb_per_sec": round(baseline.mb_per_sec),
        "baseline": baseline.description,
        "ratio": (mb_per_sec / baseline.mb_per_sec * 10_000.0).round() / 10_000.0,
    });
    println!("{line}");
    Ok(())
}

fn round(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

struct Baseline {
    mb_per_sec: f64,
    description: String,
}

/// A plain sequential write of the same number of bytes to a fresh file in the same
/// directory, with the same flush policy: async = a second thread fdatasyncs every
/// `flush_interval` (the store's) while the writer goes on; sync = fdatasync after
/// every `group_bytes` (one group commit of every producer's batch), which is the best case
/// of the store's group commit.
fn baseline_write(
    dir: &Path,
    total_bytes: u64,
    flush_mode: FlushMode,
    group_bytes: usize,
    flush_interval: Duration,
) -> Result<Baseline> {
    let path = dir.join("baseline.dat");
    let mut file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    // Written and synced before the clock, as the store's first segment is prefaulted before
    // its run: both phases overwrite blocks that are already allocated.
    let zeros = vec![0u8; 1 << 20];
    let mut prepared = 0u64;
    while prepared < total_bytes {
        let n = (total_bytes - prepared).min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        prepared += n as u64;
    }
    file.sync_all()?;
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0))?;
    let chunk_bytes = match flush_mode {
        FlushMode::Async => 1 << 20,
        FlushMode::Sync => group_bytes,
    };
    let chunk = vec![b'b'; chunk_bytes];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flusher = match flush_mode {
        FlushMode::Sync => None,
        FlushMode::Async => {
            let file = file.try_clone()?;
            let done = done.clone();
            Some(std::thread::spawn(move || {
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::sleep(flush_interval);
                    let _ = file.sync_data();
                }
            }))
        }
    };
    let started = Instant::now();
    let mut written = 0u64;
    while written < total_bytes {
        let n = (total_bytes - written).min(chunk_bytes as u64) as usize;
        file.write_all(&chunk[..n])?;
        written += n as u64;
        if flush_mode == FlushMode::Sync {
            file.sync_data()?;
        }
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::Release);
    if let Some(flusher) = flusher {
        let _ = flusher.join();
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    let description = match flush_mode {
        FlushMode::Async => format!(
            "write(2) 1 MiB chunks over a preallocated file, another thread fdatasyncs every {} ms",
            flush_interval.as_millis()
        ),
        FlushMode::Sync => format!("write(2) {group_bytes}-byte chunks over a preallocated file, fdatasync after each"),
    };
    Ok(Baseline { mb_per_sec: total_bytes as f64 / 1e6 / elapsed.as_secs_f64(), description })
}

/// Writes back every dirty page of the machine, so one phase's writeback does not land in
/// the next phase's measurement.
fn settle_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
}
