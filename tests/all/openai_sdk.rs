//! The official `openai` Python SDK against a real `rapid-host serve` on the real model
//! (examples/chat_openai.py; scripts/setup installs the SDK).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::server::start_server;
use crate::support::{plugins_dir, repo_root};

#[test]
fn the_openai_python_sdk_works_unmodified() {
    let (_server, port, banner) = start_server(&plugins_dir(), &[]);
    assert!(banner.contains("listening on"), "{banner}");
    let out = Command::new("python3")
        .arg(repo_root().join("examples/chat_openai.py"))
        .args(["--base-url", &format!("http://127.0.0.1:{port}/v1")])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let checks: BTreeMap<String, Value> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .map(|v| (v["check"].as_str().unwrap_or_default().to_string(), v))
        .collect();
    let chat = &checks["chat"];
    assert!(chat["content"].as_str().is_some_and(|c| !c.is_empty()), "{chat}");
    assert!(chat["usage"]["total_tokens"].as_u64().is_some_and(|n| n > 0));
    let stream = &checks["stream"];
    assert_eq!(stream["content"], chat["content"], "greedy stream equals the plain answer");
    assert_eq!(stream["usage"]["completion_tokens"], chat["usage"]["completion_tokens"]);
    assert!(checks["completion"]["text"].as_str().is_some_and(|t| t.contains("Paris")), "{}", checks["completion"]);
    assert_eq!(checks["models"]["ids"], serde_json::json!(["smollm2-135m-q4_1"]));
    assert_eq!(checks["unknown_model"]["status"], 404);
    assert_eq!(checks["bad_request"]["status"], 400);
}
