//! Errors in OpenAI's envelope: `{"error": {"message", "type", "param", "code"}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("The model `{requested}` does not exist. Available: {available}")]
    ModelNotFound { requested: String, available: String },
    #[error("{message}")]
    BadRequest { message: String, param: Option<&'static str>, code: &'static str },
    #[error("request body is larger than the {limit}-byte limit (--max-request-bytes)")]
    TooLarge { limit: usize },
    #[error("the server is at its limit of {limit} concurrent requests; retry shortly")]
    Overloaded { limit: usize },
    /// A bounded shared resource (e.g. grammar compilation) is fully in use.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("the model is still loading; {0} answers once it is ready")]
    Loading(String),
    #[error("Unknown route {0}")]
    RouteNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{path} does not answer {method}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request body did not arrive within {seconds} s")]
    ReadTimeout { seconds: u64 },
    #[error("generation failed: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self::BadRequest { message: message.into(), param, code: "invalid_request" }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::ModelNotFound { .. } | Self::RouteNotFound(_) | Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::ReadTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } | Self::Busy(_) | Self::Loading(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, Option<&'static str>, &'static str) {
        match self {
            Self::ModelNotFound { .. } => ("invalid_request_error", Some("model"), "model_not_found"),
            Self::BadRequest { param, code, .. } => ("invalid_request_error", *param, code),
            Self::TooLarge { .. } => ("invalid_request_error", None, "request_too_large"),
            Self::Overloaded { .. } | Self::Busy(_) => ("server_error", None, "overloaded"),
            Self::Loading(_) => ("server_error", None, "model_loading"),
            Self::Unauthorized(_) => ("invalid_request_error", None, "invalid_api_key"),
            Self::RouteNotFound(_) | Self::NotFound(_) => ("invalid_request_error", None, "not_found"),
            Self::MethodNotAllowed { .. } => ("invalid_request_error", None, "method_not_allowed"),
            Self::ReadTimeout { .. } => ("invalid_request_error", None, "request_timeout"),
            Self::Internal(_) => ("server_error", None, "internal_error"),
        }
    }
}

impl AppError {
    /// The error as OpenAI's `{"error": {...}}` body (also sent as an SSE event when a
    /// stream fails after it started).
    pub fn envelope(&self) -> serde_json::Value {
        let (kind, param, code) = self.kind();
        json!({ "error": { "message": self.to_string(), "type": kind, "param": param, "code": code } })
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = self.envelope();
        let mut response = (status, Json(body)).into_response();
        if matches!(self, Self::Overloaded { .. } | Self::Busy(_)) {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if matches!(self, Self::Unauthorized(_)) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
