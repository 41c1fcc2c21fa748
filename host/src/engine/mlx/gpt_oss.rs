//! gpt-oss (mlx-lm `gpt_oss`): alternating sliding-window and full attention with
//! per-head attention sinks, q/k/v/o biases and YaRN RoPE; every feed-forward is a MoE
//! whose experts (mxfp4 in mlx-community checkpoints, with biases) use the clamped
//! `swiglu_oai` activation, routed by a biased linear router: top-k of the raw logits,
//! softmax over the chosen.
//!
//! mlx-lm keeps a rotating cache of `sliding_window` entries for the sliding layers; the
//! engine's [`KvCache`] keeps every position (so that a shared prefix can be truncated
//! back to), and the attention here only reads the last `sliding_window` of them.

use candle_core::{Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::archs::rope_from_scaling;
use super::moe::{self, Experts, Glu};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::attention::{Attention, AttentionSpec, QkNormAt};
use crate::engine::layers::embedding::Embeddings;
use crate::engine::layers::{FeedForward, Op, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::layer_progress;

/// `config.json` of a `gpt_oss` checkpoint, with mlx-lm's `ModelArgs` defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "d_experts")]
    pub num_local_experts: usize,
    #[serde(default = "d_top_k")]
    pub num_experts_per_tok: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    #[serde(default = "d_hidden")]
    pub intermediate_size: usize,
    #[serde(default = "d_head_dim")]
    pub head_dim: usize,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_kv_heads")]
    pub num_key_value_heads: usize,
    #[serde(default = "d_window")]
    pub sliding_window: usize,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// `sliding_attention` / `full_attention` per layer; mlx-lm alternates them when absent.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn d_layers() -> usize {
    36
}
fn d_experts() -> usize {
    128
}
fn d_top_k() -> usize {
    4
}
fn d_eps() -> f64 {
    1e-5
}
fn d_hidden() -> usize {
    2880
}
fn d_head_dim() -> usize {
    64
}
fn d_heads() -> usize {
    64
}
fn d_kv_heads() -> usize {
    8
}
fn d_window() -> usize {
    128
}
fn d_theta() -> f32 {
    150_000.0
}
fn d_max_pos() -> usize {
    131_072
}

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        Self::deserialize(config).map_err(|e| EngineError::Metadata(format!("gpt_oss config.json: {e}")))
    }

    /// Whether each layer uses the sliding window.
    fn sliding(&self) -> std::result::Result<Vec<bool>, EngineError> {
        let types = match &self.layer_types {
            Some(types) => types.clone(),
            None => ["sliding_attention", "full_attention"]
                .iter()
                .cycle()
                .take(self.num_hidden_layers)
                .map(|s| s.to_string())
                .collect(),
        };
        if types.len() != self.num_hidden_layers {
            return Err(EngineError::Metadata(format!(
                "gpt_oss: {} layer_types for {} layers",
                types.len(),
                self.num_hidden_layers
            )));
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(EngineError::Metadata(format!("gpt_oss: unknown layer type `{other}`"))),
            })
            .collect()
    }
}

/// `MLPBlock`: router, top-k experts.
struct Moe {
    router: candle_nn::Linear,
    experts: Experts,
    top_k: usize,
}

impl FeedForward for Moe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let xs = x.reshape(((), x.dim(candle_core::D::Minus1)?))?;
        let logits: Vec<Vec<f32>> = self.router.forward(&xs)?.to_vec2()?;
        let routes = moe::route_top_k_softmax(&logits, self.top_k);
        self.experts.forward(&xs, &routes)?.reshape(dims)
    }
}

/// The gpt-oss decoder on the shared [`Stack`]: `AttentionBlock` (biased projections, YaRN
/// RoPE, sinks, alternating sliding windows) and `MLPBlock`.
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    if cfg.num_experts_per_tok == 0 || cfg.num_experts_per_tok > cfg.num_local_experts {
        return Err(EngineError::Metadata(format!(
            "gpt_oss: top-{} of {} experts",
            cfg.num_experts_per_tok, cfg.num_local_experts
        )));
    }
    if cfg.num_attention_heads == 0
        || cfg.num_key_value_heads == 0
        || !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads)
    {
        return Err(EngineError::Metadata(format!(
            "gpt_oss: {} attention heads cannot share {} kv heads",
            cfg.num_attention_heads, cfg.num_key_value_heads
        )));
    }
    let sliding = cfg.sliding()?;
    // mlx-lm's YarnRoPE has no `truncate` option: it always rounds the correction range
    // (floor / ceil) even where the config says `truncate: false`; so does
    // `rope_from_scaling`.
    let rope = rope_from_scaling(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref(), cfg.max_position_embeddings)?;
    let attention = AttentionSpec {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        rms_eps: cfg.rms_norm_eps,
        rope,
        qk_norm: QkNormAt::None,
        sinks: true,
    };
    let (embeddings, head) =
        Embeddings::load_dense_with_head(ckpt, "model.embed_tokens", "lm_head", cfg.tie_word_embeddings, device)?;
    let bar = layer_progress(progress, cfg.num_hidden_layers, "gpt_oss");
    let mut units = Vec::with_capacity(2 * cfg.num_hidden_layers);
    for (i, &sliding) in sliding.iter().enumerate() {
        let l = format!("model.layers.{i}");
        let window = sliding.then_some(cfg.sliding_window);
        let attn = Attention::load(ckpt, i, &format!("{l}.self_attn"), &attention, window, device)?;
        let glu = Glu::SwigluOai { alpha: 1.702, limit: 7.0 };
        let mlp = Moe {
            router: ckpt.linear(&format!("{l}.mlp.router"), device)?,
            experts: Experts::load(ckpt, &format!("{l}.mlp.experts"), cfg.num_local_experts, glu, device)?,
            top_k: cfg.num_experts_per_tok,
        };
        units.extend(pre_norm_layer(ckpt, &l, Op::Sequence(Box::new(attn)), Op::Rows(Box::new(mlp)), device)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec::new("gpt_oss", cfg.max_position_embeddings, cfg.num_hidden_layers, cfg.rms_norm_eps);
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("model.norm.weight", device)?, head)))
}
