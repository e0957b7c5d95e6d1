//! `weir bench sink --type mysql|redis`: N JSON rows preloaded into an embedded topic and
//! drained through the real sink task and sink (consumer-group pulls, JSON decoding,
//! batching, transactions or pipelines, offset commits) into a private MariaDB or Redis (or
//! `--url`), against a plain client loop writing the same rows in the same order with the
//! same batch size in the same run: multi-row `INSERT … ON DUPLICATE KEY UPDATE` statements,
//! or pipelined HSETs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, TopicConfig};
use weir_connect::{Sink, SinkTaskConfig, run_sink_task};
use weir_connectors::sinks::mysql::{MySqlMode, MySqlSink, MySqlSinkConfig};
use weir_connectors::sinks::redis::{RedisCommand, RedisSink, RedisSinkConfig};

use super::ingest::cpu_seconds;

#[derive(Args)]
pub struct SinkArgs {
    /// mysql (upserts) or redis (HSET per row).
    #[arg(long = "type")]
    sink_type: String,
    /// Rows written.
    #[arg(long, default_value_t = 200_000)]
    rows: u64,
    /// Rows per batch (sink task batch and baseline statement or pipeline).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Batches in flight at once (the sink's `concurrency`, and the baseline's).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Target server (default: a private MariaDB or Redis started for the run).
    #[arg(long)]
    url: Option<String>,
}

/// Queues of the preloaded topic.
const QUEUES: u32 = 4;

/// Row `id` as JSON, about 130 bytes.
fn row(id: u64) -> serde_json::Value {
    let status = ["paid", "refunded", "pending"][(id % 3) as usize];
    serde_json::json!({
        "id": id,
        "user": format!("user-{:08}", id % 100_000),
        "amount": (id % 10_000) as f64 / 100.0,
        "status": status,
        "ts": 1_764_000_000_000u64 + id,
        "note": "bench row for weir sink",
    })
}

pub async fn run(args: SinkArgs, segment_size_bytes: u64) -> Result<()> {
    if args.rows == 0 || args.batch == 0 || args.batch > weir_connect::sink_task::BATCH_RECORDS_MAX {
        bail!("--rows must be positive and --batch in 1..={}", weir_connect::sink_task::BATCH_RECORDS_MAX);
    }
    // Keep a private server alive for the whole run when no URL is given.
    let redis_server;
    let url = match (args.sink_type.as_str(), &args.url) {
        (_, Some(url)) => url.clone(),
        ("mysql", None) => {
            let server =
                weir_testsvc::mariadb().context("no MariaDB to start (install mariadb-server) and no --url")?;
            let database = server.fresh_database_name("bench");
            let mut conn = mysql_async::Conn::from_url(server.url("")).await?;
            conn.query_drop(format!("CREATE DATABASE `{database}`")).await?;
            conn.disconnect().await?;
            server.url(&database)
        }
        ("redis", None) => {
            redis_server =
                weir_testsvc::redis().context("no redis-server to start (install redis-server) and no --url")?;
            redis_server.url()
        }
        (other, _) => bail!("--type must be mysql or redis, not {other:?}"),
    };
    let rows: Vec<serde_json::Value> = (0..args.rows).map(row).collect();

    let root = std::env::temp_dir().join(format!("weir-bench-sink-{}", std::process::id()));
    let mut config = BrokerConfig::new(root.join("data"));
    config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(config)?;
    broker.create_topic(TopicConfig::new("bench-sink", QUEUES))?;
    for chunk in rows.chunks(weir_broker::SEND_BATCH_MESSAGES_MAX) {
        let messages = chunk.iter().map(|row| Message::new("bench-sink", row.to_string().into_bytes())).collect();
        broker.send_batch(messages).await?;
    }
    let rows = read_order(&broker, rows, args.batch).await?;

    // Whether MariaDB had settled before each phase (see `settle_mysql`); none for Redis.
    let mut settled = true;
    let (baseline, weir, cores) = match args.sink_type.as_str() {
        "mysql" => {
            let columns = "id BIGINT PRIMARY KEY, user VARCHAR(32), amount DOUBLE, status VARCHAR(16), ts BIGINT, note VARCHAR(64)";
            let mut conn = mysql_async::Conn::from_url(url.as_str()).await?;
            conn.query_drop(format!("CREATE TABLE bench_baseline ({columns})")).await?;
            conn.query_drop(format!("CREATE TABLE bench_sink ({columns})")).await?;
            conn.disconnect().await?;
            settled &= settle_mysql(&url).await?;
            let baseline = mysql_baseline(&url, &rows, &args).await?;
            let mut sink_config = MySqlSinkConfig::new(&url, "bench_sink");
            sink_config.mode = MySqlMode::Upsert;
            sink_config.key_columns = vec!["id".into()];
            sink_config.concurrency = args.concurrency;
            sink_config.connections_max = args.concurrency.max(4);
            let mut sink = MySqlSink::connect("bench", sink_config).await?;
            settled &= settle_mysql(&url).await?;
            let (weir, cores) = drain(&broker, &mut sink, &args).await?;
            let mut conn = mysql_async::Conn::from_url(url.as_str()).await?;
            let written: Option<u64> = conn.query_first("SELECT COUNT(*) FROM bench_sink").await?;
            if written != Some(args.rows) {
                bail!("the sink wrote {written:?} rows of {}", args.rows);
            }
            (baseline, weir, cores)
        }
        _ => {
            let baseline = redis_baseline(&url, &rows, &args).await?;
            let mut sink_config = RedisSinkConfig::new(&url, RedisCommand::Hset, "sink:{{id}}");
            sink_config.pipeline_commands_max = args.batch;
            sink_config.concurrency = args.concurrency;
            let mut sink = RedisSink::connect("bench", sink_config).await?;
            let (weir, cores) = drain(&broker, &mut sink, &args).await?;
            let client = redis::Client::open(url.as_str())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            let keys: u64 = redis::cmd("DBSIZE").query_async(&mut conn).await?;
            if keys != 2 * args.rows {
                bail!("redis holds {keys} keys; expected {} (baseline and sink)", 2 * args.rows);
            }
            (baseline, weir, cores)
        }
    };
    tokio::task::spawn_blocking(move || broker.close()).await??;
    let _ = std::fs::remove_dir_all(&root);
    let per_sec = |elapsed: Duration| args.rows as f64 / elapsed.as_secs_f64();
    let line = serde_json::json!({
        "bench": "sink",
        "type": args.sink_type,
        "rows": args.rows,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "rows_per_sec": per_sec(weir).round(),
        "cpu_cores_used": (cores * 100.0).round() / 100.0,
        "baseline_rows_per_sec": per_sec(baseline).round(),
        "ratio": (baseline.as_secs_f64() / weir.as_secs_f64() * 10_000.0).round() / 10_000.0,
        "server_settled": (args.sink_type == "mysql").then_some(settled),
    });
    println!("{line}");
    Ok(())
}

/// `rows` in the order the sink task reads them (as `weir_connect::sink_task`'s gather
/// does: each batch starts at the next queue in turn and takes at most
/// `PULL_MESSAGES_MAX` from a queue before it moves on). The rows go to the queues in turn as
/// they are sent, so the sink writes each batch's keys between the previous batches' (a
/// B-tree insert in the middle of pages, not at the end); the baseline writes them in that
/// order too, into the same key ranges.
async fn read_order(broker: &Broker, mut rows: Vec<serde_json::Value>, batch: usize) -> Result<Vec<serde_json::Value>> {
    let mut by_queue: Vec<std::collections::VecDeque<u64>> = Vec::with_capacity(QUEUES as usize);
    for queue_id in 0..QUEUES {
        let mut ids = std::collections::VecDeque::new();
        let mut offset = 0;
        loop {
            let mut request = weir_broker::PullRequest::new("bench-order", "bench-sink", queue_id, offset);
            request.messages_max = weir_broker::PULL_MESSAGES_MAX;
            let pulled = broker.pull(request).await?;
            if pulled.messages.is_empty() {
                break;
            }
            for message in &pulled.messages {
                let row: serde_json::Value = serde_json::from_slice(&message.body)?;
                ids.push_back(row["id"].as_u64().context("a preloaded row without its id")?);
            }
            offset = pulled.next_offset;
        }
        by_queue.push(ids);
    }
    let mut ordered = Vec::with_capacity(rows.len());
    let mut first_queue = 0;
    while by_queue.iter().any(|ids| !ids.is_empty()) {
        let mut taken = 0;
        while taken < batch && by_queue.iter().any(|ids| !ids.is_empty()) {
            for step in 0..by_queue.len() {
                let ids = &mut by_queue[(first_queue + step) % QUEUES as usize];
                let take = (batch - taken).min(weir_broker::PULL_MESSAGES_MAX).min(ids.len());
                for id in ids.drain(..take) {
                    ordered.push(std::mem::take(&mut rows[id as usize]));
                }
                taken += take;
            }
        }
        first_queue = (first_queue + 1) % QUEUES as usize;
    }
    if ordered.len() != rows.len() || ordered.iter().any(serde_json::Value::is_null) {
        bail!("read {} of the {} preloaded rows back, or one twice", ordered.len(), rows.len());
    }
    Ok(ordered)
}

/// Drains the topic through the sink task; returns the time from start to the last commit
/// and the cores used meanwhile.
async fn drain(broker: &Broker, sink: &mut dyn Sink, args: &SinkArgs) -> Result<(Duration, f64)> {
    let mut config = SinkTaskConfig::new("bench", "bench-sink");
    config.batch_records_max = args.batch;
    config.batch_bytes_max = weir_connect::sink_task::BATCH_BYTES_MAX;
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let (stop, mut stopped) = watch::channel(false);
    let (started, cpu_before) = (Instant::now(), cpu_seconds());
    let task = run_sink_task(messaging, sink, &config, &mut stopped);
    tokio::pin!(task);
    let group = config.group();
    loop {
        tokio::select! {
            outcome = &mut task => bail!("the sink task ended early: {outcome:?}"),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {} // poll the committed offsets
        }
        if broker.group_offsets(&group, "bench-sink").values().sum::<u64>() >= args.rows {
            break;
        }
    }
    let (elapsed, cores) = (started.elapsed(), (cpu_seconds() - cpu_before) / started.elapsed().as_secs_f64());
    stop.send(true).ok();
    task.await?;
    Ok((elapsed, cores))
}

/// Waits until InnoDB has written its dirty pages, so one phase's writes are not flushed
/// during the next one's clock (as `weir bench storage` syncs the page cache between
/// phases): until at most `SETTLED_DIRTY_PAGES_MAX` are left, or until the count has not
/// fallen for 2 s with at most `STALLED_DIRTY_PAGES_MAX` left (purge and statistics keep
/// dirtying a few hundred after a large insert), 30 s at most. Needs the privilege to set
/// `innodb_max_dirty_pages_pct` (the private server gives it); returns whether it settled.
pub(super) async fn settle_mysql(url: &str) -> Result<bool> {
    /// Dirty pages (16 KiB each) a settled server may still hold.
    const SETTLED_DIRTY_PAGES_MAX: u64 = 64;
    /// Dirty pages a server that stopped flushing may hold and count as settled.
    const STALLED_DIRTY_PAGES_MAX: u64 = 1024;
    let mut conn = mysql_async::Conn::from_url(url).await?;
    let previous: Option<f64> = conn.query_first("SELECT @@GLOBAL.innodb_max_dirty_pages_pct").await?;
    if conn.query_drop("SET GLOBAL innodb_max_dirty_pages_pct = 0").await.is_err() {
        conn.disconnect().await?;
        return Ok(false);
    }
    let started = Instant::now();
    let (mut fewest, mut fewest_at) = (u64::MAX, started);
    // The setting is restored whatever the wait ends in (an interrupted run cannot).
    let settled = async {
        loop {
            let dirty: Option<(String, String)> =
                match conn.query_first("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'").await {
                    Ok(dirty) => dirty,
                    Err(error) => break Err(anyhow::Error::from(error)),
                };
            let Some(pages) = dirty.and_then(|(_, pages)| pages.trim().parse::<u64>().ok()) else { break Ok(false) };
            if pages < fewest {
                (fewest, fewest_at) = (pages, Instant::now());
            }
            if pages <= SETTLED_DIRTY_PAGES_MAX
                || (pages <= STALLED_DIRTY_PAGES_MAX && fewest_at.elapsed() >= Duration::from_secs(2))
            {
                break Ok(true);
            }
            if started.elapsed() >= Duration::from_secs(30) {
                break Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // polling a server counter
        }
    }
    .await;
    conn.query_drop(format!("SET GLOBAL innodb_max_dirty_pages_pct = {}", previous.unwrap_or(90.0))).await?;
    conn.disconnect().await?;
    settled
}

/// The same rows as multi-row upserts of `batch` rows from a plain client loop: one
/// connection per lane, kept (with its prepared statement) across batches.
async fn mysql_baseline(url: &str, rows: &[serde_json::Value], args: &SinkArgs) -> Result<Duration> {
    let mut lanes = Vec::with_capacity(args.concurrency);
    for _ in 0..args.concurrency {
        lanes.push(mysql_async::Conn::from_url(url).await?);
    }
    let started = Instant::now();
    let mut chunks = rows.chunks(args.batch);
    loop {
        let mut in_flight = tokio::task::JoinSet::new();
        for chunk in chunks.by_ref().take(lanes.len()) {
            let mut conn = lanes.pop().expect("one lane per chunk taken");
            let mut params = Vec::with_capacity(chunk.len() * 6);
            for row in chunk {
                for name in ["amount", "id", "note", "status", "ts", "user"] {
                    params.push(match &row[name] {
                        serde_json::Value::String(text) => mysql_async::Value::from(text.as_str()),
                        serde_json::Value::Number(n) if n.is_f64() => mysql_async::Value::from(n.as_f64()),
                        other => mysql_async::Value::from(other.as_i64()),
                    });
                }
            }
            let sql = format!(
                "INSERT INTO bench_baseline (amount,id,note,status,ts,user) VALUES {} ON DUPLICATE KEY UPDATE \
                 amount=VALUES(amount),note=VALUES(note),status=VALUES(status),ts=VALUES(ts),user=VALUES(user)",
                vec!["(?,?,?,?,?,?)"; chunk.len()].join(",")
            );
            in_flight.spawn(async move {
                conn.exec_drop(sql, params).await?;
                Ok::<_, mysql_async::Error>(conn)
            });
        }
        if in_flight.is_empty() {
            break;
        }
        while let Some(done) = in_flight.join_next().await {
            lanes.push(done??);
        }
    }
    let elapsed = started.elapsed();
    for conn in lanes {
        conn.disconnect().await?;
    }
    Ok(elapsed)
}

/// The same rows as pipelined HSETs, `batch` commands per pipeline, from a plain client loop.
async fn redis_baseline(url: &str, rows: &[serde_json::Value], args: &SinkArgs) -> Result<Duration> {
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let started = Instant::now();
    let mut chunks = rows.chunks(args.batch);
    loop {
        let mut in_flight = tokio::task::JoinSet::new();
        for chunk in chunks.by_ref().take(args.concurrency) {
            let mut pipeline = redis::pipe();
            for row in chunk {
                let command = pipeline.cmd("HSET").arg(format!("baseline:{}", row["id"]));
                for (name, value) in row.as_object().expect("rows are objects") {
                    match value {
                        serde_json::Value::String(text) => command.arg(name).arg(text.as_str()),
                        other => command.arg(name).arg(other.to_string()),
                    };
                }
            }
            let mut conn = conn.clone();
            in_flight.spawn(async move { pipeline.query_async::<()>(&mut conn).await });
        }
        if in_flight.is_empty() {
            break;
        }
        while let Some(done) = in_flight.join_next().await {
            done??;
        }
    }
    Ok(started.elapsed())
}
