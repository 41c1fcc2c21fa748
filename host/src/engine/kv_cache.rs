//! Keys and values of one sequence, owned by the engine rather than the model layers, so a
//! scheduler can hold many sequences, batch them, and reuse a shared prompt prefix.
//!
//! Hybrid models (Qwen3-Next, Qwen3.5, Mamba hybrids) also keep a fixed-size recurrent
//! state per linear-attention layer (a convolution window and the SSM / delta-rule state)
//! here, for the same reason: it belongs to the sequence, not to the layer.

use candle_core::{Result, Tensor};

/// One layer's keys and values: buffers with room along the sequence axis (dim 2), of
/// which the first `filled` positions are valid. Appending writes in place, so a decode
/// step copies one position instead of the whole history.
#[derive(Debug)]
struct Slot {
    k: Tensor,
    v: Tensor,
    filled: usize,
}

impl Slot {
    fn room(&self) -> usize {
        self.k.dims().get(2).copied().unwrap_or(0)
    }

    fn views(&self) -> Result<(Tensor, Tensor)> {
        Ok((self.k.narrow(2, 0, self.filled)?, self.v.narrow(2, 0, self.filled)?))
    }

    /// Buffers shaped like `like` with `room` positions, holding `keep` of `old`'s.
    fn allocate(like: &Tensor, like_v: &Tensor, room: usize, old: Option<&Slot>) -> Result<Self> {
        let with_room = |t: &Tensor| {
            let mut dims = t.dims().to_vec();
            dims[2] = room;
            Tensor::zeros(dims, t.dtype(), t.device())
        };
        let (k, v) = (with_room(like)?, with_room(like_v)?);
        let filled = match old {
            Some(old) => {
                let (ok, ov) = old.views()?;
                k.slice_set(&ok.contiguous()?, 2, 0)?;
                v.slice_set(&ov.contiguous()?, 2, 0)?;
                old.filled
            }
            None => 0,
        };
        Ok(Self { k, v, filled })
    }
}

/// Per-layer keys and values, `[1, kv_heads, len, head_dim]` each, and per-layer recurrent
/// state for layers that have one instead.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<Slot>>,
    /// The tensors a recurrent layer carries from one call to the next, in the layer's own
    /// order; `None` before the layer has seen a token.
    states: Vec<Option<Vec<Tensor>>>,
    len: usize,
    /// Longest sequence the model supports.
    capacity: usize,
}

impl KvCache {
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self { layers: (0..layers).map(|_| None).collect(), states: vec![None; layers], len: 0, capacity }
    }

    /// Tokens cached so far: the position of the next token.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Appends this step's keys and values for `layer` (`[b, heads, t, dim]`); returns
    /// everything cached for it.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        if k.rank() != 4 || v.rank() != 4 {
            candle_core::bail!("cache entries are [batch, heads, positions, dim], got {:?}", k.dims());
        }
        let t = k.dim(2)?;
        let Some(slot) = self.layers.get_mut(layer) else {
            candle_core::bail!("layer {layer} is outside the cache");
        };
        let needed = slot.as_ref().map_or(0, |s| s.filled) + t;
        if slot.as_ref().is_none_or(|s| s.room() < needed) {
            // Grow geometrically (at least 256 positions), never past the model's context.
            let room = needed.next_power_of_two().max(256).min(self.capacity.max(needed));
            *slot = Some(Slot::allocate(k, v, room, slot.as_ref())?);
        }
        let Some(slot) = slot.as_mut() else { candle_core::bail!("cache slot missing") };
        slot.k.slice_set(&k.contiguous()?, 2, slot.filled)?;
        slot.v.slice_set(&v.contiguous()?, 2, slot.filled)?;
        slot.filled += t;
        slot.views()
    }

    /// The recurrent state of `layer`, `None` until [`Self::set_state`] stored one.
    pub fn state(&self, layer: usize) -> Option<&[Tensor]> {
        self.states.get(layer).and_then(|s| s.as_deref())
    }

    /// Replaces the recurrent state of `layer` with the one after this step.
    pub fn set_state(&mut self, layer: usize, state: Vec<Tensor>) {
        if let Some(slot) = self.states.get_mut(layer) {
            *slot = Some(state);
        }
    }

    /// Everything cached for `layer` so far (including this step once it appended), for a
    /// layer that attends over another layer's keys and values (Gemma 4's KV sharing).
    pub fn get(&self, layer: usize) -> Option<(Tensor, Tensor)> {
        self.layers.get(layer)?.as_ref()?.views().ok()
    }

    /// Marks `n` more tokens as cached (after every layer appended them).
    pub fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Keeps only the first `len` positions: the shared prefix of a new request.
    ///
    /// A recurrent state folds in every token and cannot be rewound, so a cache that holds
    /// one starts over empty instead: callers re-run the prompt from [`Self::len`].
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len >= self.len {
            return Ok(());
        }
        if self.states.iter().any(Option::is_some) {
            self.layers.iter_mut().for_each(|slot| *slot = None);
            self.states.iter_mut().for_each(|slot| *slot = None);
            self.len = 0;
            return Ok(());
        }
        for slot in self.layers.iter_mut().flatten() {
            slot.filled = slot.filled.min(len);
        }
        self.len = len;
        Ok(())
    }
}

/// The recurrent states of every layer at one position (`None` for attention layers and
/// layers that have not run). Cheap to take: the tensors share storage with the cache's,
/// which is safe because a recurrent layer replaces its state each step
/// ([`KvCache::set_state`]) and never writes into it.
pub type RecurrentStates = Vec<Option<Vec<Tensor>>>;

fn tensor_bytes(t: &Tensor) -> usize {
    t.elem_count() * t.dtype().size_in_bytes()
}

impl KvCache {
    /// Whether any layer carries a recurrent state (known once a layer ran a token): such a
    /// cache can only be reused exactly at a position where its states were snapshotted.
    pub fn has_recurrent_state(&self) -> bool {
        self.states.iter().any(Option::is_some)
    }

    /// The recurrent states as they are now, at position [`Self::len`].
    pub fn recurrent_states(&self) -> RecurrentStates {
        self.states.clone()
    }

    /// Bytes of tensor memory the cache holds: every slot's whole buffer (room included)
    /// and the recurrent states.
    pub fn bytes(&self) -> usize {
        let slots: usize = self.layers.iter().flatten().map(|s| tensor_bytes(&s.k) + tensor_bytes(&s.v)).sum();
        slots + states_bytes(&self.states)
    }

    /// Keeps the first `len` positions of the attention layers and drops the recurrent
    /// states (which are past `len`): for a caller that keeps states of its own at `len`.
    pub fn truncate_attention(&mut self, len: usize) {
        self.states.iter_mut().for_each(|state| *state = None);
        if len >= self.len {
            return;
        }
        for slot in self.layers.iter_mut().flatten() {
            slot.filled = slot.filled.min(len);
        }
        self.len = len;
    }

    /// Bytes one position takes over the attention layers allocated so far (0 before any).
    pub fn position_bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .filter(|s| s.room() > 0)
            .map(|s| (tensor_bytes(&s.k) + tensor_bytes(&s.v)) / s.room())
            .sum()
    }

    /// A compact copy of the first `len` positions of the attention layers (buffers of
    /// exactly `len` positions), without recurrent states: what a prefix cache keeps.
    pub fn snapshot(&self, len: usize) -> Result<KvCache> {
        let len = len.min(self.len);
        let layers = self
            .layers
            .iter()
            .map(|slot| {
                slot.as_ref()
                    .map(|s| {
                        let n = len.min(s.filled);
                        Ok(Slot {
                            k: s.k.narrow(2, 0, n)?.contiguous()?.copy()?,
                            v: s.v.narrow(2, 0, n)?.contiguous()?.copy()?,
                            filled: n,
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, states: vec![None; self.states.len()], len, capacity: self.capacity })
    }

    /// A new cache holding the first `len` positions of this one's attention layers, with
    /// room for `room` positions (so a prefill up to there does not reallocate), and
    /// `states` as its recurrent states (which must be the states at position `len`).
    pub fn restore(&self, len: usize, room: usize, states: Option<&RecurrentStates>) -> Result<KvCache> {
        if len > self.len {
            candle_core::bail!("cannot restore {len} positions from a cache of {}", self.len);
        }
        let room = room.max(len).min(self.capacity.max(len));
        let mut layers = Vec::with_capacity(self.layers.len());
        for slot in &self.layers {
            let Some(s) = slot else {
                layers.push(None);
                continue;
            };
            let n = len.min(s.filled);
            let mut restored = Slot::allocate(&s.k, &s.v, room.max(1), None)?;
            if n > 0 {
                restored.k.slice_set(&s.k.narrow(2, 0, n)?.contiguous()?, 2, 0)?;
                restored.v.slice_set(&s.v.narrow(2, 0, n)?.contiguous()?, 2, 0)?;
            }
            restored.filled = n;
            layers.push(Some(restored));
        }
        let states = match states {
            Some(states) if states.len() == self.states.len() => states.clone(),
            Some(states) => candle_core::bail!("{} recurrent layers restored into {}", states.len(), self.states.len()),
            None => vec![None; self.states.len()],
        };
        Ok(Self { layers, states, len, capacity: self.capacity })
    }
}

/// Bytes held by a set of recurrent states.
pub fn states_bytes(states: &RecurrentStates) -> usize {
    states.iter().flatten().flatten().map(tensor_bytes).sum()
}

/// A deep copy: appending to one copy never shows through in the other.
impl Clone for KvCache {
    fn clone(&self) -> Self {
        let layers = self
            .layers
            .iter()
            .map(|slot| {
                slot.as_ref().and_then(|s| Some(Slot { k: s.k.copy().ok()?, v: s.v.copy().ok()?, filled: s.filled }))
            })
            .collect();
        Self { layers, states: self.states.clone(), len: self.len, capacity: self.capacity }
    }
}
