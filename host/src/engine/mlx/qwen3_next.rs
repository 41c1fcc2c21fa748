//! Qwen3-Next (mlx-lm `qwen3_next`): a hybrid of gated delta-net linear attention
//! ([`super::gated_delta`]) and, every `full_attention_interval`-th layer, full attention
//! with an output gate; the feed-forward is a sparse MoE with a sigmoid-gated shared expert.
//! Qwen3.5 ([`super::qwen3_5`]) is the same decoder with separate input projections.
//!
//! The checkpoints hold norm weights as final multipliers (mlx-lm's `sanitize` folded in the
//! `+1` of the Hugging Face `(1 + w)` norms), so every norm here is a plain `rms_norm(x)·w`.

use candle_core::{D, DType, Device, IndexOp, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::archs::rope_from_scaling;
use super::dense::RopeSpec;
use super::gated_delta::{DeltaNetSpec, GatedDeltaNet};
use super::{Checkpoint, MlxLinear};
use crate::engine::models::{CausalLm, attention_mask, layer_progress, repeat_kv, rms_norm};
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

/// SwiGLU feed-forward: `down(silu(gate(x)) * up(x))`.
struct Mlp {
    gate: MlxLinear,
    up: MlxLinear,
    down: MlxLinear,
}

impl Mlp {
    fn load(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        Ok(Self {
            gate: ckpt.packed_linear(&format!("{prefix}.gate_proj"), device)?,
            up: ckpt.packed_linear(&format!("{prefix}.up_proj"), device)?,
            down: ckpt.packed_linear(&format!("{prefix}.down_proj"), device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?)
    }
}

/// `Qwen3NextSparseMoeBlock`: softmax router, top-k experts (SwitchGLU), plus a shared
/// expert scaled by `sigmoid(shared_expert_gate(x))`.
struct SparseMoe {
    spec: MoeSpec,
    router: MlxLinear,
    experts: Vec<Mlp>,
    shared: Mlp,
    shared_gate: MlxLinear,
}

impl SparseMoe {
    fn load(ckpt: &Checkpoint, prefix: &str, spec: MoeSpec, device: &Device) -> std::result::Result<Self, EngineError> {
        // Stacked `[experts, out, in]`, split once so that each expert is a plain matmul
        // (packed when exact).
        let stacked = |name: &str| ckpt.packed_experts(&format!("{prefix}.switch_mlp.{name}"), spec.experts, device);
        let (gates, ups, downs) = (stacked("gate_proj")?, stacked("up_proj")?, stacked("down_proj")?);
        let experts = gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down }).collect();
        if spec.top_k == 0 || spec.top_k > spec.experts {
            return Err(EngineError::Metadata(format!("{prefix}: top-{} of {} experts", spec.top_k, spec.experts)));
        }
        Ok(Self {
            spec,
            router: ckpt.packed_linear(&format!("{prefix}.gate"), device)?,
            experts,
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
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.spec.experts];
        for (token, p) in probs.iter().enumerate() {
            let mut order: Vec<usize> = (0..p.len()).collect();
            order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            order.truncate(self.spec.top_k);
            let total: f32 = if self.spec.norm_topk_prob { order.iter().map(|&e| p[e]).sum() } else { 1.0 };
            for e in order {
                let (rows, weights) = &mut routed[e];
                rows.push(token as u32);
                weights.push(p[e] / total);
            }
        }
        let mut out = xs.zeros_like()?;
        for (expert, (rows, weights)) in self.experts.iter().zip(routed) {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::from_vec(rows, n, xs.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), xs.device())?.to_dtype(xs.dtype())?;
            let y = expert.forward(&xs.index_select(&rows, 0)?)?.broadcast_mul(&weights)?;
            out = out.index_add(&rows, &y, 0)?;
        }
        let shared =
            candle_nn::ops::sigmoid(&self.shared_gate.forward(&xs)?)?.broadcast_mul(&self.shared.forward(&xs)?)?;
        (out + shared)?.reshape(dims)
    }
}

/// `Qwen3NextAttention`: q/k RMSNorm per head, partial RoPE, and an output gate that
/// `q_proj` produces alongside the queries (per head `[q | gate]`).
struct GatedAttention {
    q: MlxLinear,
    k: MlxLinear,
    v: MlxLinear,
    o: MlxLinear,
    q_norm: Tensor,
    k_norm: Tensor,
}

impl GatedAttention {
    fn load(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| ckpt.packed_linear(&format!("{prefix}.{name}"), device);
        Ok(Self {
            q: linear("q_proj")?,
            k: linear("k_proj")?,
            v: linear("v_proj")?,
            o: linear("o_proj")?,
            q_norm: ckpt.tensor(&format!("{prefix}.q_norm.weight"), device)?,
            k_norm: ckpt.tensor(&format!("{prefix}.k_norm.weight"), device)?,
        })
    }

    fn forward(
        &self,
        spec: &HybridSpec,
        index: usize,
        x: &Tensor,
        cache: &mut KvCache,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
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
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, spec.heads * hd))?;
        self.o.forward(&(out * candle_nn::ops::sigmoid(&gate)?)?)
    }
}

/// The token mixer of one layer.
enum Mixer {
    Linear(GatedDeltaNet),
    Attention(GatedAttention),
}

enum FeedForward {
    Dense(Mlp),
    Sparse(SparseMoe),
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    mixer: Mixer,
    ffn: FeedForward,
}

/// The hybrid decoder of Qwen3-Next and Qwen3.5.
pub struct Qwen3Next {
    spec: HybridSpec,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
}

impl std::fmt::Debug for Qwen3Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3Next").field("spec", &self.spec).finish_non_exhaustive()
    }
}

impl Qwen3Next {
    pub fn load(
        ckpt: &Checkpoint,
        spec: HybridSpec,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        if spec.heads == 0 || spec.kv_heads == 0 || !spec.heads.is_multiple_of(spec.kv_heads) {
            return Err(EngineError::Metadata(format!(
                "{}: {} attention heads cannot share {} kv heads",
                spec.arch, spec.heads, spec.kv_heads
            )));
        }
        if spec.sparse.len() != spec.layers {
            return Err(EngineError::Metadata(format!("{}: MoE layout does not cover every layer", spec.arch)));
        }
        let p = &spec.prefix;
        let embeddings = ckpt.weight(&format!("{p}.embed_tokens"), device)?;
        let head = if spec.tied_embeddings || !ckpt.has(&format!("{}.weight", spec.head)) {
            embeddings.clone()
        } else {
            ckpt.weight(&spec.head, device)?
        };
        let bar = layer_progress(progress, spec.layers, &spec.arch);
        let mut layers = Vec::with_capacity(spec.layers);
        for i in 0..spec.layers {
            let l = format!("{p}.layers.{i}");
            let mixer = if spec.is_linear(i) {
                Mixer::Linear(GatedDeltaNet::load(
                    ckpt,
                    &format!("{l}.linear_attn"),
                    spec.delta_net,
                    spec.rms_eps,
                    device,
                )?)
            } else {
                Mixer::Attention(GatedAttention::load(ckpt, &format!("{l}.self_attn"), device)?)
            };
            let ffn = if spec.sparse[i] {
                FeedForward::Sparse(SparseMoe::load(ckpt, &format!("{l}.mlp"), spec.moe, device)?)
            } else {
                FeedForward::Dense(Mlp::load(ckpt, &format!("{l}.mlp"), device)?)
            };
            layers.push(Layer {
                input_norm: ckpt.tensor(&format!("{l}.input_layernorm.weight"), device)?,
                post_attention_norm: ckpt.tensor(&format!("{l}.post_attention_layernorm.weight"), device)?,
                mixer,
                ffn,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = ckpt.tensor(&format!("{p}.norm.weight"), device)?;
        Ok(Self { spec, embeddings, layers, norm, head })
    }
}

impl CausalLm for Qwen3Next {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let s = &self.spec;
        let device = self.norm.device();
        let t = tokens.len();
        let past = cache.len();
        if t == 0 {
            candle_core::bail!("no tokens to run");
        }
        if past + t > s.context_length {
            candle_core::bail!("sequence of {} tokens exceeds the context of {}", past + t, s.context_length);
        }
        let ids = Tensor::new(tokens, device)?;
        let mut x = self.embeddings.index_select(&ids, 0)?.unsqueeze(0)?;
        // A single new token sees every cached one: no mask needed.
        let mask = if t > 1 { Some(attention_mask(t, past, None, device)?) } else { None };
        for (index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, s.rms_eps)?;
            let h = match &layer.mixer {
                Mixer::Linear(net) => {
                    let (out, state) = net.forward(&h, cache.state(index))?;
                    cache.set_state(index, state);
                    out
                }
                Mixer::Attention(attn) => attn.forward(s, index, &h, cache, mask.as_ref())?,
            };
            x = (x + h)?;
            let h = rms_norm(&x, &layer.post_attention_norm, s.rms_eps)?;
            let h = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h)?,
                FeedForward::Sparse(moe) => moe.forward(&h)?,
            };
            x = (x + h)?;
        }
        cache.advance(t);
        let last = x.i((.., t - 1..t, ..))?;
        let last = rms_norm(&last, &self.norm, s.rms_eps)?;
        last.flatten_all()?.unsqueeze(0)?.matmul(&self.head.t()?)?.flatten_all()?.to_dtype(DType::F32)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.spec.layers, self.spec.context_length)
    }

    fn context_length(&self) -> usize {
        self.spec.context_length
    }
}
