//! The prefix cache (issue 15): turn 2 of a growing chat prefills only what is new, on a
//! GGUF model, an MLX dense fixture and an MLX hybrid (recurrent) fixture; greedy answers
//! are the same with and without the cache; the byte bound holds past its limit; concurrent
//! requests sharing a prefix are all right; a cancelled sequence donates its cache.
//!
//! Prefilled tokens are counted by the scheduler (`rapid_host_prefill_tokens_total`), and
//! the bound each turn must meet is computed here from the template and the tokenizer: the
//! prompt's tokens after the longest prefix it shares with the previous turn's prompt.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::engine::Engine;
use rapid_host::engine::prefix_cache::PrefixCacheConfig;
use rapid_host::server::metrics::Metrics;
use rapid_host::server::run::{BatchLimits, Runner};
use rapid_host::server::{AppState, router};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use crate::server::{send, state};

const SYSTEM: &str = "You are a careful assistant for a small town library. The library opens at nine in the \
morning and closes at six in the evening on weekdays; on Saturdays it closes at one. Members may borrow up to \
eight books for three weeks, renew twice unless someone else has reserved the book, and return books through the \
slot by the front door at any hour. Children under twelve need a parent to sign their card. The reading room on \
the first floor is quiet; the meeting room on the ground floor can be booked by local groups for free. Printing \
costs ten cents a page. Answer briefly and politely, and say so when you do not know.";

/// For the MLX fixtures, whose tokenizers spell most text a byte at a time and whose
/// context is 512 tokens.
const SHORT_SYSTEM: &str = "You are a terse assistant for a small library. Answer in one line.";

const QUESTIONS: [&str; 3] =
    ["When does the library close on Saturday?", "How many books can I borrow?", "Can my child get a card?"];

/// The default model's server state with `engine`, a prefix cache as `prefix` says, and
/// metrics of its own.
fn app(engine: Arc<Engine>, prefix: Option<PrefixCacheConfig>) -> AppState {
    let mut state = state();
    let metrics = Arc::new(Metrics::default());
    state.runner = Arc::new(Runner::with_prefix_cache(
        Arc::clone(&engine),
        16,
        Arc::clone(&metrics),
        BatchLimits::default(),
        prefix,
    ));
    state.engine = engine;
    state.metrics = metrics;
    state.tool_parser = None;
    state
}

fn fixture(name: &str) -> Arc<Engine> {
    let dir = crate::support::repo_root().join("tests/fixtures/mlx").join(name);
    Arc::new(Engine::load(&dir, candle_core::Device::Cpu, false).expect("fixture loads"))
}

async fn post(state: &AppState, uri: &str, body: &Value) -> Value {
    let (status, _, text) = send(router(state.clone()), "POST", uri, &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("JSON body")
}

/// The prompt tokens the server makes of `messages` (its template and BOS rule).
fn prompt_tokens(engine: &Engine, messages: &[Value]) -> Vec<u32> {
    let prompt =
        engine.template.render(&Value::Array(messages.to_vec()), None, true, &Map::new()).expect("template renders");
    let bos_text = engine.tokenizer.bos.and_then(|b| engine.tokenizer.token(b)).unwrap_or_default();
    let add_bos = engine.tokenizer.add_bos && (bos_text.is_empty() || !prompt.starts_with(bos_text));
    engine.tokenizer.encode(&prompt, add_bos).expect("tokenizes")
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// One turn of a conversation as the test sees it.
#[derive(Debug)]
struct Turn {
    answer: String,
    prompt_tokens: usize,
    cached_tokens: usize,
    prefilled: u64,
    /// Prompt tokens after the longest prefix shared with the previous turn's prompt.
    new_tokens: usize,
}

/// Three greedy turns of a chat that grows by the answer and a new question each turn.
async fn growing_chat(state: &AppState, system: &str, max_tokens: usize) -> Vec<Turn> {
    let mut messages = vec![json!({"role": "system", "content": system})];
    let mut previous: Vec<u32> = Vec::new();
    let mut turns = Vec::new();
    for question in QUESTIONS {
        messages.push(json!({"role": "user", "content": question}));
        let tokens = prompt_tokens(&state.engine, &messages);
        let before = state.metrics.prefill_tokens.load(Ordering::Relaxed);
        let body = json!({"messages": messages, "max_tokens": max_tokens, "temperature": 0});
        let response = post(state, "/v1/chat/completions", &body).await;
        let prefilled = state.metrics.prefill_tokens.load(Ordering::Relaxed) - before;
        let answer = response["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_string();
        let usage = &response["usage"];
        let prompt = usage["prompt_tokens"].as_u64().expect("prompt_tokens") as usize;
        assert_eq!(prompt, tokens.len(), "the test tokenizes the prompt as the server does");
        let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached_tokens") as usize;
        turns.push(Turn {
            answer: answer.clone(),
            prompt_tokens: prompt,
            cached_tokens: cached,
            prefilled,
            new_tokens: tokens.len() - common_prefix(&previous, &tokens),
        });
        previous = tokens;
        messages.push(json!({"role": "assistant", "content": answer}));
    }
    turns
}

/// The growing chat with and without a prefix cache: the same answers; with the cache,
/// every later turn prefills at most its new tokens (plus the template's tail) and reports
/// the rest as cached; without, every turn prefills its whole prompt.
async fn chat_reuses_prefix(engine: Arc<Engine>, system: &str, max_tokens: usize) {
    let cold = app(Arc::clone(&engine), None);
    let warm = app(engine, Some(PrefixCacheConfig::default()));
    let without = growing_chat(&cold, system, max_tokens).await;
    let with = growing_chat(&warm, system, max_tokens).await;
    for (i, (a, b)) in without.iter().zip(&with).enumerate() {
        assert_eq!(a.answer, b.answer, "turn {i}: greedy answers differ with the cache");
        assert_eq!(a.prefilled, a.prompt_tokens as u64, "turn {i} without a cache prefills everything");
        assert_eq!(a.cached_tokens, 0);
        assert_eq!(b.prefilled + b.cached_tokens as u64, b.prompt_tokens as u64, "turn {i}: {b:?}");
    }
    assert_eq!(with[0].cached_tokens, 0, "nothing to reuse on the first turn");
    for (i, turn) in with.iter().enumerate().skip(1) {
        assert!(turn.cached_tokens > 0, "turn {i} reused nothing: {turn:?}");
        assert!(
            turn.prefilled as usize <= turn.new_tokens,
            "turn {i} prefilled {} tokens, more than its {} new ones: {turn:?}",
            turn.prefilled,
            turn.new_tokens
        );
    }
    let m = &warm.metrics;
    assert_eq!(m.prefix_cache_hits.load(Ordering::Relaxed), 2);
    assert_eq!(m.prefix_cache_misses.load(Ordering::Relaxed), 1);
    let saved: usize = with.iter().map(|t| t.cached_tokens).sum();
    assert_eq!(m.prefix_cache_tokens_saved.load(Ordering::Relaxed), saved as u64);
    let size = warm.runner.prefix_cache_size();
    assert_eq!(size.entries, 1, "the conversation is one entry");
    assert!(size.bytes > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_chat_turns_prefill_only_new_tokens() {
    let engine = Arc::clone(&state().engine);
    chat_reuses_prefix(engine, SYSTEM, 24).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_dense_chat_turns_prefill_only_new_tokens() {
    chat_reuses_prefix(fixture("qwen3"), SHORT_SYSTEM, 6).await;
}

/// Qwen3-Next: gated delta-net layers (a recurrent state) between attention layers; hits
/// land on the snapshots taken at the end of each prompt and answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlx_recurrent_chat_turns_prefill_only_new_tokens() {
    let engine = fixture("qwen3_next");
    chat_reuses_prefix(Arc::clone(&engine), SHORT_SYSTEM, 6).await;
    // The cache held recurrent snapshots (the end of each prompt).
    let warm = app(engine, Some(PrefixCacheConfig::default()));
    growing_chat(&warm, SHORT_SYSTEM, 6).await;
    assert!(warm.runner.prefix_cache_size().snapshots >= 1);
}

/// Requests that share a long system prompt, at once, after one warmed the cache: each
/// answers what it answers alone without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_sharing_a_prefix_are_all_correct() {
    let engine = Arc::clone(&state().engine);
    let cold = app(Arc::clone(&engine), None);
    let warm = app(engine, Some(PrefixCacheConfig::default()));
    let questions = [
        "When does the library open?",
        "Is printing free?",
        "Can groups book a room?",
        "Where do I return books at night?",
        "How long can I keep a book?",
        "Is the reading room quiet?",
    ];
    let body = |q: &str| {
        json!({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}],
               "max_tokens": 16, "temperature": 0})
    };
    let mut alone = Vec::new();
    for q in questions {
        alone.push(post(&cold, "/v1/chat/completions", &body(q)).await["choices"][0]["message"]["content"].clone());
    }
    post(&warm, "/v1/chat/completions", &body("Hello!")).await;
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let (warm, body) = (warm.clone(), body(q));
            tokio::spawn(async move { post(&warm, "/v1/chat/completions", &body).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let response = task.await.expect("request task");
        assert_eq!(response["choices"][0]["message"]["content"], alone[i], "question {i}");
        let cached = response["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().expect("cached");
        assert!(cached > 100, "question {i} did not reuse the system prompt: {}", response["usage"]);
    }
    assert!(warm.metrics.batch_size.max_observed() >= 2.0, "the requests never ran together");
}

/// A client that leaves mid-generation: its sequence donates what it cached, and a later
/// request with the same prompt reuses it and answers as without a cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_sequence_donates_its_cache() {
    let engine = Arc::clone(&state().engine);
    let cold = app(Arc::clone(&engine), None);
    let warm = app(engine, Some(PrefixCacheConfig::default()));
    let prompt = format!("{SYSTEM}\n\nQuestion: what are the opening hours?\nAnswer:");
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"prompt": prompt, "max_tokens": 200, "temperature": 0, "ignore_eos": true, "stream": true})
                .to_string(),
        ))
        .expect("request");
    let response = router(warm.clone()).oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    // Two events (the first tokens), then leave.
    for _ in 0..2 {
        body.frame().await.expect("a frame").expect("frame");
    }
    drop(body);
    let runner = &warm.runner;
    for _ in 0..1000 {
        if runner.in_flight() == 0 && runner.prefix_cache_size().entries == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(runner.prefix_cache_size().entries, 1, "the cancelled sequence donated");
    assert_eq!(warm.metrics.cancelled.load(Ordering::Relaxed), 1);
    let body = json!({"prompt": prompt, "max_tokens": 20, "temperature": 0});
    let again = post(&warm, "/v1/completions", &body).await;
    let alone = post(&cold, "/v1/completions", &body).await;
    assert_eq!(again["choices"][0]["text"], alone["choices"][0]["text"]);
    let prompt_len = again["usage"]["prompt_tokens"].as_u64().expect("prompt tokens");
    assert_eq!(
        again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(),
        Some(prompt_len - 2),
        "all but the last two prompt tokens come from the cancelled sequence: {}",
        again["usage"]
    );
}

// ---------------------------------------------------------------------------------------
// The real `serve`.

/// `rapid-host serve` with the default model on a free port; killed when dropped.
struct Served {
    child: Child,
    port: u16,
    banner: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(extra: &[&str]) -> Served {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--no-plugin-cache", "--port", &port.to_string(), "--threads", "2"])
        .arg("--models-dir")
        .arg(crate::support::repo_root().join("models"))
        .arg("--plugins")
        .arg(crate::support::plugins_dir())
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let mut banner = String::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    assert!(banner.contains("listening on"), "server did not start:\n{banner}");
    std::thread::spawn(move || for _ in lines {});
    Served { child, port, banner }
}

impl Served {
    fn request(&self, method: &str, path: &str, body: &str) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(300))).expect("timeout");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("response");
        let (head, body) = text.split_once("\r\n\r\n").expect("a response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
        body.to_string()
    }

    fn chat(&self, body: &Value) -> Value {
        serde_json::from_str(&self.request("POST", "/v1/chat/completions", &body.to_string())).expect("JSON")
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.request("GET", "/metrics", "");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    }
}

/// `serve --prefix-cache-mb`: conversations past the budget evict the least recently used
/// ones, the bytes held never exceed it (counted after every request), and the cache
/// answers what the cache-less server does. The budget and the usage fields are reported.
#[test]
fn serve_bounds_the_prefix_cache_in_bytes() {
    let budget_mb = 8;
    let served = serve(&["--prefix-cache-mb", &budget_mb.to_string()]);
    assert!(served.banner.contains(&format!("prefix cache {budget_mb} MiB")), "{}", served.banner);
    let off = serve(&["--no-prefix-cache"]);
    assert!(off.banner.contains("prefix cache off"), "{}", off.banner);
    assert_eq!(served.metric("rapid_host_prefix_cache_capacity_bytes"), (budget_mb << 20) as f64);
    // Distinct ~150-token prompts: SmolLM2 keeps ~23 KB of keys and values per token, so a
    // couple fit in 8 MiB and six do not.
    let prompt =
        |i: usize| format!("Conversation {i}. {} Question {i}: which day closes early?", SYSTEM.replace("the", "a"));
    let body =
        |i: usize| json!({"messages": [{"role": "user", "content": prompt(i)}], "max_tokens": 4, "temperature": 0});
    let mut first_answers = Vec::new();
    for i in 0..6 {
        let response = served.chat(&body(i));
        first_answers.push(response["choices"][0]["message"]["content"].clone());
        let bytes = served.metric("rapid_host_prefix_cache_bytes");
        assert!(bytes > 0.0 && bytes <= (budget_mb << 20) as f64, "{bytes} bytes held after request {i}");
        let usage = served.metric("rapid_host_kv_cache_usage_ratio");
        assert!((0.0..=1.0).contains(&usage), "{usage}");
    }
    let entries = served.metric("rapid_host_prefix_cache_entries");
    assert!((1.0..6.0).contains(&entries), "{entries} entries: nothing was evicted");
    // The most recent conversation is still there, the first is not.
    let last = served.chat(&body(5));
    assert!(last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() > Some(100), "{}", last["usage"]);
    // The first shares only the template's default system prompt with the others.
    let first = served.chat(&body(0));
    assert!(first["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() < Some(50), "{}", first["usage"]);
    assert_eq!(last["choices"][0]["message"]["content"], first_answers[5]);
    assert!(served.metric("rapid_host_prefix_cache_hits_total") >= 1.0);
    let cold = off.chat(&body(5));
    assert_eq!(cold["choices"][0]["message"]["content"], first_answers[5]);
    assert_eq!(cold["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64(), Some(0));
    // Anthropic and Responses report the cache read in their own fields.
    let messages = served.request(
        "POST",
        "/v1/messages",
        &json!({"messages": [{"role": "user", "content": prompt(5)}], "max_tokens": 4, "temperature": 0}).to_string(),
    );
    let messages: Value = serde_json::from_str(&messages).expect("JSON");
    let read = messages["usage"]["cache_read_input_tokens"].as_u64().expect("cache_read_input_tokens");
    let input = messages["usage"]["input_tokens"].as_u64().expect("input_tokens");
    assert!(read > 100 && input >= 1, "{}", messages["usage"]);
    assert_eq!(read + input, last["usage"]["prompt_tokens"].as_u64().expect("prompt tokens"));
    let responses = served.request(
        "POST",
        "/v1/responses",
        &json!({"input": prompt(5), "max_output_tokens": 4, "temperature": 0}).to_string(),
    );
    let responses: Value = serde_json::from_str(&responses).expect("JSON");
    assert!(responses["usage"]["input_tokens_details"]["cached_tokens"].as_u64() > Some(100), "{responses}");
}
