//! Graceful drain, so a load balancer can take a replica out of rotation without losing a
//! request: once [`Drain::start`] is called (on SIGTERM), `/health/ready` answers 503 at once,
//! new API requests get 503 with `Retry-After` in their API's error format (and
//! `Connection: close`, so keep-alive clients reconnect elsewhere), while the requests already
//! in flight, streams included, run to their end. [`Drain::idle`] resolves when the last of
//! them has sent its last byte; the caller then stops the listener.
//!
//! The gate is a layer over the whole router ([`Drain::wrap`]), so the routes themselves
//! know nothing of it. `/health` (liveness) and `/metrics` (the gateway's scrapes) keep
//! answering while the replica drains.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::watch;

/// Seconds a refused client is told to wait; any other replica can take the request at once.
pub const RETRY_AFTER_SECONDS: &str = "1";

/// The drain state of one server, shared by the gate layer and whoever handles SIGTERM.
#[derive(Debug, Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    draining: AtomicBool,
    /// Requests through the gate whose response has not sent its last byte yet.
    in_flight: watch::Sender<usize>,
}

impl Default for Drain {
    fn default() -> Self {
        Self { inner: Arc::new(Inner { draining: AtomicBool::new(false), in_flight: watch::Sender::new(0) }) }
    }
}

impl Drain {
    /// Stops taking new requests; those in flight go on.
    pub fn start(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// API requests (not health checks or scrapes) whose response is not finished.
    pub fn in_flight(&self) -> usize {
        *self.inner.in_flight.borrow()
    }

    /// Resolves once no request is in flight.
    pub async fn idle(&self) {
        let mut rx = self.inner.in_flight.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// `router` behind the drain gate.
    pub fn wrap(&self, router: Router) -> Router {
        router.layer(axum::middleware::from_fn_with_state(self.clone(), gate))
    }

    fn enter(&self) -> InFlight {
        self.inner.in_flight.send_modify(|n| *n += 1);
        InFlight(self.clone())
    }
}

/// One request in flight; dropped with its response body (after the last chunk of a stream,
/// or when the client goes away).
#[derive(Debug)]
struct InFlight(Drain);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inner.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Routes that answer while draining and are not counted as work in flight.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/health/ready" | "/metrics")
}

async fn gate(State(drain): State<Drain>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if drain.is_draining() {
        if path == "/health/ready" {
            return unavailable(
                (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": "draining" }))).into_response(),
            );
        }
        if !is_probe(path) {
            return unavailable(refusal(path));
        }
    }
    if is_probe(path) {
        return next.run(req).await;
    }
    let guard = drain.enter();
    let response = next.run(req).await;
    // The guard rides with the body, so a stream counts until its last chunk is sent.
    response.map(|body| Body::new(Tracked { body, _in_flight: guard }))
}

/// A response body that holds its request's place in flight until it is done or dropped.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// 503 with `Retry-After`; the connection closes after it so the client's next attempt
/// goes through the load balancer again.
fn unavailable(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// The refusal in the error format of the API the path belongs to.
fn refusal(path: &str) -> Response {
    let message = "this replica is shutting down and takes no new requests; retry (another replica will answer)";
    let body = if path.starts_with("/v1/messages") {
        // Anthropic's envelope; its SDKs retry 5xx answers and honour Retry-After.
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": message } })
    } else {
        // OpenAI's envelope (Chat Completions, Completions, Responses, models).
        json!({ "error": { "message": message, "type": "server_error", "param": null, "code": "draining" } })
    };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
}
