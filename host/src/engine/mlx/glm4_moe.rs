//! GLM-4 MoE (GLM-4.5 / 4.6 / 4.7, mlx-lm `glm4_moe`): a Llama-style decoder with q/k/v
//! biases, per-head q/k RMSNorm and RoPE on the first `partial_rotary_factor` of each head;
//! the first `first_k_dense_replace` layers have a dense SwiGLU MLP, the rest a
//! DeepSeek-style MoE: sigmoid scores, top-k chosen with `e_score_correction_bias`
//! (group-limited when `n_group > 1`), weights renormalised and scaled by
//! `routed_scaling_factor`, plus shared experts.

use candle_core::Device;
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::dense::RopeSpec;
use super::moe::GroupedMoeArgs;
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::attention::{Attention, AttentionSpec, QkNormAt};
use crate::engine::layers::embedding::Embeddings;
use crate::engine::layers::{Op, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::layer_progress;

/// `config.json` of a `glm4_moe` checkpoint (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    /// The routed / shared experts and how they are chosen.
    #[serde(flatten)]
    pub moe: GroupedMoeArgs,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub moe_intermediate_size: usize,
    pub num_attention_heads: usize,
    pub head_dim: usize,
    pub num_hidden_layers: usize,
    pub num_key_value_heads: usize,
    #[serde(default = "d_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "d_theta")]
    pub rope_theta: f32,
    #[serde(default)]
    pub use_qk_norm: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "d_partial")]
    pub partial_rotary_factor: f64,
    #[serde(default = "d_noaux")]
    pub topk_method: String,
}

fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f32 {
    10_000.0
}
fn d_partial() -> f64 {
    0.5
}
fn d_noaux() -> String {
    String::from("noaux_tc")
}

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        let cfg = Self::deserialize(config).map_err(|e| EngineError::Metadata(format!("glm4_moe config.json: {e}")))?;
        // mlx-lm's MoEGate asserts the same.
        if cfg.topk_method != "noaux_tc" {
            return Err(EngineError::Metadata(format!("glm4_moe: topk_method `{}` (only noaux_tc)", cfg.topk_method)));
        }
        if cfg.num_attention_heads == 0
            || cfg.num_key_value_heads == 0
            || !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads)
        {
            return Err(EngineError::Metadata(format!(
                "glm4_moe: {} attention heads cannot share {} kv heads",
                cfg.num_attention_heads, cfg.num_key_value_heads
            )));
        }
        Ok(cfg)
    }

    fn is_moe(&self, layer: usize) -> bool {
        self.moe.n_routed_experts.is_some() && layer >= self.moe.first_k_dense_replace
    }
}

/// The GLM-4 MoE decoder on the shared [`Stack`].
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    // mlx-lm builds a plain `nn.RoPE` here: `rope_scaling` is not used.
    let rope = RopeSpec::standard((cfg.head_dim as f64 * cfg.partial_rotary_factor) as usize, cfg.rope_theta);
    let attention = AttentionSpec {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        rms_eps: cfg.rms_norm_eps,
        rope,
        qk_norm: if cfg.use_qk_norm { QkNormAt::PerHead } else { QkNormAt::None },
        sinks: false,
    };
    let (embeddings, head) =
        Embeddings::load_dense_with_head(ckpt, "model.embed_tokens", "lm_head", cfg.tie_word_embeddings, device)?;
    let bar = layer_progress(progress, cfg.num_hidden_layers, "glm4_moe");
    // Checkpoints may carry a multi-token-prediction layer after the last one; mlx-lm drops
    // it, and it is simply never loaded here.
    let mut units = Vec::with_capacity(2 * cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = format!("model.layers.{i}");
        let ffn = cfg.moe.feed_forward(ckpt, &format!("{l}.mlp"), cfg.is_moe(i), device)?;
        let attn = Attention::load(ckpt, i, &format!("{l}.self_attn"), &attention, None, device)?;
        units.extend(pre_norm_layer(ckpt, &l, Op::Sequence(Box::new(attn)), Op::Rows(ffn), device)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec::new("glm4_moe", cfg.max_position_embeddings, cfg.num_hidden_layers, cfg.rms_norm_eps);
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("model.norm.weight", device)?, head)))
}
