//! The GPU's weight layout, checked on the CPU. [`WeightLayout::Candle`] loads every
//! quantized matrix into Candle's quantized tensors, as a CUDA or Metal load does (the same
//! code path: only the device differs), so what a GPU-bound load holds, and the numbers it
//! gives, are held to the file and to the CPU kernels where no GPU is.

use candle_core::Device;
use rapid_host::engine::gguf::GgufFile;
use rapid_host::engine::mlx::Checkpoint;
use rapid_host::engine::{Engine, LoadOptions, WeightLayout};

use crate::support::repo_root;

const GPU_LAYOUT: LoadOptions = LoadOptions { mlx_dequantize_all: false, layout: WeightLayout::Candle };

/// Held over file bytes for each of `layers` layers named `<prefix><i>.`; the whole
/// model's ratio last.
fn ratios(engine: &Engine, file_bytes: impl Fn(&str) -> usize, prefix: &str, layers: usize) -> Vec<(String, f64)> {
    (0..layers)
        .map(|i| format!("{prefix}{i}."))
        .map(|p| {
            let (held, file) = (engine.weights.under(&p), file_bytes(&p));
            assert!(file > 0, "{p}: the file has no tensors under this name");
            (p, held as f64 / file as f64)
        })
        .collect()
}

fn assert_within(what: &str, ratios: &[(String, f64)], low: f64, high: f64) {
    for (layer, ratio) in ratios {
        assert!((low..=high).contains(ratio), "{what} {layer}: holds {ratio:.3}x the file's bytes");
    }
}

fn gguf_model(name: &str) -> std::path::PathBuf {
    repo_root().join("models").join(name)
}

/// A GGUF load in the GPU layout keeps every block as the file has it: per layer, the
/// bytes held are the file's within 10% (Q4_1 SmolLM2; gemma-3's Q4_K_M mix of Q4_K, Q6_K,
/// Q5_0 and Q8_0), and so is the whole model, embedding table included.
#[test]
fn gguf_in_the_gpu_layout_holds_the_files_blocks() {
    for (file, layers) in [("SmolLM2-135M-Instruct.Q4_1.gguf", 30), ("gemma-3-270m-q4_k_m.gguf", 18)] {
        let path = gguf_model(file);
        let engine =
            Engine::load_with(&path, Device::Cpu, false, &GPU_LAYOUT).expect("loads (scripts/fetch_models.py)");
        let gguf = GgufFile::open(&path).expect("opens");
        let file_bytes = |prefix: &str| -> usize {
            gguf.content.tensor_infos.keys().filter(|n| n.starts_with(prefix)).filter_map(|n| gguf.file_bytes(n)).sum()
        };
        let per_layer = ratios(&engine, file_bytes, "blk.", layers);
        assert_within(file, &per_layer, 0.9, 1.1);
        let whole = engine.weights.total() as f64 / file_bytes("") as f64;
        assert!((0.9..=1.1).contains(&whole), "{file}: holds {whole:.3}x the file's weights");
        // Not one matrix dequantized: each quantized one holds exactly its blocks.
        for (name, info) in &gguf.content.tensor_infos {
            if info.ggml_dtype.block_size() > 1 {
                assert_eq!(engine.weights.get(name), gguf.file_bytes(name), "{file}: {name}");
            }
        }
    }
}

/// An MLX checkpoint in the GPU layout: 4-bit layers as Q4_1 blocks (two per group of 64,
/// each with its own f16 scale and minimum: 40 bytes per 64 weights where the file has 36),
/// 8-bit as Q8_0 blocks plus one f32 offset per group (72 bytes where the file has 68): not
/// the 8x (4-bit) or 4x (8-bit) of f32. The norms are held in f32 (the file's are bf16).
#[test]
fn mlx_in_the_gpu_layout_keeps_layers_packed() {
    for (fixture, high) in [("llama", 40.0 / 36.0 * 1.03), ("llama-8bit", 1.1)] {
        let dir = repo_root().join("tests/fixtures/mlx").join(fixture);
        let engine = Engine::load_with(&dir, Device::Cpu, false, &GPU_LAYOUT).expect("loads");
        let ckpt = Checkpoint::open(&dir).expect("opens");
        let layers = ckpt.config["num_hidden_layers"].as_u64().expect("layers") as usize;
        let per_layer = ratios(&engine, |p| ckpt.file_bytes(p), "model.layers.", layers);
        eprintln!("{fixture}: held / file per layer {per_layer:?}");
        assert_within(fixture, &per_layer, 0.9, high);
        let f32_layout =
            Engine::load_with(&dir, Device::Cpu, false, &LoadOptions { mlx_dequantize_all: true, ..GPU_LAYOUT })
                .expect("loads");
        let dense = f32_layout.weights.under("model.layers.0.") as f64;
        let packed = engine.weights.under("model.layers.0.") as f64;
        assert!(packed * 3.0 < dense, "{fixture}: {packed} bytes packed against {dense} in f32");
    }
}

/// Where the GPU layout keeps a 4-bit layer, the GPU-bound load of the CPU's native layout
/// records the same names: every matrix the CPU packs, the GPU layout packs too.
#[test]
fn the_gpu_layout_packs_what_the_cpu_packs() {
    let dir = repo_root().join("tests/fixtures/mlx/qwen3");
    let native = Engine::load_with(&dir, Device::Cpu, false, &LoadOptions::default()).expect("loads");
    let gpu = Engine::load_with(&dir, Device::Cpu, false, &GPU_LAYOUT).expect("loads");
    assert_eq!(native.weights.len(), gpu.weights.len());
    let ratio = gpu.weights.total() as f64 / native.weights.total() as f64;
    // The same Q4_1 blocks; only the CPU's embedding tiles or the f32 leftovers could differ.
    assert!((0.95..=1.05).contains(&ratio), "GPU layout holds {ratio:.3}x the CPU's");
}
