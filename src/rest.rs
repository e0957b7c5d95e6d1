//! The REST admin API of `weir run`, in Kafka Connect's shape, and the Prometheus `/metrics`
//! endpoint:
//!
//! - `GET /connectors`, `GET /connectors/{name}/status` (state, task error, sink lag);
//! - `PUT /connectors/{name}/pause`, `PUT /connectors/{name}/resume`, `POST
//!   /connectors/{name}/restart` (202 Accepted; an HTTP source pauses by answering 503, and has
//!   no task to restart: 409);
//! - `GET /connectors/{name}/offsets`; `PATCH` (set) and `DELETE` (reset) them while the
//!   connector is paused or stopped (409 otherwise, as Kafka Connect asks for a stopped
//!   connector). Sink offsets are its consumer group's committed queue offsets; a source's
//!   offset is its saved position. The task reads them when it (re)starts, so resuming applies
//!   them;
//! - `GET /metrics`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use weir_broker::Messaging;
use weir_connect::{FilePositionStore, PositionStore};

/// A connector's state as the API reports it (Kafka Connect's words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectorState {
    Running,
    Paused,
    /// Failed with this error; the supervisor restarts it after a backoff.
    Failed(String),
    Stopped,
}

/// What kind of connector, and where its progress lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Progress = a saved source position.
    Source,
    /// Pushed to over HTTP: no position, the HTTP response is the acknowledgement.
    HttpSource,
    /// Progress = the committed offsets of this consumer group on the sink's topic.
    Sink { group: String },
    /// A stream job: its offsets live in its checkpoint, with its window state.
    Stream,
}

/// What the API knows of one connector.
#[derive(Clone, Debug)]
pub struct ConnectorStatus {
    pub kind: ConnectorKind,
    /// The topic read or written (several, comma separated, for an HTTP source).
    pub topic: String,
    pub state: ConnectorState,
    /// Whether `restart` means anything for it.
    pub restartable: bool,
}

impl ConnectorStatus {
    pub fn new(kind: ConnectorKind, topic: &str) -> Self {
        ConnectorStatus { kind, topic: topic.to_string(), state: ConnectorState::Running, restartable: true }
    }

    fn type_name(&self) -> &'static str {
        match self.kind {
            ConnectorKind::Source | ConnectorKind::HttpSource => "source",
            ConnectorKind::Stream => "stream",
            ConnectorKind::Sink { .. } => "sink",
        }
    }
}

/// Status of every connector, updated by the tasks that run them.
pub type Statuses = Arc<Mutex<BTreeMap<String, ConnectorStatus>>>;

/// What the admin API asks of a connector's supervisor; any change stops the current run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub paused: bool,
    /// Bumped by every restart request.
    pub restarts: u64,
}

/// The control channel of every connector.
pub type Controls = Arc<Mutex<BTreeMap<String, tokio::sync::watch::Sender<Control>>>>;

/// Records `state` for connector `name`.
pub fn set_state(statuses: &Statuses, name: &str, state: ConnectorState) {
    if let Some(status) = statuses.lock().expect("statuses lock").get_mut(name) {
        status.state = state;
    }
}

/// Everything the API reads and changes.
#[derive(Clone)]
pub struct AdminContext {
    pub metrics: PrometheusHandle,
    pub statuses: Statuses,
    pub controls: Controls,
    pub broker: Arc<dyn Messaging>,
    pub positions: FilePositionStore,
    /// Held while offsets change and by resume / restart, so a task cannot start between
    /// the "not running" check and the write.
    pub offsets_lock: Arc<tokio::sync::Mutex<()>>,
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    context: AdminContext,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/connectors", get(list_connectors))
        .route("/connectors/{name}/status", get(connector_status))
        .route("/connectors/{name}/pause", axum::routing::put(pause))
        .route("/connectors/{name}/resume", axum::routing::put(resume))
        .route("/connectors/{name}/restart", axum::routing::post(restart))
        .route("/connectors/{name}/offsets", get(read_offsets).patch(alter_offsets).delete(reset_offsets))
        .with_state(context);
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

fn error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(json!({ "error_code": status.as_u16(), "message": message }))).into_response()
}

fn not_found(name: &str) -> Response {
    error(StatusCode::NOT_FOUND, format!("connector {name} not found"))
}

fn status_of(context: &AdminContext, name: &str) -> Option<ConnectorStatus> {
    context.statuses.lock().expect("statuses lock").get(name).cloned()
}

async fn render_metrics(State(context): State<AdminContext>) -> String {
    context.metrics.run_upkeep();
    context.metrics.render()
}

async fn list_connectors(State(context): State<AdminContext>) -> Response {
    let names: Vec<String> = context.statuses.lock().expect("statuses lock").keys().cloned().collect();
    axum::Json(names).into_response()
}

async fn connector_status(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    let Some(status) = status_of(&context, &name) else { return not_found(&name) };
    let (task_state, trace) = match &status.state {
        ConnectorState::Running => ("RUNNING", None),
        ConnectorState::Paused => ("PAUSED", None),
        ConnectorState::Failed(error) => ("FAILED", Some(error.clone())),
        ConnectorState::Stopped => ("STOPPED", None),
    };
    let mut body = json!({
        "name": name,
        "type": status.type_name(),
        "topic": status.topic,
        "connector": { "state": task_state },
        "tasks": [ { "id": 0, "state": task_state, "trace": trace } ],
    });
    if let ConnectorKind::Sink { group } = &status.kind {
        match sink_offsets(context.broker.as_ref(), group, &status.topic).await {
            Ok(offsets) => {
                let lag: u64 = offsets.iter().map(|o| o.max_offset.saturating_sub(o.committed.max(o.min_offset))).sum();
                body["lag"] = json!(lag);
            }
            Err(error) => body["lag_error"] = json!(error.to_string()),
        }
    }
    axum::Json(body).into_response()
}

/// Changes a connector's control: 202 when accepted.
fn control(context: &AdminContext, name: &str, change: impl FnOnce(&mut Control)) -> Response {
    let controls = context.controls.lock().expect("controls lock");
    let Some(sender) = controls.get(name) else { return not_found(name) };
    sender.send_modify(change);
    StatusCode::ACCEPTED.into_response()
}

async fn pause(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    control(&context, &name, |c| c.paused = true)
}

async fn resume(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    let _offsets = context.offsets_lock.lock().await;
    control(&context, &name, |c| c.paused = false)
}

async fn restart(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    if status_of(&context, &name).is_some_and(|s| !s.restartable) {
        return error(StatusCode::CONFLICT, format!("{name} is an HTTP source: it has no task to restart"));
    }
    let _offsets = context.offsets_lock.lock().await;
    control(&context, &name, |c| c.restarts += 1)
}

/// One queue of a sink's topic.
struct QueueOffsets {
    queue_id: u32,
    committed: u64,
    min_offset: u64,
    max_offset: u64,
}

async fn sink_offsets(broker: &dyn Messaging, group: &str, topic: &str) -> weir_broker::Result<Vec<QueueOffsets>> {
    let queues = broker.topic(topic).await?.map_or(0, |t| t.queue_count);
    let mut offsets = Vec::with_capacity(queues as usize);
    for queue_id in 0..queues {
        let range = broker.queue_range(topic, queue_id).await?;
        let committed = broker.committed_offset(group, topic, queue_id).await?.unwrap_or(range.min_offset);
        offsets.push(QueueOffsets { queue_id, committed, min_offset: range.min_offset, max_offset: range.max_offset });
    }
    Ok(offsets)
}

async fn read_offsets(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    let Some(status) = status_of(&context, &name) else { return not_found(&name) };
    let offsets: Vec<Value> = match &status.kind {
        ConnectorKind::HttpSource | ConnectorKind::Stream => Vec::new(),
        ConnectorKind::Source => match context.positions.load(&name).await {
            Ok(position) => {
                position.map(|p| json!({ "partition": { "connector": name }, "offset": p })).into_iter().collect()
            }
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        ConnectorKind::Sink { group } => match sink_offsets(context.broker.as_ref(), group, &status.topic).await {
            Ok(offsets) => offsets
                .iter()
                .map(|o| {
                    json!({
                        "partition": { "topic": status.topic, "queue_id": o.queue_id },
                        "offset": { "queue_offset": o.committed },
                    })
                })
                .collect(),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
    };
    axum::Json(json!({ "offsets": offsets })).into_response()
}

/// The connector, when its offsets may change now: paused or stopped, so no task runs and
/// none starts before the caller releases `offsets_lock` (a failed task restarts on its own,
/// so it must be paused first). Otherwise the response to give.
fn alterable(context: &AdminContext, name: &str) -> Result<ConnectorStatus, Box<Response>> {
    let status = status_of(context, name).ok_or_else(|| Box::new(not_found(name)))?;
    if status.kind == ConnectorKind::HttpSource {
        return Err(Box::new(error(StatusCode::CONFLICT, format!("{name} is an HTTP source: it has no offsets"))));
    }
    if status.kind == ConnectorKind::Stream {
        let message = format!("{name} is a stream job: its offsets are part of its checkpoint, with its window state");
        return Err(Box::new(error(StatusCode::CONFLICT, message)));
    }
    // The control, not only the status: after a resume the status reads Paused until the
    // supervisor wakes, while the task it is about to start may already read its offsets.
    let pause_requested =
        context.controls.lock().expect("controls lock").get(name).is_some_and(|control| control.borrow().paused);
    let alterable = match status.state {
        ConnectorState::Stopped => true,
        ConnectorState::Paused => pause_requested,
        _ => false,
    };
    if !alterable {
        return Err(Box::new(error(
            StatusCode::CONFLICT,
            format!("{name} is not paused; pause it first (PUT /connectors/{name}/pause)"),
        )));
    }
    Ok(status)
}

const ALTERED: &str = "The offsets for this connector have been altered successfully";

async fn alter_offsets(
    State(context): State<AdminContext>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let _offsets = context.offsets_lock.lock().await;
    let status = match alterable(&context, &name) {
        Ok(status) => status,
        Err(response) => return *response,
    };
    let bad = |message: String| error(StatusCode::BAD_REQUEST, message);
    let request: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return bad(format!("the body is not JSON: {e}")),
    };
    let Some(entries) = request["offsets"].as_array() else {
        return bad("the body needs an `offsets` array".into());
    };
    match &status.kind {
        ConnectorKind::Source => {
            let [entry] = entries.as_slice() else {
                return bad(format!("a source has one position; got {} entries", entries.len()));
            };
            if entry["offset"].is_null() {
                return bad("offsets[0].offset is missing (use DELETE to forget the position)".into());
            }
            // Positions are objects (a file's inode and offset, a binlog file and position):
            // anything else could only fail the source's next start.
            if !entry["offset"].is_object() {
                return bad("offsets[0].offset must be a JSON object, as GET shows it".into());
            }
            let bytes = entry["offset"].to_string().len();
            if bytes > weir_connect::positions::POSITION_BYTES_MAX {
                let max = weir_connect::positions::POSITION_BYTES_MAX;
                return bad(format!("offsets[0].offset is {bytes} bytes; a position holds at most {max}"));
            }
            if let Err(e) = context.positions.save(&name, Some(&entry["offset"])).await {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
        }
        ConnectorKind::Sink { group } => {
            let current = match sink_offsets(context.broker.as_ref(), group, &status.topic).await {
                Ok(current) => current,
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            };
            // Check every entry before changing any.
            let mut changes = Vec::new();
            for (index, entry) in entries.iter().enumerate() {
                let field = |name: &str| format!("offsets[{index}].{name}");
                if entry["partition"]["topic"].as_str() != Some(status.topic.as_str()) {
                    return bad(format!("{}: must be {:?}", field("partition.topic"), status.topic));
                }
                let queue = entry["partition"]["queue_id"].as_u64().and_then(|q| current.get(q as usize));
                let Some(queue) = queue else {
                    return bad(format!("{}: must be in 0..{}", field("partition.queue_id"), current.len()));
                };
                let offset = entry["offset"]["queue_offset"].as_u64();
                let Some(offset) = offset.filter(|o| (queue.min_offset..=queue.max_offset).contains(o)) else {
                    return bad(format!(
                        "{}: must be in {}..={} (the queue's range)",
                        field("offset.queue_offset"),
                        queue.min_offset,
                        queue.max_offset
                    ));
                };
                changes.push((queue.queue_id, offset));
            }
            for (queue_id, offset) in changes {
                if let Err(e) = context.broker.commit_offset(group, &status.topic, queue_id, offset).await {
                    return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
                }
            }
        }
        ConnectorKind::HttpSource | ConnectorKind::Stream => unreachable!("refused by alterable"),
    }
    tracing::info!(connector = %name, "offsets altered through the admin API");
    axum::Json(json!({ "message": ALTERED })).into_response()
}

async fn reset_offsets(State(context): State<AdminContext>, Path(name): Path<String>) -> Response {
    let _offsets = context.offsets_lock.lock().await;
    let status = match alterable(&context, &name) {
        Ok(status) => status,
        Err(response) => return *response,
    };
    let outcome = match &status.kind {
        ConnectorKind::Source => context.positions.save(&name, None).await.map_err(|e| e.to_string()),
        ConnectorKind::Sink { group } => reset_sink(context.broker.as_ref(), group, &status.topic).await,
        ConnectorKind::HttpSource | ConnectorKind::Stream => unreachable!("refused by alterable"),
    };
    if let Err(message) = outcome {
        return error(StatusCode::INTERNAL_SERVER_ERROR, message);
    }
    tracing::info!(connector = %name, "offsets reset through the admin API");
    axum::Json(json!({ "message": "The offsets for this connector have been reset successfully" })).into_response()
}

/// Moves a sink's group back to the start of every queue (where a new group starts).
async fn reset_sink(broker: &dyn Messaging, group: &str, topic: &str) -> Result<(), String> {
    for queue in sink_offsets(broker, group, topic).await.map_err(|e| e.to_string())? {
        broker.commit_offset(group, topic, queue.queue_id, queue.min_offset).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}
