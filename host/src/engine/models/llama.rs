//! Llama-architecture models from GGUF (SmolLM2, Llama 3.x, ...), and the Qwen 2 / Qwen 3
//! variants of the same decoder (`qwen2`: biases on Q, K and V; `qwen3`: RMS norms on each
//! query and key head).
//!
//! GGUF stores a llama's Q and K permuted for llama.cpp's interleaved rotary embedding, so
//! llama rotates adjacent pairs (`rope_i`), as llama.cpp does; Qwen files are not permuted and
//! rotate the two halves of each head (`rope`, llama.cpp's NEOX mode).

use candle_core::{Device, Result, Tensor};

use super::decoder::{Decoder, DecoderSpec, QueryScale};
use super::{CausalLm, Glu, SeqInput};
use crate::engine::arch::Loaded;
use crate::engine::gguf::GgufFile;
use crate::engine::{EngineError, KvCache};

/// Hyper-parameters, from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone)]
pub struct Config {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub rms_eps: f64,
    pub context_length: usize,
    /// Rotate halves of each head (Qwen) rather than adjacent pairs (llama).
    pub neox_rope: bool,
}

impl Config {
    /// `arch` is the GGUF `general.architecture`, the prefix of every hyper-parameter key.
    pub fn from_gguf(gguf: &GgufFile, arch: &str) -> std::result::Result<Self, EngineError> {
        let key = |name: &str| format!("{arch}.{name}");
        let heads = gguf.u32(&key("attention.head_count"))? as usize;
        let hidden = gguf.u32(&key("embedding_length"))? as usize;
        let head_dim = gguf.u32_or(&key("attention.key_length"), (hidden / heads) as u32) as usize;
        Ok(Self {
            layers: gguf.u32(&key("block_count"))? as usize,
            hidden,
            heads,
            kv_heads: gguf.u32_or(&key("attention.head_count_kv"), heads as u32) as usize,
            head_dim: gguf.u32_or(&key("rope.dimension_count"), head_dim as u32) as usize,
            rope_theta: gguf.f32_or(&key("rope.freq_base"), 10_000.0),
            rms_eps: f64::from(gguf.f32_or(&key("attention.layer_norm_rms_epsilon"), 1e-5)),
            context_length: gguf.u32_or(&key("context_length"), 4096) as usize,
            neox_rope: arch != "llama",
        })
    }
}

/// A llama-family decoder: [`Decoder`] with every layer global, SwiGLU, and (qwen2 / qwen3)
/// the Q/K/V biases or Q/K norms its file carries.
#[allow(missing_debug_implementations)]
pub struct Llama {
    decoder: Decoder,
}

impl Llama {
    pub fn load(
        gguf: &mut GgufFile,
        arch: &str,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        let cfg = Config::from_gguf(gguf, arch)?;
        let spec = DecoderSpec {
            name: arch.to_string(),
            layers: cfg.layers,
            hidden: cfg.hidden,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            rms_eps: cfg.rms_eps,
            context_length: cfg.context_length,
            neox_rope: cfg.neox_rope,
            rope_base: vec![cfg.rope_theta; cfg.layers],
            window: vec![None; cfg.layers],
            embed_scale: None,
            glu: Glu::Swiglu,
            query_scale: QueryScale::InScores,
        };
        Ok(Self { decoder: Decoder::load(gguf, spec, device, progress)? })
    }
}

impl CausalLm for Llama {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        super::forward_one(self, tokens, cache)
    }

    fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        self.decoder.forward_batch(batch)
    }

    fn batches(&self) -> bool {
        true
    }

    fn new_cache(&self) -> KvCache {
        self.decoder.new_cache()
    }

    fn context_length(&self) -> usize {
        self.decoder.context_length()
    }
}

/// The architecture registry's entry point ([`crate::engine::arch`]): `llama`, `qwen2`
/// and `qwen3` GGUF files.
pub fn model(gguf: &mut GgufFile, arch: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(Llama::load(gguf, arch, device, progress)?))
}
