//! `type: http`: logs and metrics posted over HTTP into topics.
//!
//! Each route maps a path to a topic and a body format. A request is answered 200 only after
//! every event in it is stored by the broker (durably, with the sync flush `weir run` uses);
//! a body that does not parse is refused whole with 400 naming the first bad line, so nothing
//! of it is written. Bodies may be gzip or zstd (`Content-Encoding`); the decompressed size
//! counts against `body_bytes_max`. Limits: `body_bytes_max` (413), `events_per_request_max` (400),
//! `requests_in_flight_max` (503 with `Retry-After` when exceeded, as when the broker's append
//! queue is full). A request of more than 4,096 events is stored in several appends; if a
//! later one fails the earlier ones stay stored (the client's retry repeats them:
//! at-least-once).

mod influx;
mod parse;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use weir_broker::{Message, Messaging};

pub use parse::{BadLine, Format};

/// Default largest request body.
pub const BODY_BYTES_MAX_DEFAULT: usize = 10 << 20;
/// Default most requests handled at once.
pub const REQUESTS_IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Default longest time a request may take, body upload included.
pub const REQUEST_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(30);
/// Default most events in one request.
pub const EVENTS_PER_REQUEST_MAX_DEFAULT: usize = 100_000;
/// Room left in a message for its header and properties (a quarter of the maximum when that
/// is smaller): an event may be as large as the broker's message maximum less this, so an event the store would refuse is refused with 400
/// before anything of the request is sent (tags and keys are capped by `RENDERED_BYTES_MAX`).
pub const EVENT_HEADROOM_BYTES: usize = 64 << 10;
/// Longest tag or key a template may render (both fit the broker's property maximum, so an
/// event checked here is never refused by the broker halfway through a request).
pub const RENDERED_BYTES_MAX: usize = 8 << 10;

/// One path → topic route.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub path: String,
    pub topic: String,
    pub format: Format,
    /// Tag template (`"{{domain}}"`); events missing a field get no tag.
    pub tag: Option<String>,
    /// Key template (`"{{request_id}}"`); events missing a field get no key.
    pub key: Option<String>,
    /// Field with the event time in ms since the Unix epoch, stored as the message's born
    /// timestamp (receive time without it).
    pub timestamp_field: Option<String>,
}

/// An HTTP source's settings.
#[derive(Clone, Debug)]
pub struct HttpSourceConfig {
    /// Source name (logs and metrics).
    pub name: String,
    pub listen: SocketAddr,
    pub routes: Vec<HttpRoute>,
    pub body_bytes_max: usize,
    pub events_per_request_max: usize,
    pub requests_in_flight_max: usize,
    /// When set, requests need `Authorization: Bearer <token>`.
    pub auth_token: Option<String>,
    /// Longest a request may take, from its headers to the response (408 after it). Bounds
    /// slow uploads, and with them how long a graceful shutdown can wait.
    pub request_timeout: std::time::Duration,
    /// A handle, not a setting: while true every request gets 503 with `Retry-After` and
    /// `/health` reports 503, so load balancers send traffic elsewhere (the admin API's pause).
    pub paused: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpSourceConfig {
    pub fn new(name: impl Into<String>, listen: SocketAddr, routes: Vec<HttpRoute>) -> Self {
        HttpSourceConfig {
            name: name.into(),
            listen,
            routes,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            events_per_request_max: EVENTS_PER_REQUEST_MAX_DEFAULT,
            requests_in_flight_max: REQUESTS_IN_FLIGHT_MAX_DEFAULT,
            auth_token: None,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            paused: Arc::default(),
        }
    }
}

struct SourceState {
    name: String,
    broker: Arc<dyn Messaging>,
    in_flight: Arc<Semaphore>,
    events_per_request_max: usize,
    body_bytes_max: usize,
    /// The broker's message maximum less `EVENT_HEADROOM_BYTES`.
    event_bytes_max: usize,
    auth_token: Option<String>,
    request_timeout: std::time::Duration,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl SourceState {
    fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Binds the listener (so callers learn the address or the bind error at once).
pub async fn bind(config: &HttpSourceConfig) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen).await
}

/// Serves until `shutdown` completes, then finishes the requests in progress.
pub async fn serve(
    listener: tokio::net::TcpListener,
    broker: Arc<dyn Messaging>,
    config: HttpSourceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let message_max = broker.message_size_max_bytes();
    let event_bytes_max = message_max - EVENT_HEADROOM_BYTES.min(message_max / 4);
    let state = Arc::new(SourceState {
        name: config.name.clone(),
        broker,
        event_bytes_max,
        in_flight: Arc::new(Semaphore::new(config.requests_in_flight_max.max(1))),
        events_per_request_max: config.events_per_request_max,
        body_bytes_max: config.body_bytes_max,
        request_timeout: config.request_timeout,
        auth_token: config.auth_token.clone(),
        paused: config.paused.clone(),
    });
    let mut router = Router::new();
    for route in config.routes {
        let state = state.clone();
        let route = Arc::new(PreparedRoute { fields: template_fields(&route), route });
        let path = route.route.path.clone();
        router = router.route(
            &path,
            post(move |headers: HeaderMap, body: Bytes| {
                let (state, route) = (state.clone(), route.clone());
                async move { handle(&state, &route, &headers, body).await }
            }),
        );
    }
    // Layers run outside-in: the guard (auth, in-flight limit) runs before any body is read,
    // so neither unauthenticated clients nor a flood can make the source buffer bodies.
    let router = router
        .layer(DefaultBodyLimit::max(config.body_bytes_max))
        .layer(axum::middleware::from_fn_with_state(state.clone(), guard))
        .route(
            "/health",
            get(move || async move {
                if state.is_paused() {
                    return retry_later("paused".into());
                }
                reply(StatusCode::OK, "ok".into())
            }),
        );
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

/// Checks the bearer token and takes an in-flight slot, before the body is read.
async fn guard(
    axum::extract::State(state): axum::extract::State<Arc<SourceState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(token) = &state.auth_token {
        let expected = format!("Bearer {token}");
        if request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            let mut response = reply(StatusCode::UNAUTHORIZED, "missing or wrong bearer token".into());
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    if state.is_paused() {
        return retry_later(format!("source {} is paused; retry later", state.name));
    }
    let Ok(_permit) = state.in_flight.clone().try_acquire_owned() else {
        return retry_later("too many requests in flight; retry later".into());
    };
    // A request cut off by the timeout may still have stored its events (a retry repeats
    // them: at-least-once), never half of one append.
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => reply(
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {} ms", state.request_timeout.as_millis()),
        ),
    }
}

fn reply(status: StatusCode, text: String) -> Response {
    (status, text + "\n").into_response()
}

fn retry_later(text: String) -> Response {
    let mut response = reply(StatusCode::SERVICE_UNAVAILABLE, text);
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// A route and the top-level fields its templates read.
struct PreparedRoute {
    route: HttpRoute,
    fields: Vec<String>,
}

/// The top-level field names the tag and key templates and the timestamp field read.
fn template_fields(route: &HttpRoute) -> Vec<String> {
    let mut fields = Vec::new();
    for template in [&route.tag, &route.key].into_iter().flatten() {
        let mut rest = template.as_str();
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let Some(close) = after.find("}}") else { break };
            fields.push(after[..close].trim().split('.').next().unwrap_or_default().to_string());
            rest = &after[close + 2..];
        }
    }
    fields.extend(route.timestamp_field.iter().cloned());
    fields.sort();
    fields.dedup();
    fields
}

async fn handle(state: &SourceState, route: &PreparedRoute, headers: &HeaderMap, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let response = handle_inner(state, route, headers, body).await;
    let status = response.status();
    if status.is_client_error() || status.is_server_error() {
        metrics::counter!("weir_http_source_errors_total", "source" => state.name.clone()).increment(1);
    }
    metrics::histogram!("weir_http_source_request_seconds", "source" => state.name.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!("weir_http_source_requests_total", "source" => state.name.clone(), "status" => status.as_u16().to_string())
        .increment(1);
    response
}

async fn handle_inner(state: &SourceState, prepared: &PreparedRoute, headers: &HeaderMap, body: Bytes) -> Response {
    let route = &prepared.route;
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    let body = match encoding.trim().to_ascii_lowercase().as_str() {
        "identity" | "" => body,
        coding @ ("gzip" | "x-gzip" | "zstd") => {
            let (coding, limit) = (coding.to_string(), state.body_bytes_max);
            // Decompression is CPU work: off the async threads.
            match tokio::task::spawn_blocking(move || decompress(&coding, &body, limit)).await {
                Ok(Ok(body)) => body,
                Ok(Err((status, text))) => return reply(status, text),
                Err(_) => return reply(StatusCode::INTERNAL_SERVER_ERROR, "decompression failed".into()),
            }
        }
        other => {
            let text = format!("Content-Encoding {other:?} is not supported (use gzip or zstd)");
            return reply(StatusCode::UNSUPPORTED_MEDIA_TYPE, text);
        }
    };
    let events = match parse::parse(route.format, &body, state.events_per_request_max, &prepared.fields) {
        Ok(events) => events,
        Err(bad) => {
            // An earlier line may be bad in another way (a missing timestamp field): the
            // first bad line is the one to name.
            let earlier = first_bad_line_before(route, &body, bad.line, &prepared.fields, state.event_bytes_max);
            let bad = earlier.unwrap_or(bad);
            return reply(StatusCode::BAD_REQUEST, format!("line {}: {}", bad.line, bad.reason));
        }
    };
    let mut messages = Vec::with_capacity(events.len());
    for event in events {
        match to_message(route, event, state.event_bytes_max) {
            Ok(message) => messages.push(message),
            Err(bad) => return reply(StatusCode::BAD_REQUEST, format!("line {}: {}", bad.line, bad.reason)),
        }
    }
    let accepted = messages.len();
    let mut rest = messages;
    while !rest.is_empty() {
        let chunk: Vec<Message> = rest.drain(..rest.len().min(weir_broker::SEND_BATCH_MESSAGES_MAX)).collect();
        match state.broker.send_batch(chunk).await {
            Ok(_) => {}
            Err(error @ weir_broker::Error::Busy { .. }) => return retry_later(error.to_string()),
            Err(
                error @ (weir_broker::Error::MessageTooLarge { .. }
                | weir_broker::Error::PropertiesTooLarge { .. }
                | weir_broker::Error::PropertyInvalid { .. }),
            ) => {
                // Not expected: every event was checked against the broker's limits above.
                // Past the first chunk of a request over the broker's batch maximum the
                // earlier chunks stay stored (at-least-once).
                return reply(StatusCode::BAD_REQUEST, format!("the broker refused an event: {error}"));
            }
            Err(error) => {
                tracing::error!(source = %state.name, topic = %route.topic, %error, "cannot store a request's events");
                return reply(StatusCode::INTERNAL_SERVER_ERROR, format!("the broker refused the events: {error}"));
            }
        }
    }
    metrics::counter!("weir_http_source_events_total", "source" => state.name.clone()).increment(accepted as u64);
    metrics::counter!("weir_http_source_bytes_total", "source" => state.name.clone()).increment(body.len() as u64);
    reply(StatusCode::OK, format!("{{\"accepted\":{accepted}}}"))
}

/// Inflates a gzip or zstd body, refusing one that would exceed `limit` bytes (413).
fn decompress(coding: &str, body: &[u8], limit: usize) -> Result<Bytes, (StatusCode, String)> {
    use std::io::Read;
    let reader: Box<dyn Read> = match coding {
        "zstd" => match zstd::stream::read::Decoder::new(body) {
            Ok(decoder) => Box::new(decoder),
            Err(error) => return Err((StatusCode::BAD_REQUEST, format!("bad zstd body: {error}"))),
        },
        // Every member of a multi-member gzip body, not just the first.
        _ => Box::new(flate2::read::MultiGzDecoder::new(body)),
    };
    let mut out = Vec::new();
    match reader.take(limit as u64 + 1).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the decompressed body is over body_bytes_max ({limit} bytes)"),
        )),
        Ok(_) => Ok(Bytes::from(out)),
        Err(error) => Err((StatusCode::BAD_REQUEST, format!("bad {coding} body: {error}"))),
    }
}

/// For line formats: the first line before `line` whose event `to_message` refuses.
fn first_bad_line_before(
    route: &HttpRoute,
    body: &[u8],
    line: usize,
    fields: &[String],
    event_bytes_max: usize,
) -> Option<BadLine> {
    if !matches!(route.format, Format::Ndjson | Format::Text | Format::Influx) || line <= 1 {
        return None;
    }
    let prefix_end = body.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(line - 2).map(|(at, _)| at + 1)?;
    // The lines before may fail to parse themselves (a bad JSON line before a non-UTF-8 one).
    let events = match parse::parse(route.format, &body[..prefix_end], usize::MAX, fields) {
        Ok(events) => events,
        Err(bad) => return Some(bad),
    };
    events.into_iter().find_map(|event| to_message(route, event, event_bytes_max).err())
}

fn to_message(route: &HttpRoute, event: parse::Event, event_bytes_max: usize) -> Result<Message, BadLine> {
    let bad = |reason: String| BadLine { line: event.line, reason };
    if event.body.len() > event_bytes_max {
        return Err(bad(format!(
            "an event of {} bytes exceeds the broker's maximum of {event_bytes_max}",
            event.body.len()
        )));
    }
    let mut message = Message::new(&route.topic, event.body);
    if let Some(json) = &event.json {
        message.tag = route.tag.as_deref().and_then(|template| crate::template::render(template, json));
        // The key also picks the queue, so one key's events stay in order.
        let key = route.key.as_deref().and_then(|template| crate::template::render(template, json));
        for (what, value) in [("tag", &message.tag), ("key", &key)] {
            if let Some(value) = value.as_ref().filter(|value| value.len() > RENDERED_BYTES_MAX) {
                return Err(bad(format!(
                    "the {what} renders to {} bytes; the maximum is {RENDERED_BYTES_MAX}",
                    value.len()
                )));
            }
        }
        weir_connect::set_message_key(&mut message, key);
        if let Some(field) = &route.timestamp_field {
            let Some(time) = json.get(field).and_then(serde_json::Value::as_i64) else {
                return Err(bad(format!("field {field:?} is missing or not a number of ms")));
            };
            message.born_timestamp_ms = Some(time);
        }
    }
    message.validate().map_err(|error| bad(error.to_string()))?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_over_the_brokers_maximum_are_refused_by_line() {
        let route = HttpRoute {
            path: "/v1/logs".into(),
            topic: "logs".into(),
            format: Format::Text,
            tag: None,
            key: None,
            timestamp_field: None,
        };
        let event = |body: &[u8]| parse::Event { line: 7, json: None, body: body.to_vec() };
        assert!(to_message(&route, event(b"0123456789"), 10).is_ok());
        let bad = to_message(&route, event(b"0123456789a"), 10).unwrap_err();
        assert_eq!(bad.line, 7);
        assert!(bad.reason.contains("11 bytes exceeds the broker's maximum of 10"), "{}", bad.reason);
    }

    #[test]
    fn the_first_bad_line_is_named_whatever_makes_it_bad() {
        let route = HttpRoute {
            path: "/v1/logs".into(),
            topic: "logs".into(),
            format: Format::Ndjson,
            tag: None,
            key: Some("{{id}}".into()),
            timestamp_field: Some("ts".into()),
        };
        let fields = vec!["id".to_string(), "ts".to_string()];
        // (body, the line a parse error names, the earlier bad line expected)
        let cases: &[(&[u8], usize, Option<usize>)] = &[
            (b"{\"ts\":1}\n{\"id\":\"a\"}\n{bad", 3, Some(2)),
            (b"{\"ts\":1}\n{\"ts\":2}\n{bad", 3, None),
            (b"{bad", 1, None),
            (b"{\"id\":\"a\",\"ts\":1}\n{bad\n\xff", 3, Some(2)),
        ];
        for (body, parse_line, expected) in cases {
            let parsed = parse::parse(route.format, body, 100, &fields).unwrap_err();
            assert_eq!(parsed.line, *parse_line, "{body:?}");
            let earlier = first_bad_line_before(&route, body, parsed.line, &fields, usize::MAX);
            assert_eq!(earlier.map(|bad| bad.line), *expected, "{body:?}");
        }
    }
}
