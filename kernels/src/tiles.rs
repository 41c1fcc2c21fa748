//! Weights interleaved 16 rows at a time, for AVX-512 VNNI: one `vpdpbusd` on a 512-bit
//! register multiplies 4 values of 16 rows at once, where the row-major kernels spend a
//! register's worth of work on one row. The arithmetic stays llama.cpp's exactly: per row
//! and block, lane `g` holds the integer sum of values `4g..4g+4`, scaled into its own f32
//! accumulator with one fused multiply-add per block, and the 8 lanes are reduced as
//! `hsum_float_8` (plus, for Q4_1, the offsets `Σ m·s` summed on the side): the numbers of
//! ggml's `vec_dot_*` (and tinyBLAS) for these formats.
//!
//! A tile-block (16 rows, 32 values) takes the bytes of the 16 blocks it replaces: the 16
//! f16 scales (Q4_1: then the 16 f16 minimums); then the codes, 64 bytes per register:
//! - Q5_0: 4 x 64 bytes of nibbles, part `p` holding bytes `4p..4p+4` of every row's block
//!   (low nibbles: values `4p..`, high nibbles: values `16+4p..`), then the high bits as 8
//!   64-bit masks, mask `g` bit `4r + i` the high bit of value `4g + i` of row `r`: one
//!   masked byte add per register puts them in place;
//! - Q4_1: the 4 nibble parts as for Q5_0 (Q4_0 likewise, after its scales);
//! - Q8_0: 8 x 64 bytes, group `g` holding values `4g..4g+4` of every row, stored `+128` so
//!   that they are unsigned.

use crate::{Act, Format, QK};

/// Rows interleaved per tile.
pub const TILE: usize = 16;

fn tile_block(format: Format) -> usize {
    TILE * format.block_bytes()
}

/// Whether this CPU runs the tiled kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vnni")
                && std::env::var("RAPID_HOST_NO_TILES").map_or(true, |v| v.is_empty() || v == "0")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How a block's bytes spread over its tile-block: runs `(from, len, to, stride)` where
/// row `r`'s bytes `from..from + len` go to `to + stride * r`.
fn runs(format: Format) -> Vec<(usize, usize, usize, usize)> {
    match format {
        // d | qs[16]
        Format::Q4_0 => {
            let mut runs = vec![(0, 2, 0, 2)];
            runs.extend((0..4).map(|p| (2 + 4 * p, 4, 32 + 64 * p, 4)));
            runs
        }
        // d | qh[4] | qs[16]
        Format::Q5_0 => {
            let mut runs = vec![(0, 2, 0, 2), (2, 4, 288, 4)];
            runs.extend((0..4).map(|p| (6 + 4 * p, 4, 32 + 64 * p, 4)));
            runs
        }
        // d | m | qs[16]
        Format::Q4_1 => {
            let mut runs = vec![(0, 2, 0, 2), (2, 2, 32, 2)];
            runs.extend((0..4).map(|p| (4 + 4 * p, 4, 64 + 64 * p, 4)));
            runs
        }
        // d | qs[32]
        Format::Q8_0 => {
            let mut runs = vec![(0, 2, 0, 2)];
            runs.extend((0..8).map(|g| (2 + 4 * g, 4, 32 + 64 * g, 4)));
            runs
        }
    }
}

/// Q8_0 codes are stored `+128` (unsigned): flips the top bit of a run past the scale.
fn recode(format: Format, from: usize, bytes: &mut [u8]) {
    if format == Format::Q8_0 && from >= 2 {
        bytes.iter_mut().for_each(|b| *b ^= 0x80);
    }
}

/// Row-major blocks (`rows` a multiple of 16) put in tile order, in place: tile `t` takes
/// the same bytes as rows `16t..16t+16` did, so one tile's worth of scratch suffices (a
/// second copy of a 178 MB embedding table would show in the peak memory).
pub(crate) fn interleave(format: Format, data: &mut [u8], rows: usize, cols: usize) {
    let (blocks, bytes, tb) = (cols / QK, format.block_bytes(), tile_block(format));
    let runs = runs(format);
    let mut rows_of_tile = vec![0u8; tb * blocks];
    for t in 0..rows / TILE {
        let region = &mut data[t * tb * blocks..(t + 1) * tb * blocks];
        rows_of_tile.copy_from_slice(region);
        for b in 0..blocks {
            let tile = &mut region[b * tb..][..tb];
            for r in 0..TILE {
                let src = &rows_of_tile[(r * blocks + b) * bytes..][..bytes];
                for &(from, len, to, stride) in &runs {
                    let at = to + stride * r;
                    if len == 4 {
                        // Whole words: this loop moves every weight of the model once at load.
                        let mut word = u32::from_le_bytes([src[from], src[from + 1], src[from + 2], src[from + 3]]);
                        if format == Format::Q8_0 {
                            word ^= 0x8080_8080;
                        }
                        tile[at..at + 4].copy_from_slice(&word.to_le_bytes());
                    } else {
                        let dst = &mut tile[at..at + len];
                        dst.copy_from_slice(&src[from..from + len]);
                        recode(format, from, dst);
                    }
                }
            }
            if format == Format::Q5_0 {
                transpose_high_bits(&mut tile[288..352], true);
            }
        }
    }
}

/// Q5_0's high bits between the 16 rows' 32-bit words (`to_masks`) and the 8 masks of
/// 64 bits, mask `g` bit `4r + i` = word `r` bit `4g + i` (and back).
fn transpose_high_bits(region: &mut [u8], to_masks: bool) {
    let mut from = [0u32; 16];
    let mut masks = [0u64; 8];
    if to_masks {
        for (r, w) in from.iter_mut().enumerate() {
            *w = u32::from_le_bytes([region[4 * r], region[4 * r + 1], region[4 * r + 2], region[4 * r + 3]]);
        }
        for (g, m) in masks.iter_mut().enumerate() {
            for (r, w) in from.iter().enumerate() {
                *m |= u64::from((w >> (4 * g)) & 0xF) << (4 * r);
            }
        }
        for (g, m) in masks.iter().enumerate() {
            region[8 * g..8 * g + 8].copy_from_slice(&m.to_le_bytes());
        }
    } else {
        for (g, m) in masks.iter_mut().enumerate() {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&region[8 * g..8 * g + 8]);
            *m = u64::from_le_bytes(bytes);
        }
        for (r, w) in from.iter_mut().enumerate() {
            for (g, m) in masks.iter().enumerate() {
                *w |= (((m >> (4 * r)) & 0xF) as u32) << (4 * g);
            }
        }
        for (r, w) in from.iter().enumerate() {
            region[4 * r..4 * r + 4].copy_from_slice(&w.to_le_bytes());
        }
    }
}

/// Row `o`'s blocks back in GGUF order, from tile order.
pub(crate) fn row(format: Format, tiles: &[u8], o: usize, cols: usize) -> Vec<u8> {
    let (blocks, bytes, tb) = (cols / QK, format.block_bytes(), tile_block(format));
    let (t, r) = (o / TILE, o % TILE);
    let mut out = vec![0u8; blocks * bytes];
    let runs = runs(format);
    for b in 0..blocks {
        let mut tile = std::borrow::Cow::Borrowed(&tiles[(t * blocks + b) * tb..][..tb]);
        if format == Format::Q5_0 {
            transpose_high_bits(&mut tile.to_mut()[288..352], false);
        }
        let dst = &mut out[b * bytes..][..bytes];
        for &(from, len, to, stride) in &runs {
            dst[from..from + len].copy_from_slice(&tile[to + stride * r..][..len]);
            recode(format, from, &mut dst[from..from + len]);
        }
    }
    out
}

/// `out[k * 16 + i] = Σ w[t*16 + i] · x[k]` for tile `t` (`out`: `x.len()` x 16). Only
/// where [`available`] says so.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dot_tile(
    format: Format,
    tiles: &[u8],
    t: usize,
    blocks: usize,
    x: &[Act<'_>],
    sums: &[&[i32]],
    out: &mut [f32],
) {
    let tb = tile_block(format);
    assert!(sums.len() == x.len() && out.len() == TILE * x.len() && available());
    assert!(tiles.len() >= (t + 1) * blocks * tb);
    for (a, s) in x.iter().zip(sums) {
        assert!(a.qs.len() >= blocks * QK && a.d.len() >= blocks && a.s.len() >= blocks && s.len() >= blocks * 8);
    }
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `available` checked the CPU; the asserts above bound every load.
    unsafe {
        let tiles = &tiles[t * blocks * tb..][..blocks * tb];
        match format {
            Format::Q5_0 => avx512::dot_tile::<0>(tiles, blocks, x, sums, out),
            Format::Q4_1 => avx512::dot_tile::<1>(tiles, blocks, x, sums, out),
            Format::Q8_0 => avx512::dot_tile::<2>(tiles, blocks, x, sums, out),
            Format::Q4_0 => avx512::dot_tile::<3>(tiles, blocks, x, sums, out),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Act, QK, TILE};
    use std::arch::x86_64::*;

    /// `F`: 0 = Q5_0, 1 = Q4_1, 2 = Q8_0, 3 = Q4_0.
    const fn tile_block<const F: u8>() -> usize {
        TILE * [22, 20, 34, 18][F as usize]
    }

    /// Unsigned codes of one tile-block as 8 registers (values `4g..4g+4` of 16 rows), the
    /// 16 f32 scales, and (Q4_1) the 16 f32 minimums.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unpack<const F: u8>(tile: *const u8) -> ([__m512i; 8], __m512, __m512) {
        // SAFETY: the caller points at one tile-block.
        unsafe {
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(tile.cast()));
            if F == 2 {
                let w = std::array::from_fn(|g| _mm512_loadu_si512(tile.add(32 + 64 * g).cast()));
                return (w, d, _mm512_setzero_ps());
            }
            let low = _mm512_set1_epi8(0x0F);
            // Q4_1's minimums come before the codes.
            let codes = if F == 1 { 64 } else { 32 };
            let mut w = [_mm512_setzero_si512(); 8];
            for p in 0..4 {
                let nib = _mm512_loadu_si512(tile.add(codes + 64 * p).cast());
                w[p] = _mm512_and_si512(nib, low);
                w[p + 4] = _mm512_and_si512(_mm512_srli_epi16(nib, 4), low);
            }
            if F == 1 {
                return (w, d, _mm512_cvtph_ps(_mm256_loadu_si256(tile.add(32).cast())));
            }
            if F == 3 {
                return (w, d, _mm512_setzero_ps());
            }
            let sixteen = _mm512_set1_epi8(16);
            for (g, wg) in w.iter_mut().enumerate() {
                // Bit 4 of each byte whose value has its high bit set.
                let mask: __mmask64 = std::ptr::read_unaligned(tile.add(288 + 8 * g).cast::<u64>());
                *wg = _mm512_mask_add_epi8(*wg, mask, *wg, sixteen);
            }
            (w, d, _mm512_setzero_ps())
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_tile<const F: u8>(
        tiles: &[u8],
        blocks: usize,
        x: &[Act<'_>],
        sums: &[&[i32]],
        out: &mut [f32],
    ) {
        let tb = tile_block::<F>();
        // The codes' offset: Q5_0 stores q in 0..32 for q − 16, Q8_0 q + 128 for q, Q4_0
        // q in 0..16 for q - 8.
        let offset: i32 = [-16, 0, -128, -8][F as usize];
        let n = x.len();
        // SAFETY: the caller bounded `tiles`, `x` and `sums` for `blocks` blocks; the
        // unpacked copy holds `blocks` entries.
        unsafe {
            // With more than one group of four rows, unpack the tile once and keep it.
            let keep = n > 4;
            let mut unpacked: Vec<([__m512i; 8], __m512, __m512)> = Vec::new();
            if keep {
                unpacked.reserve_exact(blocks);
                for b in 0..blocks {
                    unpacked.push(unpack::<F>(tiles.as_ptr().add(b * tb)));
                }
            }
            for r0 in (0..n).step_by(4) {
                let group = Group { tiles, blocks, x: &x[r0..], sums: &sums[r0..], unpacked: &unpacked, offset };
                let out = &mut out[r0 * TILE..];
                // The row count as a constant keeps the accumulators in registers (a
                // runtime count left a 2 KB array on the stack, zeroed per tile).
                match n - r0 {
                    1 => group.run::<F, 1>(out),
                    2 => group.run::<F, 2>(out),
                    3 => group.run::<F, 3>(out),
                    _ => group.run::<F, 4>(out),
                }
            }
        }
    }

    /// Up to four activation rows against one tile's blocks.
    struct Group<'a, 'b> {
        tiles: &'a [u8],
        blocks: usize,
        x: &'a [Act<'b>],
        sums: &'a [&'a [i32]],
        unpacked: &'a [([__m512i; 8], __m512, __m512)],
        offset: i32,
    }

    impl Group<'_, '_> {
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        unsafe fn run<const F: u8, const K: usize>(&self, out: &mut [f32]) {
            let tb = tile_block::<F>();
            // SAFETY: `dot_tile`'s caller bounded `tiles`, `x` and `sums` for `blocks`
            // blocks and `K` rows; `out` holds `K` rows of 16.
            unsafe {
                let mut acc = [[_mm512_setzero_ps(); 8]; K];
                let mut offsets = [_mm512_setzero_ps(); K];
                for b in 0..self.blocks {
                    let (w, d, m) = match self.unpacked.get(b) {
                        Some(&kept) => kept,
                        None => unpack::<F>(self.tiles.as_ptr().add(b * tb)),
                    };
                    for j in 0..K {
                        let a = &self.x[j];
                        let dd = _mm512_mul_ps(d, _mm512_set1_ps(a.d[b]));
                        if F == 1 {
                            // m·s added block by block, a product then a sum (no fusing).
                            offsets[j] = _mm512_add_ps(offsets[j], _mm512_mul_ps(m, _mm512_set1_ps(a.s[b])));
                        }
                        let qs = a.qs.as_ptr().add(b * QK);
                        let s = self.sums[j].as_ptr().add(b * 8);
                        let mut block_sum = _mm512_setzero_si512();
                        for g in 0..8 {
                            // Σ q·x + offset·Σx: the signed codes' products, summed exactly.
                            let init = _mm512_set1_epi32(self.offset * *s.add(g));
                            let xg = _mm512_set1_epi32(std::ptr::read_unaligned(qs.add(4 * g).cast::<i32>()));
                            let lanes = _mm512_dpbusd_epi32(init, w[g], xg);
                            if F == 3 {
                                block_sum = _mm512_add_epi32(block_sum, lanes);
                            } else {
                                acc[j][g] = _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(lanes), acc[j][g]);
                            }
                        }
                        if F == 3 {
                            // Q4_0 as llama.cpp's repacked kernels: one fused multiply-add per
                            // block of its whole integer sum.
                            acc[j][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(block_sum), dd, acc[j][0]);
                        }
                    }
                }
                for (j, acc) in acc.iter().enumerate() {
                    if F == 3 {
                        _mm512_storeu_ps(out[j * TILE..][..TILE].as_mut_ptr(), acc[0]);
                        continue;
                    }
                    // hsum_float_8, for 16 rows at once.
                    let r: [__m512; 4] = std::array::from_fn(|i| _mm512_add_ps(acc[4 + i], acc[i]));
                    let mut total = _mm512_add_ps(_mm512_add_ps(r[0], r[2]), _mm512_add_ps(r[1], r[3]));
                    if F == 1 {
                        total = _mm512_add_ps(total, offsets[j]);
                    }
                    _mm512_storeu_ps(out[j * TILE..][..TILE].as_mut_ptr(), total);
                }
            }
        }
    }
}
