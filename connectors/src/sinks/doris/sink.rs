//! The Doris sink: start-up check, Stream Loads with redirects and labels, two-phase commit.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{Method, StatusCode, header};
use serde_json::{Value as Json, json};
use weir_connect::{Sink, SinkError, SinkRecord};

use super::config::{DorisSinkConfig, label_char};

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
}

/// Loads records into one table.
pub struct DorisSink {
    loader: Arc<Loader>,
    /// Pre-committed loads waiting for `flush` (two-phase commit), in load order (commit order
    /// decides which version of a key wins).
    precommitted: VecDeque<Precommitted>,
    /// The (queue, offset) of every record in those loads.
    precommitted_records: std::collections::BTreeSet<(u32, u64)>,
}

/// A pre-committed load (two-phase commit) waiting for its commit.
struct Precommitted {
    label: String,
    txn_id: Option<u64>,
    queue_id: u32,
    offsets: Vec<u64>,
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
}

/// What one queue's loads did.
#[derive(Default)]
struct QueueLoad {
    loaded: u64,
    refused: Vec<(usize, String)>,
    /// Pre-committed loads (two-phase commit): label, transaction id, and the offsets loaded.
    precommitted: Vec<(String, Option<u64>, Vec<u64>)>,
}

/// What a Stream Load ended as.
enum LoadOutcome {
    /// Committed (or pre-committed, with its transaction id when Doris gave it).
    Loaded { txn_id: Option<u64> },
    /// Doris refused the data itself.
    DataRefused(String),
}

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
            loader: Arc::new(Loader { connector: connector.into(), config, client, label_prefix }),
            precommitted: VecDeque::new(),
            precommitted_records: Default::default(),
        })
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
    /// One Stream Load of `rows` under `label`, following redirects with the credentials.
    async fn load(&self, label: &str, rows: &[&Json]) -> Result<LoadOutcome, SinkError> {
        let body =
            serde_json::to_vec(rows).map_err(|e| SinkError::retryable(format!("doris: cannot encode rows: {e}")))?;
        let mut url = format!(
            "{}/api/{}/{}/_stream_load",
            self.config.url.trim_end_matches('/'),
            self.config.database,
            self.config.table
        );
        let mut hops = 0;
        let reply = loop {
            let mut request = self
                .client
                .request(Method::PUT, &url)
                .basic_auth(&self.config.username, Some(&self.config.password))
                // The frontend refuses a load without it ("There is no 100-continue header").
                .header(header::EXPECT, "100-continue")
                .header("label", label)
                .header("format", "json")
                .header("strip_outer_array", "true")
                // Without strict mode Doris loads a value that does not fit its column as NULL.
                .header("strict_mode", "true")
                .header(header::CONTENT_TYPE, "application/json")
                .body(body.clone());
            if self.config.cdc {
                request = request.header("hidden_columns", DELETE_SIGN);
            }
            if self.config.two_phase_commit {
                request = request.header("two_phase_commit", "true");
            }
            let response =
                request.send().await.map_err(|e| SinkError::retryable(format!("doris stream load {label}: {e}")))?;
            let status = response.status();
            if status.is_redirection() {
                hops += 1;
                let location =
                    response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
                match location {
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
            let text =
                response.text().await.map_err(|e| SinkError::retryable(format!("doris stream load {label}: {e}")))?;
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
            "Success" | "Publish Timeout" => Ok(LoadOutcome::Loaded { txn_id }),
            "Label Already Exists" => match field("ExistingJobStatus").as_str() {
                "FINISHED" | "VISIBLE" | "COMMITTED" => Ok(LoadOutcome::Loaded { txn_id: None }),
                "PRECOMMITTED" if self.config.two_phase_commit => Ok(LoadOutcome::Loaded { txn_id: None }),
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
        let url = format!("{}/api/{}/_stream_load_2pc", self.config.url.trim_end_matches('/'), self.config.database);
        let mut request = self
            .client
            .request(Method::PUT, &url)
            .basic_auth(&self.config.username, Some(&self.config.password))
            .header("txn_operation", "commit");
        request = match txn_id {
            Some(txn_id) => request.header("txn_id", txn_id.to_string()),
            None => request.header("label", label),
        };
        let response = request.send().await.map_err(|e| SinkError::retryable(format!("doris commit {label}: {e}")))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let reply: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
        let outcome = reply.get("status").or_else(|| reply.get("Status")).and_then(Json::as_str).unwrap_or_default();
        let message = reply.get("msg").or_else(|| reply.get("Message")).and_then(Json::as_str).unwrap_or_default();
        match commit_outcome(status, outcome, message) {
            Some(outcome) => Ok(outcome),
            None => Err(SinkError::retryable(format!("doris commit {label}: HTTP {status}: {}", truncate(&text, 300)))),
        }
    }

    fn label(&self, queue_id: u32, first: u64, last: u64) -> String {
        let label = format!("{}_{queue_id}_{first}_{last}", self.label_prefix);
        // A prefix is at most 64 characters, the rest at most 3 + 10 + 20 + 20.
        assert!(label.len() <= DorisSinkConfig::LABEL_CHARS_MAX, "label {label} too long");
        label
    }

    /// Loads one queue's rows (`(batch index, offset, row)`, in offset order); a load refused
    /// for data quality is split in halves until the refused records are alone, each part
    /// under the deterministic label of its offset range.
    async fn load_queue(self: Arc<Self>, queue_id: u32, rows: Vec<(usize, u64, Json)>) -> Result<QueueLoad, SinkError> {
        let mut outcome = QueueLoad::default();
        let mut parts = vec![(0, rows.len())];
        while let Some((start, end)) = parts.pop() {
            if start == end {
                continue;
            }
            let part = &rows[start..end];
            let label = self.label(queue_id, part[0].1, part[part.len() - 1].1);
            let all: Vec<&Json> = part.iter().map(|(_, _, row)| row).collect();
            match self.load(&label, &all).await? {
                LoadOutcome::Loaded { txn_id } => {
                    outcome.loaded += part.len() as u64;
                    if self.config.two_phase_commit {
                        outcome.precommitted.push((label, txn_id, part.iter().map(|(_, offset, _)| *offset).collect()));
                    }
                }
                // One record (its rows share an offset, so they are never split apart: a part
                // is a range of records, and its label their offsets).
                LoadOutcome::DataRefused(reason) if part.iter().all(|row| row.0 == part[0].0) => {
                    outcome.refused.push((part[0].0, reason))
                }
                LoadOutcome::DataRefused(reason) => {
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
        // Rows per queue, in offset order: one load (one label) per queue.
        let mut queues: BTreeMap<u32, Vec<(usize, Json)>> = BTreeMap::new();
        for (index, record) in batch.iter().enumerate() {
            match self.rows(record) {
                Ok(rows) => queues.entry(record.queue_id).or_default().extend(rows.into_iter().map(|row| (index, row))),
                Err(reason) => {
                    refused.insert(index, reason);
                }
            }
        }
        // Queues load in parallel, `concurrency` at a time; one queue's loads stay in order.
        let mut loaded = 0u64;
        let mut pending = queues.into_iter();
        loop {
            let mut tasks = tokio::task::JoinSet::new();
            for (queue_id, rows) in pending.by_ref().take(self.loader.config.concurrency) {
                // Two-phase commit: rows already pre-committed by an earlier write of this
                // batch (before a failed flush) are not loaded again.
                let rows: Vec<(usize, u64, Json)> = rows
                    .into_iter()
                    .map(|(index, row)| (index, batch[index].queue_offset, row))
                    .filter(|(_, offset, _)| !self.precommitted_records.contains(&(queue_id, *offset)))
                    .collect();
                let loader = self.loader.clone();
                tasks.spawn(async move { (queue_id, loader.load_queue(queue_id, rows).await) });
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
                        loaded += outcome.loaded;
                        refused.extend(outcome.refused);
                        for (label, txn_id, offsets) in outcome.precommitted {
                            self.precommitted_records.extend(offsets.iter().map(|offset| (queue_id, *offset)));
                            if !self.precommitted.iter().any(|known| known.label == label) {
                                self.precommitted.push_back(Precommitted { label, txn_id, queue_id, offsets });
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
        metrics::counter!("weir_doris_sink_rows_total", "connector" => self.loader.connector.clone()).increment(loaded);
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
                Ok(CommitOutcome::Committed) => {}
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
                    forgotten.extend(later);
                    for forgotten_load in &forgotten {
                        for offset in &forgotten_load.offsets {
                            self.precommitted_records.remove(&(queue_id, *offset));
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
        self.precommitted_records.clear();
        Ok(())
    }
}
