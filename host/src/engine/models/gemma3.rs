//! Gemma 3 text models from GGUF (gemma-3-270m and up).
//!
//! Differences from Llama that matter here: embeddings scaled by sqrt(hidden), RMS norms
//! around both attention and feed-forward (the GGUF stores norm weights with Gemma's `+1`
//! already added), per-head Q/K norms, GELU gating, half-rotation RoPE, and five local
//! (sliding-window, RoPE base 10k) layers for every global one.

use candle_core::{Device, Result, Tensor};

use super::decoder::{Decoder, DecoderSpec, QueryScale};
use super::{CausalLm, Glu, SeqInput};
use crate::engine::arch::Loaded;
use crate::engine::gguf::GgufFile;
use crate::engine::{EngineError, KvCache};

/// Every `SWA_PATTERN`-th layer attends globally; the others use the sliding window.
const SWA_PATTERN: usize = 6;
const LOCAL_ROPE_BASE: f32 = 10_000.0;

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
    pub sliding_window: usize,
}

impl Config {
    pub fn from_gguf(gguf: &GgufFile) -> std::result::Result<Self, EngineError> {
        let heads = gguf.u32("gemma3.attention.head_count")? as usize;
        let hidden = gguf.u32("gemma3.embedding_length")? as usize;
        Ok(Self {
            layers: gguf.u32("gemma3.block_count")? as usize,
            hidden,
            heads,
            kv_heads: gguf.u32_or("gemma3.attention.head_count_kv", heads as u32) as usize,
            head_dim: gguf.u32_or("gemma3.attention.key_length", (hidden / heads) as u32) as usize,
            rope_theta: gguf.f32_or("gemma3.rope.freq_base", 1_000_000.0),
            rms_eps: f64::from(gguf.f32_or("gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
            context_length: gguf.u32_or("gemma3.context_length", 32_768) as usize,
            sliding_window: gguf.u32_or("gemma3.attention.sliding_window", 512) as usize,
        })
    }

    fn is_local(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(SWA_PATTERN)
    }
}

/// Gemma 3: [`Decoder`] with scaled embeddings, post norms (from the file), GeGLU, queries
/// scaled before the products, and five sliding-window layers (RoPE base 10k) per global one.
#[allow(missing_debug_implementations)]
pub struct Gemma3 {
    decoder: Decoder,
}

impl Gemma3 {
    pub fn load(gguf: &mut GgufFile, device: &Device, progress: bool) -> std::result::Result<Self, EngineError> {
        let cfg = Config::from_gguf(gguf)?;
        let local = |i: usize| cfg.is_local(i);
        let spec = DecoderSpec {
            name: String::from("gemma3"),
            layers: cfg.layers,
            hidden: cfg.hidden,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            head_dim: cfg.head_dim,
            rms_eps: cfg.rms_eps,
            context_length: cfg.context_length,
            neox_rope: true,
            rope_base: (0..cfg.layers).map(|i| if local(i) { LOCAL_ROPE_BASE } else { cfg.rope_theta }).collect(),
            window: (0..cfg.layers).map(|i| local(i).then_some(cfg.sliding_window)).collect(),
            embed_scale: Some((cfg.hidden as f64).sqrt()),
            glu: Glu::Geglu,
            query_scale: QueryScale::OnQueries,
        };
        Ok(Self { decoder: Decoder::load(gguf, spec, device, progress)? })
    }
}

impl CausalLm for Gemma3 {
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

/// The architecture registry's entry point ([`crate::engine::arch`]).
pub fn model(gguf: &mut GgufFile, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(Gemma3::load(gguf, device, progress)?))
}
