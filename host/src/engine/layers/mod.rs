//! The layer library the architectures share, and the generic decoder that owns what every
//! forward pass does the same way: the context check, the ragged batch of sequences
//! ([`Ragged`]), masks, the cache advance and the last-position logits ([`stack::Stack`]).
//!
//! - [`ragged`]: the rows of one forward: every sequence's new tokens side by side.
//! - [`stack`]: a decoder as a list of residual units (`x += op(norm(x))`), each op running
//!   over all rows at once (MLPs, experts), per sequence against its own cache (attention,
//!   recurrent mixers), or both (projections over all rows, attention per sequence).
//! - [`embedding`]: the token table and the output head (f32, packed Q4_1, Candle's blocks).
//! - [`attention`]: one `attend()` (grouped heads, masks, sinks) and the MLX attention layer
//!   (per-head or whole-projection q/k norms, partial RoPE, sliding windows, sinks).
//!
//! The arithmetic stays the checkpoint format's own: GGUF models run llama.cpp's
//! ([`crate::engine::models::decoder`], which shares [`Ragged`] with the MLX decoders) and
//! MLX checkpoints mlx-lm's; the two are options of the layers, not merged.
//!
//! # Adding an architecture
//! One file under `engine/mlx/` (or `engine/models/` for GGUF) with a `Config` that
//! deserializes the checkpoint's own `config.json` names and a `load` that maps it to
//! residual units of this library (weights named by prefix: `model.layers.{i}.self_attn`),
//! plus one row in [`crate::engine::arch::ARCHITECTURES`], which `models`, `info` and both
//! loaders read.

pub mod attention;
pub mod embedding;
pub mod ragged;
pub mod stack;

pub use ragged::{Ragged, SeqMasks};
pub use stack::{
    BatchMixer, FeedForward, Op, Recurrent, RecurrentMixer, Residual, SeqMixer, Stack, StackSpec, pre_norm_layer,
};
