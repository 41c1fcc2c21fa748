//! The official `openai` Python SDK against a real `rapid-host serve` on the real model
//! (examples/chat_openai.py; scripts/setup installs the SDK).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::server::start_server;
use crate::support::{plugins_dir, repo_root};

#[test]
fn the_openai_python_sdk_works_unmodified() {
    let (_server, port, banner) = start_server(&plugins_dir(), &["--api-key", "sdk-test-key"]);
    assert!(banner.contains("listening on"), "{banner}");
    let out = Command::new("python3")
        .arg(repo_root().join("examples/chat_openai.py"))
        .args(["--base-url", &format!("http://127.0.0.1:{port}/v1"), "--api-key", "sdk-test-key"])
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
    assert_eq!(checks["wrong_key"]["status"], 401, "{}", checks["wrong_key"]);

    // Forced tool calls: valid calls with schema-valid arguments, by construction.
    let required = &checks["tool_required"];
    assert_eq!(required["finish_reason"], "tool_calls", "{required}");
    let calls = required["calls"].as_array().expect("calls");
    assert!(!calls.is_empty(), "{required}");
    for call in calls {
        match call["name"].as_str() {
            Some("get_weather") => {
                assert!(call["arguments"]["city"].is_string(), "{call}");
                assert!(
                    ["celsius", "fahrenheit"].contains(&call["arguments"]["unit"].as_str().unwrap_or("")),
                    "{call}"
                );
                assert_eq!(call["arguments"].as_object().map(|o| o.len()), Some(2), "no extra keys: {call}");
            }
            Some("get_time") => assert!(call["arguments"]["zone"].is_string(), "{call}"),
            other => panic!("not one of the tools: {other:?}"),
        }
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
    }
    let named = &checks["tool_named_stream"];
    assert_eq!(named["finish_reason"], "tool_calls", "{named}");
    assert_eq!(named["calls"][0]["name"], "get_time", "{named}");
    assert!(named["calls"][0]["arguments"]["zone"].is_string(), "{named}");

    // Structured output: the SDK's pydantic parse helper gets a valid object.
    let city = &checks["json_schema"]["parsed"];
    assert!(city["name"].is_string() && city["country"].is_string(), "{}", checks["json_schema"]);
    assert!(city["population"].is_i64() || city["population"].is_u64(), "{}", checks["json_schema"]);
    let object = &checks["json_object"];
    let content: Value =
        serde_json::from_str(object["content"].as_str().unwrap_or("")).expect("json_object answer is JSON");
    assert!(content.is_object(), "{object}");
}
