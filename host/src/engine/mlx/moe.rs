//! Pieces shared by the MoE decoders ([`super::gpt_oss`], [`super::glm4_moe`],
//! [`super::deepseek_v3`], [`super::minimax`]): the SwiGLU MLP, a bank of stacked experts
//! that runs each expert only on the tokens routed to it, mlx-lm's routers, and attention
//! with optional sinks and sliding windows.
//!
//! Routing is decided on the host: it is a handful of numbers per token, and grouping the
//! tokens by expert turns every selected expert into one dense matmul over just its tokens,
//! while unselected experts cost nothing.

use candle_core::{D, Device, Module, Result, Tensor};

use super::{Checkpoint, MlxLinear};
use crate::engine::EngineError;
use crate::engine::layers::FeedForward;

/// Per token, the chosen experts and the weight of each one's output.
pub type Routes = Vec<Vec<(usize, f32)>>;

/// The gated activation of an expert (or MLP): `act(gate) * up` in some form.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Glu {
    /// `silu(gate) * up` (mlx-lm `swiglu`).
    Swiglu,
    /// gpt-oss `swiglu_oai`: `g = min(gate, limit)`, `u = clip(up, -limit, limit)`,
    /// `(g * sigmoid(alpha * g)) * (u + 1)`.
    SwigluOai { alpha: f32, limit: f32 },
}

impl Glu {
    fn apply(self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        match self {
            Self::Swiglu => candle_nn::ops::silu(gate)? * up,
            Self::SwigluOai { alpha, limit } => {
                let limit = f64::from(limit);
                let g = gate.clamp(f64::NEG_INFINITY, limit)?;
                let u = up.clamp(-limit, limit)?;
                let glu = (&g * candle_nn::ops::sigmoid(&(&g * f64::from(alpha))?)?)?;
                glu * (u + 1.0)?
            }
        }
    }
}

/// A gated feed-forward: `down(act(gate(x), up(x)))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    gate: MlxLinear,
    up: MlxLinear,
    down: MlxLinear,
    glu: Glu,
}

impl Mlp {
    /// The SwiGLU MLP under `prefix` (`gate_proj`, `up_proj`, `down_proj`).
    pub fn load(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        Ok(Self {
            gate: ckpt.packed_linear(&format!("{prefix}.gate_proj"), device)?,
            up: ckpt.packed_linear(&format!("{prefix}.up_proj"), device)?,
            down: ckpt.packed_linear(&format!("{prefix}.down_proj"), device)?,
            glu: Glu::Swiglu,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&self.glu.apply(&self.gate.forward(x)?, &self.up.forward(x)?)?)
    }
}

/// mlx-lm's `SwitchGLU`: experts stacked as `[experts, out, in]` under `prefix`
/// (`gate_proj`, `up_proj`, `down_proj`, each with an optional `[experts, out]` bias).
#[derive(Debug, Clone)]
pub struct Experts {
    experts: Vec<Mlp>,
}

impl Experts {
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        count: usize,
        glu: Glu,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        // Split once at load time so that each expert is a plain matmul (packed when exact).
        let stacked = |name: &str| ckpt.packed_experts(&format!("{prefix}.{name}"), count, device);
        let (gates, ups, downs) = (stacked("gate_proj")?, stacked("up_proj")?, stacked("down_proj")?);
        let experts =
            gates.into_iter().zip(ups).zip(downs).map(|((gate, up), down)| Mlp { gate, up, down, glu }).collect();
        Ok(Self { experts })
    }

    /// `sum_k weight_k * expert_k(x)` per token of `xs` `[tokens, hidden]`.
    pub fn forward(&self, xs: &Tensor, routes: &Routes) -> Result<Tensor> {
        let mut by_expert: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (token, chosen) in routes.iter().enumerate() {
            for &(e, w) in chosen {
                let Some((rows, weights)) = by_expert.get_mut(e) else {
                    candle_core::bail!("router chose expert {e} of {}", self.experts.len());
                };
                rows.push(token as u32);
                weights.push(w);
            }
        }
        let mut out = xs.zeros_like()?;
        for (expert, (rows, weights)) in self.experts.iter().zip(by_expert) {
            if rows.is_empty() {
                continue;
            }
            let n = rows.len();
            let rows = Tensor::from_vec(rows, n, xs.device())?;
            let weights = Tensor::from_vec(weights, (n, 1), xs.device())?.to_dtype(xs.dtype())?;
            let y = expert.forward(&xs.index_select(&rows, 0)?)?.broadcast_mul(&weights)?;
            out = out.index_add(&rows, &y, 0)?;
        }
        Ok(out)
    }
}

/// Indices of the `k` largest values, largest first (mlx's `argpartition` picks the same
/// set; the order does not matter to a weighted sum).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(k);
    order
}

/// gpt-oss: the top-k raw router logits, softmax over just those.
pub fn route_top_k_softmax(logits: &[Vec<f32>], k: usize) -> Routes {
    logits
        .iter()
        .map(|l| {
            let chosen = top_k(l, k);
            let max = chosen.iter().map(|&e| l[e]).fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = chosen.iter().map(|&e| (l[e] - max).exp()).collect();
            let total: f32 = exps.iter().sum();
            chosen.into_iter().zip(exps).map(|(e, x)| (e, x / total)).collect()
        })
        .collect()
}

/// Sigmoid scoring with a selection bias (DeepSeek's `noaux_tc`, as in mlx-lm's
/// `group_expert_select`, and MiniMax's router).
#[derive(Debug, Clone)]
pub struct SigmoidRouter {
    pub top_k: usize,
    /// Experts come in `n_group` groups; only the best `topk_group` groups (scored by the
    /// sum of their two best biased scores) may be chosen from.
    pub n_group: usize,
    pub topk_group: usize,
    /// `e_score_correction_bias`: added to the scores for choosing only.
    pub bias: Vec<f32>,
    /// Divide the chosen (unbiased) scores by their sum plus `norm_eps`.
    pub normalize: bool,
    pub norm_eps: f32,
    /// `routed_scaling_factor`, applied after normalising.
    pub scale: f32,
}

impl SigmoidRouter {
    pub fn route(&self, logits: &[Vec<f32>]) -> Result<Routes> {
        let experts = self.bias.len();
        if self.n_group == 0 || !experts.is_multiple_of(self.n_group) || self.top_k == 0 || self.top_k > experts {
            candle_core::bail!("cannot route top-{} of {experts} experts in {} groups", self.top_k, self.n_group);
        }
        let per_group = experts / self.n_group;
        logits
            .iter()
            .map(|l| {
                if l.len() != experts {
                    candle_core::bail!("router gave {} scores for {experts} experts", l.len());
                }
                let scores: Vec<f32> = l.iter().map(|&g| 1.0 / (1.0 + (-g).exp())).collect();
                let mut biased: Vec<f32> = scores.iter().zip(&self.bias).map(|(s, b)| s + b).collect();
                if self.n_group > 1 {
                    let group_scores: Vec<f32> = biased
                        .chunks(per_group)
                        .map(|g| top_k(g, 2.min(per_group)).iter().map(|&i| g[i]).sum())
                        .collect();
                    // mlx-lm zeroes (not -inf) the scores of the weakest groups.
                    let mut weakest: Vec<usize> = (0..self.n_group).collect();
                    weakest.sort_by(|&a, &b| group_scores[a].total_cmp(&group_scores[b]));
                    for &g in weakest.iter().take(self.n_group.saturating_sub(self.topk_group)) {
                        biased[g * per_group..(g + 1) * per_group].iter_mut().for_each(|s| *s = 0.0);
                    }
                }
                let chosen = top_k(&biased, self.top_k);
                let total: f32 = chosen.iter().map(|&e| scores[e]).sum::<f32>() + self.norm_eps;
                let norm = if self.normalize { total } else { 1.0 };
                Ok(chosen.into_iter().map(|e| (e, scores[e] / norm * self.scale)).collect())
            })
            .collect()
    }
}

/// A sigmoid-routed MoE block: `gate` scores the experts, [`SigmoidRouter`] picks them,
/// plus an always-on shared expert where the architecture has one (DeepSeek-V3 and GLM-4
/// MoE `shared_experts`; MiniMax has none).
#[derive(Debug, Clone)]
pub struct SigmoidMoe {
    pub gate: MlxLinear,
    pub router: SigmoidRouter,
    pub experts: Experts,
    pub shared: Option<Mlp>,
}

impl SigmoidMoe {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let xs = x.reshape(((), x.dim(D::Minus1)?))?;
        let logits: Vec<Vec<f32>> = self.gate.forward(&xs)?.to_vec2()?;
        let routes = self.router.route(&logits)?;
        let mut y = self.experts.forward(&xs, &routes)?;
        if let Some(shared) = &self.shared {
            y = (y + shared.forward(&xs)?)?;
        }
        y.reshape(dims)
    }
}

impl FeedForward for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Mlp::forward(self, x)
    }
}

impl FeedForward for SigmoidMoe {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        SigmoidMoe::forward(self, x)
    }
}

/// How a DeepSeek-style MoE block routes (DeepSeek-V3, GLM-4 MoE): the fields of their
/// `config.json`s that [`SigmoidRouter`] takes.
#[derive(Debug, Clone, Copy)]
pub struct GroupRouting {
    pub experts: usize,
    pub top_k: usize,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
    pub routed_scaling_factor: f32,
    /// `n_shared_experts` is set: an always-on `shared_experts` MLP.
    pub shared: bool,
}

impl SigmoidMoe {
    /// The DeepSeek-style block under `prefix` (`{prefix}.gate` with its
    /// `e_score_correction_bias`, `switch_mlp`, `shared_experts`).
    pub fn load_grouped(
        ckpt: &Checkpoint,
        prefix: &str,
        routing: GroupRouting,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        let router = SigmoidRouter {
            top_k: routing.top_k,
            n_group: routing.n_group,
            topk_group: routing.topk_group,
            bias: vector(ckpt, &format!("{prefix}.gate.e_score_correction_bias"), routing.experts)?,
            normalize: routing.norm_topk_prob && routing.top_k > 1,
            norm_eps: 0.0,
            scale: routing.routed_scaling_factor,
        };
        let shared =
            if routing.shared { Some(Mlp::load(ckpt, &format!("{prefix}.shared_experts"), device)?) } else { None };
        Ok(Self {
            gate: ckpt.packed_linear(&format!("{prefix}.gate"), device)?,
            router,
            experts: Experts::load(ckpt, &format!("{prefix}.switch_mlp"), routing.experts, Glu::Swiglu, device)?,
            shared,
        })
    }
}

/// The MoE fields of DeepSeek-V3 and GLM-4 MoE configs: the same names and mlx-lm
/// defaults in both.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct GroupedMoeArgs {
    #[serde(default)]
    pub n_shared_experts: Option<usize>,
    #[serde(default)]
    pub n_routed_experts: Option<usize>,
    #[serde(default = "one_f32")]
    pub routed_scaling_factor: f32,
    #[serde(default = "yes")]
    pub norm_topk_prob: bool,
    #[serde(default = "one")]
    pub n_group: usize,
    #[serde(default = "one")]
    pub topk_group: usize,
    #[serde(default = "one")]
    pub num_experts_per_tok: usize,
    #[serde(default)]
    pub first_k_dense_replace: usize,
}

fn one() -> usize {
    1
}
fn one_f32() -> f32 {
    1.0
}
fn yes() -> bool {
    true
}

impl GroupedMoeArgs {
    /// The feed-forward under `prefix` (`model.layers.3.mlp`): the grouped MoE where
    /// `sparse` and the config has routed experts, else the dense SwiGLU MLP.
    pub fn feed_forward(
        &self,
        ckpt: &Checkpoint,
        prefix: &str,
        sparse: bool,
        device: &Device,
    ) -> std::result::Result<Box<dyn FeedForward>, EngineError> {
        Ok(match self.n_routed_experts {
            Some(experts) if sparse => {
                let routing = GroupRouting {
                    experts,
                    top_k: self.num_experts_per_tok,
                    n_group: self.n_group,
                    topk_group: self.topk_group,
                    norm_topk_prob: self.norm_topk_prob,
                    routed_scaling_factor: self.routed_scaling_factor,
                    shared: self.n_shared_experts.is_some(),
                };
                Box::new(SigmoidMoe::load_grouped(ckpt, prefix, routing, device)?)
            }
            _ => Box::new(Mlp::load(ckpt, prefix, device)?),
        })
    }
}

/// A plain f32 vector parameter (`e_score_correction_bias`), checked to have `len` entries.
pub fn vector(ckpt: &Checkpoint, name: &str, len: usize) -> std::result::Result<Vec<f32>, EngineError> {
    let v: Vec<f32> = ckpt.tensor(name, &Device::Cpu)?.flatten_all()?.to_vec1()?;
    if v.len() != len {
        return Err(EngineError::Metadata(format!("{name} has {} entries, expected {len}", v.len())));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_limited_routing_skips_weak_groups() {
        let router = SigmoidRouter {
            top_k: 2,
            n_group: 2,
            topk_group: 1,
            bias: vec![0.0; 4],
            normalize: true,
            norm_eps: 0.0,
            scale: 2.0,
        };
        // Group 0 = experts 0,1 (sum of scores higher); expert 3 alone beats expert 1.
        let routes = router.route(&[vec![3.0, 2.0, -5.0, 2.5]]).expect("routes");
        let chosen: Vec<usize> = routes[0].iter().map(|r| r.0).collect();
        assert_eq!(chosen, vec![0, 1]);
        let total: f32 = routes[0].iter().map(|r| r.1).sum();
        assert!((total - 2.0).abs() < 1e-6);
    }

    #[test]
    fn top_k_softmax_normalises_over_the_chosen() {
        let routes = route_top_k_softmax(&[vec![0.0, 1.0, 1.0, -3.0]], 2);
        assert_eq!(routes[0].len(), 2);
        assert!(routes[0].iter().all(|&(e, w)| (e == 1 || e == 2) && (w - 0.5).abs() < 1e-6));
    }
}
