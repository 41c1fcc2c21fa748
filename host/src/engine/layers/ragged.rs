//! The rows of one forward pass: each sequence's new tokens (a decoding sequence's one
//! token, a chunk of a prompt) side by side as rows of one activation matrix.

use std::cell::RefCell;

use candle_core::{Device, Result, Tensor};

use crate::engine::KvCache;
use crate::engine::models::{SeqInput, attention_mask};

/// One sequence's rows in a batch: `len` rows from `start`, at positions `past..past + len`.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub start: usize,
    pub len: usize,
    pub past: usize,
}

/// A ragged batch: which rows belong to which sequence, and each row's position.
#[derive(Debug)]
pub struct Ragged {
    pub segments: Vec<Segment>,
    /// Every sequence's new tokens, in batch order.
    pub tokens: Vec<u32>,
    /// Each row's position in its own sequence.
    pub positions: Vec<usize>,
    /// Rows per sequence.
    pub lens: Vec<usize>,
    /// Per sequence, the masks built so far by window (built once per forward, shared by
    /// every layer with that window).
    masks: RefCell<Vec<MasksByWindow>>,
}

/// One sequence's masks, by sliding window (`None`: global), `None` where none is needed.
type MasksByWindow = Vec<(Option<usize>, Option<Tensor>)>;

impl Ragged {
    /// The batch's rows; an error for a sequence with no new tokens or one that would
    /// outgrow the context.
    pub fn new(batch: &[SeqInput<'_>], context_length: usize) -> Result<Self> {
        let mut tokens = Vec::new();
        let mut segments = Vec::with_capacity(batch.len());
        let mut positions = Vec::new();
        for seq in batch {
            let (past, len) = (seq.cache.len(), seq.tokens.len());
            if len == 0 {
                candle_core::bail!("a sequence in the batch has no new tokens");
            }
            if past + len > context_length {
                candle_core::bail!("sequence of {} tokens exceeds the context of {}", past + len, context_length);
            }
            segments.push(Segment { start: tokens.len(), len, past });
            tokens.extend_from_slice(seq.tokens);
            positions.extend(past..past + len);
        }
        let lens = segments.iter().map(|s| s.len).collect();
        let masks = RefCell::new(vec![Vec::new(); segments.len()]);
        Ok(Self { segments, tokens, positions, lens, masks })
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Whether the batch is one sequence (its rows are the whole matrix: no copies).
    pub fn is_single(&self) -> bool {
        self.segments.len() == 1
    }

    /// Sequence `seq`'s rows of `x` along dimension `dim`.
    pub fn rows_of(&self, x: &Tensor, seq: usize, dim: usize) -> Result<Tensor> {
        if self.is_single() {
            return Ok(x.clone());
        }
        let Some(s) = self.segments.get(seq) else { candle_core::bail!("no sequence {seq} in the batch") };
        x.narrow(dim, s.start, s.len)?.contiguous()
    }

    /// Per-sequence results (each sequence's rows along `dim`) back into one matrix.
    pub fn join(&self, mut parts: Vec<Tensor>, dim: usize) -> Result<Tensor> {
        if parts.len() == 1 { Ok(parts.swap_remove(0)) } else { Tensor::cat(&parts, dim) }
    }

    /// `f` over each sequence's rows of `x` (`[1, rows, hidden]`) with its cache and masks:
    /// what attention and recurrent layers do, each sequence against its own past.
    pub fn per_sequence(
        &self,
        x: &Tensor,
        batch: &mut [SeqInput<'_>],
        mut f: impl FnMut(&Tensor, &mut KvCache, &SeqMasks<'_>) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut outs = Vec::with_capacity(batch.len());
        for (i, seq) in batch.iter_mut().enumerate() {
            outs.push(f(&self.rows_of(x, i, 1)?, seq.cache, &self.masks(i, x.device()))?);
        }
        self.join(outs, 1)
    }

    /// Sequence `seq`'s masks.
    pub fn masks<'a>(&'a self, seq: usize, device: &'a Device) -> SeqMasks<'a> {
        SeqMasks { ragged: self, seq, device }
    }

    /// Each sequence's last row of `x` (`[1, rows, hidden]`): `[1, sequences, hidden]`.
    pub fn last_rows(&self, x: &Tensor) -> Result<Tensor> {
        self.last_rows_along(x, 1)
    }

    /// Each sequence's last row of `x` along its row dimension `dim`.
    pub fn last_rows_along(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        if let [s] = self.segments.as_slice() {
            return x.narrow(dim, s.len - 1, 1);
        }
        let rows = self.segments.iter().map(|s| x.narrow(dim, s.start + s.len - 1, 1)).collect::<Result<Vec<_>>>()?;
        Tensor::cat(&rows, dim)
    }

    /// Marks every sequence's new tokens as cached (after every layer appended them).
    pub fn advance(&self, batch: &mut [SeqInput<'_>]) {
        for (seq, s) in batch.iter_mut().zip(&self.segments) {
            seq.cache.advance(s.len);
        }
    }
}

/// One sequence's attention masks in a forward.
#[derive(Debug, Clone, Copy)]
pub struct SeqMasks<'a> {
    ragged: &'a Ragged,
    seq: usize,
    device: &'a Device,
}

impl SeqMasks<'_> {
    /// The `[t, past + t]` additive causal mask (only the last `window` positions visible
    /// with a window), or `None` where a single new token sees every cached one.
    pub fn causal(&self, window: Option<usize>) -> Result<Option<Tensor>> {
        let Some(s) = self.ragged.segments.get(self.seq).copied() else {
            candle_core::bail!("no sequence {} in the batch", self.seq)
        };
        let mut masks = self.ragged.masks.borrow_mut();
        let Some(built) = masks.get_mut(self.seq) else { candle_core::bail!("no sequence {} in the batch", self.seq) };
        if let Some((_, mask)) = built.iter().find(|(w, _)| *w == window) {
            return Ok(mask.clone());
        }
        let needed = s.len > 1 || window.is_some_and(|w| s.past + 1 > w);
        let mask = if needed { Some(attention_mask(s.len, s.past, window, self.device)?) } else { None };
        built.push((window, mask.clone()));
        Ok(mask)
    }
}
