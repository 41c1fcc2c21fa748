//! Granite 4.0 hybrid (mlx-lm `granitemoehybrid`): pre-norm layers whose token mixer is,
//! per `layer_types`, a Mamba-2 layer ([`super::mamba2`], gated norm over all channels) or
//! attention (scaled by `attention_multiplier`, RoPE only unless `position_embedding_type`
//! is `nope`), followed by a softmax-top-k MoE plus a shared SwiGLU MLP (or a dense SwiGLU
//! MLP in non-MoE models). µP-style multipliers scale the embeddings, every residual
//! branch and the logits.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::dense::RopeSpec;
use super::mamba2::{HybridAttention, Mamba2Mixer, Mamba2Spec, dispatch_experts};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::embedding::Embeddings;
use crate::engine::layers::{FeedForward, Op, Recurrent, Stack, StackSpec, pre_norm_layer};
use crate::engine::models::layer_progress;

/// `config.json` of a `granitemoehybrid` checkpoint (mlx-lm's `ModelArgs`, with its
/// defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub max_position_embeddings: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub embedding_multiplier: f64,
    pub attention_multiplier: f64,
    pub logits_scaling: f64,
    pub residual_multiplier: f64,
    pub layer_types: Vec<String>,
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub num_local_experts: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub shared_intermediate_size: Option<usize>,
    #[serde(default)]
    pub mamba_n_heads: Option<usize>,
    #[serde(default)]
    pub mamba_d_head: Option<usize>,
    #[serde(default)]
    pub mamba_d_state: Option<usize>,
    #[serde(default)]
    pub mamba_d_conv: Option<usize>,
    #[serde(default)]
    pub mamba_n_groups: Option<usize>,
    #[serde(default = "d_position_embedding")]
    pub position_embedding_type: String,
    #[serde(default = "d_true")]
    pub tie_word_embeddings: bool,
    /// mlx-lm's default when absent is `(0.001, 100)`, not transformers' `(0, inf)`.
    #[serde(default, deserialize_with = "super::mamba2::time_step_limit")]
    pub time_step_limit: Option<(f64, f64)>,
    #[serde(default = "d_theta")]
    pub rope_theta: f64,
    /// Newer configs nest `rope_theta` here; it wins when present.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
}

fn d_position_embedding() -> String {
    String::from("rope")
}
fn d_true() -> bool {
    true
}
fn d_theta() -> f64 {
    10_000.0
}

fn meta(message: String) -> EngineError {
    EngineError::Metadata(format!("granitemoehybrid config.json: {message}"))
}

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        Self::deserialize(config).map_err(|e| meta(e.to_string()))
    }

    fn use_moe(&self) -> bool {
        self.num_local_experts.is_some_and(|e| e > 0)
    }

    fn mamba(&self) -> std::result::Result<Mamba2Spec, EngineError> {
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| meta(format!("mamba layers need `{name}`")));
        let (heads, head_dim) = (need(self.mamba_n_heads, "mamba_n_heads")?, need(self.mamba_d_head, "mamba_d_head")?);
        Ok(Mamba2Spec {
            heads,
            head_dim,
            state_size: need(self.mamba_d_state, "mamba_d_state")?,
            groups: need(self.mamba_n_groups, "mamba_n_groups")?,
            conv_kernel: need(self.mamba_d_conv, "mamba_d_conv")?,
            // `GraniteMoeHybridRMSNormGated` normalises the whole vector.
            norm_group_size: heads * head_dim,
            eps: self.rms_norm_eps,
            time_step_limit: self.time_step_limit.unwrap_or((0.001, 100.0)),
        })
    }

    fn rope(&self) -> Option<RopeSpec> {
        if self.position_embedding_type == "nope" {
            return None;
        }
        let theta = self
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or(self.rope_theta);
        Some(RopeSpec::standard(self.head_dim(), theta as f32))
    }

    /// mlx-lm derives the attention head size from the hidden size, whatever `head_dim` says.
    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`.
struct SwiGlu {
    gate: candle_nn::Linear,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
}

impl SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&(candle_nn::ops::silu(&self.gate.forward(x)?)? * self.up.forward(x)?)?)
    }
}

/// `GraniteMoeHybridMoE`: a linear router, top-k of its logits, softmax over those k, and
/// SwiGLU experts (`switch_mlp.{gate,up,down}_proj`).
struct Moe {
    top_k: usize,
    router: candle_nn::Linear,
    experts: Vec<SwiGlu>,
}

impl Moe {
    fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        experts: usize,
        top_k: usize,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        if top_k == 0 || top_k > experts {
            return Err(EngineError::Metadata(format!("{prefix}: top-{top_k} of {experts} experts")));
        }
        // Stacked `[experts, out, in]`, split once so that each expert is a plain matmul.
        let stacked = |name: &str| -> std::result::Result<Vec<Tensor>, EngineError> {
            let w = ckpt.weight(&format!("{prefix}.switch_mlp.{name}"), device)?;
            if w.rank() != 3 || w.dim(0)? != experts {
                return Err(EngineError::Metadata(format!(
                    "{prefix}.switch_mlp.{name} has shape {:?}, expected {experts} experts",
                    w.dims()
                )));
            }
            Ok((0..experts).map(|e| w.get(e)).collect::<Result<Vec<_>>>()?)
        };
        let experts = stacked("gate_proj")?
            .into_iter()
            .zip(stacked("up_proj")?)
            .zip(stacked("down_proj")?)
            .map(|((gate, up), down)| SwiGlu {
                gate: candle_nn::Linear::new(gate, None),
                up: candle_nn::Linear::new(up, None),
                down: candle_nn::Linear::new(down, None),
            })
            .collect();
        Ok(Self { top_k, router: ckpt.linear(&format!("{prefix}.router.layer"), device)?, experts })
    }

    /// `(expert, weight)` pairs of one token from its router logits.
    fn select(&self, logits: &[f32]) -> Vec<(usize, f32)> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        order.truncate(self.top_k);
        // Softmax over the chosen logits; the first is the largest.
        let max = order.first().map_or(0.0, |&e| logits[e]);
        let exps: Vec<f32> = order.iter().map(|&e| (logits[e] - max).exp()).collect();
        let total: f32 = exps.iter().sum();
        order.into_iter().zip(exps).map(|(e, p)| (e, p / total)).collect()
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // Routing is decided on the host: a few numbers per token.
        let logits: Vec<Vec<f32>> = self.router.forward(xs)?.to_dtype(DType::F32)?.to_vec2()?;
        let choices: Vec<Vec<(usize, f32)>> = logits.iter().map(|l| self.select(l)).collect();
        dispatch_experts(xs, &choices, self.experts.len(), xs.dim(D::Minus1)?, |e, rows| self.experts[e].forward(rows))
    }
}

enum Ffn {
    /// Routed experts plus the shared MLP, both on the same normed input.
    Moe {
        moe: Moe,
        shared: SwiGlu,
    },
    Dense(SwiGlu),
}

impl Ffn {
    fn load(ckpt: &Checkpoint, cfg: &Config, l: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        let linear = |name: &str| ckpt.linear(&format!("{l}.{name}"), device);
        if !cfg.use_moe() {
            return Ok(Self::Dense(SwiGlu {
                gate: linear("mlp.gate_proj")?,
                up: linear("mlp.up_proj")?,
                down: linear("mlp.down_proj")?,
            }));
        }
        let experts = cfg.num_local_experts.unwrap_or(0);
        let moe =
            Moe::load(ckpt, &format!("{l}.block_sparse_moe"), experts, cfg.num_experts_per_tok.unwrap_or(0), device)?;
        // `shared_mlp.input_linear` holds gate then up, `[2·I, d]`.
        let input = linear("shared_mlp.input_linear")?;
        let rows = input.weight().dim(0)?;
        if cfg.shared_intermediate_size.is_some_and(|i| 2 * i != rows) || !rows.is_multiple_of(2) {
            return Err(EngineError::Metadata(format!("{l}.shared_mlp.input_linear has {rows} rows")));
        }
        let half = |i: usize| -> Result<candle_nn::Linear> {
            let w = input.weight().narrow(0, i * rows / 2, rows / 2)?.contiguous()?;
            let b = input.bias().map(|b| b.narrow(0, i * rows / 2, rows / 2)).transpose()?;
            Ok(candle_nn::Linear::new(w, b))
        };
        let shared = SwiGlu { gate: half(0)?, up: half(1)?, down: linear("shared_mlp.output_linear")? };
        Ok(Self::Moe { moe, shared })
    }
}

impl FeedForward for Ffn {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Dense(mlp) => mlp.forward(x),
            Self::Moe { moe, shared } => {
                let dims = x.dims().to_vec();
                let xs = x.reshape(((), x.dim(D::Minus1)?))?;
                (moe.forward(&xs)? + shared.forward(&xs)?)?.reshape(dims)
            }
        }
    }
}

/// The Granite 4 hybrid decoder on the shared [`Stack`]: Mamba-2 or attention, then a MoE
/// (or dense MLP), each residual scaled by `residual_multiplier`.
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    if cfg.layer_types.len() != cfg.num_hidden_layers {
        return Err(meta(format!("{} layer_types for {} layers", cfg.layer_types.len(), cfg.num_hidden_layers)));
    }
    if cfg.logits_scaling == 0.0 {
        return Err(meta(String::from("logits_scaling is 0")));
    }
    let (embeddings, head) =
        Embeddings::load_dense_with_head(ckpt, "model.embed_tokens", "lm_head", cfg.tie_word_embeddings, device)?;
    let head_dim = cfg.head_dim();
    let rope = cfg.rope();
    let bar = layer_progress(progress, cfg.num_hidden_layers, "granitemoehybrid");
    let mut units = Vec::with_capacity(2 * cfg.num_hidden_layers);
    for (i, kind) in cfg.layer_types.iter().enumerate() {
        let l = format!("model.layers.{i}");
        let mixer = match kind.as_str() {
            "mamba" => Op::Sequence(Box::new(Recurrent {
                layer: i,
                mixer: Mamba2Mixer::load(ckpt, &format!("{l}.mamba"), cfg.mamba()?, device)?,
            })),
            "attention" => Op::Sequence(Box::new(HybridAttention::load(
                ckpt,
                i,
                &format!("{l}.self_attn"),
                (cfg.num_attention_heads, cfg.num_key_value_heads, head_dim),
                cfg.attention_multiplier,
                rope.clone(),
                device,
            )?)),
            other => return Err(meta(format!("unknown layer type `{other}`"))),
        };
        let ffn = Op::Rows(Box::new(Ffn::load(ckpt, &cfg, &l, device)?));
        let mut layer = pre_norm_layer(ckpt, &l, mixer, ffn, device)?;
        for unit in &mut layer {
            unit.scale = Some(cfg.residual_multiplier);
        }
        units.extend(layer);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec {
        name: "granitemoehybrid".into(),
        context_length: cfg.max_position_embeddings,
        cache_layers: cfg.num_hidden_layers,
        rms_eps: cfg.rms_norm_eps,
        embed_scale: Some(cfg.embedding_multiplier),
        logits_divisor: Some(cfg.logits_scaling),
    };
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("model.norm.weight", device)?, head)))
}
