//! The gated delta-net linear attention of Qwen3-Next and Qwen3.5, as mlx-lm computes it
//! (`qwen3_next.Qwen3NextGatedDeltaNet`, `qwen3_5.GatedDeltaNet`, `gated_delta.py`).
//!
//! Per token: project to q, k, v (and the output gate z, the write strength b and the decay
//! input a), run q|k|v through a causal depthwise convolution + SiLU, L2-normalise q and k,
//! then for every value head update a `Dv x Dk` state with the delta rule
//! `S = g·S; S += outer(β·(v − S k), k); o = S q` and read it out through a gated RMSNorm.
//!
//! Everything a sequence carries between calls (the last `K-1` convolution inputs and the
//! delta state) comes in and goes out explicitly, so it lives in the engine's per-sequence
//! [`crate::engine::KvCache`], not in the layer.

use candle_core::{D, DType, Device, Module, Result, Tensor};

use super::{Checkpoint, MlxLinear, dense_linear};
use crate::engine::EngineError;
use crate::engine::layers::RecurrentMixer;
use crate::engine::models::rms_norm;

/// The shape of one linear-attention layer, from `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaNetSpec {
    pub key_heads: usize,
    pub value_heads: usize,
    pub key_head_dim: usize,
    pub value_head_dim: usize,
    pub conv_kernel: usize,
    /// Qwen3-Next fuses the input projections into `in_proj_qkvz` / `in_proj_ba`, grouped
    /// per key head; Qwen3.5 stores `in_proj_qkv`, `in_proj_z`, `in_proj_b`, `in_proj_a`.
    pub fused_projections: bool,
}

impl DeltaNetSpec {
    fn key_dim(&self) -> usize {
        self.key_heads * self.key_head_dim
    }

    fn value_dim(&self) -> usize {
        self.value_heads * self.value_head_dim
    }

    /// Channels of the convolution: q | k | v.
    fn conv_dim(&self) -> usize {
        2 * self.key_dim() + self.value_dim()
    }
}

pub struct GatedDeltaNet {
    spec: DeltaNetSpec,
    eps: f64,
    /// `[q | k | v]` rows, in the order the convolution channels expect.
    qkv: MlxLinear,
    z: MlxLinear,
    b: MlxLinear,
    a: MlxLinear,
    /// Depthwise convolution taps: `taps[j]` `[conv_dim]` multiplies input `t + j`.
    taps: Vec<Tensor>,
    /// `-exp(A_log)` per value head.
    neg_a: Tensor,
    dt_bias: Tensor,
    norm: Tensor,
    out: MlxLinear,
}

impl std::fmt::Debug for GatedDeltaNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatedDeltaNet").field("spec", &self.spec).finish_non_exhaustive()
    }
}

fn shape_error(prefix: &str, what: &str) -> EngineError {
    EngineError::Metadata(format!("{prefix}: {what} does not match the linear-attention config"))
}

impl GatedDeltaNet {
    /// Loads `prefix` (`...layers.N.linear_attn`).
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        spec: DeltaNetSpec,
        eps: f64,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        if spec.key_heads == 0 || !spec.value_heads.is_multiple_of(spec.key_heads) || spec.conv_kernel == 0 {
            return Err(EngineError::Metadata(format!(
                "{prefix}: {} value heads cannot be grouped over {} key heads (kernel {})",
                spec.value_heads, spec.key_heads, spec.conv_kernel
            )));
        }
        let [qkv, z, b, a] = if spec.fused_projections {
            Self::unfuse(ckpt, prefix, spec, device)?
        } else {
            let linear = |name: &str| ckpt.packed_linear(&format!("{prefix}.{name}"), device);
            [linear("in_proj_qkv")?, linear("in_proj_z")?, linear("in_proj_b")?, linear("in_proj_a")?]
        };
        if qkv.out_features()? != spec.conv_dim() || z.out_features()? != spec.value_dim() {
            return Err(shape_error(prefix, "the input projection"));
        }
        // MLX layout `[C, K, 1]`: channel c, tap j.
        let conv = ckpt.tensor(&format!("{prefix}.conv1d.weight"), device)?;
        if conv.dims() != [spec.conv_dim(), spec.conv_kernel, 1] {
            return Err(shape_error(prefix, "conv1d.weight"));
        }
        let conv = conv.squeeze(2)?;
        let taps = (0..spec.conv_kernel).map(|j| conv.narrow(1, j, 1)?.flatten_all()).collect::<Result<Vec<_>>>()?;
        let neg_a = ckpt.tensor(&format!("{prefix}.A_log"), device)?.exp()?.neg()?;
        Ok(Self {
            spec,
            eps,
            qkv,
            z,
            b,
            a,
            taps,
            neg_a,
            dt_bias: ckpt.tensor(&format!("{prefix}.dt_bias"), device)?,
            norm: ckpt.tensor(&format!("{prefix}.norm.weight"), device)?,
            out: ckpt.packed_linear(&format!("{prefix}.out_proj"), device)?,
        })
    }

    /// Reorders Qwen3-Next's head-grouped `in_proj_qkvz` (per key head: q, k, its group of
    /// v heads, their z) and `in_proj_ba` (per key head: its b's, then its a's) into the
    /// separate Qwen3.5 layout. Reordering rows of a linear layer is exact, and both
    /// architectures then share one forward pass.
    fn unfuse(
        ckpt: &Checkpoint,
        prefix: &str,
        spec: DeltaNetSpec,
        device: &Device,
    ) -> std::result::Result<[MlxLinear; 4], EngineError> {
        let (nk, dk, dv) = (spec.key_heads, spec.key_head_dim, spec.value_head_dim);
        let group = spec.value_heads / nk;
        let qkvz = ckpt.weight(&format!("{prefix}.in_proj_qkvz"), device)?;
        let ba = ckpt.weight(&format!("{prefix}.in_proj_ba"), device)?;
        let hidden = qkvz.dim(D::Minus1)?;
        let per_head = 2 * dk + 2 * group * dv;
        if qkvz.dims() != [nk * per_head, hidden] {
            return Err(shape_error(prefix, "in_proj_qkvz"));
        }
        if ba.dims() != [nk * 2 * group, hidden] {
            return Err(shape_error(prefix, "in_proj_ba"));
        }
        let qkvz = qkvz.reshape((nk, per_head, hidden))?;
        let ba = ba.reshape((nk, 2 * group, hidden))?;
        let rows = |w: &Tensor, start: usize, len: usize| -> Result<Tensor> {
            w.narrow(1, start, len)?.contiguous()?.reshape(((), hidden))
        };
        let q = rows(&qkvz, 0, dk)?;
        let k = rows(&qkvz, dk, dk)?;
        let v = rows(&qkvz, 2 * dk, group * dv)?;
        let z = rows(&qkvz, 2 * dk + group * dv, group * dv)?;
        let linear = |w: Tensor| dense_linear(w, None);
        Ok([
            linear(Tensor::cat(&[q, k, v], 0)?),
            linear(z),
            linear(rows(&ba, 0, group)?),
            linear(rows(&ba, group, group)?),
        ])
    }

    /// An empty recurrent state for one sequence: `[conv window, delta state]`.
    fn initial_state(&self, batch: usize, device: &Device) -> Result<Vec<Tensor>> {
        let s = &self.spec;
        Ok(vec![
            Tensor::zeros((batch, s.conv_kernel - 1, s.conv_dim()), DType::F32, device)?,
            Tensor::zeros((batch * s.value_heads, s.value_head_dim, s.key_head_dim), DType::F32, device)?,
        ])
    }

    /// Runs `x` `[b, t, hidden]` after `state` (`None` at the start of a sequence); returns
    /// the output and the state after the last token.
    pub fn forward(&self, x: &Tensor, state: Option<&[Tensor]>) -> Result<(Tensor, Vec<Tensor>)> {
        let s = &self.spec;
        let (b, t, _) = x.dims3()?;
        let state = match state {
            Some(state) => state.to_vec(),
            None => self.initial_state(b, x.device())?,
        };
        let [conv_state, delta_state] = <[Tensor; 2]>::try_from(state)
            .map_err(|s| candle_core::Error::Msg(format!("delta-net state has {} tensors, not 2", s.len())))?;

        let qkv = self.qkv.forward(x)?;
        let z = self.z.forward(x)?.reshape((b, t, s.value_heads, s.value_head_dim))?;
        let beta = candle_nn::ops::sigmoid(&self.b.forward(x)?)?;
        let g = (softplus(&self.a.forward(x)?.broadcast_add(&self.dt_bias)?)?.broadcast_mul(&self.neg_a)?).exp()?;

        // Causal depthwise convolution over the previous K-1 inputs and this call's.
        let k = s.conv_kernel;
        let conv_input = Tensor::cat(&[&conv_state, &qkv], 1)?;
        let next_conv_state = conv_input.narrow(1, t, k - 1)?.contiguous()?;
        let mut conv = conv_input.narrow(1, 0, t)?.broadcast_mul(&self.taps[0])?;
        for (j, tap) in self.taps.iter().enumerate().skip(1) {
            conv = (conv + conv_input.narrow(1, j, t)?.broadcast_mul(tap)?)?;
        }
        let conv = candle_nn::ops::silu(&conv)?;

        let (key_dim, value_dim) = (s.key_dim(), s.value_dim());
        let q = conv.narrow(D::Minus1, 0, key_dim)?.reshape((b, t, s.key_heads, s.key_head_dim))?;
        let kk = conv.narrow(D::Minus1, key_dim, key_dim)?.reshape((b, t, s.key_heads, s.key_head_dim))?;
        let v = conv.narrow(D::Minus1, 2 * key_dim, value_dim)?.reshape((b, t, s.value_heads, s.value_head_dim))?;

        // mlx-lm's `normalize_qk`: L2 normalisation written as an RMSNorm with the eps
        // scaled to match, and the `Dk^-0.5` readout scale folded into q.
        let inv_scale = (s.key_head_dim as f64).powf(-0.5);
        let eps = 1e-6 * inv_scale * inv_scale;
        let q = (plain_rms_norm(&q, eps)? * (inv_scale * inv_scale))?;
        let kk = (plain_rms_norm(&kk, eps)? * inv_scale)?;

        let (y, delta_state) = self.recurrence(&q, &kk, &v, &g, &beta, delta_state)?;

        let y = rms_norm(&y, &self.norm, self.eps)?;
        let y = (candle_nn::ops::silu(&z)? * y)?.reshape((b, t, value_dim))?;
        Ok((self.out.forward(&y)?, vec![next_conv_state, delta_state]))
    }

    /// The delta rule, one token at a time like mlx-lm's `gated_delta_ops` (the reference the
    /// parity tests hold us to). `q`, `k` `[b, t, key_heads, Dk]`, `v` `[b, t, value_heads, Dv]`,
    /// `g`, `beta` `[b, t, value_heads]`, `state` `[b·value_heads, Dv, Dk]`.
    fn recurrence(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        g: &Tensor,
        beta: &Tensor,
        mut state: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let s = &self.spec;
        let (b, t, _, _) = q.dims4()?;
        let (heads, dk, dv) = (s.value_heads, s.key_head_dim, s.value_head_dim);
        let n = b * heads;
        // Key head j serves value heads j·group .. (j+1)·group (`mx.repeat` on the head axis).
        let group = heads / s.key_heads;
        let repeat = |x: &Tensor| -> Result<Tensor> {
            x.unsqueeze(3)?.expand((b, t, s.key_heads, group, dk))?.reshape((b, t, heads, dk))
        };
        // Time-major so that each step reads one contiguous slice.
        let time_major =
            |x: &Tensor, d: usize| -> Result<Tensor> { x.transpose(0, 1)?.contiguous()?.reshape((t, n, d)) };
        let q = time_major(&repeat(q)?, dk)?;
        let k = time_major(&repeat(k)?, dk)?;
        let v = time_major(v, dv)?;
        let g = time_major(&g.unsqueeze(D::Minus1)?, 1)?;
        let beta = time_major(&beta.unsqueeze(D::Minus1)?, 1)?;
        let mut ys = Vec::with_capacity(t);
        for i in 0..t {
            let (q_i, k_i) = (q.get(i)?, k.get(i)?);
            state = state.broadcast_mul(&g.get(i)?.reshape((n, 1, 1))?)?;
            let remembered = state.matmul(&k_i.reshape((n, dk, 1))?)?;
            let delta =
                ((v.get(i)?.reshape((n, dv, 1))? - remembered)?.broadcast_mul(&beta.get(i)?.reshape((n, 1, 1))?))?;
            state = (state + delta.broadcast_mul(&k_i.reshape((n, 1, dk))?)?)?;
            ys.push(state.matmul(&q_i.reshape((n, dk, 1))?)?.reshape((n, dv))?);
        }
        let y = Tensor::stack(&ys, 0)?.reshape((t, b, heads, dv))?.transpose(0, 1)?.contiguous()?;
        Ok((y, state))
    }
}

/// `log(1 + e^x)`, written so that large `|x|` neither overflows nor loses precision.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// RMS normalization over the last dimension without a weight (`mx.fast.rms_norm(x, None)`).
fn plain_rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)
}

impl RecurrentMixer for GatedDeltaNet {
    fn forward(&self, x: &Tensor, state: Option<&[Tensor]>) -> Result<(Tensor, Vec<Tensor>)> {
        GatedDeltaNet::forward(self, x, state)
    }
}
