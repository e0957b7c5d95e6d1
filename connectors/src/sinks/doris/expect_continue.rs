//! A Stream Load `PUT` that honours `Expect: 100-continue`: the body is sent only after the
//! server's `100 Continue`, so a frontend that answers `307` at once (and never reads the
//! body, as Doris's Jetty-based frontend does) gets no body. A server that answers neither
//! within `CONTINUE_WAIT_MAX` (or half the request's timeout) gets the body anyway — curl's
//! rule with a longer wait, as a Doris frontend always answers and a body sent to it resets
//! the connection. A redirect's `Location` may carry `user:password@` (Doris's does): it never
//! reaches a `Host` header or an error message. reqwest cannot wait for the `100` (hyper's
//! client reports it only through a request extension reqwest does not pass on), so this
//! exchange runs on hyper's HTTP/1.1 connection directly, one connection per load (a load is
//! seconds of data: the handshake is noise).

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use tokio::sync::oneshot;

/// How long the body waits for `100 Continue` (or a final answer), from when the request
/// is sent, before it goes anyway: at most this, and at most half the request's timeout.
pub(super) const CONTINUE_WAIT_MAX: Duration = Duration::from_secs(5);
/// Largest answer body read (Doris answers a few hundred bytes of JSON).
pub(super) const ANSWER_BYTES_MAX: usize = 1 << 20;

/// What the server answered.
pub(super) struct Answer {
    pub status: StatusCode,
    /// `Location`, for a redirect.
    pub location: Option<String>,
    pub body: Bytes,
}

/// `PUT url` with `headers` (plus `Host`, `Authorization: Basic`, `Expect: 100-continue` and
/// `Content-Length`) and `body`, within `timeout`. Errors are text for a retryable error.
pub(super) async fn put(
    url: &str,
    (username, password): (&str, &str),
    headers: &[(&'static str, String)],
    body: Bytes,
    timeout: Duration,
) -> Result<Answer, String> {
    let continue_wait = CONTINUE_WAIT_MAX.min(timeout / 2);
    tokio::time::timeout(timeout, exchange(url, (username, password), headers, body, continue_wait))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

async fn exchange(
    url: &str,
    (username, password): (&str, &str),
    headers: &[(&'static str, String)],
    body: Bytes,
    continue_wait: Duration,
) -> Result<Answer, String> {
    let uri: Uri = url.parse().map_err(|e| format!("{} is not a URL: {e}", redacted(url)))?;
    let host = uri.host().ok_or_else(|| format!("{} has no host", redacted(url)))?;
    // `host:port` without any `user:password@`; IPv6 stays bracketed here, not to connect.
    let authority = match uri.port_u16() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    if uri.scheme_str() != Some("http") {
        return Err(format!("{authority}: only http:// is supported"));
    }
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let address = host.trim_start_matches('[').trim_end_matches(']');
    let stream =
        tokio::net::TcpStream::connect((address, port)).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;

    let (release, released) = oneshot::channel();
    let release = Mutex::new(Some(release));
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut builder = Request::builder()
        .method(Method::PUT)
        .uri(path)
        .header(header::HOST, authority.as_str())
        .header(header::AUTHORIZATION, format!("Basic {credentials}"))
        .header(header::EXPECT, "100-continue");
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_str(value).map_err(|e| format!("header {name}: {e}"))?);
    }
    let mut request = builder
        .body(WithheldBody::new(body, released, continue_wait))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    hyper::ext::on_informational(&mut request, move |response| {
        if response.status() == StatusCode::CONTINUE
            && let Some(release) = release.lock().expect("release lock").take()
        {
            let _ = release.send(());
        }
    });

    let answer = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let location = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
        let body = http_body_util::Limited::new(response.into_body(), ANSWER_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>(Answer { status, location, body })
    };
    tokio::pin!(answer, connection);
    // The connection is driven until the answer is in; then both are dropped, with the body
    // unsent if the server answered before asking for it.
    let mut connection_error = None;
    loop {
        tokio::select! {
            biased;
            answer = &mut answer => {
                return answer.map_err(|e| match connection_error.take() {
                    Some(connection) => format!("{e} ({connection})"),
                    None => e,
                });
            }
            ended = &mut connection, if connection_error.is_none() => {
                connection_error = Some(match ended {
                    Ok(()) => "the connection closed".to_string(),
                    Err(e) => format!("the connection failed: {e}"),
                });
            }
        }
    }
}

/// `url` as `scheme://host[:port]/path`, without `user:password@` or a query.
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    let path = path.split('?').next().unwrap_or_default();
    format!("{scheme}://{host}/{path}")
}

/// A request body held back until `released` fires (the server's `100 Continue`) or
/// `continue_wait` passes from its first poll (when the head is being sent). A dropped
/// sender means the server answered without asking for the body: it is never sent.
struct WithheldBody {
    data: Option<Bytes>,
    length: u64,
    released: Option<oneshot::Receiver<()>>,
    continue_wait: Duration,
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The server answered without asking for the body.
    abandoned: bool,
}

impl WithheldBody {
    fn new(data: Bytes, released: oneshot::Receiver<()>, continue_wait: Duration) -> Self {
        WithheldBody {
            length: data.len() as u64,
            data: Some(data),
            released: Some(released),
            continue_wait,
            wait: None,
            abandoned: false,
        }
    }
}

impl Body for WithheldBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.abandoned {
            return Poll::Pending;
        }
        if this.data.is_none() {
            return Poll::Ready(None);
        }
        if let Some(released) = &mut this.released {
            match Pin::new(released).poll(cx) {
                Poll::Ready(Ok(())) => {}
                // hyper dropped the callback on a final answer: the body stays unsent (the
                // exchange returns that answer and drops the connection).
                Poll::Ready(Err(_)) => {
                    this.abandoned = true;
                    this.released = None;
                    return Poll::Pending;
                }
                Poll::Pending => {
                    let continue_wait = this.continue_wait;
                    let wait = this.wait.get_or_insert_with(|| Box::pin(tokio::time::sleep(continue_wait)));
                    if wait.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
            this.released = None;
        }
        Poll::Ready(this.data.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Read before the first poll: hyper sends it as `Content-Length`.
        SizeHint::with_exact(if self.data.is_some() { self.length } else { 0 })
    }
}
