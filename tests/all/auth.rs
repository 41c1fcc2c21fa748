//! `--api-key`: `/v1` routes need `Authorization: Bearer`; health and metrics stay open.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::server::router;
use serde_json::Value;
use tower::ServiceExt;

use crate::server::{assert_openai_error, state};

async fn get(path: &str, auth: Option<&str>) -> (StatusCode, Option<String>, String) {
    let mut state = state();
    state.api_key = Some(String::from("s3cret-key"));
    let mut request = Request::builder().method("GET").uri(path);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = router(state).oneshot(request.body(Body::empty()).expect("request")).await.expect("infallible");
    let status = response.status();
    let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, challenge, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn v1_routes_need_the_key() {
    for auth in [None, Some("Bearer wrong"), Some("Bearer s3cret-ke"), Some("Bearer s3cret-key2"), Some("s3cret-key")] {
        let (status, challenge, body) = get("/v1/models", auth).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}: {body}");
        assert_eq!(challenge.as_deref(), Some("Bearer"));
        let json: Value = serde_json::from_str(&body).expect("JSON error");
        assert_openai_error(&json, "invalid_api_key");
    }
    let (status, _, body) = get("/v1/models", Some("Bearer s3cret-key")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn health_and_metrics_stay_open() {
    for path in ["/health", "/health/ready", "/metrics"] {
        let (status, _, body) = get(path, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
}
