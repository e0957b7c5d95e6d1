//! The MySQL sink against a private MariaDB: conformance, modes, poison records, killed
//! connections, restarts and start-up errors.

use mysql_async::prelude::Queryable;
use weir_connect::conformance::{Faults, check_sink, connect_lazily};
use weir_connect::{Sink, SinkTaskConfig};
use weir_connectors::sinks::mysql::{MySqlMode, MySqlSink, MySqlSinkConfig, MySqlSinkError};

use crate::support::{self, record, runtime};

/// A fresh database on the private server: its URL. `None` (skip) without MariaDB.
fn fresh_database() -> Option<String> {
    let server = weir_testsvc::mariadb()?;
    let name = server.fresh_database_name("sink");
    runtime().block_on(async {
        let mut conn = mysql_async::Conn::from_url(server.url("")).await.unwrap();
        conn.query_drop(format!("CREATE DATABASE `{name}`")).await.unwrap();
        conn.disconnect().await.unwrap();
    });
    Some(server.url(&name))
}

async fn execute(url: &str, statements: &[&str]) {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    for statement in statements {
        conn.query_drop(*statement).await.unwrap();
    }
    conn.disconnect().await.unwrap();
}

/// Rows of a query, each as its columns joined by `|` (NULL as `∅`).
async fn rows(url: &str, query: &str) -> Vec<String> {
    let mut conn = mysql_async::Conn::from_url(url).await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.query(query).await.unwrap();
    conn.disconnect().await.unwrap();
    rows.into_iter()
        .map(|row| {
            (0..row.len())
                .map(|i| match row.as_ref(i).unwrap() {
                    mysql_async::Value::NULL => "∅".to_string(),
                    mysql_async::Value::Bytes(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                    other => other.as_sql(true),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect()
}

fn config(url: &str, table: &str, mode: MySqlMode) -> MySqlSinkConfig {
    let mut config = MySqlSinkConfig::new(url, table);
    config.mode = mode;
    if mode != MySqlMode::Insert {
        config.key_columns = vec!["id".into()];
    }
    config
}

#[test]
fn the_mysql_sink_passes_the_conformance_kit_and_holds_each_record_once() {
    let Some(url) = fresh_database() else { return };
    runtime().block_on(execute(&url, &["CREATE TABLE users (id BIGINT PRIMARY KEY, name VARCHAR(64), n BIGINT)"]));
    let values: Vec<Vec<u8>> = (0..400)
        .map(|i| serde_json::json!({"id": i, "n": i * 2, "name": format!("user {i}")}).to_string().into_bytes())
        .collect();
    let sink_config = config(&url, "users", MySqlMode::Upsert);
    let read_back = || {
        runtime().block_on(async {
            rows(&url, "SELECT id, n, name FROM users ORDER BY id")
                .await
                .into_iter()
                .map(|row| {
                    let parts: Vec<&str> = row.split('|').collect();
                    let (id, n): (i64, i64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
                    serde_json::json!({"id": id, "n": n, "name": parts[2]}).to_string().into_bytes()
                })
                .collect::<Vec<_>>()
        })
    };
    check_sink(
        || {
            let config = sink_config.clone();
            connect_lazily(move || async move {
                Box::new(MySqlSink::connect("conformance", config).await.unwrap()) as Box<dyn Sink>
            })
        },
        read_back,
        &values,
        &Faults::default(),
    );
    let count = runtime().block_on(rows(&url, "SELECT COUNT(*) FROM users"));
    assert_eq!(count, ["400"], "each record once");
}

/// One case: records in, with the sink's mode; the table's rows after, and the records that
/// went to the dead-letter topic (their values).
struct Case {
    name: &'static str,
    mode: MySqlMode,
    setup: &'static [&'static str],
    records: &'static [&'static str],
    expected_rows: &'static [&'static str],
    expected_dead: &'static [&'static str],
}

fn check(case: &Case) {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        execute(&url, case.setup).await;
        let broker = support::broker_with_topic(dir.path(), "t", 2);
        let values: Vec<(Option<&str>, Vec<u8>)> =
            case.records.iter().map(|r| (Some("k"), r.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink_config = config(&url, "items", case.mode);
        sink_config.auto_create = case.setup.is_empty();
        let mut sink = MySqlSink::connect("items", sink_config).await.unwrap();
        let task = support::task_config("items", "t");
        support::drain(&broker, &mut sink, &task).await;
        assert_eq!(rows(&url, "SELECT * FROM items ORDER BY 1").await, case.expected_rows, "{}: rows", case.name);
        let dead: Vec<String> = support::dead_letters(&broker, &task)
            .await
            .into_iter()
            .map(|(body, _)| String::from_utf8(body).unwrap())
            .collect();
        assert_eq!(dead, case.expected_dead, "{}: dead letters", case.name);
    });
}

const ITEMS: &str = "CREATE TABLE items (id BIGINT PRIMARY KEY, name VARCHAR(8) NOT NULL, qty INT, doc JSON)";

#[test]
fn modes_poison_records_and_auto_create() {
    // The sink makes its own sessions strict: a lax server must not truncate silently.
    if let Some(server) = weir_testsvc::mariadb() {
        runtime().block_on(execute(&server.url(""), &["SET GLOBAL sql_mode = ''"]));
    }
    let cases = [
        Case {
            name: "upsert keeps the last value per key and poison goes to the dead-letter topic",
            mode: MySqlMode::Upsert,
            setup: &[ITEMS],
            records: &[
                r#"{"id":1,"name":"a","qty":1}"#,
                r#"{"id":2,"name":"b","qty":"many"}"#,
                r#"{"id":3,"name":"much too long","qty":3}"#,
                r#"{"id":4,"name":"d","colour":"red"}"#,
                "not json",
                r#"{"name":"no id"}"#,
                r#"{"id":1,"name":"a2","qty":10,"doc":{"tags":["x"]}}"#,
                r#"{"id":5,"name":null}"#,
                r#"{"id":6,"name":"f","qty":6}"#,
            ],
            expected_rows: &["1|a2|10|{\"tags\":[\"x\"]}", "6|f|6|∅"],
            expected_dead: &[
                r#"{"id":2,"name":"b","qty":"many"}"#,
                r#"{"id":3,"name":"much too long","qty":3}"#,
                r#"{"id":4,"name":"d","colour":"red"}"#,
                "not json",
                r#"{"name":"no id"}"#,
                r#"{"id":5,"name":null}"#,
            ],
        },
        Case {
            name: "cdc applies creates, updates, key changes and deletes in order",
            mode: MySqlMode::Cdc,
            setup: &[ITEMS],
            records: &[
                r#"{"op":"c","after":{"id":1,"name":"a","qty":1}}"#,
                r#"{"op":"c","after":{"id":2,"name":"b","qty":2}}"#,
                r#"{"op":"u","before":{"id":1,"name":"a","qty":1},"after":{"id":1,"name":"a","qty":5}}"#,
                r#"{"op":"d","before":{"id":2,"name":"b","qty":2},"after":null}"#,
                "",
                r#"{"payload":{"op":"r","after":{"id":3,"name":"c","qty":3}}}"#,
                r#"{"op":"u","before":{"id":3,"name":"c","qty":3},"after":{"id":30,"name":"c","qty":3}}"#,
                r#"{"op":"c","after":{"id":2,"name":"b2","qty":"x"}}"#,
                r#"{"op":"z"}"#,
            ],
            expected_rows: &["1|a|5|∅", "30|c|3|∅"],
            expected_dead: &[r#"{"op":"c","after":{"id":2,"name":"b2","qty":"x"}}"#, r#"{"op":"z"}"#],
        },
        Case {
            name: "auto-create from the first record, then plain inserts",
            mode: MySqlMode::Insert,
            setup: &[],
            records: &[r#"{"id":1,"name":"a","score":1.5,"ok":true}"#, r#"{"id":2,"name":"b","score":2,"ok":false}"#],
            expected_rows: &["1|a|1|1.5", "2|b|0|2"],
            expected_dead: &[],
        },
    ];
    for case in &cases {
        check(case);
    }
}

#[test]
fn killed_connections_mid_batch_leave_each_record_once() {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        execute(&url, &["CREATE TABLE items (id BIGINT PRIMARY KEY, v VARCHAR(32))"]).await;
        let broker = support::broker_with_topic(dir.path(), "t", 4);
        let values: Vec<(Option<&str>, Vec<u8>)> =
            (0..3000).map(|i| (None, format!(r#"{{"id":{i},"v":"value {i}"}}"#).into_bytes())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink_config = config(&url, "items", MySqlMode::Upsert);
        sink_config.concurrency = 2;
        let mut sink = MySqlSink::connect("killed", sink_config).await.unwrap();
        // Kill the sink's connections over and over while it writes.
        let database: String = url.rsplit('/').next().unwrap().to_string();
        let killer_url = url.clone();
        let (stop_killing, mut stopped) = tokio::sync::watch::channel(false);
        let killer = tokio::spawn(async move {
            let mut conn = mysql_async::Conn::from_url(&killer_url).await.unwrap();
            let own: u64 = conn.query_first("SELECT CONNECTION_ID()").await.unwrap().unwrap();
            let mut kills = 0u32;
            while !*stopped.borrow() {
                let ids: Vec<u64> = conn
                    .exec("SELECT ID FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ?", (&database, own))
                    .await
                    .unwrap();
                for id in ids {
                    if conn.query_drop(format!("KILL CONNECTION {id}")).await.is_ok() {
                        kills += 1;
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_millis(15)) => {} // kill interval, not a wait
                    _ = stopped.changed() => {}
                }
            }
            kills
        });
        let task = support::task_config("killed", "t");
        support::drain(&broker, &mut sink, &task).await;
        stop_killing.send(true).unwrap();
        let kills = killer.await.unwrap();
        assert!(kills > 0, "the test killed no connection");
        assert_eq!(
            rows(&url, "SELECT COUNT(*), COUNT(DISTINCT id), MIN(id), MAX(id) FROM items").await,
            ["3000|3000|0|2999"]
        );
        assert_eq!(rows(&url, "SELECT v FROM items WHERE id = 1234").await, ["value 1234"]);
        assert!(support::dead_letters(&broker, &task).await.is_empty(), "a transient failure dead-lettered records");
    });
}

#[test]
fn a_restart_resumes_from_the_committed_offsets() {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        // No key: a record written twice would show up as a second row.
        execute(&url, &["CREATE TABLE events (n BIGINT)"]).await;
        let broker = support::broker_with_topic(dir.path(), "t", 2);
        let batch =
            |from: u64| (from..from + 250).map(|n| (None, format!(r#"{{"n":{n}}}"#).into_bytes())).collect::<Vec<_>>();
        let task: SinkTaskConfig = support::task_config("events", "t");
        for round in 0..3u64 {
            support::send(&broker, "t", &batch(round * 250)).await;
            let mut sink = MySqlSink::connect("events", config(&url, "events", MySqlMode::Insert)).await.unwrap();
            support::drain(&broker, &mut sink, &task).await;
            let expected = (round + 1) * 250;
            assert_eq!(
                rows(&url, "SELECT COUNT(*), COUNT(DISTINCT n) FROM events").await,
                [format!("{expected}|{expected}")]
            );
        }
    });
}

#[test]
fn start_up_errors_are_actionable() {
    let Some(url) = fresh_database() else { return };
    let server = weir_testsvc::mariadb().unwrap();
    let closed_port = weir_testsvc::free_port();
    let database = url.rsplit('/').next().unwrap().to_string();
    let cases: Vec<(MySqlSinkConfig, &str)> = vec![
        (MySqlSinkConfig::new(url.replace("weir:weir", "weir:wrong"), "t"), "refused user \"weir\""),
        (
            MySqlSinkConfig::new(format!("mysql://weir:weir@127.0.0.1:{closed_port}/{database}"), "t"),
            "cannot reach MySQL",
        ),
        (MySqlSinkConfig::new(&url, "missing"), "does not exist; create it or set `auto_create: true`"),
        (MySqlSinkConfig::new(server.url("no_such_db"), "t"), "which does not exist"),
        (MySqlSinkConfig { mode: MySqlMode::Upsert, ..MySqlSinkConfig::new(&url, "t") }, "`key_columns` must name"),
        (MySqlSinkConfig::new(&url, "bad`name"), "backquote"),
    ];
    runtime().block_on(async {
        for (config, expected) in cases {
            let error: MySqlSinkError = MySqlSink::connect("start", config).await.err().expect("connect should fail");
            assert!(error.to_string().contains(expected), "{error} should mention {expected:?}");
        }
        // Declared columns create the table at start.
        let mut declared = config(&url, "declared", MySqlMode::Upsert);
        declared.auto_create = true;
        declared.columns =
            [("id", "BIGINT"), ("label", "VARCHAR(20)")].map(|(n, t)| (n.to_string(), t.to_string())).into();
        let mut sink = MySqlSink::connect("start", declared).await.unwrap();
        sink.write(&[record(0, 0, None, r#"{"id":7,"label":"seven"}"#)]).await.unwrap();
        assert_eq!(rows(&url, "SELECT id, label FROM declared").await, ["7|seven"]);
    });
}

#[test]
fn concurrent_partitions_keep_each_rows_changes_in_order() {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        execute(&url, &["CREATE TABLE rows_by_tenant (tenant VARCHAR(8), id BIGINT, v INT, PRIMARY KEY (tenant, id))"])
            .await;
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let mut changes = Vec::new();
        for i in 0..300 {
            let row = |v: u32| format!(r#"{{"id":{i},"tenant":"t{}","v":{v}}}"#, i % 3);
            changes.push(format!(r#"{{"op":"c","after":{}}}"#, row(1)));
            changes.push(format!(r#"{{"op":"u","before":{},"after":{}}}"#, row(1), row(2)));
            if i % 2 == 0 {
                changes.push(format!(r#"{{"op":"d","before":{}}}"#, row(2)));
            }
        }
        let values: Vec<(Option<&str>, Vec<u8>)> = changes.iter().map(|c| (None, c.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink_config = MySqlSinkConfig::new(&url, "rows_by_tenant");
        sink_config.mode = MySqlMode::Cdc;
        sink_config.key_columns = vec!["tenant".into(), "id".into()];
        sink_config.concurrency = 4;
        let mut sink = MySqlSink::connect("tenants", sink_config).await.unwrap();
        let mut task = support::task_config("tenants", "t");
        task.batch_records_max = 1000;
        support::drain(&broker, &mut sink, &task).await;
        let expected: Vec<String> = (0..300).filter(|i| i % 2 == 1).map(|i| format!("{i}|2")).collect();
        assert_eq!(rows(&url, "SELECT id, v FROM rows_by_tenant ORDER BY id").await, expected);
    });
}

#[test]
fn a_column_added_while_the_sink_runs_is_written_and_zero_keys_stay_zero() {
    let Some(url) = fresh_database() else { return };
    runtime().block_on(async {
        execute(&url, &["CREATE TABLE grown (id BIGINT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(8))"]).await;
        let mut sink = MySqlSink::connect("grown", config(&url, "grown", MySqlMode::Cdc)).await.unwrap();
        let create = |offset: u64, row: &str| record(0, offset, None, &format!(r#"{{"op":"c","after":{row}}}"#));
        // Row 0 of an AUTO_INCREMENT key is replicated as 0, not given a new id.
        sink.write(&[create(0, r#"{"id":0,"name":"zero"}"#)]).await.unwrap();
        // The source and the target gain a column (the CDC source replays the DDL): the sink
        // reads the columns again instead of refusing the new field.
        execute(&url, &["ALTER TABLE grown ADD COLUMN extra INT"]).await;
        sink.write(&[create(1, r#"{"id":1,"name":"one","extra":7}"#)]).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(rows(&url, "SELECT id, name, extra FROM grown ORDER BY id").await, ["0|zero|∅", "1|one|7"]);
    });
}

#[test]
fn rows_that_depend_on_each_other_across_partitions_are_not_taken_for_poison() {
    let Some(url) = fresh_database() else { return };
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        // A chain: each row's parent is the row before, which parallel partitions may not
        // have committed yet (1452).
        execute(
            &url,
            &["CREATE TABLE chain (id BIGINT PRIMARY KEY, parent BIGINT NULL, FOREIGN KEY (parent) REFERENCES chain (id)) ENGINE=InnoDB"],
        )
        .await;
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let changes: Vec<String> = (1..=200)
            .map(|id| {
                let parent = if id == 1 { "null".to_string() } else { (id - 1).to_string() };
                format!(r#"{{"op":"c","after":{{"id":{id},"parent":{parent}}}}}"#)
            })
            .collect();
        let values: Vec<(Option<&str>, Vec<u8>)> = changes.iter().map(|c| (None, c.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink_config = config(&url, "chain", MySqlMode::Cdc);
        sink_config.concurrency = 4;
        let mut sink = MySqlSink::connect("chain", sink_config).await.unwrap();
        let mut task = support::task_config("chain", "t");
        task.batch_records_max = 200;
        support::drain(&broker, &mut sink, &task).await;
        assert!(support::dead_letters(&broker, &task).await.is_empty(), "no row is poison");
        assert_eq!(rows(&url, "SELECT count(*) FROM chain").await, ["200"]);
    });
}
