//! The inference engine: GGUF weights through Candle, with the KV cache owned per sequence.
//!
//! - [`gguf`]: the file, its metadata and tensors.
//! - [`tokenizer`]: a `tokenizers::Tokenizer` built from GGUF metadata, and incremental
//!   detokenization that never splits a UTF-8 character.
//! - [`template`]: the model's Jinja chat template (or a built-in one) via minijinja.
//! - [`models`]: one file per GGUF family mapping its metadata onto the shared decoder
//!   skeleton ([`models::decoder`]), `forward_batch` over a ragged batch of sequences.
//! - [`kv_cache`]: per-sequence keys and values, outside the model layers.
//! - [`prefix_cache`]: finished sequences' caches kept in host memory, found again by the
//!   longest shared token prefix (recurrent states at snapshots).
//! - [`sampling`]: temperature, top-k/p, min-p, penalties, seed.
//! - [`generate`]: a live sequence (sampling, grammar, stop strings, streaming events,
//!   cancellation) and the scheduler's step: one forward over many sequences.
//! - [`weights`]: which kernels hold the quantized matrices, and the bytes they take.

pub mod arch;
pub mod constraint;
pub mod generate;
pub mod gguf;
pub mod kv_cache;
pub mod layers;
pub mod mlx;
pub mod models;
pub mod prefix_cache;
pub mod sampling;
pub mod spm;
pub mod template;
pub mod tokenizer;
pub mod weights;

pub use generate::{FinishReason, GenerationEvent, GenerationRequest, Usage};
pub use kv_cache::KvCache;
pub use sampling::SamplingParams;
pub use weights::{WeightLayout, WeightMemory};

use std::path::Path;

use candle_core::Device;

use self::gguf::GgufFile;
use self::models::CausalLm;
use self::template::ChatTemplate;
use self::tokenizer::ModelTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot open model {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} is not a GGUF model: {message}")]
    NotGguf { path: String, message: String },
    #[error("model metadata: {0}")]
    Metadata(String),
    #[error("architecture `{0}` is not supported by this build (supported: llama, gemma3)")]
    UnsupportedArch(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template `{name}`: {message}")]
    Template { name: String, message: String },
    #[error("prompt has {prompt} tokens but the context holds {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("inference: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Constraint(#[from] constraint::ConstraintError),
    #[error("device `{0}` is not available in this build (built-in: cpu{1})")]
    Device(String, &'static str),
}

/// Which Candle backend to run on.
pub fn device(name: &str) -> Result<Device, EngineError> {
    let extra = if cfg!(feature = "cuda") {
        ", cuda"
    } else if cfg!(feature = "metal") {
        ", metal"
    } else {
        ""
    };
    match name {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        "cuda" => Ok(Device::new_cuda(0)?),
        #[cfg(feature = "metal")]
        "metal" => Ok(Device::new_metal(0)?),
        other => Err(EngineError::Device(other.to_string(), extra)),
    }
}

/// What a model file says about itself, read from the header without loading weights.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelFacts {
    pub arch: String,
    pub context_length: Option<u32>,
    pub tensors: usize,
    /// `gguf`, `chat_template.jinja`, `tokenizer_config.json`, or `built-in:<family>` when
    /// the model carries no chat template.
    pub chat_template: &'static str,
    /// The weights' bytes in the file and, estimated from the header, on the CPU and a GPU.
    pub weights: Option<weights::WeightFootprint>,
}

pub fn describe(path: &Path) -> Result<ModelFacts, EngineError> {
    if mlx::is_checkpoint_dir(path) {
        return mlx::describe(path);
    }
    let gguf = GgufFile::open(path)?;
    let arch = gguf.architecture()?;
    Ok(ModelFacts {
        context_length: gguf.u32(&format!("{arch}.context_length")).ok(),
        tensors: gguf.content.tensor_infos.len(),
        chat_template: template::template_source(&gguf, &arch).0,
        weights: Some(weights::WeightFootprint::of_gguf(&gguf.content)),
        arch,
    })
}

/// How a model is loaded.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Hold every MLX layer in f32 instead of keeping 4-bit layers packed (exact
    /// arithmetic, 8x the memory; the strict parity tests use it).
    pub mlx_dequantize_all: bool,
    /// Which kernels hold the quantized matrices ([`WeightLayout::Candle`] puts the GPU's
    /// layout on the CPU too).
    pub layout: WeightLayout,
}

/// A loaded model: weights, tokenizer, chat template.
pub struct Engine {
    pub model: Box<dyn CausalLm>,
    pub tokenizer: ModelTokenizer,
    pub template: ChatTemplate,
    pub arch: String,
    pub device: Device,
    /// The bytes the weights hold on `device`, by tensor name.
    pub weights: WeightMemory,
    /// Built on first use: the token trie costs a moment and most servers never need it.
    grammar: std::sync::OnceLock<Result<constraint::GrammarCompiler, String>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("arch", &self.arch).finish_non_exhaustive()
    }
}

impl Engine {
    /// Loads a GGUF file or an MLX checkpoint directory, showing progress on stderr when
    /// `progress` is set. `RAPID_HOST_MLX_DEQUANTIZE=1` holds every MLX layer in f32.
    pub fn load(path: &Path, device: Device, progress: bool) -> Result<Self, EngineError> {
        let options = LoadOptions {
            mlx_dequantize_all: std::env::var_os("RAPID_HOST_MLX_DEQUANTIZE").is_some(),
            layout: WeightLayout::default(),
        };
        Self::load_with(path, device, progress, &options)
    }

    pub fn load_with(path: &Path, device: Device, progress: bool, options: &LoadOptions) -> Result<Self, EngineError> {
        if mlx::is_checkpoint_dir(path) {
            return Self::load_mlx(path, device, progress, options);
        }
        let mut gguf = GgufFile::open(path)?;
        gguf.layout = options.layout;
        let arch = gguf.architecture()?;
        let tokenizer = ModelTokenizer::from_gguf(&gguf)?;
        let template = ChatTemplate::from_gguf(&gguf, &arch, &tokenizer)?;
        gguf.drop_vocabulary();
        let model = models::load(&arch, &mut gguf, &device, progress)?;
        let weights = std::mem::take(&mut gguf.held);
        Ok(Self { model, tokenizer, template, arch, device, weights, grammar: std::sync::OnceLock::new() })
    }

    /// The grammar compiler for this model's vocabulary.
    pub fn grammar(&self) -> Result<&constraint::GrammarCompiler, EngineError> {
        self.grammar
            .get_or_init(|| constraint::GrammarCompiler::new(&self.tokenizer).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| EngineError::Constraint(constraint::ConstraintError::Setup(e.clone())))
    }

    fn load_mlx(dir: &Path, device: Device, progress: bool, options: &LoadOptions) -> Result<Self, EngineError> {
        let mut ckpt = mlx::Checkpoint::open(dir)?;
        ckpt.dequantize_all = options.mlx_dequantize_all;
        ckpt.layout = options.layout;
        let arch = ckpt.model_type()?;
        let tokenizer = ModelTokenizer::from_dir(dir, &ckpt.config)?;
        let template = ChatTemplate::from_dir(dir, &tokenizer)?;
        let model = mlx::load(&ckpt, &device, progress)?;
        let weights = ckpt.held();
        Ok(Self { model, tokenizer, template, arch, device, weights, grammar: std::sync::OnceLock::new() })
    }

    /// `96.1 MiB of weights on cuda`: what the start-up banner and `generate` print.
    pub fn weight_summary(&self) -> String {
        format!("{} of weights on {}", weights::human_bytes(self.weights.total()), weights::device_name(&self.device))
    }

    pub fn context_length(&self) -> usize {
        self.model.context_length()
    }
}
