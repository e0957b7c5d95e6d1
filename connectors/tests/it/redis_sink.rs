//! The Redis sink against a private Redis: conformance, every command, poison records,
//! killed connections and start-up errors.

use weir_connect::Sink;
use weir_connect::conformance::{Faults, check_sink, connect_lazily};
use weir_connectors::sinks::redis::{RedisCommand, RedisSink, RedisSinkConfig};

use crate::support::{self, runtime};

async fn connection(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap()
}

async fn query<T: redis::FromRedisValue>(url: &str, command: &mut redis::Cmd) -> T {
    command.query_async(&mut connection(url).await).await.unwrap()
}

#[test]
fn the_redis_sink_passes_the_conformance_kit_and_holds_each_record_once() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let values: Vec<Vec<u8>> = (0..400).map(|i| format!(r#"{{"id":{i},"name":"user {i}"}}"#).into_bytes()).collect();
    let config = RedisSinkConfig::new(&url, RedisCommand::Set, "user:{{id}}");
    let read_back = || {
        runtime().block_on(async {
            let keys: Vec<String> = query(&url, redis::cmd("KEYS").arg("user:*")).await;
            let mut values = Vec::new();
            for key in keys {
                values.push(query::<Vec<u8>>(&url, redis::cmd("GET").arg(key)).await);
            }
            values
        })
    };
    check_sink(
        || {
            let config = config.clone();
            connect_lazily(move || async move {
                Box::new(RedisSink::connect("conformance", config).await.unwrap()) as Box<dyn Sink>
            })
        },
        read_back,
        &values,
        &Faults::default(),
    );
    let keys: usize = runtime().block_on(query(&url, &mut redis::cmd("DBSIZE")));
    assert_eq!(keys, 400, "each record once");
}

#[test]
fn every_command_writes_what_it_should() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let records = [
            (Some("u1"), r#"{"id":1,"name":"ann","age":30}"#),
            (Some("u2"), r#"{"id":2,"name":"bob","tags":["x"]}"#),
            (Some("u1"), r#"{"id":1,"name":"ann","age":31}"#),
            (Some("u2"), ""), // tombstone: DEL
        ];
        let values: Vec<(Option<&str>, Vec<u8>)> = records.iter().map(|(k, v)| (*k, v.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let commands: [(RedisCommand, &str, Option<u64>); 6] = [
            (RedisCommand::Set, "set:{{$key}}", Some(600)),
            (RedisCommand::Hset, "hash:{{$key}}", Some(600)),
            (RedisCommand::Xadd, "stream:{{$key}}", None),
            (RedisCommand::Rpush, "list:{{$key}}", None),
            (RedisCommand::Lpush, "llist:{{$key}}", None),
            (RedisCommand::Publish, "channel:{{$key}}", None),
        ];
        // A blocking subscriber on its own thread, subscribed before anything is published.
        let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
        let subscriber_url = url.clone();
        let subscriber = std::thread::spawn(move || {
            let mut connection = redis::Client::open(subscriber_url.as_str()).unwrap().get_connection().unwrap();
            connection.set_read_timeout(Some(std::time::Duration::from_secs(30))).unwrap();
            let mut pubsub = connection.as_pubsub();
            pubsub.subscribe("channel:u1").unwrap();
            subscribed_tx.send(()).unwrap();
            (0..2).map(|_| pubsub.get_message().unwrap().get_payload::<String>().unwrap()).collect::<Vec<_>>()
        });
        subscribed.recv().unwrap();
        for (command, key, ttl) in commands {
            let mut config = RedisSinkConfig::new(&url, command, key);
            config.ttl_seconds = ttl;
            config.delete_on_tombstone = Some(command != RedisCommand::Rpush && command != RedisCommand::Lpush);
            let name = format!("{command:?}").to_lowercase();
            let mut sink = RedisSink::connect(&name, config).await.unwrap();
            support::drain(&broker, &mut sink, &support::task_config(&name, "t")).await;
        }
        let get: Option<String> = query(&url, redis::cmd("GET").arg("set:u1")).await;
        assert_eq!(get.as_deref(), Some(r#"{"id":1,"name":"ann","age":31}"#));
        let ttl: i64 = query(&url, redis::cmd("TTL").arg("set:u1")).await;
        assert!((1..=600).contains(&ttl), "SET EX: ttl {ttl}");
        let exists: u32 = query(&url, redis::cmd("EXISTS").arg("set:u2").arg("hash:u2").arg("stream:u2")).await;
        assert_eq!(exists, 0, "tombstones deleted the keys");
        let hash: std::collections::BTreeMap<String, String> = query(&url, redis::cmd("HGETALL").arg("hash:u1")).await;
        assert_eq!(format!("{hash:?}"), r#"{"age": "31", "id": "1", "name": "ann"}"#);
        let ttl: i64 = query(&url, redis::cmd("TTL").arg("hash:u1")).await;
        assert!((1..=600).contains(&ttl), "HSET + EXPIRE: ttl {ttl}");
        let stream_length: u64 = query(&url, redis::cmd("XLEN").arg("stream:u1")).await;
        assert_eq!(stream_length, 2);
        let list: Vec<String> = query(&url, redis::cmd("LRANGE").arg("list:u2").arg(0).arg(-1)).await;
        assert_eq!(
            list,
            [r#"{"id":2,"name":"bob","tags":["x"]}"#, ""],
            "RPUSH keeps order; tombstones pushed as values"
        );
        let published = subscriber.join().unwrap();
        assert_eq!(published, [records[0].1, records[2].1], "PUBLISH sent u1's values in order");
        let left: Vec<String> = query(&url, redis::cmd("LRANGE").arg("llist:u1").arg(0).arg(-1)).await;
        assert_eq!(left.len(), 2);
        assert!(left[0].contains("31"), "LPUSH puts the newest first");
    });
}

#[test]
fn refused_commands_and_bad_templates_are_dead_lettered() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let _: () = query(&url, redis::cmd("SET").arg("h:2").arg("a string, not a hash")).await;
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let records = [r#"{"id":1,"v":"a"}"#, r#"{"id":2,"v":"b"}"#, r#"{"v":"no id"}"#, r#"{"id":3,"v":"c"}"#, "{}"];
        let values: Vec<(Option<&str>, Vec<u8>)> = records.iter().map(|v| (None, v.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink =
            RedisSink::connect("poison", RedisSinkConfig::new(&url, RedisCommand::Hset, "h:{{id}}")).await.unwrap();
        let task = support::task_config("poison", "t");
        let stats = support::drain(&broker, &mut sink, &task).await;
        assert_eq!((stats.records_written, stats.records_dead_lettered), (2, 3));
        let dead = support::dead_letters(&broker, &task).await;
        let reasons: Vec<(String, &str)> = dead
            .iter()
            .map(|(body, props)| (String::from_utf8_lossy(body).into_owned(), props["DLQ_ERROR"].as_str()))
            .collect();
        assert_eq!(reasons.len(), 3);
        assert!(reasons[0].0.contains(r#""id":2"#) && reasons[0].1.contains("WRONGTYPE"), "{reasons:?}");
        assert!(reasons[1].0.contains("no id") && reasons[1].1.contains("lacks a field"), "{reasons:?}");
        assert!(reasons[2].0 == "{}" && reasons[2].1.contains("lacks a field"), "{reasons:?}");
        let written: u32 = query(&url, redis::cmd("EXISTS").arg("h:1").arg("h:3")).await;
        assert_eq!(written, 2, "the good records around the bad ones are written");
    });
}

#[test]
fn killed_connections_mid_batch_leave_each_record_once() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 4);
        let values: Vec<(Option<&str>, Vec<u8>)> =
            (0..5000).map(|i| (None, format!(r#"{{"id":{i},"v":"value {i}"}}"#).into_bytes())).collect();
        support::send(&broker, "t", &values).await;
        let mut config = RedisSinkConfig::new(&url, RedisCommand::Hset, "item:{{id}}");
        config.pipeline_commands_max = 50;
        let mut sink = RedisSink::connect("killed", config).await.unwrap();
        let killer_url = url.clone();
        let (stop_killing, stopped) = tokio::sync::watch::channel(false);
        let killer = tokio::spawn(async move {
            let mut conn = connection(&killer_url).await;
            let mut kills = 0u64;
            while !*stopped.borrow() {
                let killed: u64 = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal")
                    .arg("SKIPME")
                    .arg("yes")
                    .query_async(&mut conn)
                    .await
                    .unwrap_or(0);
                kills += killed;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await; // the fault's pace, not a wait
            }
            kills
        });
        let task = support::task_config("killed", "t");
        support::drain(&broker, &mut sink, &task).await;
        stop_killing.send(true).unwrap();
        let kills = killer.await.unwrap();
        assert!(kills > 0, "the test killed no connection");
        let keys: u64 = query(&url, &mut redis::cmd("DBSIZE")).await;
        assert_eq!(keys, 5000);
        let v: String = query(&url, redis::cmd("HGET").arg("item:4321").arg("v")).await;
        assert_eq!(v, "value 4321");
        assert!(support::dead_letters(&broker, &task).await.is_empty(), "a transient failure dead-lettered records");
    });
}

#[test]
fn start_up_errors_are_actionable() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let closed = format!("redis://127.0.0.1:{}/", weir_testsvc::free_port());
    runtime().block_on(async {
        let _: () = query(&url, redis::cmd("CONFIG").arg("SET").arg("requirepass").arg("secret")).await;
        let cases = [
            (RedisSinkConfig::new(&url, RedisCommand::Set, "k:{{id}}"), "refused the credentials"),
            (
                RedisSinkConfig::new(url.replace("redis://", "redis://:wrong@"), RedisCommand::Set, "k"),
                "refused the credentials",
            ),
            (RedisSinkConfig::new(&closed, RedisCommand::Set, "k"), "cannot reach Redis"),
            (RedisSinkConfig::new(&url, RedisCommand::Set, "k:{{id"), "without"),
            (
                RedisSinkConfig { ttl_seconds: Some(5), ..RedisSinkConfig::new(&url, RedisCommand::Xadd, "k") },
                "set and hset only",
            ),
        ];
        for (config, expected) in cases {
            let error = RedisSink::connect("start", config).await.err().expect("connect should fail");
            assert!(error.to_string().contains(expected), "{error} should mention {expected:?}");
        }
        let authed = RedisSinkConfig::new(url.replace("redis://", "redis://:secret@"), RedisCommand::Set, "k");
        RedisSink::connect("start", authed).await.expect("the right password connects");
    });
}

#[test]
fn one_keys_commands_keep_their_order_across_pipelines_and_lanes() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        // 2000 updates of 10 keys through small pipelines in four lanes.
        let values: Vec<(Option<&str>, Vec<u8>)> =
            (0..2000).map(|i| (None, format!(r#"{{"k":{},"seq":{i}}}"#, i % 10).into_bytes())).collect();
        support::send(&broker, "t", &values).await;
        let mut config = RedisSinkConfig::new(&url, RedisCommand::Set, "order:{{k}}");
        config.pipeline_commands_max = 7;
        config.concurrency = 4;
        let mut sink = RedisSink::connect("order", config).await.unwrap();
        let mut task = support::task_config("order", "t");
        task.batch_records_max = 500;
        support::drain(&broker, &mut sink, &task).await;
        for k in 0..10 {
            let value: Option<String> = query(&url, redis::cmd("GET").arg(format!("order:{k}"))).await;
            assert_eq!(value, Some(format!(r#"{{"k":{k},"seq":{}}}"#, 1990 + k)), "key {k} holds its last update");
        }
    });
}

#[test]
fn cdc_updates_that_change_the_key_remove_the_old_key() {
    let Some(server) = weir_testsvc::redis() else { return };
    let url = server.url();
    runtime().block_on(async {
        let mut config = RedisSinkConfig::new(&url, RedisCommand::Hset, "user:{{id}}");
        config.cdc = true;
        let mut sink = RedisSink::connect("cdc", config.clone()).await.unwrap();
        let changes = [
            r#"{"op":"c","after":{"id":1,"name":"ann"}}"#,
            r#"{"op":"u","before":{"id":1,"name":"ann"},"after":{"id":2,"name":"ann"}}"#,
            r#"{"op":"c","after":{"id":3,"name":"cy"}}"#,
            r#"{"op":"u","before":{"id":3,"name":"cy"},"after":{"id":3,"name":"cyd"}}"#,
        ];
        let batch: Vec<_> = changes.iter().enumerate().map(|(i, c)| support::record(0, i as u64, None, c)).collect();
        sink.write(&batch).await.unwrap();
        let mut keys: Vec<String> = query(&url, redis::cmd("KEYS").arg("user:*")).await;
        keys.sort();
        assert_eq!(keys, ["user:2", "user:3"], "the row's old key went with its key change");
        let name: String = query(&url, redis::cmd("HGET").arg("user:3").arg("name")).await;
        assert_eq!(name, "cyd");
        // A delete would remove the one stream every row goes to.
        config.command = RedisCommand::Xadd;
        let error = RedisSink::connect("cdc-xadd", config).await.err().expect("cdc with xadd is refused");
        assert!(error.to_string().contains("set or hset"), "{error}");
    });
}
