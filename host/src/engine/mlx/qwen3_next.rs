//! Qwen3-Next (mlx-lm `qwen3_next`): a hybrid of gated delta-net linear attention
//! ([`super::gated_delta`]) and, every `full_attention_interval`-th layer, full attention
//! with an output gate; the feed-forward is a sparse MoE with a sigmoid-gated shared expert.
//! Qwen3.5 ([`super::qwen3_5`]) is the same decoder with separate input projections.
//!
//! The checkpoints hold norm weights as final multipliers (mlx-lm's `sanitize` folded in the
//! `+1` of the Hugging Face `(1 + w)` norms), so every norm here is a plain `rms_norm(x)·w`.

use candle_core::{D, Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use std::sync::Arc;

use super::archs::rope_from_scaling;
use super::dense::RopeSpec;
use super::gated_delta::{DeltaNetSpec, GatedDeltaNet};
use super::moe::{Experts, Glu, Mlp};
use super::{Checkpoint, MlxLinear};
use crate::engine::arch::Loaded;
use crate::engine::layers::embedding::{Embeddings, Head};
use crate::engine::layers::{FeedForward, Op, Recurrent, SeqMasks, SeqMixer, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::{layer_progress, repeat_kv, rms_norm};
use crate::engine::{EngineError, KvCache};

/// `config.json` of a `qwen3_next` checkpoint (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub linear_num_value_heads: usize,
    pub linear_num_key_heads: usize,
    pub linear_key_head_dim: usize,
    pub linear_value_head_dim: usize,
    pub linear_conv_kernel_dim: usize,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    pub decoder_sparse_step: usize,
    pub shared_expert_intermediate_size: usize,
    pub moe_intermediate_size: usize,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    #[serde(default)]
    pub norm_topk_prob: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "four")]
    pub full_attention_interval: usize,
}

fn four() -> usize {
    4
}

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        Self::deserialize(config).map_err(|e| EngineError::Metadata(format!("qwen3_next config.json: {e}")))
    }

    pub fn spec(&self) -> std::result::Result<HybridSpec, EngineError> {
        let rope_dims = (self.head_dim as f64 * self.partial_rotary_factor) as usize;
        let rope =
            rope_from_scaling(rope_dims, self.rope_theta, self.rope_scaling.as_ref(), self.max_position_embeddings)?;
        let step = self.decoder_sparse_step.max(1);
        let sparse = (0..self.num_hidden_layers)
            .map(|i| !self.mlp_only_layers.contains(&i) && self.num_experts > 0 && (i + 1).is_multiple_of(step))
            .collect();
        Ok(HybridSpec {
            arch: String::from("qwen3_next"),
            prefix: String::from("model"),
            head: String::from("lm_head"),
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim: self.head_dim,
            rms_eps: self.rms_norm_eps,
            context_length: self.max_position_embeddings,
            tied_embeddings: self.tie_word_embeddings,
            rope,
            delta_net: DeltaNetSpec {
                key_heads: self.linear_num_key_heads,
                value_heads: self.linear_num_value_heads,
                key_head_dim: self.linear_key_head_dim,
                value_head_dim: self.linear_value_head_dim,
                conv_kernel: self.linear_conv_kernel_dim,
                fused_projections: true,
            },
            full_attention_interval: self.full_attention_interval,
            sparse,
            moe: MoeSpec {
                experts: self.num_experts,
                top_k: self.num_experts_per_tok,
                norm_topk_prob: self.norm_topk_prob,
            },
        })
    }
}

/// How the router picks experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSpec {
    pub experts: usize,
    pub top_k: usize,
    /// Renormalise the top-k probabilities to sum to one.
    pub norm_topk_prob: bool,
}

/// Everything the hybrid decoder needs, from either architecture's `config.json`.
#[derive(Debug, Clone)]
pub struct HybridSpec {
    pub arch: String,
    /// Tensor name prefix of the decoder (`model`, `language_model.model`).
    pub prefix: String,
    /// The output head (`lm_head`, `language_model.lm_head`); unused when tied.
    pub head: String,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f64,
    pub context_length: usize,
    pub tied_embeddings: bool,
    /// RoPE of the full-attention layers (partial: the leading `rope.dims` of each head).
    pub rope: RopeSpec,
    pub delta_net: DeltaNetSpec,
    /// Layer `i` is full attention when `(i + 1) % full_attention_interval == 0`.
    pub full_attention_interval: usize,
    /// Per layer: sparse MoE (else a dense SwiGLU MLP of `intermediate_size`).
    pub sparse: Vec<bool>,
    pub moe: MoeSpec,
}

impl HybridSpec {
    fn is_linear(&self, layer: usize) -> bool {
        !(layer + 1).is_multiple_of(self.full_attention_interval.max(1))
    }
}

/// `Qwen3NextSparseMoeBlock`: softmax router, top-k experts (SwitchGLU), plus a shared
/// expert scaled by `sigmoid(shared_expert_gate(x))`.
struct SparseMoe {
    spec: MoeSpec,
    router: MlxLinear,
    experts: Experts,
    shared: Mlp,
    shared_gate: MlxLinear,
}

impl FeedForward for SparseMoe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        SparseMoe::forward(self, x)
    }
}

impl SparseMoe {
    fn load(ckpt: &Checkpoint, prefix: &str, spec: MoeSpec, device: &Device) -> std::result::Result<Self, EngineError> {
        if spec.top_k == 0 || spec.top_k > spec.experts {
            return Err(EngineError::Metadata(format!("{prefix}: top-{} of {} experts", spec.top_k, spec.experts)));
        }
        Ok(Self {
            spec,
            router: ckpt.packed_linear(&format!("{prefix}.gate"), device)?,
            experts: Experts::load(ckpt, &format!("{prefix}.switch_mlp"), spec.experts, Glu::Swiglu, device)?,
            shared: Mlp::load(ckpt, &format!("{prefix}.shared_expert"), device)?,
            shared_gate: ckpt.packed_linear(&format!("{prefix}.shared_expert_gate"), device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = x.dim(D::Minus1)?;
        let xs = x.reshape(((), hidden))?;
        // Routing is decided on the host: it is a few numbers per token, and grouping the
        // tokens by expert turns the experts into dense matmuls over just their tokens.
        let probs: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&self.router.forward(&xs)?)?.to_vec2()?;
        let routes: Vec<Vec<(usize, f32)>> = probs
            .iter()
            .map(|p| {
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
                order.truncate(self.spec.top_k);
                let total: f32 = if self.spec.norm_topk_prob { order.iter().map(|&e| p[e]).sum() } else { 1.0 };
                order.into_iter().map(|e| (e, p[e] / total)).collect()
            })
            .collect();
        let out = self.experts.forward(&xs, &routes)?;
        let shared =
            candle_nn::ops::sigmoid(&self.shared_gate.forward(&xs)?)?.broadcast_mul(&self.shared.forward(&xs)?)?;
        (out + shared)?.reshape(dims)
    }
}

/// `Qwen3NextAttention`: q/k RMSNorm per head, partial RoPE, and an output gate that
/// `q_proj` produces alongside the queries (per head `[q | gate]`).
struct GatedAttention {
    spec: Arc<HybridSpec>,
    /// Its entry in the cache.
    layer: usize,
    q: MlxLinear,
    k: MlxLinear,
    v: MlxLinear,
    o: MlxLinear,
    q_norm: Tensor,
    k_norm: Tensor,
}

impl GatedAttention {
    fn load(
        ckpt: &Checkpoint,
        spec: &Arc<HybridSpec>,
        layer: usize,
        prefix: &str,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| ckpt.packed_linear(&format!("{prefix}.{name}"), device);
        Ok(Self {
            spec: Arc::clone(spec),
            layer,
            q: linear("q_proj")?,
            k: linear("k_proj")?,
            v: linear("v_proj")?,
            o: linear("o_proj")?,
            q_norm: ckpt.tensor(&format!("{prefix}.q_norm.weight"), device)?,
            k_norm: ckpt.tensor(&format!("{prefix}.k_norm.weight"), device)?,
        })
    }
}

impl SeqMixer for GatedAttention {
    fn forward(&self, x: &Tensor, cache: &mut KvCache, masks: &SeqMasks<'_>) -> Result<Tensor> {
        let (spec, index) = (&*self.spec, self.layer);
        let mask = masks.causal(None)?;
        let (b, t, _) = x.dims3()?;
        let hd = spec.head_dim;
        let pos = cache.len();
        let q_gate = self.q.forward(x)?.reshape((b, t, spec.heads, 2 * hd))?;
        let q = q_gate.narrow(D::Minus1, 0, hd)?.contiguous()?;
        let gate = q_gate.narrow(D::Minus1, hd, hd)?.reshape((b, t, spec.heads * hd))?;
        let k = self.k.forward(x)?.reshape((b, t, spec.kv_heads, hd))?;
        let v = self.v.forward(x)?.reshape((b, t, spec.kv_heads, hd))?.transpose(1, 2)?.contiguous()?;
        let q = rms_norm(&q, &self.q_norm, spec.rms_eps)?.transpose(1, 2)?.contiguous()?;
        let k = rms_norm(&k, &self.k_norm, spec.rms_eps)?.transpose(1, 2)?.contiguous()?;
        let q = spec.rope.apply(&q, pos)?;
        let k = spec.rope.apply(&k, pos)?;
        let (k, v) = cache.append(index, &k, &v)?;
        let group = spec.heads / spec.kv_heads.max(1);
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        let mut scores = (q.contiguous()?.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        if let Some(mask) = &mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, spec.heads * hd))?;
        self.o.forward(&(out * candle_nn::ops::sigmoid(&gate)?)?)
    }
}

/// The hybrid decoder of Qwen3-Next and Qwen3.5 on the shared [`Stack`]: gated delta-net
/// layers with full (gated) attention every `full_attention_interval`, then a MoE or MLP.
pub fn load(
    ckpt: &Checkpoint,
    spec: HybridSpec,
    device: &Device,
    progress: bool,
) -> std::result::Result<Stack, EngineError> {
    if spec.heads == 0 || spec.kv_heads == 0 || !spec.heads.is_multiple_of(spec.kv_heads) {
        return Err(EngineError::Metadata(format!(
            "{}: {} attention heads cannot share {} kv heads",
            spec.arch, spec.heads, spec.kv_heads
        )));
    }
    if spec.sparse.len() != spec.layers {
        return Err(EngineError::Metadata(format!("{}: MoE layout does not cover every layer", spec.arch)));
    }
    let spec = Arc::new(spec);
    let p = &spec.prefix;
    let embeddings = Embeddings::load_dense(ckpt, &format!("{p}.embed_tokens"), device)?;
    let head = Head::tied_or(ckpt, &spec.head, spec.tied_embeddings, &embeddings, || {
        Ok(Head::Dense(ckpt.weight(&spec.head, device)?))
    })?;
    let bar = layer_progress(progress, spec.layers, &spec.arch);
    let mut units = Vec::with_capacity(2 * spec.layers);
    for i in 0..spec.layers {
        let l = format!("{p}.layers.{i}");
        let mixer = if spec.is_linear(i) {
            let net = GatedDeltaNet::load(ckpt, &format!("{l}.linear_attn"), spec.delta_net, spec.rms_eps, device)?;
            Op::Sequence(Box::new(Recurrent { layer: i, mixer: net }))
        } else {
            Op::Sequence(Box::new(GatedAttention::load(ckpt, &spec, i, &format!("{l}.self_attn"), device)?))
        };
        let ffn: Box<dyn FeedForward> = if spec.sparse[i] {
            Box::new(SparseMoe::load(ckpt, &format!("{l}.mlp"), spec.moe, device)?)
        } else {
            Box::new(Mlp::load(ckpt, &format!("{l}.mlp"), device)?)
        };
        units.extend(pre_norm_layer(ckpt, &l, mixer, Op::Rows(ffn), device)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let stack = StackSpec {
        name: spec.arch.clone(),
        context_length: spec.context_length,
        cache_layers: spec.layers,
        rms_eps: spec.rms_eps,
        embed_scale: None,
        logits_divisor: None,
    };
    Ok(Stack::new(stack, embeddings, units, ckpt.tensor(&format!("{p}.norm.weight"), device)?, head))
}

/// The architecture registry's entry point ([`crate::engine::arch`]).
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(load(ckpt, Config::from_json(&ckpt.config)?.spec()?, device, progress)?))
}
