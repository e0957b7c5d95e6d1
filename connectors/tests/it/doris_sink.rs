//! The Doris sink against the in-test cluster: conformance, labels under lost answers, data
//! quality failures to the dead-letter topic, CDC deletes, two-phase commit, start-up
//! errors.

use std::sync::Arc;

use serde_json::json;
use weir_connect::conformance::{Faults, check_sink, connect_lazily};
use weir_connect::{FilePositionStore, PositionStore, RetryHint, Sink, SinkRecord};
use weir_connectors::sinks::doris::{DorisSink, DorisSinkConfig};

use crate::doris_server::{ColumnType, DorisFaults, DorisServer, DorisTable};
use crate::support::{self, runtime};

fn table(unique_key: Option<&'static str>) -> DorisTable {
    DorisTable {
        columns: vec![("id", ColumnType::Int), ("name", ColumnType::Varchar(8)), ("qty", ColumnType::Int)],
        unique_key,
        rows: Vec::new(),
    }
}

/// A load journal in `dir`, as `weir run` keeps one in its data directory.
fn journal_store(dir: &tempfile::TempDir) -> Arc<dyn PositionStore> {
    Arc::new(FilePositionStore::open(dir.path().join("sink-state.json")).unwrap())
}

fn config(server: &DorisServer, table: &str) -> DorisSinkConfig {
    let mut config = DorisSinkConfig::new(&server.frontend_url, "db", table, "root");
    config.password = "pw".into();
    config
}

#[test]
fn the_doris_sink_passes_the_conformance_kit_with_faults() {
    let faults = DorisFaults {
        publish_timeout_every: 3,
        lost_after_apply_every: 4,
        transient_fail_every: 5,
        ..DorisFaults::default()
    };
    let server = DorisServer::start(vec![("db.items", table(Some("id")))], faults);
    let values: Vec<Vec<u8>> =
        (0..300).map(|i| json!({"id": i, "name": format!("n{i}"), "qty": i}).to_string().into_bytes()).collect();
    let sink_config = config(&server, "items");
    check_sink(
        || {
            let config = sink_config.clone();
            connect_lazily(move || async move {
                Box::new(DorisSink::connect("conformance", config).await.unwrap()) as Box<dyn Sink>
            })
        },
        || server.rows("db.items").iter().map(|row| row.to_string().into_bytes()).collect(),
        &values,
        &Faults::default(),
    );
    assert_eq!(server.rows("db.items").len(), 300, "each key once");
    assert_eq!(server.state.lock().unwrap().body_before_continue, 0, "bodies wait for 100 Continue");
}

#[test]
fn loads_wait_for_100_continue_and_send_their_body_to_the_backend_only() {
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    runtime().block_on(async {
        let mut sink = DorisSink::connect("large", config(&server, "events")).await.unwrap();
        let record = |i: u64| support::record(0, i, None, &json!({"id": i, "name": "e", "qty": i}).to_string());
        let started = std::time::Instant::now();
        // One load of about 2 MB (more than the frontend's socket buffers would take), then
        // twenty small ones: a load that waited out the 5 s fallback instead of the backend's
        // `100 Continue` would take more than the whole budget.
        let large: Vec<SinkRecord> = (0..60_000).map(record).collect();
        sink.write(&large).await.unwrap();
        for i in 60_000..60_020 {
            sink.write(&[record(i)]).await.unwrap();
        }
        sink.flush().await.unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "took {:?}", started.elapsed());
        assert_eq!(server.rows("db.events").len(), 60_020);
        assert_eq!(server.state.lock().unwrap().body_before_continue, 0);
    });
}

#[test]
fn a_retried_load_reuses_its_label_so_lost_answers_load_nothing_twice() {
    let faults = DorisFaults { publish_timeout_every: 2, lost_after_apply_every: 3, ..DorisFaults::default() };
    let server = DorisServer::start(vec![("db.events", table(None))], faults); // duplicate model
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 3);
        let values: Vec<(Option<&str>, Vec<u8>)> =
            (0..900).map(|i| (None, json!({"id": i, "name": "e", "qty": i}).to_string().into_bytes())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink = DorisSink::connect("events", config(&server, "events")).await.unwrap();
        let task = support::task_config("events", "t");
        support::drain(&broker, &mut sink, &task).await;
        let mut ids: Vec<i64> = server.rows("db.events").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..900).collect::<Vec<_>>(), "every row exactly once");
        assert!(support::dead_letters(&broker, &task).await.is_empty());
    });
}

/// How the run a crash interrupts fails: its loads' answers are lost after Doris applied
/// them, or the loads fail before applying anything, or (two-phase commit) its loads are
/// pre-committed and then aborted by Doris.
#[derive(Clone, Copy, Debug)]
enum FirstRun {
    AnswerLost,
    LoadFailed,
    PrecommitAborted,
}

/// A batch: `(queue, start offset, end offset)` slices, half-open.
type Batch<'a> = &'a [(u32, u64, u64)];

/// Queues 0 and 1 each hold 100 records; queue 0's record at offset 70 does not fit the table
/// (Doris refuses its load, which the sink splits until the record stands alone). A run
/// writes `first_batch` and dies (`first_run`), then later runs (each a list of batches,
/// written and flushed) go on over the same journal. Each good record must be in the
/// duplicate-key table exactly once, whatever offsets the later batches end at.
fn check_restart(first_run: FirstRun, first_batch: Batch, later_runs: &[&[Batch]], two_phase_commit: bool) {
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    let dir = tempfile::tempdir().unwrap();
    let case = format!("{first_run:?} {first_batch:?} then {later_runs:?}, two-phase commit {two_phase_commit}");
    runtime().block_on(async {
        let store = journal_store(&dir);
        let record = |queue: u32, offset: u64| {
            let id = u64::from(queue) * 1000 + offset;
            let qty = if (queue, offset) == (0, 70) { json!("lots") } else { json!(id) };
            support::record(queue, offset, None, &json!({"id": id, "name": "e", "qty": qty}).to_string())
        };
        let batch = |slices: Batch| -> Vec<SinkRecord> {
            slices
                .iter()
                .flat_map(|&(queue, start, end)| (start..end).map(move |offset| record(queue, offset)))
                .collect()
        };
        let connect = || async {
            let mut config = config(&server, "events");
            config.two_phase_commit = two_phase_commit;
            DorisSink::connect("journal", config).await.unwrap().with_load_journal(store.clone()).await.unwrap()
        };
        let mut sink = connect().await;
        match first_run {
            FirstRun::AnswerLost | FirstRun::LoadFailed => {
                server.set_faults(match first_run {
                    FirstRun::AnswerLost => DorisFaults { lost_after_apply_every: 1, ..DorisFaults::default() },
                    _ => DorisFaults { transient_fail_every: 1, ..DorisFaults::default() },
                });
                sink.write(&batch(first_batch)).await.expect_err("the first run's loads fail");
                server.set_faults(DorisFaults::default());
            }
            FirstRun::PrecommitAborted => {
                let _ = sink.write(&batch(first_batch)).await; // poison aside, all pre-committed
                server.abort_precommitted();
                sink.flush().await.expect_err("Doris aborted the pre-commits");
            }
        }
        drop(sink); // the process dies: nothing committed
        for run in later_runs {
            let mut sink = connect().await;
            for slices in *run {
                let records = batch(slices);
                match sink.write(&records).await {
                    Ok(()) => {}
                    Err(error) if error.retry == RetryHint::Permanent => {
                        let bad: Vec<&SinkRecord> = error.failed_records.iter().map(|&i| &records[i]).collect();
                        assert!(
                            bad.iter().all(|r| (r.queue_id, r.queue_offset) == (0, 70)),
                            "{case}: {slices:?}: only the bad record is poison: {error}"
                        );
                    }
                    Err(error) => panic!("{case}: {slices:?}: {error}"),
                }
                sink.flush().await.unwrap_or_else(|e| panic!("{case}: {slices:?}: {e}"));
            }
        }
        let mut ids: Vec<i64> = server.rows("db.events").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        let expected: Vec<i64> = (0..100).filter(|&i| i != 70).chain(1000..1100).collect();
        assert_eq!(ids, expected, "{case}: every good record exactly once");
        assert_eq!(server.state.lock().unwrap().body_before_continue, 0);
    });
}

#[test]
fn a_restarted_sink_loads_nothing_twice_whatever_its_batches_end_at() {
    // Each later run starts where the one before it committed (after its last flush).
    let both: &[(u32, u64, u64)] = &[(0, 0, 100), (1, 0, 100)];
    for two_phase_commit in [false, true] {
        for first_run in [FirstRun::AnswerLost, FirstRun::LoadFailed] {
            let lost: &[(u32, u64, u64)] = &[(0, 0, 60), (1, 0, 40)];
            // The re-read batch is shorter than the lost loads, then runs past them.
            check_restart(first_run, lost, &[&[&[(0, 0, 30)], &[(0, 30, 100), (1, 0, 100)]]], two_phase_commit);
            // It holds the lost loads whole, and more.
            check_restart(first_run, lost, &[&[both]], two_phase_commit);
            // A second restart inside the lost load's range (the first committed 0..30).
            check_restart(
                first_run,
                &[(0, 0, 60)],
                &[&[&[(0, 0, 30)]], &[&[(0, 30, 45)], &[(0, 45, 100), (1, 0, 100)]]],
                two_phase_commit,
            );
            // The lost load held the bad record: it was split, and its halves loaded.
            check_restart(
                first_run,
                &[(0, 0, 100)],
                &[&[&[(0, 0, 55)], &[(0, 55, 80)], &[(0, 80, 100), (1, 0, 100)]]],
                two_phase_commit,
            );
            check_restart(
                first_run,
                both,
                &[&[&[(0, 0, 75), (1, 0, 10)], &[(0, 75, 100), (1, 10, 100)]]],
                two_phase_commit,
            );
        }
    }
    // Pre-commits Doris aborted: loaded again, once.
    check_restart(
        FirstRun::PrecommitAborted,
        &[(0, 0, 100), (1, 0, 50)],
        &[&[&[(0, 0, 30)], &[(0, 30, 100), (1, 0, 100)]]],
        true,
    );
    check_restart(FirstRun::PrecommitAborted, &[(0, 0, 60)], &[&[&[(0, 0, 75), (1, 0, 100)], &[(0, 75, 100)]]], true);
}

#[test]
fn a_refused_load_that_succeeds_later_loads_only_what_its_halves_did_not() {
    // Record 18 does not fit until the column is widened; the load of 10..=20 is refused and
    // split, its halves load, and the task stops on the poison record without committing.
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let store = journal_store(&dir);
        let batch: Vec<SinkRecord> = (10..=20)
            .map(|i| {
                let name = if i == 18 { "far too long" } else { "e" };
                support::record(0, i, None, &json!({"id": i, "name": name, "qty": i}).to_string())
            })
            .collect();
        let connect = || async {
            DorisSink::connect("widen", config(&server, "events"))
                .await
                .unwrap()
                .with_load_journal(store.clone())
                .await
                .unwrap()
        };
        let error = connect().await.write(&batch).await.expect_err("record 18 is refused");
        assert_eq!(error.retry, RetryHint::Permanent);
        assert_eq!(server.rows("db.events").len(), 10);
        server.state.lock().unwrap().tables.get_mut("db.events").unwrap().columns[1].1 = ColumnType::Varchar(64);
        let mut sink = connect().await;
        sink.write(&batch).await.unwrap();
        sink.flush().await.unwrap();
        let mut ids: Vec<i64> = server.rows("db.events").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (10..=20).collect::<Vec<_>>(), "the halves' rows once, and record 18 now");
    });
}

#[test]
fn pre_commits_forgotten_after_an_abort_are_aborted_in_doris() {
    // Record 18 splits the load; its parts are pre-committed, then Doris aborts the first:
    // the sink forgets the later ones too (to load them again in order) and must abort them,
    // or they hold a transaction each until Doris's pre-commit timeout.
    check_forgotten_precommits("forget", false);
    // The same, when someone else has committed the last part meanwhile: its abort answers
    // "already visible", and its rows must not be loaded (or counted) a second time.
    check_forgotten_precommits("committed", true);
}

/// Pre-commits of a split load, the first aborted by Doris (and the last committed by
/// someone else when `last_committed`), then the batch written again: every row once,
/// nothing left pre-committed, and each row counted once.
fn check_forgotten_precommits(connector: &str, last_committed: bool) {
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    let recorder = weir_connect::conformance::CountingRecorder::default();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    // One thread, so the sink's tasks record into the local recorder too.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut two_phase = config(&server, "events");
        two_phase.two_phase_commit = true;
        let mut sink = DorisSink::connect(connector, two_phase).await.unwrap();
        let record =
            |i: u64, name: &str| support::record(0, i, None, &json!({"id": i, "name": name, "qty": i}).to_string());
        let batch: Vec<SinkRecord> = (10..=20).map(|i| record(i, if i == 18 { "far too long" } else { "e" })).collect();
        sink.write(&batch).await.expect_err("record 18 is refused");
        assert!(server.precommitted() >= 2, "the load was split into pre-committed parts");
        server.abort_first_precommitted();
        if last_committed {
            server.commit_last_precommitted();
        }
        sink.flush().await.expect_err("Doris aborted the first pre-commit");
        // The sink task writes the batch again without its dead-lettered record.
        let retried: Vec<SinkRecord> = batch.into_iter().filter(|r| r.queue_offset != 18).collect();
        sink.write(&retried).await.unwrap();
        sink.flush().await.unwrap();
        let mut ids: Vec<i64> = server.rows("db.events").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (10..=20).filter(|&i| i != 18).collect::<Vec<_>>(), "{connector}: each row once");
        assert_eq!(server.precommitted(), 0, "{connector}: no pre-commit is left holding a transaction");
    });
    // Rows count when they commit: the aborted pre-commit's rows, loaded again, count once;
    // rows someone else committed count as found loaded.
    let loaded = recorder.counter("weir_doris_sink_rows_total", &[("connector", connector)]);
    let found = recorder.counter("weir_doris_sink_rows_found_loaded_total", &[("connector", connector)]);
    assert_eq!((loaded + found, found > 0), (10, last_committed), "{connector}: {loaded} loaded, {found} found");
}

#[test]
fn rows_a_second_sink_finds_loaded_are_counted_apart() {
    // A sink task that gave up is replaced by a new sink of the same connector, which writes
    // the batch again: Doris answers "Label Already Exists" (finished), and those rows must not
    // count again as loaded.
    let server = DorisServer::start(vec![("db.events", table(Some("id")))], DorisFaults::default());
    let recorder = weir_connect::conformance::CountingRecorder::default();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let batch: Vec<SinkRecord> = (0..6u64)
            .map(|i| support::record(i as u32 % 2, i, None, &json!({"id": i, "name": "e", "qty": i}).to_string()))
            .collect();
        for _ in 0..2 {
            let mut sink = DorisSink::connect("again", config(&server, "events")).await.unwrap();
            sink.write(&batch).await.unwrap();
            sink.flush().await.unwrap();
        }
        assert_eq!(server.rows("db.events").len(), 6);
    });
    let counter = |name: &str| recorder.counter(name, &[("connector", "again")]);
    assert_eq!(counter("weir_doris_sink_rows_total"), 6);
    assert_eq!(counter("weir_doris_sink_rows_found_loaded_total"), 6);
}

#[test]
fn records_refused_past_the_split_limit_stay_refused_when_the_batch_is_written_again() {
    // Queue 0: offsets 0..64 alternate good and bad (too long), which spends the split budget
    // before offset 40 ("old" for id 1000) is tried alone, so it is refused with its part;
    // offsets 64..128 are good and load, 120 with "new" for id 1000. Queue 1's load fails
    // for a cluster reason, so the sink task writes the batch again: offset 40 must be refused
    // again, not split with a fresh budget and loaded over the newer row.
    let queue_0: Vec<SinkRecord> = (0..128u64)
        .map(|i| {
            let (id, name) = match i {
                40 => (1000, "old"),
                120 => (1000, "new"),
                i if i < 64 && i % 2 == 1 => (i, "far too long"),
                i => (i, "e"),
            };
            support::record(0, i, None, &json!({"id": id, "name": name, "qty": i}).to_string())
        })
        .collect();
    let queue_1: Vec<SinkRecord> = (0..2u64)
        .map(|i| support::record(1, i, None, &json!({"id": 5000 + i, "name": "e", "qty": 1}).to_string()))
        .collect();
    let one_at_a_time = |server: &DorisServer| {
        let mut config = config(server, "events");
        config.concurrency = 1; // queue 0's loads, then queue 1's
        config
    };
    runtime().block_on(async {
        // Queue 0's loads alone, counted on a server of their own.
        let rehearsal = DorisServer::start(vec![("db.events", table(Some("id")))], DorisFaults::default());
        let mut sink = DorisSink::connect("refused-again", one_at_a_time(&rehearsal)).await.unwrap();
        sink.write(&queue_0).await.expect_err("queue 0 has bad records");
        let queue_0_loads = rehearsal.loads();
        let faults = DorisFaults { transient_fail_every: queue_0_loads + 1, ..DorisFaults::default() };
        let server = DorisServer::start(vec![("db.events", table(Some("id")))], faults);
        let mut sink = DorisSink::connect("refused-again", one_at_a_time(&server)).await.unwrap();
        let batch: Vec<SinkRecord> = queue_0.iter().chain(&queue_1).cloned().collect();
        let error = sink.write(&batch).await.expect_err("queue 1's load fails");
        assert!(matches!(error.retry, RetryHint::Retry { .. }), "{error:?}");
        server.set_faults(DorisFaults::default()); // only queue 1's first load fails
        let error = sink.write(&batch).await.expect_err("queue 0's refused records again");
        assert_eq!(error.retry, RetryHint::Permanent, "{error:?}");
        assert!(error.failed_records.contains(&40), "offset 40 is refused with its part: {:?}", error.failed_records);
        let kept: Vec<SinkRecord> =
            batch.into_iter().enumerate().filter(|(i, _)| !error.failed_records.contains(i)).map(|(_, r)| r).collect();
        sink.write(&kept).await.unwrap();
        sink.flush().await.unwrap();
        let rows = server.rows("db.events");
        let row = rows.iter().find(|row| row["id"] == 1000).expect("id 1000 loaded");
        assert_eq!(row["name"], "new", "the newer row stays");
        assert!(rows.iter().any(|row| row["id"] == 5001), "queue 1 loaded on the retry");
    });
}

#[test]
fn a_batch_doris_refuses_whole_stops_splitting_at_the_limit() {
    // Every record is too long for the column: without a limit, 2n loads and journal entries.
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let store = journal_store(&dir);
        let mut sink = DorisSink::connect("refused", config(&server, "events"))
            .await
            .unwrap()
            .with_load_journal(store)
            .await
            .unwrap();
        let batch: Vec<SinkRecord> = (0..2000)
            .map(|i| support::record(0, i, None, &json!({"id": i, "name": "far too long", "qty": i}).to_string()))
            .collect();
        let error = sink.write(&batch).await.expect_err("every record is refused");
        assert_eq!(error.retry, RetryHint::Permanent);
        assert_eq!(error.failed_records.len(), 2000, "every record is poison");
        assert!(error.record_errors.values().all(|e| e.contains("too many filtered rows")));
        assert!(
            error.record_errors.values().any(|e| e.contains("stops splitting")),
            "past the limit, records are refused without being tried alone"
        );
        let loads = server.state.lock().unwrap().loads;
        assert!(loads <= 1 + 2 * 32, "{loads} loads for one refused batch");
        assert!(server.rows("db.events").is_empty());
    });
}

#[test]
fn an_inherited_pre_commit_found_aborted_is_journaled_before_its_rows_load() {
    // A run with two-phase commit leaves 0..=59 pre-committed (its answer lost) and dies. A
    // run without it finds the pre-commit, but the commit finds it aborted (it timed out just
    // then), so it loads 0..=29 itself and dies before committing offsets. The next run must
    // find that load in the journal, or it loads 0..=9 again.
    let server = DorisServer::start(vec![("db.events", table(None))], DorisFaults::default());
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let store = journal_store(&dir);
        let records: Vec<SinkRecord> = (0..100)
            .map(|i| support::record(0, i, None, &json!({"id": i, "name": "e", "qty": i}).to_string()))
            .collect();
        let connect = |two_phase_commit: bool| {
            let store = store.clone();
            let mut config = config(&server, "events");
            config.two_phase_commit = two_phase_commit;
            async move { DorisSink::connect("aborted", config).await.unwrap().with_load_journal(store).await.unwrap() }
        };
        server.set_faults(DorisFaults { lost_after_apply_every: 1, ..DorisFaults::default() });
        connect(true).await.write(&records[..60]).await.expect_err("the answer is lost");
        assert_eq!(server.precommitted(), 1);
        server.set_faults(DorisFaults { abort_on_commit: true, ..DorisFaults::default() });
        let mut sink = connect(false).await;
        sink.write(&records[..30]).await.unwrap();
        sink.flush().await.unwrap();
        drop(sink); // dies before the offset commit
        server.set_faults(DorisFaults::default());
        let mut sink = connect(false).await;
        for batch in [&records[..10], &records[10..]] {
            sink.write(batch).await.unwrap();
            sink.flush().await.unwrap();
        }
        let mut ids: Vec<i64> = server.rows("db.events").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..100).collect::<Vec<_>>(), "every record exactly once");
    });
}

#[test]
fn rows_doris_filters_are_dead_lettered_and_the_rest_load() {
    let server = DorisServer::start(vec![("db.items", table(Some("id")))], DorisFaults::default());
    let dir = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let broker = support::broker_with_topic(dir.path(), "t", 1);
        let records = [
            r#"{"id":1,"name":"a","qty":1}"#,
            r#"{"id":2,"name":"b","qty":"lots"}"#,
            r#"{"id":3,"name":"far too long","qty":3}"#,
            "[1,2]",
            r#"{"id":4,"name":"d","qty":4}"#,
        ];
        let values: Vec<(Option<&str>, Vec<u8>)> = records.iter().map(|r| (None, r.as_bytes().to_vec())).collect();
        support::send(&broker, "t", &values).await;
        let mut sink = DorisSink::connect("items", config(&server, "items")).await.unwrap();
        let task = support::task_config("items", "t");
        support::drain(&broker, &mut sink, &task).await;
        let ids: Vec<i64> = server.rows("db.items").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [1, 4]);
        let dead: Vec<(String, String)> = support::dead_letters(&broker, &task)
            .await
            .into_iter()
            .map(|(body, props)| (String::from_utf8(body).unwrap(), props["DLQ_ERROR"].clone()))
            .collect();
        assert_eq!(dead.len(), 3, "{dead:?}");
        assert!(
            dead[0].0.contains("lots")
                && dead[0].1.contains("too many filtered rows")
                && dead[0].1.contains("error_log")
        );
        assert!(dead[1].0.contains("far too long") && dead[1].1.contains("too many filtered rows"));
        assert!(dead[2].0 == "[1,2]" && dead[2].1.contains("not a JSON object"), "{dead:?}");
    });
}

#[test]
fn cdc_deletes_use_the_delete_sign_and_two_phase_commit_shows_rows_only_after_flush() {
    let server = DorisServer::start(vec![("db.items", table(Some("id")))], DorisFaults::default());
    runtime().block_on(async {
        let mut cdc = config(&server, "items");
        cdc.cdc = true;
        let mut sink = DorisSink::connect("cdc", cdc).await.unwrap();
        let changes = [
            r#"{"op":"c","after":{"id":1,"name":"a","qty":1}}"#,
            r#"{"op":"c","after":{"id":2,"name":"b","qty":2}}"#,
            r#"{"op":"u","before":{"id":1,"name":"a","qty":1},"after":{"id":1,"name":"a","qty":9}}"#,
            r#"{"op":"d","before":{"id":2,"name":"b","qty":2},"after":null}"#,
            "",
        ];
        for (offset, change) in changes.iter().enumerate() {
            sink.write(&[support::record(0, offset as u64, Some("k"), change)]).await.unwrap();
        }
        sink.flush().await.unwrap();
        assert_eq!(server.rows("db.items"), [json!({"id": 1, "name": "a", "qty": 9})]);

        let mut two_phase = config(&server, "items");
        two_phase.two_phase_commit = true;
        two_phase.label_prefix = Some("two_phase".into());
        let mut sink = DorisSink::connect("2pc", two_phase).await.unwrap();
        let batch = [support::record(0, 0, None, r#"{"id":5,"name":"e","qty":5}"#)];
        sink.write(&batch).await.unwrap();
        assert_eq!(server.rows("db.items").len(), 1, "pre-committed rows are not visible");
        sink.write(&batch).await.expect("a retried pre-committed load finds its label");
        sink.flush().await.unwrap();
        assert_eq!(server.rows("db.items").len(), 2, "committed in flush");

        // Doris aborts a pre-committed load: the commit fails, and the write before the next
        // flush loads the rows again under the same label.
        let batch = [
            support::record(0, 1, None, r#"{"id":6,"name":"f","qty":6}"#),
            support::record(0, 2, None, r#"{"id":7,"name":"g","qty":7}"#),
        ];
        sink.write(&batch).await.unwrap();
        server.abort_precommitted();
        let error = sink.flush().await.expect_err("an aborted load is not committed");
        assert!(error.to_string().contains("aborted"), "{error}");
        assert_eq!(server.rows("db.items").len(), 2, "nothing of the aborted load is visible");
        sink.write(&batch).await.unwrap();
        sink.flush().await.unwrap();
        assert_eq!(server.rows("db.items").len(), 4, "the aborted rows loaded again");

        // CDC deletes under two-phase commit apply the delete sign at commit.
        let mut cdc_two_phase = config(&server, "items");
        cdc_two_phase.cdc = true;
        cdc_two_phase.two_phase_commit = true;
        let mut sink = DorisSink::connect("cdc-2pc", cdc_two_phase).await.unwrap();
        let delete = r#"{"op":"d","before":{"id":6,"name":"f","qty":6},"after":null}"#;
        sink.write(&[support::record(0, 0, Some("k"), delete)]).await.unwrap();
        sink.flush().await.unwrap();
        let ids: Vec<i64> = server.rows("db.items").iter().map(|row| row["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, [1, 5, 7]);

        // An update that changes the key removes the old row; one that keeps it replaces it.
        let mut cdc = config(&server, "items");
        cdc.cdc = true;
        cdc.key_columns = vec!["id".into()];
        cdc.label_prefix = Some("key_change".into());
        let mut sink = DorisSink::connect("cdc-keys", cdc).await.unwrap();
        let updates = [
            r#"{"op":"u","before":{"id":7,"name":"g","qty":7},"after":{"id":8,"name":"g","qty":7}}"#,
            r#"{"op":"u","before":{"id":5,"name":"e","qty":5},"after":{"id":5,"name":"e","qty":50}}"#,
        ];
        let batch: Vec<_> =
            updates.iter().enumerate().map(|(i, u)| support::record(0, i as u64, Some("k"), u)).collect();
        sink.write(&batch).await.unwrap();
        sink.flush().await.unwrap();
        let mut rows: Vec<(i64, i64)> = server
            .rows("db.items")
            .iter()
            .map(|row| (row["id"].as_i64().unwrap(), row["qty"].as_i64().unwrap()))
            .collect();
        rows.sort_unstable();
        assert_eq!(rows, [(1, 9), (5, 50), (8, 7)]);
    });
}

#[test]
fn start_up_errors_are_actionable() {
    let server = DorisServer::start(vec![("db.items", table(Some("id")))], DorisFaults::default());
    runtime().block_on(async {
        let cases = [
            (
                DorisSinkConfig { password: "wrong".into(), ..config(&server, "items") },
                "refused user \"root\" (HTTP 401)",
            ),
            (config(&server, "missing"), "Unknown table"),
            (
                DorisSinkConfig::new(format!("http://127.0.0.1:{}", weir_testsvc::free_port()), "db", "items", "root"),
                "cannot reach Doris",
            ),
            (DorisSinkConfig { label_prefix: Some("bad label".into()), ..config(&server, "items") }, "label_prefix"),
        ];
        for (config, expected) in cases {
            let error = DorisSink::connect("start", config).await.err().expect("connect should fail");
            assert!(error.to_string().contains(expected), "{error} should mention {expected:?}");
        }
    });
}
