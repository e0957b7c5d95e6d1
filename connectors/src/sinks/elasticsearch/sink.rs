//! The Elasticsearch sink: start-up check and `_bulk` writes with per-item retries.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use elasticsearch::auth::Credentials;
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{StatusCode, Url};
use elasticsearch::{BulkParts, Elasticsearch};
use serde_json::{Value as Json, json};
use weir_connect::{Sink, SinkError, SinkRecord};

use super::config::{ElasticsearchAction, ElasticsearchSinkConfig};
use crate::template;

/// Why the sink cannot start, by who is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ElasticsearchSinkError {
    /// A setting is wrong.
    #[error("elasticsearch sink {connector:?}: `{field}` {reason}")]
    Config { connector: String, field: &'static str, reason: String },
    /// The node cannot be reached or answers with an error.
    #[error(
        "elasticsearch sink {connector:?}: cannot use Elasticsearch at {url}: {reason} (is it running, and is `url` right?)"
    )]
    Unreachable { connector: String, url: String, reason: String },
    /// The node refused the credentials.
    #[error(
        "elasticsearch sink {connector:?}: Elasticsearch at {url} refused the credentials (HTTP {status}); check `username` and `password`"
    )]
    Auth { connector: String, url: String, status: u16 },
}

/// Longest wait between re-sends of refused items (with `item_retries_max` ≤ 20, a write
/// waits at most about 40 s for an overloaded cluster before the task's own retry).
const ITEM_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Writes records as `_bulk` actions.
pub struct ElasticsearchSink {
    shared: Arc<Shared>,
    /// Spreads documents over lanes (`concurrency`).
    hasher: std::collections::hash_map::RandomState,
}

/// What every lane of a write uses.
struct Shared {
    connector: String,
    config: ElasticsearchSinkConfig,
    client: Elasticsearch,
}

/// One bulk action: its two NDJSON lines (one for a delete) and the record it carries.
struct Action {
    record: usize,
    lines: Vec<Vec<u8>>,
    kind: &'static str,
    /// `(_index, _id)`: a later successful action on the same target supersedes this one.
    target: (String, String),
}

/// Why a `_bulk` request did not answer per item.
enum SendError {
    /// Transient: the batch is retried whole.
    Failed(SinkError),
    /// HTTP 413: the request was too large; the chunk is split (a single action is poison).
    TooLarge(Vec<Action>),
}

/// What a `_bulk` request answered: actions to send again (429/5xx) and the targets written.
struct Answered {
    retry: Vec<Action>,
    written: Vec<((String, String), usize)>,
}

impl ElasticsearchSink {
    /// Builds the client and asks the node who it is (`GET /`); fails with an actionable
    /// error when it is unreachable or refuses the credentials.
    pub async fn connect(
        connector: &str,
        config: ElasticsearchSinkConfig,
    ) -> Result<ElasticsearchSink, ElasticsearchSinkError> {
        let fail_config = |field, reason| ElasticsearchSinkError::Config { connector: connector.into(), field, reason };
        config.validate().map_err(|(field, reason)| fail_config(field, reason))?;
        let url = Url::parse(&config.url).map_err(|e| fail_config("url", e.to_string()))?;
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
            .timeout(Duration::from_millis(config.timeout_ms))
            .disable_proxy();
        if let (Some(username), Some(password)) = (&config.username, &config.password) {
            builder = builder.auth(Credentials::Basic(username.clone(), password.clone()));
        }
        let transport = builder.build().map_err(|e| fail_config("url", e.to_string()))?;
        let client = Elasticsearch::new(transport);
        let unreachable = |reason: String| ElasticsearchSinkError::Unreachable {
            connector: connector.into(),
            url: config.url.clone(),
            reason,
        };
        let response = client.info().send().await.map_err(|e| unreachable(e.to_string()))?;
        let status = response.status_code();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(ElasticsearchSinkError::Auth {
                connector: connector.into(),
                url: config.url.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(unreachable(format!("GET / answered HTTP {status}: {}", truncate(&body, 300))));
        }
        tracing::info!(connector, url = %config.url, "elasticsearch sink connected");
        Ok(ElasticsearchSink {
            shared: Arc::new(Shared { connector: connector.into(), config, client }),
            hasher: Default::default(),
        })
    }

    /// The bulk actions for a record, in order (none: nothing to do); `Err` is why it is
    /// poison.
    fn actions(&self, index: usize, record: &SinkRecord) -> Result<Vec<Action>, String> {
        let value = &record.record.value;
        // The document (its fields feed the templates) and whether the record deletes it.
        let (json, delete): (Option<Json>, bool) = if value.is_empty() {
            if self.shared.config.cdc {
                return Ok(Vec::new()); // a tombstone after a delete: the delete already ran
            }
            if super::config::has_date_pattern(&self.shared.config.index) {
                // Its document's date is unknown: a delete by the tombstone's own time would
                // miss it and count as done.
                return Err(format!(
                    "a tombstone cannot name its document's dated index (index {:?}); use cdc change records",
                    self.shared.config.index
                ));
            }
            (None, true)
        } else {
            let json: Json =
                serde_json::from_slice(value).map_err(|e| format!("the record's value is not JSON: {e}"))?;
            if !json.is_object() {
                return Err("the record's value is not a JSON object".into());
            }
            if self.shared.config.cdc {
                let (delete, image) = crate::sinks::change_image(&json)?;
                let mut actions = Vec::with_capacity(2);
                let target = self.target(record, Some(&image))?;
                // An update that changed the row's key (or its dated index): the document at
                // the old place goes first.
                if let Some(before) = crate::sinks::previous_image(&json) {
                    let old = self.target(record, Some(before))?;
                    if old != target {
                        actions.push(delete_action(index, old));
                    }
                }
                actions.push(self.action_at(index, target, Some(image), delete));
                return Ok(actions);
            }
            (Some(json), false)
        };
        Ok(vec![self.action(index, record, json, delete)?])
    }

    /// Where a record's document goes: its index and `_id`.
    fn target(&self, record: &SinkRecord, json: Option<&Json>) -> Result<(String, String), String> {
        let timestamp_ms = match (&self.shared.config.timestamp_field, json) {
            (Some(field), Some(json)) => event_time_ms(json, field)?,
            _ => record.record.timestamp_ms,
        };
        let index_name = render_index(&self.shared.config.index, record, json, timestamp_ms)?;
        let id = match &self.shared.config.id {
            Some(id) => template::render_record(id, record, json)
                .ok_or_else(|| format!("the record lacks a field the id template {id:?} names"))?,
            None => match &record.record.key {
                Some(key) => key.clone(),
                None => format!("{}-{}-{}", record.record.topic, record.queue_id, record.queue_offset),
            },
        };
        // Elasticsearch refuses the whole `_bulk` request for one such id.
        if id.is_empty() || id.len() > ID_BYTES_MAX {
            return Err(format!("the document id is {} bytes; Elasticsearch takes 1..={ID_BYTES_MAX}", id.len()));
        }
        Ok((index_name, id))
    }

    /// The action writing (or deleting) one document.
    fn action(&self, index: usize, record: &SinkRecord, json: Option<Json>, delete: bool) -> Result<Action, String> {
        let target = self.target(record, json.as_ref())?;
        Ok(self.action_at(index, target, json, delete))
    }

    /// The action writing (or deleting) one document at `target`.
    fn action_at(&self, index: usize, target: (String, String), json: Option<Json>, delete: bool) -> Action {
        match json {
            _ if delete => delete_action(index, target),
            None => unreachable!("only a delete has no document"),
            Some(source) => {
                let kind = match self.shared.config.action {
                    ElasticsearchAction::Index => "index",
                    ElasticsearchAction::Create => "create",
                };
                let meta = json!({"_index": target.0, "_id": target.1});
                // Re-serialised: a pretty-printed value would break the NDJSON framing.
                let lines = vec![json!({kind: meta}).to_string().into_bytes(), source.to_string().into_bytes()];
                Action { record: index, lines, kind, target }
            }
        }
    }
}

/// The action deleting the document at `target` for record `index`.
fn delete_action(index: usize, target: (String, String)) -> Action {
    let meta = json!({"_index": target.0, "_id": target.1});
    Action { record: index, lines: vec![json!({"delete": meta}).to_string().into_bytes()], kind: "delete", target }
}

impl Shared {
    /// Sends actions; returns the ones to send again (429/5xx) and the targets written, and
    /// fills `refused`.
    async fn send(&self, actions: Vec<Action>, refused: &mut BTreeMap<usize, String>) -> Result<Answered, SendError> {
        let body: Vec<&[u8]> = actions.iter().flat_map(|a| a.lines.iter().map(Vec::as_slice)).collect();
        let response = self
            .client
            .bulk(BulkParts::None)
            .body(body)
            .send()
            .await
            .map_err(|e| SendError::Failed(SinkError::retryable(format!("elasticsearch _bulk: {e}"))))?;
        let status = response.status_code();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Err(SendError::TooLarge(actions));
        }
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            let after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .map(Duration::from_secs);
            let message = format!("elasticsearch _bulk answered HTTP {status}");
            return Err(SendError::Failed(match after {
                Some(after) => SinkError::retry_after(message, after),
                None => SinkError::retryable(message),
            }));
        }
        let failed = |message: String| SendError::Failed(SinkError::retryable(message));
        let text = response.text().await.map_err(|e| failed(format!("elasticsearch _bulk: {e}")))?;
        if !status.is_success() {
            // The request as a whole was refused (auth, a malformed body): not one record's fault.
            return Err(failed(format!("elasticsearch _bulk answered HTTP {status}: {}", truncate(&text, 500))));
        }
        let reply: Json = serde_json::from_str(&text)
            .map_err(|e| failed(format!("elasticsearch _bulk answered non-JSON ({e}): {}", truncate(&text, 200))))?;
        let items = reply.get("items").and_then(Json::as_array).map(Vec::as_slice).unwrap_or_default();
        if items.len() != actions.len() {
            return Err(failed(format!(
                "elasticsearch _bulk answered {} items for {} actions",
                items.len(),
                actions.len()
            )));
        }
        let (mut written, mut retry) = (Vec::new(), Vec::new());
        for (action, item) in actions.into_iter().zip(items) {
            let result = item.get(action.kind).unwrap_or(item);
            let status = result.get("status").and_then(Json::as_u64).unwrap_or(0);
            let already = (action.kind == "create" && status == 409) || (action.kind == "delete" && status == 404);
            if (200..300).contains(&status) || already {
                written.push((action.target, action.record));
            } else if status == 429 || status >= 500 || status == 0 {
                retry.push(action);
            } else {
                let error = result.get("error").cloned().unwrap_or(Json::Null);
                let kind = error.get("type").and_then(Json::as_str).unwrap_or("error");
                let reason = error.get("reason").and_then(Json::as_str).unwrap_or("no reason given");
                tracing::debug!(connector = %self.connector, record = action.record, status, kind, "elasticsearch refused a document");
                refused.insert(
                    action.record,
                    format!("elasticsearch refused the document (HTTP {status}, {kind}): {reason}"),
                );
            }
        }
        Ok(Answered { retry, written })
    }

    /// Writes one lane's actions in order, re-sending the ones refused with 429/5xx; returns
    /// the records refused for good.
    /// Writes one lane's actions: the records refused, and how many records were written.
    async fn write_lane(
        self: Arc<Self>,
        mut actions: Vec<Action>,
    ) -> Result<(BTreeMap<usize, String>, usize), SinkError> {
        let mut refused = BTreeMap::new();
        let mut written_records = std::collections::BTreeSet::new();
        let mut backoff = Duration::from_millis(self.config.item_backoff_initial_ms);
        let mut sends = 0u32;
        // The latest record written per target: an item to retry that a later record of the
        // batch already replaced (or deleted) is dropped, so a retry never writes stale data.
        let mut latest_written: BTreeMap<(String, String), usize> = BTreeMap::new();
        while !actions.is_empty() {
            let mut retry = Vec::new();
            let mut chunks: VecDeque<Vec<Action>> = VecDeque::new();
            let mut rest = actions.into_iter().peekable();
            while rest.peek().is_some() {
                chunks.push_back(rest.by_ref().take(self.config.bulk_actions_max).collect());
            }
            while let Some(chunk) = chunks.pop_front() {
                match self.send(chunk, &mut refused).await {
                    Ok(answered) => {
                        retry.extend(answered.retry);
                        for (target, record) in answered.written {
                            written_records.insert(record);
                            let latest = latest_written.entry(target).or_insert(record);
                            *latest = (*latest).max(record);
                        }
                    }
                    Err(SendError::Failed(error)) => return Err(error),
                    Err(SendError::TooLarge(mut chunk)) if chunk.len() > 1 => {
                        let second = chunk.split_off(chunk.len() / 2);
                        chunks.push_front(second);
                        chunks.push_front(chunk);
                    }
                    Err(SendError::TooLarge(chunk)) => {
                        let record = chunk[0].record;
                        refused.insert(record, "elasticsearch refused the document as too large (HTTP 413)".into());
                    }
                }
            }
            retry.retain(|action| latest_written.get(&action.target).is_none_or(|latest| *latest < action.record));
            retry.sort_by_key(|action| action.record);
            actions = retry;
            if actions.is_empty() {
                break;
            }
            metrics::counter!("weir_elasticsearch_sink_documents_total", "connector" => self.connector.clone(), "result" => "retried")
                    .increment(actions.len() as u64);
            sends += 1;
            if sends > self.config.item_retries_max {
                return Err(SinkError::retryable(format!(
                    "elasticsearch kept refusing {} document(s) with 429/5xx after {} retries",
                    actions.len(),
                    self.config.item_retries_max
                )));
            }
            tracing::debug!(connector = %self.connector, documents = actions.len(), backoff_ms = backoff.as_millis() as u64, "elasticsearch asked to retry documents");
            tokio::time::sleep(backoff).await; // backoff before re-sending refused items
            backoff = (backoff * 2).min(ITEM_BACKOFF_MAX);
        }
        Ok((refused, written_records.len()))
    }
}

/// The event time in a JSON field: epoch milliseconds or RFC 3339.
fn event_time_ms(json: &Json, field: &str) -> Result<i64, String> {
    let mut value = json;
    for part in field.split('.') {
        value = value.get(part).ok_or_else(|| format!("the record has no timestamp field {field:?}"))?;
    }
    match value {
        Json::Number(number) => number.as_i64().ok_or_else(|| format!("timestamp field {field:?} is not an integer")),
        Json::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|time| time.timestamp_millis())
            .map_err(|e| format!("timestamp field {field:?} is not RFC 3339 ({text:?}): {e}")),
        _ => Err(format!("timestamp field {field:?} is neither epoch ms nor an RFC 3339 string")),
    }
}

/// The index name: date patterns from `timestamp_ms` (UTC), then fields. Lowercased, as
/// Elasticsearch requires.
fn render_index(template: &str, record: &SinkRecord, json: Option<&Json>, timestamp_ms: i64) -> Result<String, String> {
    let time = chrono::DateTime::from_timestamp_millis(timestamp_ms)
        .ok_or_else(|| format!("timestamp {timestamp_ms} ms is out of range"))?;
    let dated = time.format(template).to_string();
    let name = template::render_record(&dated, record, json)
        .ok_or_else(|| format!("the record lacks a field the index template {template:?} names"))?;
    Ok(name.to_lowercase())
}

/// Elasticsearch's limit on `_id`.
const ID_BYTES_MAX: usize = 512;

fn truncate(text: &str, bytes_max: usize) -> &str {
    let mut cut = text.len().min(bytes_max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

#[async_trait]
impl Sink for ElasticsearchSink {
    async fn write(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut refused = BTreeMap::new();
        let mut actions = Vec::with_capacity(batch.len());
        for (index, record) in batch.iter().enumerate() {
            match self.actions(index, record) {
                Ok(built) => actions.extend(built),
                Err(reason) => {
                    refused.insert(index, reason);
                }
            }
        }
        // Lanes by a hash of the document, so one document's actions stay in order in one
        // lane while lanes write in parallel.
        let lanes_count = self.shared.config.concurrency;
        let mut lanes: Vec<Vec<Action>> = (0..lanes_count).map(|_| Vec::new()).collect();
        for action in actions {
            lanes[self.hasher.hash_one(&action.target) as usize % lanes_count].push(action);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for lane in lanes.into_iter().filter(|lane| !lane.is_empty()) {
            tasks.spawn(self.shared.clone().write_lane(lane));
        }
        let mut failure = None;
        let mut written = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((lane_refused, lane_written))) => {
                    refused.extend(lane_refused);
                    written += lane_written;
                }
                Ok(Err(error)) => failure = Some(error),
                Err(error) => {
                    failure = Some(SinkError::retryable(format!("elasticsearch sink writer failed: {error}")))
                }
            }
        }
        if let Some(error) = failure {
            return Err(error); // every action is idempotent by `_id`: the batch is retried whole
        }
        // Counted once the whole batch is answered: a batch retried after a failed lane
        // counts its documents once, not once per attempt.
        metrics::counter!("weir_elasticsearch_sink_documents_total", "connector" => self.shared.connector.clone(), "result" => "written")
            .increment(written as u64);
        if refused.is_empty() {
            return Ok(());
        }
        metrics::counter!("weir_elasticsearch_sink_documents_total", "connector" => self.shared.connector.clone(), "result" => "refused")
            .increment(refused.len() as u64);
        let message = format!(
            "elasticsearch sink {:?}: {} document(s) of the batch refused",
            self.shared.connector,
            refused.len()
        );
        Err(SinkError::poison_each(message, refused))
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(()) // `_bulk` answered for every document: nothing is buffered here
    }
}
