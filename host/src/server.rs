//! The HTTP gateway. This build has no inference engine yet: it serves health, the model
//! list and OpenAI-format errors, so clients get a clear answer instead of a hang.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::plugins::PluginHub;
use crate::resolve::ResolvedModel;

/// What the server serves.
#[derive(Debug, Clone)]
pub struct AppState {
    pub model: ResolvedModel,
    pub created: u64,
    /// The live plugins; each request takes a snapshot.
    pub plugins: Arc<PluginHub>,
}

impl AppState {
    /// The id clients use: the alias when there is one, else what the user asked for.
    pub fn model_id(&self) -> &str {
        self.model.alias.as_deref().unwrap_or(&self.model.requested)
    }

    fn serves(&self, id: &str) -> bool {
        id == "default" || id == self.model_id() || id == self.model.hf_path
    }
}

/// Errors in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("The model `{requested}` does not exist. Available: {available}")]
    ModelNotFound { requested: String, available: String },
    #[error(
        "rapid-host was built without an inference engine yet, so it cannot generate text; {route} will work once the engine lands"
    )]
    EngineUnavailable { route: &'static str },
    #[error("Unknown route {0}")]
    RouteNotFound(String),
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotFound { .. } | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::EngineUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            Self::ModelNotFound { .. } => ("invalid_request_error", "model_not_found"),
            Self::EngineUnavailable { .. } => ("server_error", "engine_unavailable"),
            Self::RouteNotFound(_) => ("invalid_request_error", "not_found"),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (kind, code) = self.kind();
        let param = matches!(self, Self::ModelNotFound { .. }).then_some("model");
        let body = json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } });
        (self.status(), Json(body)).into_response()
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/v1/models", get(list_models))
        .route("/v1/models/{*id}", get(get_model))
        .route("/v1/plugins", get(list_plugins))
        .route(
            "/v1/chat/completions",
            post(|| async { Err::<(), _>(AppError::EngineUnavailable { route: "/v1/chat/completions" }) }),
        )
        .route(
            "/v1/completions",
            post(|| async { Err::<(), _>(AppError::EngineUnavailable { route: "/v1/completions" }) }),
        )
        .fallback(|uri: axum::http::Uri| async move { AppError::RouteNotFound(uri.path().to_string()) })
        .with_state(Arc::new(state))
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready() -> (StatusCode, Json<serde_json::Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "status": "not_ready", "reason": "no inference engine in this build" })),
    )
}

fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": state.model_id(),
        "object": "model",
        "created": state.created,
        "owned_by": "rapid-host",
        "hf_path": state.model.hf_path,
        "ready": false,
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
    if state.serves(&id) {
        Ok(Json(model_object(&state)))
    } else {
        Err(AppError::ModelNotFound { requested: id, available: state.model_id().to_string() })
    }
}
