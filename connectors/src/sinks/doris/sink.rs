//! The Doris sink: start-up check, Stream Loads with redirects and labels, two-phase commit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{Value as Json, json};
use weir_connect::{PositionStore, Sink, SinkError, SinkRecord};

use super::config::{DorisSinkConfig, label_char};
use super::expect_continue;

/// Why the sink cannot start, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum DorisSinkError {
    /// A setting is wrong.
    #[error("doris sink {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
    /// The frontend cannot be reached.
    #[error(
        "doris sink {connector:?}: cannot reach Doris at {url}: {reason} (is the frontend running, and is `url` its HTTP port?)"
    )]
    Unreachable { connector: String, url: String, reason: String },
    /// The frontend refused the credentials.
    #[error(
        "doris sink {connector:?}: Doris at {url} refused user {username:?} (HTTP {status}); check `username` and `password`"
    )]
    Auth { connector: String, url: String, username: String, status: u16 },
    /// The table is not there.
    #[error("doris sink {connector:?}: table `{database}`.`{table}` is not available: {reason}")]
    MissingTable { connector: String, database: String, table: String, reason: String },
    /// The load journal cannot be read (a local file or store problem).
    #[error("doris sink {connector:?}: cannot read its load journal: {reason}")]
    Journal { connector: String, reason: String },
}

/// Loads records into one table.
pub struct DorisSink {
    loader: Arc<Loader>,
    /// Pre-committed loads waiting for `flush` (two-phase commit), in load order (commit order
    /// decides which version of a key wins).
    precommitted: VecDeque<Precommitted>,
    /// The (queue, offset) of every record whose rows are in Doris since the last flush
    /// (pre-committed in those loads, or committed): writing the batch again (after a failed
    /// write or flush) skips them, so they neither load nor count twice.
    loaded_records: std::collections::BTreeSet<(u32, u64)>,
    /// The (queue, offset) of every record a load refused since the last flush, with Doris's
    /// reason: writing the batch again (after another queue failed the write) refuses them
    /// again without loading, so a fresh split budget cannot load them after later offsets
    /// of their queue that already loaded (an older version of a key over a newer one).
    refused_records: BTreeMap<(u32, u64), String>,
}

/// Every load range (the first and last offset of a load's records: its label) not yet
/// behind a queue's committed offset, saved durably *before* its load is sent — the split
/// halves of a refused load too. After a restart the re-read batch may end at another offset
/// than the batch a crash interrupted, and so get other labels; the journal tells the sink
/// which ranges may already be loaded, so it loads such a range again only under its own
/// label (when the batch holds it whole, Doris refuses a copy) and otherwise asks Doris for
/// the label's state before loading any part of it.
///
/// **Invariant:** a queue's ranges are laminar — any two are disjoint or one holds the other
/// (a refused load's halves inside it) — kept sorted by first offset, outer before inner.
struct LoadJournal {
    store: Arc<dyn PositionStore>,
    /// The key in `store`: the connector's name.
    key: String,
    /// What is saved: queue → its ranges.
    saved: BTreeMap<u32, Vec<(u64, u64)>>,
}

/// The journal's field in the store's JSON object.
const JOURNAL_FIELD: &str = "doris_loads";

/// One record's row (a CDC update that changed the key has two rows, sharing the record's
/// index and offset): `(batch index, queue offset, row)`.
type Row = (usize, u64, Json);

/// A stretch of one queue's rows, as the journaled ranges decide it.
enum Segment {
    /// Loaded under the label of its first and last offset.
    Load(Vec<Row>),
    /// An earlier load under `label` holds these records already: visible, or pre-committed
    /// (committed by label in its turn among the queue's loads, or with two-phase commit in
    /// `flush`; if Doris aborted it meanwhile, `rows` load again).
    Loaded { label: String, rows: Vec<Row>, precommitted: bool },
}

/// A pre-committed load (two-phase commit) waiting for its commit.
struct Precommitted {
    label: String,
    txn_id: Option<u64>,
    queue_id: u32,
    offsets: Vec<u64>,
    /// Rows it holds, counted as loaded when it commits.
    rows: u64,
}

/// What a commit of a pre-committed load ended as.
enum CommitOutcome {
    /// Committed now or earlier.
    Committed,
    /// Doris aborted the transaction (its pre-commit timed out, a backend failed, or an
    /// operator aborted it): its rows are not in the table and must be loaded again.
    Aborted(String),
}

/// What loads use: one per sink, shared by the queues loading in parallel.
struct Loader {
    connector: String,
    config: DorisSinkConfig,
    client: reqwest::Client,
    label_prefix: String,
    /// Where load ranges are saved before they load (see `LoadJournal`); none without
    /// `with_load_journal`.
    journal: Option<tokio::sync::Mutex<LoadJournal>>,
}

/// What one queue's loads did.
#[derive(Default)]
struct QueueLoad {
    /// Rows loaded and committed (pre-committed ones count when they commit).
    loaded: u64,
    /// Rows found already in Doris (a lost answer's load, or an earlier run's or sink's),
    /// counted apart so no row counts twice in `weir_doris_sink_rows_total`.
    found_loaded: u64,
    /// Offsets of the records whose rows are committed in Doris now.
    settled: Vec<u64>,
    refused: Vec<(usize, String)>,
    /// Pre-committed loads (two-phase commit): label, transaction id, the offsets loaded and
    /// the number of rows.
    precommitted: Vec<(String, Option<u64>, Vec<u64>, u64)>,
}

impl QueueLoad {
    /// `rows` are committed in Doris.
    fn settle(&mut self, rows: &[Row]) {
        self.loaded += rows.len() as u64;
        self.mark_settled(rows);
    }

    /// `rows` were found committed in Doris by an earlier load.
    fn settle_found(&mut self, rows: &[Row]) {
        self.found_loaded += rows.len() as u64;
        self.mark_settled(rows);
    }

    fn mark_settled(&mut self, rows: &[Row]) {
        self.settled.extend(rows.iter().map(|row| row.1));
        self.settled.dedup();
    }

    fn merge(&mut self, part: QueueLoad) {
        self.loaded += part.loaded;
        self.found_loaded += part.found_loaded;
        self.settled.extend(part.settled);
        self.refused.extend(part.refused);
        self.precommitted.extend(part.precommitted);
    }
}

/// What a Stream Load ended as.
enum LoadOutcome {
    /// Committed (or pre-committed, with its transaction id when Doris gave it);
    /// `found_loaded` when an earlier load under the label had committed it.
    Loaded { txn_id: Option<u64>, found_loaded: bool },
    /// Doris refused the data itself.
    DataRefused(String),
}

/// Most splits of one queue's refused loads per write (each costs a load, and a journal entry
/// with its fsync): about 2·log₂ n loads find one bad record among n, so 32 find a few among
/// thousands; past it a refused part's records are all dead-lettered with Doris's reason.
/// Per queue, so one queue's refusals never spend another's, and the same batch splits the
/// same way on every retry (the journal then gains nothing new); records refused before a
/// retry are refused again without loading (`DorisSink::refused_records`).
const SPLITS_PER_QUEUE_MAX: usize = 32;

/// The delete sign column of unique-key tables.
const DELETE_SIGN: &str = "__DORIS_DELETE_SIGN__";

impl DorisSink {
    /// Checks the settings and asks the frontend for the table's schema
    /// (`GET /api/{db}/{table}/_schema`), so a wrong address, wrong credentials or a missing
    /// table fail now with an actionable error.
    pub async fn connect(connector: &str, config: DorisSinkConfig) -> Result<DorisSink, DorisSinkError> {
        let fail_config = |field, reason| DorisSinkError::Config { connector: connector.into(), field, reason };
        config.validate().map_err(|(field, reason)| fail_config(field, reason))?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .no_proxy()
            .build()
            .map_err(|e| fail_config("url", e.to_string()))?;
        let url = format!("{}/api/{}/{}/_schema", config.url.trim_end_matches('/'), config.database, config.table);
        let unreachable = |reason: String| DorisSinkError::Unreachable {
            connector: connector.into(),
            url: config.url.clone(),
            reason,
        };
        let response = client
            .get(&url)
            .basic_auth(&config.username, Some(&config.password))
            .send()
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(DorisSinkError::Auth {
                connector: connector.into(),
                url: config.url.clone(),
                username: config.username.clone(),
                status: status.as_u16(),
            });
        }
        let body = response.bytes().await.map_err(|e| unreachable(e.to_string()))?;
        let reply: Json = serde_json::from_slice(&body).map_err(|_| {
            unreachable(format!("GET {url} answered HTTP {status} without JSON; is this a Doris frontend?"))
        })?;
        if !status.is_success() || reply.get("code").and_then(Json::as_i64) != Some(0) {
            let reason = reply.get("msg").and_then(Json::as_str).unwrap_or("no message").to_string();
            return Err(DorisSinkError::MissingTable {
                connector: connector.into(),
                database: config.database.clone(),
                table: config.table.clone(),
                reason: format!("{reason} (HTTP {status})"),
            });
        }
        let label_prefix = config.label_prefix.clone().unwrap_or_else(|| default_label_prefix(connector));
        tracing::info!(connector, url = %config.url, database = %config.database, table = %config.table, "doris sink connected");
        Ok(DorisSink {
            loader: Arc::new(Loader { connector: connector.into(), config, client, label_prefix, journal: None }),
            precommitted: VecDeque::new(),
            loaded_records: Default::default(),
            refused_records: BTreeMap::new(),
        })
    }

    /// Saves load ranges in `store` under the connector's name before each load, and
    /// honours the ranges an earlier run saved there (see `LoadJournal`), so a load whose
    /// answer was lost before a restart is never loaded again under another label. Without
    /// a journal only a retry of the same batch is protected.
    pub async fn with_load_journal(mut self, store: Arc<dyn PositionStore>) -> Result<DorisSink, DorisSinkError> {
        let connector = self.loader.connector.clone();
        let invalid = |reason: String| DorisSinkError::Journal { connector: connector.clone(), reason };
        let saved: BTreeMap<u32, Vec<(u64, u64)>> =
            match store.load(&connector).await.map_err(|e| invalid(e.to_string()))? {
                None => BTreeMap::new(),
                Some(state) => match state.get(JOURNAL_FIELD) {
                    None => BTreeMap::new(),
                    Some(loads) => serde_json::from_value(loads.clone())
                        .map_err(|e| invalid(format!("`{JOURNAL_FIELD}` is not queue → [[first, last], …]: {e}")))?,
                },
            };
        for (queue_id, ranges) in &saved {
            if !laminar(ranges) {
                return Err(invalid(format!(
                    "queue {queue_id}'s ranges {ranges:?} are not sorted outer-first with any two disjoint or nested"
                )));
            }
        }
        tracing::info!(connector = %connector, queues = saved.len(), "doris sink load journal read");
        let loader = Arc::get_mut(&mut self.loader).expect("the loader is not shared before the first write");
        loader.journal = Some(tokio::sync::Mutex::new(LoadJournal { store, key: connector, saved }));
        Ok(self)
    }

    /// The row a record loads; `Ok(None)` for a skipped tombstone, `Err` why it is poison.
    /// The rows a record loads, in order; `Err` is why it is poison.
    fn rows(&self, record: &SinkRecord) -> Result<Vec<Json>, String> {
        let value = &record.record.value;
        if value.is_empty() {
            return if self.loader.config.cdc { Ok(Vec::new()) } else { Err("the record's value is empty".into()) };
        }
        let json: Json = serde_json::from_slice(value).map_err(|e| format!("the record's value is not JSON: {e}"))?;
        if !self.loader.config.cdc {
            return if json.is_object() {
                Ok(vec![json])
            } else {
                Err("the record's value is not a JSON object".into())
            };
        }
        let signed = |image: &Json, delete: bool| {
            let mut row = image.as_object().cloned().unwrap_or_default();
            row.insert(DELETE_SIGN.to_string(), json!(i32::from(delete)));
            Json::Object(row)
        };
        let (delete, image) = crate::sinks::change_image(&json)?;
        let mut rows = Vec::with_capacity(2);
        // An update that changed the key deletes the old row first (a different key: the
        // order of the two rows in the load does not matter).
        let key_columns = &self.loader.config.key_columns;
        if let Some(before) = crate::sinks::previous_image(&json)
            && !key_columns.is_empty()
            && key_columns.iter().any(|column| before.get(column) != image.get(column))
        {
            rows.push(signed(before, true));
        }
        rows.push(signed(&image, delete));
        Ok(rows)
    }
}

impl Loader {
    /// One Stream Load of `rows` under `label`, following redirects with the credentials. The
    /// body goes only where it is asked for (`Expect: 100-continue`, see `expect_continue`):
    /// the frontend answers 307 to a backend without reading it.
    async fn load(&self, label: &str, rows: &[&Json]) -> Result<LoadOutcome, SinkError> {
        let body = bytes::Bytes::from(
            serde_json::to_vec(rows).map_err(|e| SinkError::retryable(format!("doris: cannot encode rows: {e}")))?,
        );
        let mut url = format!(
            "{}/api/{}/{}/_stream_load",
            self.config.url.trim_end_matches('/'),
            self.config.database,
            self.config.table
        );
        let mut headers = vec![
            ("label", label.to_string()),
            ("format", "json".to_string()),
            ("strip_outer_array", "true".to_string()),
            // Without strict mode Doris loads a value that does not fit its column as NULL.
            ("strict_mode", "true".to_string()),
            ("content-type", "application/json".to_string()),
        ];
        if self.config.cdc {
            headers.push(("hidden_columns", DELETE_SIGN.to_string()));
        }
        if self.config.two_phase_commit {
            headers.push(("two_phase_commit", "true".to_string()));
        }
        let credentials = (self.config.username.as_str(), self.config.password.as_str());
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let mut hops = 0;
        let reply = loop {
            let answer = expect_continue::put(&url, credentials, &headers, body.clone(), timeout)
                .await
                .map_err(|e| SinkError::retryable(format!("doris stream load {label}: {e}")))?;
            let status = answer.status;
            if status.is_redirection() {
                hops += 1;
                match answer.location {
                    Some(location) if hops <= self.config.redirects_max => {
                        url = location;
                        continue;
                    }
                    Some(_) => {
                        return Err(SinkError::retryable(format!(
                            "doris stream load {label}: more than {} redirects",
                            self.config.redirects_max
                        )));
                    }
                    None => {
                        return Err(SinkError::retryable(format!(
                            "doris stream load {label}: HTTP {status} without Location"
                        )));
                    }
                }
            }
            let text = String::from_utf8_lossy(&answer.body);
            if !status.is_success() {
                return Err(SinkError::retryable(format!(
                    "doris stream load {label}: HTTP {status}: {}",
                    truncate(&text, 300)
                )));
            }
            break serde_json::from_str::<Json>(&text).map_err(|_| {
                SinkError::retryable(format!("doris stream load {label}: answer is not JSON: {}", truncate(&text, 300)))
            })?;
        };
        let field = |name: &str| reply.get(name).and_then(Json::as_str).unwrap_or_default().to_string();
        let txn_id = reply.get("TxnId").and_then(Json::as_u64);
        match field("Status").as_str() {
            "Success" | "Publish Timeout" => Ok(LoadOutcome::Loaded { txn_id, found_loaded: false }),
            "Label Already Exists" => match field("ExistingJobStatus").as_str() {
                "FINISHED" | "VISIBLE" | "COMMITTED" => Ok(LoadOutcome::Loaded { txn_id: None, found_loaded: true }),
                "PRECOMMITTED" if self.config.two_phase_commit => {
                    Ok(LoadOutcome::Loaded { txn_id: None, found_loaded: false })
                }
                // Left by an earlier run with two-phase commit: committed now, before any later
                // load of the queue, so the later version of a key still wins.
                "PRECOMMITTED" => match self.commit(label, None).await? {
                    CommitOutcome::Committed => Ok(LoadOutcome::Loaded { txn_id: None, found_loaded: false }),
                    CommitOutcome::Aborted(reason) => Err(SinkError::retryable(format!(
                        "doris stream load {label}: an earlier run's pre-committed load was aborted ({reason}); loading it again"
                    ))),
                },
                other => Err(SinkError::retryable(format!(
                    "doris stream load {label}: an earlier load with this label is {other:?}; retrying until it ends"
                ))),
            },
            "Fail" => {
                let message = field("Message");
                if is_data_quality(&message) {
                    let error_url = field("ErrorURL");
                    Ok(LoadOutcome::DataRefused(format!("doris refused the data: {message} (errors: {error_url})")))
                } else {
                    Err(SinkError::retryable(format!("doris stream load {label} failed: {message}")))
                }
            }
            // The frontend answers its own refusals as `{"status": "FAILED", "msg": …}`.
            other => Err(SinkError::retryable(format!(
                "doris stream load {label}: unexpected Status {other:?}: {}",
                truncate(&reply.to_string(), 300)
            ))),
        }
    }

    /// Commits a pre-committed load (two-phase commit).
    async fn commit(&self, label: &str, txn_id: Option<u64>) -> Result<CommitOutcome, SinkError> {
        self.finish_precommitted("commit", label, txn_id).await
    }

    /// Aborts a pre-committed load the sink forgot (its rows load again under their labels),
    /// so it does not hold one of the database's running transactions until Doris's
    /// pre-commit timeout. Best effort: a failure is logged. `true` when Doris answers that
    /// it is already committed, so its rows are in the table.
    async fn abort(&self, label: &str, txn_id: Option<u64>) -> bool {
        match self.finish_precommitted("abort", label, txn_id).await {
            Ok(CommitOutcome::Aborted(_)) => false,
            Ok(CommitOutcome::Committed) => {
                tracing::warn!(connector = %self.connector, %label, "doris: a forgotten pre-commit answered its abort as committed; its rows stay and are not loaded again (an earlier load of its queue is loaded after them)");
                true
            }
            Err(error) => {
                tracing::warn!(connector = %self.connector, %label, %error, "doris: cannot abort a forgotten pre-commit");
                false
            }
        }
    }

    /// `PUT /api/{db}/_stream_load_2pc` with `txn_operation` `commit` or `abort`, by
    /// transaction id or label.
    async fn finish_precommitted(
        &self,
        operation: &str,
        label: &str,
        txn_id: Option<u64>,
    ) -> Result<CommitOutcome, SinkError> {
        let url = format!("{}/api/{}/_stream_load_2pc", self.config.url.trim_end_matches('/'), self.config.database);
        let mut request = self
            .client
            .request(Method::PUT, &url)
            .basic_auth(&self.config.username, Some(&self.config.password))
            .header("txn_operation", operation);
        request = match txn_id {
            Some(txn_id) => request.header("txn_id", txn_id.to_string()),
            None => request.header("label", label),
        };
        let response =
            request.send().await.map_err(|e| SinkError::retryable(format!("doris {operation} {label}: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let reply: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        let outcome = reply.get("status").or_else(|| reply.get("Status")).and_then(Json::as_str).unwrap_or_default();
        let message = reply.get("msg").or_else(|| reply.get("Message")).and_then(Json::as_str).unwrap_or_default();
        if operation == "abort" && status.is_success() && outcome.eq_ignore_ascii_case("success") {
            return Ok(CommitOutcome::Aborted(message.to_string()));
        }
        match commit_outcome(status, outcome, message) {
            Some(outcome) => Ok(outcome),
            None => {
                Err(SinkError::retryable(format!("doris {operation} {label}: HTTP {status}: {}", truncate(&text, 300))))
            }
        }
    }

    /// The state of the load under `label` (`GET /api/{db}/get_load_state`): `UNKNOWN`,
    /// `PREPARE`, `PRECOMMITTED`, `COMMITTED`, `VISIBLE` or `ABORTED`.
    async fn load_state(&self, label: &str) -> Result<String, SinkError> {
        // A label is letters, digits, `_` and `-`: nothing to escape in the query.
        let url = format!(
            "{}/api/{}/get_load_state?label={label}",
            self.config.url.trim_end_matches('/'),
            self.config.database
        );
        let failed = |reason: String| SinkError::retryable(format!("doris load state of {label}: {reason}"));
        let response = self
            .client
            .get(&url)
            .basic_auth(&self.config.username, Some(&self.config.password))
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| failed(e.to_string()))?;
        let reply: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        match (status.is_success(), reply.get("code").and_then(Json::as_i64), reply.get("data").and_then(Json::as_str))
        {
            (true, Some(0), Some(state)) => Ok(state.to_ascii_uppercase()),
            _ => Err(failed(format!("HTTP {status}: {}", truncate(&text, 300)))),
        }
    }

    /// Splits one queue's rows (offset order) by the journaled `ranges` (laminar, see
    /// `LoadJournal`). Rows outside them load as usual. A range the rows hold whole loads
    /// under its own label again (Doris refuses a second copy, and a refused one splits the
    /// same way again). For part of a range Doris is asked: a visible or committed load holds
    /// those rows already; a pre-committed one is committed (with two-phase commit, in
    /// `flush`); for an unknown or aborted one the ranges inside it (a refused load's halves)
    /// decide, the same way.
    async fn resolve(&self, queue_id: u32, rows: Vec<Row>, ranges: &[(u64, u64)]) -> Result<Vec<Segment>, SinkError> {
        let mut segments = Vec::new();
        self.resolve_within(queue_id, rows, ranges, None, &mut segments).await?;
        Ok(segments)
    }

    /// `resolve` for `rows` inside `within` (all of them at the top), against the outermost
    /// ranges strictly inside it; appends to `segments` in offset order. Recursion is as
    /// deep as ranges nest (a refused load's halves: about log₂ of a batch).
    fn resolve_within<'a>(
        &'a self,
        queue_id: u32,
        mut rows: Vec<Row>,
        ranges: &'a [(u64, u64)],
        within: Option<(u64, u64)>,
        segments: &'a mut Vec<Segment>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let inside = |range: &(u64, u64)| {
                within.is_none_or(|outer| *range != outer && outer.0 <= range.0 && range.1 <= outer.1)
            };
            let mut outermost: Vec<(u64, u64)> = Vec::new();
            for range in ranges.iter().filter(|range| inside(range)) {
                if outermost.last().is_none_or(|outer| outer.1 < range.0) {
                    outermost.push(*range);
                }
            }
            for (first, last) in outermost {
                let before = rows.iter().take_while(|row| row.1 < first).count();
                if before > 0 {
                    segments.push(Segment::Load(rows.drain(..before).collect()));
                }
                let held = rows.iter().take_while(|row| row.1 <= last).count();
                if held == 0 {
                    continue;
                }
                let part: Vec<Row> = rows.drain(..held).collect();
                // A range with none inside it, held whole, loads under its own label again:
                // Doris refuses a copy of a finished load. One with ranges inside was refused
                // once and split; reloading it whole could now succeed and load its halves'
                // rows again, so Doris's state of it decides, like for part of a range.
                let nested = ranges.iter().any(|range| *range != (first, last) && first <= range.0 && range.1 <= last);
                if !nested && part[0].1 == first && part[part.len() - 1].1 == last {
                    segments.push(Segment::Load(part));
                    continue;
                }
                let label = self.label(queue_id, first, last);
                let state = self.load_state(&label).await?;
                tracing::info!(connector = %self.connector, %label, %state, rows = part.len(), "doris sink: part of an earlier load");
                match state.as_str() {
                    "VISIBLE" | "COMMITTED" | "FINISHED" => {
                        segments.push(Segment::Loaded { label, rows: part, precommitted: false })
                    }
                    "PRECOMMITTED" => segments.push(Segment::Loaded { label, rows: part, precommitted: true }),
                    // Never loaded whole: its halves (if it was refused) decide.
                    "UNKNOWN" | "ABORTED" => {
                        self.resolve_within(queue_id, part, ranges, Some((first, last)), segments).await?
                    }
                    other => {
                        return Err(SinkError::retryable(format!(
                            "doris: an earlier load {label} is {other}; waiting for it to end"
                        )));
                    }
                }
            }
            if !rows.is_empty() {
                segments.push(Segment::Load(rows));
            }
            Ok(())
        })
    }

    /// Loads one queue's segments in order, with one budget of splits of refused loads (see
    /// `SPLITS_PER_QUEUE_MAX`).
    async fn load_segments(self: Arc<Self>, queue_id: u32, segments: Vec<Segment>) -> Result<QueueLoad, SinkError> {
        let mut outcome = QueueLoad::default();
        let mut splits_left = SPLITS_PER_QUEUE_MAX;
        for segment in segments {
            match segment {
                Segment::Load(rows) => {
                    // Journaled by `prepare` already.
                    let part = self.clone().load_queue(queue_id, rows, false, &mut splits_left).await?;
                    outcome.merge(part);
                }
                Segment::Loaded { rows, precommitted: false, .. } => outcome.settle_found(&rows),
                Segment::Loaded { label, rows, precommitted: true } if self.config.two_phase_commit => {
                    let mut offsets: Vec<u64> = rows.iter().map(|row| row.1).collect();
                    offsets.dedup();
                    outcome.precommitted.push((label, None, offsets, rows.len() as u64));
                }
                // Left pre-committed by a run with two-phase commit: committed in its turn, so
                // the queue's later loads still win.
                Segment::Loaded { label, rows, precommitted: true } => match self.commit(&label, None).await? {
                    CommitOutcome::Committed => outcome.settle(&rows),
                    CommitOutcome::Aborted(reason) => {
                        tracing::info!(connector = %self.connector, %label, %reason, "doris sink: an earlier pre-commit was aborted; loading its rows");
                        // A range no journal entry covers yet: saved before it loads.
                        let part = self.clone().load_queue(queue_id, rows, true, &mut splits_left).await?;
                        outcome.merge(part);
                    }
                },
            }
        }
        Ok(outcome)
    }

    fn label(&self, queue_id: u32, first: u64, last: u64) -> String {
        let label = format!("{}_{queue_id}_{first}_{last}", self.label_prefix);
        // A prefix is at most 64 characters, the rest at most 3 + 10 + 20 + 20.
        assert!(label.len() <= DorisSinkConfig::LABEL_CHARS_MAX, "label {label} too long");
        label
    }

    /// Loads one queue's rows (`(batch index, offset, row)`, in offset order); a load refused
    /// for data quality is split in halves until the refused records are alone, each part
    /// under the deterministic label of its offset range, while `splits_left` lasts (then the
    /// refused part's records are all refused). Every part but the whole (`journal_whole`:
    /// that one too) is journaled before it loads.
    async fn load_queue(
        self: Arc<Self>,
        queue_id: u32,
        rows: Vec<Row>,
        journal_whole: bool,
        splits_left: &mut usize,
    ) -> Result<QueueLoad, SinkError> {
        let mut outcome = QueueLoad::default();
        let mut parts = vec![(0, rows.len())];
        while let Some((start, end)) = parts.pop() {
            if start == end {
                continue;
            }
            let part = &rows[start..end];
            let range = (part[0].1, part[part.len() - 1].1);
            let label = self.label(queue_id, range.0, range.1);
            if let Some(journal) = &self.journal
                && (journal_whole || (start, end) != (0, rows.len()))
            {
                // A refused load's half: saved before it loads, like the whole was.
                journal.lock().await.add(queue_id, range).await?;
            }
            let all: Vec<&Json> = part.iter().map(|(_, _, row)| row).collect();
            match self.load(&label, &all).await? {
                LoadOutcome::Loaded { found_loaded: true, .. } => outcome.settle_found(part),
                LoadOutcome::Loaded { txn_id, .. } if self.config.two_phase_commit => {
                    let offsets = part.iter().map(|(_, offset, _)| *offset).collect();
                    outcome.precommitted.push((label, txn_id, offsets, part.len() as u64));
                }
                LoadOutcome::Loaded { .. } => outcome.settle(part),
                // One record (its rows share an offset, so they are never split apart: a part
                // is a range of records, and its label their offsets).
                LoadOutcome::DataRefused(reason) if part.iter().all(|row| row.0 == part[0].0) => {
                    outcome.refused.push((part[0].0, reason))
                }
                LoadOutcome::DataRefused(reason) if *splits_left == 0 => {
                    let mut indexes: Vec<usize> = part.iter().map(|row| row.0).collect();
                    indexes.dedup();
                    let why = format!(
                        "{reason} (refused in a load of {} records; the sink stops splitting a queue's refused \
                         loads after {SPLITS_PER_QUEUE_MAX} splits per batch, so these were not tried one by one)",
                        indexes.len()
                    );
                    outcome.refused.extend(indexes.into_iter().map(|index| (index, why.clone())));
                }
                LoadOutcome::DataRefused(reason) => {
                    *splits_left -= 1;
                    tracing::debug!(connector = %self.connector, %label, %reason, "doris refused a load's data; splitting it");
                    // Cut at a record boundary near the middle: a record's rows stay together.
                    let mut middle = start + part.len() / 2;
                    while middle > start && rows[middle].0 == rows[middle - 1].0 {
                        middle -= 1;
                    }
                    if middle == start {
                        // The first record runs past the middle: cut after it (the part holds
                        // more than one record, so there is a boundary).
                        middle = start + 1;
                        while rows[middle].0 == rows[start].0 {
                            middle += 1;
                        }
                    }
                    parts.push((middle, end));
                    parts.push((start, middle)); // popped first: loads keep offset order
                }
            }
        }
        Ok(outcome)
    }
}

impl LoadJournal {
    /// The queue's ranges not behind `first_offset` (the first offset of the batch being
    /// written, at or past the committed offset).
    fn live(&self, queue_id: u32, first_offset: u64) -> Vec<(u64, u64)> {
        self.saved
            .get(&queue_id)
            .map_or_else(Vec::new, |ranges| ranges.iter().filter(|range| range.1 >= first_offset).copied().collect())
    }

    /// Before a write's loads: forgets each written queue's ranges behind its `first_offsets`
    /// entry (their offsets are committed) and adds the `loading` ranges; saves when that
    /// changed anything (a retried batch changes nothing).
    async fn prepare(
        &mut self,
        first_offsets: &BTreeMap<u32, u64>,
        loading: &[(u32, (u64, u64))],
    ) -> Result<(), SinkError> {
        let mut next = self.saved.clone();
        for (queue_id, first_offset) in first_offsets {
            if let Some(ranges) = next.get_mut(queue_id) {
                ranges.retain(|range| range.1 >= *first_offset);
                if ranges.is_empty() {
                    next.remove(queue_id);
                }
            }
        }
        for (queue_id, range) in loading {
            insert_range(next.entry(*queue_id).or_default(), *range);
        }
        self.save(next).await
    }

    /// Adds one range (a refused load's half) and saves it.
    async fn add(&mut self, queue_id: u32, range: (u64, u64)) -> Result<(), SinkError> {
        let mut next = self.saved.clone();
        insert_range(next.entry(queue_id).or_default(), range);
        self.save(next).await
    }

    async fn save(&mut self, next: BTreeMap<u32, Vec<(u64, u64)>>) -> Result<(), SinkError> {
        if next == self.saved {
            return Ok(());
        }
        for (queue_id, ranges) in &next {
            assert!(laminar(ranges), "doris load journal: queue {queue_id}'s ranges {ranges:?} are not laminar");
        }
        let state = json!({ JOURNAL_FIELD: next });
        self.store.save(&self.key, Some(&state)).await.map_err(|e| {
            SinkError::retryable(format!("doris sink {:?}: cannot save its load journal: {e}", self.key))
        })?;
        self.saved = next;
        Ok(())
    }
}

/// Inserts `range` into `ranges` (sorted by first offset, outer before inner) unless it is
/// there. A range it overlaps without either holding the other is dropped: only offsets reset
/// back over journaled loads (a replay the user asked for) make such a pair.
fn insert_range(ranges: &mut Vec<(u64, u64)>, range: (u64, u64)) {
    let crosses = |other: &(u64, u64)| {
        let disjoint = other.1 < range.0 || range.1 < other.0;
        let nested = (other.0 <= range.0 && range.1 <= other.1) || (range.0 <= other.0 && other.1 <= range.1);
        !disjoint && !nested
    };
    ranges.retain(|other| {
        let keep = !crosses(other);
        if !keep {
            tracing::warn!(
                ?other,
                ?range,
                "doris load journal: dropping a range the new load crosses (offsets reset?)"
            );
        }
        keep
    });
    let key = |r: &(u64, u64)| (r.0, std::cmp::Reverse(r.1));
    if let Err(at) = ranges.binary_search_by_key(&key(&range), key) {
        ranges.insert(at, range);
    }
}

/// Whether `ranges` are sorted by first offset (outer before inner, no repeats) and any two
/// are disjoint or nested.
fn laminar(ranges: &[(u64, u64)]) -> bool {
    let mut open: Vec<(u64, u64)> = Vec::new();
    for (index, range) in ranges.iter().enumerate() {
        if range.0 > range.1 {
            return false;
        }
        if index > 0 {
            let previous = ranges[index - 1];
            if (previous.0, std::cmp::Reverse(previous.1)) >= (range.0, std::cmp::Reverse(range.1)) {
                return false;
            }
        }
        while open.last().is_some_and(|outer| outer.1 < range.0) {
            open.pop();
        }
        if open.last().is_some_and(|outer| range.1 > outer.1) {
            return false; // overlaps its neighbour without being inside it
        }
        open.push(*range);
    }
    true
}

/// `weir_<connector>_<hash>`: the connector name cut to 32 label characters, and a hash of the
/// whole name so two connectors whose names differ only where they were cut or replaced
/// never share labels.
fn default_label_prefix(connector: &str) -> String {
    let readable: String = connector.chars().take(32).map(|c| if label_char(c) { c } else { '_' }).collect();
    // FNV-1a 64: stable across runs and builds (a label must be the same after a restart).
    let hash =
        connector.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("weir_{readable}_{:08x}", hash as u32)
}

/// What a commit answer means: committed (now, or already — a retried commit), aborted, or
/// `None` for anything else (retried).
fn commit_outcome(status: StatusCode, outcome: &str, message: &str) -> Option<CommitOutcome> {
    if !status.is_success() {
        return None;
    }
    let message_lower = message.to_ascii_lowercase();
    if message_lower.contains("abort") {
        return Some(CommitOutcome::Aborted(message.to_string()));
    }
    let already_done =
        ["already committed", "already visible", "already finished"].iter().any(|done| message_lower.contains(done));
    (outcome.eq_ignore_ascii_case("success") || already_done).then_some(CommitOutcome::Committed)
}

/// Whether a failed load's message blames the data rather than the cluster.
fn is_data_quality(message: &str) -> bool {
    message.contains("too many filtered rows") || message.contains("DATA_QUALITY_ERROR")
}

fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut cut = text.len().min(bytes_max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[async_trait]
impl Sink for DorisSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut refused = BTreeMap::new();
        // Rows per queue, in offset order. Records an earlier write of this batch loaded
        // (before a failed write or flush) are not loaded again.
        let mut queues: BTreeMap<u32, Vec<Row>> = BTreeMap::new();
        // Each queue's first offset in the batch: offsets before it are committed.
        let mut first_offsets: BTreeMap<u32, u64> = BTreeMap::new();
        for (index, record) in batch.iter().enumerate() {
            let first = first_offsets.entry(record.queue_id).or_insert(record.queue_offset);
            *first = (*first).min(record.queue_offset);
            match self.rows(record) {
                Ok(rows) => {
                    let (queue_id, offset) = (record.queue_id, record.queue_offset);
                    if let Some(reason) = self.refused_records.get(&(queue_id, offset)) {
                        refused.insert(index, reason.clone());
                    } else if !self.loaded_records.contains(&(queue_id, offset)) {
                        queues.entry(queue_id).or_default().extend(rows.into_iter().map(|row| (index, offset, row)));
                    }
                }
                Err(reason) => {
                    refused.insert(index, reason);
                }
            }
        }
        // The journal decides how each queue's rows load; the ranges about to load are saved
        // before any of them starts.
        let mut plans: Vec<(u32, Vec<Segment>)> = Vec::with_capacity(queues.len());
        for (queue_id, rows) in queues {
            let segments = match &self.loader.journal {
                Some(journal) => {
                    let ranges = journal.lock().await.live(queue_id, first_offsets[&queue_id]);
                    self.loader.resolve(queue_id, rows, &ranges).await?
                }
                None => vec![Segment::Load(rows)],
            };
            plans.push((queue_id, segments));
        }
        if let Some(journal) = &self.loader.journal {
            let loading: Vec<(u32, (u64, u64))> = plans
                .iter()
                .flat_map(|(queue_id, segments)| {
                    segments.iter().filter_map(move |segment| match segment {
                        Segment::Load(rows) if !rows.is_empty() => {
                            Some((*queue_id, (rows[0].1, rows[rows.len() - 1].1)))
                        }
                        _ => None,
                    })
                })
                .collect();
            journal.lock().await.prepare(&first_offsets, &loading).await?;
        }
        // Queues load in parallel, `concurrency` at a time; one queue's loads stay in order.
        let mut pending = plans.into_iter();
        loop {
            let mut tasks = tokio::task::JoinSet::new();
            for (queue_id, segments) in pending.by_ref().take(self.loader.config.concurrency) {
                let loader = self.loader.clone();
                tasks.spawn(async move { (queue_id, loader.load_segments(queue_id, segments).await) });
            }
            if tasks.is_empty() {
                break;
            }
            let mut failure = None;
            while let Some(joined) = tasks.join_next().await {
                let (queue_id, outcome) = match joined {
                    Ok(done) => done,
                    Err(error) => {
                        failure = Some(SinkError::retryable(format!("doris sink loader failed: {error}")));
                        continue;
                    }
                };
                match outcome {
                    Ok(outcome) => {
                        // Counted now: a failure of another queue does not undo these loads,
                        // and the retry skips their records.
                        metrics::counter!("weir_doris_sink_rows_total", "connector" => self.loader.connector.clone())
                            .increment(outcome.loaded);
                        metrics::counter!("weir_doris_sink_rows_found_loaded_total", "connector" => self.loader.connector.clone())
                            .increment(outcome.found_loaded);
                        self.loaded_records.extend(outcome.settled.iter().map(|offset| (queue_id, *offset)));
                        for (index, reason) in &outcome.refused {
                            let offset = batch[*index].queue_offset;
                            self.refused_records.insert((queue_id, offset), reason.clone());
                        }
                        refused.extend(outcome.refused);
                        for (label, txn_id, offsets, rows) in outcome.precommitted {
                            self.loaded_records.extend(offsets.iter().map(|offset| (queue_id, *offset)));
                            match self.precommitted.iter_mut().find(|known| known.label == label) {
                                // Another part of an inherited pre-commit (its records are new:
                                // the known ones are skipped): one commit, all its rows.
                                Some(known) => {
                                    known.offsets.extend(offsets);
                                    known.rows += rows;
                                }
                                None => {
                                    self.precommitted.push_back(Precommitted { label, txn_id, queue_id, offsets, rows })
                                }
                            }
                        }
                    }
                    Err(error) => failure = Some(error),
                }
            }
            if let Some(error) = failure {
                return Err(error); // finished loads keep their labels: the retry skips them
            }
        }
        if refused.is_empty() {
            return Ok(());
        }
        metrics::counter!("weir_doris_sink_rows_refused_total", "connector" => self.loader.connector.clone())
            .increment(refused.len() as u64);
        let message =
            format!("doris sink {:?}: {} record(s) of the batch refused", self.loader.connector, refused.len());
        Err(SinkError::poison_each(message, refused))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while let Some(load) = self.precommitted.pop_front() {
            match self.loader.commit(&load.label, load.txn_id).await {
                Ok(CommitOutcome::Committed) => {
                    metrics::counter!("weir_doris_sink_rows_total", "connector" => self.loader.connector.clone())
                        .increment(load.rows);
                }
                Ok(CommitOutcome::Aborted(reason)) => {
                    // Forget the load, and the queue's later pre-commits with it: the write
                    // before the next flush loads its rows again under the same label (Doris
                    // lets an aborted load's label be reused) and finds the later ones by
                    // their labels, so the queue's commits stay in offset order.
                    let mut forgotten = vec![load];
                    let queue_id = forgotten[0].queue_id;
                    let (later, kept): (Vec<_>, Vec<_>) =
                        self.precommitted.drain(..).partition(|other| other.queue_id == queue_id);
                    self.precommitted = kept.into();
                    for later in later {
                        if self.loader.abort(&later.label, later.txn_id).await {
                            // Already committed (by someone else): its rows are in Doris, found
                            // loaded rather than loaded by this sink, and the rewrite skips them.
                            metrics::counter!("weir_doris_sink_rows_found_loaded_total", "connector" => self.loader.connector.clone())
                                .increment(later.rows);
                        } else {
                            forgotten.push(later);
                        }
                    }
                    for forgotten_load in &forgotten {
                        for offset in &forgotten_load.offsets {
                            self.loaded_records.remove(&(queue_id, *offset));
                        }
                    }
                    let load = &forgotten[0];
                    return Err(SinkError::retryable(format!(
                        "doris commit {}: Doris aborted the pre-committed load ({reason}); loading it again",
                        load.label
                    )));
                }
                Err(error) => {
                    self.precommitted.push_front(load);
                    return Err(error);
                }
            }
        }
        self.loaded_records.clear();
        self.refused_records.clear();
        Ok(())
    }
}
