//! How a model's weights are held: which kernels take the quantized matrices
//! ([`WeightLayout`]), and how many bytes the loaded weights hold on their device
//! ([`WeightMemory`]), for `info`, the start-up banner and the tests that hold a GPU-bound
//! load to the file's size.

use std::collections::BTreeMap;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Tensor};

/// Which kernels hold and run a model's quantized matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightLayout {
    /// Our own kernels' blocks (and tiles) on the CPU; Candle's quantized tensors on a GPU.
    #[default]
    Native,
    /// Candle's quantized tensors (ggml blocks through Candle's quantized matmul) on every
    /// device: what CUDA and Metal hold. Forced onto the CPU, it runs the GPU loading path
    /// where no GPU is, so tests there see what a GPU-bound load keeps.
    Candle,
}

impl WeightLayout {
    /// Whether our own CPU kernels take the matrices on `device`.
    pub fn ours(self, device: &Device) -> bool {
        self == Self::Native && device.is_cpu()
    }
}

/// The short name of a device: `cpu`, `cuda` or `metal`.
pub fn device_name(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}

/// Bytes a dense tensor holds.
pub fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

/// Bytes a Candle quantized matmul holds: its blocks, or the dense tensor Candle made of
/// an unquantized (f16 / f32 / bf16) one.
pub fn qmatmul_bytes(m: &QMatMul) -> usize {
    match m {
        QMatMul::QTensor(t) => qtensor_bytes(t),
        QMatMul::Tensor(t) | QMatMul::TensorF16(t) => tensor_bytes(t),
    }
}

/// Bytes a Candle quantized tensor holds (its blocks).
pub fn qtensor_bytes(t: &QTensor) -> usize {
    t.storage_size_in_bytes()
}

/// The bytes each loaded weight holds on the model's device, by tensor name (the name
/// in the file: `blk.3.attn_q.weight`, `model.layers.3.self_attn.q_proj.weight`). Loaders
/// record what they hand to the model, in the form the model keeps it (packed blocks,
/// Candle's quantized tensor, or the dense f32 tensor); a name recorded twice keeps the
/// last record.
#[derive(Debug, Clone, Default)]
pub struct WeightMemory {
    tensors: BTreeMap<String, usize>,
}

impl WeightMemory {
    pub fn record(&mut self, name: impl Into<String>, bytes: usize) {
        self.tensors.insert(name.into(), bytes);
    }

    /// All weights together.
    pub fn total(&self) -> usize {
        self.tensors.values().sum()
    }

    /// The weights whose names start with `prefix` (`blk.3.`, `model.layers.3.`).
    pub fn under(&self, prefix: &str) -> usize {
        self.tensors.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, b)| b).sum()
    }

    pub fn get(&self, name: &str) -> Option<usize> {
        self.tensors.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// What a model's weights take in its file and, estimated from the file's header alone (no
/// weights read), what a load holds on the CPU and on a GPU: quantized blocks as they are
/// (MLX 4-bit as Q4_1, other affine widths as Q8_0 plus offsets on a GPU and f32 on the CPU),
/// everything else in f32. For MLX checkpoints it assumes every quantized layer stays packed,
/// as the dense decoder keeps them; the load itself records what it holds ([`WeightMemory`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WeightFootprint {
    pub file_bytes: usize,
    pub cpu_bytes: usize,
    pub gpu_bytes: usize,
}

impl WeightFootprint {
    /// A GGUF file's tensors: blocks are held as they are on every device; f16 / bf16
    /// tensors are widened to f32 (Candle's matmul and the norms take f32).
    pub fn of_gguf(content: &candle_core::quantized::gguf_file::Content) -> Self {
        use candle_core::quantized::GgmlDType;
        let mut f = Self::default();
        for info in content.tensor_infos.values() {
            let dtype = info.ggml_dtype;
            let file = info.shape.elem_count() / dtype.block_size() * dtype.type_size();
            let held = if matches!(dtype, GgmlDType::F16 | GgmlDType::BF16) { file * 2 } else { file };
            f.add(file, held, held);
        }
        f
    }

    /// An MLX layer of `rows x cols` weights quantized to `bits` (mxfp4 when `mxfp4`).
    pub fn add_mlx_layer(&mut self, file: usize, rows: usize, cols: usize, bits: usize, group: usize, mxfp4: bool) {
        let f32_bytes = rows * cols * 4;
        let q4_1 = rows * cols / 32 * 20;
        let q8_0 = rows * cols / 32 * 34 + rows * (cols / group.max(1)) * 4;
        let (cpu, gpu) = match (mxfp4, bits) {
            (true, _) => (f32_bytes, f32_bytes),
            (false, 4) => (q4_1, q4_1),
            (false, _) => (f32_bytes, q8_0),
        };
        self.add(file, cpu, gpu);
    }

    pub fn add(&mut self, file: usize, cpu: usize, gpu: usize) {
        self.file_bytes += file;
        self.cpu_bytes += cpu;
        self.gpu_bytes += gpu;
    }
}

/// `bytes` as MiB / GiB for people.
pub fn human_bytes(bytes: usize) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    let b = bytes as f64;
    if b >= 1024.0 * MIB { format!("{:.2} GiB", b / (1024.0 * MIB)) } else { format!("{:.1} MiB", b / MIB) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_sum_their_tensors_only() {
        let mut m = WeightMemory::default();
        m.record("blk.1.attn_q.weight", 10);
        m.record("blk.1.ffn_up.weight", 20);
        m.record("blk.10.attn_q.weight", 40);
        m.record("blk.2.attn_q.weight", 80);
        m.record("blk.1.attn_q.weight", 5);
        assert_eq!(m.under("blk.1."), 25);
        assert_eq!(m.under("blk.10."), 40);
        assert_eq!(m.total(), 145);
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }
}
