//! Causal attention of one sequence's new queries over its cached keys and values.
//!
//! Each (query row, head) pair is computed on its own, always in the same order, so a
//! prompt fed in one batch gives the same numbers as fed token by token (a batched matrix
//! product does not promise that), and a decode step costs one pass over the cache
//! instead of the ~10 tensor operations (grouped-query head expansion, two products,
//! scaling, masking, softmax, transposes) of the generic formulation.
//!
//! The cache holds `f32` or `f16` values ([`CacheValue`]). With `f16` the arithmetic is
//! llama.cpp's, bit for bit (its default cache type, without flash attention; see [`head`]),
//! as scripts/llamacpp_intermediates.py checks against its graph's `kq`, `kq_soft_max` and
//! `kqv` tensors.

use crate::KernelError;
use crate::elementwise::ggml_expf;
use half::f16;

/// A cached key / value element: how it widens to f32, and how an f32 operand is rounded
/// to its precision before a product with it.
pub trait CacheValue: Copy + Send + Sync + 'static {
    fn round(x: f32) -> f32;
    /// `row` as f32 into `dst` (same length; F16C, eight at a time, where available).
    fn widen_into(row: &[Self], dst: &mut [f32]);
}

impl CacheValue for f32 {
    fn round(x: f32) -> f32 {
        x
    }
    fn widen_into(row: &[Self], dst: &mut [f32]) {
        dst.copy_from_slice(row);
    }
}

impl CacheValue for f16 {
    fn round(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    fn widen_into(row: &[Self], dst: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        row.convert_to_f32_slice(dst);
    }
}

/// Where the queries sit in the sequence and what they may see.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Positions between one head's rows in the key / value buffers (the cache's room).
    pub kv_stride: usize,
    /// Positions cached before the first query; query `i` sits at `past + i`.
    pub past: usize,
    /// With a window only the last `window` positions (the query's own included) are visible.
    pub window: Option<usize>,
    pub scale: f32,
}

/// Below this many multiply-adds the work stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 16;

/// `q`: `[heads, t, head_dim]`; `k`, `v`: `[kv_heads, kv_stride, head_dim]` holding at least
/// `past + t` positions; `out`: `[t, heads * head_dim]` (the layout the output projection
/// reads, so no transpose follows).
pub fn attend<T: CacheValue>(
    q: &[f32],
    k: &[T],
    v: &[T],
    shape: &AttentionShape,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let AttentionShape { heads, kv_heads, head_dim: d, kv_stride, past, .. } = *shape;
    if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || d == 0 {
        return Err(KernelError::Shape(format!("{heads} heads over {kv_heads} key/value heads of {d}")));
    }
    let t = q.len() / (heads * d);
    let kv_len = kv_heads * kv_stride * d;
    if q.len() != heads * t * d || out.len() != q.len() || past + t > kv_stride || k.len() < kv_len || v.len() < kv_len
    {
        return Err(KernelError::Shape(format!(
            "attention over q {} / k {} / v {} / out {} values for {t} queries after {past} positions (room {kv_stride})",
            q.len(),
            k.len(),
            v.len(),
            out.len()
        )));
    }
    // The visible cache as f32, widened once per key/value head rather than once per
    // (query, head) pair that reads it, into buffers kept across calls (fresh ones of this
    // size would be page-faulted in on every decode step).
    let len = past + t;
    thread_local! {
        static WIDE: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const {
            std::cell::RefCell::new((Vec::new(), Vec::new()))
        };
    }
    WIDE.with_borrow_mut(|(wk, wv)| {
        let widen = |cache: &[T], all: &mut Vec<f32>| {
            // Only grows: the values past `kv_heads * len * d` are never read.
            if all.len() < kv_heads * len * d {
                all.resize(kv_heads * len * d, 0.0);
            }
            for kvh in 0..kv_heads {
                T::widen_into(&cache[kvh * kv_stride * d..][..len * d], &mut all[kvh * len * d..][..len * d]);
            }
        };
        widen(k, wk);
        widen(v, wv);
        attend_wide::<T>(q, wk, wv, shape, t, out);
    });
    Ok(())
}

/// [`attend`] over the widened cache: `k`, `v` are `[kv_heads, past + t, head_dim]` f32.
fn attend_wide<T: CacheValue>(q: &[f32], k: &[f32], v: &[f32], shape: &AttentionShape, t: usize, out: &mut [f32]) {
    let AttentionShape { heads, kv_heads, head_dim: d, past, .. } = *shape;
    let group = heads / kv_heads;
    let len = past + t;
    // Output chunks of `head_dim` are the (query row, head) pairs in order.
    let pair = |index: usize, out_head: &mut [f32], scratch: &mut Scratch| {
        let (i, h) = (index / heads, index % heads);
        let pos = past + i;
        let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let kv = (h / group) * len * d;
        let query = &q[(h * t + i) * d..][..d];
        let (keys, values) = (&k[kv..][..(pos + 1) * d], &v[kv..][..(pos + 1) * d]);
        head::<T>(query, keys, values, first, shape.scale, t == 1, out_head, scratch);
    };
    let work = t * heads * (past + t) * d;
    if work < PARALLEL_MIN_WORK || crate::threads::available() == 1 {
        let mut scratch = Scratch::default();
        out.chunks_exact_mut(d).enumerate().for_each(|(index, out_head)| pair(index, out_head, &mut scratch));
    } else {
        // A few (query, head) pairs per task, each task with its own scratch.
        let per_task = (PARALLEL_MIN_WORK / ((past + t) * d)).clamp(1, 64);
        crate::threads::for_each_chunk(out, per_task * d, |task, heads_out| {
            let mut scratch = Scratch::default();
            for (k, out_head) in heads_out.chunks_exact_mut(d).enumerate() {
                pair(task * per_task + k, out_head, &mut scratch);
            }
        });
    }
}

#[derive(Default)]
struct Scratch {
    query: Vec<f32>,
    weights: Vec<f32>,
    /// `[LANES][head_dim]`: lane `j % LANES` of every output dimension.
    lanes: Vec<f32>,
    folded: Vec<f32>,
    red: Vec<f32>,
}

/// One head of one query: softmax(q·K · scale) V over positions `first..keys.len() / d`.
///
/// In llama.cpp's order of operations (its CPU backend on x86 with AVX-512, where both
/// products go through llamafile's tinyBLAS with f16 operands and the softmax through
/// ggml's vector exp), so that with an f16 cache the numbers are llama.cpp's exactly:
/// - `q·k`: the query rounded to the cache's precision; 16 lanes, lane `c % 16`
///   accumulating dimensions `c` in order, then the lanes reduced as `_mm512_reduce_add_ps`
///   (tinyBLAS); for a single query (a decode step) llama.cpp runs ggml's own
///   `vec_dot_f16` for both products instead ([`dot_step64`]: 64-value steps into 4 x 16
///   lanes);
/// - softmax: `score * scale`, `exp(score - max)` by [`ggml_expf`], summed in f64 one
///   aligned 16-position chunk at a time (each chunk reduced like the lanes), then
///   multiplied by `(1 / sum) as f32`;
/// - `Σ w v`: weights rounded to the cache's precision, lane `j % 16` accumulating
///   positions `j` in order, reduced the same way (`j % 64` and [`dot_step64`]'s folding
///   for a single query).
#[allow(clippy::too_many_arguments)]
fn head<T: CacheValue>(
    query: &[f32],
    keys: &[f32],
    values: &[f32],
    first: usize,
    scale: f32,
    single_query: bool,
    out: &mut [f32],
    s: &mut Scratch,
) {
    let d = query.len();
    let visible = keys.len() / d;
    s.query.clear();
    s.query.extend(query.iter().map(|&x| T::round(x)));
    s.weights.clear();
    let mut max = f32::NEG_INFINITY;
    for key in keys[first * d..].chunks_exact(d) {
        let score = if single_query { dot_step64(&s.query, key) } else { dot(&s.query, key) } * scale;
        max = max.max(score);
        s.weights.push(score);
    }
    for w in s.weights.iter_mut() {
        *w = ggml_expf(*w - max);
    }
    // Chunks of 16 positions aligned at position 0; masked positions are exact zeros.
    let mut sum = 0.0f64;
    let mut chunk = [0.0f32; LANES];
    for start in (first - first % LANES..visible).step_by(LANES) {
        for (l, c) in chunk.iter_mut().enumerate() {
            let j = start + l;
            *c = if j >= first && j < visible { s.weights[j - first] } else { 0.0 };
        }
        sum += f64::from(reduce(&chunk));
    }
    let inv = (1.0 / sum) as f32;
    s.weights.iter_mut().for_each(|w| *w = T::round(*w * inv));
    // Lane of position j: j % 16 (tinyBLAS), or j % 64 for `vec_dot_f16`'s 4 x 16.
    let lanes = if single_query { 4 * LANES } else { LANES };
    s.lanes.clear();
    s.lanes.resize(lanes * d, 0.0);
    for j in first..visible {
        let w = s.weights[j - first];
        let value = &values[j * d..][..d];
        let acc = &mut s.lanes[(j % lanes) * d..][..d];
        for (a, x) in acc.iter_mut().zip(value) {
            *a = w.mul_add(*x, *a);
        }
    }
    if single_query {
        // Fold the 4 x 16 accumulators `(0 + 2) + (1 + 3)` into 16 lanes, then reduce.
        let lane = |k: usize| &s.lanes[k * d..][..d];
        s.folded.clear();
        for l in 0..LANES {
            let (a, b, c, e) = (lane(l), lane(2 * LANES + l), lane(LANES + l), lane(3 * LANES + l));
            s.folded.extend((0..d).map(|i| (a[i] + b[i]) + (c[i] + e[i])));
        }
        reduce_columns(&s.folded, &mut s.red, out);
    } else {
        reduce_columns(&s.lanes, &mut s.red, out);
    }
}

/// Lanes of the products: `_mm512` registers of f32.
const LANES: usize = 16;

/// `Σ a·b` over 16 lanes (lane `c % 16` takes dimension `c`, in order), then [`reduce`].
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut xs = a.chunks_exact(LANES);
    let mut ys = b.chunks_exact(LANES);
    for (x, y) in (&mut xs).zip(&mut ys) {
        for l in 0..LANES {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    for (l, (x, y)) in xs.remainder().iter().zip(ys.remainder()).enumerate() {
        lanes[l] = x.mul_add(*y, lanes[l]);
    }
    reduce(&lanes)
}

/// ggml's `vec_dot_f16` with AVX-512: steps of 64 into 4 accumulators of 16 lanes, the
/// accumulators folded `(0 + 2) + (1 + 3)`, reduced as [`reduce`]; a remainder of fewer
/// than 64 added in f64.
fn dot_step64(a: &[f32], b: &[f32]) -> f32 {
    // acc[16 j + l]: accumulator j, lane l.
    let mut acc = [0.0f32; 4 * LANES];
    let full = a.len() - a.len() % 64;
    for (x, y) in a[..full].chunks_exact(64).zip(b[..full].chunks_exact(64)) {
        for i in 0..4 * LANES {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    let folded: [f32; LANES] =
        std::array::from_fn(|l| (acc[l] + acc[2 * LANES + l]) + (acc[LANES + l] + acc[3 * LANES + l]));
    let mut total = f64::from(reduce(&folded));
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        total += f64::from(x * y);
    }
    total as f32
}

/// 16 lanes to one sum in `_mm512_reduce_add_ps`'s order (GCC): the upper 8 onto the
/// lower 8, the upper 4 of those onto the lower 4, then `(0 + 2) + (1 + 3)`.
fn reduce(x: &[f32; LANES]) -> f32 {
    let t8: [f32; 8] = std::array::from_fn(|i| x[8 + i] + x[i]);
    let t4: [f32; 4] = std::array::from_fn(|i| t8[4 + i] + t8[i]);
    (t4[0] + t4[2]) + (t4[1] + t4[3])
}

/// [`reduce`] for every column of `[LANES][d]` lanes at once (same order, vectorized
/// along d); `red` is scratch.
fn reduce_columns(lanes: &[f32], red: &mut Vec<f32>, out: &mut [f32]) {
    let d = out.len();
    red.clear();
    for i in 0..8 {
        let (hi, lo) = (&lanes[(8 + i) * d..][..d], &lanes[i * d..][..d]);
        red.extend(hi.iter().zip(lo).map(|(a, b)| a + b));
    }
    for i in 0..4 {
        for c in 0..d {
            red[i * d + c] += red[(4 + i) * d + c];
        }
    }
    let row = |k: usize| &red[k * d..][..d];
    for (c, o) in out.iter_mut().enumerate() {
        *o = (row(0)[c] + row(2)[c]) + (row(1)[c] + row(3)[c]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook formula in f64, for comparison.
    fn reference(q: &[f32], k: &[f32], v: &[f32], s: &AttentionShape) -> Vec<f32> {
        let d = s.head_dim;
        let t = q.len() / (s.heads * d);
        let mut out = vec![0.0f32; q.len()];
        for i in 0..t {
            let pos = s.past + i;
            for h in 0..s.heads {
                let kvh = h / (s.heads / s.kv_heads);
                let visible: Vec<usize> = (0..=pos).filter(|&j| s.window.is_none_or(|w| pos - j < w)).collect();
                let scores: Vec<f64> = visible
                    .iter()
                    .map(|&j| {
                        (0..d)
                            .map(|c| q[(h * t + i) * d + c] as f64 * k[(kvh * s.kv_stride + j) * d + c] as f64)
                            .sum::<f64>()
                            * s.scale as f64
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = e.iter().sum();
                for c in 0..d {
                    let o: f64 =
                        visible.iter().zip(&e).map(|(&j, w)| w / sum * v[(kvh * s.kv_stride + j) * d + c] as f64).sum();
                    out[i * s.heads * d + h * d + c] = o as f32;
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_formula_with_groups_windows_and_a_past() {
        for (heads, kv_heads, d, past, t, window) in
            [(4, 2, 16, 0, 5, None), (9, 3, 64, 7, 3, None), (4, 1, 20, 10, 6, Some(4)), (2, 2, 8, 3, 1, Some(2))]
        {
            let stride = past + t + 3;
            let s = AttentionShape { heads, kv_heads, head_dim: d, kv_stride: stride, past, window, scale: 0.3 };
            let q = values(heads * t * d, 1);
            let k = values(kv_heads * stride * d, 2);
            let v = values(kv_heads * stride * d, 3);
            let mut out = vec![0.0; q.len()];
            attend(&q, &k, &v, &s, &mut out).expect("attends");
            let want = reference(&q, &k, &v, &s);
            let worst = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(worst < 1e-5, "{heads}/{kv_heads} heads, past {past}, t {t}: off by {worst}");
        }
    }

    /// 40 queries of 4 heads over 2 key/value heads of 64, attended in one batch.
    fn batched_case() -> (AttentionShape, Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let (heads, kv_heads, d, t, stride) = (4, 2, 64, 40, 64);
        let k = values(kv_heads * stride * d, 5);
        let v = values(kv_heads * stride * d, 6);
        let q = values(heads * t * d, 7);
        let shape =
            AttentionShape { heads, kv_heads, head_dim: d, kv_stride: stride, past: 0, window: None, scale: 0.2 };
        let mut batched = vec![0.0; q.len()];
        attend(&q, &k, &v, &shape, &mut batched).expect("attends");
        (shape, q, k, v, batched)
    }

    /// What the engine relies on for chunked prefill: a batch of queries gives bit-identical
    /// rows to the same queries in smaller batches (of at least two: a single query takes
    /// llama.cpp's decode-step order, [`dot_step64`]).
    #[test]
    fn batched_rows_equal_rows_of_smaller_batches_exactly() {
        let (shape, q, k, v, batched) = batched_case();
        let (heads, d, t) = (shape.heads, shape.head_dim, q.len() / (shape.heads * shape.head_dim));
        for start in (0..t).step_by(2) {
            let rows = 2;
            let part: Vec<f32> = (0..heads).flat_map(|h| q[(h * t + start) * d..][..rows * d].to_vec()).collect();
            let mut out = vec![0.0; heads * rows * d];
            attend(&part, &k, &v, &AttentionShape { past: start, ..shape }, &mut out).expect("attends");
            assert_eq!(out, batched[start * heads * d..][..rows * heads * d], "rows {start}..{}", start + rows);
        }
    }

    /// A decode step (one query) sums in another order than a batch, as llama.cpp does, so
    /// the two agree to rounding, not bit for bit.
    #[test]
    fn a_single_query_agrees_with_its_batched_row_to_rounding() {
        let (shape, q, k, v, batched) = batched_case();
        let (heads, d, t) = (shape.heads, shape.head_dim, q.len() / (shape.heads * shape.head_dim));
        let i = t - 1;
        let one: Vec<f32> = (0..heads).flat_map(|h| q[(h * t + i) * d..][..d].to_vec()).collect();
        let mut out = vec![0.0; heads * d];
        attend(&one, &k, &v, &AttentionShape { past: i, ..shape }, &mut out).expect("attends");
        let worst = out.iter().zip(&batched[i * heads * d..]).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst}");
    }

    #[test]
    fn bad_shapes_are_errors() {
        let s = AttentionShape { heads: 3, kv_heads: 2, head_dim: 4, kv_stride: 8, past: 0, window: None, scale: 1.0 };
        assert!(attend(&[0.0; 12], &[0.0; 64], &[0.0; 64], &s, &mut [0.0; 12]).is_err());
        let s = AttentionShape { heads: 2, kv_heads: 1, head_dim: 4, kv_stride: 2, past: 2, window: None, scale: 1.0 };
        assert!(attend(&[0.0; 8], &[0.0; 8], &[0.0; 8], &s, &mut [0.0; 8]).is_err());
    }
}
