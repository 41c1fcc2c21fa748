//! One file per architecture. Each model takes tokens and the sequence's [`KvCache`] and
//! returns the logits of the last position.

pub mod gemma3;
pub mod llama;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use rapid_kernels::{Format, Q8Rows, QuantMatrix};

use super::gguf::GgufFile;
use super::{EngineError, KvCache};

pub trait CausalLm: Send + Sync {
    /// Runs `tokens` (positions `cache.len()..`) and returns the last position's logits as
    /// an f32 vector of the vocabulary size.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor>;

    /// An empty cache for one sequence.
    fn new_cache(&self) -> KvCache;

    fn context_length(&self) -> usize;
}

pub fn load(
    arch: &str,
    gguf: &mut GgufFile,
    device: &Device,
    progress: bool,
) -> std::result::Result<Box<dyn CausalLm>, EngineError> {
    match arch {
        "llama" => Ok(Box::new(llama::Llama::load(gguf, device, progress)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(gguf, device, progress)?)),
        other => Err(EngineError::UnsupportedArch(other.to_string())),
    }
}

/// A quantized linear layer (`y = x · Wᵀ`). Q4_1 and Q5_0 weights on the CPU run through
/// our own AVX2 kernels (`rapid-kernels`: Candle 0.11 has only scalar code for them on
/// AVX2 machines); every other block type goes through Candle's `QMatMul`.
#[allow(missing_debug_implementations)]
pub enum QLinear {
    Candle(QMatMul),
    Blocks(QuantMatrix),
}

impl QLinear {
    /// A layer over a tensor that something else also holds (a tied embedding table): kept
    /// once in memory when Candle runs it; our kernels take their own copy of the blocks.
    pub fn from_shared(tensor: &std::sync::Arc<QTensor>) -> Result<Self> {
        match Self::blocks(tensor)? {
            Some(matrix) => Ok(Self::Blocks(matrix)),
            None => Ok(Self::Candle(QMatMul::from_arc(std::sync::Arc::clone(tensor))?)),
        }
    }

    pub fn from_qtensor(tensor: QTensor) -> Result<Self> {
        match Self::blocks(&tensor)? {
            Some(matrix) => Ok(Self::Blocks(matrix)),
            None => Ok(Self::Candle(QMatMul::from_qtensor(tensor)?)),
        }
    }

    /// The tensor's blocks for our kernels, when its format has one on this device.
    fn blocks(tensor: &QTensor) -> Result<Option<QuantMatrix>> {
        let format = match tensor.dtype() {
            GgmlDType::Q4_1 => Some(Format::Q4_1),
            GgmlDType::Q5_0 => Some(Format::Q5_0),
            _ => None,
        };
        // RAPID_HOST_CANDLE_KERNELS=1 runs Candle's kernels everywhere (A/B comparisons).
        let format = format.filter(|_| std::env::var_os("RAPID_HOST_CANDLE_KERNELS").is_none());
        match (format, tensor.device().is_cpu(), tensor.shape().dims2()) {
            (Some(format), true, Ok((rows, cols))) if cols.is_multiple_of(rapid_kernels::QK) => {
                let data = tensor.data()?.into_owned();
                QuantMatrix::new(format, rows, cols, data).map(Some).map_err(candle_core::Error::wrap)
            }
            _ => Ok(None),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(m) => m.forward(x),
            Self::Blocks(m) => packed_matmul(m, x),
        }
    }
}

/// `x · Wᵀ` for a packed matrix: activations quantized to 8 bits per block, as llama.cpp.
pub fn packed_matmul(m: &QuantMatrix, x: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let cols = dims.last().copied().unwrap_or(0);
    let values: Vec<f32> = x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?;
    let acts = Q8Rows::quantize(&values, cols).map_err(candle_core::Error::wrap)?;
    let mut out = vec![0f32; acts.rows() * m.rows()];
    m.matmul(&acts, &mut out).map_err(candle_core::Error::wrap)?;
    if let Some(last) = dims.last_mut() {
        *last = m.rows();
    }
    Tensor::from_vec(out, dims, x.device())
}

/// RMS normalization over the last dimension.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    candle_nn::ops::rms_norm(x, weight, eps as f32)
}

/// `[kv_heads]` → `[kv_heads * group]` for grouped-query attention.
pub fn repeat_kv(x: &Tensor, group: usize) -> Result<Tensor> {
    if group == 1 {
        return Ok(x.clone());
    }
    let (b, h, t, d) = x.dims4()?;
    x.unsqueeze(2)?.expand((b, h, group, t, d))?.reshape((b, h * group, t, d))
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
