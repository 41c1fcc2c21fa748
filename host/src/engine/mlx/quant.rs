//! MLX quantized weights, unpacked.
//!
//! Affine: each row of `in` elements is one little-endian bit stream of `bits`-wide
//! codes, lowest bits first (3/5/6-bit codes straddle words); `w = q * scale + bias` per
//! group of `group_size` consecutive inputs. mxfp4: 8 e2m1 codes per word, low nibble
//! first, one E8M0 scale byte (`2^(s-127)`) per group of 32, no bias.

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

    #[test]
    fn mismatched_shapes_are_errors() {
        assert!(dequantize_affine(&[0; 4], &[1.0], &[0.0], 60, 4, 64).is_err());
        assert!(dequantize_affine(&[0; 16], &[1.0], &[0.0], 64, 4, 64).is_err(), "two rows need two scales");
        assert!(dequantize_mxfp4(&[0; 4], &[1, 2], 32, 32).is_err());
    }
}
