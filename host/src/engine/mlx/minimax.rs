//! MiniMax-M2 (mlx-lm `minimax`): full attention with q/k RMSNorm over the *whole*
//! projected query / key vector (before the head split, not per head) and RoPE on the
//! first `rotary_dim` dims of each head; every layer's feed-forward is a sparse MoE
//! (`block_sparse_moe`) with sigmoid scores, top-k chosen with `e_score_correction_bias`
//! and weights renormalised over the chosen. No shared expert.

use candle_core::{Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::dense::RopeSpec;
use super::moe::{self, Experts, Glu, SigmoidMoe, SigmoidRouter};
use crate::engine::models::{CausalLm, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

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

struct Attention {
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    o: candle_nn::Linear,
    /// RMSNorm weights over all heads at once: `[heads * head_dim]`, `[kv_heads * head_dim]`.
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
        let hd = cfg.head_dim();
        let past = cache.len();
        let (mut q, mut k) = (self.q.forward(x)?, self.k.forward(x)?);
        if let Some((q_norm, k_norm)) = &self.qk_norm {
            q = rms_norm(&q, q_norm, cfg.rms_norm_eps)?;
            k = rms_norm(&k, k_norm, cfg.rms_norm_eps)?;
        }
        let heads = |h: Tensor, n: usize| -> Result<Tensor> { h.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous() };
        let q = rope.apply(&heads(q, cfg.num_attention_heads)?, past)?;
        let k = rope.apply(&heads(k, cfg.num_key_value_heads)?, past)?;
        let v = heads(self.v.forward(x)?, cfg.num_key_value_heads)?;
        let (k, v) = cache.append(index, &k, &v)?;
        let (k, v, mask) = moe::visible(&k, &v, past, t, None)?;
        let out = moe::attend(&q, &k, &v, 1.0 / (hd as f64).sqrt(), mask.as_ref(), None)?;
        self.o.forward(&out)
    }
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    attn: Attention,
    moe: SigmoidMoe,
}

/// The MiniMax decoder.
pub struct MiniMax {
    cfg: Config,
    rope: RopeSpec,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
}

impl std::fmt::Debug for MiniMax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniMax").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl MiniMax {
    pub fn load(
        ckpt: &Checkpoint,
        cfg: Config,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
        // A plain `nn.RoPE(rotary_dim)` in mlx-lm; there is no rope scaling.
        let rope = RopeSpec::standard(cfg.rotary_dim, cfg.rope_theta);
        let (embeddings, head) = moe::embeddings_and_head(ckpt, "model", "lm_head", cfg.tie_word_embeddings, device)?;
        let bar = layer_progress(progress, cfg.num_hidden_layers, "minimax");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
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
            let moe = SigmoidMoe {
                gate: ckpt.packed_linear(&format!("{m}.gate"), device)?,
                router,
                experts: Experts::load(ckpt, &format!("{m}.switch_mlp"), cfg.num_local_experts, Glu::Swiglu, device)?,
                shared: None,
            };
            layers.push(Layer {
                input_norm: ckpt.tensor(&format!("{l}.input_layernorm.weight"), device)?,
                post_attention_norm: ckpt.tensor(&format!("{l}.post_attention_layernorm.weight"), device)?,
                attn: Attention::load(ckpt, &cfg, &format!("{l}.self_attn"), device)?,
                moe,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = ckpt.tensor("model.norm.weight", device)?;
        Ok(Self { cfg, rope, embeddings, layers, norm, head })
    }
}

impl CausalLm for MiniMax {
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
            x = (x + layer.moe.forward(&h)?)?;
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
