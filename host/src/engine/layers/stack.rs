//! The generic decoder: embeddings, a list of residual units, the final norm and the head,
//! run over a ragged batch of sequences in one pass.
//!
//! Every op that computes each row on its own (norms, MLPs, experts, projections) sees all
//! rows of the batch at once, so the weights pass through the cache once per step rather
//! than once per sequence; attention and recurrent layers run per sequence against that
//! sequence's own cache and state. A sequence alone is the batch of one, and goes through
//! exactly the operations the families' own loops ran.

use candle_core::{DType, Device, Result, Tensor};

use super::embedding::{Embeddings, Head};
use super::ragged::{Ragged, SeqMasks};
use crate::engine::KvCache;
use crate::engine::models::{CausalLm, SeqInput, forward_one, rms_norm};

/// A block over rows that are independent of each other (an MLP, a mixture of experts):
/// `x` is `[1, rows, hidden]`, or any shape whose last dimension is the hidden size.
pub trait FeedForward: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
}

/// A token mixer that runs one sequence at a time against its own cache (attention, a
/// recurrent layer): `x` is that sequence's new rows `[1, t, hidden]` at positions
/// `cache.len()..`; it appends to (or replaces) its own layer's entry of the cache.
pub trait SeqMixer: Send + Sync {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, masks: &SeqMasks<'_>) -> Result<Tensor>;
}

/// A token mixer that sees the whole batch: projections over all rows, attention per
/// sequence (via [`Ragged::per_sequence`] or [`Ragged::rows_of`]).
pub trait BatchMixer: Send + Sync {
    fn forward(&self, x: &Tensor, batch: &mut [SeqInput<'_>], ragged: &Ragged) -> Result<Tensor>;
}

/// A recurrent token mixer (Mamba-2, gated delta-net): its state after the previous tokens
/// in, the output and the state after these tokens out.
pub trait RecurrentMixer: Send + Sync {
    fn forward(&self, x: &Tensor, state: Option<&[Tensor]>) -> Result<(Tensor, Vec<Tensor>)>;
}

/// A recurrent mixer whose state lives in entry `layer` of each sequence's cache.
#[derive(Debug)]
pub struct Recurrent<M> {
    pub layer: usize,
    pub mixer: M,
}

impl<M: RecurrentMixer> SeqMixer for Recurrent<M> {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, _: &SeqMasks<'_>) -> Result<Tensor> {
        let (out, state) = self.mixer.forward(x, cache.state(self.layer))?;
        cache.set_state(self.layer, state);
        Ok(out)
    }
}

/// What a residual unit runs on its normed input.
#[allow(missing_debug_implementations)]
pub enum Op {
    Rows(Box<dyn FeedForward>),
    Sequence(Box<dyn SeqMixer>),
    Batch(Box<dyn BatchMixer>),
}

/// `x += scale * post_norm(op(norm(x)))`.
#[allow(missing_debug_implementations)]
pub struct Residual {
    pub norm: Tensor,
    pub op: Op,
    /// Gemma's norm of the op's output before the residual.
    pub post_norm: Option<Tensor>,
    /// Granite's `residual_multiplier`.
    pub scale: Option<f64>,
}

impl Residual {
    pub fn new(norm: Tensor, op: Op) -> Self {
        Self { norm, op, post_norm: None, scale: None }
    }
}

/// The two residual units of a Llama-style layer under `prefix` (`model.layers.3`): the
/// mixer after `input_layernorm`, the feed-forward after `post_attention_layernorm`.
pub fn pre_norm_layer(
    ckpt: &crate::engine::mlx::Checkpoint,
    prefix: &str,
    mixer: Op,
    ffn: Op,
    device: &Device,
) -> std::result::Result<[Residual; 2], crate::engine::EngineError> {
    Ok([
        Residual::new(ckpt.tensor(&format!("{prefix}.input_layernorm.weight"), device)?, mixer),
        Residual::new(ckpt.tensor(&format!("{prefix}.post_attention_layernorm.weight"), device)?, ffn),
    ])
}

/// What the decoder needs beyond its weights.
#[derive(Debug, Clone)]
pub struct StackSpec {
    pub name: String,
    pub context_length: usize,
    /// Cache entries (attention or recurrent) per sequence.
    pub cache_layers: usize,
    pub rms_eps: f64,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden); Granite: `embedding_multiplier`).
    pub embed_scale: Option<f64>,
    /// Logits divided by this (Granite: `logits_scaling`).
    pub logits_divisor: Option<f64>,
}

impl StackSpec {
    /// A decoder without embedding or logit scaling.
    pub fn new(name: &str, context_length: usize, cache_layers: usize, rms_eps: f64) -> Self {
        Self { name: name.into(), context_length, cache_layers, rms_eps, embed_scale: None, logits_divisor: None }
    }
}

#[allow(missing_debug_implementations)]
pub struct Stack {
    pub spec: StackSpec,
    embeddings: Embeddings,
    units: Vec<Residual>,
    norm: Tensor,
    head: Head,
}

impl Stack {
    pub fn new(spec: StackSpec, embeddings: Embeddings, units: Vec<Residual>, norm: Tensor, head: Head) -> Self {
        Self { spec, embeddings, units, norm, head }
    }

    fn device(&self) -> &Device {
        self.norm.device()
    }
}

impl CausalLm for Stack {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        forward_one(self, tokens, cache)
    }

    fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let spec = &self.spec;
        let ragged = Ragged::new(batch, spec.context_length)?;
        if ragged.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.device();
        let mut x = self.embeddings.lookup(&ragged.tokens, device)?.unsqueeze(0)?;
        if let Some(scale) = spec.embed_scale {
            x = (x * scale)?;
        }
        for unit in &self.units {
            let h = rms_norm(&x, &unit.norm, spec.rms_eps)?;
            let mut h = match &unit.op {
                Op::Rows(ffn) => ffn.forward(&h)?,
                Op::Sequence(mixer) => {
                    ragged.per_sequence(&h, batch, |x, cache, masks| mixer.forward(x, cache, masks))?
                }
                Op::Batch(mixer) => mixer.forward(&h, batch, &ragged)?,
            };
            if let Some(norm) = &unit.post_norm {
                h = rms_norm(&h, norm, spec.rms_eps)?;
            }
            if let Some(scale) = unit.scale {
                h = (h * scale)?;
            }
            x = (x + h)?;
        }
        ragged.advance(batch);
        // Only each sequence's last position needs logits.
        let last = rms_norm(&ragged.last_rows(&x)?, &self.norm, spec.rms_eps)?.squeeze(0)?;
        let mut logits = self.head.forward(&last)?;
        if let Some(divisor) = spec.logits_divisor {
            logits = (logits / divisor)?;
        }
        logits.to_dtype(DType::F32)?.to_vec2()
    }

    fn batches(&self) -> bool {
        true
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.cache_layers, self.spec.context_length)
    }

    fn context_length(&self) -> usize {
        self.spec.context_length
    }
}
