//! Splitting a kernel's output across threads: Candle's barrier pool, the one its own
//! quantized kernels use. Its workers spin between calls and the calling thread takes a
//! share, so a hand-off costs a store and a cache line rather than a futex wake-up (what
//! rayon's join costs when its threads have gone to sleep between two matrix products),
//! and one set of threads serves both Candle's kernels and ours instead of two competing
//! for the same cores.
//!
//! The pool's size comes from `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS` (all physical cores
//! by default), read once; `rapid-host --threads N` sets both before any kernel runs.

/// Threads a kernel may split across, the calling one included.
pub fn available() -> usize {
    candle_core::utils::barrier_pool().n_workers() + 1
}

/// A raw pointer that may cross threads: each chunk index is handed out once, so no two
/// threads touch the same elements.
struct Chunks<T>(*mut T);
// SAFETY: see `for_each_chunk`, the only user: disjoint ranges of one live `&mut [T]`.
unsafe impl<T: Send> Sync for Chunks<T> {}
unsafe impl<T: Send> Send for Chunks<T> {}

/// `f(index, chunk)` for each `chunk_len`-sized chunk of `data` (the last may be shorter),
/// split across the pool when there is more than one chunk and more than one thread.
pub fn for_each_chunk<T: Send>(data: &mut [T], chunk_len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let chunk_len = chunk_len.max(1);
    let chunks = data.len().div_ceil(chunk_len);
    let pool = candle_core::utils::barrier_pool();
    if chunks <= 1 || pool.n_workers() == 0 {
        data.chunks_mut(chunk_len).enumerate().for_each(|(i, chunk)| f(i, chunk));
        return;
    }
    let len = data.len();
    let base = Chunks(data.as_mut_ptr());
    let base = &base;
    // Chunks differ in cost (attention's causal rows): handed out dynamically.
    share(chunks, true, |range| {
        for i in range {
            let start = i * chunk_len;
            let end = (start + chunk_len).min(len);
            // SAFETY: `share` hands each index out once and the indices tile 0..chunks, so
            // the element ranges are disjoint and inside `data`, which outlives this call
            // (`share` returns once every thread is done).
            let chunk = unsafe { std::slice::from_raw_parts_mut(base.0.add(start), end - start) };
            f(i, chunk);
        }
    });
}

/// Contiguous runs handed out per thread of the pool.
const RUNS_PER_THREAD: usize = 8;

/// `f(range)` over runs that tile `0..items`, on every thread of the pool. The runs are
/// contiguous (each streams its own part of the weights: a cursor handing out single items
/// scaled 1.1x on two threads here, one contiguous share per thread 1.4x). `dynamic`: a
/// few runs per thread handed out in order from a shared counter, so a thread that falls
/// behind (items of unequal cost, as causal attention's later queries; a core busy with
/// other work, as on a shared VM) takes fewer instead of the others waiting for it at the
/// end: gemma's 2-thread prefill ~20% faster here. Otherwise one run per thread, which
/// measured a few percent faster for the small products of a decode step.
fn share(items: usize, dynamic: bool, f: impl Fn(std::ops::Range<usize>) + Sync) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = candle_core::utils::barrier_pool();
    let threads = pool.n_workers() + 1;
    if items <= 1 || threads == 1 {
        f(0..items);
        return;
    }
    let runs = (threads * if dynamic { RUNS_PER_THREAD } else { 1 }).min(items);
    let next = AtomicUsize::new(0);
    pool.execute(|_| {
        loop {
            let r = next.fetch_add(1, Ordering::Relaxed);
            if r >= runs {
                break;
            }
            f(items * r / runs..items * (r + 1) / runs);
        }
    });
}

/// One column strip of a row-major matrix: `width` consecutive columns of every row.
#[derive(Debug)]
pub struct Strip<'a> {
    base: *mut f32,
    stride: usize,
    col: usize,
    width: usize,
    rows: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

impl Strip<'_> {
    /// Row `r`'s part of the strip.
    pub fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows);
        // SAFETY: `for_each_strip` hands each strip (a disjoint set of columns of `out`) to
        // one task, and `r` is a row of `out`; the borrow of `self` keeps it unique here.
        unsafe { std::slice::from_raw_parts_mut(self.base.add(r * self.stride + self.col), self.width) }
    }
}

/// `f(index, strip)` for each `width`-column strip of `out` (`rows` x `stride`, row-major;
/// `stride` a multiple of `width`), split across the pool in contiguous runs of strips.
pub fn for_each_strip(
    out: &mut [f32],
    rows: usize,
    stride: usize,
    width: usize,
    f: impl Fn(usize, &mut Strip<'_>) + Sync,
) {
    assert!(width > 0 && stride.is_multiple_of(width) && out.len() == rows * stride);
    let strips = stride / width;
    let base = Chunks(out.as_mut_ptr());
    let base = &base;
    let run = |i: usize| {
        let mut strip = Strip { base: base.0, stride, col: i * width, width, rows, _out: std::marker::PhantomData };
        f(i, &mut strip);
    };
    // A batch of rows (prefill) in dynamic runs; a decode step in one run per thread.
    share(strips, rows > 1, |range| range.for_each(run));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_is_visited_once_with_its_index() {
        let mut data = vec![0usize; 1003];
        for_each_chunk(&mut data, 10, |i, chunk| {
            for (j, v) in chunk.iter_mut().enumerate() {
                *v += i * 10 + j + 1;
            }
        });
        assert!(data.iter().enumerate().all(|(k, v)| *v == k + 1));
    }

    #[test]
    fn every_strip_cell_is_written_once() {
        let (rows, stride) = (7, 48);
        let mut out = vec![0f32; rows * stride];
        for_each_strip(&mut out, rows, stride, 16, |i, strip| {
            for r in 0..rows {
                for (c, v) in strip.row(r).iter_mut().enumerate() {
                    *v += (r * stride + i * 16 + c) as f32;
                }
            }
        });
        assert!(out.iter().enumerate().all(|(k, v)| *v == k as f32));
    }
}
