//! MiniMax-M2 (mlx-lm `minimax`): full attention with q/k RMSNorm over the *whole*
//! projected query / key vector (before the head split, not per head) and RoPE on the
//! first `rotary_dim` dims of each head; every layer's feed-forward is a sparse MoE
//! (`block_sparse_moe`) with sigmoid scores, top-k chosen with `e_score_correction_bias`
//! and weights renormalised over the chosen. No shared expert.

use candle_core::Device;
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::dense::RopeSpec;
use super::moe::{self, Experts, Glu, SigmoidMoe, SigmoidRouter};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::attention::{Attention, AttentionSpec, QkNormAt};
use crate::engine::layers::embedding::Embeddings;
use crate::engine::layers::{FeedForward, Op, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::layer_progress;

/// `config.json` of a `minimax` checkpoint (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    /// The experts' hidden size.
    pub intermediate_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub max_position_embeddings: usize,
    pub num_experts_per_tok: usize,
    pub num_local_experts: usize,
    pub num_hidden_layers: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f32,
    pub rotary_dim: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_true")]
    pub use_qk_norm: bool,
}

fn d_true() -> bool {
    true
}

/// mlx-lm divides the chosen scores by their sum plus this, so that all-zero scores stay 0.
const ROUTER_NORM_EPS: f32 = 1e-20;

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        let cfg = Self::deserialize(config).map_err(|e| EngineError::Metadata(format!("minimax config.json: {e}")))?;
        if cfg.num_attention_heads == 0
            || cfg.num_key_value_heads == 0
            || !cfg.num_attention_heads.is_multiple_of(cfg.num_key_value_heads)
        {
            return Err(EngineError::Metadata(format!(
                "minimax: {} attention heads cannot share {} kv heads",
                cfg.num_attention_heads, cfg.num_key_value_heads
            )));
        }
        if cfg.rotary_dim > cfg.head_dim() || !cfg.rotary_dim.is_multiple_of(2) {
            return Err(EngineError::Metadata(format!(
                "minimax: rotary_dim {} does not fit head_dim {}",
                cfg.rotary_dim,
                cfg.head_dim()
            )));
        }
        Ok(cfg)
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// The MiniMax decoder on the shared [`Stack`].
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    // A plain `nn.RoPE(rotary_dim)` in mlx-lm; there is no rope scaling.
    let rope = RopeSpec::standard(cfg.rotary_dim, cfg.rope_theta);
    // q/k norms over all heads at once: `[heads * head_dim]`, `[kv_heads * head_dim]`.
    let attention = AttentionSpec {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim(),
        rms_eps: cfg.rms_norm_eps,
        rope,
        qk_norm: if cfg.use_qk_norm { QkNormAt::Whole } else { QkNormAt::None },
        sinks: false,
    };
    let (embeddings, head) =
        Embeddings::load_dense_with_head(ckpt, "model.embed_tokens", "lm_head", cfg.tie_word_embeddings, device)?;
    let bar = layer_progress(progress, cfg.num_hidden_layers, "minimax");
    let mut units = Vec::with_capacity(2 * cfg.num_hidden_layers);
    for i in 0..cfg.num_hidden_layers {
        let l = format!("model.layers.{i}");
        let m = format!("{l}.block_sparse_moe");
        let router = SigmoidRouter {
            top_k: cfg.num_experts_per_tok,
            n_group: 1,
            topk_group: 1,
            bias: moe::vector(ckpt, &format!("{m}.e_score_correction_bias"), cfg.num_local_experts)?,
            normalize: true,
            norm_eps: ROUTER_NORM_EPS,
            scale: 1.0,
        };
        let moe: Box<dyn FeedForward> = Box::new(SigmoidMoe {
            gate: ckpt.packed_linear(&format!("{m}.gate"), device)?,
            router,
            experts: Experts::load(ckpt, &format!("{m}.switch_mlp"), cfg.num_local_experts, Glu::Swiglu, device)?,
            shared: None,
        });
        let attn = Attention::load(ckpt, i, &format!("{l}.self_attn"), &attention, None, device)?;
        units.extend(pre_norm_layer(ckpt, &l, Op::Sequence(Box::new(attn)), Op::Rows(moe), device)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec::new("minimax", cfg.max_position_embeddings, cfg.num_hidden_layers, cfg.rms_norm_eps);
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("model.norm.weight", device)?, head)))
}
