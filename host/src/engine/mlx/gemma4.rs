//! Gemma 4 text (mlx-lm `gemma4` / `gemma4_text`), both the E2B/E4B-style dense models and
//! the 26B-A4B-style MoE one.
//!
//! What sets it apart from Gemma 3:
//! - plain `w` RMSNorms (not `1 + w`), attention scale 1 with q/k norms, and values
//!   RMS-normalised without a weight;
//! - full-attention layers have their own head dim (`global_head_dim`) and a
//!   "proportional" RoPE that rotates only the first pairs of the full head dim;
//! - per-layer inputs: a second embedding table plus a projection of the embeddings give
//!   every layer its own small input, gated into the residual after the MLP;
//! - KV sharing: the last `num_kv_shared_layers` layers compute no keys or values and
//!   attend over the cache entry of the last earlier layer of the same type;
//! - optional `attention_k_eq_v` on full layers (values are the un-normed keys);
//! - optional MoE block in parallel with the MLP (router on the un-normed residual,
//!   softmax over the top-k scores times a per-expert scale, GeGLU experts);
//! - every layer's output times `layer_scalar`, and a final logit softcap.

use candle_core::{D, DType, Device, Module, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::archs::{parse, rope_from_scaling};
use super::dense::{Activation, RopeSpec};
use super::switch::{Route, SwitchGlu, score_rows, softmax, top_k};
use super::{Checkpoint, MlxLinear};
use crate::engine::arch::Loaded;
use crate::engine::layers::attention::{KvProjection, SharedKvAttention};
use crate::engine::layers::embedding::softcap;
use crate::engine::layers::{Ragged, SeqMixer};
use crate::engine::models::{CausalLm, SeqInput, forward_one, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

type CResult<T> = candle_core::Result<T>;

/// `text_config` of a `gemma4` checkpoint (or the whole `config.json` of a `gemma4_text`
/// one), with mlx-lm's `ModelArgs` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    #[serde(default = "d_global_head_dim")]
    pub global_head_dim: Option<usize>,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_one")]
    pub num_key_value_heads: usize,
    pub num_global_key_value_heads: Option<usize>,
    #[serde(default = "d_kv_shared")]
    pub num_kv_shared_layers: usize,
    #[serde(default = "d_per_layer")]
    pub hidden_size_per_layer_input: usize,
    pub rope_parameters: Option<Value>,
    #[serde(default = "d_window")]
    pub sliding_window: usize,
    #[serde(default = "d_pattern")]
    pub sliding_window_pattern: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub attention_k_eq_v: bool,
    #[serde(default = "d_softcap")]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default = "d_true")]
    pub use_double_wide_mlp: bool,
    #[serde(default)]
    pub enable_moe_block: bool,
    pub num_experts: Option<usize>,
    pub top_k_experts: Option<usize>,
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
}

fn d_hidden() -> usize {
    1536
}
fn d_layers() -> usize {
    35
}
fn d_intermediate() -> usize {
    6144
}
fn d_heads() -> usize {
    8
}
fn d_head_dim() -> usize {
    256
}
fn d_global_head_dim() -> Option<usize> {
    Some(512)
}
fn d_eps() -> f64 {
    1e-6
}
fn d_one() -> usize {
    1
}
fn d_kv_shared() -> usize {
    20
}
fn d_per_layer() -> usize {
    256
}
fn d_window() -> usize {
    512
}
fn d_pattern() -> usize {
    5
}
fn d_max_pos() -> usize {
    131072
}
fn d_softcap() -> Option<f64> {
    Some(30.0)
}
fn d_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LayerType {
    Sliding,
    Full,
}

impl LayerType {
    fn key(self) -> &'static str {
        match self {
            Self::Sliding => "sliding_attention",
            Self::Full => "full_attention",
        }
    }
}

impl Config {
    fn layer_types(&self) -> Result<Vec<LayerType>, EngineError> {
        let names: Vec<String> = match &self.layer_types {
            Some(names) => names.clone(),
            // mlx-lm: (pattern - 1) sliding layers then one full layer, repeated.
            None => (0..self.num_hidden_layers)
                .map(|i| {
                    let full = (i + 1).is_multiple_of(self.sliding_window_pattern.max(1));
                    String::from(if full { "full_attention" } else { "sliding_attention" })
                })
                .collect(),
        };
        if names.len() != self.num_hidden_layers {
            return Err(meta(format!("{} layer_types for {} layers", names.len(), self.num_hidden_layers)));
        }
        names
            .iter()
            .map(|n| match n.as_str() {
                "sliding_attention" => Ok(LayerType::Sliding),
                "full_attention" => Ok(LayerType::Full),
                other => Err(meta(format!("layer type `{other}` is not supported"))),
            })
            .collect()
    }

    /// mlx-lm's default `rope_parameters` when the config has none.
    fn rope_parameters(&self) -> Value {
        self.rope_parameters.clone().unwrap_or_else(|| {
            serde_json::json!({
                "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0, "rope_type": "proportional"},
                "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10_000.0, "rope_type": "default"},
            })
        })
    }

    /// mlx-lm's `initialize_rope` for one layer type, over the layer's whole head dim.
    fn rope(&self, kind: LayerType, head_dim: usize) -> Result<RopeSpec, EngineError> {
        let all = self.rope_parameters();
        let params = all.get(kind.key()).cloned().unwrap_or(Value::Null);
        let num = |key: &str, default: f64| params.get(key).and_then(Value::as_f64).unwrap_or(default);
        let base = num("rope_theta", 10_000.0);
        let kind = params.get("type").or_else(|| params.get("rope_type")).and_then(Value::as_str);
        if kind == Some("proportional") {
            return Ok(proportional_rope(head_dim, num("partial_rotary_factor", 1.0), base, num("factor", 1.0)));
        }
        rope_from_scaling(head_dim, base as f32, Some(&params), self.max_position_embeddings)
    }

    fn head_dim(&self, kind: LayerType) -> usize {
        match (kind, self.global_head_dim) {
            (LayerType::Full, Some(d)) if d > 0 => d,
            _ => self.head_dim,
        }
    }

    /// First layer that reuses an earlier layer's keys and values.
    fn first_kv_shared(&self) -> usize {
        self.num_hidden_layers.saturating_sub(self.num_kv_shared_layers)
    }
}

/// mlx-lm's `ProportionalRoPE`: rotate-half over the whole head dim, where only the first
/// `dims * partial / 2` pairs turn (period `factor * base^(2i/dims)`, note `/dims`, not
/// `/rotated`) and the rest have an infinite period, i.e. pass through. This is not the
/// same as rotating the first `rotated` dims: pair i couples dims i and i + dims/2.
fn proportional_rope(dims: usize, partial: f64, base: f64, factor: f64) -> RopeSpec {
    let rotated = (dims as f64 * partial) as usize;
    let inv_freq = (0..dims / 2)
        .map(|i| if 2 * i < rotated { (1.0 / (factor * base.powf((2 * i) as f64 / dims as f64))) as f32 } else { 0.0 })
        .collect();
    RopeSpec { dims, inv_freq, position_scale: 1.0, input_scale: 1.0 }
}

fn meta(message: impl Into<String>) -> EngineError {
    EngineError::Metadata(format!("gemma4: {}", message.into()))
}

/// GeGLU MLP.
#[derive(Debug)]
struct Mlp {
    gate: MlxLinear,
    up: MlxLinear,
    down: MlxLinear,
}

impl Mlp {
    fn load(ckpt: &Checkpoint, prefix: &str, device: &Device) -> Result<Self, EngineError> {
        Ok(Self {
            gate: ckpt.packed_linear(&format!("{prefix}.gate_proj"), device)?,
            up: ckpt.packed_linear(&format!("{prefix}.up_proj"), device)?,
            down: ckpt.packed_linear(&format!("{prefix}.down_proj"), device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> CResult<Tensor> {
        self.down.forward(&(self.gate.forward(x)?.gelu()? * self.up.forward(x)?)?)
    }
}

/// The MoE block that runs beside the MLP.
#[derive(Debug)]
struct Moe {
    /// `router.scale * hidden^-0.5`, the router's RMSNorm weight.
    router_norm: Tensor,
    router: MlxLinear,
    per_expert_scale: Vec<f32>,
    top_k: usize,
    experts: SwitchGlu,
    pre_norm: Tensor,
    post_norm_mlp: Tensor,
    post_norm_experts: Tensor,
}

impl Moe {
    fn load(ckpt: &Checkpoint, l: &str, cfg: &Config, device: &Device) -> Result<Self, EngineError> {
        let experts = SwitchGlu::load(ckpt, &format!("{l}.experts.switch_glu"), Activation::GeluTanh, device)?;
        let top_k = cfg.top_k_experts.ok_or_else(|| meta("enable_moe_block without top_k_experts"))?;
        if top_k == 0 || top_k > experts.num_experts() {
            return Err(meta(format!("top_k_experts {top_k} with {} experts", experts.num_experts())));
        }
        let per_expert_scale: Vec<f32> = ckpt.tensor(&format!("{l}.router.per_expert_scale"), device)?.to_vec1()?;
        if per_expert_scale.len() != experts.num_experts() {
            return Err(meta(format!("{l}.router.per_expert_scale has {} entries", per_expert_scale.len())));
        }
        let norm = |name: &str| ckpt.tensor(&format!("{l}.{name}.weight"), device);
        Ok(Self {
            router_norm: (ckpt.tensor(&format!("{l}.router.scale"), device)? * (cfg.hidden_size as f64).powf(-0.5))?,
            router: ckpt.packed_linear(&format!("{l}.router.proj"), device)?,
            per_expert_scale,
            top_k,
            experts,
            pre_norm: norm("pre_feedforward_layernorm_2")?,
            post_norm_mlp: norm("post_feedforward_layernorm_1")?,
            post_norm_experts: norm("post_feedforward_layernorm_2")?,
        })
    }

    /// Top-k of the raw router scores, softmax over those k, times each expert's scale.
    fn routes(&self, h: &Tensor, eps: f64) -> CResult<Vec<Route>> {
        let scores = self.router.forward(&rms_norm(h, &self.router_norm, eps)?)?;
        Ok(score_rows(&scores)?
            .iter()
            .map(|row| {
                let chosen = top_k(row, self.top_k);
                let weights = softmax(&chosen.iter().map(|&e| row[e]).collect::<Vec<_>>());
                chosen.into_iter().zip(weights).map(|(e, w)| (e, w * self.per_expert_scale[e])).collect()
            })
            .collect())
    }

    /// The experts' half: `post_norm_2(experts(pre_norm_2(h)))` with routes from `h`.
    fn forward(&self, h: &Tensor, eps: f64) -> CResult<Tensor> {
        let dims = h.dims().to_vec();
        let flat = h.reshape(((), h.dim(D::Minus1)?))?;
        let routes = self.routes(&flat, eps)?;
        let y = self.experts.forward(&rms_norm(&flat, &self.pre_norm, eps)?, &routes)?;
        rms_norm(&y.reshape(dims)?, &self.post_norm_experts, eps)
    }
}

/// A layer's gate over its per-layer input.
#[derive(Debug)]
struct PerLayerGate {
    gate: MlxLinear,
    projection: MlxLinear,
    post_norm: Tensor,
}

#[derive(Debug)]
struct Layer {
    input_norm: Tensor,
    attention: SharedKvAttention,
    post_attn_norm: Tensor,
    pre_ffn_norm: Tensor,
    mlp: Mlp,
    post_ffn_norm: Tensor,
    moe: Option<Moe>,
    per_layer: Option<PerLayerGate>,
    layer_scalar: Tensor,
}

/// The model-level half of the per-layer inputs.
#[derive(Debug)]
struct PerLayerInputs {
    /// `[vocab_per_layer, layers * width]`.
    embeddings: Tensor,
    projection: MlxLinear,
    projection_norm: Tensor,
    width: usize,
}

impl PerLayerInputs {
    /// `[b, t, layers, width]`: `(norm(proj(h0) / sqrt(d)) + embed(ids) * sqrt(width)) / sqrt 2`,
    /// with `h0` the scaled token embeddings.
    fn compute(&self, ids: &Tensor, h0: &Tensor, layers: usize, eps: f64) -> CResult<Tensor> {
        let (b, t, hidden) = h0.dims3()?;
        let shape = (b, t, layers, self.width);
        let embedded = (self.embeddings.index_select(ids, 0)?.reshape(shape)? * (self.width as f64).sqrt())?;
        let projected = (self.projection.forward(h0)? * (hidden as f64).powf(-0.5))?.reshape(shape)?;
        let projected = rms_norm(&projected, &self.projection_norm, eps)?;
        (projected + embedded)? * 0.5f64.sqrt()
    }
}

#[allow(missing_debug_implementations)]
pub struct Gemma4 {
    embeddings: Tensor,
    per_layer_inputs: Option<PerLayerInputs>,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
    hidden: usize,
    eps: f64,
    softcap: Option<f64>,
    context_length: usize,
}

impl Gemma4 {
    pub fn load(ckpt: &Checkpoint, device: &Device, progress: bool) -> Result<Self, EngineError> {
        let (cfg, prefix, head_name) = match ckpt.model_type()?.as_str() {
            "gemma4_text" => (parse::<Config>(&ckpt.config, "gemma4_text")?, "model", "lm_head"),
            _ => {
                let text = ckpt.config.get("text_config").ok_or_else(|| meta("config.json has no `text_config`"))?;
                (parse::<Config>(text, "gemma4")?, "language_model.model", "language_model.lm_head")
            }
        };
        let device = device.clone();
        let types = cfg.layer_types()?;
        let first_shared = cfg.first_kv_shared();
        let eps = cfg.rms_norm_eps;
        let tensor = |name: &str| ckpt.tensor(name, &device);
        let linear = |name: &str| ckpt.packed_linear(name, &device);

        let embeddings = ckpt.weight(&format!("{prefix}.embed_tokens"), &device)?;
        let head = if cfg.tie_word_embeddings || !ckpt.has(&format!("{head_name}.weight")) {
            embeddings.clone()
        } else {
            ckpt.weight(head_name, &device)?
        };
        let per_layer_inputs = if cfg.hidden_size_per_layer_input > 0 {
            Some(PerLayerInputs {
                embeddings: ckpt.weight(&format!("{prefix}.embed_tokens_per_layer"), &device)?,
                projection: linear(&format!("{prefix}.per_layer_model_projection"))?,
                projection_norm: tensor(&format!("{prefix}.per_layer_projection_norm.weight"))?,
                width: cfg.hidden_size_per_layer_input,
            })
        } else {
            None
        };

        let bar = layer_progress(progress, cfg.num_hidden_layers, "gemma4");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, &kind) in types.iter().enumerate() {
            let l = format!("{prefix}.layers.{i}");
            let head_dim = cfg.head_dim(kind);
            let k_eq_v = cfg.attention_k_eq_v && kind == LayerType::Full;
            let kv_heads = match cfg.num_global_key_value_heads {
                Some(n) if k_eq_v => n,
                _ => cfg.num_key_value_heads,
            };
            let (kv, kv_source) = if i < first_shared {
                let kv = KvProjection {
                    k: linear(&format!("{l}.self_attn.k_proj"))?,
                    v: if k_eq_v { None } else { Some(linear(&format!("{l}.self_attn.v_proj"))?) },
                    k_norm: tensor(&format!("{l}.self_attn.k_norm.weight"))?,
                    kv_heads,
                };
                (Some(kv), i)
            } else {
                // mlx-lm: the last non-shared layer of the same type.
                let source = (0..first_shared)
                    .rev()
                    .find(|&j| types[j] == kind)
                    .ok_or_else(|| meta(format!("KV-shared layer {i} has no earlier {} layer", kind.key())))?;
                (None, source)
            };
            let attention = SharedKvAttention {
                layer: i,
                q: linear(&format!("{l}.self_attn.q_proj"))?,
                q_norm: tensor(&format!("{l}.self_attn.q_norm.weight"))?,
                o: linear(&format!("{l}.self_attn.o_proj"))?,
                kv,
                kv_source,
                heads: cfg.num_attention_heads,
                head_dim,
                rope: cfg.rope(kind, head_dim)?,
                window: (kind == LayerType::Sliding).then_some(cfg.sliding_window),
                ones: Tensor::ones(head_dim, DType::F32, &device)?,
                eps,
            };
            let per_layer = if per_layer_inputs.is_some() {
                Some(PerLayerGate {
                    gate: linear(&format!("{l}.per_layer_input_gate"))?,
                    projection: linear(&format!("{l}.per_layer_projection"))?,
                    post_norm: tensor(&format!("{l}.post_per_layer_input_norm.weight"))?,
                })
            } else {
                None
            };
            layers.push(Layer {
                input_norm: tensor(&format!("{l}.input_layernorm.weight"))?,
                attention,
                post_attn_norm: tensor(&format!("{l}.post_attention_layernorm.weight"))?,
                pre_ffn_norm: tensor(&format!("{l}.pre_feedforward_layernorm.weight"))?,
                // The double-wide MLP of KV-shared layers is just wider weights.
                mlp: Mlp::load(ckpt, &format!("{l}.mlp"), &device)?,
                post_ffn_norm: tensor(&format!("{l}.post_feedforward_layernorm.weight"))?,
                moe: if cfg.enable_moe_block { Some(Moe::load(ckpt, &l, &cfg, &device)?) } else { None },
                per_layer,
                layer_scalar: if ckpt.has(&format!("{l}.layer_scalar")) {
                    tensor(&format!("{l}.layer_scalar"))?
                } else {
                    Tensor::ones(1, DType::F32, &device)?
                },
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(Self {
            embeddings,
            per_layer_inputs,
            layers,
            norm: tensor(&format!("{prefix}.norm.weight"))?,
            head,
            hidden: cfg.hidden_size,
            eps,
            softcap: cfg.final_logit_softcapping.filter(|c| *c > 0.0),
            context_length: cfg.max_position_embeddings,
        })
    }

    fn layer(
        &self,
        index: usize,
        x: &Tensor,
        pli: Option<&Tensor>,
        batch: &mut [SeqInput<'_>],
        ragged: &Ragged,
    ) -> CResult<Tensor> {
        let layer = &self.layers[index];
        let eps = self.eps;
        let h = rms_norm(x, &layer.input_norm, eps)?;
        let h = ragged.per_sequence(&h, batch, |h, cache, masks| layer.attention.forward(h, cache, masks))?;
        let x = (x + rms_norm(&h, &layer.post_attn_norm, eps)?)?;

        let mlp = layer.mlp.forward(&rms_norm(&x, &layer.pre_ffn_norm, eps)?)?;
        let ffn = match &layer.moe {
            Some(moe) => (rms_norm(&mlp, &moe.post_norm_mlp, eps)? + moe.forward(&x, eps)?)?,
            None => mlp,
        };
        let mut x = (&x + rms_norm(&ffn, &layer.post_ffn_norm, eps)?)?;

        if let (Some(gate), Some(pli)) = (&layer.per_layer, pli) {
            let g = (gate.gate.forward(&x)?.gelu()? * pli)?;
            let g = rms_norm(&gate.projection.forward(&g)?, &gate.post_norm, eps)?;
            x = (x + g)?;
        }
        x.broadcast_mul(&layer.layer_scalar)
    }
}

impl CausalLm for Gemma4 {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> CResult<Tensor> {
        forward_one(self, tokens, cache)
    }

    /// Every row through the embeddings, per-layer inputs, MLPs and experts at once;
    /// attention per sequence against its own cache.
    fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> CResult<Vec<Vec<f32>>> {
        let ragged = Ragged::new(batch, self.context_length)?;
        if ragged.is_empty() {
            return Ok(Vec::new());
        }
        let device = self.norm.device();
        let ids = Tensor::new(ragged.tokens.as_slice(), device)?;
        let mut x = (self.embeddings.index_select(&ids, 0)?.unsqueeze(0)? * (self.hidden as f64).sqrt())?;
        let pli = match &self.per_layer_inputs {
            Some(p) => Some(p.compute(&ids, &x, self.layers.len(), self.eps)?),
            None => None,
        };
        for index in 0..self.layers.len() {
            let layer_input = pli.as_ref().map(|p| p.narrow(2, index, 1)?.squeeze(2)).transpose()?;
            x = self.layer(index, &x, layer_input.as_ref(), batch, &ragged)?;
        }
        ragged.advance(batch);
        let last = rms_norm(&ragged.last_rows(&x)?, &self.norm, self.eps)?.squeeze(0)?;
        softcap(last.matmul(&self.head.t()?)?, self.softcap)?.to_dtype(DType::F32)?.to_vec2()
    }

    fn batches(&self) -> bool {
        true
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len(), self.context_length)
    }

    fn context_length(&self) -> usize {
        self.context_length
    }
}

/// The architecture registry's entry point ([`crate::engine::arch`]).
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(Gemma4::load(ckpt, device, progress)?))
}
