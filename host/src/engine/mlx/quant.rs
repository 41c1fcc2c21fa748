//! MLX quantized weights, unpacked or repacked as ggml blocks.
//!
//! Affine: each row of `in` elements is one little-endian bit stream of `bits`-wide
//! codes, lowest bits first (3/5/6-bit codes straddle words); `w = q * scale + bias` per
//! group of `group_size` consecutive inputs. mxfp4: 8 e2m1 codes per word, low nibble
//! first, one E8M0 scale byte (`2^(s-127)`) per group of 32, no bias.
//!
//! On a GPU (and on the CPU in [`WeightLayout::Candle`](crate::engine::weights::WeightLayout))
//! affine layers become [`QuantLinear`]s, Candle's quantized matmul over ggml blocks on the
//! device: 4-bit as the exact Q4_1 repack the CPU kernels use ([`affine4_to_q4_1`]), the
//! other widths as Q8_0 codes `q - 2^(bits-1)` with `d = scale` plus one f32 offset
//! `bias + 2^(bits-1)·scale` per group ([`affine_to_q8_0`]): the same weights, with the
//! offsets' share added as the group sums of the input times the offsets.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

/// The e2m1 (fp4) values by code.
const FP4: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Dequantizes rows of affine codes; `words` holds `rows * in_features * bits / 32` words.
pub fn dequantize_affine(
    words: &[u32],
    scales: &[f32],
    biases: &[f32],
    in_features: usize,
    bits: usize,
    group_size: usize,
) -> Result<Vec<f32>, String> {
    if group_size == 0 || !in_features.is_multiple_of(group_size) || !(in_features * bits).is_multiple_of(32) {
        return Err(format!("{in_features} inputs do not fit {bits}-bit groups of {group_size}"));
    }
    let words_per_row = in_features * bits / 32;
    let rows = words.len() / words_per_row.max(1);
    let groups = in_features / group_size;
    if scales.len() != rows * groups || biases.len() != rows * groups {
        return Err(format!("{rows} rows of {groups} groups, but {} scales and {} biases", scales.len(), biases.len()));
    }
    let mask = (1u64 << bits) - 1;
    let mut out = Vec::with_capacity(rows * in_features);
    for (r, row) in words.chunks_exact(words_per_row).enumerate() {
        for i in 0..in_features {
            let bit = i * bits;
            let (word, offset) = (bit / 32, bit % 32);
            let mut stream = u64::from(row[word]);
            if offset + bits > 32 {
                stream |= u64::from(row[word + 1]) << 32;
            }
            let q = ((stream >> offset) & mask) as f32;
            let g = r * groups + i / group_size;
            out.push(q * scales[g] + biases[g]);
        }
    }
    Ok(out)
}

/// Dequantizes rows of mxfp4 codes.
pub fn dequantize_mxfp4(
    words: &[u32],
    scales: &[u8],
    in_features: usize,
    group_size: usize,
) -> Result<Vec<f32>, String> {
    if group_size == 0 || !in_features.is_multiple_of(group_size) || !in_features.is_multiple_of(8) {
        return Err(format!("{in_features} inputs do not fit mxfp4 groups of {group_size}"));
    }
    let groups = in_features / group_size;
    let rows = words.len() * 8 / in_features;
    if scales.len() != rows * groups {
        return Err(format!("{rows} rows of {groups} groups, but {} scales", scales.len()));
    }
    let mut out = Vec::with_capacity(rows * in_features);
    for (r, row) in words.chunks_exact(in_features / 8).enumerate() {
        for i in 0..in_features {
            let code = (row[i / 8] >> (4 * (i % 8))) & 0xF;
            let scale = 2f32.powi(i32::from(scales[r * groups + i / group_size]) - 127);
            out.push(FP4[code as usize] * scale);
        }
    }
    Ok(out)
}

/// MLX 4-bit affine rows as GGUF Q4_1 blocks (`d: f16, m: f16, 16 bytes of nibbles`,
/// `w = d·q + m`): the same weights exactly, when every scale and bias is an f16 value
/// (`None` otherwise). A group of 64 becomes two blocks sharing its scale and bias.
pub fn affine4_to_q4_1(
    words: &[u32],
    scales: &[f32],
    biases: &[f32],
    in_features: usize,
    group_size: usize,
) -> Option<Vec<u8>> {
    if group_size == 0 || !group_size.is_multiple_of(32) || !in_features.is_multiple_of(group_size) {
        return None;
    }
    let exact = |v: f32| half::f16::from_f32(v).to_f32() == v;
    if !scales.iter().chain(biases).all(|&v| exact(v)) {
        return None;
    }
    let words_per_row = in_features / 8;
    let groups = in_features / group_size;
    let rows = words.len() / words_per_row.max(1);
    if scales.len() != rows * groups || biases.len() != rows * groups {
        return None;
    }
    let code = |row: &[u32], i: usize| ((row[i / 8] >> (4 * (i % 8))) & 0xF) as u8;
    let mut out = Vec::with_capacity(rows * in_features / 32 * 20);
    for (r, row) in words.chunks_exact(words_per_row).enumerate() {
        for block in 0..in_features / 32 {
            let g = r * groups + block * 32 / group_size;
            out.extend_from_slice(&half::f16::from_f32(scales[g]).to_le_bytes());
            out.extend_from_slice(&half::f16::from_f32(biases[g]).to_le_bytes());
            for j in 0..16 {
                let i = block * 32 + j;
                out.push(code(row, i) | (code(row, i + 16) << 4));
            }
        }
    }
    Some(out)
}

/// MLX affine rows as GGUF Q8_0 blocks (`d: f16, 32 signed bytes`, `w = d·q`) of the codes
/// recentred to `q - 2^(bits-1)`, with `d` the group's scale, and the per-group offsets
/// `bias + 2^(bits-1)·scale` (`[rows, groups]`, f32) that complete `w = scale·q + bias`
/// (exactly for bf16 scales and biases, whose sums f32 holds); `None` when a scale is no f16 value or the groups do not fill 32-wide blocks.
pub fn affine_to_q8_0(
    words: &[u32],
    scales: &[f32],
    biases: &[f32],
    in_features: usize,
    bits: usize,
    group_size: usize,
) -> Option<(Vec<u8>, Vec<f32>)> {
    if !(2..=8).contains(&bits)
        || group_size == 0
        || !group_size.is_multiple_of(32)
        || !in_features.is_multiple_of(group_size)
        || !(in_features * bits).is_multiple_of(32)
    {
        return None;
    }
    if !scales.iter().all(|&v| half::f16::from_f32(v).to_f32() == v) {
        return None;
    }
    let words_per_row = in_features * bits / 32;
    let groups = in_features / group_size;
    let rows = words.len() / words_per_row.max(1);
    if scales.len() != rows * groups || biases.len() != rows * groups || words.len() != rows * words_per_row {
        return None;
    }
    let centre = 1i32 << (bits - 1);
    let mask = (1u64 << bits) - 1;
    let mut blocks = Vec::with_capacity(rows * in_features / 32 * 34);
    for (r, row) in words.chunks_exact(words_per_row).enumerate() {
        for block in 0..in_features / 32 {
            let g = r * groups + block * 32 / group_size;
            blocks.extend_from_slice(&half::f16::from_f32(scales[g]).to_le_bytes());
            for i in block * 32..block * 32 + 32 {
                let bit = i * bits;
                let (word, offset) = (bit / 32, bit % 32);
                let mut stream = u64::from(row[word]);
                if offset + bits > 32 {
                    stream |= u64::from(row[word + 1]) << 32;
                }
                let q = ((stream >> offset) & mask) as i32 - centre;
                blocks.push(q as i8 as u8);
            }
        }
    }
    let offsets = scales.iter().zip(biases).map(|(&s, &b)| b + centre as f32 * s).collect();
    Some((blocks, offsets))
}

/// An affine layer's ggml blocks on the host, before they go to the device: the rows can
/// still be split (fused projections, stacked experts) without a copy on the device.
#[derive(Debug, Clone)]
pub struct HostBlocks {
    pub dtype: GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
    /// Q8_0's per-group offsets, `[rows, cols / group]`, and the group size.
    pub offsets: Option<(Vec<f32>, usize)>,
}

impl HostBlocks {
    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// Consecutive rows as matrices of their own.
    pub fn split_rows(self, sizes: &[usize]) -> Result<Vec<Self>, String> {
        if sizes.iter().sum::<usize>() != self.rows {
            return Err(format!("rows {sizes:?} do not add up to {}", self.rows));
        }
        let row_bytes = self.row_bytes();
        let mut parts = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &n in sizes {
            let offsets = self.offsets.as_ref().map(|(values, group)| {
                let per_row = self.cols / group;
                (values[start * per_row..(start + n) * per_row].to_vec(), *group)
            });
            let data = self.data[start * row_bytes..(start + n) * row_bytes].to_vec();
            parts.push(Self { dtype: self.dtype, rows: n, cols: self.cols, data, offsets });
            start += n;
        }
        Ok(parts)
    }

    /// The blocks as Candle's quantized tensor on `device`.
    pub fn qtensor(&self, device: &Device) -> candle_core::Result<QTensor> {
        let storage = QStorage::from_data(Cow::Borrowed(&self.data), device, self.dtype)?;
        QTensor::new(storage, (self.rows, self.cols))
    }

    /// The layer on `device`.
    pub fn upload(&self, device: &Device) -> candle_core::Result<QuantLinear> {
        let matmul = QMatMul::from_qtensor(self.qtensor(device)?)?;
        let offsets = match &self.offsets {
            Some((values, group)) => {
                let per_row = self.cols / group;
                // `[groups, rows]`: the group sums `[.., groups]` multiply it as they are.
                let t = Tensor::from_slice(values, (self.rows, per_row), device)?.t()?.contiguous()?;
                Some((t, *group))
            }
            None => None,
        };
        Ok(QuantLinear { matmul, offsets, rows: self.rows, cols: self.cols })
    }
}

/// An MLX affine layer as Candle's quantized matmul on its device ([`HostBlocks::upload`]).
#[derive(Debug, Clone)]
pub struct QuantLinear {
    matmul: QMatMul,
    /// Q8_0 layers: the per-group offsets `[groups, rows]` and the group size.
    offsets: Option<(Tensor, usize)>,
    rows: usize,
    cols: usize,
}

impl QuantLinear {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn device(&self) -> Device {
        match &self.matmul {
            QMatMul::QTensor(t) => t.device(),
            QMatMul::Tensor(t) | QMatMul::TensorF16(t) => t.device().clone(),
        }
    }

    /// Bytes held on the device: the blocks and the offsets.
    pub fn bytes(&self) -> usize {
        use crate::engine::weights::{qmatmul_bytes, tensor_bytes};
        qmatmul_bytes(&self.matmul) + self.offsets.as_ref().map_or(0, |(t, _)| tensor_bytes(t))
    }

    /// The blocks back on the host (a copy from the device), for splitting rows.
    pub fn to_host(&self) -> candle_core::Result<HostBlocks> {
        let QMatMul::QTensor(t) = &self.matmul else {
            candle_core::bail!("a quantized layer holds a dense tensor");
        };
        let offsets = match &self.offsets {
            Some((o, group)) => Some((o.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?, *group)),
            None => None,
        };
        Ok(HostBlocks { dtype: t.dtype(), rows: self.rows, cols: self.cols, data: t.data()?.into_owned(), offsets })
    }
}

impl Module for QuantLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = x.contiguous()?;
        let y = self.matmul.forward(&x)?;
        let Some((offsets, group)) = &self.offsets else { return Ok(y) };
        let mut dims = x.dims().to_vec();
        let cols = dims.pop().unwrap_or(0);
        dims.extend([cols / group, *group]);
        let sums = x.reshape(dims)?.sum(candle_core::D::Minus1)?;
        y + sums.broadcast_matmul(offsets)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packs codes the way MLX does (LSB-first bit stream per row).
    fn pack(codes: &[u32], bits: usize) -> Vec<u32> {
        let mut words = vec![0u32; codes.len() * bits / 32];
        for (i, &q) in codes.iter().enumerate() {
            let bit = i * bits;
            let stream = u64::from(q) << (bit % 32);
            words[bit / 32] |= stream as u32;
            if bit % 32 + bits > 32 {
                words[bit / 32 + 1] |= (stream >> 32) as u32;
            }
        }
        words
    }

    #[test]
    fn every_bit_width_round_trips() {
        for bits in [2usize, 3, 4, 5, 6, 8] {
            let in_features = 64;
            let codes: Vec<u32> = (0..2 * in_features).map(|i| (i as u32 * 7 + 3) % (1 << bits)).collect();
            let words = pack(&codes, bits);
            let scales = [0.5, 2.0, -1.0, 0.25];
            let biases = [1.0, -3.0, 0.0, 0.5];
            let out = dequantize_affine(&words, &scales, &biases, in_features, bits, 32).expect("dequantizes");
            for (i, (&q, &w)) in codes.iter().zip(&out).enumerate() {
                let g = i / 32;
                assert_eq!(w, q as f32 * scales[g] + biases[g], "{bits} bits, element {i}");
            }
        }
    }

    #[test]
    fn mxfp4_codes_and_scales() {
        // codes 0..16 then 15..0 in one row of 32, scale 2^(128-127) = 2.
        let codes: Vec<u32> = (0..16).chain((0..16).rev()).collect();
        let words = pack(&codes, 4);
        let out = dequantize_mxfp4(&words, &[128], 32, 32).expect("dequantizes");
        assert_eq!(out[7], 12.0);
        assert_eq!(out[9], -1.0);
        assert_eq!(out[16], -12.0);
    }

    #[test]
    fn four_bit_groups_map_exactly_onto_q4_1() {
        let in_features = 128;
        let codes: Vec<u32> = (0..2 * in_features).map(|i| (i as u32 * 5 + 1) % 16).collect();
        let words = pack(&codes, 4);
        let scales = [0.5, -0.25, 0.125, 2.0];
        let biases = [1.5, -3.0, 0.0, 0.75];
        let want = dequantize_affine(&words, &scales, &biases, in_features, 4, 64).expect("dequantizes");
        let blocks = affine4_to_q4_1(&words, &scales, &biases, in_features, 64).expect("f16-exact");
        let matrix =
            rapid_kernels::QuantMatrix::new(rapid_kernels::Format::Q4_1, 2, in_features, blocks).expect("shape");
        assert_eq!(matrix.dequantize(), want);
        // A scale f16 cannot hold keeps the weights dequantized instead.
        assert!(affine4_to_q4_1(&words, &[0.1, 1.0, 1.0, 1.0], &biases, in_features, 64).is_none());
    }

    /// Every width as Q8_0 codes plus offsets is the same matrix as the dequantized one,
    /// and Candle's quantized matmul over it (8-bit activations) lands within their rounding.
    #[test]
    fn affine_widths_map_onto_q8_0_with_offsets() -> candle_core::Result<()> {
        let device = Device::Cpu;
        for bits in [2usize, 3, 4, 5, 6, 8] {
            let (rows, in_features) = (3, 128);
            let codes: Vec<u32> = (0..rows * in_features).map(|i| (i as u32 * 7 + 3) % (1 << bits)).collect();
            let words = pack(&codes, bits);
            let scales = [0.5, -0.25, 0.125, 2.0, 1.0, 0.75];
            let biases = [1.5, -3.0, 0.1, 0.75, -0.2, 0.0];
            let want = dequantize_affine(&words, &scales, &biases, in_features, bits, 64).expect("dequantizes");
            let (blocks, offsets) = affine_to_q8_0(&words, &scales, &biases, in_features, bits, 64).expect("exact");
            let host = HostBlocks { dtype: GgmlDType::Q8_0, rows, cols: in_features, data: blocks, offsets: None };
            let codes = host.qtensor(&device)?.dequantize(&device)?.to_vec2::<f32>()?;
            for r in 0..rows {
                for i in 0..in_features {
                    let g = r * 2 + i / 64;
                    // One f32 rounding of the offset `bias + 2^(bits-1)·scale` apart at most.
                    let (got, want) = (codes[r][i] + offsets[g], want[r * in_features + i]);
                    let ulp = offsets[g].abs().max(want.abs()) * f32::EPSILON;
                    assert!((got - want).abs() <= 2.0 * ulp, "{bits} bits, {r},{i}: {got} {want}");
                }
            }
            let layer = HostBlocks { offsets: Some((offsets, 64)), ..host }.upload(&device)?;
            let x: Vec<f32> = (0..2 * in_features).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect();
            let x = Tensor::from_vec(x, (1, 2, in_features), &device)?;
            let w = Tensor::from_vec(want, (rows, in_features), &device)?;
            let exact = x.broadcast_matmul(&w.t()?)?;
            let worst = (layer.forward(&x)? - &exact)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            let scale = exact.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(worst <= 0.02 * scale, "{bits} bits: {worst} against {scale}");
            let halves = layer.to_host()?.split_rows(&[1, 2]).map_err(candle_core::Error::msg)?;
            let second = halves[1].upload(&device)?.forward(&x)?;
            let whole = layer.forward(&x)?.narrow(2, 1, 2)?;
            assert_eq!(second.to_vec3::<f32>()?, whole.to_vec3::<f32>()?);
        }
        // A scale f16 cannot hold keeps the layer dequantized instead.
        assert!(affine_to_q8_0(&pack(&[0; 64], 8), &[0.1], &[0.0], 64, 8, 64).is_none());
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(dequantize_affine(&[0; 4], &[1.0], &[0.0], 60, 4, 64).is_err());
        assert!(dequantize_affine(&[0; 16], &[1.0], &[0.0], 64, 4, 64).is_err(), "two rows need two scales");
        assert!(dequantize_mxfp4(&[0; 4], &[1, 2], 32, 32).is_err());
    }
}
