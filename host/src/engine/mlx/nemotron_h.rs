//! Nemotron-H (mlx-lm `nemotron_h`): a stack of single-mixer blocks `x + mixer(rmsnorm(x))`
//! whose mixer is, per `hybrid_override_pattern` character, a Mamba-2 layer (`M`,
//! [`super::mamba2`]), attention without any position encoding (`*`), a squared-ReLU MLP
//! (`-`) or a sigmoid-routed MoE with shared experts (`E`). Tensors live under
//! `backbone.*`; the output head is a separate `lm_head`.

use candle_core::{D, DType, Device, Module, Result, Tensor};
use serde::Deserialize;
use serde_json::Value;

use super::Checkpoint;
use super::mamba2::{HybridAttention, Mamba2Mixer, Mamba2Spec, dispatch_experts};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::embedding::{Embeddings, Head};
use crate::engine::layers::{FeedForward, Op, Recurrent, Residual, Stack, StackSpec};
use crate::engine::models::layer_progress;

/// `config.json` of a `nemotron_h` checkpoint (mlx-lm's `ModelArgs`).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub mamba_num_heads: usize,
    pub mamba_head_dim: usize,
    pub ssm_state_size: usize,
    pub conv_kernel: usize,
    pub n_groups: usize,
    pub layer_norm_epsilon: f64,
    /// The layer stack, one character per layer (`"M-*E"`) or a list of them.
    #[serde(default)]
    pub hybrid_override_pattern: Option<Value>,
    /// Newer spellings of the stack (`mamba`, `attention`, `mlp`, `moe`, ...).
    #[serde(default)]
    pub layers_block_type: Option<Vec<String>>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub moe_intermediate_size: Option<usize>,
    #[serde(default)]
    pub moe_shared_expert_intermediate_size: Option<usize>,
    #[serde(default)]
    pub moe_latent_size: Option<usize>,
    #[serde(default)]
    pub n_group: Option<usize>,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub topk_group: Option<usize>,
    #[serde(default)]
    pub num_experts_per_tok: Option<usize>,
    #[serde(default)]
    pub norm_topk_prob: Option<bool>,
    #[serde(default)]
    pub routed_scaling_factor: Option<f64>,
    #[serde(default, deserialize_with = "super::mamba2::time_step_limit")]
    pub time_step_limit: Option<(f64, f64)>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

/// One block of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockType {
    Mamba,
    Attention,
    Mlp,
    Moe,
}

impl BlockType {
    fn from_char(c: &str) -> Option<Self> {
        Some(match c {
            "M" => Self::Mamba,
            "*" => Self::Attention,
            "-" => Self::Mlp,
            "E" => Self::Moe,
            _ => return None,
        })
    }

    /// mlx-lm's `_block_type_to_char`, including the legacy spellings.
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "full_attention" | "attention" => Self::Attention,
            "linear_attention" | "mamba" | "conv" => Self::Mamba,
            "moe" => Self::Moe,
            "mlp" => Self::Mlp,
            _ => return None,
        })
    }
}

fn meta(message: String) -> EngineError {
    EngineError::Metadata(format!("nemotron_h config.json: {message}"))
}

impl Config {
    pub fn from_json(config: &Value) -> std::result::Result<Self, EngineError> {
        Self::deserialize(config).map_err(|e| meta(e.to_string()))
    }

    /// The layer stack: `hybrid_override_pattern` when present, else the block type names
    /// (as mlx-lm's `__post_init__` normalises them).
    pub fn blocks(&self) -> std::result::Result<Vec<BlockType>, EngineError> {
        let parse_chars = |chars: Vec<String>| -> std::result::Result<Vec<BlockType>, EngineError> {
            chars
                .iter()
                .map(|c| BlockType::from_char(c).ok_or_else(|| meta(format!("unknown block `{c}` in the pattern"))))
                .collect()
        };
        match &self.hybrid_override_pattern {
            Some(Value::String(pattern)) => return parse_chars(pattern.chars().map(String::from).collect()),
            Some(Value::Array(items)) => {
                let chars = items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<Vec<_>>>();
                return parse_chars(
                    chars.ok_or_else(|| meta("hybrid_override_pattern is not a list of strings".into()))?,
                );
            }
            Some(Value::Null) | None => {}
            Some(other) => return Err(meta(format!("hybrid_override_pattern `{other}` is not a pattern"))),
        }
        let names = self
            .layers_block_type
            .as_ref()
            .or(self.layer_types.as_ref())
            .ok_or_else(|| meta("no hybrid_override_pattern or layers_block_type".into()))?;
        names.iter().map(|n| BlockType::from_name(n).ok_or_else(|| meta(format!("unknown block type `{n}`")))).collect()
    }

    fn mamba(&self) -> Mamba2Spec {
        let groups = self.n_groups.max(1);
        Mamba2Spec {
            heads: self.mamba_num_heads,
            head_dim: self.mamba_head_dim,
            state_size: self.ssm_state_size,
            groups,
            conv_kernel: self.conv_kernel,
            norm_group_size: self.mamba_num_heads * self.mamba_head_dim / groups,
            eps: self.layer_norm_epsilon,
            // mlx-lm's default: no clipping beyond dt >= 0.
            time_step_limit: self.time_step_limit.unwrap_or((0.0, f64::INFINITY)),
        }
    }

    fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
}

/// `NemotronHMLP`: `down(relu(up(x))²)`, no gate.
struct ReluSquaredMlp {
    up: candle_nn::Linear,
    down: candle_nn::Linear,
}

fn relu_squared(x: &Tensor) -> Result<Tensor> {
    x.relu()?.sqr()
}

impl FeedForward for ReluSquaredMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ReluSquaredMlp::forward(self, x)
    }
}

impl FeedForward for Moe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Moe::forward(self, x)
    }
}

impl ReluSquaredMlp {
    fn load(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        Ok(Self {
            up: ckpt.linear(&format!("{prefix}.up_proj"), device)?,
            down: ckpt.linear(&format!("{prefix}.down_proj"), device)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&relu_squared(&self.up.forward(x)?)?)
    }
}

/// How `NemotronHMoE` routes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RouterSpec {
    experts: usize,
    top_k: usize,
    n_group: usize,
    topk_group: usize,
    norm_topk_prob: bool,
    scaling: f32,
}

/// `NemotronHMoE`: DeepSeek-V3-style `noaux_tc` routing (sigmoid scores, a correction bias
/// that only affects the choice, optional group-limited selection), squared-ReLU experts
/// (`switch_mlp.fc1` up, `fc2` down), optional latent projections around the experts, and
/// shared experts on the block input.
struct Moe {
    spec: RouterSpec,
    gate: Tensor,
    correction_bias: Tensor,
    experts: Vec<ReluSquaredMlp>,
    latent: Option<(candle_nn::Linear, candle_nn::Linear)>,
    shared: Option<ReluSquaredMlp>,
}

impl Moe {
    fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        spec: RouterSpec,
        shared: bool,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        if spec.top_k == 0 || spec.top_k > spec.experts {
            return Err(EngineError::Metadata(format!("{prefix}: top-{} of {} experts", spec.top_k, spec.experts)));
        }
        if spec.n_group == 0
            || !spec.experts.is_multiple_of(spec.n_group)
            || spec.topk_group > spec.n_group
            || (spec.n_group > 1 && spec.experts / spec.n_group < 2)
        {
            return Err(EngineError::Metadata(format!(
                "{prefix}: {} experts cannot be split into {} groups (top {})",
                spec.experts, spec.n_group, spec.topk_group
            )));
        }
        // Stacked `[experts, out, in]`, split once so that each expert is a plain matmul.
        let stacked = |name: &str| -> std::result::Result<Vec<Tensor>, EngineError> {
            let w = ckpt.weight(&format!("{prefix}.switch_mlp.{name}"), device)?;
            if w.rank() != 3 || w.dim(0)? != spec.experts {
                return Err(EngineError::Metadata(format!(
                    "{prefix}.switch_mlp.{name} has shape {:?}, expected {} experts",
                    w.dims(),
                    spec.experts
                )));
            }
            Ok((0..spec.experts).map(|e| w.get(e)).collect::<Result<Vec<_>>>()?)
        };
        let experts = stacked("fc1")?
            .into_iter()
            .zip(stacked("fc2")?)
            .map(|(up, down)| ReluSquaredMlp {
                up: candle_nn::Linear::new(up, None),
                down: candle_nn::Linear::new(down, None),
            })
            .collect();
        let gate = ckpt.weight(&format!("{prefix}.gate"), device)?;
        let correction_bias = ckpt.tensor(&format!("{prefix}.gate.e_score_correction_bias"), device)?;
        if gate.dim(0)? != spec.experts || correction_bias.dims() != [spec.experts] {
            return Err(EngineError::Metadata(format!("{prefix}.gate does not have {} experts", spec.experts)));
        }
        let latent = if ckpt.has(&format!("{prefix}.fc1_latent_proj.weight")) {
            Some((
                ckpt.linear(&format!("{prefix}.fc1_latent_proj"), device)?,
                ckpt.linear(&format!("{prefix}.fc2_latent_proj"), device)?,
            ))
        } else {
            None
        };
        let shared =
            if shared { Some(ReluSquaredMlp::load(ckpt, &format!("{prefix}.shared_experts"), device)?) } else { None };
        Ok(Self { spec, gate, correction_bias, experts, latent, shared })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = x.dim(D::Minus1)?;
        let xs = x.reshape(((), hidden))?;
        // Routing is decided on the host: a few numbers per token.
        let original: Vec<Vec<f32>> =
            candle_nn::ops::sigmoid(&xs.matmul(&self.gate.t()?)?.to_dtype(DType::F32)?)?.to_vec2()?;
        let bias: Vec<f32> = self.correction_bias.to_dtype(DType::F32)?.to_vec1()?;
        let choices: Vec<Vec<(usize, f32)>> = original.iter().map(|p| select(&self.spec, p, &bias)).collect();
        let expert_in = match &self.latent {
            Some((down, _)) => down.forward(&xs)?,
            None => xs.clone(),
        };
        let width = expert_in.dim(D::Minus1)?;
        let mut y =
            dispatch_experts(&expert_in, &choices, self.spec.experts, width, |e, rows| self.experts[e].forward(rows))?;
        if let Some((_, up)) = &self.latent {
            y = up.forward(&y)?;
        }
        if let Some(shared) = &self.shared {
            y = (y + shared.forward(&xs)?)?;
        }
        y.reshape(dims)
    }
}

/// mlx-lm's `group_expert_select` for one token: `(expert, weight)` pairs from the sigmoid
/// scores and the correction bias.
fn select(s: &RouterSpec, original: &[f32], bias: &[f32]) -> Vec<(usize, f32)> {
    let mut scores: Vec<f32> = original.iter().zip(bias).map(|(p, b)| p + b).collect();
    if s.n_group > 1 {
        // Groups ranked by the sum of their two best scores; all but the best
        // `topk_group` groups are zeroed (not removed: mlx-lm writes 0.0).
        let per = s.experts / s.n_group;
        let group_score = |g: usize| -> f32 {
            let mut v: Vec<f32> = scores[g * per..(g + 1) * per].to_vec();
            v.sort_by(|a, b| b.total_cmp(a));
            v.iter().take(2).sum()
        };
        let mut groups: Vec<(usize, f32)> = (0..s.n_group).map(|g| (g, group_score(g))).collect();
        groups.sort_by(|a, b| a.1.total_cmp(&b.1));
        for &(g, _) in &groups[..s.n_group - s.topk_group] {
            scores[g * per..(g + 1) * per].iter_mut().for_each(|v| *v = 0.0);
        }
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order.truncate(s.top_k);
    let total: f32 =
        if s.top_k > 1 && s.norm_topk_prob { order.iter().map(|&e| original[e]).sum::<f32>() + 1e-20 } else { 1.0 };
    order.into_iter().map(|e| (e, original[e] / total * s.scaling)).collect()
}

/// The Nemotron-H decoder on the shared [`Stack`]: one residual unit per block, whose op
/// is a Mamba-2 mixer, attention, an MLP or a MoE.
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    let cfg = Config::from_json(&ckpt.config)?;
    let types = cfg.blocks()?;
    let embeddings = Embeddings::load_dense(ckpt, "backbone.embeddings", device)?;
    // mlx-lm always builds a separate `lm_head`; fall back to the embeddings only for a
    // checkpoint that was saved tied.
    let head = Head::tied_or(ckpt, "lm_head", false, &embeddings, || Ok(Head::Dense(ckpt.weight("lm_head", device)?)))?;
    let router = RouterSpec {
        experts: cfg.n_routed_experts.unwrap_or(0),
        top_k: cfg.num_experts_per_tok.unwrap_or(0),
        n_group: cfg.n_group.unwrap_or(1),
        topk_group: cfg.topk_group.unwrap_or(1),
        norm_topk_prob: cfg.norm_topk_prob.unwrap_or(false),
        scaling: cfg.routed_scaling_factor.unwrap_or(1.0) as f32,
    };
    let head_dim = cfg.head_dim();
    let bar = layer_progress(progress, types.len(), "nemotron_h");
    let mut units = Vec::with_capacity(types.len());
    for (i, kind) in types.iter().enumerate() {
        let l = format!("backbone.layers.{i}");
        let m = format!("{l}.mixer");
        let op = match kind {
            BlockType::Mamba => {
                Op::Sequence(Box::new(Recurrent { layer: i, mixer: Mamba2Mixer::load(ckpt, &m, cfg.mamba(), device)? }))
            }
            BlockType::Attention => Op::Sequence(Box::new(HybridAttention::load(
                ckpt,
                i,
                &m,
                (cfg.num_attention_heads, cfg.num_key_value_heads, head_dim),
                (head_dim as f64).powf(-0.5),
                None,
                device,
            )?)),
            BlockType::Mlp => Op::Rows(Box::new(ReluSquaredMlp::load(ckpt, &m, device)?)),
            BlockType::Moe => Op::Rows(Box::new(Moe::load(ckpt, &m, router, cfg.n_shared_experts.is_some(), device)?)),
        };
        units.push(Residual::new(ckpt.tensor(&format!("{l}.norm.weight"), device)?, op));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let spec = StackSpec {
        name: "nemotron_h".into(),
        context_length: cfg.max_position_embeddings,
        cache_layers: types.len(),
        rms_eps: cfg.layer_norm_epsilon,
        embed_scale: None,
        logits_divisor: None,
    };
    Ok(Box::new(Stack::new(spec, embeddings, units, ckpt.tensor("backbone.norm_f.weight", device)?, head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layer_stack_reads_every_spelling() {
        let base = serde_json::json!({
            "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 512,
            "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_num_heads": 4,
            "mamba_head_dim": 16, "ssm_state_size": 16, "conv_kernel": 4, "n_groups": 2,
            "layer_norm_epsilon": 1e-5
        });
        let with = |key: &str, value: Value| {
            let mut cfg = base.clone();
            cfg[key] = value;
            Config::from_json(&cfg).and_then(|c| c.blocks())
        };
        use BlockType::*;
        let expected = vec![Mamba, Mlp, Attention, Moe];
        assert_eq!(with("hybrid_override_pattern", "M-*E".into()).ok(), Some(expected.clone()));
        assert_eq!(
            with("hybrid_override_pattern", serde_json::json!(["M", "-", "*", "E"])).ok(),
            Some(expected.clone())
        );
        let names = serde_json::json!(["mamba", "mlp", "attention", "moe"]);
        assert_eq!(with("layers_block_type", names.clone()).ok(), Some(expected.clone()));
        assert_eq!(with("layer_types", names).ok(), Some(expected));
        assert!(with("hybrid_override_pattern", "M?".into()).is_err());
        assert!(Config::from_json(&base).and_then(|c| c.blocks()).is_err());
    }

    #[test]
    fn time_step_limit_reads_non_finite_spellings() {
        let limit = |text: &str| {
            let cfg: Value = super::super::parse_config(&format!(
                r#"{{"hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 512,
                "num_attention_heads": 4, "num_key_value_heads": 2, "mamba_num_heads": 4,
                "mamba_head_dim": 16, "ssm_state_size": 16, "conv_kernel": 4, "n_groups": 2,
                "layer_norm_epsilon": 1e-5, "hybrid_override_pattern": "M"{text}}}"#
            ))
            .expect("json");
            Config::from_json(&cfg).map(|c| c.mamba().time_step_limit)
        };
        assert_eq!(limit("").ok(), Some((0.0, f64::INFINITY)));
        assert_eq!(limit(r#", "time_step_limit": [0.0, Infinity]"#).ok(), Some((0.0, f64::INFINITY)));
        assert_eq!(
            limit(r#", "time_step_limit": [0.001, {"__float__": "Infinity"}]"#).ok(),
            Some((0.001, f64::INFINITY))
        );
        assert_eq!(limit(r#", "time_step_limit": [0.0, 1e30]"#).ok(), Some((0.0, 1e30)));
        assert!(limit(r#", "time_step_limit": [1.0, 0.5]"#).is_err());
    }

    #[test]
    fn group_limited_routing_drops_the_weaker_groups() {
        let spec = RouterSpec { experts: 4, top_k: 2, n_group: 2, topk_group: 1, norm_topk_prob: true, scaling: 2.5 };
        let original = [0.9, 0.1, 0.5, 0.6];
        // Group 0 scores 0.9 + 0.1, group 1 scores 0.5 + 0.6: only group 1 competes.
        let picks = select(&spec, &original, &[0.0; 4]);
        assert_eq!(picks.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 2]);
        assert!((picks[0].1 - 0.6 / 1.1 * 2.5).abs() < 1e-6);
        // One group: plain top-k; the bias picks but the unbiased scores weigh.
        let flat = RouterSpec { n_group: 1, ..spec };
        let picks = select(&flat, &original, &[0.0, 0.0, 0.5, 0.0]);
        assert_eq!(picks.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 0]);
        assert!((picks[0].1 - 0.5 / 1.4 * 2.5).abs() < 1e-6);
    }
}
