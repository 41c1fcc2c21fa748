//! Running as one of several replicas behind a gateway: the load gauges an inference
//! gateway routes by (vLLM's names), graceful drain on SIGTERM, the deploy files against the
//! Kubernetes schemas, and a rolling restart behind a real HAProxy.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::server::drain::Drain;
use rapid_host::server::router;
use serde_json::Value;
use tower::ServiceExt;

use crate::server::{assert_openai_error, send, state};
use crate::support::{plugins_dir, repo_root};

/// A prompt SmolLM2 continues for as long as it is allowed to (greedy), so a generation
/// lives until `max_tokens`.
const COUNTING: &str = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,";

fn streamed_completion(max_tokens: usize) -> Request<Body> {
    let body = serde_json::json!({
        "prompt": COUNTING, "max_tokens": max_tokens, "temperature": 0, "stream": true
    });
    Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// The value of the first sample of `name` in a Prometheus text exposition.
fn gauge(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in:\n{exposition}"))
}

/// The gauges an inference gateway reads, under vLLM's names and ours, in one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Load {
    waiting: f64,
    running: f64,
    usage: f64,
}

async fn scrape(app: &axum::Router) -> (Load, String) {
    let (status, _, text) = send(app.clone(), "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    let load = Load {
        waiting: gauge(&text, "vllm:num_requests_waiting"),
        running: gauge(&text, "vllm:num_requests_running"),
        usage: gauge(&text, "vllm:kv_cache_usage_perc"),
    };
    // rapid-host's own names carry the same numbers.
    assert_eq!(gauge(&text, "rapid_host_requests_waiting"), load.waiting, "{text}");
    assert_eq!(gauge(&text, "rapid_host_requests_running"), load.running, "{text}");
    assert_eq!(gauge(&text, "rapid_host_kv_cache_usage_ratio"), load.usage, "{text}");
    (load, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_gauges_follow_the_load() {
    let state = state();
    let runner = Arc::clone(&state.runner);
    let app = router(state);

    let (idle, text) = scrape(&app).await;
    assert_eq!(idle, Load { waiting: 0.0, running: 0.0, usage: 0.0 }, "{text}");
    for line in [
        "# TYPE vllm:num_requests_waiting gauge",
        "# TYPE vllm:num_requests_running gauge",
        "# TYPE vllm:kv_cache_usage_perc gauge",
        "# TYPE vllm:cache_config_info gauge",
        "vllm:num_requests_waiting{model_name=\"smollm2-135m-q4_1\"} 0",
        "vllm:cache_config_info{block_size=\"1\",num_gpu_blocks=\"65536\",model_name=\"smollm2-135m-q4_1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }

    // More streams at once than the engine runs together (one sequence at a time before
    // continuous batching; a batching scheduler queues what its batch does not hold), within
    // the admission limit (16). Their bodies are not read yet; each generation fits in its
    // channel, so none blocks on the client.
    const STREAMS: usize = 12;
    let mut bodies = Vec::new();
    for _ in 0..STREAMS {
        let response = app.clone().oneshot(streamed_completion(96)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK);
        bodies.push(response.into_body());
    }
    let mut busiest = idle;
    for _ in 0..2000 {
        let (load, text) = scrape(&app).await;
        assert!((0.0..=1.0).contains(&load.usage), "{text}");
        assert!(load.running + load.waiting <= STREAMS as f64, "{text}");
        if load.waiting > 0.0 && load.running > 0.0 && load.usage > 0.0 {
            busiest = load;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(busiest.waiting >= 1.0, "never saw a queued request: {busiest:?}");
    assert!(busiest.running >= 1.0, "{busiest:?}");
    assert!(busiest.usage > 0.0, "a live sequence holds KV cache: {busiest:?}");

    // The clients go away: the generations are cancelled and the gauges fall back to zero.
    drop(bodies);
    for _ in 0..2000 {
        if runner.in_flight() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (after, text) = scrape(&app).await;
    assert_eq!(after, Load { waiting: 0.0, running: 0.0, usage: 0.0 }, "{text}");
}

#[tokio::test]
async fn a_draining_server_refuses_new_work_in_each_apis_format_and_finishes_its_streams() {
    let drain = Drain::default();
    let app = drain.wrap(router(state()));
    let (status, _, _) = send(app.clone(), "GET", "/health/ready", "").await;
    assert_eq!(status, StatusCode::OK);

    let response = app.clone().oneshot(streamed_completion(24)).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first chunk").expect("no error");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert_eq!(drain.in_flight(), 1, "the open stream is in flight");

    drain.start();
    let (status, headers, text) = send(app.clone(), "GET", "/health/ready", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(serde_json::from_str::<Value>(&text).expect("json")["status"], "draining");
    // Liveness and the gateway's scrapes still answer.
    assert_eq!(send(app.clone(), "GET", "/health", "").await.0, StatusCode::OK);
    let (status, _, metrics) = send(app.clone(), "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("# TYPE vllm:num_requests_waiting gauge"), "{metrics}");

    let chat = r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":1}"#;
    for (path, body) in [
        ("/v1/chat/completions", chat),
        ("/v1/completions", r#"{"prompt":"hi","max_tokens":1}"#),
        ("/v1/responses", r#"{"input":"hi","max_output_tokens":16}"#),
    ] {
        let (status, headers, text) = send(app.clone(), "POST", path, body).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}: {text}");
        assert_eq!(headers["retry-after"], "1", "{path}");
        assert_eq!(headers["connection"], "close", "{path}");
        assert_openai_error(&serde_json::from_str(&text).expect("json"), "draining");
    }
    let (status, _, text) = send(app.clone(), "GET", "/v1/models", "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    let messages = r#"{"model":"default","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, text) = send(app.clone(), "POST", "/v1/messages", messages).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert_eq!(headers["retry-after"], "1");
    let anthropic: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(anthropic["type"], "error", "{text}");
    assert_eq!(anthropic["error"]["type"], "overloaded_error", "{text}");
    assert!(anthropic["error"]["message"].as_str().is_some_and(|m| m.contains("shutting down")), "{text}");

    // The stream that was in flight runs to its end.
    assert_eq!(drain.in_flight(), 1);
    let rest = body.collect().await.expect("the rest of the stream").to_bytes();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.trim_end().ends_with("data: [DONE]"), "{rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    drain.idle().await;
    assert_eq!(drain.in_flight(), 0);
}

/// A `rapid-host serve` process this test owns; killed when the test ends, pass or fail.
struct Replica {
    child: Child,
    port: u16,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
    probe.local_addr().expect("addr").port()
}

fn start_replica(extra: &[&str]) -> Replica {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--threads", "1", "--port", &port.to_string()])
        .arg("--models-dir")
        .arg(repo_root().join("models"))
        .arg("--plugins")
        .arg(plugins_dir())
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line.expect("stderr line").contains("listening on") {
            break;
        }
    }
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Replica { child, port }
}

/// One HTTP/1.0 exchange (the server closes the connection after the body, so a stream is
/// read to its end without chunked framing).
fn http(port: u16, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, response))
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(status.success());
}

#[test]
fn sigterm_lets_the_stream_in_flight_finish_refuses_new_requests_and_exits_zero() {
    let mut replica = start_replica(&["--drain-timeout", "300"]);
    let port = replica.port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
    let body = serde_json::json!({"prompt": COUNTING, "max_tokens": 160, "temperature": 0, "stream": true}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut reader = BufReader::new(stream);
    let mut received = String::new();
    while !received.contains("data: {") {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).expect("read") > 0, "stream ended early: {received}");
        received.push_str(&line);
    }
    assert!(received.starts_with("HTTP/1.0 200") || received.starts_with("HTTP/1.1 200"), "{received}");

    sigterm(&replica.child);
    // Readiness turns 503 at once; the loop only waits for the signal to be handled.
    let mut ready = (0, String::new());
    for _ in 0..200 {
        ready = http(port, "GET", "/health/ready", "").expect("the draining replica still answers");
        if ready.0 == 503 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(ready.1.to_ascii_lowercase().contains("retry-after: 1"), "{}", ready.1);
    let (status, refused) =
        http(port, "POST", "/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}]}"#)
            .expect("a new request gets an answer");
    assert_eq!(status, 503, "{refused}");
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("\"code\":\"draining\""), "{refused}");
    assert_eq!(http(port, "GET", "/health", "").expect("liveness").0, 200);
    assert!(replica.child.try_wait().expect("try_wait").is_none(), "exited with a stream in flight");

    reader.read_to_string(&mut received).expect("the rest of the stream");
    assert!(received.trim_end().ends_with("data: [DONE]"), "stream cut short:\n{received}");
    assert!(received.contains("\"finish_reason\":\"length\""), "{received}");
    let status = replica.child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "exit status after a clean drain");
    // The listener is gone with the process.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn a_drain_timeout_cuts_what_is_left_and_exits_nonzero() {
    let mut replica = start_replica(&["--drain-timeout", "0"]);
    let mut stream = TcpStream::connect(("127.0.0.1", replica.port)).expect("connect");
    let body =
        serde_json::json!({"prompt": COUNTING, "max_tokens": 4000, "temperature": 0, "stream": true}).to_string();
    write!(
        stream,
        "POST /v1/completions HTTP/1.0\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).expect("the response starts");
    sigterm(&replica.child);
    let status = replica.child.wait().expect("wait");
    assert_eq!(status.code(), Some(1), "a drain that cut a request says so");
}

#[test]
fn the_deploy_manifests_validate_against_the_kubernetes_schemas() {
    let script = repo_root().join("deploy/validate");
    let output = Command::new("python3").arg(&script).output().expect("python3 runs deploy/validate");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "deploy/validate failed:\n{stdout}\n{stderr}");
    for kind in ["Deployment", "Service", "InferencePool", "HorizontalPodAutoscaler", "PodDisruptionBudget"] {
        assert!(stdout.contains(&format!("ok {kind}/")), "{kind} not validated:\n{stdout}");
    }
    assert!(stdout.contains("ok helm values"), "{stdout}");
}

#[test]
fn a_rolling_restart_behind_haproxy_loses_no_request() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!(
            "SKIPPED a_rolling_restart_behind_haproxy_loses_no_request: haproxy is not installed \
             (scripts/setup installs it from the Debian packages)"
        );
        return;
    }
    let output = Command::new("python3")
        .arg(repo_root().join("scripts/rolling-restart"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["--requests", "20", "--max-tokens", "16"])
        .output()
        .expect("python3 runs scripts/rolling-restart");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "rolling restart lost requests:\n{stdout}\n{stderr}");
    assert!(stdout.contains("20 requests: 20 complete, 0 failed, 0 truncated"), "{stdout}\n{stderr}");
    assert!(stdout.contains("replica 1 drained and exited 0"), "{stdout}");
    assert!(stdout.contains("replica 2 drained and exited 0"), "{stdout}");
}
