//! Keys and values of one sequence, owned by the engine rather than the model layers, so a
//! scheduler can hold many sequences, batch them, and reuse a shared prompt prefix.
//!
//! Hybrid models (Qwen3-Next, Qwen3.5, Mamba hybrids) also keep a fixed-size recurrent
//! state per linear-attention layer (a convolution window and the SSM / delta-rule state)
//! here, for the same reason: it belongs to the sequence, not to the layer.

use candle_core::{Result, Tensor};

/// Per-layer keys and values, `[1, kv_heads, len, head_dim]` each, and per-layer recurrent
/// state for layers that have one instead.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// The tensors a recurrent layer carries from one call to the next, in the layer's own
    /// order; `None` before the layer has seen a token.
    states: Vec<Option<Vec<Tensor>>>,
    len: usize,
    /// Longest sequence the model supports.
    capacity: usize,
}

impl KvCache {
    pub fn new(layers: usize, capacity: usize) -> Self {
        Self { layers: vec![None; layers], states: vec![None; layers], len: 0, capacity }
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

    /// Appends this step's keys and values for `layer`; returns everything cached for it.
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let slot = &mut self.layers[layer];
        let (k, v) = match slot.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, k], 2)?, Tensor::cat(&[&pv, v], 2)?),
            None => (k.clone(), v.clone()),
        };
        *slot = Some((k.clone(), v.clone()));
        Ok((k, v))
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
        self.layers.get(layer).cloned().flatten()
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
        for (k, v) in self.layers.iter_mut().flatten() {
            *k = k.narrow(2, 0, len)?;
            *v = v.narrow(2, 0, len)?;
        }
        self.len = len;
        Ok(())
    }
}
