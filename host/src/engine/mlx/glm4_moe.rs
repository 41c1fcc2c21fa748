//! GLM-4 MoE (GLM-4.5 / 4.6 / 4.7, mlx-lm `glm4_moe`): a Llama-style decoder with q/k/v
//! biases, per-head q/k RMSNorm and RoPE on the first `partial_rotary_factor` of each head;
//! the first `first_k_dense_replace` layers have a dense SwiGLU MLP, the rest a
//! DeepSeek-style MoE: sigmoid scores, top-k chosen with `e_score_correction_bias`
//! (group-limited when `n_group > 1`), weights renormalised and scaled by
//! `routed_scaling_factor`, plus shared experts.

use candle_core::{Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::dense::RopeSpec;
use super::moe::{self, Experts, Glu, Mlp, SigmoidMoe, SigmoidRouter};
use crate::engine::models::{CausalLm, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

/// `config.json` of a `glm4_moe` checkpoint (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub moe_intermediate_size: usize,
    #[serde(default = "d_true")]
    pub norm_topk_prob: bool,
    pub num_attention_heads: usize,
    #[serde(default = "d_one")]
    pub n_group: usize,
    pub head_dim: usize,
    #[serde(default = "d_one")]
    pub topk_group: usize,
    pub n_shared_experts: Option<usize>,
    pub n_routed_experts: Option<usize>,
    #[serde(default = "d_scale")]
    pub routed_scaling_factor: f32,
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub first_k_dense_replace: usize,
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

fn d_true() -> bool {
    true
}
fn d_one() -> usize {
    1
}
fn d_scale() -> f32 {
    1.0
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
        self.n_routed_experts.is_some() && layer >= self.first_k_dense_replace
    }
}

struct Attention {
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    o: candle_nn::Linear,
    /// Per-head RMSNorm weights `[head_dim]` when `use_qk_norm`.
    qk_norm: Option<(Tensor, Tensor)>,
}

impl Attention {
    fn load(ckpt: &Checkpoint, cfg: &Config, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| ckpt.linear(&format!("{prefix}.{name}"), device);
        let qk_norm = if cfg.use_qk_norm {
            Some((
                ckpt.tensor(&format!("{prefix}.q_norm.weight"), device)?,
                ckpt.tensor(&format!("{prefix}.k_norm.weight"), device)?,
            ))
        } else {
            None
        };
        Ok(Self { q: linear("q_proj")?, k: linear("k_proj")?, v: linear("v_proj")?, o: linear("o_proj")?, qk_norm })
    }

    fn forward(&self, cfg: &Config, rope: &RopeSpec, index: usize, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = cfg.head_dim;
        let past = cache.len();
        let heads = |lin: &candle_nn::Linear, n: usize, norm: Option<&Tensor>| -> Result<Tensor> {
            let h = lin.forward(x)?.reshape((b, t, n, hd))?;
            let h = match norm {
                Some(w) => rms_norm(&h, w, cfg.rms_norm_eps)?,
                None => h,
            };
            h.transpose(1, 2)?.contiguous()
        };
        let (q_norm, k_norm) = match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = rope.apply(&heads(&self.q, cfg.num_attention_heads, q_norm)?, past)?;
        let k = rope.apply(&heads(&self.k, cfg.num_key_value_heads, k_norm)?, past)?;
        let v = heads(&self.v, cfg.num_key_value_heads, None)?;
        let (k, v) = cache.append(index, &k, &v)?;
        let (k, v, mask) = moe::visible(&k, &v, past, t, None)?;
        let out = moe::attend(&q, &k, &v, 1.0 / (hd as f64).sqrt(), mask.as_ref(), None)?;
        self.o.forward(&out)
    }
}

enum FeedForward {
    Dense(Mlp),
    Sparse(SigmoidMoe),
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    attn: Attention,
    ffn: FeedForward,
}

/// The GLM-4 MoE decoder.
pub struct Glm4Moe {
    cfg: Config,
    rope: RopeSpec,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
}

impl std::fmt::Debug for Glm4Moe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Glm4Moe").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Glm4Moe {
    pub fn load(
        ckpt: &Checkpoint,
        cfg: Config,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        // mlx-lm builds a plain `nn.RoPE` here: `rope_scaling` is not used.
        let rope = RopeSpec::standard((cfg.head_dim as f64 * cfg.partial_rotary_factor) as usize, cfg.rope_theta);
        let (embeddings, head) = moe::embeddings_and_head(ckpt, "model", "lm_head", cfg.tie_word_embeddings, device)?;
        let bar = layer_progress(progress, cfg.num_hidden_layers, "glm4_moe");
        // Checkpoints may carry a multi-token-prediction layer after the last one; mlx-lm drops
        // it, and it is simply never loaded here.
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let ffn = match cfg.n_routed_experts {
                Some(experts) if cfg.is_moe(i) => {
                    let m = format!("{l}.mlp");
                    let router = SigmoidRouter {
                        top_k: cfg.num_experts_per_tok,
                        n_group: cfg.n_group,
                        topk_group: cfg.topk_group,
                        bias: moe::vector(ckpt, &format!("{m}.gate.e_score_correction_bias"), experts)?,
                        normalize: cfg.norm_topk_prob && cfg.num_experts_per_tok > 1,
                        norm_eps: 0.0,
                        scale: cfg.routed_scaling_factor,
                    };
                    let shared = match cfg.n_shared_experts {
                        Some(_) => Some(Mlp::load(ckpt, &format!("{m}.shared_experts"), device)?),
                        None => None,
                    };
                    FeedForward::Sparse(SigmoidMoe {
                        gate: ckpt.packed_linear(&format!("{m}.gate"), device)?,
                        router,
                        experts: Experts::load(ckpt, &format!("{m}.switch_mlp"), experts, Glu::Swiglu, device)?,
                        shared,
                    })
                }
                _ => FeedForward::Dense(Mlp::load(ckpt, &format!("{l}.mlp"), device)?),
            };
            layers.push(Layer {
                input_norm: ckpt.tensor(&format!("{l}.input_layernorm.weight"), device)?,
                post_attention_norm: ckpt.tensor(&format!("{l}.post_attention_layernorm.weight"), device)?,
                attn: Attention::load(ckpt, &cfg, &format!("{l}.self_attn"), device)?,
                ffn,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = ckpt.tensor("model.norm.weight", device)?;
        Ok(Self { cfg, rope, embeddings, layers, norm, head })
    }
}

impl CausalLm for Glm4Moe {
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let cfg = &self.cfg;
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("no tokens to run");
        }
        if cache.len() + t > cfg.max_position_embeddings {
            candle_core::bail!(
                "sequence of {} tokens exceeds the context of {}",
                cache.len() + t,
                cfg.max_position_embeddings
            );
        }
        let ids = Tensor::new(tokens, self.norm.device())?;
        let mut x = self.embeddings.index_select(&ids, 0)?.unsqueeze(0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, cfg.rms_norm_eps)?;
            x = (x + layer.attn.forward(cfg, &self.rope, index, &h, cache)?)?;
            let h = rms_norm(&x, &layer.post_attention_norm, cfg.rms_norm_eps)?;
            let h = match &layer.ffn {
                FeedForward::Dense(mlp) => mlp.forward(&h)?,
                FeedForward::Sparse(moe) => moe.forward(&h)?,
            };
            x = (x + h)?;
        }
        cache.advance(t);
        moe::last_logits(&x, &self.norm, cfg.rms_norm_eps, &self.head)
    }

    fn new_cache(&self) -> KvCache {
        KvCache::new(self.cfg.num_hidden_layers, self.cfg.max_position_embeddings)
    }

    fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }
}
