//! Qwen3.5 (mlx-lm `qwen3_5`, and `qwen3_5_moe` whose converted checkpoints have the same
//! layout): the Qwen3-Next hybrid decoder ([`super::qwen3_next`]) with separate
//! `in_proj_qkv` / `in_proj_z` / `in_proj_b` / `in_proj_a` projections, a dense MLP unless
//! `num_experts > 0`, and RoPE settings in `rope_parameters`.
//!
//! The model is a multimodal wrapper: the language model's fields are in `text_config`
//! (or at the top level of a text-only config), and mlx-lm's `sanitize` puts its tensors
//! under `language_model.`; only the language model is loaded.

use serde::Deserialize;
use serde_json::{Value, json};

use super::Checkpoint;
use super::archs::rope_from_scaling;
use super::gated_delta::DeltaNetSpec;
use super::qwen3_next::{HybridSpec, MoeSpec};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use candle_core::Device;

/// The language model's config (mlx-lm's `TextModelArgs`, with its defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "d_linear_v_heads")]
    pub linear_num_value_heads: usize,
    #[serde(default = "d_linear_k_heads")]
    pub linear_num_key_heads: usize,
    #[serde(default = "d_linear_k_dim")]
    pub linear_key_head_dim: usize,
    #[serde(default = "d_linear_v_dim")]
    pub linear_value_head_dim: usize,
    #[serde(default = "d_conv")]
    pub linear_conv_kernel_dim: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    pub head_dim: Option<usize>,
    #[serde(default = "d_interval")]
    pub full_attention_interval: usize,
    #[serde(default)]
    pub num_experts: usize,
    #[serde(default)]
    pub num_experts_per_tok: usize,
    #[serde(default = "d_true")]
    pub norm_topk_prob: bool,
    /// `rope_theta`, `partial_rotary_factor` and the rope type; when null, the top-level
    /// fields below apply (as in mlx-lm's `__post_init__`).
    #[serde(default = "d_rope_parameters")]
    pub rope_parameters: Option<Value>,
    #[serde(default = "d_partial")]
    pub partial_rotary_factor: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
}

fn d_hidden() -> usize {
    4096
}
fn d_intermediate() -> usize {
    14336
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_eps() -> f64 {
    1e-6
}
fn d_kv_heads() -> usize {
    8
}
fn d_max_pos() -> usize {
    131072
}
fn d_linear_v_heads() -> usize {
    64
}
fn d_linear_k_heads() -> usize {
    16
}
fn d_linear_k_dim() -> usize {
    192
}
fn d_linear_v_dim() -> usize {
    128
}
fn d_conv() -> usize {
    4
}
fn d_interval() -> usize {
    4
}
fn d_true() -> bool {
    true
}
fn d_partial() -> f64 {
    0.25
}
fn d_theta() -> f64 {
    100_000.0
}
fn d_rope_parameters() -> Option<Value> {
    Some(json!({"type": "default", "mrope_section": [11, 11, 10], "rope_theta": 100000, "partial_rotary_factor": 0.25}))
}

impl Config {
    /// The language model's config from the wrapper's `config.json`.
    pub fn from_json(config: &Value) -> Result<Self, EngineError> {
        let text = config.get("text_config").unwrap_or(config);
        Self::deserialize(text).map_err(|e| EngineError::Metadata(format!("qwen3_5 config.json: {e}")))
    }

    /// The decoder spec; `ckpt` tells where the language model's tensors are.
    pub fn spec(&self, arch: &str, ckpt: &Checkpoint) -> Result<HybridSpec, EngineError> {
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1));
        let (partial, theta, scaling) = match self.rope_parameters.as_ref().filter(|p| p.is_object()) {
            Some(params) => (
                params.get("partial_rotary_factor").and_then(Value::as_f64).unwrap_or(0.25),
                params.get("rope_theta").and_then(Value::as_f64).unwrap_or(100_000.0),
                Some(params),
            ),
            None => (self.partial_rotary_factor, self.rope_theta, self.rope_scaling.as_ref()),
        };
        let rope_dims = (head_dim as f64 * partial) as usize;
        let rope = rope_from_scaling(rope_dims, theta as f32, scaling, self.max_position_embeddings)?;
        // mlx-lm's sanitize moves everything under `language_model.`; a text-only
        // checkpoint saved without the wrapper keeps `model.`.
        let (prefix, head) = if ckpt.has("language_model.model.embed_tokens.weight") {
            ("language_model.model", "language_model.lm_head")
        } else {
            ("model", "lm_head")
        };
        Ok(HybridSpec {
            arch: arch.to_string(),
            prefix: prefix.to_string(),
            head: head.to_string(),
            layers: self.num_hidden_layers,
            heads: self.num_attention_heads,
            kv_heads: self.num_key_value_heads,
            head_dim,
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
                fused_projections: false,
            },
            full_attention_interval: self.full_attention_interval,
            // Qwen3.5 MoE models use the sparse block in every layer.
            sparse: vec![self.num_experts > 0; self.num_hidden_layers],
            moe: MoeSpec {
                experts: self.num_experts,
                top_k: self.num_experts_per_tok,
                norm_topk_prob: self.norm_topk_prob,
            },
        })
    }
}

/// The architecture registry's entry point ([`crate::engine::arch`]): `qwen3_5` and
/// `qwen3_5_moe` on the Qwen3-Next hybrid decoder.
pub fn model(ckpt: &Checkpoint, model_type: &str, device: &Device, progress: bool) -> Loaded {
    let spec = Config::from_json(&ckpt.config)?.spec(model_type, ckpt)?;
    Ok(Box::new(super::qwen3_next::load(ckpt, spec, device, progress)?))
}
