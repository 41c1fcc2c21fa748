//! The OpenAI-compatible HTTP gateway on axum.
//!
//! - [`error`]: OpenAI's error envelope with the right status for every failure.
//! - [`chat`]: `/v1/chat/completions`, streamed (SSE) or not, through the parser plugins.
//! - [`completions`]: the `/v1/completions` endpoint.
//! - [`anthropic`]: Anthropic's `/v1/messages` (and `count_tokens`).
//! - [`responses`]: OpenAI's `/v1/responses`, with a bounded store for `previous_response_id`.
//! - [`request`]: the one internal request model and path (admission, preparation off the
//!   async runtime, generation) every chat API adapts to; [`output`]: the response rules.
//! - [`run`]: bridges the blocking engine to async handlers, with admission control and
//!   cancellation when the client goes away.
//! - [`structured`]: `response_format` and forced tool calls as grammars (llguidance).
//! - [`metrics`]: Prometheus counters, gauges (under rapid-host's names and vLLM's, which the
//!   inference gateway's endpoint picker reads) and histograms.
//! - [`drain`]: graceful drain on shutdown: readiness 503, new requests 503 + `Retry-After`,
//!   requests in flight finish.
//! - [`http`]: the listener, with a header read timeout and a graceful shutdown.

pub mod anthropic;
pub mod chat;
pub mod completions;
pub mod drain;
pub mod error;
pub mod http;
pub mod metrics;
pub mod output;
pub mod request;
pub mod responses;
pub mod run;
pub mod structured;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;

pub use error::AppError;

use crate::engine::Engine;
use crate::plugins::PluginHub;
use crate::resolve::ResolvedModel;

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    pub max_request_bytes: usize,
    /// Requests generating or waiting at once; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// How long a client may take to send its request headers, and then its body.
    pub read_timeout: std::time::Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 8 << 20,
            max_concurrent_requests: 16,
            default_max_tokens: 1024,
            read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// What the server serves.
#[derive(Debug, Clone)]
pub struct AppState {
    pub model: ResolvedModel,
    pub created: u64,
    /// The live plugins; each request takes a snapshot.
    pub plugins: Arc<PluginHub>,
    pub engine: Arc<Engine>,
    pub tool_parser: Option<String>,
    pub reasoning_parser: Option<String>,
    pub limits: ServerLimits,
    pub runner: Arc<run::Runner>,
    pub metrics: Arc<metrics::Metrics>,
    /// When set, `/v1` routes need `Authorization: Bearer <key>` (or `x-api-key: <key>`).
    pub api_key: Option<String>,
    /// Responses kept for `previous_response_id`.
    pub responses: Arc<responses::ResponseStore>,
}

impl AppState {
    /// The id clients use: the alias when there is one, else what the user asked for.
    pub fn model_id(&self) -> &str {
        self.model.alias.as_deref().unwrap_or(&self.model.requested)
    }

    fn serves(&self, id: &str) -> bool {
        id == "default" || id == self.model_id() || id == self.model.hf_path
    }

    /// Checks a request's `model` (absent means the served one).
    pub fn check_model(&self, requested: Option<&str>) -> Result<(), AppError> {
        match requested {
            None => Ok(()),
            Some("") => Err(AppError::bad("`model` must not be empty", Some("model"))),
            Some(id) if self.serves(id) => Ok(()),
            Some(id) => Err(AppError::ModelNotFound {
                requested: id.to_string(),
                available: format!("{} (also `{}` or `default`)", self.model_id(), self.model.hf_path),
            }),
        }
    }
}

/// A JSON body with OpenAI-format errors: 413 over the size limit, 400 when malformed.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// Bodies larger than this are parsed on the blocking pool.
const LARGE_BODY_BYTES: usize = 64 << 10;

impl<T: DeserializeOwned + Send + 'static, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limits = req.extensions().get::<BodyLimits>().copied();
        let limit = limits.map_or(usize::MAX, |l| l.max_bytes);
        let timeout = limits.map_or(std::time::Duration::MAX, |l| l.read_timeout);
        let read = Bytes::from_request(req, state);
        let bytes = tokio::time::timeout(timeout, read)
            .await
            .map_err(|_| AppError::ReadTimeout { seconds: timeout.as_secs() })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::TooLarge { limit }
                } else {
                    AppError::bad(format!("cannot read the request body: {rejection}"), None)
                }
            })?;
        let bytes_len = bytes.len();
        let parse = move || {
            serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| AppError::BadRequest {
                message: format!("invalid JSON body: {e}"),
                param: None,
                code: "invalid_json",
            })
        };
        // A large body takes tens of milliseconds to parse: off the runtime threads, so
        // health checks and streams are not held up behind it.
        if bytes_len > LARGE_BODY_BYTES {
            tokio::task::spawn_blocking(parse).await.map_err(|e| AppError::Internal(e.to_string()))?
        } else {
            parse()
        }
    }
}

/// The body's limits, visible to [`JsonBody`].
#[derive(Debug, Clone, Copy)]
struct BodyLimits {
    max_bytes: usize,
    read_timeout: std::time::Duration,
}

/// Puts the body limits where [`JsonBody`] finds them, and refuses at once a body whose
/// announced length is over the limit (rather than waiting for it to arrive).
async fn body_limits(
    State(limits): State<BodyLimits>,
    mut req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > limits.max_bytes as u64) {
        return AppError::TooLarge { limit: limits.max_bytes }.into_response();
    }
    req.extensions_mut().insert(limits);
    next.run(req).await
}

/// Checks `Authorization: Bearer` (OpenAI's clients) or `x-api-key` (Anthropic's) on `/v1`
/// routes; health and metrics stay open so probes and scrapers need no secret.
async fn authorize(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if let Some(key) = &state.api_key
        && req.uri().path().starts_with("/v1")
    {
        let headers = req.headers();
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let x_api_key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
        let given: Vec<&str> = bearer.into_iter().chain(x_api_key).collect();
        let error = if given.is_empty() {
            Some(
                "Missing API key: send `Authorization: Bearer <key>` or `x-api-key: <key>` (the server runs with --api-key)",
            )
        } else if !given.iter().any(|g| same_secret(g.as_bytes(), key.as_bytes())) {
            Some("Incorrect API key provided")
        } else {
            None
        };
        if let Some(message) = error {
            let response = if req.uri().path().starts_with("/v1/messages") {
                anthropic::AnthropicError(AppError::Unauthorized(message)).into_response()
            } else {
                AppError::Unauthorized(message).into_response()
            };
            state.metrics.request("unauthorized", response.status().as_u16());
            return response;
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal how much of the key matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

pub fn router(state: AppState) -> Router {
    let limit = state.limits.max_request_bytes;
    let body = BodyLimits { max_bytes: limit, read_timeout: state.limits.read_timeout };
    let state = Arc::new(state);
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics::render))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/plugins", get(list_plugins))
        .route("/v1/chat/completions", post(chat::handle))
        .route("/v1/completions", post(completions::handle))
        .route("/v1/messages", post(anthropic::handle))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/responses", post(responses::handle))
        .route("/v1/responses/{id}", get(responses::retrieve))
        .fallback(|uri: axum::http::Uri| async move { AppError::RouteNotFound(uri.path().to_string()) })
        .method_not_allowed_fallback(|method: axum::http::Method, uri: axum::http::Uri| async move {
            AppError::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
        })
        .layer(axum::middleware::from_fn_with_state(body, body_limits))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&state), authorize))
        .with_state(state)
}

/// What the socket answers while the model loads: alive, not ready.
pub fn loading_router() -> Router {
    Router::new().route("/health", get(|| async { Json(json!({ "status": "ok", "loading": true })) })).fallback(
        |uri: axum::http::Uri| async move {
            let mut response = AppError::Loading(uri.path().to_string()).into_response();
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("2"));
            response
        },
    )
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready once the model is loaded and warmed (the server starts listening only then).
async fn ready(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ready", "model": state.model_id() }))
}

fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.model_id(),
        "object": "model",
        "created": state.created,
        "owned_by": "rapid-host",
        "hf_path": state.model.hf_path,
        "context_window": state.engine.context_length(),
        "tool_call_parser": state.tool_parser,
        "reasoning_parser": state.reasoning_parser,
    })
}

/// rapid-host extension: the plugins serving requests right now.
async fn list_plugins(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let set = state.plugins.current();
    let failures: Vec<serde_json::Value> =
        set.failures.iter().map(|f| json!({ "file": f.file, "error": f.error.to_string() })).collect();
    Json(json!({ "object": "list", "dir": state.plugins.dir(), "data": set.plugins, "failures": failures }))
}

async fn list_models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "object": "list", "data": [model_object(&state)] }))
}

async fn get_model(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, AppError> {
    state.check_model(Some(&id))?;
    Ok(Json(model_object(&state)))
}
