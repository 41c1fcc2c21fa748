//! `rapid-host pull` and on-demand downloads through `hf-hub`, against a local server that
//! speaks the hub's file API and serves a checkpoint this test copies from the MLX
//! fixtures. The first transfer of the weights is cut off halfway: the download must
//! resume from where it stopped (a `Range` request) and end byte-identical.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{plugins_dir, repo_root};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Default)]
struct Repo {
    files: BTreeMap<String, Vec<u8>>,
    /// `Range` starts asked for each file.
    ranges: Mutex<Vec<(String, u64)>>,
    /// Files whose next full transfer is cut off halfway.
    cut: Mutex<Vec<String>>,
}

async fn info(State(repo): State<Arc<Repo>>) -> Response {
    let siblings: Vec<_> =
        repo.files.keys().map(|f| json!({ "rfilename": f })).chain([json!({"rfilename": "README.md"})]).collect();
    axum::Json(json!({ "sha": COMMIT, "siblings": siblings })).into_response()
}

async fn resolve(State(repo): State<Arc<Repo>>, UrlPath(file): UrlPath<String>, headers: HeaderMap) -> Response {
    let Some(data) = repo.files.get(&file) else { return StatusCode::NOT_FOUND.into_response() };
    let size = data.len() as u64;
    let start: u64 = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let end = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some("bytes=0-0") => 0,
        _ => size - 1,
    };
    if let Ok(mut ranges) = repo.ranges.lock() {
        ranges.push((file.clone(), start));
    }
    let body_bytes = Bytes::copy_from_slice(&data[start as usize..=end as usize]);
    let cut_now = end > 0
        && repo.cut.lock().is_ok_and(|mut cut| {
            let hit = cut.contains(&file);
            cut.retain(|f| *f != file);
            hit
        });
    let body = if cut_now {
        // Half the bytes reach the client, then the connection breaks.
        let half = body_bytes.slice(..body_bytes.len() / 2);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
        tokio::spawn(async move {
            let _ = tx.send(Ok(half)).await;
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let _ = tx.send(Err(std::io::Error::other("connection cut by the test"))).await;
        });
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
    } else {
        Body::from(body_bytes.clone())
    };
    let etag = format!("\"{:x}\"", Sha256::digest(data));
    Response::builder()
        .status(StatusCode::PARTIAL_CONTENT)
        .header("x-repo-commit", COMMIT)
        .header(header::ETAG, etag)
        .header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"))
        .header(header::CONTENT_LENGTH, body_bytes.len())
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Serves `repo` as `org/tiny-qwen3` on a background thread; returns the endpoint.
fn serve(repo: Arc<Repo>) -> String {
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async move {
            let app = Router::new()
                .route("/api/models/org/tiny-qwen3/revision/main", get(info))
                .route("/org/tiny-qwen3/resolve/main/{*file}", get(resolve))
                .with_state(repo);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let _ = tx.send(listener.local_addr().expect("addr"));
            let _ = axum::serve(listener, app).await;
        });
    });
    let addr = rx.recv().expect("server address");
    format!("http://{addr}")
}

fn fixture_repo() -> Repo {
    let dir = repo_root().join("tests/fixtures/mlx/qwen3");
    let mut files = BTreeMap::new();
    for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        files.insert(name.to_string(), std::fs::read(dir.join(name)).expect("fixture file"));
    }
    Repo { files, ..Repo::default() }
}

fn rapid_host(args: &[&str], endpoint: &str, hf_home: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(args)
        .env("RAPID_HOST_PLUGINS", plugins_dir())
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", hf_home)
        .env_remove("HF_HUB_CACHE")
        .output()
        .expect("binary runs")
}

fn snapshot(hf_home: &Path) -> PathBuf {
    hf_home.join("hub/models--org--tiny-qwen3/snapshots").join(COMMIT)
}

#[test]
fn pull_downloads_into_the_hf_cache_and_resumes_a_cut_transfer() {
    let repo = Arc::new(fixture_repo());
    if let Ok(mut cut) = repo.cut.lock() {
        cut.push(String::from("model.safetensors"));
    }
    let endpoint = serve(Arc::clone(&repo));
    let home = tempfile::tempdir().expect("tempdir");

    let out = rapid_host(&["pull", "org/tiny-qwen3"], &endpoint, home.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap = snapshot(home.path());
    for (name, data) in &repo.files {
        assert_eq!(&std::fs::read(snap.join(name)).expect("downloaded"), data, "{name} is byte-identical");
    }
    assert!(!snap.join("README.md").exists(), "only files loading needs are fetched");
    assert_eq!(
        std::fs::read_to_string(home.path().join("hub/models--org--tiny-qwen3/refs/main")).expect("ref").trim(),
        COMMIT
    );
    let ranges = repo.ranges.lock().map(|r| r.clone()).unwrap_or_default();
    let resumed = ranges.iter().any(|(f, start)| f == "model.safetensors" && *start > 0);
    assert!(resumed, "the cut transfer resumed with a Range request: {ranges:?}");

    // Offline, from the cache: the model runs without the server being asked for files.
    let asked_before = repo.ranges.lock().map(|r| r.len()).unwrap_or_default();
    let out = rapid_host(
        &["generate", "org/tiny-qwen3", "--prompt", "hi", "--max-tokens", "4", "--offline", "--ignore-eos"],
        &endpoint,
        home.path(),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("4 generated tokens"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(repo.ranges.lock().map(|r| r.len()).unwrap_or_default(), asked_before);
}

#[test]
fn generate_pulls_on_demand_unless_offline() {
    let repo = Arc::new(fixture_repo());
    let endpoint = serve(Arc::clone(&repo));
    let home = tempfile::tempdir().expect("tempdir");
    let offline = rapid_host(&["generate", "org/tiny-qwen3", "--prompt", "hi", "--offline"], &endpoint, home.path());
    assert!(!offline.status.success());
    let err = String::from_utf8_lossy(&offline.stderr);
    assert!(err.contains("--offline") && err.contains("org/tiny-qwen3"), "{err}");

    let online =
        rapid_host(&["generate", "org/tiny-qwen3", "--prompt", "hi", "--max-tokens", "2"], &endpoint, home.path());
    assert!(online.status.success(), "{}", String::from_utf8_lossy(&online.stderr));
    assert!(snapshot(home.path()).join("model.safetensors").is_file());
}

#[test]
fn a_repository_without_weights_is_a_clear_error() {
    let mut repo = fixture_repo();
    repo.files.remove("model.safetensors");
    let endpoint = serve(Arc::new(repo));
    let home = tempfile::tempdir().expect("tempdir");
    let out = rapid_host(&["pull", "org/tiny-qwen3"], &endpoint, home.path());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no weights"), "{}", String::from_utf8_lossy(&out.stderr));
}
