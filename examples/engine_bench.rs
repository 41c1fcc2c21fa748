//! Prefill and decode speed of the engine alone on a device: `PROMPT` tokens in one
//! forward pass, then `TOKENS` greedy steps (logits back to the host each step, as
//! generation does), after a warm-up run. Prints one line per run in the form
//! `rapid-host generate` ends with, and the weight memory the load holds.
//!
//!     engine_bench MODEL DEVICE [PROMPT=120] [TOKENS=64] [RUNS=3]
//!     engine_bench --write-gguf SHAPE TYPE OUT.gguf    # SHAPE: smollm2-135m | llama-1b, TYPE: q4_0 | q4_1 | q8_0
//!
//! The second form writes a random-weight Llama GGUF in a real model's layer shapes (tied
//! embeddings, a byte-level BPE vocabulary padded to the model's size) for comparing with
//! llama.cpp's `llama-bench` on the same file where the real files cannot be carried (the
//! GPU machine has no network).

use std::path::Path;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rapid_host::engine::Engine;
use rapid_host::engine::sampling::argmax;

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [flag, shape, dtype, out] = args.as_slice()
        && flag == "--write-gguf"
    {
        return write_gguf(shape, dtype, Path::new(out));
    }
    let [model, device, rest @ ..] = args.as_slice() else {
        return Err("usage: engine_bench MODEL DEVICE [PROMPT] [TOKENS] [RUNS]".into());
    };
    let number = |i: usize, default: usize| rest.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (prompt_len, tokens, runs) = (number(0, 120), number(1, 64), number(2, 3));
    let start = Instant::now();
    let engine = Engine::load(Path::new(model), rapid_host::engine::device(device)?, false)?;
    eprintln!("loaded in {:.1} s: {}", start.elapsed().as_secs_f64(), engine.weight_summary());
    let text = "The history of the printing press ".repeat(prompt_len);
    let mut prompt = engine.tokenizer.encode(&text, false)?;
    prompt.truncate(prompt_len);
    for run in 0..=runs {
        let mut cache = engine.model.new_cache();
        let start = Instant::now();
        let logits: Vec<f32> = engine.model.forward(&prompt, &mut cache)?.to_vec1()?;
        let prefill = start.elapsed().as_secs_f64();
        let mut next = argmax(&logits);
        let start = Instant::now();
        for _ in 0..tokens {
            let logits: Vec<f32> = engine.model.forward(&[next], &mut cache)?.to_vec1()?;
            next = argmax(&logits);
        }
        let decode = start.elapsed().as_secs_f64();
        let label = if run == 0 { "warm-up" } else { "run" };
        eprintln!(
            "[{label}: {} prompt tokens, {tokens} generated tokens, prefill {:.1} tok/s, decode {:.1} tok/s]",
            prompt.len(),
            prompt.len() as f64 / prefill,
            tokens as f64 / decode,
        );
    }
    Ok(())
}

/// GPT-2's byte-to-character table: the vocabulary's first 256 tokens.
fn byte_tokens() -> Vec<String> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0..256u32)
        .map(|b| {
            let c = if printable(b) {
                b
            } else {
                extra += 1;
                255 + extra
            };
            char::from_u32(c).map(String::from).unwrap_or_default()
        })
        .collect()
}

fn write_gguf(shape: &str, dtype: &str, out: &Path) -> Result<(), BoxError> {
    // (hidden, ffn, layers, heads, kv heads, vocab): SmolLM2-135M's and Llama-3.2-1B's.
    let (hidden, ffn, layers, heads, kv_heads, vocab) = match shape {
        "smollm2-135m" => (576, 1536, 30, 9, 3, 49152),
        "llama-1b" => (2048, 8192, 16, 32, 8, 128256),
        other => return Err(format!("unknown shape {other}").into()),
    };
    let dtype = match dtype {
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q8_0" => GgmlDType::Q8_0,
        other => return Err(format!("unknown type {other}").into()),
    };
    let mut tokens = byte_tokens();
    let merges = ["Ġ t", "h e", "Ġt he"];
    tokens.extend(["Ġt", "he", "Ġthe"].map(String::from));
    while tokens.len() < vocab - 2 {
        tokens.push(format!("<pad{}>", tokens.len()));
    }
    tokens.extend(["<|im_start|>", "<|im_end|>"].map(String::from));
    let types: Vec<Value> = (0..vocab).map(|i| Value::I32(if i >= vocab - 2 { 3 } else { 1 })).collect();
    let string = |s: &str| Value::String(s.to_string());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", string("llama")),
        ("general.name", string(shape)),
        ("llama.context_length", Value::U32(2048)),
        ("llama.embedding_length", Value::U32(hidden as u32)),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.feed_forward_length", Value::U32(ffn as u32)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv_heads as u32)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", string("gpt2")),
        ("tokenizer.ggml.tokens", Value::Array(tokens.iter().map(|t| string(t)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        ("tokenizer.ggml.merges", Value::Array(merges.iter().map(|m| string(m)).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(vocab as u32 - 2)),
        ("tokenizer.ggml.eos_token_id", Value::U32(vocab as u32 - 1)),
    ];
    let cpu = Device::Cpu;
    let matrix = |rows: usize, cols: usize| -> candle_core::Result<QTensor> {
        QTensor::quantize(&Tensor::randn(0f32, 0.02, (rows, cols), &cpu)?, dtype)
    };
    let ones = |n: usize| QTensor::quantize(&Tensor::ones(n, candle_core::DType::F32, &cpu)?, GgmlDType::F32);
    let head_dim = hidden / heads;
    let mut tensors: Vec<(String, QTensor)> =
        vec![("token_embd.weight".into(), matrix(vocab, hidden)?), ("output_norm.weight".into(), ones(hidden)?)];
    for i in 0..layers {
        let b = |name: &str| format!("blk.{i}.{name}.weight");
        tensors.extend([
            (b("attn_norm"), ones(hidden)?),
            (b("attn_q"), matrix(heads * head_dim, hidden)?),
            (b("attn_k"), matrix(kv_heads * head_dim, hidden)?),
            (b("attn_v"), matrix(kv_heads * head_dim, hidden)?),
            (b("attn_output"), matrix(hidden, heads * head_dim)?),
            (b("ffn_norm"), ones(hidden)?),
            (b("ffn_gate"), matrix(ffn, hidden)?),
            (b("ffn_up"), matrix(ffn, hidden)?),
            (b("ffn_down"), matrix(hidden, ffn)?),
        ]);
    }
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut file, &metadata, &tensors)?;
    Ok(())
}
