//! `weir bench ingest`: the HTTP source into an embedded broker (async flush) under an
//! in-process load of NDJSON access-log lines, against a baseline handler that reads and
//! discards the same requests, measured in the same run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_broker::storage::FlushMode;
use weir_broker::{Broker, BrokerConfig, Messaging, TopicConfig};
use weir_connectors::sources::http::{self, Format, HttpRoute, HttpSourceConfig};

#[derive(Args)]
pub struct IngestArgs {
    /// Concurrent client connections (HTTP/1.1 keep-alive).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// NDJSON lines per request.
    #[arg(long, default_value_t = 100)]
    batch_lines: usize,
    /// How long each side (baseline, then Weir) is loaded.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Directory for the broker (default: a fresh directory under the system temp dir).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// What one load run measured.
struct Load {
    requests: u64,
    bytes: u64,
    events: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
    cpu_seconds: f64,
}

pub(super) fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Longest wait of `settle_store`.
const SETTLE_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(120);

/// Waits until the store's background preparation of its next segment, which a preload
/// started (prefaulted at its paced rate, as far ahead as the preload wrote), is done, so a
/// timed phase is charged only for its own work — as `bench storage` syncs the page cache
/// between phases. Returns whether it ended within `SETTLE_WAIT_MAX`.
pub(super) async fn settle_store(store: &weir_broker::storage::MessageStore) -> bool {
    let deadline = std::time::Instant::now() + SETTLE_WAIT_MAX;
    // Idle in three polls in a row: the flag drops for an instant when the preparation
    // parks just as the writer wakes it.
    let mut idle_polls = 0;
    while idle_polls < 3 {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await; // poll of a background flag
        idle_polls = if store.segment_preparation_working() { 0 } else { idle_polls + 1 };
    }
    true
}

/// A request body of `lines` access-log lines of about 300 bytes each.
fn body(lines: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines * 310);
    for i in 0..lines {
        let n = seed * lines + i;
        let line = format!(
            r#"{{"ts":{},"domain":"site{}.example.com","method":"GET","path":"/articles/{}/comments?page={}","status":{},"bytes":{},"request_id":"req-{:016x}","user_agent":"Mozilla/5.0 (X11; Linux x86_64) weir-bench/1.0","remote_addr":"10.{}.{}.{}","protocol":"HTTP/1.1","upstream_ms":{}}}"#,
            1_700_000_000_000u64 + n as u64,
            n % 50,
            n % 10_000,
            n % 7,
            if n.is_multiple_of(17) { 503 } else { 200 },
            500 + n % 9000,
            n,
            n % 256,
            (n / 256) % 256,
            (n / 65536) % 256,
            n % 250
        );
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Loads `address` with keep-alive POSTs for `duration`.
async fn load(address: SocketAddr, args: &IngestArgs, duration: Duration) -> Result<Load> {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..16).map(|seed| body(args.batch_lines, seed)).collect());
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let deadline = started + duration;
    let mut clients = Vec::new();
    for client in 0..args.connections {
        let bodies = bodies.clone();
        let lines = args.batch_lines as u64;
        clients.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            let (mut requests, mut bytes, mut latencies) = (0u64, 0u64, Vec::new());
            let mut buffer = vec![0u8; 4096];
            while Instant::now() < deadline {
                let body = &bodies[(client + requests as usize) % bodies.len()];
                let head = format!(
                    "POST /v1/logs HTTP/1.1\r\nHost: bench\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let sent = Instant::now();
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(body).await?;
                let status = read_response(&mut stream, &mut buffer).await?;
                if status != 200 {
                    bail!("the server answered {status}");
                }
                latencies.push(sent.elapsed().as_micros() as u64);
                requests += 1;
                bytes += body.len() as u64;
            }
            anyhow::Ok((requests, bytes, requests * lines, latencies))
        }));
    }
    let mut total =
        Load { requests: 0, bytes: 0, events: 0, elapsed: Duration::ZERO, latencies_us: Vec::new(), cpu_seconds: 0.0 };
    for client in clients {
        let (requests, bytes, events, latencies) = client.await??;
        total.requests += requests;
        total.bytes += bytes;
        total.events += events;
        total.latencies_us.extend(latencies);
    }
    total.elapsed = started.elapsed();
    total.cpu_seconds = cpu_seconds() - cpu_before;
    total.latencies_us.sort_unstable();
    Ok(total)
}

/// Reads one HTTP/1.1 response (status line, headers, Content-Length body); returns the status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<u16> {
    let mut filled = 0;
    loop {
        if filled == buffer.len() {
            buffer.resize(buffer.len() * 2, 0);
        }
        let read = stream.read(&mut buffer[filled..]).await?;
        if read == 0 {
            bail!("the server closed the connection");
        }
        filled += read;
        let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") else { continue };
        let head = std::str::from_utf8(&buffer[..end]).context("response head is not UTF-8")?;
        let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).context("bad status line")?;
        let length: usize = head
            .lines()
            .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut have = filled - (end + 4);
        while have < length {
            let read = stream.read(&mut buffer[..]).await?;
            if read == 0 {
                bail!("the server closed the connection mid-body");
            }
            have += read;
        }
        return Ok(status);
    }
}

/// The baseline server: reads each request body and discards it.
async fn serve_discard(listener: tokio::net::TcpListener, shutdown: tokio::sync::oneshot::Receiver<()>) {
    let router = axum::Router::new().route(
        "/v1/logs",
        axum::routing::post(|body: axum::body::Bytes| async move { format!("{{\"read\":{}}}\n", body.len()) }),
    );
    let _ = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = shutdown.await;
        })
        .await;
}

pub async fn run(args: IngestArgs, segment_size_bytes: u64) -> Result<()> {
    if args.connections == 0 || args.batch_lines == 0 || args.duration_secs == 0 {
        bail!("--connections, --batch-lines and --duration-secs must be positive");
    }
    let duration = Duration::from_secs(args.duration_secs);
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("weir-bench-ingest-{}", std::process::id())),
    };
    let store_dir = root.join("store");
    if store_dir.exists() {
        bail!("{} already exists; give an empty --dir", store_dir.display());
    }

    // Baseline: the same load against a handler that reads and discards the body.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve_discard(listener, stopped));
    let baseline = load(address, &args, duration).await?;
    let _ = stop.send(());
    let _ = server.await;

    // Weir: the HTTP source into an embedded broker with async flush.
    let mut config = BrokerConfig::new(&store_dir);
    config.store.flush_mode = FlushMode::Async;
    config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(config)?;
    broker.create_topic(TopicConfig::new("access-logs", 8))?;
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let route = HttpRoute {
        path: "/v1/logs".into(),
        topic: "access-logs".into(),
        format: Format::Ndjson,
        tag: Some("{{domain}}".into()),
        key: Some("{{request_id}}".into()),
        timestamp_field: Some("ts".into()),
    };
    let source = HttpSourceConfig::new("bench", "127.0.0.1:0".parse()?, vec![route]);
    let listener = http::bind(&source).await?;
    let address = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, messaging, source, async move {
        let _ = stopped.await;
    }));
    let weir = load(address, &args, duration).await?;
    let _ = stop.send(());
    let _ = server.await;
    let stored: u64 = (0..8).map(|q| broker.queue_range("access-logs", q).max_offset).sum();
    if stored != weir.events {
        bail!("the broker stored {stored} events, the clients had {} acknowledged", weir.events);
    }
    tokio::task::spawn_blocking(move || broker.close()).await??;
    let _ = std::fs::remove_dir_all(&store_dir);
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }

    let mib_per_sec = |load: &Load| load.bytes as f64 / (1 << 20) as f64 / load.elapsed.as_secs_f64();
    let p99_ms = |load: &Load| {
        load.latencies_us.get((load.latencies_us.len().saturating_sub(1) as f64 * 0.99) as usize).copied().unwrap_or(0)
            as f64
            / 1000.0
    };
    let cores = weir.cpu_seconds / weir.elapsed.as_secs_f64();
    let round = |value: f64| (value * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "bench": "ingest",
        "connections": args.connections,
        "batch_lines": args.batch_lines,
        "duration_secs": args.duration_secs,
        "requests": weir.requests,
        "events": weir.events,
        "mib_per_sec": round(mib_per_sec(&weir)),
        "events_per_sec": round(weir.events as f64 / weir.elapsed.as_secs_f64()),
        "request_p99_ms": round(p99_ms(&weir)),
        "cpu_cores_used": round(cores),
        "mib_per_sec_per_core": round(mib_per_sec(&weir) / cores.max(0.01)),
        "baseline_mib_per_sec": round(mib_per_sec(&baseline)),
        "baseline_request_p99_ms": round(p99_ms(&baseline)),
        "ratio": (mib_per_sec(&weir) / mib_per_sec(&baseline) * 10_000.0).round() / 10_000.0,
    });
    println!("{line}");
    Ok(())
}
