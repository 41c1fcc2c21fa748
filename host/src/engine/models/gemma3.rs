//! Gemma 3 text models from GGUF (gemma-3-270m and up).
//!
//! Differences from Llama that matter here: embeddings scaled by sqrt(hidden), RMS norms
//! around both attention and feed-forward (the GGUF stores norm weights with Gemma's `+1`
//! already added), per-head Q/K norms, GELU gating, half-rotation RoPE, and five local
//! (sliding-window, RoPE base 10k) layers for every global one.

use candle_core::{DType, Device, Result, Tensor};

use super::{
    CausalLm, Glu, QLinear, TokenTable, attention_mask, cache_dtype, causal_attention, debug_dump, gated,
    layer_progress, rms_norm, rope, rope_tables,
};
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

struct Layer {
    attn_norm: Tensor,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    wo: QLinear,
    q_norm: Tensor,
    k_norm: Tensor,
    post_attn_norm: Tensor,
    ffn_norm: Tensor,
    w_gate: QLinear,
    w_up: QLinear,
    w_down: QLinear,
    post_ffn_norm: Tensor,
}

/// RoPE tables, computed for positions as they are reached (not 131k up front).
struct Rope {
    head_dim: usize,
    base: f32,
    device: Device,
}

impl Rope {
    fn new(head_dim: usize, base: f32, device: &Device) -> Result<Self> {
        Ok(Self { head_dim, base, device: device.clone() })
    }

    fn tables(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        rope_tables(self.head_dim, self.base, start, len, &self.device)
    }
}

#[allow(missing_debug_implementations)]
pub struct Gemma3 {
    cfg: Config,
    embeddings: TokenTable,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QLinear,
    global_rope: Rope,
    local_rope: Rope,
}

impl Gemma3 {
    pub fn load(gguf: &mut GgufFile, device: &Device, progress: bool) -> std::result::Result<Self, EngineError> {
        let cfg = Config::from_gguf(gguf)?;
        let dense = |gguf: &mut GgufFile, name: &str| -> std::result::Result<Tensor, EngineError> {
            Ok(gguf.tensor(name, device)?.dequantize(device)?)
        };
        let embeddings = TokenTable::load(gguf, "token_embd.weight", device)?;
        let output = if gguf.has_tensor("output.weight") {
            QLinear::load(gguf, "output.weight", device)?
        } else {
            embeddings.tied_head()?
        };
        let norm = dense(gguf, "output_norm.weight")?;
        let bar = layer_progress(progress, cfg.layers, "gemma3");
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut q = |name: &str| -> std::result::Result<QLinear, EngineError> {
                QLinear::load(gguf, &format!("blk.{i}.{name}.weight"), device)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (w_gate, w_up, w_down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            let mut n = |name: &str| dense(gguf, &format!("blk.{i}.{name}.weight"));
            layers.push(Layer {
                attn_norm: n("attn_norm")?,
                q_norm: n("attn_q_norm")?,
                k_norm: n("attn_k_norm")?,
                post_attn_norm: n("post_attention_norm")?,
                ffn_norm: n("ffn_norm")?,
                post_ffn_norm: n("post_ffw_norm")?,
                wq,
                wk,
                wv,
                wo,
                w_gate,
                w_up,
                w_down,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let global_rope = Rope::new(cfg.head_dim, cfg.rope_theta, device)?;
        let local_rope = Rope::new(cfg.head_dim, LOCAL_ROPE_BASE, device)?;
        Ok(Self { cfg, embeddings, layers, norm, output, global_rope, local_rope })
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        cache: &mut KvCache,
        rope_cs: (&Tensor, &Tensor),
        (mask, window): (&Tensor, Option<usize>),
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let q = layer.wq.forward(x)?;
        debug_dump(|| format!("Qcur-{index}"), &q);
        let q = q.reshape((b, t, cfg.heads, cfg.head_dim))?;
        let k = layer.wk.forward(x)?.reshape((b, t, cfg.kv_heads, cfg.head_dim))?;
        let v = layer.wv.forward(x)?.reshape((b, t, cfg.kv_heads, cfg.head_dim))?.transpose(1, 2)?.contiguous()?;
        let q = rms_norm(&q, &layer.q_norm, cfg.rms_eps)?.transpose(1, 2)?.contiguous()?;
        let k = rms_norm(&k, &layer.k_norm, cfg.rms_eps)?.transpose(1, 2)?.contiguous()?;
        // Scaled before the cache's f16 rounding and the scores, as llama.cpp scales Q (the
        // product is exact; the f16 rounding of q/16 and of q differ for tiny values).
        let q = (rope(&q, rope_cs.0, rope_cs.1, true)? * (1.0 / (cfg.head_dim as f64).sqrt()))?;
        let k = rope(&k, rope_cs.0, rope_cs.1, true)?;
        let dtype = cache_dtype(x.device());
        let (k, v) = cache.append(index, &k.to_dtype(dtype)?, &v.to_dtype(dtype)?)?;
        let out = causal_attention(&q, &k, &v, window, 1.0, Some(mask))?;
        debug_dump(|| format!("kqv_out-{index}"), &out);
        layer.wo.forward(&out)
    }
}

impl CausalLm for Gemma3 {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let device = self.norm.device();
        let cfg = &self.cfg;
        let t = tokens.len();
        let past = cache.len();
        if past + t > cfg.context_length {
            candle_core::bail!("sequence of {} tokens exceeds the context of {}", past + t, cfg.context_length);
        }
        let mut x = (self.embeddings.lookup(tokens, device)?.unsqueeze(0)? * (cfg.hidden as f64).sqrt())?;
        debug_dump(|| "inp_scaled".to_string(), &x);
        let global = self.global_rope.tables(past, t)?;
        let local = self.local_rope.tables(past, t)?;
        let global_mask = attention_mask(t, past, None, device)?;
        let local_mask = attention_mask(t, past, Some(cfg.sliding_window), device)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let (rope, m) = if cfg.is_local(index) {
                ((&local.0, &local.1), (&local_mask, Some(cfg.sliding_window)))
            } else {
                ((&global.0, &global.1), (&global_mask, None))
            };
            let h = rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
            debug_dump(|| format!("attn_norm-{index}"), &h);
            let h = self.attention(layer, index, &h, cache, rope, m)?;
            let h = rms_norm(&h, &layer.post_attn_norm, cfg.rms_eps)?;
            debug_dump(|| format!("attn_post_norm-{index}"), &h);
            x = (x + h)?;
            debug_dump(|| format!("sa_out-{index}"), &x);
            let h = rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
            debug_dump(|| format!("ffn_norm-{index}"), &h);
            let (gate, up) = (layer.w_gate.forward(&h)?, layer.w_up.forward(&h)?);
            debug_dump(|| format!("ffn_gate-{index}"), &gate);
            debug_dump(|| format!("ffn_up-{index}"), &up);
            let h = gated(&gate, &up, Glu::Geglu)?;
            debug_dump(|| format!("ffn_geglu-{index}"), &h);
            let h = layer.w_down.forward(&h)?;
            debug_dump(|| format!("ffn_out-{index}"), &h);
            x = (x + rms_norm(&h, &layer.post_ffn_norm, cfg.rms_eps)?)?;
            debug_dump(|| format!("l_out-{index}"), &x);
        }
        cache.advance(t);
        let last = rms_norm(&x.narrow(1, t - 1, 1)?, &self.norm, cfg.rms_eps)?;
        self.output.forward(&last)?.flatten_all()?.to_dtype(DType::F32)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.layers, self.cfg.context_length)
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }
}
