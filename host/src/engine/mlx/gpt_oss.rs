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
use super::dense::RopeSpec;
use super::moe::{self, Experts, Glu};
use crate::engine::models::{CausalLm, layer_progress, rms_norm};
use crate::engine::{EngineError, KvCache};

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

/// `AttentionBlock`: biased projections, YaRN RoPE, sinks.
struct Attention {
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    o: candle_nn::Linear,
    sinks: Tensor,
    /// `Some(sliding_window)` on sliding layers.
    window: Option<usize>,
}

impl Attention {
    fn forward(&self, cfg: &Config, rope: &RopeSpec, index: usize, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = cfg.head_dim;
        let past = cache.len();
        let heads = |lin: &candle_nn::Linear, n: usize| -> Result<Tensor> {
            lin.forward(x)?.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let q = rope.apply(&heads(&self.q, cfg.num_attention_heads)?, past)?;
        let k = rope.apply(&heads(&self.k, cfg.num_key_value_heads)?, past)?;
        let v = heads(&self.v, cfg.num_key_value_heads)?;
        let (k, v) = cache.append(index, &k, &v)?;
        let (k, v, mask) = moe::visible(&k, &v, past, t, self.window)?;
        let scale = 1.0 / (hd as f64).sqrt();
        let out = moe::attend(&q, &k, &v, scale, mask.as_ref(), Some(&self.sinks))?;
        self.o.forward(&out)
    }
}

/// `MLPBlock`: router, top-k experts.
struct Moe {
    router: candle_nn::Linear,
    experts: Experts,
    top_k: usize,
}

impl Moe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let xs = x.reshape(((), x.dim(candle_core::D::Minus1)?))?;
        let logits: Vec<Vec<f32>> = self.router.forward(&xs)?.to_vec2()?;
        let routes = moe::route_top_k_softmax(&logits, self.top_k);
        self.experts.forward(&xs, &routes)?.reshape(dims)
    }
}

struct Layer {
    input_norm: Tensor,
    post_attention_norm: Tensor,
    attn: Attention,
    mlp: Moe,
}

/// The gpt-oss decoder.
pub struct GptOss {
    cfg: Config,
    rope: RopeSpec,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    head: Tensor,
}

impl std::fmt::Debug for GptOss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GptOss").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl GptOss {
    pub fn load(
        ckpt: &Checkpoint,
        cfg: Config,
        device: &Device,
        progress: bool,
    ) -> std::result::Result<Self, EngineError> {
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
        let rope =
            rope_from_scaling(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref(), cfg.max_position_embeddings)?;
        let (embeddings, head) = moe::embeddings_and_head(ckpt, "model", "lm_head", cfg.tie_word_embeddings, device)?;
        let bar = layer_progress(progress, cfg.num_hidden_layers, "gpt_oss");
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, &sliding) in sliding.iter().enumerate() {
            let l = format!("model.layers.{i}");
            let linear = |name: &str| ckpt.linear(&format!("{l}.{name}"), device);
            let attn = Attention {
                q: linear("self_attn.q_proj")?,
                k: linear("self_attn.k_proj")?,
                v: linear("self_attn.v_proj")?,
                o: linear("self_attn.o_proj")?,
                sinks: ckpt.tensor(&format!("{l}.self_attn.sinks"), device)?,
                window: sliding.then_some(cfg.sliding_window),
            };
            if attn.sinks.dims() != [cfg.num_attention_heads] {
                return Err(EngineError::Metadata(format!("{l}.self_attn.sinks has shape {:?}", attn.sinks.dims())));
            }
            let glu = Glu::SwigluOai { alpha: 1.702, limit: 7.0 };
            let mlp = Moe {
                router: linear("mlp.router")?,
                experts: Experts::load(ckpt, &format!("{l}.mlp.experts"), cfg.num_local_experts, glu, device)?,
                top_k: cfg.num_experts_per_tok,
            };
            layers.push(Layer {
                input_norm: ckpt.tensor(&format!("{l}.input_layernorm.weight"), device)?,
                post_attention_norm: ckpt.tensor(&format!("{l}.post_attention_layernorm.weight"), device)?,
                attn,
                mlp,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let norm = ckpt.tensor("model.norm.weight", device)?;
        Ok(Self { cfg, rope, embeddings, layers, norm, head })
    }
}

impl CausalLm for GptOss {
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
            x = (x + layer.mlp.forward(&h)?)?;
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
