//! Qwen3-MoE (mlx-lm `qwen3_moe`): the Qwen3 dense block (q/k norms, plain RoPE) whose MLP
//! is, on sparse layers, a softmax-routed mixture of SwiGLU experts. Also the text model of
//! Qwen3-VL-MoE (`qwen3_vl_moe`), under `language_model.`.
//!
//! Routing: softmax over all experts (f32), the top `num_experts_per_tok`, optionally
//! renormalised to sum to one, then the weighted sum of those experts' outputs.

use candle_core::{Device, Module, Tensor};
use serde::Deserialize;

use super::Checkpoint;
use super::archs::{Common, parse};
use super::dense::{self, Activation, FeedForward, RopeSpec};
use super::switch::{Route, SwitchGlu, score_rows, softmax, top_k};
use crate::engine::EngineError;
use crate::engine::arch::Loaded;
use crate::engine::layers::Stack;

/// `config.json` of a `qwen3_moe` checkpoint (mlx-lm's `ModelArgs` names and defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(flatten)]
    pub common: Common,
    pub num_experts: usize,
    pub num_experts_per_tok: usize,
    #[serde(default = "one")]
    pub decoder_sparse_step: usize,
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    #[serde(default)]
    pub norm_topk_prob: bool,
}

fn one() -> usize {
    1
}

impl Config {
    /// mlx-lm's rule for which layers get the sparse block.
    fn is_sparse(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step.max(1))
    }
}

/// `Qwen3MoeSparseMoeBlock`: router `gate` (a Linear, 8-bit in mlx-community checkpoints)
/// and the stacked experts `switch_mlp`.
#[derive(Debug)]
pub struct SparseMoe {
    gate: candle_nn::Linear,
    experts: SwitchGlu,
    top_k: usize,
    norm_topk_prob: bool,
}

impl SparseMoe {
    pub fn load(ckpt: &Checkpoint, prefix: &str, cfg: &Config, device: &Device) -> Result<Self, EngineError> {
        let experts = SwitchGlu::load(ckpt, &format!("{prefix}.switch_mlp"), Activation::Silu, device)?;
        if cfg.num_experts_per_tok == 0 || cfg.num_experts_per_tok > experts.num_experts() {
            return Err(EngineError::Metadata(format!(
                "qwen3_moe: num_experts_per_tok {} with {} experts",
                cfg.num_experts_per_tok,
                experts.num_experts()
            )));
        }
        Ok(Self {
            gate: ckpt.linear(&format!("{prefix}.gate"), device)?,
            experts,
            top_k: cfg.num_experts_per_tok,
            norm_topk_prob: cfg.norm_topk_prob,
        })
    }

    fn routes(&self, x: &Tensor) -> candle_core::Result<Vec<Route>> {
        let rows = score_rows(&self.gate.forward(x)?)?;
        Ok(rows
            .iter()
            .map(|logits| {
                let probs = softmax(logits);
                let chosen = top_k(&probs, self.top_k);
                let total: f32 = chosen.iter().map(|&e| probs[e]).sum();
                let norm = if self.norm_topk_prob { total } else { 1.0 };
                chosen.into_iter().map(|e| (e, probs[e] / norm)).collect()
            })
            .collect())
    }
}

impl FeedForward for SparseMoe {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let hidden = x.dim(candle_core::D::Minus1)?;
        let flat = x.reshape(((), hidden))?;
        let routes = self.routes(&flat)?;
        self.experts.forward(&flat, &routes)?.reshape(dims)
    }
}

/// The dense decoder with [`SparseMoe`] on the sparse layers.
pub fn load(ckpt: &Checkpoint, device: &Device, progress: bool) -> Result<Stack, EngineError> {
    load_text_model(ckpt, &ckpt.config, "qwen3_moe", "model", "lm_head", device, progress)
}

/// The Qwen3-VL-MoE wrapper (mlx-lm `qwen3_vl_moe`): this text model, configured by
/// `text_config`, under `language_model.`. Its M-RoPE settings are ignored like all of
/// qwen3_moe's `rope_scaling` (plain RoPE is what M-RoPE gives text-only positions).
pub fn load_vl(ckpt: &Checkpoint, device: &Device, progress: bool) -> Result<Stack, EngineError> {
    let text = ckpt
        .config
        .get("text_config")
        .ok_or_else(|| EngineError::Metadata(String::from("qwen3_vl_moe config.json has no `text_config`")))?;
    load_text_model(ckpt, text, "qwen3_vl_moe", "language_model.model", "language_model.lm_head", device, progress)
}

fn load_text_model(
    ckpt: &Checkpoint,
    config: &serde_json::Value,
    arch: &str,
    prefix: &str,
    head: &str,
    device: &Device,
    progress: bool,
) -> Result<Stack, EngineError> {
    let cfg: Config = parse(config, arch)?;
    let c = &cfg.common;
    // mlx-lm's qwen3_moe attention uses plain `nn.RoPE(head_dim, base=rope_theta)` and
    // ignores `rope_scaling`; so do we, to produce the same logits.
    let rope = RopeSpec::standard(c.head_dim(), c.rope_theta);
    let mut spec = c.spec(arch, false, Some(rope));
    spec.prefix = prefix.to_string();
    spec.head = head.to_string();
    spec.qk_norm = true;
    let custom = |index: usize, prefix: &str| -> Result<Option<Box<dyn FeedForward>>, EngineError> {
        if !cfg.is_sparse(index) {
            return Ok(None);
        }
        Ok(Some(Box::new(SparseMoe::load(ckpt, &format!("{prefix}.mlp"), &cfg, device)?)))
    };
    dense::load_with(ckpt, spec, device, progress, &custom)
}

/// The architecture registry's entry point ([`crate::engine::arch`]).
pub fn model(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(load(ckpt, device, progress)?))
}

/// The registry's entry point for `qwen3_vl_moe` (the text model of the VL checkpoint).
pub fn model_vl(ckpt: &Checkpoint, _: &str, device: &Device, progress: bool) -> Loaded {
    Ok(Box::new(load_vl(ckpt, device, progress)?))
}
