//! The REST admin API of `weir run`, in Kafka Connect's shape, and the Prometheus `/metrics`
//! endpoint: `GET /connectors`, `GET /connectors/{name}/status`, `PUT
//! /connectors/{name}/pause`, `PUT /connectors/{name}/resume`, `POST
//! /connectors/{name}/restart` (sinks; 202 Accepted), `GET /metrics`.
//!
//! Offset reads/resets and pausing sources are still to come (the Connect issue).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// A connector's state as the API reports it (Kafka Connect's words).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectorState {
    Running,
    Paused,
    /// Failed with this error; the supervisor restarts it after a backoff.
    Failed(String),
    Stopped,
}

/// What the API knows of one connector.
#[derive(Clone, Debug)]
pub struct ConnectorStatus {
    /// `source` or `sink`.
    pub kind: &'static str,
    pub topic: String,
    pub state: ConnectorState,
}

/// Status of every connector, updated by the tasks that run them.
pub type Statuses = Arc<Mutex<BTreeMap<String, ConnectorStatus>>>;

/// What the admin API asks of a sink's supervisor; any change stops the current run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    pub paused: bool,
    /// Bumped by every restart request.
    pub restarts: u64,
}

/// The control channel of every sink.
pub type Controls = Arc<Mutex<BTreeMap<String, tokio::sync::watch::Sender<Control>>>>;

/// Records `state` for connector `name`.
pub fn set_state(statuses: &Statuses, name: &str, state: ConnectorState) {
    if let Some(status) = statuses.lock().expect("statuses lock").get_mut(name) {
        status.state = state;
    }
}

#[derive(Clone)]
struct ApiState {
    metrics: PrometheusHandle,
    statuses: Statuses,
    controls: Controls,
}

/// Serves the API until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    statuses: Statuses,
    controls: Controls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/connectors", get(list_connectors))
        .route("/connectors/{name}/status", get(connector_status))
        .route("/connectors/{name}/pause", axum::routing::put(pause))
        .route("/connectors/{name}/resume", axum::routing::put(resume))
        .route("/connectors/{name}/restart", axum::routing::post(restart))
        .with_state(ApiState { metrics, statuses, controls });
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn render_metrics(State(state): State<ApiState>) -> String {
    state.metrics.run_upkeep();
    state.metrics.render()
}

async fn list_connectors(State(state): State<ApiState>) -> Response {
    let names: Vec<String> = state.statuses.lock().expect("statuses lock").keys().cloned().collect();
    axum::Json(names).into_response()
}

async fn connector_status(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let Some(status) = state.statuses.lock().expect("statuses lock").get(&name).cloned() else {
        let body = serde_json::json!({ "error_code": 404, "message": format!("connector {name} not found") });
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let (task_state, trace) = match &status.state {
        ConnectorState::Running => ("RUNNING", None),
        ConnectorState::Paused => ("PAUSED", None),
        ConnectorState::Failed(error) => ("FAILED", Some(error.clone())),
        ConnectorState::Stopped => ("STOPPED", None),
    };
    let body = serde_json::json!({
        "name": name,
        "type": status.kind,
        "topic": status.topic,
        "connector": { "state": task_state },
        "tasks": [ { "id": 0, "state": task_state, "trace": trace } ],
    });
    axum::Json(body).into_response()
}

/// Changes a sink's control: 202 when accepted, 409 for a source, 404 for no such connector.
fn control(state: &ApiState, name: &str, change: impl FnOnce(&mut Control)) -> Response {
    let controls = state.controls.lock().expect("controls lock");
    let Some(sender) = controls.get(name) else {
        let known = state.statuses.lock().expect("statuses lock").contains_key(name);
        let (status, message) = if known {
            (StatusCode::CONFLICT, format!("{name} is a source; sources cannot be paused or restarted yet"))
        } else {
            (StatusCode::NOT_FOUND, format!("connector {name} not found"))
        };
        let body = serde_json::json!({ "error_code": status.as_u16(), "message": message });
        return (status, axum::Json(body)).into_response();
    };
    sender.send_modify(change);
    StatusCode::ACCEPTED.into_response()
}

async fn pause(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    control(&state, &name, |c| c.paused = true)
}

async fn resume(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    control(&state, &name, |c| c.paused = false)
}

async fn restart(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    control(&state, &name, |c| c.restarts += 1)
}
