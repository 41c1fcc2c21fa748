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

/// Runs tests/sdk/openai_forced_calls.py against a server started with `extra` flags.
fn forced_call_checks(extra: &[&str]) -> Vec<Value> {
    let (_server, port, banner) = start_server(&plugins_dir(), extra);
    assert!(banner.contains("listening on"), "{banner}");
    let out = Command::new("python3")
        .arg(repo_root().join("tests/sdk/openai_forced_calls.py"))
        .args(["--base-url", &format!("http://127.0.0.1:{port}/v1")])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON line")).collect()
}

fn no_markup(content: &Value) -> bool {
    content.as_str().is_none_or(|c| !c.contains('<') && !c.contains('{'))
}

/// Issue #21's rules, checked through the SDK: a named choice gives exactly one call (seeds
/// 1-8, streamed and not); `required` with `parallel_tool_calls: false` one call; parallel
/// calls indexed 0, 1, 2 in order; a call cut by `max_tokens` 4, 6, 10 or a stop string is
/// still a call (partial arguments), with no markup in `content` and `finish_reason`
/// `length`; streamed argument deltas concatenate to the non-streamed arguments.
fn check_forced_calls(checks: &[Value], path: &str) {
    let find = |check: &str, key: &str, value: &Value, mode: &str| -> &Value {
        checks
            .iter()
            .find(|c| c["check"] == check && &c[key] == value && c["mode"] == mode)
            .unwrap_or_else(|| panic!("{path}: no {check} {key}={value} {mode}"))
    };
    for seed in 1..=8 {
        let plain = find("named", "seed", &Value::from(seed), "plain");
        let stream = find("named", "seed", &Value::from(seed), "stream");
        for out in [plain, stream] {
            let calls = out["calls"].as_array().expect("calls");
            assert_eq!(calls.len(), 1, "{path}: exactly one call for a named choice: {out}");
            assert_eq!(calls[0]["name"], "get_weather", "{path}: {out}");
            assert_eq!(out["finish_reason"], "tool_calls", "{path}: {out}");
            assert!(out["content"].is_null(), "{path}: {out}");
            let arguments: Value = serde_json::from_str(calls[0]["arguments"].as_str().unwrap_or_default())
                .unwrap_or_else(|e| panic!("{path}: arguments are JSON ({e}): {out}"));
            assert!(arguments["city"].is_string(), "{path}: {out}");
        }
        assert_eq!(
            stream["calls"][0]["arguments"], plain["calls"][0]["arguments"],
            "{path}: streamed deltas concatenate to the plain arguments (seed {seed})"
        );
    }
    for seed in [1] {
        for mode in ["plain", "stream"] {
            let single = find("required_single", "seed", &Value::from(seed), mode);
            assert_eq!(single["calls"].as_array().map(Vec::len), Some(1), "{path}: {single}");
            assert_eq!(single["finish_reason"], "tool_calls", "{path}: {single}");
            let parallel = find("required_parallel", "seed", &Value::from(seed), mode);
            let calls = parallel["calls"].as_array().expect("calls");
            assert!(!calls.is_empty(), "{path}: {parallel}");
            for (i, call) in calls.iter().enumerate() {
                assert_eq!(call["index"], i, "{path}: indices 0, 1, 2 in order: {parallel}");
                assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{path}: {parallel}");
            }
        }
    }
    for max_tokens in [4, 6, 10] {
        let plain = find("cut", "max_tokens", &Value::from(max_tokens), "plain");
        let stream = find("cut", "max_tokens", &Value::from(max_tokens), "stream");
        for out in [plain, stream] {
            assert_eq!(out["finish_reason"], "length", "{path}: {out}");
            assert!(out["content"].is_null() && no_markup(&out["content"]), "{path}: no markup in content: {out}");
            let calls = out["calls"].as_array().expect("calls");
            assert_eq!(calls.len(), 1, "{path}: the cut call is still a call: {out}");
            assert_eq!(calls[0]["name"], "get_weather", "{path}: {out}");
        }
        assert_eq!(
            stream["calls"][0]["arguments"], plain["calls"][0]["arguments"],
            "{path}: same seed, same arguments"
        );
    }
    for mode in ["plain", "stream"] {
        let out = checks.iter().find(|c| c["check"] == "cut_by_stop" && c["mode"] == mode).expect("cut_by_stop");
        assert!(out["content"].is_null(), "{path}: {out}");
        assert_eq!(out["calls"].as_array().map(Vec::len), Some(1), "{path}: {out}");
        let arguments = out["calls"][0]["arguments"].as_str().unwrap_or_default();
        if serde_json::from_str::<Value>(arguments).is_err() {
            assert_eq!(out["finish_reason"], "length", "{path}: a call cut by a stop string: {out}");
        }
    }
}

#[test]
fn forced_tool_calls_behave_as_openais_on_the_parser_grammar() {
    let checks = forced_call_checks(&[]);
    check_forced_calls(&checks, "hermes grammar");
}

#[test]
fn forced_tool_calls_behave_as_openais_on_the_hosts_json_calls() {
    let checks = forced_call_checks(&["--tool-call-parser", "none"]);
    check_forced_calls(&checks, "host JSON calls");
}
