//! An in-test Elasticsearch node with the documented `_bulk` behaviour (the Bulk API
//! reference): NDJSON actions `index`, `create`, `delete`, per-item `status` and `error`
//! with `errors: true`, 201/200 results, 409 `version_conflict_engine_exception` on `create`
//! of an existing id, 404 `not_found` deletes, dynamic mapping where a field's first value
//! fixes its type and a later value that cannot be read as that type is a 400
//! `document_parsing_exception`, lowercase index names (`invalid_index_name_exception`),
//! basic auth answered 401 `security_exception`, and injected overload: 429
//! `es_rejected_execution_exception` items and 503 whole requests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Faults the node injects, counted over its lifetime.
#[derive(Clone, Debug, Default)]
pub struct EsFaults {
    /// Every n-th item is refused with 429 and not applied (0: never).
    pub item_429_every: u64,
    /// Every n-th `_bulk` request is answered 503 without applying anything (0: never).
    pub request_503_every: u64,
    /// Every n-th `_bulk` request is applied, then answered 500 (a lost answer; 0: never).
    pub request_lost_after_apply_every: u64,
}

/// A field's dynamically mapped type.
#[derive(Clone, Copy, Debug, PartialEq)]
enum FieldType {
    Long,
    Double,
    Boolean,
    Text,
    Object,
}

#[derive(Default)]
pub struct Index {
    mapping: BTreeMap<String, FieldType>,
    pub documents: BTreeMap<String, Value>,
}

#[derive(Default)]
pub struct EsState {
    pub indices: BTreeMap<String, Index>,
    pub bulk_requests: u64,
    items_seen: u64,
    faults: EsFaults,
    credentials: Option<(String, String)>,
}

/// A running node; it stops with the test process.
pub struct EsServer {
    pub url: String,
    pub state: Arc<Mutex<EsState>>,
}

impl EsServer {
    pub fn start(faults: EsFaults, credentials: Option<(&str, &str)>) -> EsServer {
        let state = Arc::new(Mutex::new(EsState {
            faults,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
            ..EsState::default()
        }));
        let app_state = state.clone();
        let url = crate::support::serve_in_background(move || {
            let info_state = app_state.clone();
            Router::new().route("/", get(move |headers: HeaderMap| async move { info(&info_state, &headers) })).route(
                "/_bulk",
                post({
                    let state = app_state.clone();
                    move |headers: HeaderMap, body: Bytes| async move { bulk(&state, &headers, &body) }
                })
                .put({
                    let state = app_state.clone();
                    move |headers: HeaderMap, body: Bytes| async move { bulk(&state, &headers, &body) }
                }),
            )
        });
        EsServer { url, state }
    }

    /// The documents of an index, by id.
    pub fn documents(&self, index: &str) -> BTreeMap<String, Value> {
        self.state.lock().unwrap().indices.get(index).map(|i| i.documents.clone()).unwrap_or_default()
    }

    /// Every index name.
    pub fn indices(&self) -> Vec<String> {
        self.state.lock().unwrap().indices.keys().cloned().collect()
    }
}

fn error_body(status: StatusCode, kind: &str, reason: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {"type": kind, "reason": reason}, "status": status.as_u16()}).to_string(),
    )
        .into_response()
}

fn authorized(state: &EsState, headers: &HeaderMap) -> bool {
    let Some((user, password)) = &state.credentials else { return true };
    let expected = format!("Basic {}", crate::support::base64(format!("{user}:{password}").as_bytes()));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn info(state: &Mutex<EsState>, headers: &HeaderMap) -> Response {
    if !authorized(&state.lock().unwrap(), headers) {
        return error_body(StatusCode::UNAUTHORIZED, "security_exception", "unable to authenticate user");
    }
    let body = json!({"name": "weir-test", "cluster_name": "weir", "version": {"number": "8.15.0"}, "tagline": "You Know, for Search"});
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::HeaderName::from_static("x-elastic-product"), "Elasticsearch"),
        ],
        body.to_string(),
    )
        .into_response()
}

/// The first `_id` Elasticsearch refuses in a `_bulk` body: empty, or over 512 bytes.
fn invalid_id(text: &str) -> Option<String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(line) = lines.next() {
        let action: Value = serde_json::from_str(line).ok()?;
        let (kind, meta) = action.as_object()?.iter().next()?;
        match meta.get("_id").and_then(Value::as_str) {
            Some("") => return Some("Validation Failed: 1: if _id is specified it must not be empty;".into()),
            Some(id) if id.len() > 512 => {
                return Some(format!(
                    "Validation Failed: 1: id [{id}] is too long, must be no longer than 512 bytes but was: {};",
                    id.len()
                ));
            }
            _ => {}
        }
        if kind != "delete" {
            lines.next();
        }
    }
    None
}

fn bulk(state: &Mutex<EsState>, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut state = state.lock().unwrap();
    if !authorized(&state, headers) {
        return error_body(StatusCode::UNAUTHORIZED, "security_exception", "unable to authenticate user");
    }
    state.bulk_requests += 1;
    let request = state.bulk_requests;
    let every = |n: u64| n > 0 && request.is_multiple_of(n);
    if every(state.faults.request_503_every) {
        return error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable_shards_exception",
            "primary shard is not active",
        );
    }
    let text = String::from_utf8_lossy(body);
    // Elasticsearch validates every action before running any: one bad `_id` fails it all.
    if let Some(reason) = invalid_id(&text) {
        return error_body(StatusCode::BAD_REQUEST, "action_request_validation_exception", &reason);
    }
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let mut items = Vec::new();
    let mut errors = false;
    while let Some(action_line) = lines.next() {
        let Ok(action) = serde_json::from_str::<Value>(action_line) else {
            return error_body(StatusCode::BAD_REQUEST, "illegal_argument_exception", "Malformed action/metadata line");
        };
        let Some((kind, meta)) = action.as_object().and_then(|o| o.iter().next()) else {
            return error_body(StatusCode::BAD_REQUEST, "illegal_argument_exception", "Malformed action/metadata line");
        };
        let kind = kind.clone();
        let source = if kind == "delete" {
            None
        } else {
            match lines.next().map(serde_json::from_str::<Value>) {
                Some(Ok(source)) => Some(source),
                _ => return error_body(StatusCode::BAD_REQUEST, "parse_exception", "request body is required"),
            }
        };
        let index = meta.get("_index").and_then(Value::as_str).unwrap_or_default().to_string();
        let id = meta.get("_id").and_then(Value::as_str).unwrap_or_default().to_string();
        state.items_seen += 1;
        let item_fault =
            state.faults.item_429_every > 0 && state.items_seen.is_multiple_of(state.faults.item_429_every);
        let (status, error) = if item_fault {
            (429, Some(("es_rejected_execution_exception", "rejected execution of coordinating operation".to_string())))
        } else {
            apply(&mut state, &kind, &index, &id, source)
        };
        errors |= error.is_some();
        let mut result = json!({"_index": index, "_id": id, "status": status});
        match error {
            Some((kind, reason)) => result["error"] = json!({"type": kind, "reason": reason}),
            None => {
                result["result"] = json!(if kind == "delete" {
                    if status == 404 { "not_found" } else { "deleted" }
                } else if status == 201 {
                    "created"
                } else {
                    "updated"
                })
            }
        }
        items.push(json!({kind: result}));
    }
    if every(state.faults.request_lost_after_apply_every) {
        return error_body(StatusCode::INTERNAL_SERVER_ERROR, "node_closed_exception", "node closed while answering");
    }
    let body = json!({"took": 1, "errors": errors, "items": items});
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

type ItemError = Option<(&'static str, String)>;

fn apply(state: &mut EsState, kind: &str, index: &str, id: &str, source: Option<Value>) -> (u16, ItemError) {
    if index.is_empty() || index != index.to_lowercase() || index.starts_with(['_', '-', '+']) {
        return (
            400,
            Some(("invalid_index_name_exception", format!("Invalid index name [{index}], must be lowercase"))),
        );
    }
    let entry = state.indices.entry(index.to_string()).or_default();
    match (kind, source) {
        ("delete", _) => match entry.documents.remove(id) {
            Some(_) => (200, None),
            None => (404, None),
        },
        ("create", Some(_)) if entry.documents.contains_key(id) => (
            409,
            Some(("version_conflict_engine_exception", format!("[{id}]: version conflict, document already exists"))),
        ),
        ("index" | "create", Some(source)) => {
            if let Err(reason) = map_fields(&mut entry.mapping, "", &source) {
                return (400, Some(("document_parsing_exception", reason)));
            }
            let created = entry.documents.insert(id.to_string(), source).is_none();
            (if created { 201 } else { 200 }, None)
        }
        (other, _) => (400, Some(("action_request_validation_exception", format!("unsupported action [{other}]")))),
    }
}

/// Dynamic mapping: checks a document against the index's field types, adding new fields.
fn map_fields(mapping: &mut BTreeMap<String, FieldType>, prefix: &str, source: &Value) -> Result<(), String> {
    let Some(object) = source.as_object() else { return Err("document must be an object".into()) };
    let mut added = Vec::new();
    for (name, value) in object {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let seen = match value {
            Value::Null => continue,
            Value::Bool(_) => FieldType::Boolean,
            Value::Number(n) if n.is_f64() => FieldType::Double,
            Value::Number(_) => FieldType::Long,
            Value::String(_) | Value::Array(_) => FieldType::Text,
            Value::Object(_) => FieldType::Object,
        };
        match mapping.get(&path).copied() {
            None => added.push((path.clone(), seen)),
            Some(mapped) if mapped == seen => {}
            Some(FieldType::Long) if value.as_str().is_some_and(|s| s.parse::<i64>().is_ok()) => {}
            Some(FieldType::Double)
                if seen == FieldType::Long || value.as_str().is_some_and(|s| s.parse::<f64>().is_ok()) => {}
            Some(FieldType::Text) if seen != FieldType::Object => {}
            Some(FieldType::Object) => {
                return Err(format!(
                    "object mapping for [{path}] tried to parse field [{path}] as object, but found a concrete value"
                ));
            }
            Some(mapped) => {
                return Err(format!(
                    "[1:1] failed to parse field [{path}] of type [{mapped:?}] in document. Preview of field's value: '{value}'"
                ));
            }
        }
        if seen == FieldType::Object {
            map_fields(mapping, &path, value)?;
        }
    }
    // Only a document that parsed adds its fields to the mapping.
    mapping.extend(added);
    Ok(())
}
