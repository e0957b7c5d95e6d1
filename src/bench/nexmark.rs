//! `weir bench nexmark`: Nexmark events (the `nexmark` crate) as JSON messages in embedded
//! broker topics (`nexmark-person`, `nexmark-auction`, `nexmark-bid`), one Nexmark query run
//! as a streams job from its first read to its last result, against DataFusion running the
//! same query as a bounded batch query over the same events in memory (JSON decoding
//! included).

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
    /// q0 (pass-through), q1 (currency conversion), q2 (selection), q5 (hot items), q7
    /// (highest bid) or q8 (new users).
    #[arg(long, default_value = "q0")]
    query: String,
    /// Events generated (all types; bids are about 92 %).
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// Queues of the events topic.
    #[arg(long, default_value_t = 4)]
    queues: u32,
    /// Where the results go: `blackhole` (a blackhole table, as Nexmark runs its queries:
    /// computed, counted, dropped) or `topic` (JSON messages in an output topic, the path of
    /// `INSERT INTO <topic>`).
    #[arg(long, value_enum, default_value_t = ResultSinkArg::Blackhole)]
    sink: ResultSinkArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ResultSinkArg {
    Blackhole,
    Topic,
}

/// The three event tables, each over its own topic.
const TABLES: [(&str, &str); 3] = [
    (
        "person",
        "CREATE TABLE person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT,
  date_time TIMESTAMP, extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'nexmark-person');",
    ),
    (
        "auction",
        "CREATE TABLE auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT,
  date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra TEXT,
  WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND) WITH (topic = 'nexmark-auction');",
    ),
    (
        "bid",
        "CREATE TABLE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
  date_time TIMESTAMP, extra TEXT, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)
  WITH (topic = 'nexmark-bid');",
    ),
];

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

/// Nexmark q7 (highest bid): the bids with the highest price of their 10 s window. Written
/// as a join of two window relations over `bid`, so "its window" is window membership (the
/// reference query's `BETWEEN window_end - 10 s AND window_end` also takes a bid at exactly
/// the end).
const Q7: &str = "SELECT B.auction, B.price, B.bidder, B.date_time FROM {bids} B
  JOIN (SELECT max(price) AS maxprice, window_start FROM {bids} GROUP BY window_start) B1
  ON B.price = B1.maxprice AND B.window_start = B1.window_start";

/// Nexmark q8 (new users): people who opened an auction in the 10 s window they joined in.
const Q8: &str = "SELECT P.id, P.name, P.starttime FROM
    (SELECT id, name, window_start AS starttime FROM {persons} GROUP BY id, name, window_start) P
  JOIN (SELECT seller, window_start AS starttime FROM {auctions} GROUP BY seller, window_start) A
  ON P.id = A.seller AND P.starttime = A.starttime";

/// A query: the tables it reads, its SQL for the streams job and for the batch baseline,
/// and whether it emits per window.
struct NexmarkQuery {
    tables: Vec<&'static str>,
    streaming: String,
    baseline: String,
    windowed: bool,
}

fn query(name: &str) -> Result<NexmarkQuery> {
    let stateless = |sql: &str| NexmarkQuery {
        tables: vec!["bid"],
        streaming: sql.to_string(),
        baseline: sql.to_string(),
        windowed: false,
    };
    // A table's rows with window_start (ms) of their 10 s tumbling window, for baselines.
    let tumbled = |table: &str, columns: &str| {
        format!("(SELECT {columns}, CAST(date_time AS BIGINT) / 10000 * 10000 AS window_start FROM {table})")
    };
    let tumble = |table: &str| format!("TUMBLE({table}, date_time, INTERVAL '10' SECOND)");
    Ok(match name {
        "q0" => stateless("SELECT auction, bidder, price, date_time, extra FROM bid"),
        "q1" => stateless("SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid"),
        "q2" => stateless("SELECT auction, price FROM bid WHERE auction % 123 = 0"),
        "q5" => {
            let hop = "HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)";
            // Each bid in the five 10 s windows holding its 2 s pane, as window_start (ms).
            let expanded = "(SELECT auction, CAST(date_time AS BIGINT) / 2000 * 2000 - k.i * 2000 AS window_start
               FROM bid CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS k(i))";
            NexmarkQuery {
                tables: vec!["bid"],
                streaming: Q5.replace("{windows}", hop),
                baseline: Q5.replace("{windows}", expanded),
                windowed: true,
            }
        }
        "q7" => NexmarkQuery {
            tables: vec!["bid"],
            streaming: Q7.replace("{bids}", &tumble("bid")),
            baseline: Q7.replace("{bids}", &tumbled("bid", "auction, price, bidder, date_time")),
            windowed: true,
        },
        "q8" => NexmarkQuery {
            tables: vec!["person", "auction"],
            streaming: Q8.replace("{persons}", &tumble("person")).replace("{auctions}", &tumble("auction")),
            baseline: Q8
                .replace("{persons}", &tumbled("person", "id, name"))
                .replace("{auctions}", &tumbled("auction", "seller")),
            windowed: true,
        },
        other => bail!("unknown query {other:?} (q0, q1, q2, q5, q7, q8)"),
    })
}

pub async fn run(args: NexmarkArgs, segment_size_bytes: u64) -> Result<()> {
    let query = query(&args.query)?;
    let root = std::env::temp_dir().join(format!("weir-bench-nexmark-{}", std::process::id()));
    let mut config = BrokerConfig::new(root.join("data"));
    config.store.set_segment_size_bytes(segment_size_bytes);
    let broker = Broker::open(config)?;
    for (table, _) in TABLES {
        broker.create_topic(TopicConfig::new(format!("nexmark-{table}"), args.queues))?;
    }

    // The events, as JSON messages in their type's topic; bodies kept for the baseline.
    let mut bodies: std::collections::BTreeMap<&str, Vec<Vec<u8>>> = Default::default();
    let mut last_ms = 0;
    // `new`, not `default()`: the derived default steps by 0 and repeats the first event.
    for event in nexmark::EventGenerator::new(nexmark::config::NexmarkConfig::default()).take(args.events) {
        let (table, body, time) = match &event {
            nexmark::event::Event::Person(person) => ("person", serde_json::to_vec(person)?, person.date_time),
            nexmark::event::Event::Auction(auction) => ("auction", serde_json::to_vec(auction)?, auction.date_time),
            nexmark::event::Event::Bid(bid) => ("bid", serde_json::to_vec(bid)?, bid.date_time),
        };
        last_ms = last_ms.max(time);
        bodies.entry(table).or_default().push(body);
    }
    for (table, table_bodies) in &bodies {
        let topic = format!("nexmark-{table}");
        for chunk in table_bodies.chunks(weir_broker::SEND_BATCH_MESSAGES_MAX) {
            broker.send_batch(chunk.iter().map(|b| Message::new(&topic, b.clone())).collect()).await?;
        }
    }
    if query.windowed {
        // An event an hour after the last one, in every queue of every table the query reads
        // (sends go round robin), moves the watermark past every window of the run (these
        // events are not in the baseline, and their own windows stay open).
        let later = last_ms + 3_600_000;
        for table in &query.tables {
            let body = serde_json::json!({"id": -1, "seller": -2, "auction": -3, "date_time": later, "expires": later});
            for _ in 0..args.queues {
                broker.send(Message::new(format!("nexmark-{table}"), body.to_string())).await?;
            }
        }
    }
    let events_read: usize = query.tables.iter().map(|t| bodies.get(t).map_or(0, Vec::len)).sum();
    // The preload's background work (the next segment prefaulted, paced) ends before timing.
    let settled = super::ingest::settle_store(broker.store()).await;

    // Baseline: the same query over the same events, decoded and run as one batch query.
    let baseline_started = Instant::now();
    let context = SessionContext::new();
    for table in &query.tables {
        let ddl = TABLES.iter().find(|(name, _)| name == table).map(|(_, ddl)| *ddl).unwrap_or_default();
        let schema = weir_streams::parse_job(&format!("{ddl}\nINSERT INTO out SELECT 1 FROM {table};"))?.tables[0]
            .schema
            .clone();
        let table_bodies: Vec<&[u8]> =
            bodies.get(table).map(|b| b.iter().map(Vec::as_slice).collect()).unwrap_or_default();
        // Like the job, decode only the columns the query names.
        let fields: Vec<_> =
            schema.fields().iter().filter(|f| query.baseline.contains(f.name().as_str())).cloned().collect();
        let schema = Arc::new(weir_streams::datafusion::arrow::datatypes::Schema::new(fields));
        let decoded = weir_streams::decode::decode_json(&schema, &table_bodies)?;
        context.register_table(*table, Arc::new(MemTable::try_new(schema, vec![vec![decoded.batch]])?))?;
    }
    let baseline: Vec<RecordBatch> = context.sql(&query.baseline).await?.collect().await?;
    let baseline_elapsed = baseline_started.elapsed();
    let expected: usize = baseline.iter().map(RecordBatch::num_rows).sum();

    // The streams job, from its first read to its last result in its sink.
    let mut tables: Vec<&str> =
        TABLES.iter().filter(|(name, _)| query.tables.contains(name)).map(|(_, ddl)| *ddl).collect();
    if args.sink == ResultSinkArg::Blackhole {
        tables.push("CREATE TABLE nexmark_out WITH (connector = 'blackhole');");
    }
    let sql = format!("{}\nINSERT INTO nexmark_out {};", tables.join("\n"), query.streaming);
    // The job's defaults, as `weir run` runs a stream job.
    let job_config = weir_streams::JobRunConfig::new("nexmark", sql, root.join("checkpoints"));
    let progress = job_config.progress.clone();
    // Results so far: counted by the blackhole, or held by the output topic.
    let results = |broker: &Broker| match args.sink {
        ResultSinkArg::Blackhole => progress.results_discarded.load(std::sync::atomic::Ordering::Relaxed),
        ResultSinkArg::Topic => held(broker, "nexmark_out"),
    };
    let messaging: Arc<dyn Messaging> = Arc::new(broker.clone());
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let job = tokio::spawn(async move { weir_streams::run_job(messaging, &job_config, &mut stopped).await });
    let deadline = started + Duration::from_secs(600);
    loop {
        let written = results(&broker);
        if written as usize >= expected {
            break;
        }
        if job.is_finished() || Instant::now() > deadline {
            bail!("the job gave {written} of {expected} results");
        }
        tokio::time::sleep(Duration::from_millis(1)).await; // poll interval of the job's result count
    }
    let elapsed = started.elapsed();
    let cores = (cpu_seconds() - cpu_before) / elapsed.as_secs_f64();
    let _ = stop.send(true);
    job.await??;
    // Exactly the baseline's number of results, and no row late or dead-lettered.
    let (written, late, dead) = (results(&broker), held(&broker, "%LATE%nexmark"), held(&broker, "%DLQ%nexmark"));
    if written as usize != expected || late != 0 || dead != 0 {
        bail!("the job gave {written} results (expected {expected}), {late} late rows, {dead} dead letters");
    }
    tokio::task::spawn_blocking(move || broker.close()).await??;
    let _ = std::fs::remove_dir_all(&root);

    let events_per_sec = args.events as f64 / elapsed.as_secs_f64();
    let baseline_events_per_sec = args.events as f64 / baseline_elapsed.as_secs_f64();
    let round = |v: f64| (v * 100.0).round() / 100.0;
    let line = serde_json::json!({
        "bench": "nexmark",
        "query": args.query,
        "events": args.events,
        "events_read": events_read,
        "results": expected,
        "sink": format!("{:?}", args.sink).to_lowercase(),
        "elapsed_s": round(elapsed.as_secs_f64()),
        "events_per_sec": round(events_per_sec),
        "cpu_cores_used": round(cores),
        "events_per_sec_per_core": round(events_per_sec / cores.max(0.01)),
        "baseline": "DataFusion, the same query as one batch over the same events in memory (JSON decoding included)",
        "baseline_events_per_sec": round(baseline_events_per_sec),
        "ratio": round(events_per_sec / baseline_events_per_sec),
        "store_settled": settled,
    });
    println!("{line}");
    Ok(())
}

/// Messages `topic` holds over all its queues (0 when it does not exist).
fn held(broker: &Broker, topic: &str) -> u64 {
    broker.topic(topic).map_or(0, |t| (0..t.queue_count).map(|q| broker.queue_range(topic, q).max_offset).sum())
}
