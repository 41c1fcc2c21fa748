//! Quantized matrix products for the block formats Candle 0.11 runs as scalar code on AVX2
//! machines (its SIMD paths for them need AVX-512): GGUF `Q4_1` (all of SmolLM2's linear
//! layers, and the exact image of MLX 4-bit affine groups) and `Q5_0` (most of
//! gemma-3-270m); and `Q8_0`, the tied embedding / output table of both (for gemma, 168M of
//! its 270M weights), where Candle has SIMD but no VNNI path. Weights stay in their GGUF
//! blocks; activations are quantized to 8 bits per block of 32, as llama.cpp does, and each
//! block product is an integer dot product scaled once.
//!
//! The AVX2 paths are compiled when the target has AVX2 (the repository builds for
//! x86-64-v3, see `.cargo/config.toml`), NEON ones on 64-bit ARM; other targets use the
//! scalar versions, which are also the reference the tests hold the SIMD ones to. All of
//! them sum in the same order (llama.cpp's x86 one), so the numbers are the same on every
//! machine, bit for bit (`scripts/test` runs the NEON tests under qemu where
//! `scripts/setup-arm` installed a cross toolchain). Where the CPU has AVX-512 VNNI,
//! matrices whose rows come in multiples of 16 are stored interleaved ([`tiles`]) and run
//! 16 rows per instruction, with the same numbers bit for bit.
//!
//! [`attention`] is the decode-side companion: causal attention over a sequence's cache.

// SIMD intrinsics need `unsafe`; each use is an arithmetic intrinsic on in-bounds data.
#![allow(unsafe_code)]

pub mod attention;
pub mod elementwise;
pub mod kquants;
pub mod threads;
pub mod tiles;

/// Values per quantization block.
pub const QK: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelError {
    Shape(String),
}

impl std::fmt::Display for KernelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shape(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// GGUF block formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `d: f16, qs: [u8; 16]`; `w = d * (q - 8)`, q in 0..16.
    Q4_0,
    /// `d: f16, m: f16, qs: [u8; 16]`; `w = d * q + m`, q in 0..16.
    Q4_1,
    /// `d: f16, qh: [u8; 4], qs: [u8; 16]`; `w = d * (q - 16)`, q in 0..32.
    Q5_0,
    /// `d: f16, qs: [i8; 32]`; `w = d * q` (the tied embedding / output tables of both
    /// default models, and gemma's V projections).
    Q8_0,
}

impl Format {
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q8_0 => 34,
        }
    }
}

/// Rows of activations quantized per block of 32: `x ≈ d * q`, with `s = d * Σq` kept for
/// formats whose weights carry an offset.
#[derive(Debug, Clone)]
pub struct Q8Rows {
    rows: usize,
    blocks_per_row: usize,
    d: Vec<f32>,
    s: Vec<f32>,
    qs: Vec<i8>,
    /// Per block, the 8 sums of 4 consecutive codes (the tiled kernel's offset terms).
    group_sums: Vec<i32>,
}

impl Q8Rows {
    /// Quantizes `x`, `rows × cols` row-major; `cols` must be a multiple of 32.
    pub fn quantize(x: &[f32], cols: usize) -> Result<Self, KernelError> {
        if cols == 0 || !cols.is_multiple_of(QK) || !x.len().is_multiple_of(cols) {
            return Err(KernelError::Shape(format!(
                "{} values do not make rows of {cols} (a multiple of 32)",
                x.len()
            )));
        }
        let blocks = x.len() / QK;
        let mut d = vec![0f32; blocks];
        let mut s = vec![0f32; blocks];
        let mut qs = vec![0i8; x.len()];
        for (b, (chunk, q)) in x.chunks_exact(QK).zip(qs.chunks_exact_mut(QK)).enumerate() {
            let amax = chunk.iter().fold(0f32, |m, v| m.max(v.abs()));
            // As llama.cpp's AVX2 quantize_row_q8_1: scale by 127/amax, round half to even.
            let scale = amax / 127.0;
            let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
            let mut sum = 0i32;
            for (qv, &xv) in q.iter_mut().zip(chunk) {
                let v = (xv * inv).round_ties_even() as i8;
                *qv = v;
                sum += i32::from(v);
            }
            // Stored as f16, as llama.cpp's block_q8_0 / block_q8_1 do: same numbers as the
            // reference implementation, not just close ones.
            d[b] = half::f16::from_f32(scale).to_f32();
            s[b] = half::f16::from_f32(scale * sum as f32).to_f32();
        }
        let group_sums = qs.chunks_exact(4).map(|g| g.iter().map(|&v| i32::from(v)).sum()).collect();
        Ok(Self { rows: x.len() / cols, blocks_per_row: cols / QK, d, s, qs, group_sums })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// A weight matrix `[rows (out features), cols (in features)]` in GGUF blocks.
#[derive(Debug, Clone)]
pub struct QuantMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    /// GGUF blocks, row-major; or in [`tiles`] order when `tiled`.
    data: Vec<u8>,
    tiled: bool,
}

/// Output features computed per task: a task's weight rows stay in cache while every
/// activation row goes past them.
const ROWS_PER_TASK: usize = 16;

/// Multiply-adds below which a matrix-vector product runs on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 17;

impl QuantMatrix {
    pub fn new(format: Format, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, KernelError> {
        if !cols.is_multiple_of(QK) || data.len() != rows * cols / QK * format.block_bytes() {
            return Err(KernelError::Shape(format!("{} bytes are not a {rows}x{cols} {format:?} matrix", data.len())));
        }
        // 16 rows per instruction where the CPU has AVX-512 VNNI; the tiles replace the
        // row-major blocks, so memory stays the same.
        if rows.is_multiple_of(tiles::TILE) && tiles::available() {
            let mut data = data;
            tiles::interleave(format, &mut data, rows, cols);
            return Ok(Self { format, rows, cols, data, tiled: true });
        }
        Ok(Self { format, rows, cols, data, tiled: false })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the blocks take (tiled or not: the same bytes, reordered).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    fn row(&self, o: usize) -> std::borrow::Cow<'_, [u8]> {
        if self.tiled {
            return std::borrow::Cow::Owned(tiles::row(self.format, &self.data, o, self.cols));
        }
        let bytes = self.cols / QK * self.format.block_bytes();
        std::borrow::Cow::Borrowed(&self.data[o * bytes..(o + 1) * bytes])
    }

    /// `out[r][o] = Σ_k w[o][k] · x[r][k]`; `out` is `x.rows() × self.rows()`.
    pub fn matmul(&self, x: &Q8Rows, out: &mut [f32]) -> Result<(), KernelError> {
        if x.blocks_per_row * QK != self.cols || out.len() != x.rows * self.rows {
            return Err(KernelError::Shape(format!(
                "{}x{} activations against a {}x{} matrix into {} outputs",
                x.rows,
                x.blocks_per_row * QK,
                self.rows,
                self.cols,
                out.len()
            )));
        }
        let n = x.rows;
        if self.tiled {
            self.matmul_tiled(x, out);
            return Ok(());
        }
        let dot = |o: usize, r: usize| {
            let blocks = r * x.blocks_per_row..(r + 1) * x.blocks_per_row;
            let act =
                Act { d: &x.d[blocks.clone()], s: &x.s[blocks.clone()], qs: &x.qs[blocks.start * QK..blocks.end * QK] };
            match self.format {
                Format::Q4_0 => dot_q4_0(&self.row(o), &act),
                Format::Q4_1 => dot_q4_1(&self.row(o), &act),
                Format::Q5_0 => dot_q5_0(&self.row(o), &act),
                Format::Q8_0 => dot_q8_0(&self.row(o), &act),
            }
        };
        if n == 1 {
            // Waking pool threads costs more than a small matrix-vector product: below
            // PARALLEL_MIN_WORK multiply-adds, or on one thread, stay on this thread.
            if threads::available() == 1 || self.rows * self.cols < PARALLEL_MIN_WORK {
                for (o, v) in out.iter_mut().enumerate() {
                    *v = dot(o, 0);
                }
                return Ok(());
            }
            threads::for_each_chunk(out, ROWS_PER_TASK, |task, chunk| {
                for (i, v) in chunk.iter_mut().enumerate() {
                    *v = dot(task * ROWS_PER_TASK + i, 0);
                }
            });
            return Ok(());
        }
        // A task per strip of ROWS_PER_TASK output features, written straight into `out`
        // (the last strip may be narrower). Four activation rows share each unpacked block.
        let act = |r: usize| {
            let blocks = r * x.blocks_per_row..(r + 1) * x.blocks_per_row;
            Act { d: &x.d[blocks.clone()], s: &x.s[blocks.clone()], qs: &x.qs[blocks.start * QK..blocks.end * QK] }
        };
        let features = |o0: usize, width: usize, put: &mut dyn FnMut(usize, usize, f32)| {
            for i in 0..width {
                let o = o0 + i;
                let row = self.row(o);
                let mut r = 0;
                while r + 4 <= n {
                    let acts = [act(r), act(r + 1), act(r + 2), act(r + 3)];
                    let dots = match self.format {
                        Format::Q4_0 => dot4_q4_0(&row, &acts),
                        Format::Q4_1 => dot4_q4_1(&row, &acts),
                        Format::Q5_0 => dot4_q5_0(&row, &acts),
                        Format::Q8_0 => dot4_q8_0(&row, &acts),
                    };
                    for (j, v) in dots.into_iter().enumerate() {
                        put(r + j, i, v);
                    }
                    r += 4;
                }
                for rr in r..n {
                    put(rr, i, dot(o, rr));
                }
            }
        };
        let full = self.rows - self.rows % ROWS_PER_TASK;
        if full == self.rows {
            threads::for_each_strip(out, n, full, ROWS_PER_TASK, |t, strip| {
                features(t * ROWS_PER_TASK, ROWS_PER_TASK, &mut |r, i, v| strip.row(r)[i] = v);
            });
            return Ok(());
        }
        if full > 0 {
            // `out` is n x rows; the strips cover the first `full` columns.
            let mut head = vec![0f32; n * full];
            threads::for_each_strip(&mut head, n, full, ROWS_PER_TASK, |t, strip| {
                features(t * ROWS_PER_TASK, ROWS_PER_TASK, &mut |r, i, v| strip.row(r)[i] = v);
            });
            for (r, values) in head.chunks_exact(full).enumerate() {
                out[r * self.rows..r * self.rows + full].copy_from_slice(values);
            }
        }
        let rows = self.rows;
        features(full, rows - full, &mut |r, i, v| out[r * rows + full + i] = v);
        Ok(())
    }

    /// [`Self::matmul`] over 16-row tiles: a task per tile, writing its 16 columns of every
    /// activation row's output.
    fn matmul_tiled(&self, x: &Q8Rows, out: &mut [f32]) {
        let (n, bpr) = (x.rows, x.blocks_per_row);
        let act = |r: usize| {
            let blocks = r * bpr..(r + 1) * bpr;
            Act { d: &x.d[blocks.clone()], s: &x.s[blocks.clone()], qs: &x.qs[blocks.start * QK..blocks.end * QK] }
        };
        let acts: Vec<Act<'_>> = (0..n).map(act).collect();
        let sums: Vec<&[i32]> = (0..n).map(|r| &x.group_sums[r * bpr * 8..(r + 1) * bpr * 8]).collect();
        let tile = |t: usize, strip: &mut threads::Strip<'_>| {
            let mut buf = vec![0f32; n * tiles::TILE];
            tiles::dot_tile(self.format, &self.data, t, bpr, &acts, &sums, &mut buf);
            for (r, values) in buf.chunks_exact(tiles::TILE).enumerate() {
                strip.row(r).copy_from_slice(values);
            }
        };
        if n == 1 && (threads::available() == 1 || self.rows * self.cols < PARALLEL_MIN_WORK) {
            let strips = self.rows / tiles::TILE;
            // One thread: the same strips in order, without the pool.
            let mut buf = vec![0f32; tiles::TILE];
            for t in 0..strips {
                tiles::dot_tile(self.format, &self.data, t, bpr, &acts, &sums, &mut buf);
                out[t * tiles::TILE..(t + 1) * tiles::TILE].copy_from_slice(&buf);
            }
            return;
        }
        threads::for_each_strip(out, n, self.rows, tiles::TILE, tile);
    }

    /// Consecutive row ranges as matrices of their own (fused projections split apart).
    pub fn split_rows(&self, sizes: &[usize]) -> Result<Vec<Self>, KernelError> {
        if sizes.iter().sum::<usize>() != self.rows {
            return Err(KernelError::Shape(format!("rows {sizes:?} do not add up to {}", self.rows)));
        }
        let mut start = 0;
        let mut parts = Vec::with_capacity(sizes.len());
        for &n in sizes {
            let data: Vec<u8> = (start..start + n).flat_map(|o| self.row(o).into_owned()).collect();
            parts.push(Self::new(self.format, n, self.cols, data)?);
            start += n;
        }
        Ok(parts)
    }

    /// Row `r` as f32 (embedding lookups that keep the table packed).
    pub fn dequantize_row(&self, r: usize) -> Vec<f32> {
        self.dequantize_blocks(&self.row(r))
    }

    /// The weights as f32, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows).flat_map(|o| self.dequantize_row(o)).collect()
    }

    fn dequantize_blocks(&self, data: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(data.len() / self.format.block_bytes() * QK);
        for block in data.chunks_exact(self.format.block_bytes()) {
            match self.format {
                Format::Q4_0 => {
                    let d = f16(block, 0);
                    let qs = &block[2..18];
                    out.extend(qs.iter().map(|q| d * (i32::from(q & 0xF) - 8) as f32));
                    out.extend(qs.iter().map(|q| d * (i32::from(q >> 4) - 8) as f32));
                }
                Format::Q4_1 => {
                    let (d, m) = (f16(block, 0), f16(block, 2));
                    let qs = &block[4..20];
                    out.extend(qs.iter().map(|q| d * f32::from(q & 0xF) + m));
                    out.extend(qs.iter().map(|q| d * f32::from(q >> 4) + m));
                }
                Format::Q5_0 => {
                    let d = f16(block, 0);
                    let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                    let qs = &block[6..22];
                    for j in 0..QK {
                        let low = if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 };
                        let q = i32::from(low) | (((qh >> j) & 1) as i32) << 4;
                        out.push(d * (q - 16) as f32);
                    }
                }
                Format::Q8_0 => {
                    let d = f16(block, 0);
                    out.extend(block[2..34].iter().map(|&q| d * f32::from(q as i8)));
                }
            }
        }
        out
    }
}

fn f16(block: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
}

/// One activation row.
struct Act<'a> {
    d: &'a [f32],
    s: &'a [f32],
    qs: &'a [i8],
}

/// The kernel for this build: the AVX2 one (with its run-time VNNI choice) where the target
/// has AVX2 and FMA, NEON on 64-bit ARM, else the scalar reference. All sum in the same
/// order: the same numbers on every machine.
macro_rules! kernel {
    ($($name:ident ($x:ty) -> $ret:ty;)*) => {$(
        fn $name(row: &[u8], x: $x) -> $ret {
            #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
            {
                avx2::$name(row, x)
            }
            #[cfg(target_arch = "aarch64")]
            {
                neon::$name(row, x)
            }
            #[cfg(not(any(
                all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"),
                target_arch = "aarch64"
            )))]
            {
                scalar::$name(row, x)
            }
        }
    )*};
}

kernel! {
    dot_q4_0(&Act<'_>) -> f32;
    dot4_q4_0(&[Act<'_>; 4]) -> [f32; 4];
    dot_q4_1(&Act<'_>) -> f32;
    dot4_q4_1(&[Act<'_>; 4]) -> [f32; 4];
    dot_q5_0(&Act<'_>) -> f32;
    dot4_q5_0(&[Act<'_>; 4]) -> [f32; 4];
    dot_q8_0(&Act<'_>) -> f32;
    dot4_q8_0(&[Act<'_>; 4]) -> [f32; 4];
}

// The reference for the SIMD versions; the kernel itself on targets without them.
#[cfg_attr(
    any(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"), target_arch = "aarch64"),
    allow(dead_code)
)]
mod scalar {
    pub fn dot4_q4_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        [dot_q4_0(row, &x[0]), dot_q4_0(row, &x[1]), dot_q4_0(row, &x[2]), dot_q4_0(row, &x[3])]
    }

    pub fn dot4_q4_1(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        [dot_q4_1(row, &x[0]), dot_q4_1(row, &x[1]), dot_q4_1(row, &x[2]), dot_q4_1(row, &x[3])]
    }

    pub fn dot4_q5_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        [dot_q5_0(row, &x[0]), dot_q5_0(row, &x[1]), dot_q5_0(row, &x[2]), dot_q5_0(row, &x[3])]
    }

    pub fn dot4_q8_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        [dot_q8_0(row, &x[0]), dot_q8_0(row, &x[1]), dot_q8_0(row, &x[2]), dot_q8_0(row, &x[3])]
    }

    use super::{Act, QK, f16};

    /// Σ w·x over a row of `bytes`-sized blocks whose 32 signed codes `codes` gives, in the
    /// SIMD kernels' order (and so llama.cpp's): 8 lanes per block, lane `k` the exact
    /// integer sum of values `4k..4k+4`, each lane scaled into its own f32 accumulator with a
    /// fused multiply-add per block, the lanes reduced as `hsum_float_8`. Every platform
    /// gets the same numbers as the AVX2 / VNNI kernels, bit for bit.
    fn dot_lanes(row: &[u8], x: &Act<'_>, bytes: usize, codes: impl Fn(&[u8]) -> (f32, [i32; QK])) -> f32 {
        let mut acc = [0f32; 8];
        for (b, block) in row.chunks_exact(bytes).enumerate() {
            let (d, q) = codes(block);
            let qx = &x.qs[b * QK..(b + 1) * QK];
            let dd = d * x.d[b];
            for (k, a) in acc.iter_mut().enumerate() {
                let lane: i32 = (4 * k..4 * k + 4).map(|j| q[j] * i32::from(qx[j])).sum();
                *a = dd.mul_add(lane as f32, *a);
            }
        }
        super::hsum_float_8(&acc)
    }

    /// Q4_0 in llama.cpp's order for it on x86, where it repacks Q4_0 (`q4_0_8x8`): one
    /// fused multiply-add per block of the block's whole integer sum, `isum · (d_w · d_x)`.
    pub fn dot_q4_0(row: &[u8], x: &Act<'_>) -> f32 {
        let mut acc = 0f32;
        for (b, block) in row.chunks_exact(18).enumerate() {
            let qx = &x.qs[b * QK..(b + 1) * QK];
            let isum: i32 = (0..16)
                .map(|j| {
                    (i32::from(block[2 + j] & 0xF) - 8) * i32::from(qx[j])
                        + (i32::from(block[2 + j] >> 4) - 8) * i32::from(qx[j + 16])
                })
                .sum();
            acc = (isum as f32).mul_add(f16(block, 0) * x.d[b], acc);
        }
        acc
    }

    pub fn dot_q4_1(row: &[u8], x: &Act<'_>) -> f32 {
        let sum = dot_lanes(row, x, 20, |block| {
            let mut q = [0i32; QK];
            for j in 0..16 {
                q[j] = i32::from(block[4 + j] & 0xF);
                q[j + 16] = i32::from(block[4 + j] >> 4);
            }
            (f16(block, 0), q)
        });
        // The minimums' terms, summed on the side block by block (a product, then a sum).
        let offsets = row.chunks_exact(20).enumerate().fold(0f32, |acc, (b, block)| acc + f16(block, 2) * x.s[b]);
        sum + offsets
    }

    pub fn dot_q5_0(row: &[u8], x: &Act<'_>) -> f32 {
        dot_lanes(row, x, 22, |block| {
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            let mut q = [0i32; QK];
            for (j, v) in q.iter_mut().enumerate() {
                let low = if j < 16 { block[6 + j] & 0xF } else { block[6 + j - 16] >> 4 };
                *v = (i32::from(low) | (((qh >> j) & 1) as i32) << 4) - 16;
            }
            (f16(block, 0), q)
        })
    }

    pub fn dot_q8_0(row: &[u8], x: &Act<'_>) -> f32 {
        dot_lanes(row, x, 34, |block| {
            let mut q = [0i32; QK];
            for (v, &w) in q.iter_mut().zip(&block[2..34]) {
                *v = i32::from(w as i8);
            }
            (f16(block, 0), q)
        })
    }
}

/// NEON (every 64-bit ARM CPU) versions with the scalar reference's order: the integer
/// lanes from widening 8-bit products and pairwise adds, two 4-lane f32 accumulators as
/// the 8 lanes, reduced as `hsum_float_8`.
#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{Act, QK, f16};

    /// Lanes `4k..4k+4` sums of 16 signed byte products, as 4 i32.
    #[inline(always)]
    unsafe fn lanes16(w: int8x16_t, x: int8x16_t) -> int32x4_t {
        // SAFETY: register-only NEON arithmetic.
        unsafe {
            let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(x)));
            let hi = vpaddlq_s16(vmull_s8(vget_high_s8(w), vget_high_s8(x)));
            vpaddq_s32(lo, hi)
        }
    }

    #[inline(always)]
    unsafe fn hsum8(lo: float32x4_t, hi: float32x4_t) -> f32 {
        // SAFETY: register-only NEON arithmetic.
        unsafe {
            let t = vaddq_f32(hi, lo);
            (vgetq_lane_f32(t, 0) + vgetq_lane_f32(t, 2)) + (vgetq_lane_f32(t, 1) + vgetq_lane_f32(t, 3))
        }
    }

    /// A block's 32 codes as two signed-byte registers (values 0..16 and 16..32).
    type Decode = fn(&[u8]) -> (f32, int8x16_t, int8x16_t);

    fn q4_1_block(block: &[u8]) -> (f32, int8x16_t, int8x16_t) {
        // SAFETY: a Q4_1 block is 20 bytes, the nibbles the 16 after the scales.
        unsafe {
            let nib = vld1q_u8(block[4..20].as_ptr());
            let (lo, hi) = (vandq_u8(nib, vdupq_n_u8(0xF)), vshrq_n_u8(nib, 4));
            (f16(block, 0), vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi))
        }
    }

    fn q4_0_block(block: &[u8]) -> (f32, int8x16_t, int8x16_t) {
        // SAFETY: a Q4_0 block is 18 bytes, the nibbles the 16 after the scale.
        unsafe {
            let nib = vld1q_u8(block[2..18].as_ptr());
            let (lo, hi) = (vandq_u8(nib, vdupq_n_u8(0xF)), vshrq_n_u8(nib, 4));
            let eight = vdupq_n_s8(8);
            (f16(block, 0), vsubq_s8(vreinterpretq_s8_u8(lo), eight), vsubq_s8(vreinterpretq_s8_u8(hi), eight))
        }
    }

    fn q5_0_block(block: &[u8]) -> (f32, int8x16_t, int8x16_t) {
        // SAFETY: a Q5_0 block is 22 bytes: scale, 4 bytes of high bits, 16 of nibbles.
        unsafe {
            let nib = vld1q_u8(block[6..22].as_ptr());
            let bit = vld1q_u8([1u8, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128].as_ptr());
            // Bit j of qh is the high bit of value j: byte j gets 0x10 where it is set.
            let high =
                |a: u8, b: u8| vandq_u8(vtstq_u8(vcombine_u8(vdup_n_u8(a), vdup_n_u8(b)), bit), vdupq_n_u8(0x10));
            let lo = vorrq_u8(vandq_u8(nib, vdupq_n_u8(0xF)), high(block[2], block[3]));
            let hi = vorrq_u8(vshrq_n_u8(nib, 4), high(block[4], block[5]));
            let sixteen = vdupq_n_s8(16);
            (f16(block, 0), vsubq_s8(vreinterpretq_s8_u8(lo), sixteen), vsubq_s8(vreinterpretq_s8_u8(hi), sixteen))
        }
    }

    fn q8_0_block(block: &[u8]) -> (f32, int8x16_t, int8x16_t) {
        // SAFETY: a Q8_0 block is 34 bytes, the codes the 32 after the scale.
        unsafe {
            let q = block[2..34].as_ptr().cast::<i8>();
            (f16(block, 0), vld1q_s8(q), vld1q_s8(q.add(16)))
        }
    }

    fn dot4_with(row: &[u8], x: &[Act<'_>; 4], bytes: usize, decode: Decode) -> [f32; 4] {
        let blocks = row.len() / bytes;
        for a in x {
            assert!(a.qs.len() >= blocks * QK && a.d.len() >= blocks);
        }
        // SAFETY: loads read 16 bytes at offsets 0 and 16 of each activation block, inside
        // `qs` (checked above); the rest is register arithmetic.
        unsafe {
            let mut acc = [[vdupq_n_f32(0.0); 2]; 4];
            for b in 0..blocks {
                let (d, w_lo, w_hi) = decode(&row[b * bytes..(b + 1) * bytes]);
                for (k, a) in x.iter().enumerate() {
                    let q = a.qs.as_ptr().add(b * QK);
                    let dd = vdupq_n_f32(d * a.d[b]);
                    let l_lo = vcvtq_f32_s32(lanes16(w_lo, vld1q_s8(q)));
                    let l_hi = vcvtq_f32_s32(lanes16(w_hi, vld1q_s8(q.add(16))));
                    acc[k][0] = vfmaq_f32(acc[k][0], l_lo, dd);
                    acc[k][1] = vfmaq_f32(acc[k][1], l_hi, dd);
                }
            }
            std::array::from_fn(|k| hsum8(acc[k][0], acc[k][1]))
        }
    }

    fn dot_with(row: &[u8], x: &Act<'_>, bytes: usize, decode: Decode) -> f32 {
        let blocks = row.len() / bytes;
        assert!(x.qs.len() >= blocks * QK && x.d.len() >= blocks);
        // SAFETY: as in `dot4_with`.
        unsafe {
            let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for b in 0..blocks {
                let (d, w_lo, w_hi) = decode(&row[b * bytes..(b + 1) * bytes]);
                let q = x.qs.as_ptr().add(b * QK);
                let dd = vdupq_n_f32(d * x.d[b]);
                lo = vfmaq_f32(lo, vcvtq_f32_s32(lanes16(w_lo, vld1q_s8(q))), dd);
                hi = vfmaq_f32(hi, vcvtq_f32_s32(lanes16(w_hi, vld1q_s8(q.add(16)))), dd);
            }
            hsum8(lo, hi)
        }
    }

    /// Q4_1's minimums: `m·s` summed on the side, block by block.
    fn offsets(row: &[u8], x: &Act<'_>) -> f32 {
        row.chunks_exact(20).enumerate().fold(0f32, |acc, (b, block)| acc + f16(block, 2) * x.s[b])
    }

    pub fn dot_q4_1(row: &[u8], x: &Act<'_>) -> f32 {
        dot_with(row, x, 20, q4_1_block) + offsets(row, x)
    }

    pub fn dot4_q4_1(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        let sums = dot4_with(row, x, 20, q4_1_block);
        std::array::from_fn(|k| sums[k] + offsets(row, &x[k]))
    }

    /// Q4_0 as the scalar reference: one fused multiply-add per block of its integer sum.
    pub fn dot_q4_0(row: &[u8], x: &Act<'_>) -> f32 {
        let blocks = row.len() / 18;
        assert!(x.qs.len() >= blocks * QK && x.d.len() >= blocks);
        let mut acc = 0f32;
        for b in 0..blocks {
            let (d, w_lo, w_hi) = q4_0_block(&row[b * 18..(b + 1) * 18]);
            // SAFETY: 16-byte loads at offsets 0 and 16 of activation block b (checked above).
            let isum = unsafe {
                let q = x.qs.as_ptr().add(b * QK);
                vaddvq_s32(vaddq_s32(lanes16(w_lo, vld1q_s8(q)), lanes16(w_hi, vld1q_s8(q.add(16)))))
            };
            acc = (isum as f32).mul_add(d * x.d[b], acc);
        }
        acc
    }

    pub fn dot4_q4_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        std::array::from_fn(|k| dot_q4_0(row, &x[k]))
    }

    pub fn dot_q5_0(row: &[u8], x: &Act<'_>) -> f32 {
        dot_with(row, x, 22, q5_0_block)
    }

    pub fn dot4_q5_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        dot4_with(row, x, 22, q5_0_block)
    }

    pub fn dot_q8_0(row: &[u8], x: &Act<'_>) -> f32 {
        dot_with(row, x, 34, q8_0_block)
    }

    pub fn dot4_q8_0(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        dot4_with(row, x, 34, q8_0_block)
    }
}

/// ggml's `hsum_float_8`: `((x4 + x0) + (x6 + x2)) + ((x5 + x1) + (x7 + x3))`.
fn hsum_float_8(x: &[f32; 8]) -> f32 {
    let r: [f32; 4] = std::array::from_fn(|i| x[4 + i] + x[i]);
    (r[0] + r[2]) + (r[1] + r[3])
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Act, QK, f16};

    /// 16 bytes of nibbles → 32 bytes: low nibbles first, then high nibbles.
    #[inline(always)]
    unsafe fn bytes_from_nibbles_32(p: &[u8]) -> __m256i {
        debug_assert!(p.len() >= 16);
        unsafe {
            let tmp = _mm_loadu_si128(p.as_ptr().cast());
            let bytes = _mm256_set_m128i(_mm_srli_epi16(tmp, 4), tmp);
            _mm256_and_si256(_mm256_set1_epi8(0xF), bytes)
        }
    }

    /// Byte j is 0xFF where bit j of `bits` is set.
    #[inline(always)]
    unsafe fn bytes_from_bits_32(bits: u32) -> __m256i {
        unsafe {
            let shuffle = _mm256_set_epi64x(
                0x0303_0303_0303_0303,
                0x0202_0202_0202_0202,
                0x0101_0101_0101_0101,
                0x0000_0000_0000_0000,
            );
            let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits as i32), shuffle);
            let bit_mask = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
            _mm256_cmpeq_epi8(_mm256_or_si256(bytes, bit_mask), _mm256_set1_epi64x(-1))
        }
    }

    /// Σ unsigned(a) · signed(b) over 32 byte pairs, as 8 float lanes. With VNNI one
    /// `vpdpbusd`; without, `vpmaddubsw` + `vpmaddwd`. The same integers either way: our
    /// operands never reach the 16-bit saturation of the AVX2 pair (|w| <= 16, |x| <= 127).
    #[inline(always)]
    unsafe fn mul_sum_us8<const VNNI: bool>(a: __m256i, b: __m256i) -> __m256 {
        unsafe {
            if VNNI {
                _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b))
            } else {
                let dot = _mm256_maddubs_epi16(a, b);
                _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot))
            }
        }
    }

    /// AVX-512 VNNI (with VL, for 256-bit registers), checked once at run time: the build
    /// targets x86-64-v3, and machines with VNNI (Zen 4, Ice Lake and later) run the
    /// products with one instruction fewer per block.
    /// `RAPID_HOST_NO_VNNI=1` keeps the AVX2 path, for measuring one against the other.
    fn vnni() -> bool {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::env::var("RAPID_HOST_NO_VNNI").map_or(true, |v| v.is_empty() || v == "0")
        })
    }

    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        unsafe {
            let lo = _mm256_castps256_ps128(v);
            let hi = _mm256_extractf128_ps(v, 1);
            let s = _mm_add_ps(lo, hi);
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_movehdup_ps(s));
            _mm_cvtss_f32(s)
        }
    }

    #[inline(always)]
    pub(super) unsafe fn dot_q4_1_impl<const VNNI: bool>(row: &[u8], x: &Act<'_>) -> f32 {
        let blocks = row.len() / 20;
        assert!(x.qs.len() >= blocks * QK && x.d.len() >= blocks && x.s.len() >= blocks);
        let mut offsets = 0f32;
        // SAFETY: AVX2/FMA are enabled for this target; loads read 16 and 32 bytes inside
        // `row` and `x.qs` (checked above).
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for b in 0..blocks {
                let block = &row[b * 20..b * 20 + 20];
                let (d, m) = (f16(block, 0), f16(block, 2));
                offsets += m * x.s[b];
                let qw = bytes_from_nibbles_32(&block[4..]);
                let qx = _mm256_loadu_si256(x.qs[b * QK..].as_ptr().cast());
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d[b]), mul_sum_us8::<VNNI>(qw, qx), acc);
            }
            hsum(acc) + offsets
        }
    }

    /// Four activation rows against one weight row: each block is unpacked once.
    #[inline(always)]
    pub(super) unsafe fn dot4_q4_1_impl<const VNNI: bool>(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        let blocks = row.len() / 20;
        for a in x {
            assert!(a.qs.len() >= blocks * QK && a.d.len() >= blocks && a.s.len() >= blocks);
        }
        let mut offsets = [0f32; 4];
        // SAFETY: as in `dot_q4_1`, for each of the four rows.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                let block = &row[b * 20..b * 20 + 20];
                let (d, m) = (f16(block, 0), f16(block, 2));
                let qw = bytes_from_nibbles_32(&block[4..]);
                for (k, a) in x.iter().enumerate() {
                    offsets[k] += m * a.s[b];
                    let qx = _mm256_loadu_si256(a.qs[b * QK..].as_ptr().cast());
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), mul_sum_us8::<VNNI>(qw, qx), acc[k]);
                }
            }
            [hsum(acc[0]) + offsets[0], hsum(acc[1]) + offsets[1], hsum(acc[2]) + offsets[2], hsum(acc[3]) + offsets[3]]
        }
    }

    /// A Q5_0 block as `(d, q - 16)`, signed bytes: where the high bit is clear, the top
    /// nibble is set.
    /// A Q4_0 block as `(d, q)`, q signed (nibble - 8).
    #[inline(always)]
    unsafe fn q4_0_block(block: &[u8]) -> (f32, __m256i) {
        // SAFETY: a Q4_0 block is 18 bytes, the nibbles the 16 after the scale.
        unsafe { (f16(block, 0), _mm256_sub_epi8(bytes_from_nibbles_32(&block[2..]), _mm256_set1_epi8(8))) }
    }

    #[inline(always)]
    unsafe fn q5_0_block(block: &[u8]) -> (f32, __m256i) {
        unsafe {
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            let low = bytes_from_nibbles_32(&block[6..]);
            let high = _mm256_andnot_si256(bytes_from_bits_32(qh), _mm256_set1_epi8(0xF0_u8 as i8));
            (f16(block, 0), _mm256_or_si256(low, high))
        }
    }

    /// A Q8_0 block as `(d, q)`.
    #[inline(always)]
    unsafe fn q8_0_block(block: &[u8]) -> (f32, __m256i) {
        // SAFETY: a Q8_0 block is 34 bytes, its codes the 32 after the scale.
        unsafe { (f16(block, 0), _mm256_loadu_si256(block[2..34].as_ptr().cast())) }
    }

    /// Σ w·x over a row of `bytes`-sized blocks whose codes `decode` gives as signed bytes
    /// (`w = d * q`), as llama.cpp's `vec_dot_q5_0_q8_0` / `vec_dot_q8_0_q8_0`: |w| times x
    /// with w's sign, one scaled integer sum per block.
    #[inline(always)]
    unsafe fn dot_signed<const VNNI: bool>(
        row: &[u8],
        x: &Act<'_>,
        bytes: usize,
        decode: impl Fn(&[u8]) -> (f32, __m256i),
    ) -> f32 {
        let blocks = row.len() / bytes;
        assert!(x.qs.len() >= blocks * QK && x.d.len() >= blocks);
        // SAFETY: as in `dot_q4_1`.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            for b in 0..blocks {
                let (d, qw) = decode(&row[b * bytes..(b + 1) * bytes]);
                let qx = _mm256_loadu_si256(x.qs[b * QK..].as_ptr().cast());
                let prod = mul_sum_us8::<VNNI>(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d[b]), prod, acc);
            }
            hsum(acc)
        }
    }

    /// [`dot_signed`] for four activation rows: each block is decoded once.
    #[inline(always)]
    unsafe fn dot4_signed<const VNNI: bool>(
        row: &[u8],
        x: &[Act<'_>; 4],
        bytes: usize,
        decode: impl Fn(&[u8]) -> (f32, __m256i),
    ) -> [f32; 4] {
        let blocks = row.len() / bytes;
        for a in x {
            assert!(a.qs.len() >= blocks * QK && a.d.len() >= blocks);
        }
        // SAFETY: as in `dot_q4_1`, for each of the four rows.
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 4];
            for b in 0..blocks {
                let (d, qw) = decode(&row[b * bytes..(b + 1) * bytes]);
                let abs_w = _mm256_sign_epi8(qw, qw);
                for (k, a) in x.iter().enumerate() {
                    let qx = _mm256_loadu_si256(a.qs[b * QK..].as_ptr().cast());
                    let prod = mul_sum_us8::<VNNI>(abs_w, _mm256_sign_epi8(qx, qw));
                    acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d[b]), prod, acc[k]);
                }
            }
            [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
        }
    }

    /// Σ unsigned(a) · signed(b) over 32 byte pairs, as one integer.
    #[inline(always)]
    unsafe fn isum_us8<const VNNI: bool>(a: __m256i, b: __m256i) -> i32 {
        unsafe {
            let v = if VNNI {
                _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
            } else {
                _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(a, b))
            };
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01)))
        }
    }

    /// Q4_0 in llama.cpp's order for it on x86 (its repacked `q4_0_8x8` kernels): one fused
    /// multiply-add per block of the block's whole integer sum, `isum · (d_w · d_x)`.
    #[inline(always)]
    pub(super) unsafe fn dot_q4_0_impl<const VNNI: bool>(row: &[u8], x: &Act<'_>) -> f32 {
        let blocks = row.len() / 18;
        assert!(x.qs.len() >= blocks * QK && x.d.len() >= blocks);
        // SAFETY: the caller's contract (AVX2, and VNNI when asked for); loads inside the
        // asserted bounds.
        unsafe {
            let mut acc = 0f32;
            for b in 0..blocks {
                let (d, qw) = q4_0_block(&row[b * 18..(b + 1) * 18]);
                let qx = _mm256_loadu_si256(x.qs[b * QK..].as_ptr().cast());
                let isum = isum_us8::<VNNI>(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
                acc = (isum as f32).mul_add(d * x.d[b], acc);
            }
            acc
        }
    }

    #[inline(always)]
    pub(super) unsafe fn dot4_q4_0_impl<const VNNI: bool>(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        let blocks = row.len() / 18;
        for a in x {
            assert!(a.qs.len() >= blocks * QK && a.d.len() >= blocks);
        }
        // SAFETY: as above, for each of the four rows.
        unsafe {
            let mut acc = [0f32; 4];
            for b in 0..blocks {
                let (d, qw) = q4_0_block(&row[b * 18..(b + 1) * 18]);
                let abs_w = _mm256_sign_epi8(qw, qw);
                for (k, a) in x.iter().enumerate() {
                    let qx = _mm256_loadu_si256(a.qs[b * QK..].as_ptr().cast());
                    let isum = isum_us8::<VNNI>(abs_w, _mm256_sign_epi8(qx, qw));
                    acc[k] = (isum as f32).mul_add(d * a.d[b], acc[k]);
                }
            }
            acc
        }
    }

    #[inline(always)]
    pub(super) unsafe fn dot_q5_0_impl<const VNNI: bool>(row: &[u8], x: &Act<'_>) -> f32 {
        // SAFETY: the caller's contract (AVX2, and VNNI when asked for).
        unsafe { dot_signed::<VNNI>(row, x, 22, |b| q5_0_block(b)) }
    }

    #[inline(always)]
    pub(super) unsafe fn dot4_q5_0_impl<const VNNI: bool>(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { dot4_signed::<VNNI>(row, x, 22, |b| q5_0_block(b)) }
    }

    #[inline(always)]
    pub(super) unsafe fn dot_q8_0_impl<const VNNI: bool>(row: &[u8], x: &Act<'_>) -> f32 {
        // SAFETY: as above.
        unsafe { dot_signed::<VNNI>(row, x, 34, |b| q8_0_block(b)) }
    }

    #[inline(always)]
    pub(super) unsafe fn dot4_q8_0_impl<const VNNI: bool>(row: &[u8], x: &[Act<'_>; 4]) -> [f32; 4] {
        // SAFETY: as above.
        unsafe { dot4_signed::<VNNI>(row, x, 34, |b| q8_0_block(b)) }
    }

    /// `pub fn $name`: the VNNI instance of `$name_impl` where the CPU has VNNI, else the AVX2 one.
    macro_rules! dispatch {
        ($($name:ident / $vnni:ident / $imp:ident ($x:ty) -> $ret:ty;)*) => {$(
            pub fn $name(row: &[u8], x: $x) -> $ret {
                // SAFETY: the VNNI version runs only where the CPU has those instructions.
                unsafe { if vnni() { $vnni(row, x) } else { $imp::<false>(row, x) } }
            }

            #[target_feature(enable = "avx512f,avx512vl,avx512vnni")]
            unsafe fn $vnni(row: &[u8], x: $x) -> $ret {
                // SAFETY: as in the AVX2 version; the caller checked for VNNI.
                unsafe { $imp::<true>(row, x) }
            }
        )*};
    }

    dispatch! {
        dot_q4_0 / dot_q4_0_vnni / dot_q4_0_impl (&Act<'_>) -> f32;
        dot4_q4_0 / dot4_q4_0_vnni / dot4_q4_0_impl (&[Act<'_>; 4]) -> [f32; 4];
        dot_q4_1 / dot_q4_1_vnni / dot_q4_1_impl (&Act<'_>) -> f32;
        dot4_q4_1 / dot4_q4_1_vnni / dot4_q4_1_impl (&[Act<'_>; 4]) -> [f32; 4];
        dot_q5_0 / dot_q5_0_vnni / dot_q5_0_impl (&Act<'_>) -> f32;
        dot4_q5_0 / dot4_q5_0_vnni / dot4_q5_0_impl (&[Act<'_>; 4]) -> [f32; 4];
        dot_q8_0 / dot_q8_0_vnni / dot_q8_0_impl (&Act<'_>) -> f32;
        dot4_q8_0 / dot4_q8_0_vnni / dot4_q8_0_impl (&[Act<'_>; 4]) -> [f32; 4];
    }
}

/// Helpers the unit tests of several modules share.
#[cfg(test)]
pub(crate) mod test_support {
    /// Deterministic pseudo-random bytes.
    pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 33) as u8
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::bytes;
    use super::*;

    /// A matrix with random codes and sane f16 scales.
    fn matrix(format: Format, rows: usize, cols: usize) -> QuantMatrix {
        QuantMatrix::new(format, rows, cols, blocks(format, rows, cols)).expect("shape")
    }

    /// GGUF blocks with random codes and modest f16 scales.
    fn blocks(format: Format, rows: usize, cols: usize) -> Vec<u8> {
        let mut data = bytes(rows * cols / QK * format.block_bytes(), 7);
        for block in data.chunks_exact_mut(format.block_bytes()) {
            let d = half::f16::from_f32(0.01 + f32::from(block[0]) / 5000.0).to_le_bytes();
            block[0..2].copy_from_slice(&d);
            if format == Format::Q4_1 {
                let m = half::f16::from_f32(-0.05 + f32::from(block[2]) / 3000.0).to_le_bytes();
                block[2..4].copy_from_slice(&m);
            }
        }
        data
    }

    fn activations(rows: usize, cols: usize) -> Vec<f32> {
        bytes(rows * cols, 3).iter().map(|b| (f32::from(*b) - 127.5) / 40.0).collect()
    }

    #[test]
    fn simd_and_scalar_agree_and_approximate_f32() {
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0] {
            let (rows, cols, n) = (37, 256, 6);
            let w = matrix(format, rows, cols);
            let x = activations(n, cols);
            let q = Q8Rows::quantize(&x, cols).expect("quantize");
            let mut out = vec![0f32; n * rows];
            w.matmul(&q, &mut out).expect("matmul");
            let dense = w.dequantize();
            for r in 0..n {
                let act = Act {
                    d: &q.d[r * 8..(r + 1) * 8],
                    s: &q.s[r * 8..(r + 1) * 8],
                    qs: &q.qs[r * cols..(r + 1) * cols],
                };
                for o in 0..rows {
                    let scalar = match format {
                        Format::Q4_1 => scalar::dot_q4_1(&w.row(o), &act),
                        Format::Q4_0 => scalar::dot_q4_0(&w.row(o), &act),
                        Format::Q5_0 => scalar::dot_q5_0(&w.row(o), &act),
                        Format::Q8_0 => scalar::dot_q8_0(&w.row(o), &act),
                    };
                    let got = out[r * rows + o];
                    // The scalar reference sums in the SIMD kernels' order: the same bits.
                    assert_eq!(got.to_bits(), scalar.to_bits(), "{format:?} {r},{o}: {got} vs {scalar}");
                    // 8-bit activations: the error is a small fraction of Σ|w·x|.
                    let exact: f32 = (0..cols).map(|k| dense[o * cols + k] * x[r * cols + k]).sum();
                    let magnitude: f32 = (0..cols).map(|k| (dense[o * cols + k] * x[r * cols + k]).abs()).sum();
                    assert!(
                        (got - exact).abs() <= 0.01 * magnitude,
                        "{format:?} {r},{o}: {got} vs {exact} (of {magnitude})"
                    );
                }
            }
        }
    }

    /// The 16-row tiles (AVX-512 VNNI) give the row-major kernels' numbers bit for bit, for
    /// one activation row (decode) and for batches with a partial group of four.
    #[test]
    fn tiled_products_equal_row_major_exactly() {
        if !tiles::available() {
            eprintln!("no AVX-512 VNNI here: the tiled kernel is not used on this CPU");
            return;
        }
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0] {
            tiled_equals_row_major(format);
        }
    }

    fn tiled_equals_row_major(format: Format) {
        let (rows, cols) = (48, 256);
        let gguf = blocks(format, rows, cols);
        let tiled = QuantMatrix::new(format, rows, cols, gguf.clone()).expect("shape");
        assert!(tiled.tiled);
        // The GGUF bytes themselves on the row-major side, and each row read back from the
        // tiles equal to them: the interleaving loses nothing.
        let plain = QuantMatrix { tiled: false, data: gguf.clone(), ..tiled.clone() };
        let back: Vec<u8> = (0..rows).flat_map(|o| tiled.row(o).into_owned()).collect();
        assert!(back == gguf, "{format:?}: rows read back from the tiles differ from the GGUF blocks");
        for n in [1, 3, 4, 7] {
            let q = Q8Rows::quantize(&activations(n, cols), cols).expect("quantize");
            let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
            tiled.matmul(&q, &mut a).expect("tiled");
            plain.matmul(&q, &mut b).expect("plain");
            assert_eq!(a, b, "{format:?}, {n} rows");
        }
        assert_eq!(tiled.dequantize(), plain.dequantize());
    }

    /// Where the CPU has AVX-512 VNNI the products run through it; they must equal the plain
    /// AVX2 ones bit for bit (both sum the same integers), so results do not depend on the
    /// machine. On a CPU without VNNI both sides are the AVX2 path.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    #[test]
    fn vnni_and_avx2_products_are_identical() {
        let cols = 512;
        let x = activations(4, cols);
        let q = Q8Rows::quantize(&x, cols).expect("quantize");
        let bpr = cols / QK;
        let act = |r: usize| Act {
            d: &q.d[r * bpr..(r + 1) * bpr],
            s: &q.s[r * bpr..(r + 1) * bpr],
            qs: &q.qs[r * cols..(r + 1) * cols],
        };
        let acts = [act(0), act(1), act(2), act(3)];
        for format in [Format::Q4_0, Format::Q4_1, Format::Q5_0, Format::Q8_0] {
            let w = matrix(format, 9, cols);
            for o in 0..9 {
                let row = &*w.row(o);
                // SAFETY: this build targets AVX2 + FMA (the cfg above).
                let (plain1, plain4) = unsafe {
                    match format {
                        Format::Q4_0 => {
                            (avx2::dot_q4_0_impl::<false>(row, &acts[0]), avx2::dot4_q4_0_impl::<false>(row, &acts))
                        }
                        Format::Q4_1 => {
                            (avx2::dot_q4_1_impl::<false>(row, &acts[0]), avx2::dot4_q4_1_impl::<false>(row, &acts))
                        }
                        Format::Q5_0 => {
                            (avx2::dot_q5_0_impl::<false>(row, &acts[0]), avx2::dot4_q5_0_impl::<false>(row, &acts))
                        }
                        Format::Q8_0 => {
                            (avx2::dot_q8_0_impl::<false>(row, &acts[0]), avx2::dot4_q8_0_impl::<false>(row, &acts))
                        }
                    }
                };
                let (best1, best4) = match format {
                    Format::Q4_0 => (avx2::dot_q4_0(row, &acts[0]), avx2::dot4_q4_0(row, &acts)),
                    Format::Q4_1 => (avx2::dot_q4_1(row, &acts[0]), avx2::dot4_q4_1(row, &acts)),
                    Format::Q5_0 => (avx2::dot_q5_0(row, &acts[0]), avx2::dot4_q5_0(row, &acts)),
                    Format::Q8_0 => (avx2::dot_q8_0(row, &acts[0]), avx2::dot4_q8_0(row, &acts)),
                };
                assert_eq!(plain1.to_bits(), best1.to_bits(), "{format:?} row {o}");
                assert_eq!(plain4.map(f32::to_bits), best4.map(f32::to_bits), "{format:?} row {o}");
            }
        }
    }

    #[test]
    fn single_rows_take_the_decode_path() {
        let w = matrix(Format::Q4_1, 40, 64);
        let x = activations(1, 64);
        let q = Q8Rows::quantize(&x, 64).expect("quantize");
        let mut one = vec![0f32; 40];
        w.matmul(&q, &mut one).expect("matmul");
        // Five copies: four through the four-row path, one alone; all bit-identical to the
        // single-row result, so a batched prefill equals token-by-token decoding.
        let five: Vec<f32> = (0..5).flat_map(|_| x.iter().copied()).collect();
        let q5 = Q8Rows::quantize(&five, 64).expect("quantize");
        let mut many = vec![0f32; 200];
        w.matmul(&q5, &mut many).expect("matmul");
        for copy in many.chunks_exact(40) {
            assert_eq!(copy, &one[..]);
        }
    }

    #[test]
    fn rows_split_and_dequantize_alone() {
        let w = matrix(Format::Q4_1, 6, 64);
        let dense = w.dequantize();
        let parts = w.split_rows(&[2, 3, 1]).expect("split");
        assert_eq!(parts[1].rows(), 3);
        assert_eq!(parts[1].dequantize(), dense[2 * 64..5 * 64].to_vec());
        assert_eq!(w.dequantize_row(5), dense[5 * 64..].to_vec());
        assert!(w.split_rows(&[2, 2]).is_err());
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(QuantMatrix::new(Format::Q4_1, 2, 32, vec![0; 39]).is_err());
        assert!(Q8Rows::quantize(&[0.0; 33], 33).is_err());
        let w = matrix(Format::Q4_1, 2, 32);
        let q = Q8Rows::quantize(&[0.0; 64], 64).expect("quantize");
        assert!(w.matmul(&q, &mut [0.0; 2]).is_err());
    }
}
