//! Structured output through llguidance on the real model: `response_format` json_object /
//! json_schema, and `tool_choice` required / named constraining the tool parser's wire
//! format (or the host's JSON fallback); the bad inputs get OpenAI errors.

use axum::http::StatusCode;
use rapid_host::server::{AppState, router};
use serde_json::{Value, json};

use crate::server::{assert_openai_error, send, state};

async fn chat(state: AppState, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = send(router(state), "POST", "/v1/chat/completions", &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}")))
}

fn weather_tools() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                "required": ["city", "days"],
                "additionalProperties": false
            }
        }
    }, {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}}
    }])
}

/// One tool call to `name` whose arguments match `weather_tools()`.
fn assert_valid_call(body: &Value, name: &str) {
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let calls = choice["message"]["tool_calls"].as_array().expect("tool_calls");
    assert!(!calls.is_empty(), "{body}");
    let call = &calls[0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], name, "{body}");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("arguments string"))
        .expect("arguments are JSON");
    match name {
        "get_weather" => {
            assert!(args["city"].is_string(), "{args}");
            let days = args["days"].as_i64().expect("integer days");
            assert!((1..=7).contains(&days), "{args}");
            assert_eq!(args.as_object().map(|o| o.len()), Some(2), "{args}");
        }
        _ => assert!(args["zone"].is_string(), "{args}"),
    }
}

#[tokio::test]
async fn json_schema_output_follows_the_schema() {
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3}
        },
        "required": ["name", "age", "tags"],
        "additionalProperties": false
    });
    let (status, body) = chat(
        state(),
        json!({
            "messages": [{"role": "user", "content": "Invent a person."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "person", "strict": true, "schema": schema}},
            "max_tokens": 80, "temperature": 0.9, "seed": 7
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let content = body["choices"][0]["message"]["content"].as_str().expect("content");
    let value: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("not JSON ({e}): {content}"));
    assert!(value["name"].as_str().is_some_and(|n| n.chars().count() <= 20), "{value}");
    assert!(value["age"].as_i64().is_some_and(|a| (0..=120).contains(&a)), "{value}");
    let tags = value["tags"].as_array().expect("tags");
    assert!(tags.len() <= 3 && tags.iter().all(|t| ["a", "b", "c"].contains(&t.as_str().unwrap_or(""))), "{value}");
    assert_eq!(value.as_object().map(|o| o.len()), Some(3), "{value}");
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "{body}");
}

#[tokio::test]
async fn tool_choice_required_gives_a_valid_call_in_the_parsers_format() {
    // hermes exports a grammar for `<tool_call>{json}</tool_call>`; its parser reads the result.
    let (status, body) = chat(
        state(),
        json!({
            "messages": [{"role": "user", "content": "Weather in Oslo for the next 3 days?"}],
            "tools": weather_tools(), "tool_choice": "required", "max_tokens": 80, "temperature": 0
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let name = body["choices"][0]["message"]["tool_calls"][0]["function"]["name"].as_str().unwrap_or("").to_string();
    assert!(name == "get_weather" || name == "get_time", "{body}");
    assert_valid_call(&body, &name);
}

#[tokio::test]
async fn a_named_tool_choice_calls_that_tool() {
    let (status, body) = chat(
        state(),
        json!({
            "messages": [{"role": "user", "content": "Hello!"}],
            "tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 80, "temperature": 0
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_valid_call(&body, "get_weather");
}

#[tokio::test]
async fn parsers_without_a_grammar_fall_back_to_host_json_calls() {
    // kimi offers no grammar; with no parser at all the host reads calls itself too.
    for parser in [Some("kimi"), None] {
        let mut state = state();
        state.tool_parser = parser.map(str::to_string);
        let (status, body) = chat(
            state,
            json!({
                "messages": [{"role": "user", "content": "What time is it in Lima?"}],
                "tools": weather_tools(),
                "tool_choice": {"type": "function", "function": {"name": "get_time"}},
                "max_tokens": 60, "temperature": 0
            }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{parser:?}: {body}");
        assert_valid_call(&body, "get_time");
        assert!(body["choices"][0]["message"]["content"].is_null(), "{body}");
    }
}

#[test]
fn the_exported_parser_grammars_compile_for_the_model() {
    use rapid_host::engine::constraint::GrammarCompiler;
    let state = state();
    let plugins = state.plugins.current();
    let tools = weather_tools().to_string();
    let compiler = state.engine.grammar().expect("grammar compiler");
    for parser in ["hermes", "llama", "qwen3_coder_xml"] {
        let lark = rapid_host::parsers::tool_call_grammar(&plugins, parser, &tools)
            .expect("plugin call")
            .unwrap_or_else(|| panic!("{parser} exports a grammar"));
        if let Err(e) = compiler.compile(GrammarCompiler::lark(&lark)) {
            panic!("{parser}: {e}\n{lark}");
        }
    }
}

#[tokio::test]
async fn qwen_xml_forced_calls_use_the_parsers_own_format() {
    let mut state = state();
    state.tool_parser = Some(String::from("qwen3_coder_xml"));
    let (status, body) = chat(
        state,
        json!({
            "messages": [{"role": "user", "content": "Weather in Oslo for 2 days?"}],
            "tools": weather_tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 80, "temperature": 0
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_valid_call(&body, "get_weather");
}

#[tokio::test]
async fn streamed_forced_calls_arrive_as_tool_call_deltas() {
    let mut state = state();
    state.tool_parser = None;
    let (status, _, text) = send(
        router(state),
        "POST",
        "/v1/chat/completions",
        &json!({
            "messages": [{"role": "user", "content": "Weather in Rome tomorrow?"}],
            "tools": weather_tools(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 60, "temperature": 0, "stream": true
        })
        .to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect();
    let mut arguments = String::new();
    let mut names = Vec::new();
    for c in &chunks {
        for call in c["choices"][0]["delta"]["tool_calls"].as_array().into_iter().flatten() {
            if let Some(name) = call["function"]["name"].as_str() {
                names.push(name.to_string());
                assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")), "{call}");
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(names, ["get_weather"], "{text}");
    let args: Value = serde_json::from_str(&arguments).expect("streamed arguments are JSON");
    assert!(args["city"].is_string() && args["days"].is_i64(), "{args}");
    assert_eq!(chunks.last().map(|c| c["choices"][0]["finish_reason"].clone()), Some(json!("tool_calls")), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"));
}

#[tokio::test]
async fn bad_structured_output_requests_are_400s() {
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (json!({"messages": hi, "response_format": {"type": "yaml"}}), "invalid_response_format"),
        (json!({"messages": hi, "response_format": {}}), "invalid_response_format"),
        (json!({"messages": hi, "response_format": {"type": "json_schema"}}), "invalid_response_format"),
        (
            json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}}),
            "invalid_response_format",
        ),
        (
            // Unsatisfiable: compiles to nothing.
            json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}}),
            "invalid_response_format",
        ),
        (
            json!({"messages": hi, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/definitions/missing"}}}}),
            "invalid_response_format",
        ),
        (json!({"messages": hi, "tool_choice": "required"}), "invalid_request"),
        (json!({"messages": hi, "tool_choice": "required", "tools": []}), "invalid_request"),
    ];
    for (body, code) in cases {
        let (status, json) = chat(state(), body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {json}");
        assert_openai_error(&json, code);
    }
}

#[tokio::test]
async fn metrics_count_constrained_generations_and_latency() {
    let app = router(state());
    let body = json!({
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}, "max_tokens": 8
    });
    let (status, _, _) = send(app.clone(), "POST", "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, text) = send(app, "GET", "/metrics", "").await;
    assert!(text.contains("rapid_host_constrained_generations_total 1"), "{text}");
    assert!(text.contains("rapid_host_time_to_first_token_seconds_count 1"), "{text}");
    assert!(text.contains("rapid_host_decode_seconds_count 1"), "{text}");
    assert!(text.contains("# TYPE rapid_host_time_per_output_token_seconds histogram"), "{text}");
}
