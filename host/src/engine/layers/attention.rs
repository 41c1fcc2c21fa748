//! One `attend()` for the MLX architectures (grouped heads, a mask, optional sinks) and the
//! attention layer most of them share: q/k/v/o projections, q/k RMS norms per head or over
//! the whole projection, partial RoPE, a sliding window, sinks. The GGUF decoder keeps
//! llama.cpp's own formulation ([`crate::engine::models::causal_attention`]).

use candle_core::{D, Module, Result, Tensor};

use super::ragged::SeqMasks;
use super::stack::SeqMixer;
use crate::engine::mlx::dense::RopeSpec;
use crate::engine::mlx::{Checkpoint, MlxLinear};
use crate::engine::models::{attention_mask, repeat_kv, rms_norm};
use crate::engine::{EngineError, KvCache};

/// Keys and values a query block at positions `past..past + t` attends to, narrowed to a
/// sliding `window` when there is one, and the additive mask it needs (`None` when every
/// query sees every remaining key).
pub fn visible(
    k: &Tensor,
    v: &Tensor,
    past: usize,
    t: usize,
    window: Option<usize>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    // Keys older than the window of the first query are never seen: drop them rather than
    // mask them, so a sliding layer costs O(window) per token however long the sequence.
    let start = window.map_or(0, |w| (past + 1).saturating_sub(w.max(1)));
    let len = past + t - start;
    let (k, v) = if start > 0 { (k.narrow(2, start, len)?, v.narrow(2, start, len)?) } else { (k.clone(), v.clone()) };
    if t == 1 {
        return Ok((k, v, None));
    }
    let mask = attention_mask(t, past, window, k.device())?.narrow(1, start, len)?;
    Ok((k, v, Some(mask)))
}

/// Scaled dot-product attention: `q` `[b, heads, t, d]`, `k` / `v` `[b, kv_heads, s, d]`
/// (grouped-query heads are repeated here), an additive `mask` `[t, s]` and optional
/// per-head `sinks` `[heads]`: a logit in every softmax denominator that attends to
/// nothing (gpt-oss). Returns `[b, t, heads * d_v]`.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    mask: Option<&Tensor>,
    sinks: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, t, _) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        candle_core::bail!("{heads} query heads cannot share {kv_heads} kv heads");
    }
    let k = repeat_kv(k, heads / kv_heads)?;
    let v = repeat_kv(v, heads / kv_heads)?;
    let mut scores = (q.contiguous()?.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    }
    let probs = match sinks {
        Some(sinks) => {
            // The sink is one more softmax column whose probability is thrown away.
            let s = scores.dim(D::Minus1)?;
            let sink = sinks.reshape((1, heads, 1, 1))?.broadcast_as((b, heads, t, 1))?;
            let all = candle_nn::ops::softmax_last_dim(&Tensor::cat(&[&scores, &sink.contiguous()?], D::Minus1)?)?;
            all.narrow(D::Minus1, 0, s)?
        }
        None => candle_nn::ops::softmax_last_dim(&scores)?,
    };
    let out = probs.contiguous()?.matmul(&v.contiguous()?)?;
    let d_v = out.dim(D::Minus1)?;
    out.transpose(1, 2)?.reshape((b, t, heads * d_v))
}

/// Where an architecture RMS-normalizes queries and keys.
#[derive(Debug, Clone)]
pub enum QkNorm {
    /// Per head, `[head_dim]` weights (Qwen 3, GLM-4 `use_qk_norm`).
    PerHead { q: Tensor, k: Tensor },
    /// Over the whole projection before it is split into heads (MiniMax).
    Whole { q: Tensor, k: Tensor },
}

/// Where a checkpoint's attention has q/k norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNormAt {
    None,
    PerHead,
    Whole,
}

/// The shape of an architecture's attention layers, from its config.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope: RopeSpec,
    pub qk_norm: QkNormAt,
    /// The layers have `sinks` (gpt-oss).
    pub sinks: bool,
}

/// Multi-head attention of one layer (cache entry `layer`), mlx-lm's arithmetic.
#[derive(Debug, Clone)]
pub struct Attention {
    pub layer: usize,
    pub q: MlxLinear,
    pub k: MlxLinear,
    pub v: MlxLinear,
    pub o: MlxLinear,
    pub qk_norm: Option<QkNorm>,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub rope: RopeSpec,
    /// A query sees keys with `q - k < window`.
    pub window: Option<usize>,
    /// Per-head logits that attend to nothing (gpt-oss).
    pub sinks: Option<Tensor>,
    pub scale: f64,
}

impl Attention {
    /// The f32 attention under `prefix` (`model.layers.3.self_attn`: `q_proj`, `k_proj`,
    /// `v_proj`, `o_proj` with their biases, `q_norm` / `k_norm`, `sinks`), cache entry
    /// `layer`, scores scaled by `1 / sqrt(head_dim)`.
    pub fn load(
        ckpt: &Checkpoint,
        layer: usize,
        prefix: &str,
        spec: &AttentionSpec,
        window: Option<usize>,
        device: &candle_core::Device,
    ) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| -> std::result::Result<MlxLinear, EngineError> {
            Ok(MlxLinear::Dense(ckpt.linear(&format!("{prefix}.{name}"), device)?))
        };
        let norm = |name: &str| ckpt.tensor(&format!("{prefix}.{name}.weight"), device);
        let qk_norm = match spec.qk_norm {
            QkNormAt::None => None,
            QkNormAt::PerHead => Some(QkNorm::PerHead { q: norm("q_norm")?, k: norm("k_norm")? }),
            QkNormAt::Whole => Some(QkNorm::Whole { q: norm("q_norm")?, k: norm("k_norm")? }),
        };
        let sinks = if spec.sinks {
            let sinks = ckpt.tensor(&format!("{prefix}.sinks"), device)?;
            if sinks.dims() != [spec.heads] {
                return Err(EngineError::Metadata(format!("{prefix}.sinks has shape {:?}", sinks.dims())));
            }
            Some(sinks)
        } else {
            None
        };
        Ok(Self {
            layer,
            q: linear("q_proj")?,
            k: linear("k_proj")?,
            v: linear("v_proj")?,
            o: linear("o_proj")?,
            qk_norm,
            heads: spec.heads,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            rms_eps: spec.rms_eps,
            rope: spec.rope.clone(),
            window,
            sinks,
            scale: 1.0 / (spec.head_dim as f64).sqrt(),
        })
    }
}

impl SeqMixer for Attention {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, _: &SeqMasks<'_>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let past = cache.len();
        let (mut q, mut k) = (self.q.forward(x)?, self.k.forward(x)?);
        let (mut q_norm, mut k_norm) = (None, None);
        match &self.qk_norm {
            Some(QkNorm::Whole { q: qn, k: kn }) => {
                q = rms_norm(&q, qn, self.rms_eps)?;
                k = rms_norm(&k, kn, self.rms_eps)?;
            }
            Some(QkNorm::PerHead { q, k }) => (q_norm, k_norm) = (Some(q), Some(k)),
            None => {}
        }
        let heads = |h: Tensor, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let h = h.reshape((b, t, n, hd))?;
            let h = match norm {
                Some(w) => rms_norm(&h, w, self.rms_eps)?,
                None => h,
            };
            h.transpose(1, 2)?.contiguous()
        };
        let q = self.rope.apply(&heads(q, self.heads, q_norm)?, past)?;
        let k = self.rope.apply(&heads(k, self.kv_heads, k_norm)?, past)?;
        let v = heads(self.v.forward(x)?, self.kv_heads, None)?;
        let (k, v) = cache.append(self.layer, &k, &v)?;
        // `visible` narrows a sliding layer's keys to its window and builds the mask for
        // what remains (a narrower one than the whole-sequence mask).
        let (k, v, mask) = visible(&k, &v, past, t, self.window)?;
        let out = attend(&q, &k, &v, self.scale, mask.as_ref(), self.sinks.as_ref())?;
        self.o.forward(&out)
    }
}

/// A layer's own key/value projections (absent on a layer that shares another's cache).
#[derive(Debug)]
pub struct KvProjection {
    pub k: MlxLinear,
    /// `None` with Gemma 4's `attention_k_eq_v`: values are the raw `k_proj` output.
    pub v: Option<MlxLinear>,
    pub k_norm: Tensor,
    pub kv_heads: usize,
}

/// Gemma 3n / Gemma 4 attention: q/k RMS norms per head and a scale-free norm of the
/// values instead of a score scale, sliding windows, and KV sharing: the last layers read
/// the cache entry of an earlier layer instead of projecting keys of their own.
#[derive(Debug)]
pub struct SharedKvAttention {
    /// Its cache entry.
    pub layer: usize,
    pub q: MlxLinear,
    pub q_norm: Tensor,
    pub o: MlxLinear,
    pub kv: Option<KvProjection>,
    /// The layer whose cache entry this layer attends over: itself, or on a KV-shared
    /// layer an earlier one.
    pub kv_source: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub rope: RopeSpec,
    pub window: Option<usize>,
    /// All-ones weight for the scale-free value norm.
    pub ones: Tensor,
    pub eps: f64,
}

impl SeqMixer for SharedKvAttention {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, masks: &SeqMasks<'_>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let pos = cache.len();
        let q = self.q.forward(x)?.reshape((b, t, self.heads, self.head_dim))?;
        let q = rms_norm(&q, &self.q_norm, self.eps)?.transpose(1, 2)?.contiguous()?;
        let q = self.rope.apply(&q, pos)?;
        let (k, v) = match &self.kv {
            Some(kv) => {
                let k = kv.k.forward(x)?.reshape((b, t, kv.kv_heads, self.head_dim))?;
                let v = match &kv.v {
                    Some(v) => v.forward(x)?.reshape((b, t, kv.kv_heads, self.head_dim))?,
                    None => k.clone(),
                };
                let k = rms_norm(&k, &kv.k_norm, self.eps)?.transpose(1, 2)?.contiguous()?;
                let k = self.rope.apply(&k, pos)?;
                let v = rms_norm(&v, &self.ones, self.eps)?.transpose(1, 2)?.contiguous()?;
                cache.append(self.layer, &k, &v)?
            }
            None => match cache.get(self.kv_source) {
                Some(kv) => kv,
                None => candle_core::bail!(
                    "layer {} shares layer {}'s keys, which are not cached",
                    self.layer,
                    self.kv_source
                ),
            },
        };
        let group = self.heads / k.dim(1)?.max(1);
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        // Attention scale 1: q and k are RMS-normalised instead.
        let mut scores = q.contiguous()?.matmul(&k.t()?)?;
        if let Some(mask) = masks.causal(self.window)? {
            scores = scores.broadcast_add(&mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&out)
    }
}
