//! Causal attention of one sequence's new queries over its cached keys and values.
//!
//! Each (query row, head) pair is computed on its own, always in the same order, so a
//! prompt fed in one batch gives the same numbers as fed token by token (a batched matrix
//! product does not promise that), and a decode step costs one pass over the cache
//! instead of the ~10 tensor operations (grouped-query head expansion, two products,
//! scaling, masking, softmax, transposes) of the generic formulation.
//!
//! The cache holds `f32` or `f16` values ([`CacheValue`]). With `f16` the arithmetic is
//! llama.cpp's (its default cache type, without flash attention): queries and attention
//! weights are rounded to f16 before their products, each product accumulates in f32 over
//! 4 x 8 lanes of 32-value steps with fused multiply-adds, and the softmax sums in f64.

use crate::KernelError;
use half::f16;

/// A cached key / value element: how it widens to f32, and how an f32 operand is rounded
/// to its precision before a product with it.
pub trait CacheValue: Copy + Send + Sync + 'static {
    fn round(x: f32) -> f32;
    /// `row` as f32: itself, or widened into `buf` (F16C, eight at a time, where available).
    fn widen<'a>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl CacheValue for f32 {
    fn round(x: f32) -> f32 {
        x
    }
    fn widen<'a>(row: &'a [Self], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        row
    }
}

impl CacheValue for f16 {
    fn round(x: f32) -> f32 {
        f16::from_f32(x).to_f32()
    }
    fn widen<'a>(row: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32] {
        use half::slice::HalfFloatSliceExt;
        buf.resize(row.len(), 0.0);
        row.convert_to_f32_slice(buf);
        buf
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

/// Values per accumulation step: 4 accumulators of 8 lanes (ggml's AVX2 `vec_dot_f16`).
const STEP: usize = 32;

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
    let group = heads / kv_heads;
    // Output chunks of `head_dim` are the (query row, head) pairs in order.
    let pair = |index: usize, out_head: &mut [f32], scratch: &mut Scratch| {
        let (i, h) = (index / heads, index % heads);
        let pos = past + i;
        let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let kv = (h / group) * kv_stride * d;
        let query = &q[(h * t + i) * d..][..d];
        let (keys, values) = (&k[kv..][..(pos + 1) * d], &v[kv..][..(pos + 1) * d]);
        head(query, keys, values, first, shape.scale, out_head, scratch);
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
    Ok(())
}

#[derive(Default)]
struct Scratch {
    query: Vec<f32>,
    weights: Vec<f32>,
    /// `[STEP][head_dim]`: lane `j % STEP` of every output dimension.
    lanes: Vec<f32>,
    row: Vec<f32>,
    red: Vec<f32>,
    tail: Vec<f64>,
}

/// One head of one query: softmax(q·K · scale) V over positions `first..keys.len() / d`.
fn head<T: CacheValue>(
    query: &[f32],
    keys: &[T],
    values: &[T],
    first: usize,
    scale: f32,
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
        let score = dot(&s.query, T::widen(key, &mut s.row)) * scale;
        max = max.max(score);
        s.weights.push(score);
    }
    let mut sum = 0.0f64;
    for w in s.weights.iter_mut() {
        *w = (*w - max).exp();
        sum += *w as f64;
    }
    let inv = (1.0 / sum) as f32;
    s.weights.iter_mut().for_each(|w| *w = T::round(*w * inv));
    // out[c] = Σ_j w[j] v[j][c], each c accumulated like `dot` over absolute positions j
    // (the masked ones before `first` contribute exact zeros there); the lanes are laid out
    // so the inner loop runs along c.
    s.lanes.clear();
    s.lanes.resize(STEP * d, 0.0);
    let full = visible - visible % STEP;
    for j in first..full {
        let w = s.weights[j - first];
        let value = T::widen(&values[j * d..][..d], &mut s.row);
        let acc = &mut s.lanes[(j % STEP) * d..][..d];
        for (a, x) in acc.iter_mut().zip(value) {
            *a = w.mul_add(*x, *a);
        }
    }
    reduce_columns(&s.lanes, &mut s.red, out);
    if full.max(first) < visible {
        s.tail.clear();
        s.tail.resize(d, 0.0);
        for j in full.max(first)..visible {
            let w = s.weights[j - first];
            let value = T::widen(&values[j * d..][..d], &mut s.row);
            for (t, x) in s.tail.iter_mut().zip(value) {
                *t += (w * x) as f64;
            }
        }
        for (o, t) in out.iter_mut().zip(&s.tail) {
            *o = (*o as f64 + t) as f32;
        }
    }
}

/// `Σ a·b`: 32-value steps into 4 x 8 lanes with fused multiply-adds, the lanes reduced as
/// ggml does, a remainder of fewer than 32 added in f64.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; STEP];
    let full = a.len() - a.len() % STEP;
    for (x, y) in a[..full].chunks_exact(STEP).zip(b[..full].chunks_exact(STEP)) {
        for l in 0..STEP {
            lanes[l] = x[l].mul_add(y[l], lanes[l]);
        }
    }
    let mut total = reduce(&lanes) as f64;
    for (x, y) in a[full..].iter().zip(&b[full..]) {
        total += (x * y) as f64;
    }
    total as f32
}

/// 32 lanes (accumulators 0-3 of 8 lanes each) to one sum, in ggml's AVX2 order: pairwise
/// accumulator sums, then the upper half of the 8 lanes onto the lower, then two
/// horizontal adds.
fn reduce(lanes: &[f32]) -> f32 {
    let acc = |i: usize, l: usize| lanes[i * 8 + l];
    let mut x = [0.0f32; 8];
    for (l, v) in x.iter_mut().enumerate() {
        *v = (acc(0, l) + acc(2, l)) + (acc(1, l) + acc(3, l));
    }
    let t0 = [x[0] + x[4], x[1] + x[5], x[2] + x[6], x[3] + x[7]];
    (t0[0] + t0[1]) + (t0[2] + t0[3])
}

/// [`reduce`] for every column of `[STEP][d]` lanes at once (same order, vectorized along d);
/// `red` is scratch.
fn reduce_columns(lanes: &[f32], red: &mut Vec<f32>, out: &mut [f32]) {
    let d = out.len();
    let lane = |k: usize| &lanes[k * d..][..d];
    red.resize(8 * d, 0.0);
    for (l, x) in red.chunks_exact_mut(d).enumerate() {
        let pairs = lane(l).iter().zip(lane(16 + l)).zip(lane(8 + l).iter().zip(lane(24 + l)));
        for (x, ((a, b), (c, e))) in x.iter_mut().zip(pairs) {
            *x = (a + b) + (c + e);
        }
    }
    let x = |l: usize| &red[l * d..][..d];
    let low = x(0).iter().zip(x(4)).zip(x(1).iter().zip(x(5)));
    let high = x(2).iter().zip(x(6)).zip(x(3).iter().zip(x(7)));
    for (o, (((x0, x4), (x1, x5)), ((x2, x6), (x3, x7)))) in out.iter_mut().zip(low.zip(high)) {
        *o = ((x0 + x4) + (x1 + x5)) + ((x2 + x6) + (x3 + x7));
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

    /// The property the engine relies on: a batch of queries gives bit-identical rows to
    /// the same queries one at a time.
    #[test]
    fn batched_rows_equal_stepped_rows_exactly() {
        let (heads, kv_heads, d, t, stride) = (4, 2, 32, 40, 64);
        let k = values(kv_heads * stride * d, 5);
        let v = values(kv_heads * stride * d, 6);
        let q = values(heads * t * d, 7);
        let shape =
            AttentionShape { heads, kv_heads, head_dim: d, kv_stride: stride, past: 0, window: None, scale: 0.2 };
        let mut batched = vec![0.0; q.len()];
        attend(&q, &k, &v, &shape, &mut batched).expect("attends");
        for i in 0..t {
            let one: Vec<f32> = (0..heads).flat_map(|h| q[(h * t + i) * d..][..d].to_vec()).collect();
            let mut out = vec![0.0; heads * d];
            attend(&one, &k, &v, &AttentionShape { past: i, ..shape }, &mut out).expect("attends");
            assert_eq!(out, batched[i * heads * d..][..heads * d], "row {i}");
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let s = AttentionShape { heads: 3, kv_heads: 2, head_dim: 4, kv_stride: 8, past: 0, window: None, scale: 1.0 };
        assert!(attend(&[0.0; 12], &[0.0; 64], &[0.0; 64], &s, &mut [0.0; 12]).is_err());
        let s = AttentionShape { heads: 2, kv_heads: 1, head_dim: 4, kv_stride: 2, past: 2, window: None, scale: 1.0 };
        assert!(attend(&[0.0; 8], &[0.0; 8], &[0.0; 8], &s, &mut [0.0; 8]).is_err());
    }
}
