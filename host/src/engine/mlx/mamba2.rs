//! Building blocks of the Mamba-2 hybrids (mlx-lm `nemotron_h`, `granitemoehybrid`): the
//! Mamba-2 mixer as mlx-lm computes it (`NemotronHMamba2Mixer` /
//! `GraniteMoeHybridMamba2Mixer` and `ssm.ssm_attn`), the position-free attention both
//! models interleave with it, and the token-by-expert dispatch of their MoE blocks.
//!
//! Mamba-2 per token: `in_proj` gives the output gate z, the convolution input xBC and one
//! time step per head; xBC goes through a causal depthwise convolution + SiLU and splits into
//! x (heads × head_dim), B and C (groups × state); then for every head
//! `S = exp(dt·A)·S + dt·x ⊗ B`, `y = S·C + D·x`, and the output is
//! `out_proj(norm(y · silu(z)))`.
//!
//! The convolution window (last `K-1` inputs) and the SSM state `[b, heads, head_dim, state]`
//! come in and go out explicitly: they belong to the sequence and live in the engine's
//! [`crate::engine::KvCache`], not in the layer.

use candle_core::{D, DType, Device, Module, Result, Tensor};

use super::Checkpoint;
use super::dense::RopeSpec;
use crate::engine::layers::{RecurrentMixer, SeqMasks, SeqMixer};
use crate::engine::models::repeat_kv;
use crate::engine::{EngineError, KvCache};

/// Tokens per block of the chunked SSM scan (mlx-lm's `ssm_attn` `step`): bounds the
/// `[heads, step, step]` decay matrices a long prompt needs.
const SCAN_STEP: usize = 256;

/// The shape of one Mamba-2 mixer, from `config.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mamba2Spec {
    pub heads: usize,
    pub head_dim: usize,
    pub state_size: usize,
    /// Groups of heads sharing one B and one C.
    pub groups: usize,
    pub conv_kernel: usize,
    /// Channels per RMS group of the gated output norm: Nemotron-H normalises each of its
    /// `n_groups` groups separately, Granite the whole `heads · head_dim` vector at once.
    pub norm_group_size: usize,
    pub eps: f64,
    /// `dt` is clipped to `[min, max]` after the softplus.
    pub time_step_limit: (f64, f64),
}

impl Mamba2Spec {
    fn intermediate(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Channels of the convolution: x | B | C.
    fn conv_dim(&self) -> usize {
        self.intermediate() + 2 * self.groups * self.state_size
    }

    fn validate(&self, prefix: &str) -> std::result::Result<(), EngineError> {
        let ok = self.heads > 0
            && self.head_dim > 0
            && self.groups > 0
            && self.heads.is_multiple_of(self.groups)
            && self.conv_kernel > 0
            && self.norm_group_size > 0
            && self.intermediate().is_multiple_of(self.norm_group_size);
        if ok {
            Ok(())
        } else {
            Err(EngineError::Metadata(format!(
                "{prefix}: Mamba-2 layout of {} heads × {} in {} groups (kernel {}, norm groups of {}) is inconsistent",
                self.heads, self.head_dim, self.groups, self.conv_kernel, self.norm_group_size
            )))
        }
    }
}

pub struct Mamba2Mixer {
    spec: Mamba2Spec,
    /// `[z | xBC | dt]` rows.
    in_proj: candle_nn::Linear,
    /// Depthwise convolution taps: `taps[j]` `[conv_dim]` multiplies input `t + j`.
    taps: Vec<Tensor>,
    conv_bias: Option<Tensor>,
    /// `-exp(A_log)` per head.
    neg_a: Tensor,
    dt_bias: Tensor,
    d: Tensor,
    norm: Tensor,
    out_proj: candle_nn::Linear,
}

impl std::fmt::Debug for Mamba2Mixer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mamba2Mixer").field("spec", &self.spec).finish_non_exhaustive()
    }
}

fn shape_error(prefix: &str, what: &str, dims: &[usize]) -> EngineError {
    EngineError::Metadata(format!("{prefix}: {what} has shape {dims:?}, which does not match the Mamba-2 config"))
}

impl Mamba2Mixer {
    /// Loads `prefix` (`...layers.N.mixer` / `...layers.N.mamba`).
    pub fn load(
        ckpt: &Checkpoint,
        prefix: &str,
        spec: Mamba2Spec,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        spec.validate(prefix)?;
        let in_proj = ckpt.linear(&format!("{prefix}.in_proj"), device)?;
        let rows = spec.intermediate() + spec.conv_dim() + spec.heads;
        if in_proj.weight().dim(0)? != rows {
            return Err(shape_error(prefix, "in_proj", in_proj.weight().dims()));
        }
        // MLX layout `[C, K, 1]` (mlx-lm's sanitize moved the kernel axis): channel c, tap j.
        let conv = ckpt.tensor(&format!("{prefix}.conv1d.weight"), device)?;
        if conv.dims() != [spec.conv_dim(), spec.conv_kernel, 1] {
            return Err(shape_error(prefix, "conv1d.weight", conv.dims()));
        }
        let conv = conv.squeeze(2)?;
        let taps = (0..spec.conv_kernel).map(|j| conv.narrow(1, j, 1)?.flatten_all()).collect::<Result<Vec<_>>>()?;
        let per_head = |name: &str| -> std::result::Result<Tensor, EngineError> {
            let t = ckpt.tensor(&format!("{prefix}.{name}"), device)?;
            if t.dims() != [spec.heads] {
                return Err(shape_error(prefix, name, t.dims()));
            }
            Ok(t)
        };
        let norm = ckpt.tensor(&format!("{prefix}.norm.weight"), device)?;
        if norm.dims() != [spec.intermediate()] {
            return Err(shape_error(prefix, "norm.weight", norm.dims()));
        }
        Ok(Self {
            spec,
            in_proj,
            taps,
            conv_bias: ckpt.bias(&format!("{prefix}.conv1d"), device)?,
            neg_a: per_head("A_log")?.exp()?.neg()?,
            dt_bias: per_head("dt_bias")?,
            d: per_head("D")?,
            norm,
            out_proj: ckpt.linear(&format!("{prefix}.out_proj"), device)?,
        })
    }

    /// An empty recurrent state for one sequence: `[conv window, SSM state]`.
    fn initial_state(&self, batch: usize, device: &Device) -> Result<Vec<Tensor>> {
        let s = &self.spec;
        Ok(vec![
            Tensor::zeros((batch, s.conv_kernel - 1, s.conv_dim()), DType::F32, device)?,
            Tensor::zeros((batch, s.heads, s.head_dim, s.state_size), DType::F32, device)?,
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
        let [conv_state, ssm_state] = <[Tensor; 2]>::try_from(state)
            .map_err(|s| candle_core::Error::Msg(format!("Mamba-2 state has {} tensors, not 2", s.len())))?;

        let (inter, conv_dim) = (s.intermediate(), s.conv_dim());
        let projected = self.in_proj.forward(x)?;
        let gate = projected.narrow(D::Minus1, 0, inter)?;
        let xbc = projected.narrow(D::Minus1, inter, conv_dim)?;
        let dt = projected.narrow(D::Minus1, inter + conv_dim, s.heads)?;

        // Causal depthwise convolution over the previous K-1 inputs and this call's.
        let k = s.conv_kernel;
        let conv_input = Tensor::cat(&[&conv_state, &xbc], 1)?;
        let next_conv_state = conv_input.narrow(1, t, k - 1)?.contiguous()?;
        let mut conv = conv_input.narrow(1, 0, t)?.broadcast_mul(&self.taps[0])?;
        for (j, tap) in self.taps.iter().enumerate().skip(1) {
            conv = (conv + conv_input.narrow(1, j, t)?.broadcast_mul(tap)?)?;
        }
        if let Some(bias) = &self.conv_bias {
            conv = conv.broadcast_add(bias)?;
        }
        let conv = candle_nn::ops::silu(&conv)?;

        let group_dim = s.groups * s.state_size;
        let xs = conv.narrow(D::Minus1, 0, inter)?.reshape((b, t, s.heads, s.head_dim))?;
        let bm = conv.narrow(D::Minus1, inter, group_dim)?.reshape((b, t, s.groups, s.state_size))?;
        let cm = conv.narrow(D::Minus1, inter + group_dim, group_dim)?.reshape((b, t, s.groups, s.state_size))?;

        // `compute_dt`: softplus, then clip to the time-step limits.
        let dt = softplus(&dt.broadcast_add(&self.dt_bias)?)?;
        let (lo, hi) = s.time_step_limit;
        let dt = dt.maximum(lo)?;
        let dt = if hi.is_finite() { dt.minimum(hi)? } else { dt };

        let (y, ssm_state) = self.scan(&xs, &dt, &bm, &cm, ssm_state)?;

        // Gated RMSNorm: `y · silu(z)`, normalised within groups of `norm_group_size`.
        let y = (y.reshape((b, t, inter))? * candle_nn::ops::silu(&gate)?)?;
        let y = plain_rms_norm(&y.reshape((b, t, inter / s.norm_group_size, s.norm_group_size))?, s.eps)?
            .reshape((b, t, inter))?
            .broadcast_mul(&self.norm)?;
        Ok((self.out_proj.forward(&y)?, vec![next_conv_state, ssm_state]))
    }

    /// The SSM over `x` `[b, t, heads, head_dim]`, `dt` `[b, t, heads]`, `bm`, `cm`
    /// `[b, t, groups, state]` after `state` `[b, heads, head_dim, state]`: mlx-lm's chunked
    /// `ssm_attn` (the SSD "attention" form within a block of tokens, the state carried from
    /// block to block), which for one token is exactly the recurrence. Returns y
    /// `[b, t, heads, head_dim]` (with the `D·x` skip) and the state after the last token.
    fn scan(&self, x: &Tensor, dt: &Tensor, bm: &Tensor, cm: &Tensor, mut state: Tensor) -> Result<(Tensor, Tensor)> {
        let s = &self.spec;
        let (b, t, h, _) = x.dims4()?;
        let (g, n) = (s.groups, s.state_size);
        let repeats = h / g;
        let device = x.device();
        let dt_a = dt.broadcast_mul(&self.neg_a)?;
        let dtx = x.broadcast_mul(&dt.unsqueeze(D::Minus1)?)?;
        // Group j serves heads j·repeats .. (j+1)·repeats (`mx.repeat` on the head axis).
        let per_head = |m: &Tensor, start: usize, len: usize| -> Result<Tensor> {
            m.narrow(1, start, len)?
                .transpose(1, 2)?
                .unsqueeze(2)?
                .expand((b, g, repeats, len, n))?
                .reshape((b, h, len, n))
        };
        let mut ys = Vec::with_capacity(t.div_ceil(SCAN_STEP));
        for start in (0..t).step_by(SCAN_STEP) {
            let len = SCAN_STEP.min(t - start);
            let a = dt_a.narrow(1, start, len)?.transpose(1, 2)?.contiguous()?; // [b, h, len]
            let dtx = dtx.narrow(1, start, len)?.transpose(1, 2)?.contiguous()?; // [b, h, len, dh]
            let bh = per_head(bm, start, len)?;
            let ch = per_head(cm, start, len)?;
            let cb = ch.matmul(&bh.t()?)?; // C_i · B_j: [b, h, len, len]

            // `segsum`: seg[i, j] = Σ_{j<k≤i} a_k as a cumulative sum of the strictly lower
            // triangle (as mlx-lm does: no cancellation between two long sums); 0 above the
            // diagonal, where the causal mask below drops the entries anyway.
            let strict_lower = (Tensor::tril2(len, DType::F32, device)? - Tensor::eye(len, DType::F32, device)?)?;
            let seg = a.unsqueeze(3)?.broadcast_as((b, h, len, len))?.broadcast_mul(&strict_lower)?.cumsum(2)?;
            let decay = seg.exp()?;
            let causal = Tensor::tril2(len, DType::F32, device)?;
            let mut y = cb.mul(&decay)?.broadcast_mul(&causal)?.matmul(&dtx)?; // [b, h, len, dh]

            // The carried state: decayed through each position for the readout, through the
            // whole block for the next state.
            let decay_in = a.cumsum(D::Minus1)?.exp()?; // [b, h, len]
            let y_prev = ch.matmul(&state.t()?)?.broadcast_mul(&decay_in.unsqueeze(D::Minus1)?)?;
            y = (y + y_prev)?;
            let to_end = decay.narrow(2, len - 1, 1)?; // [b, h, 1, len]
            let written = dtx.t()?.broadcast_mul(&to_end)?.matmul(&bh)?; // [b, h, dh, n]
            let kept = state.broadcast_mul(&decay_in.narrow(D::Minus1, len - 1, 1)?.unsqueeze(D::Minus1)?)?;
            state = (written + kept)?;
            ys.push(y.transpose(1, 2)?);
        }
        let y = Tensor::cat(&ys, 1)?;
        let y = (y + x.broadcast_mul(&self.d.reshape((1, 1, h, 1))?)?)?;
        Ok((y.contiguous()?, state))
    }
}

/// Reads `time_step_limit` (`[min, max]`, or null) however the config spells its floats:
/// numbers, the strings [`super::parse_config`] makes of Python's `Infinity`, or
/// transformers 5's `{"__float__": "Infinity"}`.
pub fn time_step_limit<'de, De: serde::Deserializer<'de>>(
    deserializer: De,
) -> std::result::Result<Option<(f64, f64)>, De::Error> {
    use serde::Deserialize;
    use serde::de::Error;
    let float = |v: &serde_json::Value| -> Option<f64> {
        match v {
            serde_json::Value::Number(n) => n.as_f64(),
            serde_json::Value::String(s) => s.parse().ok(),
            serde_json::Value::Object(o) => o.get("__float__").and_then(|f| f.as_str()).and_then(|s| s.parse().ok()),
            _ => None,
        }
    };
    match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Array(items) => match items.as_slice() {
            [lo, hi] => match (float(lo), float(hi)) {
                (Some(lo), Some(hi)) if lo <= hi => Ok(Some((lo, hi))),
                _ => Err(De::Error::custom(format!("time_step_limit {items:?} is not [min, max]"))),
            },
            _ => Err(De::Error::custom("time_step_limit is not a pair")),
        },
        other => Err(De::Error::custom(format!("time_step_limit `{other}` is not a pair"))),
    }
}

/// `log(1 + e^x)` (mlx's `nn.softplus`), written so that large `|x|` neither overflows nor
/// loses precision.
fn softplus(x: &Tensor) -> Result<Tensor> {
    x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?
}

impl RecurrentMixer for Mamba2Mixer {
    fn forward(&self, x: &Tensor, state: Option<&[Tensor]>) -> Result<(Tensor, Vec<Tensor>)> {
        Mamba2Mixer::forward(self, x, state)
    }
}

/// RMS normalization over the last dimension without a weight (`mx.fast.rms_norm(x, None)`).
fn plain_rms_norm(x: &Tensor, eps: f64) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)
}

/// Multi-head attention of the Mamba-2 hybrids: grouped-query, no q/k norms, and a
/// position encoding only when the config asks for one (both fixtures' models have none:
/// the Mamba layers carry position).
pub struct HybridAttention {
    q: candle_nn::Linear,
    k: candle_nn::Linear,
    v: candle_nn::Linear,
    o: candle_nn::Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    scale: f64,
    rope: Option<RopeSpec>,
    /// Its entry in the cache.
    layer: usize,
}

impl std::fmt::Debug for HybridAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridAttention")
            .field("heads", &self.heads)
            .field("kv_heads", &self.kv_heads)
            .field("head_dim", &self.head_dim)
            .finish_non_exhaustive()
    }
}

impl HybridAttention {
    /// Loads `prefix` (`q_proj`, `k_proj`, `v_proj`, `o_proj`, biases when present), the
    /// attention of cache entry `layer`.
    pub fn load(
        ckpt: &Checkpoint,
        layer: usize,
        prefix: &str,
        (heads, kv_heads, head_dim): (usize, usize, usize),
        scale: f64,
        rope: Option<RopeSpec>,
        device: &Device,
    ) -> std::result::Result<Self, EngineError> {
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(EngineError::Metadata(format!(
                "{prefix}: {heads} attention heads cannot share {kv_heads} kv heads"
            )));
        }
        let linear = |name: &str| ckpt.linear(&format!("{prefix}.{name}"), device);
        let (q, k, v, o) = (linear("q_proj")?, linear("k_proj")?, linear("v_proj")?, linear("o_proj")?);
        if q.weight().dim(0)? != heads * head_dim || k.weight().dim(0)? != kv_heads * head_dim {
            return Err(shape_error(prefix, "q_proj / k_proj", q.weight().dims()));
        }
        Ok(Self { q, k, v, o, heads, kv_heads, head_dim, scale, rope, layer })
    }
}

impl SeqMixer for HybridAttention {
    /// Attends `x` `[b, t, hidden]` (positions `cache.len()..`) over the cached keys of its
    /// layer, with the causal mask of a multi-token call.
    fn forward(&self, x: &Tensor, cache: &mut KvCache, masks: &SeqMasks<'_>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let index = self.layer;
        let mask = masks.causal(None)?;
        let hd = self.head_dim;
        let heads = |lin: &candle_nn::Linear, n: usize| -> Result<Tensor> {
            lin.forward(x)?.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()
        };
        let mut q = heads(&self.q, self.heads)?;
        let mut k = heads(&self.k, self.kv_heads)?;
        let v = heads(&self.v, self.kv_heads)?;
        if let Some(rope) = &self.rope {
            let pos = cache.len();
            q = rope.apply(&q, pos)?;
            k = rope.apply(&k, pos)?;
        }
        let (k, v) = cache.append(index, &k, &v)?;
        let group = self.heads / self.kv_heads;
        let k = repeat_kv(&k, group)?;
        let v = repeat_kv(&v, group)?;
        let mut scores = (q.contiguous()?.matmul(&k.t()?)? * self.scale)?;
        if let Some(mask) = &mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let out = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, self.heads * hd))?;
        self.o.forward(&out)
    }
}

/// Runs each token through its chosen experts and sums the weighted outputs. `choices[i]`
/// lists `(expert, weight)` for row `i` of `xs` `[n, d_in]`; `run(e, rows)` applies expert
/// `e`. Tokens are grouped by expert so that only the chosen experts run, each as one dense
/// matmul over just its tokens; the result is `[n, d_out]`.
pub fn dispatch_experts(
    xs: &Tensor,
    choices: &[Vec<(usize, f32)>],
    experts: usize,
    d_out: usize,
    run: impl Fn(usize, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); experts];
    for (token, picks) in choices.iter().enumerate() {
        for &(e, w) in picks {
            let Some((rows, weights)) = routed.get_mut(e) else {
                candle_core::bail!("router chose expert {e} of {experts}");
            };
            rows.push(token as u32);
            weights.push(w);
        }
    }
    let mut out = Tensor::zeros((xs.dim(0)?, d_out), xs.dtype(), xs.device())?;
    for (e, (rows, weights)) in routed.into_iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let n = rows.len();
        let rows = Tensor::from_vec(rows, n, xs.device())?;
        let weights = Tensor::from_vec(weights, (n, 1), xs.device())?.to_dtype(xs.dtype())?;
        let y = run(e, &xs.index_select(&rows, 0)?)?.broadcast_mul(&weights)?;
        out = out.index_add(&rows, &y, 0)?;
    }
    Ok(out)
}
