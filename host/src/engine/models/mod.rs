//! One file per architecture. Each model takes tokens and the sequence's [`KvCache`] and
//! returns the logits of the last position.

pub mod decoder;
pub mod gemma3;
pub mod llama;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use std::sync::Arc;

use candle_core::{Device, Module, Result, Tensor};
use rapid_kernels::{Format, Q8Rows, QuantMatrix};

use super::gguf::GgufFile;
use super::weights::{WeightLayout, qmatmul_bytes, qtensor_bytes};
use super::{EngineError, KvCache};

/// One sequence's part of a batched forward: its new tokens (positions `cache.len()..`)
/// and its cache.
#[derive(Debug)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

pub trait CausalLm: Send + Sync {
    /// Runs `tokens` (positions `cache.len()..`) and returns the last position's logits as
    /// an f32 vector of the vocabulary size.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor>;

    /// Runs every sequence's new tokens and returns each one's last-position logits. Models
    /// with a batched forward ([`Self::batches`]) do it in one pass over all rows; the
    /// others run the sequences one after another, with the same results.
    fn forward_batch(&self, batch: &mut [SeqInput<'_>]) -> Result<Vec<Vec<f32>>> {
        batch.iter_mut().map(|seq| self.forward(seq.tokens, seq.cache)?.to_vec1()).collect()
    }

    /// Whether [`Self::forward_batch`] is one pass over the batch's rows.
    fn batches(&self) -> bool {
        false
    }

    /// An empty cache for one sequence.
    fn new_cache(&self) -> KvCache;

    fn context_length(&self) -> usize;
}

/// [`CausalLm::forward`] as a batch of one, for models whose forward is the batched one.
pub(crate) fn forward_one(model: &dyn CausalLm, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
    let mut batch = [SeqInput { tokens, cache }];
    let logits = model.forward_batch(&mut batch)?.pop().unwrap_or_default();
    let len = logits.len();
    Tensor::from_vec(logits, len, &Device::Cpu)
}

pub fn load(
    arch: &str,
    gguf: &mut GgufFile,
    device: &Device,
    progress: bool,
) -> std::result::Result<Box<dyn CausalLm>, EngineError> {
    use super::arch::{self, Loader};
    match arch::find(crate::registry::ModelFormat::Gguf, arch).map(|a| a.loader) {
        Some(Loader::Gguf(load)) => load(gguf, arch, device, progress),
        _ => Err(EngineError::UnsupportedArch(arch.to_string())),
    }
}

/// A quantized linear layer (`y = x · Wᵀ`). Q4_1, Q5_0 and Q8_0 weights on the CPU run
/// through our own kernels (`rapid-kernels`: Candle 0.11 has only scalar code for the first
/// two on AVX2 machines, and no VNNI path for any); every other block type goes through
/// Candle's `QMatMul`.
#[allow(missing_debug_implementations)]
pub enum QLinear {
    Candle(QMatMul),
    Blocks(Arc<QuantMatrix>),
    /// Q4_K / Q6_K in 16-row tiles (CPUs with AVX-512 VNNI; Candle's kernels elsewhere).
    KQuant(Arc<rapid_kernels::kquants::KMatrix>),
}

/// The token embedding table, which a tied output head shares: held once, in our blocks
/// where a kernel of ours runs the head, else as Candle's tensor.
#[allow(missing_debug_implementations)]
pub enum TokenTable {
    Candle(Arc<QTensor>),
    Blocks(Arc<QuantMatrix>),
}

impl TokenTable {
    /// The GGUF tensor `name`, read straight into our blocks where a kernel of ours runs it.
    pub fn load(gguf: &mut GgufFile, name: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        if let Some(matrix) = QLinear::raw_blocks(gguf, name, device)? {
            gguf.held.record(name, matrix.bytes());
            return Ok(Self::Blocks(Arc::new(matrix)));
        }
        let layout = gguf.layout;
        let table = Self::new_in(gguf.tensor(name, device)?, layout)?;
        gguf.held.record(name, table.bytes());
        Ok(table)
    }

    pub fn new(tensor: QTensor) -> Result<Self> {
        Self::new_in(tensor, WeightLayout::Native)
    }

    /// As [`Self::new`], with the blocks in `layout`'s kernels.
    pub fn new_in(tensor: QTensor, layout: WeightLayout) -> Result<Self> {
        Ok(match QLinear::blocks(&tensor, layout)? {
            Some(matrix) => Self::Blocks(Arc::new(matrix)),
            None => Self::Candle(Arc::new(tensor)),
        })
    }

    /// Bytes the table holds on its device.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Candle(table) => qtensor_bytes(table),
            Self::Blocks(table) => table.bytes(),
        }
    }

    /// Rows `ids` as f32, `[ids.len(), hidden]`.
    pub fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Candle(table) => table.embedding(&Tensor::new(ids, device)?),
            Self::Blocks(table) => {
                let mut rows = Vec::with_capacity(ids.len() * table.cols());
                for &id in ids {
                    if id as usize >= table.rows() {
                        candle_core::bail!("token {id} is outside the vocabulary of {}", table.rows());
                    }
                    rows.extend(table.dequantize_row(id as usize));
                }
                Tensor::from_vec(rows, (ids.len(), table.cols()), device)
            }
        }
    }

    /// The output projection of a model whose head is tied to this table.
    pub fn tied_head(&self) -> Result<QLinear> {
        Ok(match self {
            Self::Candle(table) => QLinear::Candle(QMatMul::from_arc(Arc::clone(table))?),
            Self::Blocks(table) => QLinear::Blocks(Arc::clone(table)),
        })
    }
}

impl QLinear {
    /// The GGUF tensor `name`: read straight into our blocks where a kernel of ours runs
    /// it (one copy of the weights, not Candle's and ours), else as Candle's `QMatMul`.
    pub fn load(gguf: &mut GgufFile, name: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        let linear = if let Some(matrix) = Self::raw_blocks(gguf, name, device)? {
            Self::Blocks(Arc::new(matrix))
        } else if let Some(matrix) = Self::raw_kquant(gguf, name, device)? {
            Self::KQuant(Arc::new(matrix))
        } else {
            let layout = gguf.layout;
            Self::from_qtensor_in(gguf.tensor(name, device)?, layout)?
        };
        gguf.held.record(name, linear.bytes());
        Ok(linear)
    }

    /// Bytes the layer holds on its device.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Candle(m) => qmatmul_bytes(m),
            Self::Blocks(m) => m.bytes(),
            Self::KQuant(m) => m.bytes(),
        }
    }

    fn raw_kquant(
        gguf: &mut GgufFile,
        name: &str,
        device: &Device,
    ) -> std::result::Result<Option<rapid_kernels::kquants::KMatrix>, EngineError> {
        use rapid_kernels::kquants::{KFormat, KMatrix};
        let Some(info) = gguf.content.tensor_infos.get(name) else {
            return Err(EngineError::Metadata(format!("tensor `{name}` is missing")));
        };
        let format = match info.ggml_dtype {
            GgmlDType::Q4K => KFormat::Q4K,
            GgmlDType::Q6K => KFormat::Q6K,
            _ => return Ok(None),
        };
        let ours = rapid_kernels::kquants::available() && std::env::var_os("RAPID_HOST_CANDLE_KERNELS").is_none();
        if !ours || !gguf.layout.ours(device) || info.shape.dims2().is_err() {
            return Ok(None);
        }
        let super::gguf::RawTensor { rows, cols, data, .. } = gguf.raw_tensor(name)?;
        KMatrix::new(format, rows, cols, &data).map_err(|e| EngineError::Metadata(format!("{name}: {e}")))
    }

    fn raw_blocks(
        gguf: &mut GgufFile,
        name: &str,
        device: &Device,
    ) -> std::result::Result<Option<QuantMatrix>, EngineError> {
        let Some(info) = gguf.content.tensor_infos.get(name) else {
            return Err(EngineError::Metadata(format!("tensor `{name}` is missing")));
        };
        let format = ours(info.ggml_dtype);
        if format.is_none() || !gguf.layout.ours(device) || info.shape.dims2().is_err() {
            return Ok(None);
        }
        let super::gguf::RawTensor { rows, cols, data, .. } = gguf.raw_tensor(name)?;
        match format {
            Some(format) if cols.is_multiple_of(rapid_kernels::QK) => QuantMatrix::new(format, rows, cols, data)
                .map(Some)
                .map_err(|e| EngineError::Metadata(format!("{name}: {e}"))),
            _ => Ok(None),
        }
    }

    pub fn from_qtensor(tensor: QTensor) -> Result<Self> {
        Self::from_qtensor_in(tensor, WeightLayout::Native)
    }

    /// As [`Self::from_qtensor`], with the blocks in `layout`'s kernels.
    pub fn from_qtensor_in(tensor: QTensor, layout: WeightLayout) -> Result<Self> {
        match Self::blocks(&tensor, layout)? {
            Some(matrix) => Ok(Self::Blocks(Arc::new(matrix))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(tensor)?)),
        }
    }

    /// The tensor's blocks for our kernels, when its format has one on this device.
    fn blocks(tensor: &QTensor, layout: WeightLayout) -> Result<Option<QuantMatrix>> {
        let format = ours(tensor.dtype());
        match (format, layout.ours(&tensor.device()), tensor.shape().dims2()) {
            (Some(format), true, Ok((rows, cols))) if cols.is_multiple_of(rapid_kernels::QK) => {
                let data = tensor.data()?.into_owned();
                QuantMatrix::new(format, rows, cols, data).map(Some).map_err(candle_core::Error::wrap)
            }
            _ => Ok(None),
        }
    }

    /// [`Self::forward`] over rows that belong to sequences of `segments` rows each (in
    /// order): K-quant products run each sequence's rows as a call of their own would
    /// ([`rapid_kernels::kquants::KMatrix::matmul_segments`]), the others compute every row
    /// independently anyway.
    pub fn forward_rows(&self, x: &Tensor, segments: &[usize]) -> Result<Tensor> {
        match self {
            Self::KQuant(m) if segments.len() > 1 => rows_through(x, m.rows(), |values, cols, out| {
                let acts = rapid_kernels::kquants::Q8KRows::quantize(values, cols)?;
                m.matmul_segments(&acts, segments, out)
            }),
            _ => self.forward(x),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Blocks(m) => packed_matmul(m, x),
            Self::KQuant(m) => rows_through(x, m.rows(), |values, cols, out| {
                let acts = rapid_kernels::kquants::Q8KRows::quantize(values, cols)?;
                m.matmul(&acts, out)
            }),
        }
    }
}

/// The block formats our kernels run; none when `RAPID_HOST_CANDLE_KERNELS=1` asks for
/// Candle's everywhere (A/B comparisons).
fn ours(dtype: GgmlDType) -> Option<Format> {
    let format = match dtype {
        GgmlDType::Q4_0 => Some(Format::Q4_0),
        GgmlDType::Q4_1 => Some(Format::Q4_1),
        GgmlDType::Q5_0 => Some(Format::Q5_0),
        GgmlDType::Q8_0 => Some(Format::Q8_0),
        _ => None,
    };
    format.filter(|_| std::env::var_os("RAPID_HOST_CANDLE_KERNELS").is_none())
}

/// `x · Wᵀ` for a packed matrix: activations quantized to 8 bits per block, as llama.cpp.
pub fn packed_matmul(m: &QuantMatrix, x: &Tensor) -> Result<Tensor> {
    rows_through(x, m.rows(), |values, cols, out| m.matmul(&Q8Rows::quantize(values, cols)?, out))
}

/// `x`'s rows (its last dimension) through a kernel of ours that writes `features` outputs
/// per row: `product(values, cols, out)`.
fn rows_through(
    x: &Tensor,
    features: usize,
    product: impl FnOnce(&[f32], usize, &mut [f32]) -> std::result::Result<(), rapid_kernels::KernelError>,
) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let cols = dims.last().copied().unwrap_or(0);
    let values: Vec<f32> = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let rows = values.len().checked_div(cols).unwrap_or(0);
    let mut out = vec![0f32; rows * features];
    product(&values, cols, &mut out).map_err(candle_core::Error::wrap)?;
    if let Some(last) = dims.last_mut() {
        *last = features;
    }
    Tensor::from_vec(out, dims, x.device())
}

/// Rotary tables `(cos, sin)`, `[positions.len(), head_dim / 2]`, for each of `positions`
/// (the rows of a ragged batch each have their own),
/// computed as llama.cpp does: each pair's angle is the position times `base^(-2/dims)`
/// raised by repeated f32 multiplication, not by `powf` per pair (the angles differ in the
/// last bits, which reach the logits through the keys' f16 rounding).
pub fn rope_tables_at(head_dim: usize, base: f32, positions: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let step = base.powf(-2.0 / head_dim as f32);
    let len = positions.len();
    let mut cos = Vec::with_capacity(len * half);
    let mut sin = Vec::with_capacity(len * half);
    for &pos in positions {
        let mut theta = pos as f32;
        for _ in 0..half {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= step;
        }
    }
    Ok((Tensor::from_vec(cos, (len, half), device)?, Tensor::from_vec(sin, (len, half), device)?))
}

/// Rotary embedding of `x` (`[1, heads, t, head_dim]`) with tables from [`rope_tables_at`]
/// (`[t, head_dim / 2]`): interleaved pairs, or NEOX halves. On CPU with llama.cpp's
/// arithmetic ([`rapid_kernels::elementwise::rope`]), elsewhere Candle's.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, neox: bool) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || cos.dims() != [t, d / 2] {
        return if neox {
            candle_nn::rotary_emb::rope(x, cos, sin)
        } else {
            candle_nn::rotary_emb::rope_i(x, cos, sin)
        };
    }
    let mut values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let (c, s): (Vec<f32>, Vec<f32>) = (cos.flatten_all()?.to_vec1()?, sin.flatten_all()?.to_vec1()?);
    rapid_kernels::elementwise::rope(&mut values, d, t, &c, &s, neox);
    Tensor::from_vec(values, x.shape(), x.device())
}

/// RMS normalization over the last dimension, with llama.cpp's arithmetic on CPU: the
/// squares (rounded to f32) summed in f64, `scale = 1 / sqrt(mean + eps)` in f32, then
/// `x * scale` and `* weight` as two roundings. The same numbers as llama.cpp, not just
/// close ones: every activation is rounded to 8 bits next, where a last-bit difference
/// can move a value by a whole step. Other devices use Candle's formula.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let cols = x.dim(candle_core::D::Minus1)?;
    if !x.device().is_cpu() || x.dtype() != candle_core::DType::F32 || weight.dims() != [cols] {
        return candle_nn::ops::rms_norm(x, weight, eps as f32);
    }
    let values: Vec<f32> = x.flatten_all()?.to_vec1()?;
    let w: Vec<f32> = weight.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let mut out = vec![0f32; values.len()];
    for (row, o) in values.chunks_exact(cols).zip(out.chunks_exact_mut(cols)) {
        rapid_kernels::elementwise::rms_norm(row, &w, eps as f32, o);
    }
    Tensor::from_vec(out, x.shape(), x.device())
}

/// The gated activation of an MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Glu {
    /// `silu(gate) * up`
    Swiglu,
    /// `gelu_tanh(gate) * up`
    Geglu,
}

/// `act(gate) * up`. On CPU with llama.cpp's arithmetic ([`rapid_kernels::elementwise`]:
/// its vector `exp` in SiLU, its f16 GELU table), and one pass instead of two tensor
/// operations; elsewhere Candle's.
pub fn gated(gate: &Tensor, up: &Tensor, glu: Glu) -> Result<Tensor> {
    use rapid_kernels::elementwise::{geglu, swiglu};
    if !gate.device().is_cpu() || gate.dtype() != candle_core::DType::F32 || gate.shape() != up.shape() {
        return match glu {
            Glu::Swiglu => candle_nn::ops::silu(gate)? * up,
            Glu::Geglu => gate.gelu()? * up,
        };
    }
    let (g, u): (Vec<f32>, Vec<f32>) = (gate.flatten_all()?.to_vec1()?, up.flatten_all()?.to_vec1()?);
    let mut out = vec![0f32; g.len()];
    match glu {
        Glu::Swiglu => swiglu(&g, &u, &mut out),
        Glu::Geglu => geglu(&g, &u, &mut out),
    }
    Tensor::from_vec(out, gate.shape(), gate.device())
}

/// `[kv_heads]` → `[kv_heads * group]` for grouped-query attention.
pub fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, group, t, d))?.reshape((b, h * group, t, d))
}

/// What GGUF models keep their keys and values in: f16 on CPU, as llama.cpp does (half the
/// memory, and its rounding, which [`causal_attention`] reproduces there); f32 on GPUs,
/// where attention is Candle's matmuls, which need one dtype on both sides.
pub fn cache_dtype(device: &Device) -> candle_core::DType {
    if device.is_cpu() { candle_core::DType::F16 } else { candle_core::DType::F32 }
}

/// Causal attention of roped queries `q` (`[1, heads, t, head_dim]`) over everything cached
/// for the layer (`k`, `v`: `[1, kv_heads, past + t, head_dim]`, the views
/// [`KvCache::append`] returns); `[1, t, heads * head_dim]` out.
///
/// On CPU (f32 queries, an f32 or f16 cache) this is [`rapid_kernels::attention`], reading
/// the cache buffers in place:
/// one pass per (query, head), identical for a batch and for single steps. Elsewhere (GPU,
/// other dtypes) it is the same formula in Candle operations, with `mask` (from
/// [`attention_mask`], `None` for one query without a window).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    window: Option<usize>,
    scale: f64,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, heads, t, d) = q.dims4()?;
    let (_, kv_heads, len, _) = k.dims4()?;
    if let Some(out) = cpu_attention(q, k, v, window, scale)? {
        return Tensor::from_vec(out, (b, t, heads * d), q.device());
    }
    let k = repeat_kv(&k.to_dtype(q.dtype())?, heads / kv_heads)?;
    let v = repeat_kv(&v.to_dtype(q.dtype())?, heads / kv_heads)?;
    let mut scores = (q.matmul(&k.t()?)? * scale)?;
    if let Some(mask) = mask {
        scores = scores.broadcast_add(mask)?;
    } else if window.is_some_and(|w| w < len) {
        scores = scores.broadcast_add(&attention_mask(t, len - t, window, q.device())?)?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
    probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b, t, heads * d))
}

/// The kernel's answer when the inputs are CPU buffers it can read in place: f32 queries
/// over an f32 or f16 cache.
fn cpu_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>, scale: f64) -> Result<Option<Vec<f32>>> {
    use candle_core::{DType, Storage};
    let (b, heads, t, d) = q.dims4()?;
    let (_, kv_heads, len, _) = k.dims4()?;
    if b != 1 || !q.device().is_cpu() || q.dtype() != DType::F32 || k.dtype() != v.dtype() || !q.is_contiguous() {
        return Ok(None);
    }
    let q = q.flatten_all()?;
    let (q_storage, q_layout) = q.storage_and_layout();
    let (k_storage, k_layout) = k.storage_and_layout();
    let (v_storage, v_layout) = v.storage_and_layout();
    // Both cache views must be `[1, kv_heads, room, d]` buffers narrowed along positions.
    let stride = k_layout.stride();
    if stride[3] != 1 || stride[2] != d || k_layout.stride() != v_layout.stride() || stride[1] % d != 0 {
        return Ok(None);
    }
    let (Storage::Cpu(qs), Storage::Cpu(ks), Storage::Cpu(vs)) = (&*q_storage, &*k_storage, &*v_storage) else {
        return Ok(None);
    };
    let shape = rapid_kernels::attention::AttentionShape {
        heads,
        kv_heads,
        head_dim: d,
        kv_stride: stride[1] / d,
        past: len - t,
        window,
        scale: scale as f32,
    };
    let qs = &qs.as_slice::<f32>()?[q_layout.start_offset()..];
    let mut out = vec![0.0f32; heads * t * d];
    let (k_start, v_start) = (k_layout.start_offset(), v_layout.start_offset());
    let done = match k.dtype() {
        DType::F32 => rapid_kernels::attention::attend(
            &qs[..out.len()],
            &ks.as_slice::<f32>()?[k_start..],
            &vs.as_slice::<f32>()?[v_start..],
            &shape,
            &mut out,
        ),
        DType::F16 => rapid_kernels::attention::attend(
            &qs[..out.len()],
            &ks.as_slice::<half::f16>()?[k_start..],
            &vs.as_slice::<half::f16>()?[v_start..],
            &shape,
            &mut out,
        ),
        _ => return Ok(None),
    };
    done.map_err(candle_core::Error::wrap)?;
    Ok(Some(out))
}

/// `[t, past + t]` additive mask: causal, and with a window only the last `window`
/// positions are visible.
pub fn attention_mask(t: usize, past: usize, window: Option<usize>, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            let pos = past + i;
            (0..past + t).map(move |j| {
                let visible = j <= pos && window.is_none_or(|w| pos - j < w);
                if visible { 0.0 } else { f32::NEG_INFINITY }
            })
        })
        .collect();
    Tensor::from_vec(data, (t, past + t), device)
}

/// Writes `x` as raw little-endian f32 to `$RAPID_HOST_DUMP_DIR/<name>.f32` when that
/// variable is set, for comparing intermediate values with llama.cpp's (named as its graph
/// names them: `attn_norm-0`, `ffn_out-3`, ...; scripts/llamacpp_intermediates.py). Each
/// pass overwrites the last, so a dump shows the last forward pass.
pub fn debug_dump(name: impl FnOnce() -> String, x: &Tensor) {
    static DIR: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    let Some(dir) = DIR.get_or_init(|| std::env::var_os("RAPID_HOST_DUMP_DIR").map(Into::into)) else {
        return;
    };
    let path = dir.join(format!("{}.f32", name()));
    let values = x.flatten_all().and_then(|v| v.to_dtype(candle_core::DType::F32)).and_then(|v| v.to_vec1::<f32>());
    match values {
        Ok(values) => {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            if let Err(e) = std::fs::write(&path, bytes) {
                tracing::warn!("cannot write {}: {e}", path.display());
            }
        }
        Err(e) => tracing::warn!("cannot dump {}: {e}", path.display()),
    }
}

/// A progress bar over layers while loading, on stderr.
pub fn layer_progress(enabled: bool, layers: usize, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(layers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  loading {msg} [{bar:30}] {pos}/{len} layers")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::KvCache;
    use candle_core::DType;

    /// The CPU kernel and the Candle formulation agree, for grouped heads, a window and a
    /// cache with spare room; an f16 cache within f16 rounding.
    #[test]
    fn cpu_attention_matches_the_candle_formula() -> Result<()> {
        let device = Device::Cpu;
        let cases = [
            (4, 1, 256, 5, 7, None, DType::F32),
            (9, 3, 64, 0, 6, Some(3), DType::F32),
            (4, 1, 256, 40, 1, None, DType::F16),
        ];
        for (heads, kv_heads, d, past, t, window, dtype) in cases {
            let mut cache = KvCache::new(1, 4096);
            let fill = |n: usize, h: usize| Tensor::randn(0f32, 1.0, (1, h, n, d), &device)?.to_dtype(dtype);
            let (mut k, mut v) = cache.append(0, &fill(past.max(1), kv_heads)?, &fill(past.max(1), kv_heads)?)?;
            if past == 0 {
                cache.truncate(0)?;
            }
            cache.advance(past);
            if t > 0 {
                (k, v) = cache.append(0, &fill(t, kv_heads)?, &fill(t, kv_heads)?)?;
            }
            let q = Tensor::randn(0f32, 1.0, (1, heads, t, d), &device)?;
            let ours = causal_attention(&q, &k, &v, window, 0.1, None)?;
            let mask = attention_mask(t, k.dim(2)? - t, window, &device)?;
            let (k, v) = (k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?);
            let (kk, vv) = (repeat_kv(&k, heads / kv_heads)?, repeat_kv(&v, heads / kv_heads)?);
            let scores = (q.matmul(&kk.t()?)? * 0.1)?.broadcast_add(&mask)?;
            let want = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&vv.contiguous()?)?;
            let want = want.transpose(1, 2)?.reshape((1, t, heads * d))?;
            let worst = (ours - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let tolerance = if dtype == DType::F16 { 2e-3 } else { 1e-4 };
            assert!(worst < tolerance, "{heads}/{kv_heads}x{d} past {past} t {t} {dtype:?}: {worst}");
        }
        Ok(())
    }
}
