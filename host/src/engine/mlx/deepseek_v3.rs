//! DeepSeek-V3 (and Kimi-K2 style checkpoints, mlx-lm `deepseek_v3`): multi-head latent
//! attention (MLA) and a DeepSeek MoE (sigmoid `noaux_tc` routing, group-limited, with
//! shared experts) after `first_k_dense_replace` dense layers.
//!
//! MLA, as mlx-lm computes it: queries come from a low-rank projection
//! (`q_a_proj` → RMSNorm → `q_b_proj`), split per head into a `nope` part and a RoPE part;
//! keys and values are one shared latent vector per position (`kv_a_proj_with_mqa` →
//! RMSNorm, `kv_lora_rank` wide) plus one shared RoPE key. mlx-lm's `sanitize` splits the
//! Hugging Face `kv_b_proj` into per-head `embed_q` `[heads, kv_lora, nope]` (latent →
//! nope key) and `unembed_out` `[heads, v_head, kv_lora]` (latent → value). The cache holds
//! only the latent and the RoPE key per position, so it is `kv_lora + rope` floats wide
//! whatever the head count.
//!
//! Like mlx-lm, a single decoded token uses the absorbed form (the query is moved into the
//! latent space, attention runs over the cached latents, and the result is mapped to values
//! afterwards), while a block of tokens expands keys and values per head, which is cheaper
//! when there are many queries. Both give the same numbers up to rounding.
//!
//! RoPE here is the *traditional* (interleaved pairs) variant, with YaRN scaling.

use std::sync::Arc;

use candle_core::{D, Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::archs::rope_from_scaling;
use super::dense::RopeSpec;
use super::moe::GroupedMoeArgs;
use crate::engine::arch::Loaded;
use crate::engine::layers::embedding::Embeddings;
use crate::engine::layers::{Op, SeqMasks, SeqMixer, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::{layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

/// `config.json` of a `deepseek_v3` checkpoint, with mlx-lm's `ModelArgs` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    /// The routed / shared experts and how they are chosen.
    #[serde(flatten)]
    pub moe: GroupedMoeArgs,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_moe_intermediate")]
    pub moe_intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "d_kv_lora")]
    pub kv_lora_rank: usize,
    /// `null` means queries come straight from `q_proj`.
    #[serde(default = "d_q_lora")]
    pub q_lora_rank: Option<usize>,
    #[serde(default = "d_rope_dim")]
    pub qk_rope_head_dim: usize,
    #[serde(default = "d_v_head")]
    pub v_head_dim: usize,
    #[serde(default = "d_nope")]
    pub qk_nope_head_dim: usize,
    #[serde(default = "d_noaux")]
    pub topk_method: String,
    #[serde(default = "d_one")]
    pub moe_layer_freq: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn d_intermediate() -> usize {
    11008
}
fn d_moe_intermediate() -> usize {
    1407
}
fn d_kv_lora() -> usize {
    512
}
fn d_q_lora() -> Option<usize> {
    Some(1536)
}
fn d_rope_dim() -> usize {
    64
}
fn d_v_head() -> usize {
    128
}
fn d_nope() -> usize {
    128
}
fn d_noaux() -> String {
    String::from("noaux_tc")
}
fn d_one() -> usize {
    1
}
fn d_max_pos() -> usize {
    2048
}
fn d_eps() -> f64 {
    1e-6
}
fn d_theta() -> f32 {
    10_000.0
}

/// The latent norms have a fixed epsilon in mlx-lm, whatever `rms_norm_eps` says.
const LATENT_NORM_EPS: f64 = 1e-6;

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        let cfg =
            Self::deserialize(config).map_err(|e| EngineError::Metadata(format!("deepseek_v3 config.json: {e}")))?;
        // mlx-lm's MoEGate asserts the same.
        if cfg.topk_method != "noaux_tc" {
            return Err(EngineError::Metadata(format!(
                "deepseek_v3: topk_method `{}` (only noaux_tc)",
                cfg.topk_method
            )));
        }
        Ok(cfg)
    }

    fn is_moe(&self, layer: usize) -> bool {
        self.moe.n_routed_experts.is_some()
            && layer >= self.moe.first_k_dense_replace
            && layer.is_multiple_of(self.moe_layer_freq.max(1))
    }

    /// Softmax scale: `q_head_dim^-0.5`, times YaRN's attention temperature
    /// `mscale(factor, mscale_all_dim)²` when the scaling config has a non-zero
    /// `mscale_all_dim` (as mlx-lm does; YaRN's own RoPE input scale is separate).
    fn attention_scale(&self) -> f64 {
        let mut scale = ((self.qk_nope_head_dim + self.qk_rope_head_dim) as f64).powf(-0.5);
        if let Some(cfg) = &self.rope_scaling {
            let all_dim = cfg.get("mscale_all_dim").and_then(Value::as_f64).unwrap_or(0.0);
            let factor = cfg.get("factor").and_then(Value::as_f64).unwrap_or(1.0);
            if all_dim != 0.0 && factor > 1.0 {
                let s = 0.1 * all_dim * factor.ln() + 1.0;
                scale *= s * s;
            }
        }
        scale
    }

    fn rope(&self) -> std::result::Result<RopeSpec, EngineError> {
        // mlx-lm treats `deepseek_yarn` as `yarn`.
        let scaling = self.rope_scaling.clone().map(|mut v| {
            if let Some(obj) = v.as_object_mut() {
                for key in ["type", "rope_type"] {
                    if obj.get(key).and_then(Value::as_str) == Some("deepseek_yarn") {
                        obj.insert(key.to_string(), Value::from("yarn"));
                    }
                }
            }
            v
        });
        rope_from_scaling(self.qk_rope_head_dim, self.rope_theta, scaling.as_ref(), self.max_position_embeddings)
    }
}

/// Traditional RoPE (adjacent pairs rotate together) over the leading `rope.dims` of `x`
/// `[b, heads, t, d]` at positions `start..start + t`.
fn rope_interleaved(rope: &RopeSpec, x: &Tensor, start: usize) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    let half = rope.inv_freq.len();
    let mut angles = Vec::with_capacity(t * half);
    for p in start..start + t {
        let p = p as f32 * rope.position_scale;
        angles.extend(rope.inv_freq.iter().map(|f| p * f));
    }
    let angles = Tensor::from_vec(angles, (t, half), x.device())?;
    let rotated = if rope.dims == d { x.clone() } else { x.narrow(D::Minus1, 0, rope.dims)? };
    let rotated = if rope.input_scale == 1.0 { rotated } else { (rotated * f64::from(rope.input_scale))? };
    let rotated = candle_nn::rotary_emb::rope_i(&rotated.contiguous()?, &angles.cos()?, &angles.sin()?)?;
    if rope.dims == d {
        Ok(rotated)
    } else {
        Tensor::cat(&[&rotated, &x.narrow(D::Minus1, rope.dims, d - rope.dims)?], D::Minus1)
    }
}

/// Where queries come from.
enum QueryProj {
    /// `q_b_proj(q_a_layernorm(q_a_proj(x)))`.
    LowRank {
        a: candle_nn::Linear,
        norm: Tensor,
        b: candle_nn::Linear,
    },
    Full(candle_nn::Linear),
}

/// `DeepseekV3Attention`.
struct Mla {
    q: QueryProj,
    kv_a: candle_nn::Linear,
    kv_a_norm: Tensor,
    /// `embed_q`, `[heads, kv_lora, nope]`.
    embed_q: Tensor,
    /// `embed_q` as one linear map latent → all heads' nope keys, `[heads * nope, kv_lora]`.
    key_up: candle_nn::Linear,
    /// `unembed_out`, `[heads, v_head, kv_lora]`.
    unembed_out: Tensor,
    /// `unembed_out` as one linear map latent → all heads' values, `[heads * v_head, kv_lora]`.
    value_up: candle_nn::Linear,
    o: candle_nn::Linear,
}

impl Mla {
    fn load(ckpt: &Checkpoint, cfg: &Config, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| ckpt.linear(&format!("{prefix}.{name}"), device);
        let q = match cfg.q_lora_rank {
            Some(_) => QueryProj::LowRank {
                a: linear("q_a_proj")?,
                norm: ckpt.tensor(&format!("{prefix}.q_a_layernorm.weight"), device)?,
                b: linear("q_b_proj")?,
            },
            None => QueryProj::Full(linear("q_proj")?),
        };
        let (h, lora, nope, v) = (cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.v_head_dim);
        let embed_q = ckpt.weight(&format!("{prefix}.embed_q"), device)?;
        let unembed_out = ckpt.weight(&format!("{prefix}.unembed_out"), device)?;
        if embed_q.dims() != [h, lora, nope] || unembed_out.dims() != [h, v, lora] {
            return Err(EngineError::Metadata(format!(
                "{prefix}: embed_q {:?} / unembed_out {:?}, expected [{h}, {lora}, {nope}] / [{h}, {v}, {lora}]",
                embed_q.dims(),
                unembed_out.dims()
            )));
        }
        let key_up = embed_q.transpose(1, 2)?.reshape((h * nope, lora))?;
        let value_up = unembed_out.reshape((h * v, lora))?;
        Ok(Self {
            q,
            kv_a: linear("kv_a_proj_with_mqa")?,
            kv_a_norm: ckpt.tensor(&format!("{prefix}.kv_a_layernorm.weight"), device)?,
            embed_q,
            key_up: candle_nn::Linear::new(key_up, None),
            unembed_out,
            value_up: candle_nn::Linear::new(value_up, None),
            o: linear("o_proj")?,
        })
    }

    fn forward(
        &self,
        cfg: &Config,
        rope: &RopeSpec,
        index: usize,
        x: &Tensor,
        cache: &mut KvCache,
        masks: &SeqMasks<'_>,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, lora, nope, rd, vd) =
            (cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim);
        let scale = cfg.attention_scale();
        let past = cache.len();
        let q = match &self.q {
            QueryProj::LowRank { a, norm, b } => b.forward(&rms_norm(&a.forward(x)?, norm, LATENT_NORM_EPS)?)?,
            QueryProj::Full(q) => q.forward(x)?,
        };
        let q = q.reshape((b, t, h, nope + rd))?.transpose(1, 2)?;
        let q_nope = q.narrow(D::Minus1, 0, nope)?.contiguous()?;
        let q_pe = rope_interleaved(rope, &q.narrow(D::Minus1, nope, rd)?, past)?;
        let compressed = self.kv_a.forward(x)?;
        let latent = rms_norm(&compressed.narrow(D::Minus1, 0, lora)?.contiguous()?, &self.kv_a_norm, LATENT_NORM_EPS)?
            .unsqueeze(1)?;
        let k_pe = compressed.narrow(D::Minus1, lora, rd)?.reshape((b, t, 1, rd))?.transpose(1, 2)?;
        let k_pe = rope_interleaved(rope, &k_pe, past)?;
        let (latent, k_pe) = cache.append(index, &latent, &k_pe)?;
        let s = past + t;
        // [b, 1, s, d] -> [b, s, d]: the one shared head, as a batch of matrices.
        let latent = latent.squeeze(1)?.contiguous()?;
        let k_pe = k_pe.squeeze(1)?.contiguous()?;
        // RoPE scores for all heads at once: [b, h*t, rd] x [b, rd, s].
        let mut pe_scores = (q_pe * scale)?.reshape((b, h * t, rd))?.matmul(&k_pe.t()?)?.reshape((b, h, t, s))?;
        if let Some(mask) = masks.causal(None)? {
            pe_scores = pe_scores.broadcast_add(&mask)?;
        }
        let out = if t == 1 {
            // Absorbed: q_nope·W_k per head moves the query into the latent space
            // ([h, b, nope] x [h, nope, lora]); attention then runs over the latents directly.
            let q_lat = q_nope.reshape((b, h, nope))?.transpose(0, 1)?.contiguous()?.matmul(&self.embed_q.t()?)?;
            let q_lat = q_lat.transpose(0, 1)?.contiguous()?; // [b, h, lora]
            let scores = ((q_lat.matmul(&latent.t()?)? * scale)? + pe_scores.reshape((b, h, s))?)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&latent)?; // [b, h, lora]
            // Back from the latent to each head's value space: [h, b, lora] x [h, lora, v].
            let out = ctx.transpose(0, 1)?.contiguous()?.matmul(&self.unembed_out.t()?)?;
            out.transpose(0, 1)?.reshape((b, t, h * vd))?
        } else {
            let keys = self.key_up.forward(&latent)?.reshape((b, s, h, nope))?.transpose(1, 2)?.contiguous()?;
            let values = self.value_up.forward(&latent)?.reshape((b, s, h, vd))?.transpose(1, 2)?.contiguous()?;
            let scores = ((q_nope.matmul(&keys.t()?)? * scale)? + pe_scores)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            probs.matmul(&values)?.transpose(1, 2)?.reshape((b, t, h * vd))?
        };
        self.o.forward(&out)
    }
}

/// One layer's [`Mla`] as the decoder runs it: with its cache entry and the shared config.
struct MlaLayer {
    mla: Mla,
    layer: usize,
    cfg: Arc<Config>,
    rope: Arc<RopeSpec>,
}

impl SeqMixer for MlaLayer {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, masks: &SeqMasks<'_>) -> Result<Tensor> {
        self.mla.forward(&self.cfg, &self.rope, self.layer, x, cache, masks)
    }
}

/// The DeepSeek-V3 decoder on the shared [`Stack`].
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    let rope = cfg.rope()?;
    if rope.dims != cfg.qk_rope_head_dim {
        return Err(EngineError::Metadata(format!("deepseek_v3: rope over {} dims", rope.dims)));
    }
    let (cfg, rope) = (Arc::new(cfg), Arc::new(rope));
    let (embeddings, head) =
        Embeddings::load_dense_with_head(ckpt, "model.embed_tokens", "lm_head", cfg.tie_word_embeddings, device)?;
    let bar = layer_progress(progress, cfg.num_hidden_layers, "deepseek_v3");
    // Checkpoints may carry multi-token-prediction layers after the last one; mlx-lm drops
    // them, and they are simply never loaded here.
    let mut units = Vec::with_capacity(2 * cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = format!("model.layers.{i}");
        let ffn = cfg.moe.feed_forward(ckpt, &format!("{l}.mlp"), cfg.is_moe(i), device)?;
        let mla = Mla::load(ckpt, &cfg, &format!("{l}.self_attn"), device)?;
        let attn = MlaLayer { mla, layer: i, cfg: Arc::clone(&cfg), rope: Arc::clone(&rope) };
        units.extend(pre_norm_layer(ckpt, &l, Op::Sequence(Box::new(attn)), Op::Rows(ffn), device)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec::new("deepseek_v3", cfg.max_position_embeddings, cfg.num_hidden_layers, cfg.rms_norm_eps);
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("model.norm.weight", device)?, head)))
}
