//! Stacked experts (mlx-lm's `switch_layers.SwitchGLU`) and the routing helpers the MoE
//! architectures share.
//!
//! The checkpoint stores each projection of all experts as one `[E, out, in]` tensor
//! (`switch_mlp.gate_proj`, ...). A forward pass runs only the experts some token was
//! routed to, each over just the rows routed to it, and scatters the weighted results
//! back, so the cost is `k` experts per token rather than all `E`.

use candle_core::{DType, Device, Module, Result, Tensor};

use super::dense::Activation;
use super::{Checkpoint, MlxLinear};
use crate::engine::EngineError;

/// The experts a token was routed to, with the weight of each one's output.
pub type Route = Vec<(usize, f32)>;

#[derive(Debug)]
struct Expert {
    gate: MlxLinear,
    up: MlxLinear,
    down: MlxLinear,
}

/// `down(act(gate(x)) * up(x))` for each of `E` experts.
#[derive(Debug)]
pub struct SwitchGlu {
    experts: Vec<Expert>,
    activation: Activation,
}

impl SwitchGlu {
    /// Loads `{prefix}.{gate,up,down}_proj`, each `[E, out, in]` (quantized or not).
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        activation: Activation,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        let count = ckpt.raw_dims(&format!("{prefix}.gate_proj.weight"))?.first().copied().unwrap_or(0);
        // Each expert is its own layer: packed Q4_1 when exact, else an f32 view.
        let stacked = |name: &str| ckpt.packed_experts(&format!("{prefix}.{name}"), count, device);
        let (gates, ups, downs) = (stacked("gate_proj")?, stacked("up_proj")?, stacked("down_proj")?);
        let experts = gates
            .into_iter()
            .zip(ups)
            .zip(downs)
            .map(|((gate, up), down)| Expert { gate, up, down })
            .collect::<Vec<_>>();
        Ok(Self { experts, activation })
    }

    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// `x` `[n, hidden]`, `routes[i]` the experts of row `i`: returns `[n, hidden]`, row `i`
    /// being `sum_(e, w) w * expert_e(x_i)`.
    pub fn forward(&self, x: &Tensor, routes: &[Route]) -> Result<Tensor> {
        let (n, _) = x.dims2()?;
        if routes.len() != n {
            candle_core::bail!("{} routes for {n} tokens", routes.len());
        }
        let device = x.device();
        // Per expert: the rows routed to it and their weighted outputs, scattered back in
        // one `index_add` at the end.
        let (mut all_rows, mut outputs) = (Vec::new(), Vec::new());
        for (e, expert) in self.experts.iter().enumerate() {
            let (rows, weights): (Vec<u32>, Vec<f32>) = routes
                .iter()
                .enumerate()
                .flat_map(|(row, route)| route.iter().filter(|(ex, _)| *ex == e).map(move |(_, w)| (row as u32, *w)))
                .unzip();
            if rows.is_empty() {
                continue;
            }
            let count = rows.len();
            let xs = x.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
            let gate = expert.gate.forward(&xs)?;
            let gate = match self.activation {
                Activation::Silu => candle_nn::ops::silu(&gate)?,
                Activation::GeluTanh => gate.gelu()?,
            };
            let y = expert.down.forward(&(gate * expert.up.forward(&xs)?)?)?;
            let weights = Tensor::from_vec(weights, (count, 1), device)?.to_dtype(y.dtype())?;
            outputs.push(y.broadcast_mul(&weights)?);
            all_rows.extend(rows);
        }
        let out = x.zeros_like()?;
        if outputs.is_empty() {
            return Ok(out);
        }
        let count = all_rows.len();
        out.index_add(&Tensor::from_vec(all_rows, count, device)?, &Tensor::cat(&outputs, 0)?, 0)
    }
}

/// Router scores `[n, E]` as host rows (they are tiny, and top-k is a host-side choice).
pub fn score_rows(scores: &Tensor) -> Result<Vec<Vec<f32>>> {
    scores.to_dtype(DType::F32)?.to_vec2()
}

/// Indices of the `k` largest entries of `row`, largest first.
pub fn top_k(row: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..row.len()).collect();
    order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
    order.truncate(k);
    order
}

/// Softmax over `values`, in f32 with the maximum subtracted (mlx's `precise=True`).
pub fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.iter().map(|e| e / sum).collect()
}
