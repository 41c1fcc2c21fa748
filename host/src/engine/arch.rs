//! The one architecture registry: every architecture this build runs, by checkpoint format
//! and name (GGUF `general.architecture`, MLX `config.json` `model_type`), with the function
//! that loads it and the reference its parity tests hold it to. Both loaders
//! ([`super::models::load`], [`super::mlx::load`]), the dense MLX specs
//! ([`super::mlx::archs::dense_spec`]), and what `models` / `info` report as loadable
//! ([`crate::registry::parity_reference`]) read this table and nothing else.
//!
//! # Adding an architecture
//! Write one file (`engine/mlx/<name>.rs` or `engine/models/<name>.rs`): a `Config` that
//! deserializes the checkpoint's own field names and a `model` function that maps it to
//! layers of [`super::layers`] (a dense Llama-like MLX model needs only a `DenseSpec`
//! function in `mlx/archs.rs`). Then add its row below. With `parity: Some(..)` the row
//! claims a parity test: `tests/all/mlx_parity.rs` runs every such MLX row against the
//! mlx-lm fixture `tests/fixtures/mlx/<name>` (`scripts/mlx_fixtures.py` makes it).

use candle_core::Device;
use serde_json::Value;

use super::EngineError;
use super::gguf::GgufFile;
use super::mlx::dense::DenseSpec;
use super::mlx::{self, Checkpoint};
use super::models::{self, CausalLm};
use crate::registry::ModelFormat;

/// What an architecture's entry point returns.
pub type Loaded = Result<Box<dyn CausalLm>, EngineError>;
/// Loads a GGUF model of architecture `arch`.
pub type GgufLoader = fn(&mut GgufFile, &str, &Device, bool) -> Loaded;
/// Loads an MLX checkpoint of `model_type` `arch`.
pub type MlxLoader = fn(&Checkpoint, &str, &Device, bool) -> Loaded;
/// The dense MLX decoder's spec for `model_type` `arch` from its `config.json`.
pub type DenseSpecFn = fn(&str, &Value) -> Result<DenseSpec, EngineError>;

/// How an architecture is built.
#[derive(Clone, Copy)]
pub enum Loader {
    Gguf(GgufLoader),
    /// An MLX architecture of the shared dense decoder.
    Dense(DenseSpecFn),
    /// An MLX architecture with a file of its own.
    Mlx(MlxLoader),
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gguf(_) => "Gguf",
            Self::Dense(_) => "Dense",
            Self::Mlx(_) => "Mlx",
        })
    }
}

/// One row of the registry.
#[derive(Debug, Clone, Copy)]
pub struct Architecture {
    pub name: &'static str,
    pub loader: Loader,
    /// The implementation its parity tests compare against (`llama.cpp`, `mlx-lm`); `None`
    /// for a name this build loads without a test of its own (an alias of a tested one).
    pub parity: Option<&'static str>,
}

impl Architecture {
    pub fn format(&self) -> ModelFormat {
        match self.loader {
            Loader::Gguf(_) => ModelFormat::Gguf,
            Loader::Dense(_) | Loader::Mlx(_) => ModelFormat::Mlx,
        }
    }
}

const fn gguf(name: &'static str, load: GgufLoader) -> Architecture {
    Architecture { name, loader: Loader::Gguf(load), parity: Some("llama.cpp") }
}

const fn dense(name: &'static str, spec: DenseSpecFn) -> Architecture {
    Architecture { name, loader: Loader::Dense(spec), parity: Some("mlx-lm") }
}

const fn own(name: &'static str, load: MlxLoader) -> Architecture {
    Architecture { name, loader: Loader::Mlx(load), parity: Some("mlx-lm") }
}

const fn untested(row: Architecture) -> Architecture {
    Architecture { parity: None, ..row }
}

use mlx::archs;

/// Every architecture this build runs.
pub const ARCHITECTURES: &[Architecture] = &[
    gguf("llama", models::llama::model),
    // Loaded by the llama graph; held to mlx-lm by tests/all/gguf_from_mlx.rs, not claimed
    // as llama.cpp-parity models.
    untested(gguf("qwen2", models::llama::model)),
    untested(gguf("qwen3", models::llama::model)),
    gguf("gemma3", models::gemma3::model),
    // mlx-lm loads `mistral` with its llama module (`MODEL_REMAPPING`).
    dense("llama", archs::llama),
    dense("mistral", archs::llama),
    dense("qwen2", archs::qwen2),
    dense("qwen3", archs::qwen3),
    dense("qwen3_vl", archs::qwen3_vl),
    dense("smollm3", archs::smollm3),
    dense("phi3", archs::phi3),
    dense("mistral3", archs::mistral3),
    // Reached through mistral3's text model in the fixtures.
    untested(dense("ministral3", archs::ministral3)),
    dense("gemma3_text", archs::gemma3_text),
    dense("gemma3", archs::gemma3),
    own("gemma3n", mlx::gemma3n::model),
    own("qwen3_5", mlx::qwen3_5::model),
    own("qwen3_5_moe", mlx::qwen3_5::model),
    own("qwen3_next", mlx::qwen3_next::model),
    own("qwen3_moe", mlx::qwen3_moe::model),
    own("qwen3_vl_moe", mlx::qwen3_moe::model_vl),
    own("gemma4", mlx::gemma4::model),
    // The text-only model_type of the same architecture.
    untested(own("gemma4_text", mlx::gemma4::model)),
    own("gpt_oss", mlx::gpt_oss::model),
    own("glm4_moe", mlx::glm4_moe::model),
    own("deepseek_v3", mlx::deepseek_v3::model),
    own("minimax", mlx::minimax::model),
    own("nemotron_h", mlx::nemotron_h::model),
    own("granitemoehybrid", mlx::granitemoehybrid::model),
];

/// The row for `name` in `format`.
pub fn find(format: ModelFormat, name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.format() == format && a.name == name)
}

/// The names in `format` that claim a parity test, in registry order.
pub fn tested(format: ModelFormat) -> Vec<&'static str> {
    ARCHITECTURES.iter().filter(|a| a.format() == format && a.parity.is_some()).map(|a| a.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_name_has_one_row_per_format() {
        for (i, a) in ARCHITECTURES.iter().enumerate() {
            let twins = ARCHITECTURES[i + 1..].iter().filter(|b| b.name == a.name && b.format() == a.format());
            assert_eq!(twins.count(), 0, "{} ({}) twice", a.name, a.format());
        }
    }
}
