//! `weir bench nexmark`: Nexmark events (the `nexmark` crate) as JSON messages in an
//! embedded broker topic (tagged person / auction / bid), one Nexmark query run as a streams
//! job from its first read to its last result, against DataFusion running the same query
//! as a bounded batch query over the same events in memory (JSON decoding included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Args;
use weir_broker::{Broker, BrokerConfig, Message, Messaging, TopicConfig};
use weir_streams::datafusion::arrow::record_batch::RecordBatch;
use weir_streams::datafusion::datasource::MemTable;
use weir_streams::datafusion::prelude::SessionContext;

use super::ingest::cpu_seconds;

#[derive(Args)]
pub struct NexmarkArgs {
    /// q0 (pass-through), q1 (currency conversion), q2 (selection) or q5 (hot items). q7 and
    /// q8 need interval joins, which the streams engine does not run yet.
    #[arg(long, default_value = "q0")]
    query: String,
    /// Events generated (all types; bids are about 92 %).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Queues of the events topic.
    #[arg(long, default_value_t = 4)]
    queues: u32,
}

const TABLE: &str = "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
  date_time TIMESTAMP, extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'nexmark', tag = 'bid');";

/// Nexmark q5 (hot items): per 10 s window sliding by 2 s, the auctions with the most bids.
/// `{windows}` is the windowed bids relation: `HOP(…)` for the streams job, the bids
/// expanded into their five windows for the batch baseline.
const Q5: &str = "SELECT AuctionBids.auction, AuctionBids.num FROM (
    SELECT auction, count(*) AS num, window_start AS starttime FROM {windows} GROUP BY auction, window_start
  ) AS AuctionBids
  JOIN (
    SELECT max(CountBids.num) AS maxn, CountBids.starttime FROM (
      SELECT count(*) AS num, window_start AS starttime FROM {windows} GROUP BY auction, window_start
    ) AS CountBids GROUP BY CountBids.starttime
  ) AS MaxBids
  ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.num >= MaxBids.maxn";

/// The query as the streams job runs it (over table `bid`) and as the baseline does.
fn queries(query: &str) -> Result<(String, String)> {
    let same = |sql: &str| (sql.to_string(), sql.to_string());
    Ok(match query {
        "q0" => same("SELECT auction, bidder, price, date_time, extra FROM bid"),
        "q1" => same("SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid"),
        "q2" => same("SELECT auction, price FROM bid WHERE auction % 123 = 0"),
        "q5" => {
            let hop = "HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)";
            // Each bid in the five 10 s windows holding its 2 s pane, as window_start (ms).
            let expanded = "(SELECT auction, CAST(date_time AS BIGINT) / 2000 * 2000 - k.i * 2000 AS window_start
               FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(i))";
            (Q5.replace("{windows}", hop), Q5.replace("{windows}", expanded))
        }
        "q7" | "q8" => {
            bail!("{query} needs an interval join of a stream with a windowed aggregate, not supported yet")
        }
        other => bail!("unknown query {other:?} (q0, q1, q2, q5)"),
    })
}

pub async fn run(args: NexmarkArgs, segment_size_bytes: u64) -> Result<()> {
    let (streaming, batch_query) = queries(&args.query)?;
    let windowed = args.query == "q5";
    let root = std::env::temp_dir().join(format!("weir-bench-nexmark-{}", std::process::id()));
    let mut config = BrokerConfig::new(root.join("data"));
    config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(config)?;
    broker.create_topic(TopicConfig::new("nexmark", args.queues))?;

    // The events, as JSON messages tagged with their type.
    let mut bids = Vec::new();
    let mut batch = Vec::with_capacity(weir_broker::SEND_BATCH_MESSAGES_MAX);
    // `new`, not `default()`: the derived default steps by 0 and repeats the first event.
    for event in nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default()).take(args.events) {
        let (tag, body) = match &event {
            nexmark::event::Event::Person(person) => ("person", serde_json::to_vec(person)?),
            nexmark::event::Event::Auction(auction) => ("auction", serde_json::to_vec(auction)?),
            nexmark::event::Event::Bid(bid) => ("bid", serde_json::to_vec(bid)?),
        };
        if tag == "bid" {
            bids.push(body.clone());
        }
        batch.push(Message::new("nexmark", body).with_tag(tag));
        if batch.len() == weir_broker::SEND_BATCH_MESSAGES_MAX {
            broker.send_batch(std::mem::take(&mut batch)).await?;
        }
    }
    if windowed {
        // A bid an hour after the last one, in every queue (sends go round robin), moves the
        // watermark past every window of the run (they are not in the baseline, and their
        // own windows stay open).
        let last = bids.last().and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok());
        let last_ms = last.and_then(|b| b["date_time"].as_u64()).unwrap_or(0);
        let body = serde_json::json!({"auction": 0, "bidder": 0, "price": 0, "channel": "", "url": "",
            "date_time": last_ms + 3_600_000, "extra": ""});
        if !batch.is_empty() {
            broker.send_batch(std::mem::take(&mut batch)).await?;
        }
        for _ in 0..args.queues {
            broker.send(Message::new("nexmark", body.to_string()).with_tag("bid")).await?;
        }
    }
    if !batch.is_empty() {
        broker.send_batch(batch).await?;
    }

    // Baseline: the same query over the same bids, decoded and run as one batch query.
    let baseline_started = Instant::now();
    let schema =
        weir_streams::parse_job(&format!("{TABLE}\nINSERT INTO out SELECT 1 FROM bid;"))?.tables[0].schema.clone();
    let bodies: Vec<&[u8]> = bids.iter().map(Vec::as_slice).collect();
    let decoded = weir_streams::decode::decode_json(&schema, &bodies)?;
    let context = SessionContext::new();
    context.register_table("bid", Arc::new(MemTable::try_new(schema, vec![vec![decoded.batch]])?))?;
    let baseline: Vec<RecordBatch> = context.sql(&batch_query).await?.collect().await?;
    let baseline_elapsed = baseline_started.elapsed();
    let expected: usize = baseline.iter().map(RecordBatch::num_rows).sum();

    // The streams job, from its first read to its last result in the output topic.
    let sql = format!("{TABLE}\nINSERT INTO nexmark_out {streaming};");
    let mut job_config = weir_streams::JobRunConfig::new("nexmark", sql, root.join("checkpoints"));
    job_config.checkpoint_interval = Duration::from_secs(1);
    job_config.idle_wait = Duration::from_millis(1);
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let job = tokio::spawn(async move { weir_streams::run_job(messaging, &job_config, &mut stopped).await });
    let deadline = started + Duration::from_secs(600);
    loop {
        let mut written = 0;
        if let Some(topic) = broker.topic("nexmark_out") {
            for queue_id in 0..topic.queue_count {
                written += broker.queue_range("nexmark_out", queue_id).max_offset;
            }
        }
        if written as usize >= expected {
            break;
        }
        if job.is_finished() || Instant::now() > deadline {
            bail!("the job wrote {written} of {expected} results");
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // poll interval of the output topic
    }
    let elapsed = started.elapsed();
    let cores = (cpu_seconds() - cpu_before) / elapsed.as_secs_f64();
    let _ = stop.send(true);
    job.await??;
    tokio::task::spawn_blocking(move || broker.close()).await??;
    let _ = std::fs::remove_dir_all(&root);

    let events_per_sec = args.events as f64 / elapsed.as_secs_f64();
    let baseline_events_per_sec = args.events as f64 / baseline_elapsed.as_secs_f64();
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "bench": "nexmark",
        "query": args.query,
        "events": args.events,
        "bids": bids.len(),
        "results": expected,
        "elapsed_s": round(elapsed.as_secs_f64()),
        "events_per_sec": round(events_per_sec),
        "cpu_cores_used": round(cores),
        "events_per_sec_per_core": round(events_per_sec / cores.max(0.01)),
        "baseline": "DataFusion, the same query as one batch over the same bids in memory (JSON decoding included)",
        "baseline_events_per_sec": round(baseline_events_per_sec),
        "ratio": round(events_per_sec / baseline_events_per_sec),
    });
    println!("{line}");
    Ok(())
}
