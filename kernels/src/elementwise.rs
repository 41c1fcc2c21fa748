//! Per-element operations with llama.cpp's exact arithmetic (ggml's CPU backend as built
//! for x86 with AVX-512): RMS norm, and the gated activations of the MLPs. Every
//! activation is rounded to 8 bits before the next matrix product, where a last-bit
//! difference can move a value by a whole step, so "close" is not enough for
//! token-for-token agreement: these reproduce ggml's operations and their order.

/// `out = x / rms(x) * weight`: the squares summed in f64, `1 / sqrt(mean + eps)` in f32,
/// then two roundings (`x * scale`, `* weight`), as ggml's `rms_norm` then `mul`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let sum: f64 = x.iter().map(|&v| f64::from(v * v)).sum();
    let mean = (sum / x.len() as f64) as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = (v * scale) * w;
    }
}

/// ggml's vector `expf` (`ggml_v_expf`, AVX-512 form): a degree-5 polynomial on the
/// reduced argument, scaled by `2^n`. Within 1.5 ulp of `exp`; what matters here is that
/// it is the same function llama.cpp evaluates in its softmax and SiLU.
#[inline]
pub fn ggml_expf(x: f32) -> f32 {
    let r = f32::from_bits(0x4b40_0000); // 0x1.8p23
    let z = x.mul_add(f32::from_bits(0x3fb8_aa3b), r); // 0x1.715476p+0 = log2(e)
    let n = z - r;
    let b = (-n).mul_add(f32::from_bits(0x35bf_be8e), (-n).mul_add(f32::from_bits(0x3f31_7200), x));
    let u = b * b;
    let c = |bits: u32| f32::from_bits(bits);
    // 0x1.0e4020p-7, 0x1.573e2ep-5, 0x1.555e66p-3, 0x1.fffdb6p-2, 0x1.ffffecp-1
    let j = c(0x3c07_2010)
        .mul_add(b, c(0x3d2b_9f17))
        .mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb)))
        .mul_add(u, c(0x3f7f_fff6).mul_add(b, 1.0));
    if n.abs() > 192.0 {
        return if n <= 0.0 { 0.0 } else { f32::INFINITY };
    }
    scale_by_power_of_two(j, n as i32)
}

/// `j * 2^n` rounded once, as `vscalefps` does.
#[inline]
fn scale_by_power_of_two(j: f32, n: i32) -> f32 {
    if (-125..=127).contains(&n) {
        // j is in [0.7, 1.5): the product stays normal, so the power of two multiplies exactly.
        j * f32::from_bits(((n + 127) as u32) << 23)
    } else {
        // f64 holds the product exactly; converting rounds once (to a subnormal, or to inf).
        (f64::from(j) * 2f64.powi(n)) as f32
    }
}

/// `x / (1 + exp(-x))` with ggml's vector exp, as its SwiGLU evaluates SiLU.
#[inline]
pub fn ggml_silu(x: f32) -> f32 {
    x / (1.0 + ggml_expf(-x))
}

/// `out[i] = silu(gate[i]) * up[i]` (ggml's `swiglu`, split form).
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = ggml_silu(g) * u;
    }
}

/// ggml's GELU table: the tanh approximation evaluated in f32 for every f16 input, stored
/// as f16. llama.cpp looks activations up in it (rounded to f16) instead of evaluating.
fn gelu_table() -> &'static [u16] {
    static TABLE: std::sync::OnceLock<Vec<u16>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        const GELU_COEF_A: f32 = 0.044715;
        let sqrt_2_over_pi = f32::from_bits(0x3f4c_422a);
        (0..=u16::MAX)
            .map(|bits| {
                let x = half::f16::from_bits(bits).to_f32();
                // `1 + a·x·x` as one fused multiply-add: ggml's C is built with contraction on.
                let y = 0.5 * x * (1.0 + (sqrt_2_over_pi * x * (GELU_COEF_A * x).mul_add(x, 1.0)).tanh());
                half::f16::from_f32(y).to_bits()
            })
            .collect()
    })
}

/// `out[i] = gelu(gate[i]) * up[i]` (ggml's `geglu`, split form): GELU from the f16
/// table, exact at and beyond ±10.
pub fn geglu(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let table = gelu_table();
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = if g <= -10.0 {
            0.0
        } else if g >= 10.0 {
            g * u
        } else {
            half::f16::from_bits(table[usize::from(half::f16::from_f32(g).to_bits())]).to_f32() * u
        };
    }
}

/// Rotary position embedding in place: `x` is `[heads][t][d]`, `cos` / `sin` are `[t][d / 2]`.
/// Pairs are `(2i, 2i + 1)` (GGML's normal mode, Llama) or `(i, i + d/2)` (NEOX mode:
/// Qwen, Gemma). ggml's C++ is built with contraction on, which makes each rotated value
/// one fused multiply-add over the other product: `x0·cos − x1·sin` is
/// `fma(x0, cos, −(x1·sin))`.
pub fn rope(x: &mut [f32], d: usize, t: usize, cos: &[f32], sin: &[f32], neox: bool) {
    let half = d / 2;
    for (row_index, row) in x.chunks_exact_mut(d).enumerate() {
        let pos = row_index % t;
        let (c, s) = (&cos[pos * half..][..half], &sin[pos * half..][..half]);
        for i in 0..half {
            let (a, b) = if neox { (i, i + half) } else { (2 * i, 2 * i + 1) };
            let (x0, x1) = (row[a], row[b]);
            row[a] = x0.mul_add(c[i], -(x1 * s[i]));
            row[b] = x0.mul_add(s[i], x1 * c[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ggml_expf_is_within_two_ulp_of_exp() {
        for i in -2000..2000 {
            let x = i as f32 * 0.043;
            let (ours, exact) = (ggml_expf(x), (f64::from(x)).exp());
            let ulp = f64::from(f32::EPSILON) * exact;
            assert!((f64::from(ours) - exact).abs() <= 2.0 * ulp, "{x}: {ours} vs {exact}");
        }
        assert_eq!(ggml_expf(-200.0), 0.0);
        assert_eq!(ggml_expf(200.0), f32::INFINITY);
        assert!(ggml_expf(-100.0) > 0.0 && ggml_expf(-100.0) < 1e-43);
    }

    #[test]
    fn gated_activations_match_their_formulas() {
        let gate: Vec<f32> = (-60..60).map(|i| i as f32 * 0.25).collect();
        let up: Vec<f32> = gate.iter().map(|g| 1.0 - g * 0.1).collect();
        let (mut s, mut g) = (vec![0.0; gate.len()], vec![0.0; gate.len()]);
        swiglu(&gate, &up, &mut s);
        geglu(&gate, &up, &mut g);
        for i in 0..gate.len() {
            let x = f64::from(gate[i]);
            let silu = x / (1.0 + (-x).exp()) * f64::from(up[i]);
            let gelu = 0.5 * x * (1.0 + (0.797_884_560_8 * x * (1.0 + 0.044715 * x * x)).tanh()) * f64::from(up[i]);
            assert!((f64::from(s[i]) - silu).abs() <= 1e-6 * silu.abs().max(1.0), "silu {x}");
            // f16 table: 11 significant bits.
            assert!((f64::from(g[i]) - gelu).abs() <= 1e-3 * gelu.abs().max(1e-2), "gelu {x}: {} vs {gelu}", g[i]);
        }
    }

    #[test]
    fn rms_norm_normalizes() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) * 0.3).collect();
        let w = vec![2.0f32; 64];
        let mut out = vec![0.0; 64];
        rms_norm(&x, &w, 1e-6, &mut out);
        let ms: f32 = out.iter().map(|v| v * v).sum::<f32>() / 64.0;
        assert!((ms - 4.0).abs() < 1e-4, "{ms}");
    }
}
