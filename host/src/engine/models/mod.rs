//! One file per architecture. Each model takes tokens and the sequence's [`KvCache`] and
//! returns the logits of the last position.

pub mod gemma3;
pub mod llama;

use candle_core::{Device, Result, Tensor};

use super::gguf::GgufFile;
use super::{EngineError, KvCache};

pub trait CausalLm: Send + Sync {
    /// Runs `tokens` (positions `cache.len()..`) and returns the last position's logits as
    /// an f32 vector of the vocabulary size.
    fn forward(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor>;

    /// An empty cache for one sequence.
    fn new_cache(&self) -> KvCache;

    fn context_length(&self) -> usize;
}

pub fn load(
    arch: &str,
    gguf: &mut GgufFile,
    device: &Device,
    progress: bool,
) -> std::result::Result<Box<dyn CausalLm>, EngineError> {
    match arch {
        "llama" => Ok(Box::new(llama::Llama::load(gguf, device, progress)?)),
        "gemma3" => Ok(Box::new(gemma3::Gemma3::load(gguf, device, progress)?)),
        other => Err(EngineError::UnsupportedArch(other.to_string())),
    }
}

/// A progress bar over layers while loading, on stderr.
pub fn layer_progress(enabled: bool, layers: usize, what: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(layers as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  loading {msg} [{bar:30}] {pos}/{len} layers")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(what.to_string());
    bar
}
