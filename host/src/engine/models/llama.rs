//! Llama-architecture models from GGUF (SmolLM2, Llama 3.x, ...), and the Qwen 2 / Qwen 3
//! variants of the same decoder (`qwen2`: biases on Q, K and V; `qwen3`: RMS norms on each
//! query and key head).
//!
//! GGUF stores a llama's Q and K permuted for llama.cpp's interleaved rotary embedding, so
//! llama rotates adjacent pairs (`rope_i`), as llama.cpp does; Qwen files are not permuted and
//! rotate the two halves of each head (`rope`, llama.cpp's NEOX mode).

use candle_core::{DType, Device, Result, Tensor};

use super::{
    CausalLm, Glu, QLinear, TokenTable, attention_mask, cache_dtype, causal_attention, debug_dump, gated,
    layer_progress, rms_norm, rope, rope_tables,
};
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

struct Layer {
    attn_norm: Tensor,
    wq: QLinear,
    wk: QLinear,
    wv: QLinear,
    /// Qwen 2's projection biases for Q, K and V.
    biases: Option<[Tensor; 3]>,
    /// Qwen 3's per-head RMS norms of queries and keys.
    qk_norms: Option<[Tensor; 2]>,
    wo: QLinear,
    ffn_norm: Tensor,
    w_gate: QLinear,
    w_up: QLinear,
    w_down: QLinear,
}

#[allow(missing_debug_implementations)]
pub struct Llama {
    cfg: Config,
    embeddings: TokenTable,
    layers: Vec<Layer>,
    norm: Tensor,
    output: QLinear,
    cos: Tensor,
    sin: Tensor,
}

impl Llama {
    pub fn load(
        gguf: &mut GgufFile,
        arch: &str,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        let cfg = Config::from_gguf(gguf, arch)?;
        let dense = |gguf: &mut GgufFile, name: &str| -> std::result::Result<Tensor, EngineError> {
            Ok(gguf.tensor(name, device)?.dequantize(device)?)
        };
        let embeddings = TokenTable::load(gguf, "token_embd.weight", device)?;
        let norm = dense(gguf, "output_norm.weight")?;
        // Tied embeddings: the output projection reuses the (quantized) embedding table.
        let output = if gguf.has_tensor("output.weight") {
            QLinear::load(gguf, "output.weight", device)?
        } else {
            embeddings.tied_head()?
        };
        let bar = layer_progress(progress, cfg.layers, arch);
        let mut layers = Vec::with_capacity(cfg.layers);
        for i in 0..cfg.layers {
            let mut q = |name: &str| -> std::result::Result<QLinear, EngineError> {
                QLinear::load(gguf, &format!("blk.{i}.{name}.weight"), device)
            };
            let (wq, wk, wv, wo) = (q("attn_q")?, q("attn_k")?, q("attn_v")?, q("attn_output")?);
            let (w_gate, w_up, w_down) = (q("ffn_gate")?, q("ffn_up")?, q("ffn_down")?);
            let biases = if gguf.has_tensor(&format!("blk.{i}.attn_q.bias")) {
                let mut b = |name: &str| dense(gguf, &format!("blk.{i}.{name}.bias"));
                Some([b("attn_q")?, b("attn_k")?, b("attn_v")?])
            } else {
                None
            };
            let qk_norms = if gguf.has_tensor(&format!("blk.{i}.attn_q_norm.weight")) {
                let mut n = |name: &str| dense(gguf, &format!("blk.{i}.{name}.weight"));
                Some([n("attn_q_norm")?, n("attn_k_norm")?])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: dense(gguf, &format!("blk.{i}.attn_norm.weight"))?,
                wq,
                wk,
                wv,
                biases,
                qk_norms,
                wo,
                ffn_norm: dense(gguf, &format!("blk.{i}.ffn_norm.weight"))?,
                w_gate,
                w_up,
                w_down,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let (cos, sin) = rope_tables(cfg.head_dim, cfg.rope_theta, 0, cfg.context_length, device)?;
        Ok(Self { cfg, embeddings, layers, norm, output, cos, sin })
    }

    fn attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        cache: &mut KvCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t, _) = x.dims3()?;
        let pos = cache.len();
        let project = |w: &QLinear, bias: Option<&Tensor>, norm: Option<&Tensor>, heads: usize| -> Result<Tensor> {
            let mut h = w.forward(x)?;
            if let Some(bias) = bias {
                h = h.broadcast_add(bias)?;
            }
            let mut h = h.reshape((b, t, heads, cfg.head_dim))?;
            if let Some(norm) = norm {
                h = rms_norm(&h, norm, cfg.rms_eps)?;
            }
            h.transpose(1, 2)?.contiguous()
        };
        let bias = |i: usize| layer.biases.as_ref().map(|b| &b[i]);
        let norm = |i: usize| layer.qk_norms.as_ref().map(|n| &n[i]);
        debug_dump(|| format!("Qcur-{index}"), &layer.wq.forward(x)?);
        let q = project(&layer.wq, bias(0), norm(0), cfg.heads)?;
        let k = project(&layer.wk, bias(1), norm(1), cfg.kv_heads)?;
        let v = project(&layer.wv, bias(2), None, cfg.kv_heads)?;
        let cos = self.cos.narrow(0, pos, t)?;
        let sin = self.sin.narrow(0, pos, t)?;
        let q = rope(&q, &cos, &sin, cfg.neox_rope)?;
        let k = rope(&k, &cos, &sin, cfg.neox_rope)?;
        let dtype = cache_dtype(x.device());
        let (k, v) = cache.append(index, &k.to_dtype(dtype)?, &v.to_dtype(dtype)?)?;
        let scale = 1.0 / (cfg.head_dim as f64).sqrt();
        let out = causal_attention(&q, &k, &v, None, scale, mask)?;
        debug_dump(|| format!("kqv_out-{index}"), &out);
        layer.wo.forward(&out)
    }
}

impl CausalLm for Llama {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let device = self.norm.device();
        let t = tokens.len();
        let past = cache.len();
        if past + t > self.cfg.context_length {
            candle_core::bail!("sequence of {} tokens exceeds the context of {}", past + t, self.cfg.context_length);
        }
        let mut x = self.embeddings.lookup(tokens, device)?.unsqueeze(0)?;
        let mask = if t > 1 { Some(attention_mask(t, past, None, device)?) } else { None };
        for (index, layer) in self.layers.iter().enumerate() {
            let residual = x.clone();
            let h = rms_norm(&x, &layer.attn_norm, self.cfg.rms_eps)?;
            debug_dump(|| format!("attn_norm-{index}"), &h);
            let h = self.attention(layer, index, &h, cache, mask.as_ref())?;
            debug_dump(|| format!("attn_out-{index}"), &h);
            x = (residual + h)?;
            debug_dump(|| format!("ffn_inp-{index}"), &x);
            let residual = x.clone();
            let h = rms_norm(&x, &layer.ffn_norm, self.cfg.rms_eps)?;
            debug_dump(|| format!("ffn_norm-{index}"), &h);
            let gate = layer.w_gate.forward(&h)?;
            let up = layer.w_up.forward(&h)?;
            debug_dump(|| format!("ffn_gate-{index}"), &gate);
            debug_dump(|| format!("ffn_up-{index}"), &up);
            let h = gated(&gate, &up, Glu::Swiglu)?;
            debug_dump(|| format!("ffn_swiglu-{index}"), &h);
            let h = layer.w_down.forward(&h)?;
            debug_dump(|| format!("ffn_out-{index}"), &h);
            x = (residual + h)?;
            debug_dump(|| format!("l_out-{index}"), &x);
        }
        cache.advance(t);
        let last = x.narrow(1, t - 1, 1)?;
        let last = rms_norm(&last, &self.norm, self.cfg.rms_eps)?;
        self.output.forward(&last)?.flatten_all()?.to_dtype(DType::F32)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.layers, self.cfg.context_length)
    }

    fn context_length(&self) -> usize {
        self.cfg.context_length
    }
}
