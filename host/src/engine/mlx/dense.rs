//! The dense decoder behind Llama, Qwen2, Qwen3, SmolLM3, Phi-3, Ministral 3 and Gemma 3:
//! one block with the switches those families differ by (biases, q/k norms, fused
//! projections, partial or scaled RoPE, NoPE layers, sandwich norms, sliding windows).
//! Each architecture's `Config` in [`super::archs`] turns its own `config.json` into a
//! [`DenseSpec`].
//!
//! RoPE angles are computed per forward pass for the positions it covers, so no table
//! sized by the context length is ever built.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{D, DType, Device, Module, Result, Tensor};

use std::sync::Arc;

use rapid_kernels::QuantMatrix;

use super::{Checkpoint, MlxLinear};
use crate::engine::models::{CausalLm, attention_mask, causal_attention, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

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
/// (a mixture of experts); `x` is `[b, t, hidden]`.
pub trait FeedForward: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// Picks a layer's custom feed-forward block from its index and tensor prefix
/// (`model.layers.3`); `None` keeps the gated MLP.
pub type FeedForwardLoader<'a> =
    dyn Fn(usize, &str) -> std::result::Result<Option<Box<dyn FeedForward>>, EngineError> + 'a;

enum Mlp {
    Gated { gate: MlxLinear, up: MlxLinear, down: MlxLinear },
    Custom(Box<dyn FeedForward>),
}

struct Layer {
    input_norm: Tensor,
    /// The pre-MLP norm (`post_attention_layernorm` outside Gemma).
    ffn_norm: Tensor,
    post_attn_norm: Option<Tensor>,
    post_ffn_norm: Option<Tensor>,
    q: MlxLinear,
    k: MlxLinear,
    v: MlxLinear,
    o: MlxLinear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    mlp: Mlp,
}

/// The token embedding table: packed Q4_1 rows dequantized on lookup, the same blocks as
/// Candle's quantized tensor (GPUs), or f32.
enum Embeddings {
    Dense(Tensor),
    Packed(Arc<QuantMatrix>),
    Quantized(Arc<QTensor>),
}

impl Embeddings {
    fn lookup(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => table.index_select(&Tensor::new(tokens, device)?, 0),
            Self::Quantized(table) => table.embedding(&Tensor::new(tokens, device)?),
            Self::Packed(table) => {
                let mut values = Vec::with_capacity(tokens.len() * table.cols());
                for &t in tokens {
                    if t as usize >= table.rows() {
                        candle_core::bail!("token {t} is outside the vocabulary of {}", table.rows());
                    }
                    values.extend(table.dequantize_row(t as usize));
                }
                Tensor::from_vec(values, (tokens.len(), table.cols()), device)
            }
        }
    }
}

/// The output projection: its own layer, or the (tied) embedding table.
enum Head {
    Linear(MlxLinear),
    Dense(Tensor),
    Packed(Arc<QuantMatrix>),
    Quantized(QMatMul),
}

#[allow(missing_debug_implementations)]
pub struct DenseDecoder {
    spec: DenseSpec,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Head,
}

impl DenseDecoder {
    pub fn load(
        ckpt: &Checkpoint,
        spec: DenseSpec,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        Self::load_with(ckpt, spec, device, progress, &|_, _| Ok(None))
    }

    /// Like [`Self::load`], with the feed-forward block of some layers supplied by
    /// `custom_ffn` (MoE architectures that otherwise share this decoder).
    pub fn load_with(
        ckpt: &Checkpoint,
        spec: DenseSpec,
        device: &Device,
        progress: bool,
        custom_ffn: &FeedForwardLoader<'_>,
    ) -> std::result::Result<Self, EngineError> {
        let p = &spec.prefix;
        let norm = |name: &str| -> std::result::Result<Tensor, EngineError> {
            let w = ckpt.tensor(name, device)?;
            Ok(if spec.norm_offset == 0.0 { w } else { (w + f64::from(spec.norm_offset))? })
        };
        let embed = format!("{p}.embed_tokens");
        let embeddings = match (ckpt.q4_1(&embed, device)?, ckpt.quantized_table(&embed, device)?) {
            (Some(table), _) => Embeddings::Packed(Arc::new(table)),
            (None, Some(table)) => Embeddings::Quantized(table),
            (None, None) => Embeddings::Dense(ckpt.weight(&embed, device)?),
        };
        let head = if spec.tied_embeddings || !ckpt.has(&format!("{}.weight", spec.head)) {
            match &embeddings {
                Embeddings::Packed(table) => Head::Packed(Arc::clone(table)),
                Embeddings::Dense(table) => Head::Dense(table.clone()),
                Embeddings::Quantized(table) => Head::Quantized(QMatMul::from_arc(Arc::clone(table))?),
            }
        } else {
            Head::Linear(ckpt.packed_linear(&spec.head, device)?)
        };
        let bar = layer_progress(progress, spec.layers, &spec.arch);
        let mut layers = Vec::with_capacity(spec.layers);
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
            let mlp = match custom_ffn(i, &l)? {
                Some(ffn) => Mlp::Custom(ffn),
                None if spec.fused_projections => {
                    let fused = ckpt.packed_linear(&format!("{l}.mlp.gate_up_proj"), device)?;
                    let ffn = fused.out_features()? / 2;
                    let mut parts = fused.split_rows(&[ffn, ffn])?;
                    match (parts.pop(), parts.pop()) {
                        (Some(up), Some(gate)) => {
                            Mlp::Gated { gate, up, down: ckpt.packed_linear(&format!("{l}.mlp.down_proj"), device)? }
                        }
                        _ => return Err(EngineError::Metadata(format!("{l}.mlp.gate_up_proj has the wrong shape"))),
                    }
                }
                None => Mlp::Gated {
                    gate: ckpt.packed_linear(&format!("{l}.mlp.gate_proj"), device)?,
                    up: ckpt.packed_linear(&format!("{l}.mlp.up_proj"), device)?,
                    down: ckpt.packed_linear(&format!("{l}.mlp.down_proj"), device)?,
                },
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
            layers.push(Layer {
                input_norm: norm(&format!("{l}.input_layernorm.weight"))?,
                ffn_norm,
                post_attn_norm,
                post_ffn_norm,
                q,
                k,
                v,
                o: ckpt.packed_linear(&format!("{l}.self_attn.o_proj"), device)?,
                q_norm: qk("q_norm")?,
                k_norm: qk("k_norm")?,
                mlp,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = norm(&format!("{p}.norm.weight"))?;
        Ok(Self { spec, embeddings, layers, norm, head })
    }

    fn attention(&self, index: usize, x: &Tensor, cache: &mut KvCache, mask: Option<&Tensor>) -> Result<Tensor> {
        let s = &self.spec;
        let layer = &self.layers[index];
        let (b, t, _) = x.dims3()?;
        let pos = cache.len();
        let heads = |lin: &MlxLinear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let h = lin.forward(x)?.reshape((b, t, n, s.head_dim))?;
            let h = match norm {
                Some(w) => rms_norm(&h, w, s.rms_eps)?,
                None => h,
            };
            h.transpose(1, 2)?.contiguous()
        };
        let mut q = heads(&layer.q, s.heads, layer.q_norm.as_ref())?;
        let mut k = heads(&layer.k, s.kv_heads, layer.k_norm.as_ref())?;
        let v = heads(&layer.v, s.kv_heads, None)?;
        if let Some(rope) = &s.rope[index] {
            q = rope.apply(&q, pos)?;
            k = rope.apply(&k, pos)?;
        }
        if let Some((beta, original)) = s.query_scale {
            let scale: Vec<f32> =
                (pos..pos + t).map(|p| 1.0 + beta * (1.0 + (p / original.max(1)) as f32).ln()).collect();
            q = q.broadcast_mul(&Tensor::from_vec(scale, (1, 1, t, 1), x.device())?)?;
        }
        let (k, v) = cache.append(index, &k, &v)?;
        let out = causal_attention(&q.contiguous()?, &k, &v, s.window[index], s.attn_scale, mask)?;
        layer.o.forward(&out)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let (gate, up, down) = match &layer.mlp {
            Mlp::Gated { gate, up, down } => (gate, up, down),
            Mlp::Custom(ffn) => return ffn.forward(x),
        };
        let gate = gate.forward(x)?;
        let gate = match self.spec.activation {
            Activation::Silu => candle_nn::ops::silu(&gate)?,
            Activation::GeluTanh => gate.gelu()?,
        };
        down.forward(&(gate * up.forward(x)?)?)
    }
}

impl CausalLm for DenseDecoder {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let s = &self.spec;
        let device = self.norm.device();
        let t = tokens.len();
        let past = cache.len();
        if past + t > s.context_length {
            candle_core::bail!("sequence of {} tokens exceeds the context of {}", past + t, s.context_length);
        }
        let mut x = self.embeddings.lookup(tokens, device)?.unsqueeze(0)?;
        if let Some(scale) = s.embed_scale {
            x = (x * f64::from(scale))?;
        }
        // One mask per distinct window; none needed for a single token without a window.
        let mut masks: Vec<(Option<usize>, Option<Tensor>)> = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let window = s.window[index];
            let mask = match masks.iter().find(|(w, _)| *w == window) {
                Some((_, m)) => m.clone(),
                None => {
                    let needed = t > 1 || window.is_some_and(|w| past + 1 > w);
                    let m = if needed { Some(attention_mask(t, past, window, device)?) } else { None };
                    masks.push((window, m.clone()));
                    m
                }
            };
            let h = rms_norm(&x, &layer.input_norm, s.rms_eps)?;
            let mut h = self.attention(index, &h, cache, mask.as_ref())?;
            if let Some(w) = &layer.post_attn_norm {
                h = rms_norm(&h, w, s.rms_eps)?;
            }
            x = (x + h)?;
            let h = rms_norm(&x, &layer.ffn_norm, s.rms_eps)?;
            let mut h = self.mlp(layer, &h)?;
            if let Some(w) = &layer.post_ffn_norm {
                h = rms_norm(&h, w, s.rms_eps)?;
            }
            x = (x + h)?;
        }
        cache.advance(t);
        let last = x.narrow(1, t - 1, 1)?;
        let last = rms_norm(&last, &self.norm, s.rms_eps)?;
        let last = last.flatten_all()?.unsqueeze(0)?;
        let logits = match &self.head {
            Head::Linear(linear) => linear.forward(&last)?,
            Head::Dense(table) => last.matmul(&table.t()?)?,
            Head::Packed(table) => crate::engine::models::packed_matmul(table, &last)?,
            Head::Quantized(table) => table.forward(&last)?,
        };
        logits.flatten_all()?.to_dtype(DType::F32)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.layers, self.spec.context_length)
    }

    fn context_length(&self) -> usize {
        self.spec.context_length
    }
}
