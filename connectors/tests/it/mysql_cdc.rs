//! The MySQL CDC source against a private MariaDB: snapshot and streaming of every column
//! type, random changes across a clean restart and an abrupt stop, DDL mid-stream — the
//! change log replayed by the MySQL sink's CDC mode into a second database yields the same
//! table — a snapshot and a stream whose connections are killed part way, and the errors for wrong
//! credentials and a server without a binary log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use tokio::sync::watch;
use weir_broker::{Broker, BrokerConfig, Messaging, TopicConfig};
use weir_connect::{FilePositionStore, Source, SourceTaskConfig, run_sink_task, run_source_task};
use weir_connectors::sinks::mysql::{MySqlMode, MySqlSink, MySqlSinkConfig};
use weir_connectors::sources::mysql_cdc::value::{Column, Origin, to_json};
use weir_connectors::sources::mysql_cdc::{MySqlCdcConfig, MySqlCdcSource};

use crate::support::runtime;

/// Every column type the source maps.
const COLUMNS: &str = "id INT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED, si SMALLINT, mu MEDIUMINT UNSIGNED,
  bi BIGINT, bu BIGINT UNSIGNED, de DECIMAL(12,3), fl FLOAT, db DOUBLE, dt DATE, dtt DATETIME(3),
  ts TIMESTAMP(6) NULL DEFAULT NULL, tm TIME(6), yr YEAR, ch CHAR(4), vc VARCHAR(20), tx TEXT, {binary},
  bt1 BIT(1), bt BIT(12), en ENUM('a','b','c'), st SET('x','y','z'), js JSON";

/// The inserted columns, before and after `vc` is renamed to `vc2`.
const NAMES: &str =
    "id, ti, tu, si, mu, bi, bu, de, fl, db, dt, dtt, ts, tm, yr, ch, vc, tx, bl, vb, bt1, bt, en, st, js";

fn create_table(binary: &str) -> String {
    format!("CREATE TABLE everything ({})", COLUMNS.replace("{binary}", binary))
}

/// Row `n`'s values (version `v`), as SQL literals in `NAMES` order.
fn row_sql(n: u32, v: u32) -> String {
    let nullable = |text: String| if (n + v).is_multiple_of(5) { "NULL".to_string() } else { text };
    let values = [
        n.to_string(),
        ((n as i64 % 256) - 128).to_string(),
        (255 - (n + v) % 256).to_string(),
        (-(n as i64) * 3).to_string(),
        (16_777_215 - n).to_string(),
        (-(n as i64) * 1_000_000_007).to_string(),
        (u64::MAX - u64::from(n + v)).to_string(),
        nullable(format!("'{}.{:03}'", n * 7 + v, n % 1000)),
        format!("{}.5", n + v),
        (n as f64 * -1.5 - 0.25).to_string(),
        format!("'2026-{:02}-{:02}'", n % 12 + 1, n % 28 + 1),
        format!("'2026-01-02 03:04:{:02}.{:03}'", (n + v) % 60, n % 1000),
        nullable(format!("'2026-11-30 12:00:{:02}.{:06}'", n % 60, n * 13 % 1_000_000)),
        format!("'-{}:03:04.5'", n % 800),
        (1901 + n % 254).to_string(),
        format!("'c{}'", n % 100),
        format!("'vé{n}-{v}'"),
        nullable(format!("'{}'", "long text ".repeat((n % 5) as usize + 1))),
        format!("X'00FF{:02X}{:02X}'", n % 256, v % 256),
        format!("X'{:02X}00'", (n * 3) % 256),
        (n % 2).to_string(),
        ((n * 37 + v) % 4096).to_string(),
        format!("'{}'", ["a", "b", "c"][(n % 3) as usize]),
        format!("'{}'", ["", "x", "y,z", "x,y,z"][((n + v) % 4) as usize]),
        format!("'{{\"n\": {n}, \"v\": [{v}, \"é\"], \"o\": {{\"k\": null}}}}'"),
    ];
    format!("({})", values.join(", "))
}

/// Creates the source and replica databases, each with the same `everything` table.
async fn create_source_and_replica(server: &weir_testsvc::MariaDb, database: &str, replica: &str) {
    sql(&server.url(""), &[format!("CREATE DATABASE `{database}`"), format!("CREATE DATABASE `{replica}`")]).await;
    sql(&server.url(database), &[create_table("bl BLOB, vb VARBINARY(8)")]).await;
    sql(&server.url(replica), &[create_table("bl BLOB, vb VARBINARY(8)")]).await;
}

async fn sql(url: &str, statements: &[String]) {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    for statement in statements {
        conn.query_drop(statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    conn.disconnect().await.unwrap();
}

/// Every row of `everything`, as JSON through the source's own value mapping, in id order.
async fn scan(url: &str, database: &str) -> Vec<serde_json::Value> {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    conn.query_drop("SET time_zone = '+00:00'").await.unwrap();
    let columns: Vec<(String, String, String, String, Option<String>)> = conn
        .exec(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, COLUMN_KEY, CHARACTER_SET_NAME FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = ? AND TABLE_NAME = 'everything' ORDER BY ORDINAL_POSITION",
            (database,),
        )
        .await
        .unwrap();
    let columns: Vec<Column> = columns
        .iter()
        .map(|(name, data_type, column_type, key, charset)| {
            Column::from_information_schema(name, data_type, column_type, key, charset.as_deref())
        })
        .collect();
    let rows: Vec<mysql_async::Row> = conn.query("SELECT * FROM everything ORDER BY id").await.unwrap();
    conn.disconnect().await.unwrap();
    rows.iter()
        .map(|row| {
            let mut object = serde_json::Map::new();
            for (index, column) in columns.iter().enumerate() {
                let value = row.as_ref(index).cloned().unwrap_or(mysql_async::Value::NULL);
                let json = match (column.name.as_str(), to_json(column, &value, Origin::Query)) {
                    ("fl", serde_json::Value::Number(n)) => serde_json::json!((n.as_f64().unwrap() as f32).to_string()),
                    (_, json) => json,
                };
                object.insert(column.name.clone(), json);
            }
            serde_json::Value::Object(object)
        })
        .collect()
}

/// Waits (60 s at most) until the replica's table equals the source's.
async fn replica_matches(source_url: &str, database: &str, replica_url: &str, replica: &str) {
    let started = Instant::now();
    while scan(source_url, database).await != scan(replica_url, replica).await {
        assert!(started.elapsed() < Duration::from_secs(60), "the replica never matched the source");
        tokio::time::sleep(Duration::from_millis(100)).await; // poll interval
    }
}

/// Kills every other connection whose processlist `column` (DB or USER) is `value`; panics
/// when there is none.
async fn kill_connections(admin_url: &str, column: &str, value: &str) {
    let mut admin = mysql_async::Conn::from_url(admin_url).await.unwrap();
    let query = format!("SELECT ID FROM information_schema.PROCESSLIST WHERE {column} = ? AND ID <> CONNECTION_ID()");
    let ids: Vec<u64> = admin.exec(query, (value,)).await.unwrap();
    assert!(!ids.is_empty(), "no connection has {column} {value:?}");
    for id in ids {
        let _ = admin.query_drop(format!("KILL {id}")).await; // it may be gone already
    }
    admin.disconnect().await.unwrap();
}

/// Runs the CDC source (source → topic) and the MySQL sink's CDC mode (topic → replica) until
/// `until` completes; `abrupt` drops the tasks mid-flight instead of stopping them.
struct Pipeline {
    broker: Broker,
    positions: FilePositionStore,
    source_url: String,
    replica_url: String,
    database: String,
    /// Its own replica server id: tests run side by side on one server, and a replica that
    /// registers with another's id makes the server end the other's binlog stream.
    server_id: u32,
}

impl Pipeline {
    /// A broker with the source's topics (two queues each) and a position store in `dir`.
    fn open(dir: &std::path::Path, source_url: &str, replica_url: &str, database: &str) -> Pipeline {
        let mut broker_config = BrokerConfig::new(dir.join("broker"));
        broker_config.store.set_segment_size_bytes(16 << 20);
        let broker = Broker::open(broker_config).unwrap();
        for topic in [format!("cdc_{database}_everything"), "cdc_heartbeats".into(), "cdc_schema_changes".into()] {
            broker.create_topic(TopicConfig::new(topic, 2)).unwrap();
        }
        Pipeline {
            broker,
            positions: FilePositionStore::open(dir.join("positions.json")).unwrap(),
            source_url: source_url.into(),
            replica_url: replica_url.into(),
            database: database.into(),
            server_id: {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(7000);
                NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        }
    }

    /// Records in the source's topic.
    fn held(&self) -> u64 {
        let topic = format!("cdc_{}_everything", self.database);
        (0..2).map(|queue_id| self.broker.queue_range(&topic, queue_id).max_offset).sum()
    }

    /// Waits (60 s at most) until the source's topic holds `count` records.
    async fn wait_for_records(&self, count: u64) {
        let started = Instant::now();
        while self.held() < count {
            assert!(started.elapsed() < Duration::from_secs(60), "the source sent {} of {count} records", self.held());
            tokio::time::sleep(Duration::from_millis(1)).await; // poll interval
        }
    }

    /// Once the topic holds `count` records, kills the connections whose processlist `column`
    /// is `value`; returns the records held at the kill.
    async fn kill_after(&self, count: u64, admin_url: &str, column: &str, value: &str) -> u64 {
        self.wait_for_records(count).await;
        let held = self.held();
        kill_connections(admin_url, column, value).await;
        held
    }

    async fn run(&self, until: impl std::future::Future<Output = ()>, abrupt: bool) {
        let mut config = MySqlCdcConfig::new(&self.source_url);
        config.server_id = Some(self.server_id);
        config.include = vec![format!("{}\\.everything", self.database)];
        config.heartbeat_interval_ms = 200;
        config.snapshot_chunk_rows = 7;
        let mut source = MySqlCdcSource::new("cdc", config).unwrap();
        let mut sink_config = MySqlSinkConfig::new(&self.replica_url, "everything");
        sink_config.mode = MySqlMode::Cdc;
        sink_config.key_columns = vec!["id".into()];
        let mut sink = MySqlSink::connect("replica", sink_config).await.unwrap();
        let messaging: Arc<dyn Messaging> = Arc::new(self.broker.clone());
        let mut source_task = SourceTaskConfig::new("cdc");
        source_task.batch_records_max = 50;
        source_task.poll_wait = Duration::from_millis(50);
        source_task.position_flush_interval = Duration::from_millis(20);
        let mut sink_task = crate::support::task_config("replica", &format!("cdc_{}_everything", self.database));
        sink_task.errors_tolerance = weir_connect::ErrorTolerance::None;
        let (stop_source, mut source_stop) = watch::channel(false);
        let (stop_sink, mut sink_stop) = watch::channel(false);
        let source_run = run_source_task(
            messaging.clone(),
            &mut source as &mut dyn Source,
            &self.positions,
            &source_task,
            &mut source_stop,
        );
        let sink_run = run_sink_task(messaging, &mut sink, &sink_task, &mut sink_stop);
        tokio::pin!(source_run, sink_run);
        tokio::pin!(until);
        tokio::select! {
            outcome = &mut source_run => panic!("the source task ended: {outcome:?}"),
            outcome = &mut sink_run => panic!("the sink task ended: {outcome:?}"),
            _ = &mut until => {}
        }
        if abrupt {
            return; // dropped mid-flight, like a crash of the worker
        }
        // A clean stop: the source first, then the sink once it has applied everything the
        // topic holds (records that change nothing may still be on their way when the tables
        // already match, and a later schema change on the replica must not meet them).
        stop_source.send(true).unwrap();
        source_run.await.unwrap();
        let topic = format!("cdc_{}_everything", self.database);
        let started = Instant::now();
        loop {
            let held: u64 = (0..2).map(|queue_id| self.broker.queue_range(&topic, queue_id).max_offset).sum();
            let applied: u64 = self.broker.group_offsets(&sink_task.group(), &topic).values().sum();
            if applied >= held {
                break;
            }
            tokio::select! {
                outcome = &mut sink_run => panic!("the sink task ended: {outcome:?}"),
                _ = tokio::time::sleep(Duration::from_millis(10)) => {} // poll interval
            }
            assert!(started.elapsed() < Duration::from_secs(60), "the sink never drained the topic");
        }
        stop_sink.send(true).unwrap();
        sink_run.await.unwrap();
    }
}

#[test]
fn snapshot_and_streaming_replay_into_an_identical_table_across_restarts_and_ddl() {
    let Some(server) = weir_testsvc::mariadb() else { return };
    let database = server.fresh_database_name("cdc_src");
    let replica = server.fresh_database_name("cdc_dst");
    let (source_url, replica_url) = (server.url(&database), server.url(&replica));
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        create_source_and_replica(server, &database, &replica).await;
        // Rows before the source starts: the snapshot's.
        let initial: Vec<String> =
            (0..40).map(|n| format!("INSERT INTO everything ({NAMES}) VALUES {}", row_sql(n, 0))).collect();
        sql(&source_url, &initial).await;
        let pipeline = Pipeline::open(dir.path(), &source_url, &replica_url, &database);

        let converged = || replica_matches(&source_url, &database, &replica_url, &replica);
        // Run 1: snapshot, then random changes while streaming; a clean stop.
        let changes = |seed: u32, count: u32| -> Vec<String> {
            let names = if seed >= 4 { NAMES.replace("vc,", "vc2,") } else { NAMES.to_string() };
            (0..count)
                .map(|i| {
                    let n = (seed * 7919 + i * 104_729) % 60;
                    match (seed + i) % 4 {
                        0 => format!("REPLACE INTO everything ({names}) VALUES {}", row_sql(n, seed + i)),
                        1 => format!("DELETE FROM everything WHERE id = {n}"),
                        2 => format!("UPDATE everything SET ch = 'u{}', de = de + 1 WHERE id = {n}", i % 100),
                        _ => format!("INSERT IGNORE INTO everything ({names}) VALUES {}", row_sql(n + 100, seed)),
                    }
                })
                .collect()
        };
        pipeline
            .run(
                async {
                    converged().await;
                    sql(&source_url, &changes(1, 60)).await;
                    // A multi-row transaction.
                    sql(
                        &source_url,
                        &[
                            "START TRANSACTION".into(),
                            "UPDATE everything SET ti = ti + 1 WHERE id < 30".into(),
                            "DELETE FROM everything WHERE id BETWEEN 30 AND 35".into(),
                            "COMMIT".into(),
                        ],
                    )
                    .await;
                    converged().await;
                },
                false,
            )
            .await;
        // Changes while nothing runs, then run 2 is dropped mid-stream (an abrupt stop) once the
        // source has moved some of them into the topic.
        sql(&source_url, &changes(2, 40)).await;
        let before = pipeline.held();
        pipeline
            .run(
                async {
                    sql(&source_url, &changes(3, 40)).await;
                    pipeline.wait_for_records(before + 1).await;
                },
                true,
            )
            .await;
        // The restart after the abrupt stop catches up (the topic may hold records taken
        // before the stop; the replica's schema changes only once they are applied).
        pipeline.run(converged(), false).await;
        // DDL mid-stream: a new column and a renamed one (the replica's schema follows by
        // hand, as a DBA would, once the topic is drained).
        let ddl = [
            "ALTER TABLE everything ADD COLUMN extra VARCHAR(10) DEFAULT 'new'".to_string(),
            "ALTER TABLE everything CHANGE vc vc2 VARCHAR(20)".into(),
        ];
        sql(&source_url, &ddl).await;
        sql(&replica_url, &ddl).await;
        sql(&source_url, &changes(4, 40)).await;
        sql(&source_url, &["UPDATE everything SET extra = CONCAT('e', id) WHERE id % 3 = 0".into()]).await;
        pipeline.run(converged(), false).await;
        assert!(!scan(&source_url, &database).await.is_empty());
        let ddl = crate::support::messages_of(&pipeline.broker, "cdc_schema_changes").await;
        assert!(
            ddl.iter().any(|(body, _)| String::from_utf8_lossy(body).contains("ADD COLUMN extra")),
            "a schema-change event"
        );
    });
}

#[test]
fn a_snapshot_whose_connections_are_killed_starts_again_and_converges() {
    let Some(server) = weir_testsvc::mariadb() else { return };
    let database = server.fresh_database_name("cdc_kill_src");
    let replica = server.fresh_database_name("cdc_kill_dst");
    let (source_url, replica_url) = (server.url(&database), server.url(&replica));
    let dir = tempfile::tempdir().unwrap();
    const ROWS: u32 = 3000;
    runtime().block_on(async {
        create_source_and_replica(server, &database, &replica).await;
        let inserts: Vec<String> = (0..ROWS)
            .collect::<Vec<_>>()
            .chunks(500)
            .map(|ids| {
                let rows: Vec<String> = ids.iter().map(|n| row_sql(*n, 0)).collect();
                format!("INSERT INTO everything ({NAMES}) VALUES {}", rows.join(","))
            })
            .collect();
        sql(&source_url, &inserts).await;
        let topic = format!("cdc_{database}_everything");
        let pipeline = Pipeline::open(dir.path(), &source_url, &replica_url, &database);
        let mut held_at_kill = 0;
        pipeline
            .run(
                async {
                    // Kill the source's connections (the snapshot's among them) mid-snapshot.
                    held_at_kill = pipeline.kill_after(50, &server.url(""), "DB", &database).await;
                    replica_matches(&source_url, &database, &replica_url, &replica).await;
                },
                false,
            )
            .await;
        let snapshot_records = crate::support::messages_of(&pipeline.broker, &topic)
            .await
            .iter()
            .filter(|(body, _)| String::from_utf8_lossy(body).contains(r#""op":"r""#))
            .count();
        if held_at_kill < u64::from(ROWS) {
            // The kill landed mid-snapshot: the rows sent before it were sent again.
            assert!(
                snapshot_records > ROWS as usize,
                "{snapshot_records} snapshot records after a kill at {held_at_kill}"
            );
        } else {
            eprintln!("the snapshot finished before the kill ({held_at_kill} records); the restart path did not run");
        }
    });
}

#[test]
fn a_stream_whose_connections_are_killed_reopens_where_it_handed_out_and_converges() {
    let Some(server) = weir_testsvc::mariadb() else { return };
    let database = server.fresh_database_name("cdc_streamkill_src");
    let replica = server.fresh_database_name("cdc_streamkill_dst");
    // The source connects as its own user, so the kill below hits only its connections (other
    // tests stream from the same server).
    let user = format!("cdc_{database}");
    let admin_url = server.url("");
    let source_url = admin_url.replacen(
        &format!("{}:{}@", weir_testsvc::MARIADB_USER, weir_testsvc::MARIADB_PASSWORD),
        &format!("{user}:secret@"),
        1,
    ) + &database;
    let replica_url = server.url(&replica);
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        create_source_and_replica(server, &database, &replica).await;
        sql(
            &admin_url,
            &[
                format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'secret'"),
                format!("GRANT SELECT, RELOAD, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO '{user}'@'%'"),
            ],
        )
        .await;
        let admin_source_url = server.url(&database);
        let pipeline = Pipeline::open(dir.path(), &source_url, &replica_url, &database);
        let topic = format!("cdc_{database}_everything");
        // Transactions of 100 new rows each: every row is written once, so a lost one shows in
        // the replica and a repeated one in the topic.
        const TRANSACTIONS: u32 = 50;
        let transaction = |number: u32| -> Vec<String> {
            let rows: Vec<String> = (number * 100..number * 100 + 100).map(|n| row_sql(n, number)).collect();
            vec![format!("INSERT INTO everything ({NAMES}) VALUES {}", rows.join(","))]
        };
        // Run 1: the (empty) snapshot, until a binlog position is committed; a clean stop.
        let positions = dir.path().join("positions.json");
        pipeline
            .run(
                async {
                    let started = Instant::now();
                    while !std::fs::read_to_string(&positions).is_ok_and(|text| text.contains("\"pos\"")) {
                        assert!(started.elapsed() < Duration::from_secs(60), "no binlog position was committed");
                        tokio::time::sleep(Duration::from_millis(10)).await; // poll interval
                    }
                },
                false,
            )
            .await;
        // A backlog while nothing runs: run 2's reader is far ahead of the sends when the
        // kill comes, with batches queued.
        let backlog: Vec<String> = (0..TRANSACTIONS).flat_map(transaction).collect();
        sql(&admin_source_url, &backlog).await;
        let mut killed_at = 0;
        pipeline
            .run(
                async {
                    // Kill the source's connections (binlog dump and schema lookups) mid-stream.
                    killed_at = pipeline.kill_after(200, &admin_url, "USER", &user).await;
                    for number in TRANSACTIONS..TRANSACTIONS + 5 {
                        sql(&admin_source_url, &transaction(number)).await;
                    }
                    replica_matches(&admin_source_url, &database, &replica_url, &replica).await;
                },
                false,
            )
            .await;
        let rows = (TRANSACTIONS as usize + 5) * 100;
        assert!(killed_at < rows as u64, "the kill came after the stream had sent every row ({killed_at})");
        assert_eq!(scan(&replica_url, &replica).await.len(), rows, "every row reached the replica");
        // The stream reopened where it had handed records out: each row is in the topic once.
        let mut created = std::collections::BTreeMap::<u64, usize>::new();
        for (body, _) in crate::support::messages_of(&pipeline.broker, &topic).await {
            let change: serde_json::Value = serde_json::from_slice(&body).unwrap();
            if change["op"] == "c" {
                *created.entry(change["after"]["id"].as_u64().unwrap()).or_default() += 1;
            }
        }
        assert_eq!(created.len(), rows, "a create per row");
        let repeated: Vec<_> = created.iter().filter(|(_, count)| **count > 1).collect();
        assert!(repeated.is_empty(), "rows sent twice after the reopen: {repeated:?}");
        sql(&admin_url, &[format!("DROP USER '{user}'@'%'")]).await;
    });
}

#[test]
fn bad_settings_get_actionable_errors() {
    let Some(server) = weir_testsvc::mariadb() else { return };
    let Some(without_binlog) = weir_testsvc::mariadb_private(false) else { return };
    runtime().block_on(async {
        let cases = [
            (server.url("").replace("weir:weir", "weir:wrong"), "refused user \"weir\""),
            (without_binlog.url(""), "binary logging is off"),
        ];
        for (url, expected) in cases {
            let mut source = MySqlCdcSource::new("bad", MySqlCdcConfig::new(url)).unwrap();
            let error = source.open(None).await.expect_err("open should fail");
            assert!(error.message.contains(expected), "{} should mention {expected:?}", error.message);
            assert_eq!(error.retry, weir_connect::RetryHint::Permanent);
        }
        let mut bad = MySqlCdcConfig::new(server.url(""));
        bad.include = vec!["(".into()];
        let error = MySqlCdcSource::new("bad", bad).err().expect("a bad regex is refused");
        assert!(error.to_string().contains("`include`"), "{error}");
    });
}
