//! GGUF `qwen2` / `qwen3` held to mlx-lm. No small Qwen GGUF file is at hand, so the test
//! writes one from the tiny mlx-lm fixture's weights (dequantized to f32, named as
//! llama.cpp's converter names them, Q and K not permuted: Qwen uses NEOX rotation) and
//! compares our logits for the fixture's prompt with mlx-lm's f32 logits, plus mlx-lm's
//! greedy tokens. The GGUF path keeps an f16 cache and f16 queries (llama.cpp's arithmetic),
//! hence a looser bound than the MLX path's 2e-3. Runs on `RAPID_HOST_TEST_DEVICE`.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use rapid_host::engine::Engine;
use rapid_host::engine::mlx::Checkpoint;
use rapid_host::engine::sampling::argmax;
use serde_json::Value as Json;

use crate::support::{repo_root, test_device};

const TOLERANCE: f32 = 1e-2;

fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/mlx").join(name)
}

fn json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).expect("reads")).expect("json")
}

/// The fixture's tokenizer as GGUF metadata: its byte-level vocabulary and special tokens,
/// padded to the model's vocabulary with placeholder tokens (one of them the target of the
/// single merge, since GGUF arrays cannot be empty).
fn tokenizer_metadata(dir: &Path, vocab_size: usize) -> Vec<(&'static str, Value)> {
    let doc = json(&dir.join("tokenizer.json"));
    let mut tokens = vec![String::new(); vocab_size];
    let mut types = vec![1i32; vocab_size];
    for (token, id) in doc["model"]["vocab"].as_object().expect("vocab") {
        tokens[id.as_u64().expect("id") as usize] = token.clone();
    }
    for added in doc["added_tokens"].as_array().expect("added") {
        let id = added["id"].as_u64().expect("id") as usize;
        tokens[id] = added["content"].as_str().expect("content").to_string();
        types[id] = 3;
    }
    let first_free = tokens.iter().position(String::is_empty).expect("room for placeholders");
    for (i, token) in tokens.iter_mut().enumerate().filter(|(_, t)| t.is_empty()) {
        *token = if i == first_free { "Ġt".to_string() } else { format!("<unused{i}>") };
    }
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect())),
        ("tokenizer.ggml.merges", strings(&["Ġ t".to_string()])),
        ("tokenizer.ggml.eos_token_id", Value::U32(258)),
    ]
}

fn write_gguf(name: &str, path: &Path) {
    let dir = fixture(name);
    let cfg = json(&dir.join("config.json"));
    let ckpt = Checkpoint::open(&dir).expect("opens the fixture");
    let cpu = Device::Cpu;
    let n = |key: &str| cfg[key].as_u64().expect(key) as u32;
    let (hidden, heads) = (n("hidden_size"), n("num_attention_heads"));
    let head_dim = cfg["head_dim"].as_u64().map_or(hidden / heads, |d| d as u32);
    let arch = cfg["model_type"].as_str().expect("model_type").to_string();
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.clone())),
        (format!("{arch}.context_length"), Value::U32(n("max_position_embeddings"))),
        (format!("{arch}.embedding_length"), Value::U32(hidden)),
        (format!("{arch}.block_count"), Value::U32(n("num_hidden_layers"))),
        (format!("{arch}.feed_forward_length"), Value::U32(n("intermediate_size"))),
        (format!("{arch}.attention.head_count"), Value::U32(heads)),
        (format!("{arch}.attention.head_count_kv"), Value::U32(n("num_key_value_heads"))),
        (format!("{arch}.attention.key_length"), Value::U32(head_dim)),
        (format!("{arch}.rope.freq_base"), Value::F32(cfg["rope_theta"].as_f64().expect("theta") as f32)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            Value::F32(cfg["rms_norm_eps"].as_f64().expect("eps") as f32),
        ),
    ];
    metadata.extend(tokenizer_metadata(&dir, n("vocab_size") as usize).into_iter().map(|(k, v)| (k.to_string(), v)));
    let f32_tensor = |t: Tensor| QTensor::quantize(&t.to_dtype(candle_core::DType::F32).expect("f32"), GgmlDType::F32);
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    let mut add = |gguf: String, t: Tensor| tensors.push((gguf, f32_tensor(t).expect("tensor")));
    add("token_embd.weight".into(), ckpt.weight("model.embed_tokens", &cpu).expect("embeddings"));
    add("output_norm.weight".into(), ckpt.tensor("model.norm.weight", &cpu).expect("norm"));
    for i in 0..n("num_hidden_layers") as usize {
        let mlx = |s: &str| format!("model.layers.{i}.{s}");
        let blk = |s: &str| format!("blk.{i}.{s}");
        for (ours, theirs) in [
            ("attn_q", "self_attn.q_proj"),
            ("attn_k", "self_attn.k_proj"),
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
        ] {
            add(blk(&format!("{ours}.weight")), ckpt.weight(&mlx(theirs), &cpu).expect("weight"));
            if let Some(bias) = ckpt.bias(&mlx(theirs), &cpu).expect("bias") {
                add(blk(&format!("{ours}.bias")), bias);
            }
        }
        for (ours, theirs) in [
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
            ("attn_q_norm", "self_attn.q_norm"),
            ("attn_k_norm", "self_attn.k_norm"),
        ] {
            if ckpt.has(&mlx(&format!("{theirs}.weight"))) {
                add(
                    blk(&format!("{ours}.weight")),
                    ckpt.tensor(&mlx(&format!("{theirs}.weight")), &cpu).expect("norm"),
                );
            }
        }
    }
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).expect("creates");
    gguf_file::write(&mut file, &metadata, &tensors).expect("writes");
}

fn check(name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{name}.gguf"));
    write_gguf(name, &path);
    let reference = json(&fixture(name).join("reference.json"));
    let ids = |v: &Json| -> Vec<u32> {
        v.as_array().expect("ids").iter().filter_map(Json::as_u64).map(|x| x as u32).collect()
    };
    let prompt = ids(&reference["prompt_ids"]);
    let expected: Vec<f32> = reference["f32"]["last_logits"]
        .as_array()
        .expect("logits")
        .iter()
        .filter_map(Json::as_f64)
        .map(|v| v as f32)
        .collect();
    let engine = Engine::load(&path, test_device(), false).expect("loads the GGUF");
    let mut cache = engine.model.new_cache();
    let logits: Vec<f32> = engine.model.forward(&prompt, &mut cache).and_then(|t| t.to_vec1()).expect("forward");
    let worst = logits.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= TOLERANCE, "{name}: GGUF logits differ from mlx-lm's by {worst}");
    let want = ids(&reference["f32"]["greedy_tokens"]);
    let mut got = vec![argmax(&logits)];
    while got.len() < want.len() {
        let next: Vec<f32> =
            engine.model.forward(&got[got.len() - 1..], &mut cache).and_then(|t| t.to_vec1()).expect("decode");
        got.push(argmax(&next));
    }
    assert_eq!(got, want, "{name}: greedy tokens");
}

#[test]
fn gguf_qwen3_matches_mlx_lm() {
    check("qwen3");
}

#[test]
fn gguf_qwen2_matches_mlx_lm() {
    check("qwen2");
}
