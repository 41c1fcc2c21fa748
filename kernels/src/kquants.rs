//! K-quant weights (GGUF `Q4_K`, `Q6_K`) interleaved 16 rows at a time for AVX-512 VNNI,
//! against activations quantized per 256 values (`Q8_K`, as ggml's `quantize_row_q8_K`).
//! Where the CPU lacks VNNI, the blocks stay row-major for AVX2 kernels that do each row's
//! arithmetic exactly as the tiled ones; builds without AVX2 (ARM) leave these formats to
//! Candle's kernels ([`KMatrix::new`] says so by returning `None`).
//!
//! The integer sums are exact, and the float order is llama.cpp's (its x86 build):
//! - Q4_K as its repacked kernels: per super-block (gemv, single rows) or per pair of
//!   sub-blocks (gemm, each full group of 4 rows from the batch's start) one fused
//!   multiply-add of the scaled sums, and one of the minimums' terms into an accumulator of
//!   their own, subtracted at the end;
//! - Q6_K below 8 activation rows as its `vec_dot_q6_K_q8_K`: 8 integer lanes per
//!   super-block, each scaled into its own f32 accumulator, reduced as `hsum_float_8`; from
//!   8 rows on as its repacked kernels: one fused multiply-add per super-block,
//!   `(isum · d_w) · d_x`.
//!
//! Tile layout per 16 rows and super-block, within 3% of the blocks it replaces:
//! - Q4_K (2368 bytes for 2304): `d[16]`, `dmin[16]` (f16), the 6-bit scales and minimums
//!   unpacked to bytes (`[8 sub-blocks][16 rows]` each), then the codes: for each pair `j`
//!   of 32-value sub-blocks and group `g` of 4 values, 64 bytes (4 bytes of 16 rows; low
//!   nibbles sub-block `2j`, high nibbles `2j + 1`).
//! - Q6_K (3360 bytes, as the blocks): `d[16]` (f16), the scales (`[16][16]`, i8), then for
//!   each half `h` and group `g`: 64 bytes of `ql[4g..]`, 64 of `ql[32 + 4g..]` and 64 of
//!   `qh[4g..]`, 16 rows each.

use crate::KernelError;

/// Values per super-block.
pub const QK_K: usize = 256;
const TILE: usize = 16;

/// Rows of activations quantized per 256 values, as ggml's `quantize_row_q8_K`.
#[derive(Debug, Clone)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Q8KRows {
    rows: usize,
    blocks_per_row: usize,
    d: Vec<f32>,
    qs: Vec<i8>,
    /// Per block, the sums of each 16 codes.
    bsums: Vec<i32>,
    /// The same sums as 16-bit integers (|sum| <= 16 * 127), for ggml's `madd` with scales.
    bsums16: Vec<i16>,
}

/// ggml's `nearest_int`: round half to even through the 1.5·2^23 trick.
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

impl Q8KRows {
    pub fn quantize(x: &[f32], cols: usize) -> Result<Self, KernelError> {
        if cols == 0 || !cols.is_multiple_of(QK_K) || !x.len().is_multiple_of(cols) {
            return Err(KernelError::Shape(format!(
                "{} values do not make rows of {cols} (a multiple of 256)",
                x.len()
            )));
        }
        let blocks = x.len() / QK_K;
        let mut d = vec![0f32; blocks];
        let mut qs = vec![0i8; x.len()];
        for (b, (chunk, q)) in x.chunks_exact(QK_K).zip(qs.chunks_exact_mut(QK_K)).enumerate() {
            // The signed value of largest magnitude (the first, on ties).
            let (mut amax, mut max) = (0f32, 0f32);
            for &v in chunk {
                if v.abs() > amax {
                    amax = v.abs();
                    max = v;
                }
            }
            if amax == 0.0 {
                continue;
            }
            let iscale = -127.0 / max;
            for (qv, &v) in q.iter_mut().zip(chunk) {
                *qv = nearest_int(iscale * v).min(127) as i8;
            }
            d[b] = 1.0 / iscale;
        }
        let bsums: Vec<i32> = qs.chunks_exact(16).map(|c| c.iter().map(|&v| i32::from(v)).sum()).collect();
        let bsums16 = bsums.iter().map(|&s| s as i16).collect();
        Ok(Self { rows: x.len() / cols, blocks_per_row: cols / QK_K, d, qs, bsums, bsums16 })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }
}

/// K-quant block formats with a tiled kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KFormat {
    Q4K,
    Q6K,
}

impl KFormat {
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4K => 144,
            Self::Q6K => 210,
        }
    }

    fn tile_bytes(self) -> usize {
        match self {
            Self::Q4K => 2368,
            Self::Q6K => 3360,
        }
    }
}

/// A K-quant matrix `[rows (out features), cols (in features)]` in tiles.
#[derive(Debug, Clone)]
pub struct KMatrix {
    format: KFormat,
    rows: usize,
    cols: usize,
    /// Tiles (AVX-512 VNNI) or GGUF's own row-major blocks (the AVX2 kernels).
    data: Vec<u8>,
    tiled: bool,
}

/// Whether this build has the row-major AVX2 kernels (x86-64-v3 and up).
const ROW_MAJOR: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"));

/// Whether K-quant products run on our kernels here (either layout), with llama.cpp's
/// numbers; elsewhere [`KMatrix::new`] declines and Candle's kernels take the matrices.
pub fn available() -> bool {
    crate::tiles::available() || ROW_MAJOR
}

/// Q4_K's 6-bit scale and minimum of sub-block `j` (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

impl KMatrix {
    /// GGUF blocks in the layout this CPU runs fastest: 16-row tiles with AVX-512 VNNI,
    /// else the blocks as they are for the AVX2 kernels; `None` where neither runs or the
    /// rows do not come in sixteens (Candle's kernels take the matrix then).
    pub fn new(format: KFormat, rows: usize, cols: usize, data: &[u8]) -> Result<Option<Self>, KernelError> {
        Self::with_layout(format, rows, cols, data, crate::tiles::available())
    }

    /// [`Self::new`] with the layout chosen: `tiled` (where the CPU runs the tiled kernel)
    /// or row-major (where the build has the AVX2 kernels). Both give the same numbers, bit
    /// for bit; tests and A/B runs compare them.
    pub fn with_layout(
        format: KFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
        tiled: bool,
    ) -> Result<Option<Self>, KernelError> {
        if !cols.is_multiple_of(QK_K) || data.len() != rows * cols / QK_K * format.block_bytes() {
            return Err(KernelError::Shape(format!("{} bytes are not a {rows}x{cols} {format:?} matrix", data.len())));
        }
        if !rows.is_multiple_of(TILE) || (tiled && !crate::tiles::available()) || (!tiled && !ROW_MAJOR) {
            return Ok(None);
        }
        if !tiled {
            return Ok(Some(Self { format, rows, cols, data: data.to_vec(), tiled }));
        }
        let blocks = cols / QK_K;
        let (bb, tb) = (format.block_bytes(), format.tile_bytes());
        let mut tiles = vec![0u8; rows / TILE * blocks * tb];
        for t in 0..rows / TILE {
            for b in 0..blocks {
                let tile = &mut tiles[(t * blocks + b) * tb..][..tb];
                for r in 0..TILE {
                    let block = &data[((t * TILE + r) * blocks + b) * bb..][..bb];
                    match format {
                        KFormat::Q4K => {
                            tile[2 * r..2 * r + 2].copy_from_slice(&block[0..2]);
                            tile[32 + 2 * r..32 + 2 * r + 2].copy_from_slice(&block[2..4]);
                            for s in 0..8 {
                                let (sc, m) = scale_min_k4(s, &block[4..16]);
                                tile[64 + s * TILE + r] = sc;
                                tile[192 + s * TILE + r] = m;
                            }
                            for j in 0..4 {
                                for g in 0..8 {
                                    let at = 320 + (j * 8 + g) * 64 + 4 * r;
                                    tile[at..at + 4].copy_from_slice(&block[16 + 32 * j + 4 * g..][..4]);
                                }
                            }
                        }
                        KFormat::Q6K => {
                            tile[2 * r..2 * r + 2].copy_from_slice(&block[208..210]);
                            for s in 0..16 {
                                tile[32 + s * TILE + r] = block[192 + s];
                            }
                            for h in 0..2 {
                                for g in 0..8 {
                                    let at = 288 + (h * 8 + g) * 192 + 4 * r;
                                    tile[at..at + 4].copy_from_slice(&block[h * 64 + 4 * g..][..4]);
                                    tile[at + 64..at + 68].copy_from_slice(&block[h * 64 + 32 + 4 * g..][..4]);
                                    tile[at + 128..at + 132].copy_from_slice(&block[128 + h * 32 + 4 * g..][..4]);
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(Some(Self { format, rows, cols, data: tiles, tiled }))
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes the matrix holds (the tiles unpack the 6-bit scales: a few percent over the blocks).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// `out[r][o] = Σ_k w[o][k] · x[r][k]`; `out` is `x.rows() × self.rows()`.
    pub fn matmul(&self, x: &Q8KRows, out: &mut [f32]) -> Result<(), KernelError> {
        self.matmul_segments(x, &[x.rows], out)
    }

    /// [`Self::matmul`] over activation rows that come in `segments` (row counts, in order,
    /// summing to `x.rows()`), each computed exactly as [`Self::matmul`] on that segment
    /// alone: llama.cpp's float order depends on the number of rows in a call (Q4_K's
    /// groups of 4 from the first row, Q6_K's kernel from 8 rows on), so the sequences of
    /// a ragged batch pass as their own segments to get the numbers they get alone, while
    /// sharing each weight tile's pass through the cache.
    pub fn matmul_segments(&self, x: &Q8KRows, segments: &[usize], out: &mut [f32]) -> Result<(), KernelError> {
        if x.blocks_per_row * QK_K != self.cols
            || out.len() != x.rows * self.rows
            || segments.iter().sum::<usize>() != x.rows
        {
            return Err(KernelError::Shape(format!(
                "{}x{} activations in segments {segments:?} against a {}x{} {:?} matrix",
                x.rows,
                x.blocks_per_row * QK_K,
                self.rows,
                self.cols,
                self.format
            )));
        }
        // (first row, rows, segment of 8 rows or more) for each group of at most 4 rows.
        let mut groups = Vec::with_capacity(x.rows / 4 + segments.len());
        let mut start = 0;
        for &len in segments {
            for r0 in (start..start + len).step_by(4) {
                groups.push((r0, (start + len - r0).min(4), len >= 8));
            }
            start += len;
        }
        let (n, blocks) = (x.rows, x.blocks_per_row);
        if !self.tiled {
            // A task per strip of 16 output features; each weight row's blocks (at most a
            // few KB) stay in L1 while groups of 4 activation rows pass over them.
            let bytes = blocks * self.format.block_bytes();
            let rows = |t: usize, strip: &mut crate::threads::Strip<'_>| {
                for i in 0..TILE {
                    let o = t * TILE + i;
                    let row = &self.data[o * bytes..(o + 1) * bytes];
                    for &(r0, k, repacked) in &groups {
                        let mut values = [0f32; 4];
                        run_row(self.format, row, blocks, x, r0, k, repacked, &mut values);
                        for (j, v) in values.iter().enumerate().take(k) {
                            strip.row(r0 + j)[i] = *v;
                        }
                    }
                }
            };
            crate::threads::for_each_strip(out, n, self.rows, TILE, rows);
            return Ok(());
        }
        let tb = self.format.tile_bytes();
        let tile = |t: usize, strip: &mut crate::threads::Strip<'_>| {
            let tiles = &self.data[t * blocks * tb..(t + 1) * blocks * tb];
            let mut buf = [0f32; 4 * TILE];
            for &(r0, k, repacked) in &groups {
                run_tile(self.format, tiles, blocks, x, r0, k, repacked, &mut buf);
                for j in 0..k {
                    strip.row(r0 + j).copy_from_slice(&buf[j * TILE..(j + 1) * TILE]);
                }
            }
        };
        crate::threads::for_each_strip(out, n, self.rows, TILE, tile);
        Ok(())
    }
}

/// One weight row (GGUF blocks) against activation rows `r0..r0 + k` into `out[..k]`.
/// `repacked`: the rows belong to a segment of 8 or more (Q6_K's kernel changes there).
#[allow(clippy::too_many_arguments)]
fn run_row(
    format: KFormat,
    row: &[u8],
    blocks: usize,
    x: &Q8KRows,
    r0: usize,
    k: usize,
    repacked: bool,
    out: &mut [f32; 4],
) {
    assert!(row.len() == blocks * format.block_bytes() && x.blocks_per_row == blocks && r0 + k <= x.rows);
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    {
        // SAFETY: the build has AVX2 and FMA; the assert bounds every load (a row of
        // `blocks` blocks, activation rows r0..r0+k of `blocks` blocks each).
        let values: &[f32] = unsafe {
            match (format, k, repacked) {
                (KFormat::Q4K, 1, _) => &avx2::q4k::<1>(row, blocks, x, r0),
                (KFormat::Q4K, 2, _) => &avx2::q4k::<2>(row, blocks, x, r0),
                (KFormat::Q4K, 3, _) => &avx2::q4k::<3>(row, blocks, x, r0),
                (KFormat::Q4K, _, _) => &avx2::q4k::<4>(row, blocks, x, r0),
                (KFormat::Q6K, 1, false) => &avx2::q6k::<1, false>(row, blocks, x, r0),
                (KFormat::Q6K, 2, false) => &avx2::q6k::<2, false>(row, blocks, x, r0),
                (KFormat::Q6K, 3, false) => &avx2::q6k::<3, false>(row, blocks, x, r0),
                (KFormat::Q6K, _, false) => &avx2::q6k::<4, false>(row, blocks, x, r0),
                (KFormat::Q6K, 1, true) => &avx2::q6k::<1, true>(row, blocks, x, r0),
                (KFormat::Q6K, 2, true) => &avx2::q6k::<2, true>(row, blocks, x, r0),
                (KFormat::Q6K, 3, true) => &avx2::q6k::<3, true>(row, blocks, x, r0),
                (KFormat::Q6K, _, true) => &avx2::q6k::<4, true>(row, blocks, x, r0),
            }
        };
        out[..values.len()].copy_from_slice(values);
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
    {
        let _ = (out, r0, repacked);
        unreachable!("row-major K-quant matrices are only built where the AVX2 kernels are");
    }
}

/// One tile against activation rows `r0..r0 + k` into `out` (`k` rows of 16).
#[allow(clippy::too_many_arguments)]
fn run_tile(
    format: KFormat,
    tiles: &[u8],
    blocks: usize,
    x: &Q8KRows,
    r0: usize,
    k: usize,
    repacked: bool,
    out: &mut [f32; 4 * TILE],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `KMatrix::new` builds tiles only where `tiles::available` holds; `tiles` holds
    // `blocks` tile-blocks and `x` rows r0..r0+k of `blocks` blocks each.
    unsafe {
        // The row count as a constant keeps the accumulators in registers.
        match (format, k) {
            (KFormat::Q4K, 1) => avx512::q4k::<1>(tiles, blocks, x, r0, out),
            (KFormat::Q4K, 2) => avx512::q4k::<2>(tiles, blocks, x, r0, out),
            (KFormat::Q4K, 3) => avx512::q4k::<3>(tiles, blocks, x, r0, out),
            (KFormat::Q4K, _) => avx512::q4k::<4>(tiles, blocks, x, r0, out),
            (KFormat::Q6K, 1) => avx512::q6k::<1>(tiles, blocks, x, r0, repacked, out),
            (KFormat::Q6K, 2) => avx512::q6k::<2>(tiles, blocks, x, r0, repacked, out),
            (KFormat::Q6K, 3) => avx512::q6k::<3>(tiles, blocks, x, r0, repacked, out),
            (KFormat::Q6K, _) => avx512::q6k::<4>(tiles, blocks, x, r0, repacked, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (format, tiles, blocks, x, r0, k, repacked, out);
        unreachable!("K-quant tiles are only built where the tiled kernel runs");
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Q8KRows, QK_K, TILE};
    use std::arch::x86_64::*;

    /// Stores `acc[j]` (16 rows) as row `j` of `out`.
    #[inline(always)]
    unsafe fn store<const K: usize>(acc: &[__m512; K], out: &mut [f32; 4 * TILE]) {
        for (j, a) in acc.iter().enumerate() {
            // SAFETY: `out` holds 4 rows of 16.
            unsafe { _mm512_storeu_ps(out.as_mut_ptr().add(j * TILE), *a) };
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q4k<const K: usize>(
        tiles: &[u8],
        blocks: usize,
        x: &Q8KRows,
        r0: usize,
        out: &mut [f32; 4 * TILE],
    ) {
        // llama.cpp's repacked Q4_K runs a full group of 4 activation rows through its gemm,
        // which scales each pair of sub-blocks into the f32 accumulators, and the rows left
        // over through its gemv, which scales once per super-block; the integers are equal.
        let gemm = K == 4;
        // SAFETY: see `KMatrix::matmul`; every load below is inside one tile-block or one
        // activation block.
        unsafe {
            let low = _mm512_set1_epi8(0x0F);
            let mut acc = [_mm512_setzero_ps(); K];
            let mut acc_min = [_mm512_setzero_ps(); K];
            for b in 0..blocks {
                let tile = tiles.as_ptr().add(b * 2368);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.cast()));
                let dmin = _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(32).cast()));
                let dx: [__m512; K] = std::array::from_fn(|i| _mm512_set1_ps(x.d[(r0 + i) * blocks + b]));
                let dd: [__m512; K] = std::array::from_fn(|i| _mm512_mul_ps(d, dx[i]));
                let ddm: [__m512; K] = std::array::from_fn(|i| _mm512_mul_ps(dmin, dx[i]));
                let mut total = [_mm512_setzero_si512(); K];
                let mut mins = [_mm512_setzero_si512(); K];
                for j in 0..4 {
                    let mut sum_a = [_mm512_setzero_si512(); K];
                    let mut sum_b = [_mm512_setzero_si512(); K];
                    for g in 0..8 {
                        let w = _mm512_loadu_si512(tile.add(320 + (j * 8 + g) * 64).cast());
                        let (lo, hi) = (_mm512_and_si512(w, low), _mm512_and_si512(_mm512_srli_epi16(w, 4), low));
                        for i in 0..K {
                            let qs = x.qs.as_ptr().add(((r0 + i) * blocks + b) * QK_K + 64 * j + 4 * g);
                            let xa = _mm512_set1_epi32(std::ptr::read_unaligned(qs.cast::<i32>()));
                            let xb = _mm512_set1_epi32(std::ptr::read_unaligned(qs.add(32).cast::<i32>()));
                            sum_a[i] = _mm512_dpbusd_epi32(sum_a[i], lo, xa);
                            sum_b[i] = _mm512_dpbusd_epi32(sum_b[i], hi, xb);
                        }
                    }
                    let (sa, sb) = (2 * j, 2 * j + 1);
                    let sc_a = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(64 + sa * TILE).cast()));
                    let sc_b = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(64 + sb * TILE).cast()));
                    let m_a = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(192 + sa * TILE).cast()));
                    let m_b = _mm512_cvtepu8_epi32(_mm_loadu_si128(tile.add(192 + sb * TILE).cast()));
                    for i in 0..K {
                        let bs = &x.bsums[((r0 + i) * blocks + b) * 16..];
                        let scaled =
                            _mm512_add_epi32(_mm512_mullo_epi32(sum_a[i], sc_a), _mm512_mullo_epi32(sum_b[i], sc_b));
                        let (xa, xb) = (bs[2 * sa] + bs[2 * sa + 1], bs[2 * sb] + bs[2 * sb + 1]);
                        let min = _mm512_add_epi32(
                            _mm512_mullo_epi32(m_a, _mm512_set1_epi32(xa)),
                            _mm512_mullo_epi32(m_b, _mm512_set1_epi32(xb)),
                        );
                        if gemm {
                            acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(scaled), dd[i], acc[i]);
                            acc_min[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(min), ddm[i], acc_min[i]);
                        } else {
                            total[i] = _mm512_add_epi32(total[i], scaled);
                            mins[i] = _mm512_add_epi32(mins[i], min);
                        }
                    }
                }
                if !gemm {
                    for i in 0..K {
                        acc[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(total[i]), dd[i], acc[i]);
                        acc_min[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mins[i]), ddm[i], acc_min[i]);
                    }
                }
            }
            // As llama.cpp's repacked Q4_K kernels: the minimums' terms in their own
            // accumulator, subtracted once at the end.
            for i in 0..K {
                acc[i] = _mm512_sub_ps(acc[i], acc_min[i]);
            }
            store(&acc, out);
        }
    }

    /// Q6_K's codes for half `h` and group `g` of a tile-block: values `128h + 32q + 4g..+4`
    /// of 16 rows as 4 registers (`q` = 0..4), unsigned (0..64).
    #[inline(always)]
    unsafe fn q6k_codes(tile: *const u8, h: usize, g: usize) -> [__m512i; 4] {
        // SAFETY: the caller points at one Q6_K tile-block.
        unsafe {
            let (low, high) = (_mm512_set1_epi8(0x0F), _mm512_set1_epi8(0x30));
            let at = tile.add(288 + (h * 8 + g) * 192);
            let (qa, qb) = (_mm512_loadu_si512(at.cast()), _mm512_loadu_si512(at.add(64).cast()));
            let qh = _mm512_loadu_si512(at.add(128).cast());
            // Each value's two high bits moved to bits 4-5 of its byte (16-bit shifts by
            // less than 8 only carry bits into the parts the mask clears), then
            // `(nibbles & 0x0F) | high` in one ternary-logic operation (0xEC: (A & C) | B).
            let merge = |nibbles: __m512i, bits: __m512i| {
                _mm512_ternarylogic_epi32::<0xEC>(nibbles, _mm512_and_si512(bits, high), low)
            };
            [
                merge(qa, _mm512_slli_epi16(qh, 4)),
                merge(qb, _mm512_slli_epi16(qh, 2)),
                merge(_mm512_srli_epi16(qa, 4), qh),
                merge(_mm512_srli_epi16(qb, 4), _mm512_srli_epi16(qh, 2)),
            ]
        }
    }

    /// Q6_K in llama.cpp's float order. Below 8 activation rows as its
    /// `ggml_vec_dot_q6_K_q8_K` (AVX2): per row and super-block 8 integer lanes, lane `g` the
    /// scaled products of values `4g..4g+4` of every 32 (codes unsigned, 0..64) minus
    /// `32 · (bsum[2g]·sc[2g] + bsum[2g+1]·sc[2g+1])`, each lane scaled into its own f32
    /// accumulator with one fused multiply-add, reduced as `hsum_float_8`. From 8 rows on as
    /// its repacked kernels: one fused multiply-add per super-block, `(isum · d_w) · d_x`.
    /// The integers are exact, so they are summed in whatever order is cheapest here.
    // The row, lane and sub-block indices address several arrays and activation offsets.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn q6k<const K: usize>(
        tiles: &[u8],
        blocks: usize,
        x: &Q8KRows,
        r0: usize,
        repacked: bool,
        out: &mut [f32; 4 * TILE],
    ) {
        // SAFETY: as in `q4k`.
        unsafe {
            let sums = if repacked {
                q6k_sums::<K, true>(tiles, blocks, x, r0)
            } else {
                q6k_sums::<K, false>(tiles, blocks, x, r0)
            };
            store(&sums, out);
        }
    }

    /// The 16 rows' scales of sub-block `s` as i32 lanes.
    #[inline(always)]
    unsafe fn q6k_scales(tile: *const u8, s: usize) -> __m512i {
        // SAFETY: the caller points at one Q6_K tile-block.
        unsafe { _mm512_cvtepi8_epi32(_mm_loadu_si128(tile.add(32 + s * TILE).cast())) }
    }

    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn q6k_sums<const K: usize, const REPACKED: bool>(
        tiles: &[u8],
        blocks: usize,
        x: &Q8KRows,
        r0: usize,
    ) -> [__m512; K] {
        // SAFETY: as in `q4k`.
        unsafe {
            let low16 = _mm512_set1_epi32(0xFFFF);
            let mut acc = [[_mm512_setzero_ps(); 8]; K];
            for b in 0..blocks {
                let tile = tiles.as_ptr().add(b * 3360);
                let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.cast()));
                let dd: [__m512; K] =
                    std::array::from_fn(|i| _mm512_mul_ps(d, _mm512_set1_ps(x.d[(r0 + i) * blocks + b])));
                // Each scale in both 16-bit halves of its row's lane, for vpdpwssd.
                let pairs: [__m512i; 16] = std::array::from_fn(|s| {
                    let sc = q6k_scales(tile, s);
                    _mm512_or_si512(_mm512_and_si512(sc, low16), _mm512_slli_epi32(sc, 16))
                });
                let mut total = [_mm512_setzero_si512(); K];
                for g in 0..8 {
                    // One accumulator per 32-value quarter: four short dependency chains.
                    let mut part = [[_mm512_setzero_si512(); 4]; K];
                    for h in 0..2 {
                        let v = q6k_codes(tile, h, g);
                        for i in 0..K {
                            let qs = x.qs.as_ptr().add(((r0 + i) * blocks + b) * QK_K + 128 * h + 4 * g);
                            for q in 0..4 {
                                // Codes (< 64) times 8-bit values: pairs fit 16 bits exactly.
                                let xq = _mm512_set1_epi32(std::ptr::read_unaligned(qs.add(32 * q).cast::<i32>()));
                                let products = _mm512_maddubs_epi16(v[q], xq);
                                part[i][q] = _mm512_dpwssd_epi32(part[i][q], products, pairs[8 * h + 2 * q + g / 4]);
                            }
                        }
                    }
                    // The codes' offset of 32, by sub-block pairs as ggml's madd of bsums and
                    // scales: (sc[2g], sc[2g+1]) against (bsum[2g], bsum[2g+1]) in 16-bit halves.
                    let (sa, sb) = (q6k_scales(tile, 2 * g), q6k_scales(tile, 2 * g + 1));
                    let scale_pair = _mm512_or_si512(_mm512_and_si512(sa, low16), _mm512_slli_epi32(sb, 16));
                    for i in 0..K {
                        let [p0, p1, p2, p3] = part[i];
                        let lane = _mm512_add_epi32(_mm512_add_epi32(p0, p1), _mm512_add_epi32(p2, p3));
                        let bs = &x.bsums[((r0 + i) * blocks + b) * 16..];
                        let bsum_pair = (bs[2 * g] as u32 & 0xFFFF) | ((bs[2 * g + 1] as u32) << 16);
                        let offset = _mm512_dpwssd_epi32(
                            _mm512_setzero_si512(),
                            scale_pair,
                            _mm512_set1_epi32(bsum_pair as i32),
                        );
                        let exact = _mm512_sub_epi32(lane, _mm512_slli_epi32(offset, 5));
                        if REPACKED {
                            total[i] = _mm512_add_epi32(total[i], exact);
                        } else {
                            acc[i][g] = _mm512_fmadd_ps(dd[i], _mm512_cvtepi32_ps(exact), acc[i][g]);
                        }
                    }
                }
                if REPACKED {
                    for i in 0..K {
                        let dx = _mm512_set1_ps(x.d[(r0 + i) * blocks + b]);
                        acc[i][0] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(total[i]), d), dx, acc[i][0]);
                    }
                }
            }
            if REPACKED {
                return std::array::from_fn(|i| acc[i][0]);
            }
            // hsum_float_8, for 16 rows at once.
            std::array::from_fn(|i| {
                let a = &acc[i];
                let r: [__m512; 4] = std::array::from_fn(|j| _mm512_add_ps(a[4 + j], a[j]));
                _mm512_add_ps(_mm512_add_ps(r[0], r[2]), _mm512_add_ps(r[1], r[3]))
            })
        }
    }
}

/// Row-major K-quant products for AVX2 (CPUs without AVX-512 VNNI): per weight row the
/// integer sums and float operations of the tiled kernels, so the same numbers bit for bit.
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod avx2 {
    use super::{Q8KRows, QK_K, scale_min_k4};
    use std::arch::x86_64::*;

    fn f16_at(block: &[u8], at: usize) -> f32 {
        half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32()
    }

    #[inline(always)]
    unsafe fn hsum_i32(v: __m256i) -> i32 {
        unsafe {
            let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
            _mm_cvtsi128_si32(s)
        }
    }

    /// The lane sums of four registers.
    #[inline(always)]
    unsafe fn hsum4_i32(a: __m256i, b: __m256i, c: __m256i, d: __m256i) -> [i32; 4] {
        unsafe {
            let s = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            let mut out = [0i32; 4];
            _mm_storeu_si128(out.as_mut_ptr().cast(), s);
            out
        }
    }

    /// `hsum_float_8`: `(a[j] + a[4 + j])`, then `(r0 + r2) + (r1 + r3)`.
    #[inline(always)]
    unsafe fn hsum_float_8(v: __m256) -> f32 {
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }

    /// Q4_K as `avx512::q4k` for one weight row: a full group of 4 activation rows scales
    /// each pair of sub-blocks, other rows once per super-block; the minimums' terms in an
    /// accumulator of their own, subtracted at the end.
    // The row and sub-block indices address several arrays and activation offsets.
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn q4k<const K: usize>(row: &[u8], blocks: usize, x: &Q8KRows, r0: usize) -> [f32; K] {
        let gemm = K == 4;
        // SAFETY: `run_row` bounded the row and the activation rows.
        unsafe {
            let low = _mm256_set1_epi8(0x0F);
            let (mut acc, mut acc_min) = ([0f32; K], [0f32; K]);
            for b in 0..blocks {
                let block = &row[b * 144..(b + 1) * 144];
                let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
                let mut scale_min = [(0u8, 0u8); 8];
                for (s, sm) in scale_min.iter_mut().enumerate() {
                    *sm = scale_min_k4(s, &block[4..16]);
                }
                let mut dx = [0f32; K];
                for (i, v) in dx.iter_mut().enumerate() {
                    *v = x.d[(r0 + i) * blocks + b];
                }
                let mut total = [_mm256_setzero_si256(); K];
                let mut mins = [0i32; K];
                for j in 0..4 {
                    let q = _mm256_loadu_si256(block.as_ptr().add(16 + 32 * j).cast());
                    let (lo, hi) = (_mm256_and_si256(q, low), _mm256_and_si256(_mm256_srli_epi16(q, 4), low));
                    let ((sc_a, m_a), (sc_b, m_b)) = (scale_min[2 * j], scale_min[2 * j + 1]);
                    let (sa, sb) = (_mm256_set1_epi16(i16::from(sc_a)), _mm256_set1_epi16(i16::from(sc_b)));
                    // Loops, not `array::from_fn`: its closures with SIMD values were not inlined.
                    let mut scaled = [_mm256_setzero_si256(); K];
                    let mut min = [0i32; K];
                    for i in 0..K {
                        let at = ((r0 + i) * blocks + b) * QK_K + 64 * j;
                        let xa = _mm256_loadu_si256(x.qs.as_ptr().add(at).cast());
                        let xb = _mm256_loadu_si256(x.qs.as_ptr().add(at + 32).cast());
                        scaled[i] = _mm256_add_epi32(
                            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xa), sa),
                            _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xb), sb),
                        );
                        let bs = &x.bsums[((r0 + i) * blocks + b) * 16..][..16];
                        min[i] = i32::from(m_a) * (bs[4 * j] + bs[4 * j + 1])
                            + i32::from(m_b) * (bs[4 * j + 2] + bs[4 * j + 3]);
                    }
                    if gemm {
                        // One pair of sub-blocks' sums of the 4 rows at once.
                        let s = hsum4_i32(scaled[0], scaled[1 % K], scaled[2 % K], scaled[3 % K]);
                        for i in 0..K {
                            acc[i] = (s[i] as f32).mul_add(d * dx[i], acc[i]);
                            acc_min[i] = (min[i] as f32).mul_add(dmin * dx[i], acc_min[i]);
                        }
                    } else {
                        for i in 0..K {
                            total[i] = _mm256_add_epi32(total[i], scaled[i]);
                            mins[i] += min[i];
                        }
                    }
                }
                if !gemm {
                    for i in 0..K {
                        acc[i] = (hsum_i32(total[i]) as f32).mul_add(d * dx[i], acc[i]);
                        acc_min[i] = (mins[i] as f32).mul_add(dmin * dx[i], acc_min[i]);
                    }
                }
            }
            std::array::from_fn(|i| acc[i] - acc_min[i])
        }
    }

    /// Q6_K as `avx512::q6k` for one weight row: below 8 batch rows ggml's AVX2
    /// `vec_dot_q6_K_q8_K` itself (8 lanes, each scaled into its own accumulator), from 8
    /// rows on one fused multiply-add per super-block (`REPACKED`).
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn q6k<const K: usize, const REPACKED: bool>(
        row: &[u8],
        blocks: usize,
        x: &Q8KRows,
        r0: usize,
    ) -> [f32; K] {
        // SAFETY: `run_row` bounded the row and the activation rows.
        unsafe {
            let (low, high) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(0x30));
            let mut acc = [_mm256_setzero_ps(); K];
            let mut sums = [0f32; K];
            for b in 0..blocks {
                let block = &row[b * 210..(b + 1) * 210];
                let d = f16_at(block, 208);
                let sc = |s: usize| i16::from(block[192 + s] as i8);
                let mut lanes = [_mm256_setzero_si256(); K];
                for h in 0..2 {
                    let at = block.as_ptr();
                    let qa = _mm256_loadu_si256(at.add(64 * h).cast());
                    let qb = _mm256_loadu_si256(at.add(64 * h + 32).cast());
                    let qh = _mm256_loadu_si256(at.add(128 + 32 * h).cast());
                    // Values 128h + 32q + 0..32, each code's high bits moved to bits 4-5.
                    let v = [
                        _mm256_or_si256(_mm256_and_si256(qa, low), _mm256_and_si256(_mm256_slli_epi16(qh, 4), high)),
                        _mm256_or_si256(_mm256_and_si256(qb, low), _mm256_and_si256(_mm256_slli_epi16(qh, 2), high)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(qa, 4), low), _mm256_and_si256(qh, high)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(qb, 4), low),
                            _mm256_and_si256(_mm256_srli_epi16(qh, 2), high),
                        ),
                    ];
                    for q in 0..4 {
                        // Lanes 0-3 (values 0..16 of the 32) take sub-block 8h + 2q, 4-7 the next.
                        let s = 8 * h + 2 * q;
                        let scales = _mm256_set_m128i(_mm_set1_epi16(sc(s + 1)), _mm_set1_epi16(sc(s)));
                        for i in 0..K {
                            let at = ((r0 + i) * blocks + b) * QK_K + 128 * h + 32 * q;
                            let xq = _mm256_loadu_si256(x.qs.as_ptr().add(at).cast());
                            lanes[i] =
                                _mm256_add_epi32(lanes[i], _mm256_madd_epi16(_mm256_maddubs_epi16(v[q], xq), scales));
                        }
                    }
                }
                let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(block.as_ptr().add(192).cast()));
                for i in 0..K {
                    // The codes' offset of 32, by sub-block pairs as ggml's madd of bsums and scales.
                    let bs = x.bsums16.as_ptr().add(((r0 + i) * blocks + b) * 16);
                    let offset = _mm256_madd_epi16(_mm256_loadu_si256(bs.cast()), scales16);
                    let exact = _mm256_sub_epi32(lanes[i], _mm256_slli_epi32(offset, 5));
                    let dx = x.d[(r0 + i) * blocks + b];
                    if REPACKED {
                        sums[i] = (hsum_i32(exact) as f32 * d).mul_add(dx, sums[i]);
                    } else {
                        acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(exact), acc[i]);
                    }
                }
            }
            if REPACKED { sums } else { std::array::from_fn(|i| hsum_float_8(acc[i])) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::bytes;

    /// Blocks with random codes and modest f16 scales.
    fn blocks(format: KFormat, rows: usize, cols: usize) -> Vec<u8> {
        let bb = format.block_bytes();
        let mut data = bytes(rows * cols / QK_K * bb, 11);
        for block in data.chunks_exact_mut(bb) {
            let at = if format == KFormat::Q4K { 0 } else { 208 };
            block[at..at + 2].copy_from_slice(&half::f16::from_f32(0.002).to_le_bytes());
            if format == KFormat::Q4K {
                block[2..4].copy_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
            }
        }
        data
    }

    /// One block's 256 weights, from GGUF's definitions.
    fn dequantize(format: KFormat, block: &[u8]) -> Vec<f32> {
        let f16 = |at: usize| half::f16::from_le_bytes([block[at], block[at + 1]]).to_f32();
        let mut w = vec![0f32; QK_K];
        match format {
            KFormat::Q4K => {
                let (d, dmin) = (f16(0), f16(2));
                for j in 0..4 {
                    let (sa, ma) = scale_min_k4(2 * j, &block[4..16]);
                    let (sb, mb) = scale_min_k4(2 * j + 1, &block[4..16]);
                    for l in 0..32 {
                        let q = block[16 + 32 * j + l];
                        w[64 * j + l] = d * f32::from(sa) * f32::from(q & 0xF) - dmin * f32::from(ma);
                        w[64 * j + 32 + l] = d * f32::from(sb) * f32::from(q >> 4) - dmin * f32::from(mb);
                    }
                }
            }
            KFormat::Q6K => {
                let d = f16(208);
                for h in 0..2 {
                    let (ql, qh) = (&block[h * 64..], &block[128 + h * 32..]);
                    for l in 0..32 {
                        let q = [
                            (ql[l] & 0xF) | ((qh[l] & 3) << 4),
                            (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4),
                            (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                            (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
                        ];
                        for (i, &v) in q.iter().enumerate() {
                            let at = 128 * h + 32 * i + l;
                            w[at] = d * f32::from(block[192 + at / 16] as i8) * (i32::from(v) - 32) as f32;
                        }
                    }
                }
            }
        }
        w
    }

    /// Every layout this machine runs: tiles where the CPU has AVX-512 VNNI, row-major where
    /// the build has AVX2.
    fn layouts() -> Vec<bool> {
        [true, false].into_iter().filter(|&tiled| if tiled { crate::tiles::available() } else { ROW_MAJOR }).collect()
    }

    /// A ragged batch's segments get, bit for bit, what each segment gets on its own (the
    /// row-count-dependent orders included: Q4_K's groups of 4, Q6_K from 8 rows on).
    #[test]
    fn segments_compute_as_they_would_alone() {
        if !available() {
            return;
        }
        for (format, tiled) in
            [KFormat::Q4K, KFormat::Q6K].into_iter().flat_map(|f| layouts().into_iter().map(move |t| (f, t)))
        {
            let (rows, cols) = (32, 512);
            let m = KMatrix::with_layout(format, rows, cols, &blocks(format, rows, cols), tiled)
                .expect("shape")
                .expect("layout");
            let segments = [1, 9, 1, 3, 5, 1, 8];
            let n: usize = segments.iter().sum();
            let x: Vec<f32> = bytes(n * cols, 7).iter().map(|&b| (f32::from(b) - 127.5) / 40.0).collect();
            let mut batched = vec![0f32; n * rows];
            m.matmul_segments(&Q8KRows::quantize(&x, cols).expect("quantize"), &segments, &mut batched)
                .expect("batched product");
            let mut start = 0;
            for len in segments {
                let alone_x = Q8KRows::quantize(&x[start * cols..(start + len) * cols], cols).expect("quantize");
                let mut alone = vec![0f32; len * rows];
                m.matmul(&alone_x, &mut alone).expect("product");
                let got = &batched[start * rows..(start + len) * rows];
                assert!(
                    got.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{format:?} tiled {tiled}: segment of {len} at row {start}"
                );
                start += len;
            }
        }
    }

    #[test]
    fn products_match_the_dequantized_weights() {
        if !available() {
            eprintln!("no K-quant kernels of ours on this CPU: K-quants stay on Candle's kernels");
            return;
        }
        for (format, tiled) in
            [KFormat::Q4K, KFormat::Q6K].into_iter().flat_map(|f| layouts().into_iter().map(move |t| (f, t)))
        {
            let (rows, cols) = (32, 512);
            let data = blocks(format, rows, cols);
            let m = KMatrix::with_layout(format, rows, cols, &data, tiled).expect("shape").expect("layout");
            let w: Vec<f32> = data.chunks_exact(format.block_bytes()).flat_map(|b| dequantize(format, b)).collect();
            for n in [1, 3, 6] {
                let x: Vec<f32> = bytes(n * cols, 5).iter().map(|&b| (f32::from(b) - 127.5) / 50.0).collect();
                let q = Q8KRows::quantize(&x, cols).expect("quantize");
                let mut out = vec![0f32; n * rows];
                m.matmul(&q, &mut out).expect("matmul");
                for r in 0..n {
                    let xq: Vec<f32> =
                        (0..cols).map(|c| q.d[r * cols / QK_K + c / QK_K] * f32::from(q.qs[r * cols + c])).collect();
                    for o in 0..rows {
                        let want: f64 = (0..cols).map(|c| f64::from(w[o * cols + c]) * f64::from(xq[c])).sum();
                        let scale: f64 = (0..cols).map(|c| f64::from((w[o * cols + c] * xq[c]).abs())).sum();
                        let got = f64::from(out[r * rows + o]);
                        assert!(
                            (got - want).abs() <= 1e-5 * scale.max(1e-3),
                            "{format:?} (tiled: {tiled}) n {n} row {r} out {o}: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// The AVX2 kernels compute each row's integers and float operations as the tiled ones
    /// do, for every batch size (the orders change at 4 rows for Q4_K and 8 for Q6_K).
    #[test]
    fn row_major_products_equal_the_tiled_ones_bit_for_bit() {
        if layouts().len() < 2 {
            eprintln!("this machine runs one K-quant layout only: nothing to compare");
            return;
        }
        for format in [KFormat::Q4K, KFormat::Q6K] {
            let (rows, cols) = (48, 768);
            let data = blocks(format, rows, cols);
            let tiled = KMatrix::with_layout(format, rows, cols, &data, true).expect("shape").expect("tiled");
            let row_major = KMatrix::with_layout(format, rows, cols, &data, false).expect("shape").expect("row-major");
            for n in [1, 2, 3, 4, 5, 7, 8, 9, 12, 13] {
                let x: Vec<f32> = bytes(n * cols, 9).iter().map(|&b| (f32::from(b) - 127.5) / 40.0).collect();
                let q = Q8KRows::quantize(&x, cols).expect("quantize");
                let (mut a, mut b) = (vec![0f32; n * rows], vec![0f32; n * rows]);
                tiled.matmul(&q, &mut a).expect("tiled");
                row_major.matmul(&q, &mut b).expect("row-major");
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&a), bits(&b), "{format:?} with {n} activation rows");
            }
        }
    }

    #[test]
    fn activations_quantize_like_ggml() {
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(3.5), 4);
        assert_eq!(nearest_int(-2.5), -2);
        let x: Vec<f32> = (0..256).map(|i| i as f32 - 100.0).collect();
        let q = Q8KRows::quantize(&x, 256).expect("quantize");
        // The largest magnitude (155) maps to -127: ggml scales by -127 / max.
        assert_eq!(q.qs[255], -127);
        assert!((q.d[0] * -127.0 - 155.0).abs() < 1e-4);
        assert_eq!(q.bsums.len(), 16);
    }
}
