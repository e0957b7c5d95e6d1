//! The Elasticsearch sink against the in-test node: conformance under overload and lost
//! answers, index templates and ids, per-item errors to the dead-letter topic, start-up
//! errors.

use weir_connect::Sink;
use weir_connect::conformance::{Faults, check_sink, connect_lazily};
use weir_connectors::sinks::elasticsearch::{ElasticsearchAction, ElasticsearchSink, ElasticsearchSinkConfig};

use crate::elasticsearch_server::{EsFaults, EsServer};
use crate::support::{self, runtime};

#[test]
fn the_elasticsearch_sink_passes_the_conformance_kit_under_overload() {
    let faults = EsFaults { item_429_every: 7, request_503_every: 5, request_lost_after_apply_every: 4 };
    let server = EsServer::start(faults, None);
    let values: Vec<Vec<u8>> = (0..400).map(|i| format!(r#"{{"id":{i},"msg":"event {i}"}}"#).into_bytes()).collect();
    let mut config = ElasticsearchSinkConfig::new(&server.url, "events");
    config.id = Some("{{id}}".into());
    config.item_backoff_initial_ms = 1;
    // One request at a time: with lanes, a write's requests would always span a multiple of
    // the node's fixed fault periods and never succeed.
    config.concurrency = 1;
    let read_back = || server.documents("events").values().map(|doc| doc.to_string().into_bytes()).collect();
    check_sink(
        || {
            let config = config.clone();
            connect_lazily(move || async move {
                Box::new(ElasticsearchSink::connect("conformance", config).await.unwrap()) as Box<dyn Sink>
            })
        },
        read_back,
        &values,
        &Faults::default(),
    );
    assert_eq!(server.documents("events").len(), 400, "each record once");
}

#[test]
fn index_templates_ids_deletes_and_refused_documents() {
    let server = EsServer::start(EsFaults { item_429_every: 3, ..EsFaults::default() }, Some(("elastic", "pw")));
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let records: [(Option<&str>, &str); 8] = [
            (Some("a"), r#"{"service":"Web","ts":"2026-11-30T10:00:00Z","status":200}"#),
            (Some("b"), r#"{"service":"web","ts":1796119200000,"status":500}"#),
            (Some("c"), r#"{"service":"web","ts":"2026-12-01T10:00:00Z","status":"slow"}"#),
            (Some("d"), r#"{"service":"api","ts":"2026-11-30T11:00:00Z","status":201,"user":{"id":1}}"#),
            (Some("e"), r#"{"service":"api","ts":"2026-11-30T12:00:00Z","status":202,"user":"bob"}"#),
            (Some("f"), r#"{"ts":"2026-11-30T12:00:00Z"}"#),
            (Some("g"), r#"{"service":"api","ts":"yesterday"}"#),
            (Some("a"), r#"{"service":"web","ts":"2026-11-30T10:05:00Z","status":304}"#),
        ];
        let values: Vec<(Option<&str>, Vec<u8>)> = records.iter().map(|(k, v)| (*k, v.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut config = ElasticsearchSinkConfig::new(&server.url, "logs-{{service}}-%Y.%m.%d");
        config.timestamp_field = Some("ts".into());
        config.username = Some("elastic".into());
        config.password = Some("pw".into());
        config.item_backoff_initial_ms = 1;
        config.concurrency = 1; // dynamic mapping depends on which document arrives first
        let mut sink = ElasticsearchSink::connect("logs", config).await.unwrap();
        let task = support::task_config("logs", "t");
        support::drain(&broker, &mut sink, &task).await;
        let ids = |index: &str| server.documents(index).keys().cloned().collect::<Vec<_>>();
        assert_eq!(server.indices(), ["logs-api-2026.11.30", "logs-web-2026.11.30", "logs-web-2026.12.01"]);
        assert_eq!(ids("logs-web-2026.11.30"), ["a"], "the key is the id; the later record replaced the first");
        assert_eq!(server.documents("logs-web-2026.11.30")["a"]["status"], 304);
        assert_eq!(ids("logs-web-2026.12.01"), ["b"], "epoch ms picks the date; 'slow' refused by the long mapping");
        assert_eq!(ids("logs-api-2026.11.30"), ["d"], "e refused: `user` is mapped as an object");
        let dead: Vec<(String, String)> = support::dead_letters(&broker, &task)
            .await
            .into_iter()
            .map(|(body, props)| (String::from_utf8(body).unwrap(), props["DLQ_ERROR"].clone()))
            .collect();
        let expected = [
            ("\"slow\"", "document_parsing_exception"),
            ("\"bob\"", "object mapping for [user]"),
            (r#"{"ts""#, "lacks a field the index template"),
            ("yesterday", "is not RFC 3339"),
        ];
        assert_eq!(dead.len(), expected.len(), "{dead:?}");
        for ((body, error), (body_part, error_part)) in dead.iter().zip(expected) {
            assert!(
                body.contains(body_part) && error.contains(error_part),
                "{body} / {error} should match {body_part} / {error_part}"
            );
        }
    });
}

#[test]
fn create_counts_an_existing_id_as_written_and_start_up_errors_are_actionable() {
    let server = EsServer::start(EsFaults::default(), Some(("elastic", "pw")));
    runtime().block_on(async {
        let mut config = ElasticsearchSinkConfig::new(&server.url, "docs");
        config.action = ElasticsearchAction::Create;
        config.username = Some("elastic".into());
        config.password = Some("pw".into());
        let mut sink = ElasticsearchSink::connect("create", config.clone()).await.unwrap();
        let batch = [support::record(0, 0, Some("k1"), r#"{"v":1}"#), support::record(0, 1, Some("k2"), r#"{"v":2}"#)];
        sink.write(&batch).await.unwrap();
        sink.write(&batch).await.expect("a retried create is not an error");
        assert_eq!(server.documents("docs").len(), 2);
        let tombstone = [support::record(0, 2, Some("k1"), "")];
        sink.write(&tombstone).await.unwrap();
        sink.write(&tombstone).await.expect("deleting a deleted document is not an error");
        assert_eq!(server.documents("docs").keys().collect::<Vec<_>>(), ["k2"]);
        // An id Elasticsearch would refuse the whole request for is the one record's fault.
        let long_key = "k".repeat(513);
        let batch =
            [support::record(0, 3, Some(&long_key), r#"{"v":3}"#), support::record(0, 4, Some("k4"), r#"{"v":4}"#)];
        let error = sink.write(&batch).await.expect_err("the long id is refused");
        assert_eq!(error.failed_records, [0]);
        assert!(error.record_errors[&0].contains("513 bytes"), "{error:?}");
        assert_eq!(server.documents("docs").keys().collect::<Vec<_>>(), ["k2", "k4"]);
        let wrong = ElasticsearchSinkConfig { password: Some("nope".into()), ..config.clone() };
        let closed = ElasticsearchSinkConfig::new(format!("http://127.0.0.1:{}", weir_testsvc::free_port()), "docs");
        let cases = [
            (wrong, "refused the credentials (HTTP 401)"),
            (closed, "cannot use Elasticsearch"),
            (ElasticsearchSinkConfig::new(&server.url, "logs-%Q"), "invalid % date pattern"),
            (
                ElasticsearchSinkConfig { cdc: true, ..ElasticsearchSinkConfig::new(&server.url, "rows") },
                "`id` is required",
            ),
            (
                ElasticsearchSinkConfig {
                    cdc: true,
                    id: Some("{{id}}".into()),
                    ..ElasticsearchSinkConfig::new(&server.url, "rows-%Y")
                },
                "timestamp_field",
            ),
            (ElasticsearchSinkConfig { username: Some("x".into()), password: None, ..config.clone() }, "go together"),
        ];
        for (config, expected) in cases {
            let error = ElasticsearchSink::connect("start", config).await.err().expect("connect should fail");
            assert!(error.to_string().contains(expected), "{error} should mention {expected:?}");
        }
    });
}

#[test]
fn metrics_count_written_refused_and_retried_documents_exactly() {
    let server = EsServer::start(EsFaults { item_429_every: 2, ..EsFaults::default() }, None);
    let recorder = weir_connect::conformance::CountingRecorder::default();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut config = ElasticsearchSinkConfig::new(&server.url, "docs");
        config.item_backoff_initial_ms = 1;
        config.concurrency = 1; // one request at a time: the 429 schedule is deterministic
        let mut sink = ElasticsearchSink::connect("counted", config).await.unwrap();
        let batch = [
            support::record(0, 0, None, r#"{"n":1}"#),
            support::record(0, 1, None, r#"{"n":2}"#),
            support::record(0, 2, None, r#"{"n":"three"}"#),
            support::record(0, 3, None, r#"{"n":4}"#),
        ];
        let error = sink.write(&batch).await.expect_err("one document is refused");
        assert_eq!(error.failed_records, [2]);
        assert!(error.record_errors[&2].contains("document_parsing_exception"), "{error:?}");
    });
    let count = |result| {
        recorder.counter("weir_elasticsearch_sink_documents_total", &[("connector", "counted"), ("result", result)])
    };
    assert_eq!(count("written"), 3);
    assert_eq!(count("refused"), 1);
    // Items 2 and 4 of the first request were refused with 429, then item 2 of the retry.
    assert_eq!(count("retried"), 3);
    assert_eq!(server.documents("docs").len(), 3);
}

#[test]
fn a_retried_item_never_overwrites_a_later_record_of_its_document() {
    // Items 2, 4, 6 … are refused with 429: `x` v1 is refused, `x` v2 after it is written.
    let server = EsServer::start(EsFaults { item_429_every: 2, ..EsFaults::default() }, None);
    support::runtime().block_on(async {
        let mut config = ElasticsearchSinkConfig::new(&server.url, "docs");
        config.item_backoff_initial_ms = 1;
        config.concurrency = 1; // one request at a time: the 429 schedule is deterministic
        let mut sink = ElasticsearchSink::connect("order", config).await.unwrap();
        let batch = [
            support::record(0, 0, Some("a"), r#"{"v":0}"#),
            support::record(0, 1, Some("x"), r#"{"v":1}"#),
            support::record(0, 2, Some("x"), r#"{"v":2}"#),
        ];
        sink.write(&batch).await.unwrap();
    });
    assert_eq!(server.documents("docs")["x"]["v"], 2, "the refused older version was not re-sent over the newer one");
}

#[test]
fn cdc_changes_keep_one_document_per_row_also_when_the_key_changes() {
    let server = EsServer::start(EsFaults::default(), None);
    support::runtime().block_on(async {
        let mut config = ElasticsearchSinkConfig::new(&server.url, "products");
        config.cdc = true;
        config.id = Some("{{id}}".into());
        config.concurrency = 1;
        let mut sink = ElasticsearchSink::connect("cdc", config).await.unwrap();
        let changes = [
            r#"{"op":"r","after":{"id":1,"name":"pen"}}"#,
            r#"{"op":"c","after":{"id":2,"name":"ink"}}"#,
            r#"{"op":"u","before":{"id":1,"name":"pen"},"after":{"id":10,"name":"pen"}}"#,
            r#"{"op":"u","before":{"id":2,"name":"ink"},"after":{"id":2,"name":"blue ink"}}"#,
            r#"{"op":"d","before":{"id":10,"name":"pen"},"after":null}"#,
            "",
        ];
        let batch: Vec<_> = changes.iter().enumerate().map(|(i, c)| support::record(0, i as u64, None, c)).collect();
        sink.write(&batch).await.unwrap();
    });
    let documents = server.documents("products");
    assert_eq!(documents.keys().collect::<Vec<_>>(), ["2"], "the key change deleted id 1; the delete removed 10");
    assert_eq!(documents["2"]["name"], "blue ink");
}
