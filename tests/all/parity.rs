//! The engine against llama.cpp on the same GGUF files: the same prompt tokens, and the
//! same greedy continuation token for token (references recorded by
//! scripts/llamacpp_reference.py into tests/fixtures/parity/).

use std::ops::ControlFlow;
use std::path::PathBuf;

use rapid_host::engine::generate::generate;
use rapid_host::engine::{Engine, GenerationEvent, GenerationRequest, SamplingParams};
use serde_json::Value;

use crate::support::repo_root;

fn model(file: &str) -> PathBuf {
    let path = repo_root().join("models").join(file);
    assert!(path.is_file(), "{} missing: run scripts/fetch_models.py (scripts/test does)", path.display());
    path
}

fn reference(name: &str) -> Value {
    let path = repo_root().join("tests/fixtures/parity").join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("reference file")).expect("json")
}

/// Greedy tokens for `prompt_tokens`, up to `n`.
fn greedy(engine: &Engine, prompt_tokens: Vec<u32>, n: usize) -> Vec<u32> {
    // The token loop reports text; the ids come from re-tokenizing nothing: instead, run the
    // model directly so ids are compared, not strings.
    let mut cache = engine.model.new_cache();
    let mut logits: Vec<f32> = engine.model.forward(&prompt_tokens, &mut cache).expect("prefill").to_vec1().expect("f32");
    let mut out = Vec::new();
    while out.len() < n {
        let next = rapid_host::engine::sampling::argmax(&logits);
        if engine.tokenizer.stop_ids.contains(&next) {
            break;
        }
        out.push(next);
        logits = engine.model.forward(&[next], &mut cache).expect("decode").to_vec1().expect("f32");
    }
    out
}

fn check_model(file: &str, name: &str) {
    let engine = Engine::load(&model(file), candle_core::Device::Cpu, false).expect("loads");
    let doc = reference(name);
    for case in doc["cases"].as_array().expect("cases") {
        let prompt = case["prompt"].as_str().expect("prompt");
        let want_prompt: Vec<u32> = serde_json::from_value(case["prompt_tokens"].clone()).expect("ids");
        let prompt_tokens = engine.tokenizer.encode(prompt, want_prompt.first() == engine.tokenizer.bos.as_ref()).expect("encode");
        assert_eq!(prompt_tokens, want_prompt, "{name}: tokenization of {prompt:?}");
        let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).expect("ids");
        let got = greedy(&engine, prompt_tokens, want.len());
        assert_eq!(got, want, "{name}: greedy continuation of {prompt:?}\n got  {:?}\n want {:?}",
            engine.tokenizer.decode(&got).unwrap_or_default(), case["text"]);
    }
}

#[test]
fn smollm2_matches_llama_cpp_token_for_token() {
    check_model("SmolLM2-135M-Instruct.Q4_1.gguf", "SmolLM2-135M-Instruct.Q4_1");
}

#[test]
fn streamed_generation_equals_the_greedy_tokens_and_stops_cleanly() {
    let engine = Engine::load(&model("SmolLM2-135M-Instruct.Q4_1.gguf"), candle_core::Device::Cpu, false).expect("loads");
    let doc = reference("SmolLM2-135M-Instruct.Q4_1");
    let case = &doc["cases"][0];
    let prompt_tokens: Vec<u32> = serde_json::from_value(case["prompt_tokens"].clone()).expect("ids");
    let want: Vec<u32> = serde_json::from_value(case["tokens"].clone()).expect("ids");
    let request = GenerationRequest {
        prompt_tokens,
        max_tokens: want.len(),
        sampling: SamplingParams::greedy(),
        stop: Vec::new(),
        logprobs: None,
    };
    let mut text = String::new();
    let mut done = None;
    generate(&engine, &request, |event| {
        match event {
            GenerationEvent::Text { text: t, .. } => text.push_str(&t),
            GenerationEvent::Done { finish, usage, .. } => done = Some((finish, usage)),
        }
        ControlFlow::Continue(())
    })
    .expect("generates");
    assert_eq!(text, engine.tokenizer.decode(&want).expect("decode"));
    let (finish, usage) = done.expect("done event");
    assert_eq!(usage.completion_tokens, want.len());
    assert_eq!(finish.as_openai(), "length");

    // A stop string ends generation and is never emitted, even split across tokens.
    let stop: String = text.chars().skip(6).take(5).collect();
    let request = GenerationRequest { stop: vec![stop.clone()], ..request };
    let mut streamed = String::new();
    let mut finish = None;
    generate(&engine, &request, |event| {
        match event {
            GenerationEvent::Text { text: t, .. } => streamed.push_str(&t),
            GenerationEvent::Done { finish: f, .. } => finish = Some(f),
        }
        ControlFlow::Continue(())
    })
    .expect("generates");
    assert!(!streamed.contains(&stop), "{streamed:?} contains {stop:?}");
    assert!(text.starts_with(&streamed), "{streamed:?} is a prefix of {text:?}");
    assert_eq!(finish.map(|f| f.as_openai()), Some("stop"));
}
