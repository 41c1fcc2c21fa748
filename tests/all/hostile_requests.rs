//! What a client (or a parser plugin's grammar) sends cannot crash or stall the server
//! (issue #20's request-side cases), against a real `serve` process: a crash would end the
//! process, a stall would starve `/health`. Work is bounded by counting, never by a clock:
//! a thread polls `/health` while each hostile request runs, and every poll must answer.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{Server, start_server};
use crate::support::{plugin_file, plugins_dir};

/// One raw HTTP/1.1 exchange: status and body (empty when the server closed first).
fn exchange(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    // A bound on a test that would otherwise hang, not a speed expectation.
    stream.set_read_timeout(Some(Duration::from_secs(900))).expect("timeout");
    stream.write_all(head.as_bytes()).expect("head sent");
    stream.write_all(body).expect("body sent");
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        return (0, format!("read failed after {} bytes: {e}", response.len()));
    }
    parse_response(&response)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

fn post(port: u16, path: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let (status, text) = exchange(port, &head, body.as_bytes());
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Polls `/health` until stopped; counts answers and failures.
struct HealthWatch {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HealthWatch {
    fn start(port: u16) -> Self {
        let (stop, answered, failed) = (Arc::default(), Arc::default(), Arc::default());
        let thread = {
            let (stop, answered, failed): (Arc<AtomicBool>, Arc<AtomicUsize>, Arc<AtomicUsize>) =
                (Arc::clone(&stop), Arc::clone(&answered), Arc::clone(&failed));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = TcpStream::connect(("127.0.0.1", port))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(2)))?;
                            s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
                            let mut out = String::new();
                            s.read_to_string(&mut out)?;
                            Ok(out.starts_with("HTTP/1.1 200"))
                        })
                        .unwrap_or(false);
                    let counter = if ok { &answered } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Self { stop, answered, failed, thread: Some(thread) }
    }

    /// Stops polling; panics unless every poll answered and there was at least one.
    fn finish(mut self, case: &str) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let (answered, failed) = (self.answered.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed));
        assert!(answered > 0 && failed == 0, "{case}: /health answered {answered} times, failed {failed} times");
    }
}

fn alive(server: &mut Server, case: &str) {
    assert!(server.0.try_wait().expect("process state").is_none(), "{case}: the server died");
}

/// Resident memory of the server process, in bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.0.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

fn bystander_request() -> Value {
    json!({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0})
}

/// Runs one hostile request with `/health` polled and a bystander chat sent meanwhile;
/// checks the server lived, the bystander got its answer, and memory came back to within
/// 50 MB of what it was before. Returns the hostile request's status and body.
fn hostile_case(server: &mut Server, port: u16, case: &str, body: &Value) -> (u16, Value) {
    let before = rss(server);
    let watch = HealthWatch::start(port);
    let bystander = std::thread::spawn(move || post(port, "/v1/chat/completions", &bystander_request()));
    let answer = post(port, "/v1/chat/completions", body);
    let (status, by) = bystander.join().expect("bystander thread");
    watch.finish(case);
    alive(server, case);
    assert_eq!(status, 200, "{case}: the bystander request failed: {by}");
    let after = rss(server);
    assert!(after <= before + (50 << 20), "{case}: RSS {before} -> {after} bytes; answer {answer:?}");
    answer
}

/// A first request, so the memory measured before each case is the warm server's.
fn warm_up(port: u16) {
    let (status, answer) = post(port, "/v1/chat/completions", &bystander_request());
    assert_eq!(status, 200, "{answer}");
}

fn chat_with_schema(schema: Value) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Give me JSON."}],
        "max_tokens": 8,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    })
}

/// `{"$ref": "#/$defs/d0"}` where each `d{i}` holds a property referring to `d{i+1}`.
fn ref_chain(depth: usize) -> Value {
    let mut defs = serde_json::Map::new();
    for i in 0..depth {
        defs.insert(
            format!("d{i}"),
            json!({"type": "object", "properties": {"n": {"$ref": format!("#/$defs/d{}", i + 1)}}}),
        );
    }
    defs.insert(format!("d{depth}"), json!({"type": "integer"}));
    json!({"$ref": "#/$defs/d0", "$defs": defs})
}

#[test]
fn hostile_schemas_are_answered_and_the_server_stays_up() {
    let (mut server, port, _) = start_server(&plugins_dir(), &[]);
    let cases: Vec<(&str, Value)> = vec![
        // Case 1: a chain of 400 nested `$ref`s aborted the process with a stack overflow.
        ("400 nested $refs", chat_with_schema(ref_chain(400))),
        ("5000 nested $refs", chat_with_schema(ref_chain(5000))),
        // Case 4: these were 500s carrying the grammar engine's internals.
        ("exploding pattern", chat_with_schema(json!({"type": "string", "pattern": "^(x{1000}){1000}$"}))),
        (
            "recursive $ref",
            chat_with_schema(json!({
                "$ref": "#/$defs/node",
                "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}, "required": ["child"]}}
            })),
        ),
    ];
    warm_up(port);
    for (case, body) in cases {
        let (status, answer) = hostile_case(&mut server, port, case, &body);
        match status {
            200 => assert!(answer["choices"][0]["message"].is_object(), "{case}: {answer}"),
            400 => {
                assert_eq!(answer["error"]["param"], "response_format", "{case}: {answer}");
                assert_eq!(answer["error"]["code"], "invalid_response_format", "{case}: {answer}");
                // Refused before generating ("cannot be used"), or when it outgrew the
                // grammar engine's limits mid-answer ("cannot be followed").
                let message = answer["error"]["message"].as_str().unwrap_or_default();
                assert!(message.contains("`response_format` schema cannot be"), "{case}: {answer}");
            }
            other => panic!("{case}: status {other}: {answer}"),
        }
    }
    // Over the bound, the answer says which bound.
    let (status, answer) = post(port, "/v1/chat/completions", &chat_with_schema(ref_chain(5000)));
    assert_eq!(status, 400, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("`$ref`s")), "{answer}");
    // The pattern llguidance cannot build a lexer for is the client's fault.
    let (status, answer) = post(
        port,
        "/v1/chat/completions",
        &chat_with_schema(json!({"type": "string", "pattern": "^(x{1000}){1000}$"})),
    );
    assert_eq!(status, 400, "{answer}");
}

#[test]
fn tool_parameters_with_refs_are_forced_into_valid_calls() {
    let (mut server, port, _) = start_server(&plugins_dir(), &[]);
    let tools = json!([{"type": "function", "function": {"name": "add_item", "parameters": {
        "type": "object",
        "properties": {"item": {"$ref": "#/$defs/Item"}},
        "required": ["item"],
        "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string", "maxLength": 8}}, "required": ["sku"]}}
    }}}]);
    let body = json!({
        "messages": [{"role": "user", "content": "Add a pen to my cart."}],
        "tools": tools, "tool_choice": "required", "max_tokens": 64, "temperature": 0,
    });
    let (status, answer) = post(port, "/v1/chat/completions", &body);
    alive(&mut server, "tool $refs");
    assert_eq!(status, 200, "{answer}");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "add_item", "{answer}");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or_default()).expect("JSON arguments");
    assert!(arguments["item"]["sku"].is_string(), "{answer}");
}

#[test]
fn plugin_grammars_that_would_exhaust_the_compiler_fall_back_to_host_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");
    std::fs::copy(plugin_file("testing/parser-deep-grammar.wasm"), dir.path().join("parser-deep-grammar.wasm"))
        .expect("copy");
    let (mut server, port, banner) = start_server(dir.path(), &["--tool-call-parser", "deepgrammar"]);
    assert!(banner.contains("tool calls: deepgrammar"), "{banner}");
    warm_up(port);
    // Case 2: a 60k-rule chain aborted the process on the first forced call. Over the
    // bounds (rules, nesting, bytes) and just under them: each either compiles or falls
    // back to the host's JSON calls, and the server lives.
    for name in ["chain_60000", "chain_1999", "nest_100000", "nest_250", "huge_300000", "huge_5000", "huge_500"] {
        let body = json!({
            "messages": [{"role": "user", "content": "Call the tool."}],
            "tools": [{"type": "function", "function": {"name": name, "parameters": {
                "type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                "required": ["n"], "additionalProperties": false}}}],
            "tool_choice": "required", "max_tokens": 64, "temperature": 0,
        });
        let (status, answer) = hostile_case(&mut server, port, name, &body);
        assert_eq!(status, 200, "{name}: {answer}");
        let message = &answer["choices"][0]["message"];
        match message["tool_calls"][0]["function"]["name"].as_str() {
            // The host's JSON fallback gives the call.
            Some(called) => assert_eq!(called, name, "{answer}"),
            // The plugin's grammar compiled: the output follows it and matches no call; under
            // a forced call it is not passed on as content either.
            None => assert!(
                message["content"].is_null()
                    || message["content"].as_str().is_some_and(|c| c.starts_with(['x', 'w', '('])),
                "{name}: {answer}"
            ),
        }
    }
    // Each fallback counts as a parser failure.
    let (_, metrics) = exchange(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"");
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("rapid_host_parser_failures_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(failures >= 3, "the three grammars over the bounds are plugin failures: {metrics}");
}

#[test]
fn slow_oversized_and_misdirected_requests_get_clear_answers() {
    let (mut server, port, _) = start_server(&plugins_dir(), &["--read-timeout", "1"]);
    // Case 9: an announced body over the limit is refused before it arrives.
    let (status, body) = exchange(
        port,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n",
        b"",
    );
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"request_too_large\""), "{body}");
    // A body that never arrives in full: 408 in OpenAI's envelope, not a connection held open.
    let (status, body) = exchange(
        port,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        b"{\"messages\":",
    );
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("\"request_timeout\""), "{body}");
    // Headers that never end: the connection is closed.
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: loc").expect("partial head");
    let mut rest = Vec::new();
    let read = stream.read_to_end(&mut rest);
    assert!(read.is_ok(), "the server closed the connection: {read:?}");
    let (status, _) = parse_response(&rest);
    assert!(status == 0 || status == 408, "{}", String::from_utf8_lossy(&rest));
    // A GET on a POST route: 405 with the envelope.
    let (status, body) =
        exchange(port, "GET /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", b"");
    assert_eq!(status, 405, "{body}");
    let json: Value = serde_json::from_str(&body).expect("JSON error body");
    assert_eq!(json["error"]["code"], "method_not_allowed", "{json}");
    alive(&mut server, "slow requests");
}

/// OpenAI's own shape for a tool round trip: an assistant turn with `content: null` and
/// `tool_calls`, then the tool's answer.
fn tool_round_trip() -> Value {
    json!({
        "messages": [
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "max_tokens": 8, "temperature": 0,
    })
}

#[test]
fn assistant_turns_with_null_content_and_tool_calls_render_on_both_default_models() {
    for model in [None, Some("gemma3-270m-q4_k_m")] {
        let extra: Vec<&str> = model.into_iter().collect();
        let (_server, port, banner) = start_server(&plugins_dir(), &extra);
        let (status, answer) = post(port, "/v1/chat/completions", &tool_round_trip());
        assert_eq!(status, 200, "{model:?}: {answer}\n{banner}");
        assert!(answer["choices"][0]["message"].is_object(), "{answer}");
    }
}

#[test]
fn large_valid_bodies_do_not_stall_health_checks() {
    // Case 3: four concurrent ~8 MiB valid bodies were parsed, rendered and tokenized on
    // the runtime threads before admission and stalled /health for seconds.
    let (mut server, port, _) = start_server(&plugins_dir(), &["--max-request-bytes", "9000000"]);
    warm_up(port);
    let filler = "lorem ipsum dolor sit amet ".repeat(300_000);
    let body = json!({
        "messages": [{"role": "user", "content": filler}],
        "max_tokens": 1,
    });
    assert!(body.to_string().len() > 8_000_000);
    let watch = HealthWatch::start(port);
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || post(port, "/v1/chat/completions", &body))
        })
        .collect();
    for sender in senders {
        let (status, answer) = sender.join().expect("sender thread");
        // The prompt is longer than the model's context: a 400 that says so, after the
        // work of reading and tokenizing it.
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["error"]["code"], "context_length_exceeded", "{answer}");
    }
    watch.finish("four 8 MiB bodies");
    alive(&mut server, "four 8 MiB bodies");
}
