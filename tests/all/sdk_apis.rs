//! Anthropic's Messages API through the official `anthropic` SDK, and OpenAI's Responses API
//! through the `openai` SDK, against a real `rapid-host serve` on the real model
//! (tests/sdk/*.py; scripts/setup installs both SDKs).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::Value;

use crate::server::start_server;
use crate::support::{plugins_dir, repo_root};

/// Runs a tests/sdk script against `base_url`; its JSON lines by `check`.
fn run_script(script: &str, base_url: &str, api_key: &str) -> BTreeMap<String, Value> {
    let out = Command::new("python3")
        .arg(repo_root().join("tests/sdk").join(script))
        .args(["--base-url", base_url, "--api-key", api_key])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
        .map(|v| (v["check"].as_str().unwrap_or_default().to_string(), v))
        .collect()
}

fn text_of(blocks: &Value) -> String {
    blocks.as_array().into_iter().flatten().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect()
}

fn anthropic_error(check: &Value, status: u64) {
    assert_eq!(check["status"], status, "{check}");
    assert_eq!(check["body"]["type"], "error", "Anthropic's envelope: {check}");
    assert!(check["body"]["error"]["type"].is_string() && check["body"]["error"]["message"].is_string(), "{check}");
}

#[test]
fn the_anthropic_sdk_speaks_messages_with_the_server() {
    let (_server, port, banner) = start_server(&plugins_dir(), &["--api-key", "sdk-key"]);
    assert!(banner.contains("listening on"), "{banner}");
    // The SDK sends `x-api-key`; its base URL has no `/v1`.
    let checks = run_script("anthropic_messages.py", &format!("http://127.0.0.1:{port}"), "sdk-key");

    let plain = &checks["plain"];
    assert!(plain["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{plain}");
    assert!(!text_of(&plain["blocks"]).is_empty(), "{plain}");
    assert!(plain["usage"]["input_tokens"].as_u64().is_some_and(|n| n > 0), "{plain}");
    let stream = &checks["stream"];
    assert_eq!(text_of(&stream["blocks"]), text_of(&plain["blocks"]), "greedy stream equals the plain answer");
    assert_eq!(stream["usage"]["output_tokens"], plain["usage"]["output_tokens"], "{stream}");
    assert_eq!(stream["stop_reason"], plain["stop_reason"]);
    let events: Vec<&str> = stream["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
    assert!(events.contains(&"content_block_start") && events.contains(&"message_delta"), "{events:?}");

    assert!(checks["system_role"]["stop_reason"].is_string(), "{}", checks["system_role"]);
    let stop = &checks["stop_sequence"];
    if !text_of(&plain["blocks"]).contains("Paris") {
        panic!("the greedy answer names Paris, which the stop-sequence check relies on: {plain}");
    }
    assert_eq!(stop["stop_reason"], "stop_sequence", "{stop}");
    assert_eq!(stop["stop_sequence"], "Paris", "{stop}");
    assert_eq!(checks["max_tokens"]["stop_reason"], "max_tokens", "{}", checks["max_tokens"]);
    assert_eq!(checks["max_tokens"]["usage"]["output_tokens"], 3);

    for check in ["tool_use", "tool_use_stream", "tool_any"] {
        let c = &checks[check];
        assert_eq!(c["stop_reason"], "tool_use", "{c}");
        let calls: Vec<&Value> =
            c["blocks"].as_array().expect("blocks").iter().filter(|b| b["type"] == "tool_use").collect();
        assert_eq!(calls.len(), 1, "one call: {c}");
        assert_eq!(calls[0]["name"], "get_weather", "{c}");
        assert!(calls[0]["input"]["city"].is_string(), "{c}");
        assert!(calls[0]["id"].as_str().is_some_and(|id| id.starts_with("toolu_")), "{c}");
    }
    let kinds: Vec<&str> =
        checks["tool_use_stream"]["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    assert!(kinds.contains(&"content_block_delta:input_json_delta"), "{kinds:?}");
    let call_of = |check: &str| {
        let blocks = checks[check]["blocks"].as_array().cloned().unwrap_or_default();
        blocks.into_iter().find(|b| b["type"] == "tool_use").map(|b| (b["name"].clone(), b["input"].clone()))
    };
    assert_eq!(call_of("tool_use"), call_of("tool_use_stream"), "the streamed call equals the plain one");
    assert!(checks["tool_result"]["stop_reason"].is_string(), "{}", checks["tool_result"]);
    let cut = &checks["tool_use_cut"];
    assert_eq!(cut["stop_reason"], "max_tokens", "{cut}");
    assert_eq!(cut["blocks"][0]["type"], "tool_use", "a cut call stays a tool_use block: {cut}");
    assert!(text_of(&cut["blocks"]).is_empty(), "no markup as text: {cut}");

    let city = &checks["structured"]["parsed"];
    assert!(city["name"].is_string() && city["country"].is_string(), "{}", checks["structured"]);

    let count = checks["count_tokens"]["input_tokens"].as_u64().expect("count");
    assert_eq!(Some(count), plain["usage"]["input_tokens"].as_u64(), "count_tokens counts what generation sees");
    assert_eq!(checks["count_tokens_beta"]["input_tokens"], checks["count_tokens"]["input_tokens"]);

    for bad in ["bad_image", "bad_empty", "bad_role", "bad_choice"] {
        anthropic_error(&checks[bad], 400);
    }
    assert!(checks["bad_image"]["body"]["error"]["message"].as_str().is_some_and(|m| m.contains("image")));
    anthropic_error(&checks["unknown_model"], 404);
    anthropic_error(&checks["wrong_key"], 401);
}

#[test]
fn the_openai_sdk_speaks_responses_with_the_server() {
    let (_server, port, banner) = start_server(&plugins_dir(), &[]);
    assert!(banner.contains("listening on"), "{banner}");
    let checks = run_script("openai_responses.py", &format!("http://127.0.0.1:{port}/v1"), "not-needed");

    let plain = &checks["plain"];
    assert!(plain["id"].as_str().is_some_and(|id| id.starts_with("resp_")), "{plain}");
    assert!(plain["text"].as_str().is_some_and(|t| !t.is_empty()), "{plain}");
    let stream = &checks["stream"];
    assert_eq!(stream["text"], plain["text"], "greedy stream equals the plain answer");
    let events = stream["events"].as_array().expect("events");
    let kinds: Vec<&str> = events.iter().filter_map(|e| e[0].as_str()).collect();
    assert_eq!(kinds.first(), Some(&"response.created"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"response.in_progress"), "{kinds:?}");
    for kind in [
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
    ] {
        assert!(kinds.contains(&kind), "{kind} in {kinds:?}");
    }
    let numbers: Vec<u64> = events.iter().filter_map(|e| e[1].as_u64()).collect();
    assert_eq!(numbers, (0..numbers.len() as u64).collect::<Vec<_>>(), "sequence numbers 0, 1, 2…");
    assert!(checks["items"]["text"].as_str().is_some_and(|t| !t.is_empty()), "{}", checks["items"]);

    let call = &checks["function_call"];
    assert_eq!(call["output"], serde_json::json!(["function_call"]), "{call}");
    let item = &call["calls"][0];
    assert_eq!(item["name"], "get_weather", "{call}");
    assert!(item["id"].as_str().is_some_and(|id| id.starts_with("fc_")), "{call}");
    assert!(item["call_id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
    let arguments: Value = serde_json::from_str(item["arguments"].as_str().unwrap_or_default()).expect("JSON");
    assert!(arguments["city"].is_string(), "{call}");
    let answered = |check: &str| ["completed", "incomplete"].contains(&checks[check]["status"].as_str().unwrap_or(""));
    assert!(answered("function_call_output"), "{}", checks["function_call_output"]);
    let chained = &checks["previous_response_id"];
    assert_eq!(chained["previous"], call["id"], "{chained}");
    assert_eq!(checks["retrieve"]["id"], call["id"]);
    assert_eq!(
        chained["input_tokens"], chained["followup_input_tokens"],
        "previous_response_id gives the model the same conversation as sending it whole: {chained}"
    );
    assert_eq!(checks["retrieve"]["status"], "completed");
    let streamed = &checks["function_call_stream"];
    assert_eq!(streamed["calls"].as_array().map(Vec::len), Some(1), "{streamed}");
    let kinds: Vec<&str> = streamed["events"].as_array().expect("events").iter().filter_map(Value::as_str).collect();
    assert!(kinds.contains(&"response.function_call_arguments.delta"), "{kinds:?}");
    assert!(kinds.contains(&"response.function_call_arguments.done"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"response.completed"), "{kinds:?}");

    assert!(answered("other_tools"), "non-function tools are skipped, not refused: {}", checks["other_tools"]);
    let city = &checks["structured"]["parsed"];
    assert!(city["name"].is_string() && city["country"].is_string(), "{}", checks["structured"]);
    let json_object = &checks["json_object"];
    let text = json_object["text"].as_str().unwrap_or_default();
    assert!(text.trim_start().starts_with('{'), "{json_object}");
    if json_object["status"] == "completed" {
        let object: Value = serde_json::from_str(text).expect("a completed json_object answer is JSON");
        assert!(object.is_object());
    }
    assert_eq!(checks["incomplete"]["status"], "incomplete");
    assert_eq!(checks["incomplete"]["reason"], "max_output_tokens");
    assert_eq!(checks["store_false"]["status"], 400, "{}", checks["store_false"]);
    for bad in ["bad_image", "bad_input", "bad_choice", "bad_format"] {
        assert_eq!(checks[bad]["status"], 400, "{}", checks[bad]);
    }
}
