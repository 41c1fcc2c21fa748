//! Continuous batching: sequences batched together get what they get alone (logits bit for
//! bit on both GGUF models, whole responses through the real server), join and leave
//! between steps, and a client that leaves frees its place while the others finish.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use rapid_host::engine::Engine;
use rapid_host::engine::models::SeqInput;
use rapid_host::server::metrics::Metrics;
use rapid_host::server::run::{BatchLimits, Runner};
use rapid_host::server::{AppState, router};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::server::{send, state};

fn load(file: &str) -> Engine {
    let path = crate::support::repo_root().join("models").join(file);
    Engine::load(&path, candle_core::Device::Cpu, false).expect("model loads (scripts/fetch_models.py)")
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in logits.iter().enumerate() {
        if *v > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Each prompt alone: its logits after the prompt and after each of `steps` greedy tokens.
fn alone(engine: &Engine, prompt: &[u32], steps: usize) -> Vec<Vec<f32>> {
    let mut cache = engine.model.new_cache();
    let mut logits = engine.model.forward(prompt, &mut cache).expect("prefill").to_vec1::<f32>().expect("logits");
    let mut all = vec![logits.clone()];
    for _ in 0..steps {
        logits = engine.model.forward(&[argmax(&logits)], &mut cache).expect("decode").to_vec1().expect("logits");
        all.push(logits.clone());
    }
    all
}

/// Eight prompts of different lengths through ragged batches: the first four prefill
/// together, decode together while the other four join one by one (each prompt's prefill
/// rows in the same forward as the others' decode rows), and all decode together. Every
/// sequence's logits at every step equal, bit for bit, its logits alone.
fn batched_equals_alone(file: &str) {
    let engine = load(file);
    let worst = batched_against_alone(&engine, file);
    assert_eq!(worst, 0.0, "{file}: batched logits differ from alone");
}

/// Runs [`batched_equals_alone`]'s schedule on `engine`; every sequence's greedy tokens are
/// those it picks alone (asserted). Returns the largest |batched - alone| logit difference.
fn batched_against_alone(engine: &Engine, name: &str) -> f32 {
    let texts = [
        "The capital of France is",
        "Write a haiku about the sea.",
        "1, 2, 3, 4,",
        "In the beginning",
        "Explain in detail how a bicycle's gears let a rider climb a steep hill without much more effort than on flat ground",
        "Hi",
        "def fibonacci(n):",
        "Roses are red, violets are",
    ];
    let prompts: Vec<Vec<u32>> = texts.iter().map(|t| engine.tokenizer.encode(t, true).expect("tokenize")).collect();
    let steps = 6;
    let want: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| alone(engine, p, steps + prompts.len())).collect();

    let mut caches: Vec<_> = prompts.iter().map(|_| engine.model.new_cache()).collect();
    let mut got: Vec<Vec<Vec<f32>>> = vec![Vec::new(); prompts.len()];
    let mut last: Vec<Option<u32>> = vec![None; prompts.len()];
    // Step s: sequences 0..4 from step 0, sequence 4 + k joins at step k + 1.
    for s in 0..steps + 5 {
        let joined = |i: usize| i < 4 || i - 4 < s;
        let members: Vec<usize> = (0..prompts.len()).filter(|&i| joined(i) && got[i].len() <= steps).collect();
        let inputs: Vec<Vec<u32>> =
            members.iter().map(|&i| last[i].map_or_else(|| prompts[i].clone(), |t| vec![t])).collect();
        let mut batch: Vec<SeqInput<'_>> = caches
            .iter_mut()
            .enumerate()
            .filter(|(i, _)| members.contains(i))
            .zip(&inputs)
            .map(|((_, cache), tokens)| SeqInput { tokens, cache })
            .collect();
        let logits = engine.model.forward_batch(&mut batch).expect("batched forward");
        assert_eq!(logits.len(), members.len());
        for (&i, l) in members.iter().zip(logits) {
            last[i] = Some(argmax(&l));
            got[i].push(l);
        }
    }
    assert!(engine.model.batches(), "{name} has a batched forward");
    let mut worst = 0f32;
    for (i, (got, want)) in got.iter().zip(&want).enumerate() {
        assert!(got.len() > steps, "sequence {i} ran {} steps", got.len());
        for (step, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(argmax(g), argmax(w), "{name}: sequence {i} step {step}: another greedy token in a batch");
            let diff = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            if !same_bits(g, w) {
                worst = worst.max(diff).max(f32::MIN_POSITIVE);
            }
        }
    }
    worst
}

/// The dense MLX decoder batches its projections and MLPs over every row; with 4-bit layers
/// packed (our Q4_1 kernel, each row on its own) its logits in a batch are bit for bit
/// those alone.
#[test]
fn mlx_dense_batched_logits_equal_alone_bit_for_bit() {
    let dir = crate::support::repo_root().join("tests/fixtures/mlx/qwen3");
    let engine = Engine::load(&dir, candle_core::Device::Cpu, false).expect("fixture loads");
    assert_eq!(batched_against_alone(&engine, "qwen3"), 0.0, "qwen3: batched logits differ from alone");
}

/// The MLX hybrid (gated delta-net recurrent layers with per-sequence state, full attention
/// every fourth layer, MoE) in a batch: the same greedy tokens as alone, and logits within
/// float rounding. Not bit for bit: its f32 layers (the delta-net's convolution and gates,
/// routers) go through Candle's matmul, whose sums depend on how many rows a call has.
/// Measured: at most 2.9e-6 over a logit range of ~21 (1e-5 in `every layer f32` loads).
#[test]
fn mlx_hybrid_batched_tokens_equal_alone() {
    let dir = crate::support::repo_root().join("tests/fixtures/mlx/qwen3_next");
    let engine = Engine::load(&dir, candle_core::Device::Cpu, false).expect("fixture loads");
    let worst = batched_against_alone(&engine, "qwen3_next");
    assert!(worst < 1e-4, "qwen3_next: batched logits differ from alone by {worst}");
}

#[test]
fn smollm2_batched_logits_equal_alone_bit_for_bit() {
    batched_equals_alone("SmolLM2-135M-Instruct.Q4_1.gguf");
}

/// Gemma's Q4_K / Q6_K products depend on the rows in a call (llama.cpp's order); each
/// sequence's rows go through them as a segment of their own, so this holds there too.
#[test]
fn gemma_batched_logits_equal_alone_bit_for_bit() {
    batched_equals_alone("gemma-3-270m-q4_k_m.gguf");
}

/// The default model's server with its own batch limits and metrics.
fn batching_state(batch: BatchLimits) -> AppState {
    let mut state = state();
    let metrics = Arc::new(Metrics::default());
    state.runner = Arc::new(Runner::with_batching(Arc::clone(&state.engine), 16, Arc::clone(&metrics), batch));
    state.metrics = metrics;
    state
}

async fn post(state: &AppState, uri: &str, body: &Value) -> Value {
    let (status, _, text) = send(router(state.clone()), "POST", uri, &body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    serde_json::from_str(&text).expect("JSON body")
}

/// What a response says, without ids and timestamps.
fn outcome(response: &Value) -> Value {
    let choice = &response["choices"][0];
    json!({
        "text": choice.get("text").cloned().unwrap_or_else(|| choice["message"]["content"].clone()),
        "finish": choice["finish_reason"],
        "logprobs": choice["logprobs"],
        "usage": response["usage"],
    })
}

/// Requests of every kind the batch must keep apart: greedy and seeded sampling, stop
/// strings, logprobs, a json_schema-constrained chat, different lengths.
fn mixed_requests() -> Vec<(&'static str, Value)> {
    vec![
        ("/v1/completions", json!({"prompt": "The capital of France is", "max_tokens": 24, "temperature": 0})),
        (
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 40, "temperature": 0.9, "seed": 7, "top_p": 0.95}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "List: apples, pears,", "max_tokens": 30, "temperature": 0, "stop": [",", "\n"]}),
        ),
        ("/v1/completions", json!({"prompt": "def add(a, b):", "max_tokens": 12, "temperature": 0, "logprobs": 3})),
        (
            "/v1/chat/completions",
            json!({
                "messages": [{"role": "user", "content": "Give me a person as JSON."}],
                "max_tokens": 60,
                "temperature": 0,
                "response_format": {"type": "json_schema", "json_schema": {"name": "person", "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
                    "required": ["name", "age"],
                    "additionalProperties": false
                }}}
            }),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Tell me a story about a dragon."}], "max_tokens": 48,
                   "temperature": 0.7, "seed": 42}),
        ),
        ("/v1/completions", json!({"prompt": "Water boils at", "max_tokens": 5, "temperature": 0})),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "Count from one to ten in words."}], "max_tokens": 36,
                   "temperature": 0, "stop": ["seven"]}),
        ),
    ]
}

/// Eight mixed requests at once (joining as they arrive, leaving at their own lengths)
/// answer exactly what each answers alone, and the scheduler did batch them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_answer_as_they_do_alone() {
    let state = batching_state(BatchLimits::default());
    let requests = mixed_requests();
    let mut solo = Vec::new();
    for (uri, body) in &requests {
        solo.push(outcome(&post(&state, uri, body).await));
    }
    let steps_alone = state.metrics.batch_size.count();
    let tasks: Vec<_> = requests
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, (uri, body))| {
            let state = state.clone();
            tokio::spawn(async move {
                // Staggered arrivals: later requests join a batch already decoding.
                tokio::time::sleep(Duration::from_millis(40 * i as u64)).await;
                outcome(&post(&state, uri, &body).await)
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let got = task.await.expect("request task");
        assert_eq!(got, solo[i], "request {i} ({}) differs in a batch", requests[i].1);
    }
    let structured: Value =
        serde_json::from_str(solo[4]["text"].as_str().expect("content")).expect("the constrained answer is JSON");
    assert!(structured["name"].is_string() && structured["age"].is_i64(), "{structured}");
    assert!(solo[3]["logprobs"]["top_logprobs"][0].as_object().is_some_and(|t| t.len() == 3), "{}", solo[3]);
    assert!(state.metrics.batch_size.count() > steps_alone);
    assert!(state.metrics.batch_size.max_observed() >= 2.0, "no step ran two sequences together");
    settle(&state).await;
}

/// Waits for the scheduler to publish an empty batch after the last step (it does after
/// answering), then checks nothing is left running, waiting or admitted.
async fn settle(state: &AppState) {
    let runner = &state.runner;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while (runner.in_flight(), runner.running(), runner.waiting()) != (0, 0, 0) && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((runner.in_flight(), runner.running(), runner.waiting()), (0, 0, 0), "in flight, running, waiting");
    assert_eq!(runner.kv_cache_usage(), 0.0);
}

/// Starts a streamed completion; returns its body.
async fn stream(state: &AppState, body: Value) -> Body {
    let request = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = router(state.clone()).oneshot(request).await.expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// The text of a streamed completion, read to the end.
async fn streamed_text(mut body: Body) -> String {
    let mut text = String::new();
    let mut raw = String::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame.expect("frame").data_ref() {
            raw.push_str(&String::from_utf8_lossy(data));
        }
    }
    for line in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
        if line == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(line).expect("chunk JSON");
        text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
    }
    text
}

/// One client of three leaves mid-stream: its place is freed at the next step, the other
/// two finish with what they answer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_that_leaves_does_not_disturb_the_others() {
    let state = batching_state(BatchLimits::default());
    let a = json!({"prompt": "The history of Rome", "max_tokens": 40, "temperature": 0, "stream": true});
    let b = json!({"prompt": "A recipe for bread:", "max_tokens": 30, "temperature": 0, "stream": true});
    let leaver = json!({"prompt": "Tell a long story", "max_tokens": 2000, "temperature": 0, "stream": true});
    let (solo_a, solo_b) = (streamed_text(stream(&state, a.clone()).await).await, {
        streamed_text(stream(&state, b.clone()).await).await
    });
    let mut gone = stream(&state, leaver).await;
    let first = gone.frame().await.expect("a first chunk").expect("no error");
    assert!(first.data_ref().is_some());
    let (sa, sb) = (state.clone(), state.clone());
    let task_a = tokio::spawn(async move { streamed_text(stream(&sa, a).await).await });
    let task_b = tokio::spawn(async move { streamed_text(stream(&sb, b).await).await });
    // Let the three share a step or so, then leave.
    let _ = gone.frame().await;
    drop(gone);
    assert_eq!(task_a.await.expect("a"), solo_a);
    assert_eq!(task_b.await.expect("b"), solo_b);
    settle(&state).await;
    assert_eq!(state.metrics.cancelled.load(Ordering::Relaxed), 1);
}

/// With a budget of 32 prompt tokens per step, a ~300-token prompt is prefilled in chunks,
/// each step also running the decoding stream's next token; both answer as alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_prompt_is_prefilled_in_chunks_while_another_stream_decodes() {
    let state = batching_state(BatchLimits { max_running: 8, max_batch_tokens: 32 });
    let story = json!({"prompt": "Once upon a time, in a small village,", "max_tokens": 120, "temperature": 0,
                       "stream": true});
    let long_prompt = "The quick brown fox jumps over the lazy dog near the riverbank. ".repeat(24) + "Summarize:";
    let long = json!({"prompt": long_prompt, "max_tokens": 8, "temperature": 0});
    let prompt_tokens = state.engine.tokenizer.encode(&long_prompt, true).expect("tokenize").len();
    assert!(prompt_tokens > 8 * 32, "{prompt_tokens} tokens");
    let solo_story = streamed_text(stream(&state, story.clone()).await).await;
    let solo_long = outcome(&post(&state, "/v1/completions", &long).await);
    let before = state.metrics.batch_tokens.count_between(32.0, 64.0);

    let mut decoding = stream(&state, story).await;
    let mut seen = String::new();
    // Wait for the story's first tokens, so the long prompt arrives while it decodes.
    while seen.matches("data: ").count() < 3 {
        let frame = decoding.frame().await.expect("story chunk").expect("frame");
        seen.push_str(&String::from_utf8_lossy(frame.data_ref().expect("data")));
    }
    let long_answer = outcome(&post(&state, "/v1/completions", &long).await);
    let rest = streamed_text(decoding).await;
    assert_eq!(long_answer, solo_long, "the chunked prompt's answer differs beside a decoding stream");
    let mut story_text = String::new();
    for line in seen.lines().filter_map(|l| l.strip_prefix("data: ")) {
        let chunk: Value = serde_json::from_str(line).expect("chunk JSON");
        story_text.push_str(chunk["choices"][0]["text"].as_str().unwrap_or_default());
    }
    assert_eq!(story_text + &rest, solo_story);
    // Steps of one 32-token chunk plus the story's decode row (33 rows) ran.
    let mixed = state.metrics.batch_tokens.count_between(32.0, 64.0) - before;
    assert!(mixed >= 1, "no step ran a prompt chunk beside a decoding sequence");
}

/// A sequence's text and how it ended, from its events.
#[derive(Debug, Default, Clone, PartialEq)]
struct Answer {
    text: String,
    done: Option<(rapid_host::engine::FinishReason, rapid_host::engine::Usage)>,
}

fn collect(answer: &Arc<std::sync::Mutex<Answer>>) -> rapid_host::engine::generate::EventSink<'static> {
    let answer = Arc::clone(answer);
    Box::new(move |event| {
        let mut a = answer.lock().expect("answer");
        match event {
            rapid_host::engine::GenerationEvent::Text { text, .. } => a.text.push_str(&text),
            rapid_host::engine::GenerationEvent::Done { finish, usage, .. } => a.done = Some((finish, usage)),
        }
        std::ops::ControlFlow::Continue(())
    })
}

/// A hybrid (recurrent-state) MLX fixture and a dense one answer through the scheduler's
/// steps, joining at different steps, what they answer alone: both run the shared decoder's
/// batched forward (recurrent and attention layers per sequence, the rest over all rows).
#[test]
fn mlx_hybrid_and_dense_fixtures_answer_in_a_batch_as_alone() {
    use rapid_host::engine::generate::{Sequence, generate, step};
    use rapid_host::engine::{GenerationRequest, SamplingParams};
    for name in ["qwen3_next", "qwen3"] {
        let dir = crate::support::repo_root().join("tests/fixtures/mlx").join(name);
        let engine = Engine::load(&dir, candle_core::Device::Cpu, false).expect("fixture loads");
        assert!(engine.model.batches(), "{name}: MLX models batch");
        let prompts = ["Hello there", "The quick brown fox jumps over", "1 2 3"];
        let requests: Vec<GenerationRequest> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| GenerationRequest {
                prompt_tokens: engine.tokenizer.encode(p, true).expect("tokenize"),
                max_tokens: 5 + 3 * i,
                sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
                ignore_eos: true,
                ..GenerationRequest::default()
            })
            .collect();
        let alone: Vec<Answer> = requests
            .iter()
            .map(|r| {
                let answer = Arc::new(std::sync::Mutex::new(Answer::default()));
                generate(&engine, r, collect(&answer)).expect("alone");
                answer.lock().expect("answer").clone()
            })
            .collect();
        let answers: Vec<_> = requests.iter().map(|_| Arc::new(std::sync::Mutex::new(Answer::default()))).collect();
        let mut batch = Vec::new();
        for s in 0..64 {
            if let (Some(r), Some(answer)) = (requests.get(s), answers.get(s)) {
                batch.push(Sequence::new(&engine, r.clone(), collect(answer)).expect("sequence"));
            }
            step(&engine, &mut batch, 512).expect("step");
            batch.retain(|q| !q.is_finished());
            if batch.is_empty() && s >= requests.len() {
                break;
            }
        }
        for (i, (a, b)) in alone.iter().zip(&answers).enumerate() {
            let batched = b.lock().expect("answer").clone();
            assert!(a.done.is_some(), "{name}: request {i} finished alone");
            assert_eq!(&batched, a, "{name}: request {i} differs in a batch");
        }
    }
}
