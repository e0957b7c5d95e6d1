//! `weir bench cdc`: N rows of about 600 bytes inserted into a MySQL/MariaDB table (a private
//! MariaDB, or `--url`), then the `mysql_cdc` source streaming their binlog events into an
//! embedded topic through the real source task, and snapshotting the same table into another
//! topic, against a plain mysql_async binlog client that reads the same events and discards
//! them, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Messaging, TopicConfig};
use weir_connect::{FilePositionStore, Position, PositionStore, SourceTaskConfig, run_source_task};
use weir_connectors::sources::mysql_cdc::{MySqlCdcConfig, MySqlCdcSource, SnapshotMode, rotate_file_name};

use super::ingest::cpu_seconds;

#[derive(Args)]
pub struct CdcArgs {
    /// Rows inserted, streamed and snapshotted.
    #[arg(long, default_value_t = 100_000)]
    rows: u64,
    /// Server URL without a database (default: a private MariaDB started for the run).
    #[arg(long)]
    url: Option<String>,
}

/// Rows per INSERT statement (and transaction).
const INSERT_ROWS: u64 = 1000;

pub async fn run(args: CdcArgs, segment_size_bytes: u64) -> Result<()> {
    if args.rows == 0 {
        bail!("--rows must be positive");
    }
    let server_url = match &args.url {
        Some(url) => url.trim_end_matches('/').to_string() + "/",
        None => weir_testsvc::mariadb().context("no MariaDB to start (install mariadb-server) and no --url")?.url(""),
    };
    let database = format!("weir_bench_cdc_{}", std::process::id());
    let mut conn = mysql_async::Conn::from_url(server_url.as_str()).await?;
    conn.query_drop(format!("CREATE DATABASE `{database}`")).await?;
    conn.query_drop(format!(
        "CREATE TABLE `{database}`.rows_600 (id BIGINT PRIMARY KEY, customer VARCHAR(64), email VARCHAR(128), \
         address VARCHAR(300), note VARCHAR(300), amount DECIMAL(12,2), quantity INT, created DATETIME(6))"
    ))
    .await?;
    let start = master_status(&mut conn).await?;
    // About 600 bytes of column data per row: 8 + 19 + ~21 + ~270 + ~261 + 6 + 4 + 8.
    let filler = "x".repeat(250);
    for first in (0..args.rows).step_by(INSERT_ROWS as usize) {
        let last = (first + INSERT_ROWS).min(args.rows);
        let values: Vec<String> = (first..last)
            .map(|id| {
                format!(
                    "({id}, 'customer-{id:010}', 'user{id}@example.com', '{id} Long Street, {filler}', 'note {id} {filler}', {}.{:02}, {}, '2026-11-30 12:00:00.{:06}')",
                    id % 100_000,
                    id % 100,
                    id % 50,
                    id % 1_000_000
                )
            })
            .collect();
        conn.query_drop(format!("INSERT INTO `{database}`.rows_600 VALUES {}", values.join(","))).await?;
    }
    let end = master_status(&mut conn).await?;

    // Each timed phase starts with the inserts' dirty pages written (see `settle_mysql`).
    let mut settled = super::sink::settle_mysql(&server_url).await?;
    // Baseline: a plain binlog client reading the same events and discarding them.
    let baseline = read_binlog_raw(&server_url, &start, &end).await?;

    let root = std::env::temp_dir().join(format!("weir-bench-cdc-{}", std::process::id()));
    let mut broker_config = BrokerConfig::new(root.join("data"));
    broker_config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(broker_config)?;
    for topic in ["bench_stream", "bench_snapshot", "cdc_heartbeats", "cdc_schema_changes"] {
        broker.create_topic(TopicConfig::new(topic, 4))?;
    }
    let positions = FilePositionStore::open(root.join("positions.json"))?;
    let mut config = MySqlCdcConfig::new(&server_url);
    config.include = vec![format!("{database}\\.rows_600")];
    config.server_id = Some(5999);
    // Streaming: from the position before the inserts.
    config.topic = "bench_stream".into();
    config.snapshot = SnapshotMode::Never;
    let position: Position = serde_json::json!({"file": start.0, "pos": start.1, "skip_rows": 0});
    positions.save("bench-stream", Some(&position)).await?;
    settled &= super::sink::settle_mysql(&server_url).await?;
    let (streaming, cores) =
        drain(&broker, &positions, "bench-stream", config.clone(), "bench_stream", args.rows).await?;
    // Snapshot: the same table, read in primary-key chunks.
    config.topic = "bench_snapshot".into();
    config.snapshot = SnapshotMode::Initial;
    settled &= super::sink::settle_mysql(&server_url).await?;
    let (snapshot, _) = drain(&broker, &positions, "bench-snapshot", config, "bench_snapshot", args.rows).await?;

    tokio::task::spawn_blocking(move || broker.close()).await??;
    let _ = std::fs::remove_dir_all(&root);
    conn.query_drop(format!("DROP DATABASE `{database}`")).await?;
    conn.disconnect().await?;
    let per_sec = |elapsed: Duration| (args.rows as f64 / elapsed.as_secs_f64()).round();
    let line = serde_json::json!({
        "bench": "cdc",
        "rows": args.rows,
        "rows_per_sec": per_sec(streaming),
        "cpu_cores_used": (cores * 100.0).round() / 100.0,
        "snapshot_rows_per_sec": per_sec(snapshot),
        "baseline_rows_per_sec": per_sec(baseline),
        "ratio": (baseline.as_secs_f64() / streaming.as_secs_f64() * 10_000.0).round() / 10_000.0,
        "server_settled": settled,
    });
    println!("{line}");
    Ok(())
}

async fn master_status(conn: &mut mysql_async::Conn) -> Result<(String, u64)> {
    let row: Option<mysql_async::Row> = conn.query_first("SHOW MASTER STATUS").await?;
    let row = row.context("SHOW MASTER STATUS is empty: is log_bin on?")?;
    Ok((row.get::<String, _>(0).unwrap_or_default(), row.get::<u64, _>(1).unwrap_or(4)))
}

/// Reads the binlog from `start` to `end` with a bare mysql_async binlog client, decoding each
/// event's header and discarding it.
async fn read_binlog_raw(url: &str, start: &(String, u64), end: &(String, u64)) -> Result<Duration> {
    use futures_util_lite::next;
    let conn = mysql_async::Conn::from_url(url).await?;
    let started = Instant::now();
    let request = mysql_async::BinlogStreamRequest::new(5998).with_filename(start.0.as_bytes()).with_pos(start.1);
    let mut stream = conn.get_binlog_stream(request).await?;
    let mut file = start.0.clone();
    loop {
        let Some(event) = next(&mut stream).await else { bail!("the binlog stream ended early") };
        let event = event?;
        if let Ok(Some(mysql_async::binlog::events::EventData::RotateEvent(rotate))) = event.read_data() {
            file = rotate_file_name(event.header().event_size(), rotate.name_raw(), true);
        }
        if file == end.0 && u64::from(event.header().log_pos()) >= end.1 {
            break;
        }
    }
    let elapsed = started.elapsed();
    let _ = stream.close().await;
    Ok(elapsed)
}

/// `poll_next` without a futures dependency.
mod futures_util_lite {
    use std::pin::Pin;

    use futures_core::Stream;

    pub async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
        std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
    }
}

/// Runs the source task until `topic` holds `rows` messages; returns the time and cores used.
async fn drain(
    broker: &Broker,
    positions: &FilePositionStore,
    connector: &str,
    config: MySqlCdcConfig,
    topic: &str,
    rows: u64,
) -> Result<(Duration, f64)> {
    let mut source = MySqlCdcSource::new(connector, config)?;
    // The worker's defaults, as a pipeline without a `batch` section runs it.
    let task = SourceTaskConfig::new(connector);
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let (stop, mut stopped) = watch::channel(false);
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let run = run_source_task(messaging, &mut source, positions, &task, &mut stopped);
    tokio::pin!(run);
    let held = || (0..4).map(|queue_id| broker.queue_range(topic, queue_id).max_offset).sum::<u64>();
    loop {
        tokio::select! {
            outcome = &mut run => bail!("the source task ended early: {outcome:?}"),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {} // poll the topic's size
        }
        if held() >= rows {
            break;
        }
    }
    let (elapsed, cores) = (started.elapsed(), (cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64());
    stop.send(true).ok();
    run.await?;
    // Every row once: as many distinct keys (primary keys) as rows, and no more messages.
    let mut keys = std::collections::HashSet::new();
    let mut messages = 0u64;
    for queue_id in 0..4 {
        let mut offset = 0;
        loop {
            let mut request = weir_broker::PullRequest::new("bench-check", topic, queue_id, offset);
            request.messages_max = weir_broker::PULL_MESSAGES_MAX;
            let pulled = broker.pull(request).await?;
            if pulled.messages.is_empty() {
                break;
            }
            messages += pulled.messages.len() as u64;
            keys.extend(pulled.messages.into_iter().filter_map(|m| m.keys.into_iter().next().map(String::from)));
            offset = pulled.next_offset;
        }
    }
    if messages != rows || keys.len() as u64 != rows {
        bail!("{topic} holds {messages} messages with {} distinct keys; expected {rows} rows once each", keys.len());
    }
    Ok((elapsed, cores))
}
