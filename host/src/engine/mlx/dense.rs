//! The dense decoder behind Llama, Qwen2, Qwen3, SmolLM3, Phi-3, Ministral 3 and Gemma 3:
//! one block with the switches those families differ by (biases, q/k norms, fused
//! projections, partial or scaled RoPE, NoPE layers, sandwich norms, sliding windows).
//! Each architecture's `Config` in [`super::archs`] turns its own `config.json` into a
//! [`DenseSpec`].
//!
//! RoPE angles are computed per forward pass for the positions it covers, so no table
//! sized by the context length is ever built.

use candle_core::{D, Device, Module, Result, Tensor};

use super::{Checkpoint, MlxLinear};
use crate::engine::EngineError;
use crate::engine::layers::embedding::{Embeddings, Head};
use crate::engine::layers::{BatchMixer, Op, Ragged, Residual, Stack, StackSpec};
use crate::engine::models::{SeqInput, causal_attention, layer_progress, rms_norm};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh-approximated GELU (`gelu_pytorch_tanh`).
    GeluTanh,
}

/// Rotary embedding of one layer, in mlx-lm's terms (rotate-half, not interleaved).
#[derive(Debug, Clone, PartialEq)]
pub struct RopeSpec {
    /// Leading dimensions of each head that are rotated (the rest pass through).
    pub dims: usize,
    /// Angle per position for each rotated pair: `pos * position_scale * inv_freq[i]`.
    pub inv_freq: Vec<f32>,
    pub position_scale: f32,
    /// Multiplies the rotated dimensions of q and k (YaRN / LongRoPE magnitude scaling).
    pub input_scale: f32,
}

impl RopeSpec {
    /// Plain RoPE: `inv_freq[i] = base^(-2i/dims)`.
    pub fn standard(dims: usize, base: f32) -> Self {
        let inv_freq = (0..dims / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dims as f32)).collect();
        Self { dims, inv_freq, position_scale: 1.0, input_scale: 1.0 }
    }

    /// From mlx-style periods (`freqs` passed to `mx.fast.rope`): `inv_freq = 1 / period`.
    pub fn from_periods(dims: usize, periods: &[f32], input_scale: f32) -> Self {
        Self { dims, inv_freq: periods.iter().map(|p| 1.0 / p).collect(), position_scale: 1.0, input_scale }
    }

    fn cos_sin(&self, start: usize, t: usize, device: &Device) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut angles = Vec::with_capacity(t * half);
        for p in start..start + t {
            let p = p as f32 * self.position_scale;
            angles.extend(self.inv_freq.iter().map(|f| p * f));
        }
        let angles = Tensor::from_vec(angles, (t, half), device)?;
        Ok((angles.cos()?, angles.sin()?))
    }

    /// Rotates `x` `[b, heads, t, head_dim]` at positions `start..start + t`.
    pub fn apply(&self, x: &Tensor, start: usize) -> Result<Tensor> {
        let (_, _, t, head_dim) = x.dims4()?;
        let (cos, sin) = self.cos_sin(start, t, x.device())?;
        let rotated = if self.dims == head_dim { x.clone() } else { x.narrow(D::Minus1, 0, self.dims)? };
        let rotated = if self.input_scale == 1.0 { rotated } else { (rotated * f64::from(self.input_scale))? };
        let rotated = candle_nn::rotary_emb::rope(&rotated.contiguous()?, &cos, &sin)?;
        if self.dims == head_dim {
            Ok(rotated)
        } else {
            Tensor::cat(&[&rotated, &x.narrow(D::Minus1, self.dims, head_dim - self.dims)?], D::Minus1)
        }
    }
}

/// Everything that distinguishes one dense family from another.
#[derive(Debug, Clone)]
pub struct DenseSpec {
    pub arch: String,
    /// Tensor name prefix of the decoder (`model`, `language_model.model`).
    pub prefix: String,
    /// The output head (`lm_head`, `language_model.lm_head`); unused when tied.
    pub head: String,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    pub tied_embeddings: bool,
    pub qk_norm: bool,
    /// Gemma stores norm weights as `w - 1`.
    pub norm_offset: f32,
    /// Gemma 3: norms before and after both attention and MLP.
    pub sandwich_norms: bool,
    pub activation: Activation,
    pub embed_scale: Option<f32>,
    pub attn_scale: f64,
    /// Per layer; `None` = no position encoding in that layer (NoPE).
    pub rope: Vec<Option<RopeSpec>>,
    /// Per layer sliding window (a query sees keys with `q - k < window`).
    pub window: Vec<Option<usize>>,
    /// Phi-3: `qkv_proj` and `gate_up_proj`.
    pub fused_projections: bool,
    /// Llama-4 style query scaling by position: `(beta, original_max_position_embeddings)`.
    pub query_scale: Option<(f32, usize)>,
}

/// A feed-forward block an architecture file puts in place of the gated MLP of a layer
/// (a mixture of experts): the layer library's row-wise block.
pub use crate::engine::layers::FeedForward;

/// Picks a layer's custom feed-forward block from its index and tensor prefix
/// (`model.layers.3`); `None` keeps the gated MLP.
pub type FeedForwardLoader<'a> =
    dyn Fn(usize, &str) -> std::result::Result<Option<Box<dyn FeedForward>>, EngineError> + 'a;

/// `down(act(gate(x)) * up(x))`.
struct GatedMlp {
    gate: MlxLinear,
    up: MlxLinear,
    down: MlxLinear,
    activation: Activation,
}

impl FeedForward for GatedMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate = self.gate.forward(x)?;
        let gate = match self.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        self.down.forward(&(gate * self.up.forward(x)?)?)
    }
}

/// The attention of one dense layer: q/k/v projections over every row of the batch at
/// once, then RoPE, the cache and attention per sequence.
struct DenseAttention {
    layer: usize,
    q: MlxLinear,
    k: MlxLinear,
    v: MlxLinear,
    o: MlxLinear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    rms_eps: f64,
    scale: f64,
    /// `None` = no position encoding in this layer (NoPE).
    rope: Option<RopeSpec>,
    window: Option<usize>,
    /// Llama-4 style query scaling by position: `(beta, original_max_position_embeddings)`.
    query_scale: Option<(f32, usize)>,
}

impl BatchMixer for DenseAttention {
    fn forward(&self, x: &Tensor, batch: &mut [SeqInput<'_>], ragged: &Ragged) -> Result<Tensor> {
        let (b, rows, _) = x.dims3()?;
        let hd = self.head_dim;
        let heads = |lin: &MlxLinear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let h = lin.forward(x)?.reshape((b, rows, n, hd))?;
            let h = match norm {
                Some(w) => rms_norm(&h, w, self.rms_eps)?,
                None => h,
            };
            h.transpose(1, 2)?.contiguous()
        };
        let q_all = heads(&self.q, self.heads, self.q_norm.as_ref())?;
        let k_all = heads(&self.k, self.kv_heads, self.k_norm.as_ref())?;
        let v_all = heads(&self.v, self.kv_heads, None)?;
        let mut outs = Vec::with_capacity(batch.len());
        for (i, seq) in batch.iter_mut().enumerate() {
            let pos = seq.cache.len();
            let (mut q, mut k) = (ragged.rows_of(&q_all, i, 2)?, ragged.rows_of(&k_all, i, 2)?);
            let v = ragged.rows_of(&v_all, i, 2)?;
            let t = q.dim(2)?;
            if let Some(rope) = &self.rope {
                q = rope.apply(&q, pos)?;
                k = rope.apply(&k, pos)?;
            }
            if let Some((beta, original)) = self.query_scale {
                let scale: Vec<f32> =
                    (pos..pos + t).map(|p| 1.0 + beta * (1.0 + (p / original.max(1)) as f32).ln()).collect();
                q = q.broadcast_mul(&Tensor::from_vec(scale, (1, 1, t, 1), x.device())?)?;
            }
            let (k, v) = seq.cache.append(self.layer, &k, &v)?;
            let mask = ragged.masks(i, x.device()).causal(self.window)?;
            outs.push(causal_attention(&q.contiguous()?, &k, &v, self.window, self.scale, mask.as_ref())?);
        }
        self.o.forward(&ragged.join(outs, 1)?)
    }
}

/// The dense decoder of `spec` on the shared [`Stack`].
pub fn load(
    ckpt: &Checkpoint,
    spec: DenseSpec,
    device: &Device,
    progress: bool,
) -> std::result::Result<Stack, EngineError> {
    load_with(ckpt, spec, device, progress, &|_, _| Ok(None))
}

/// Like [`load`], with the feed-forward block of some layers supplied by `custom_ffn` (MoE
/// architectures that otherwise share this decoder).
pub fn load_with(
    ckpt: &Checkpoint,
    spec: DenseSpec,
    device: &Device,
    progress: bool,
    custom_ffn: &FeedForwardLoader<'_>,
) -> std::result::Result<Stack, EngineError> {
    let p = &spec.prefix;
    let norm = |name: &str| -> std::result::Result<Tensor, EngineError> {
        let w = ckpt.tensor(name, device)?;
        Ok(if spec.norm_offset == 0.0 { w } else { (w + f64::from(spec.norm_offset))? })
    };
    let embeddings = Embeddings::load_packed(ckpt, &format!("{p}.embed_tokens"), device)?;
    let head = Head::tied_or(ckpt, &spec.head, spec.tied_embeddings, &embeddings, || {
        Ok(Head::Linear(ckpt.packed_linear(&spec.head, device)?))
    })?;
    let bar = layer_progress(progress, spec.layers, &spec.arch);
    let mut units = Vec::with_capacity(2 * spec.layers);
    let (q_rows, kv_rows) = (spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim);
    for i in 0..spec.layers {
        let l = format!("{p}.layers.{i}");
        let (q, k, v) = if spec.fused_projections {
            let mut parts = ckpt
                .packed_linear(&format!("{l}.self_attn.qkv_proj"), device)?
                .split_rows(&[q_rows, kv_rows, kv_rows])?;
            let v = parts.pop();
            let k = parts.pop();
            let q = parts.pop();
            match (q, k, v) {
                (Some(q), Some(k), Some(v)) => (q, k, v),
                _ => return Err(EngineError::Metadata(format!("{l}.self_attn.qkv_proj has the wrong shape"))),
            }
        } else {
            (
                ckpt.packed_linear(&format!("{l}.self_attn.q_proj"), device)?,
                ckpt.packed_linear(&format!("{l}.self_attn.k_proj"), device)?,
                ckpt.packed_linear(&format!("{l}.self_attn.v_proj"), device)?,
            )
        };
        let mlp: Box<dyn FeedForward> = match custom_ffn(i, &l)? {
            Some(ffn) => ffn,
            None if spec.fused_projections => {
                let fused = ckpt.packed_linear(&format!("{l}.mlp.gate_up_proj"), device)?;
                let ffn = fused.out_features()? / 2;
                let mut parts = fused.split_rows(&[ffn, ffn])?;
                match (parts.pop(), parts.pop()) {
                    (Some(up), Some(gate)) => Box::new(GatedMlp {
                        gate,
                        up,
                        down: ckpt.packed_linear(&format!("{l}.mlp.down_proj"), device)?,
                        activation: spec.activation,
                    }),
                    _ => return Err(EngineError::Metadata(format!("{l}.mlp.gate_up_proj has the wrong shape"))),
                }
            }
            None => Box::new(GatedMlp {
                gate: ckpt.packed_linear(&format!("{l}.mlp.gate_proj"), device)?,
                up: ckpt.packed_linear(&format!("{l}.mlp.up_proj"), device)?,
                down: ckpt.packed_linear(&format!("{l}.mlp.down_proj"), device)?,
                activation: spec.activation,
            }),
        };
        let (ffn_norm, post_attn_norm, post_ffn_norm) = if spec.sandwich_norms {
            (
                norm(&format!("{l}.pre_feedforward_layernorm.weight"))?,
                Some(norm(&format!("{l}.post_attention_layernorm.weight"))?),
                Some(norm(&format!("{l}.post_feedforward_layernorm.weight"))?),
            )
        } else {
            (norm(&format!("{l}.post_attention_layernorm.weight"))?, None, None)
        };
        let qk = |name: &str| -> std::result::Result<Option<Tensor>, EngineError> {
            if spec.qk_norm { norm(&format!("{l}.self_attn.{name}.weight")).map(Some) } else { Ok(None) }
        };
        let attn = DenseAttention {
            layer: i,
            q,
            k,
            v,
            o: ckpt.packed_linear(&format!("{l}.self_attn.o_proj"), device)?,
            q_norm: qk("q_norm")?,
            k_norm: qk("k_norm")?,
            heads: spec.heads,
            kv_heads: spec.kv_heads,
            head_dim: spec.head_dim,
            rms_eps: spec.rms_eps,
            scale: spec.attn_scale,
            rope: spec.rope[i].clone(),
            window: spec.window[i],
            query_scale: spec.query_scale,
        };
        let input_norm = norm(&format!("{l}.input_layernorm.weight"))?;
        units.push(Residual { post_norm: post_attn_norm, ..Residual::new(input_norm, Op::Batch(Box::new(attn))) });
        units.push(Residual { post_norm: post_ffn_norm, ..Residual::new(ffn_norm, Op::Rows(mlp)) });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stack = StackSpec {
        name: spec.arch.clone(),
        context_length: spec.context_length,
        cache_layers: spec.layers,
        rms_eps: spec.rms_eps,
        embed_scale: spec.embed_scale.map(f64::from),
        logits_divisor: None,
    };
    Ok(Stack::new(stack, embeddings, units, norm(&format!("{p}.norm.weight"))?, head))
}
