//! An in-test Doris cluster (one frontend, one backend) with the documented Stream Load
//! behaviour: the frontend checks basic auth and answers `PUT /api/{db}/{table}/_stream_load`
//! with 307 to the backend (a Location with `user:password@`, as Doris sends), which checks
//! auth again (and that the `Host` header carries no credentials), loads a JSON array
//! (`strip_outer_array`), keeps labels (`Label Already Exists` with `ExistingJobStatus`),
//! with `strict_mode: true` filters rows whose values do not fit their column (`Fail`,
//! `[DATA_QUALITY_ERROR]too many filtered rows` with an `ErrorURL`, as `max_filter_ratio` is
//! 0) and without it loads such values as NULL, applies
//! `__DORIS_DELETE_SIGN__` from `hidden_columns` on unique-key tables, and pre-commits with
//! `two_phase_commit` until `PUT /api/{db}/_stream_load_2pc` commits or aborts (a commit of an aborted
//! transaction is refused, and an aborted load's label may be loaded again), and answers
//! `GET /api/{db}/get_load_state?label=…` with the label's transaction state. The frontend
//! refuses a load without `Expect: 100-continue` as Doris does and also
//! answers `GET /api/{db}/{table}/_schema`. A gate in front of the frontend refuses (HTTP
//! 400, counted in `body_before_continue`) a load whose body comes before the frontend
//! answered: Doris's frontend answers 307 without reading the body and resets a connection
//! that sends one, so a client must wait for `100 Continue`. Injected faults: `Publish Timeout` answers,
//! answers lost after the load applied, and transient `Fail`s.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

/// A column type the backend checks values against.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColumnType {
    Int,
    Varchar(usize),
}

/// Faults the backend injects, counted over its loads.
#[derive(Clone, Debug, Default)]
pub struct DorisFaults {
    /// Every n-th load is applied but answered `Publish Timeout` (0: never).
    pub publish_timeout_every: u64,
    /// Every n-th load is applied, then answered 500 (a lost answer; 0: never).
    pub lost_after_apply_every: u64,
    /// Every n-th load fails without applying, for a cluster reason (0: never).
    pub transient_fail_every: u64,
    /// A commit finds its pre-commit aborted (timed out just before it).
    pub abort_on_commit: bool,
}

pub struct DorisTable {
    pub columns: Vec<(&'static str, ColumnType)>,
    /// Unique-key model when set (rows replace by key; the delete sign works), else duplicate.
    pub unique_key: Option<&'static str>,
    /// Rows in load order (duplicate model) or the latest per key (unique model, by key).
    pub rows: Vec<Value>,
}

/// A pre-committed load: its table, rows, and whether the delete sign applies.
type PendingLoad = (String, Vec<Value>, bool);

#[derive(Default)]
pub struct DorisState {
    pub tables: BTreeMap<String, DorisTable>,
    /// Label → (status, rows waiting for a two-phase commit).
    labels: BTreeMap<String, (String, Option<PendingLoad>)>,
    txn_labels: BTreeMap<u64, String>,
    pub loads: u64,
    /// Loads whose body reached the frontend (see the module doc).
    pub body_before_continue: u64,
    faults: DorisFaults,
    credentials: (String, String),
}

pub struct DorisServer {
    pub frontend_url: String,
    pub state: Arc<Mutex<DorisState>>,
}

impl DorisServer {
    /// Starts a frontend and a backend; `tables` are `db.table` names.
    pub fn start(tables: Vec<(&str, DorisTable)>, faults: DorisFaults) -> DorisServer {
        let state = Arc::new(Mutex::new(DorisState {
            tables: tables.into_iter().map(|(name, table)| (name.to_string(), table)).collect(),
            faults,
            credentials: ("root".into(), "pw".into()),
            ..DorisState::default()
        }));
        let backend_state = state.clone();
        let backend_url = crate::support::serve_in_background(move || {
            Router::new()
                .route(
                    "/api/{db}/{table}/_stream_load",
                    put(move |Path((db, table)): Path<(String, String)>, headers: HeaderMap, body: Bytes| async move {
                        stream_load(&backend_state, &format!("{db}.{table}"), &headers, &body)
                    }),
                )
                // Doris takes loads of gigabytes; axum's default limit is 2 MB.
                .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        });
        let frontend_state = state.clone();
        let router_url = crate::support::serve_in_background(move || {
            let (schema_state, load_state, commit_state, label_state) =
                (frontend_state.clone(), frontend_state.clone(), frontend_state.clone(), frontend_state);
            Router::new()
                .route(
                    "/api/{db}/{table}/_schema",
                    get(move |Path((db, table)): Path<(String, String)>, headers: HeaderMap| async move {
                        schema(&schema_state, &format!("{db}.{table}"), &headers)
                    }),
                )
                .route(
                    "/api/{db}/{table}/_stream_load",
                    put(move |Path((db, table)): Path<(String, String)>, headers: HeaderMap| async move {
                        if !authorized(&load_state.lock().unwrap(), &headers) {
                            return unauthorized();
                        }
                        if !headers.contains_key(header::EXPECT) {
                            return reply(json!({"status": "FAILED", "msg": "There is no 100-continue header"}));
                        }
                        // Doris's frontend puts the credentials into the Location
                        // (`http://user:password@be:8040/…`); they must not reach a Host header.
                        let backend = backend_url.trim_start_matches("http://");
                        let location = format!("http://root:pw@{backend}/api/{db}/{table}/_stream_load");
                        (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, location)]).into_response()
                    }),
                )
                .route(
                    "/api/{db}/_stream_load_2pc",
                    put(move |headers: HeaderMap| async move { commit(&commit_state, &headers) }),
                )
                .route(
                    "/api/{db}/get_load_state",
                    get(move |RawQuery(query): RawQuery, headers: HeaderMap| async move {
                        // Labels are letters, digits, `_` and `-`: nothing is escaped.
                        let query = query.unwrap_or_default();
                        let label = query.split('&').find_map(|pair| pair.strip_prefix("label=")).unwrap_or("");
                        load_state_of(&label_state, label, &headers)
                    }),
                )
        });
        let frontend_url = gate_in_background(router_url, state.clone());
        DorisServer { frontend_url, state }
    }

    /// A table's rows.
    pub fn rows(&self, table: &str) -> Vec<Value> {
        self.state.lock().unwrap().tables[table].rows.clone()
    }

    /// Replaces the injected faults (counting goes on over all loads).
    pub fn set_faults(&self, faults: DorisFaults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// Stream Loads received so far (labels Doris refused as existing left out).
    pub fn loads(&self) -> u64 {
        self.state.lock().unwrap().loads
    }

    /// How many loads are pre-committed (neither committed nor aborted).
    pub fn precommitted(&self) -> usize {
        self.state.lock().unwrap().labels.values().filter(|(status, _)| status == "PRECOMMITTED").count()
    }

    /// Aborts the earliest pre-committed load only (as a pre-commit timeout would).
    pub fn abort_first_precommitted(&self) {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let first = state.txn_labels.values().find(|label| state.labels[*label].0 == "PRECOMMITTED").cloned();
        if let Some(label) = first {
            state.labels.insert(label, ("ABORTED".into(), None));
        }
    }

    /// Commits the latest pre-committed load (as an operator with its transaction id could).
    pub fn commit_last_precommitted(&self) {
        let mut state = self.state.lock().unwrap();
        let state = &mut *state;
        let last = state.txn_labels.values().rev().find(|label| state.labels[*label].0 == "PRECOMMITTED").cloned();
        if let Some(label) = last {
            let (status, pending) = state.labels.get_mut(&label).unwrap();
            *status = "FINISHED".into();
            if let Some((table, rows, delete_sign)) = pending.take() {
                apply(state.tables.get_mut(&table).unwrap(), rows, delete_sign);
            }
        }
    }

    /// Aborts every pre-committed load (as a pre-commit timeout or an operator would).
    pub fn abort_precommitted(&self) {
        for (status, pending) in self.state.lock().unwrap().labels.values_mut() {
            if status == "PRECOMMITTED" {
                *status = "ABORTED".into();
                *pending = None;
            }
        }
    }
}

/// Starts the frontend's gate (see the module doc) in front of `router_url`; returns its URL.
fn gate_in_background(router_url: String, state: Arc<Mutex<DorisState>>) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = router_url.trim_start_matches("http://").to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                tokio::spawn(gate(client, router.clone(), state.clone()));
            }
        });
    });
    url
}

/// One connection through the gate: its first request head is checked, then bytes flow both
/// ways unchanged.
async fn gate(mut client: tokio::net::TcpStream, router: String, state: Arc<Mutex<DorisState>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut buffer = [0u8; 16 << 10];
    let head_end = loop {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if head.len() > 64 << 10 {
            return;
        }
    };
    let text = String::from_utf8_lossy(&head[..head_end]).to_ascii_lowercase();
    let load = text.starts_with("put ") && text.contains("/_stream_load ") && text.contains("expect: 100-continue");
    let Ok(mut server) = tokio::net::TcpStream::connect(&router).await else { return };
    let refuse = |state: &Mutex<DorisState>| {
        state.lock().unwrap().body_before_continue += 1;
        "HTTP/1.1 400 Bad Request\r\ncontent-length: 43\r\nconnection: close\r\n\r\nthe body came before the frontend answered\n"
    };
    if load {
        if head.len() > head_end {
            let _ = client.write_all(refuse(&state).as_bytes()).await;
            return;
        }
        if server.write_all(&head).await.is_err() {
            return;
        }
        // Until the connection ends, the frontend's answer goes to the client and any byte
        // from the client is a body the frontend never asked for (Doris resets then).
        let mut answer = [0u8; 16 << 10];
        loop {
            tokio::select! {
                read = server.read(&mut answer) => match read {
                    Ok(n) if n > 0 => {
                        if client.write_all(&answer[..n]).await.is_err() {
                            return;
                        }
                    }
                    _ => break,
                },
                read = client.read(&mut buffer) => {
                    if matches!(read, Ok(n) if n > 0) {
                        let _ = client.write_all(refuse(&state).as_bytes()).await;
                    }
                    return;
                }
            }
        }
        // The frontend closed after answering: a body sent now is refused too.
        if matches!(client.read(&mut buffer).await, Ok(n) if n > 0) {
            refuse(&state);
        }
        return;
    } else if server.write_all(&head).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

fn authorized(state: &DorisState, headers: &HeaderMap) -> bool {
    let (user, password) = &state.credentials;
    let expected = format!("Basic {}", crate::support::base64(format!("{user}:{password}").as_bytes()));
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) == Some(expected.as_str())
}

fn unauthorized() -> Response {
    (StatusCode::UNAUTHORIZED, "Unauthorized").into_response()
}

fn reply(body: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn schema(state: &Mutex<DorisState>, table: &str, headers: &HeaderMap) -> Response {
    let state = state.lock().unwrap();
    if !authorized(&state, headers) {
        return unauthorized();
    }
    match state.tables.get(table) {
        Some(found) => {
            let properties: Vec<Value> =
                found.columns.iter().map(|(name, kind)| json!({"name": name, "type": format!("{kind:?}")})).collect();
            let keys = if found.unique_key.is_some() { "UNIQUE_KEYS" } else { "DUP_KEYS" };
            reply(
                json!({"msg": "success", "code": 0, "data": {"properties": properties, "keysType": keys}, "count": 0}),
            )
        }
        None => reply(json!({"msg": format!("Unknown table '{table}'"), "code": 1, "data": null, "count": 0})),
    }
}

fn stream_load(state: &Mutex<DorisState>, table_name: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    let mut state = state.lock().unwrap();
    if !authorized(&state, headers) {
        return unauthorized(); // the redirect must keep the credentials
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    if header("host").contains('@') {
        return (StatusCode::BAD_REQUEST, "Host carries credentials").into_response();
    }
    let label = header("label");
    if let Some((status, _)) = state.labels.get(&label)
        && status != "ABORTED"
    {
        return reply(json!({"Status": "Label Already Exists", "ExistingJobStatus": status, "Label": label,
            "Message": format!("Label [{label}] has already been used")}));
    }
    if header("format") != "json" || header("strip_outer_array") != "true" {
        return reply(json!({"Status": "Fail", "Message": "expected format json with strip_outer_array"}));
    }
    state.loads += 1;
    let load = state.loads;
    let every = |n: u64| n > 0 && load.is_multiple_of(n);
    if every(state.faults.transient_fail_every) {
        return reply(json!({"Status": "Fail", "Label": label, "Message": "tablet writer write failed, retry later"}));
    }
    let Ok(Value::Array(rows)) = serde_json::from_slice::<Value>(body) else {
        return reply(
            json!({"Status": "Fail", "Label": label, "Message": "[DATA_QUALITY_ERROR]body is not a JSON array"}),
        );
    };
    let Some(table) = state.tables.get(table_name) else {
        return reply(json!({"Status": "Fail", "Label": label, "Message": format!("unknown table {table_name}")}));
    };
    let delete_sign = header("hidden_columns").contains("__DORIS_DELETE_SIGN__");
    // Without strict mode a value that does not fit becomes NULL (a null key is filtered).
    let strict = header("strict_mode") == "true";
    let rows: Vec<Value> = if strict { rows } else { rows.into_iter().map(|row| nulled(table, row)).collect() };
    let filtered = rows.iter().filter(|row| !row_fits(table, row)).count();
    if filtered > 0 {
        return reply(
            json!({"Status": "Fail", "Label": label, "NumberTotalRows": rows.len(), "NumberFilteredRows": filtered,
            "Message": "[DATA_QUALITY_ERROR]too many filtered rows",
            "ErrorURL": format!("http://backend/api/_load_error_log?file=__shard_0/error_log_{label}")}),
        );
    }
    let txn_id = 1000 + load;
    let two_phase = header("two_phase_commit") == "true";
    if two_phase {
        let pending = (table_name.to_string(), rows.clone(), delete_sign);
        state.labels.insert(label.clone(), ("PRECOMMITTED".into(), Some(pending)));
        state.txn_labels.insert(txn_id, label.clone());
    } else {
        apply(state.tables.get_mut(table_name).unwrap(), rows.clone(), delete_sign);
        state.labels.insert(label.clone(), ("FINISHED".into(), None));
    }
    if every(state.faults.lost_after_apply_every) {
        return (StatusCode::INTERNAL_SERVER_ERROR, "connection reset").into_response();
    }
    let status = if every(state.faults.publish_timeout_every) { "Publish Timeout" } else { "Success" };
    reply(json!({"TxnId": txn_id, "Label": label, "TwoPhaseCommit": two_phase.to_string(), "Status": status,
        "Message": "OK", "NumberTotalRows": rows.len(), "NumberLoadedRows": rows.len(), "NumberFilteredRows": 0}))
}

/// A row with every value that does not fit its column replaced by NULL (non-strict loads).
fn nulled(table: &DorisTable, mut row: Value) -> Value {
    let snapshot = row.clone();
    if let Some(object) = row.as_object_mut() {
        for (name, _) in &table.columns {
            let alone = DorisTable {
                columns: table.columns.iter().filter(|(c, _)| c == name).cloned().collect(),
                unique_key: None,
                rows: Vec::new(),
            };
            if object.contains_key(*name) && !row_fits(&alone, &snapshot) {
                object.insert(name.to_string(), Value::Null);
            }
        }
    }
    row
}

fn row_fits(table: &DorisTable, row: &Value) -> bool {
    let Some(object) = row.as_object() else { return false };
    table.columns.iter().all(|(name, kind)| match (object.get(*name), kind) {
        (None | Some(Value::Null), _) => Some(*name) != table.unique_key,
        (Some(value), ColumnType::Int) => {
            value.as_i64().is_some() || value.as_str().is_some_and(|s| s.parse::<i64>().is_ok())
        }
        (Some(value), ColumnType::Varchar(max)) => value.as_str().map_or(value.to_string().len(), str::len) <= *max,
    })
}

fn apply(table: &mut DorisTable, rows: Vec<Value>, delete_sign: bool) {
    for mut row in rows {
        let deleted = delete_sign && row.get("__DORIS_DELETE_SIGN__").and_then(Value::as_i64) == Some(1);
        if let Some(object) = row.as_object_mut() {
            object.remove("__DORIS_DELETE_SIGN__");
            object.retain(|name, _| table.columns.iter().any(|(column, _)| column == name));
        }
        match table.unique_key {
            Some(key) => {
                let position = table.rows.iter().position(|old| old[key] == row[key]);
                match (position, deleted) {
                    (Some(at), true) => {
                        table.rows.remove(at);
                    }
                    (Some(at), false) => table.rows[at] = row,
                    (None, false) => table.rows.push(row),
                    (None, true) => {}
                }
            }
            None => table.rows.push(row),
        }
    }
}

/// `get_load_state`: the transaction state of a label, as Doris names it (a finished load is
/// `VISIBLE`; a label never seen is `UNKNOWN`).
fn load_state_of(state: &Mutex<DorisState>, label: &str, headers: &HeaderMap) -> Response {
    let state = state.lock().unwrap();
    if !authorized(&state, headers) {
        return unauthorized();
    }
    let data = match state.labels.get(label).map(|(status, _)| status.as_str()) {
        None => "UNKNOWN",
        Some("FINISHED") => "VISIBLE",
        Some(other) => other,
    };
    reply(json!({"msg": "success", "code": 0, "data": data, "count": 0}))
}

fn commit(state: &Mutex<DorisState>, headers: &HeaderMap) -> Response {
    let mut state = state.lock().unwrap();
    if !authorized(&state, headers) {
        return unauthorized();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let label = match header("txn_id").parse::<u64>() {
        Ok(txn_id) => state.txn_labels.get(&txn_id).cloned().unwrap_or_default(),
        Err(_) => header("label"),
    };
    let abort_on_commit = state.faults.abort_on_commit;
    let Some((status, pending)) = state.labels.get_mut(&label) else {
        return reply(json!({"status": "ANALYSIS_ERROR", "msg": format!("transaction with label {label} not found")}));
    };
    if header("txn_operation") == "abort" {
        return match status.as_str() {
            "PRECOMMITTED" => {
                *status = "ABORTED".into();
                *pending = None;
                reply(json!({"status": "Success", "msg": format!("transaction {label} abort successfully.")}))
            }
            "ABORTED" => reply(json!({"status": "ANALYSIS_ERROR",
                "msg": format!("transaction [{label}] is already aborted. abort reason: User Abort")})),
            _ => reply(json!({"status": "ANALYSIS_ERROR",
                "msg": format!("transaction [{label}] is already visible, not pre-committed.")})),
        };
    }
    if abort_on_commit && status == "PRECOMMITTED" {
        *status = "ABORTED".into();
        *pending = None;
    }
    match status.as_str() {
        "FINISHED" => {
            return reply(json!({"status": "Success", "msg": format!("transaction {label} is already visible")}));
        }
        "ABORTED" => {
            return reply(json!({"status": "ANALYSIS_ERROR",
                "msg": format!("transaction [{label}] is already aborted. abort reason: User Abort")}));
        }
        _ => {}
    }
    *status = "FINISHED".into();
    if let Some((table, rows, delete_sign)) = pending.take() {
        apply(state.tables.get_mut(&table).unwrap(), rows, delete_sign);
    }
    reply(json!({"status": "Success", "msg": format!("transaction {label} commit successfully.")}))
}
