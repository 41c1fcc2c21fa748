//! The token table and the output head of MLX checkpoints, in the forms the layouts hold
//! them: f32, packed Q4_1 rows for our kernel, or Candle's quantized blocks (GPUs).

use std::sync::Arc;

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{Device, Module, Result, Tensor};
use rapid_kernels::QuantMatrix;

use crate::engine::EngineError;
use crate::engine::mlx::{Checkpoint, MlxLinear};

/// The token embedding table: packed Q4_1 rows dequantized on lookup, the same blocks as
/// Candle's quantized tensor (GPUs), or f32.
#[allow(missing_debug_implementations)]
pub enum Embeddings {
    Dense(Tensor),
    Packed(Arc<QuantMatrix>),
    Quantized(Arc<QTensor>),
}

impl Embeddings {
    /// Module `prefix` (`model.embed_tokens`) packed where that is exact, else f32.
    pub fn load_packed(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        Ok(match (ckpt.q4_1(prefix, device)?, ckpt.quantized_table(prefix, device)?) {
            (Some(table), _) => Self::Packed(Arc::new(table)),
            (None, Some(table)) => Self::Quantized(table),
            (None, None) => Self::Dense(ckpt.weight(prefix, device)?),
        })
    }

    /// Module `prefix` as f32 (the families whose parity was measured that way).
    pub fn load_dense(ckpt: &Checkpoint, prefix: &str, device: &Device) -> std::result::Result<Self, EngineError> {
        Ok(Self::Dense(ckpt.weight(prefix, device)?))
    }

    /// The f32 table `prefix` and the f32 head `head` (the table itself when `tied` or
    /// when the checkpoint has no separate head).
    pub fn load_dense_with_head(
        ckpt: &Checkpoint,
        prefix: &str,
        head: &str,
        tied: bool,
        device: &Device,
    ) -> std::result::Result<(Self, Head), EngineError> {
        let table = Self::load_dense(ckpt, prefix, device)?;
        let head = Head::tied_or(ckpt, head, tied, &table, || Ok(Head::Dense(ckpt.weight(head, device)?)))?;
        Ok((table, head))
    }

    /// Rows `tokens`, `[tokens.len(), hidden]`.
    pub fn lookup(&self, tokens: &[u32], device: &Device) -> Result<Tensor> {
        match self {
            Self::Dense(table) => table.index_select(&Tensor::new(tokens, device)?, 0),
            Self::Quantized(table) => table.embedding(&Tensor::new(tokens, device)?),
            Self::Packed(table) => {
                let mut values = Vec::with_capacity(tokens.len() * table.cols());
                for &t in tokens {
                    if t as usize >= table.rows() {
                        candle_core::bail!("token {t} is outside the vocabulary of {}", table.rows());
                    }
                    values.extend(table.dequantize_row(t as usize));
                }
                Tensor::from_vec(values, (tokens.len(), table.cols()), device)
            }
        }
    }

    /// The output projection of a model whose head is tied to this table.
    pub fn tied_head(&self) -> Result<Head> {
        Ok(match self {
            Self::Packed(table) => Head::Packed(Arc::clone(table)),
            Self::Dense(table) => Head::Dense(table.clone()),
            Self::Quantized(table) => Head::Quantized(QMatMul::from_arc(Arc::clone(table))?),
        })
    }
}

/// The output projection: its own layer, or the (tied) embedding table.
#[allow(missing_debug_implementations)]
pub enum Head {
    Linear(MlxLinear),
    Dense(Tensor),
    Packed(Arc<QuantMatrix>),
    Quantized(QMatMul),
}

impl Head {
    /// `name` (`lm_head`) when the checkpoint has it and the embeddings are not tied, else
    /// the embeddings; `own` loads the separate head.
    pub fn tied_or(
        ckpt: &Checkpoint,
        name: &str,
        tied: bool,
        embeddings: &Embeddings,
        own: impl FnOnce() -> std::result::Result<Self, EngineError>,
    ) -> std::result::Result<Self, EngineError> {
        if tied || !ckpt.has(&format!("{name}.weight")) { Ok(embeddings.tied_head()?) } else { own() }
    }

    /// Logits of `rows` (`[n, hidden]`): `[n, vocab]`.
    pub fn forward(&self, rows: &Tensor) -> Result<Tensor> {
        match self {
            Self::Linear(linear) => linear.forward(rows),
            Self::Dense(table) => rows.matmul(&table.t()?),
            Self::Packed(table) => crate::engine::models::packed_matmul(table, rows),
            Self::Quantized(table) => table.forward(rows),
        }
    }
}

/// Gemma's final logit soft-capping, `cap * tanh(logits / cap)`, where the config has a cap.
pub fn softcap(logits: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(cap) => (logits / cap)?.tanh()? * cap,
        None => Ok(logits),
    }
}
