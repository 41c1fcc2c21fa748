//! MLX-format checkpoints (mlx-community layout): `config.json`, sharded safetensors whose
//! linear layers are quantized the MLX way, `tokenizer.json` and the chat template.
//!
//! - [`quant`]: MLX affine (2/3/4/5/6/8-bit) and mxfp4 packing, unpacked to f32.
//! - [`dense`]: the dense decoder shared by the Llama-like architectures.
//! - [`archs`]: one `Config` per architecture, read from its own `config.json` names.
//! - [`qwen3_next`], [`qwen3_5`]: the hybrid decoder with gated delta-net layers
//!   ([`gated_delta`]) whose recurrent state lives in the engine's [`KvCache`](super::KvCache).
//! - [`gpt_oss`], [`glm4_moe`], [`deepseek_v3`] (multi-head latent attention), [`minimax`]:
//!   MoE decoders of their own, built from the shared pieces in [`moe`] (experts that run
//!   only on the tokens routed to them, mlx-lm's routers, attention with sinks).
//! - [`qwen3_moe`] (also `qwen3_vl_moe`'s text model), [`gemma3n`], [`gemma4`]: architectures
//!   with their own files; [`switch`]: the stacked experts of the MoE ones.
//! - [`nemotron_h`], [`granitemoehybrid`]: Mamba-2 hybrids ([`mamba2`]), their convolution
//!   and SSM state in the same per-sequence cache.
//!
//! [`load`] picks the model for a checkpoint's `model_type`.
//!
//! How weights are held: 4-bit affine linear layers whose scales and biases are f16 values
//! (bf16 checkpoints: all but the tiniest) are repacked as GGUF Q4_1 blocks holding exactly
//! the same weights and run through our Q4_1 kernel with 8-bit activations (~0.6 bytes per
//! weight), wherever an architecture loads them with [`Checkpoint::packed_linear`] or
//! [`Checkpoint::packed_experts`]: the dense decoder, gemma4, qwen3_next / qwen3_5, and the
//! MLPs and stacked experts of [`moe`] and [`switch`]. Everything else (other bit widths,
//! mxfp4, the remaining files, or
//! [`Checkpoint::dequantize_all`]) is dequantized to f32 at load time, bit for bit what
//! `mx.dequantize` gives, at 4 bytes per weight. The parity tests check both against mlx-lm.
//!
//! On a GPU (or in [`WeightLayout::Candle`]) the same layers go to Candle's quantized matmul
//! on the device instead of our CPU kernel ([`quant::QuantLinear`]): 4-bit as the same Q4_1
//! blocks, the other affine widths as Q8_0 codes with per-group offsets; 4-bit embedding
//! tables as a Q4_1 tensor that Candle looks rows up in. mxfp4 and non-f16 scales stay f32.

pub mod archs;
pub mod deepseek_v3;
pub mod dense;
pub mod gated_delta;
pub mod gemma3n;
pub mod gemma4;
pub mod glm4_moe;
pub mod gpt_oss;
pub mod granitemoehybrid;
pub mod mamba2;
pub mod minimax;
pub mod moe;
pub mod nemotron_h;
pub mod quant;
pub mod qwen3_5;
pub mod qwen3_moe;
pub mod qwen3_next;
pub mod switch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::EngineError;
use super::models::CausalLm;
use super::weights::{WeightLayout, WeightMemory, tensor_bytes};

/// How one module's weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuantSpec {
    pub bits: usize,
    pub group_size: usize,
    pub mxfp4: bool,
}

/// The model for the checkpoint's `model_type`, as its row in the architecture registry
/// ([`crate::engine::arch`]) builds it: the dense decoder with the architecture's
/// [`dense::DenseSpec`], or a file of its own.
pub fn load(ckpt: &Checkpoint, device: &Device, progress: bool) -> Result<Box<dyn CausalLm>, EngineError> {
    use super::arch::{self, Loader};
    let model_type = ckpt.model_type()?;
    match arch::find(crate::registry::ModelFormat::Mlx, &model_type).map(|a| a.loader) {
        Some(Loader::Dense(spec)) => {
            Ok(Box::new(dense::load(ckpt, spec(&model_type, &ckpt.config)?, device, progress)?))
        }
        Some(Loader::Mlx(load)) => load(ckpt, &model_type, device, progress),
        Some(Loader::Gguf(_)) | None => Err(EngineError::UnsupportedArch(model_type)),
    }
}

/// An MLX checkpoint directory, loaded.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: Value,
    tensors: HashMap<String, Tensor>,
    default_quant: Option<QuantSpec>,
    /// Dequantize every layer to f32 instead of keeping 4-bit layers packed.
    pub dequantize_all: bool,
    /// Which kernels the packed layers go to.
    pub layout: WeightLayout,
    /// What the loaders handed to the model, by tensor name.
    held: std::sync::Mutex<WeightMemory>,
}

fn meta(message: impl Into<String>) -> EngineError {
    EngineError::Metadata(message.into())
}

/// Whether `path` looks like an MLX / Hugging Face checkpoint directory.
pub fn is_checkpoint_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

/// What a checkpoint directory says about itself, without loading weights.
pub fn describe(dir: &Path) -> Result<super::ModelFacts, EngineError> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let config: Value = read("config.json")
        .and_then(|t| parse_config(&t).ok())
        .ok_or_else(|| meta(format!("{}: unreadable config.json", dir.display())))?;
    let context = config
        .get("max_position_embeddings")
        .or_else(|| config.pointer("/text_config/max_position_embeddings"))
        .and_then(Value::as_u64)
        .map(|c| c as u32);
    let tensors = read("model.safetensors.index.json")
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["weight_map"].as_object().map(serde_json::Map::len))
        .unwrap_or(0);
    let has_template = read("tokenizer_config.json").is_some_and(|t| t.contains("\"chat_template\""));
    let chat_template = if dir.join("chat_template.jinja").is_file() {
        "chat_template.jinja"
    } else if has_template {
        "tokenizer_config.json"
    } else {
        "built-in:chatml"
    };
    Ok(super::ModelFacts {
        arch: config["model_type"].as_str().unwrap_or("?").to_string(),
        context_length: context,
        tensors,
        chat_template,
        weights: footprint(dir, &config),
    })
}

/// The checkpoint's weights from its safetensors headers (no weights read); `None` when a
/// header cannot be read.
fn footprint(dir: &Path, config: &Value) -> Option<super::weights::WeightFootprint> {
    use std::io::Read;
    let index = std::fs::read_to_string(dir.join("model.safetensors.index.json")).ok();
    let mut files: Vec<String> = match index.and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
        Some(index) => index["weight_map"].as_object()?.values().filter_map(Value::as_str).map(String::from).collect(),
        None => vec![String::from("model.safetensors")],
    };
    files.sort();
    files.dedup();
    // name -> (dtype, shape)
    let mut tensors: HashMap<String, (String, Vec<usize>)> = HashMap::new();
    for file in files {
        let mut f = std::fs::File::open(dir.join(file)).ok()?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).ok()?;
        let mut header = vec![0u8; usize::try_from(u64::from_le_bytes(len)).ok()?.min(1 << 28)];
        f.read_exact(&mut header).ok()?;
        let header: Value = serde_json::from_slice(&header).ok()?;
        for (name, info) in header.as_object()? {
            let Some(dtype) = info["dtype"].as_str() else { continue };
            let shape = info["shape"].as_array()?.iter().filter_map(Value::as_u64).map(|d| d as usize).collect();
            tensors.insert(name.clone(), (dtype.to_string(), shape));
        }
    }
    let bytes = |(dtype, shape): &(String, Vec<usize>)| -> usize {
        let size = match dtype.as_str() {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            _ => 1,
        };
        shape.iter().product::<usize>() * size
    };
    let quant = config.get("quantization");
    let mut f = super::weights::WeightFootprint::default();
    for (name, t) in &tensors {
        if name.ends_with(".scales") || name.ends_with(".biases") {
            continue;
        }
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let Some(scales) = tensors.get(&format!("{prefix}.scales")) else {
            f.add(bytes(t), t.1.iter().product::<usize>() * 4, t.1.iter().product::<usize>() * 4);
            continue;
        };
        let spec = quant.and_then(|q| q.get(prefix)).filter(|v| v.is_object()).or(quant);
        let get = |key: &str| spec.and_then(|s| s.get(key)).and_then(Value::as_u64).map(|v| v as usize);
        let mxfp4 = scales.0 == "U8";
        let (bits, group) = if mxfp4 { (4, 32) } else { (get("bits").unwrap_or(4), get("group_size").unwrap_or(64)) };
        let file = bytes(t) + bytes(scales) + tensors.get(&format!("{prefix}.biases")).map_or(0, bytes);
        let Some((&packed_cols, lead)) = t.1.split_last() else { continue };
        f.add_mlx_layer(file, lead.iter().product(), packed_cols * 32 / bits.max(1), bits, group, mxfp4);
    }
    Some(f)
}

impl Checkpoint {
    pub fn open(dir: &Path) -> Result<Self, EngineError> {
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .map_err(|source| EngineError::Open { path: dir.join(name).display().to_string(), source })
        };
        let config: Value = parse_config(&read("config.json")?).map_err(|e| meta(format!("config.json: {e}")))?;
        let mut files: Vec<String> = match read("model.safetensors.index.json") {
            Ok(index) => {
                let index: Value =
                    serde_json::from_str(&index).map_err(|e| meta(format!("model.safetensors.index.json: {e}")))?;
                let map = index["weight_map"].as_object().ok_or_else(|| meta("index has no `weight_map`"))?;
                map.values().filter_map(Value::as_str).map(str::to_string).collect()
            }
            Err(_) => vec![String::from("model.safetensors")],
        };
        files.sort();
        files.dedup();
        let mut tensors = HashMap::new();
        for file in files {
            let path = dir.join(&file);
            let loaded = candle_core::safetensors::load(&path, &Device::Cpu)
                .map_err(|e| meta(format!("{}: {e}", path.display())))?;
            tensors.extend(loaded);
        }
        let default_quant = config.get("quantization").map(quant_spec).transpose()?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            tensors,
            default_quant,
            dequantize_all: false,
            layout: WeightLayout::default(),
            held: std::sync::Mutex::default(),
        })
    }

    pub fn model_type(&self) -> Result<String, EngineError> {
        self.config["model_type"].as_str().map(str::to_string).ok_or_else(|| meta("config.json has no `model_type`"))
    }

    /// The stored shape of tensor `name` (packed, for quantized weights).
    pub fn raw_dims(&self, name: &str) -> Result<Vec<usize>, EngineError> {
        Ok(self.raw(name)?.dims().to_vec())
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn raw(&self, name: &str) -> Result<&Tensor, EngineError> {
        self.tensors.get(name).ok_or_else(|| meta(format!("checkpoint has no tensor `{name}`")))
    }

    /// A plain tensor as f32 on `device`.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor, EngineError> {
        let t = self.raw(name)?.to_dtype(DType::F32)?.to_device(device)?;
        self.record(name, tensor_bytes(&t));
        Ok(t)
    }

    /// Notes that the model holds `bytes` for tensor `name`.
    fn record(&self, name: &str, bytes: usize) {
        if let Ok(mut held) = self.held.lock() {
            held.record(name, bytes);
        }
    }

    /// What the loaders handed to the model so far, by tensor name.
    pub fn held(&self) -> WeightMemory {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    /// The bytes tensors whose names start with `prefix` take in the checkpoint's files.
    pub fn file_bytes(&self, prefix: &str) -> usize {
        self.tensors.iter().filter(|(name, _)| name.starts_with(prefix)).map(|(_, t)| tensor_bytes(t)).sum()
    }

    /// The quantization of module `prefix`: a per-module override in `config.json`, else the
    /// global block; `None` when the module has no `scales` (stored unquantized).
    fn quant_of(&self, prefix: &str) -> Result<Option<QuantSpec>, EngineError> {
        if !self.has(&format!("{prefix}.scales")) {
            return Ok(None);
        }
        if let Some(spec) = self.config.get("quantization").and_then(|q| q.get(prefix)).filter(|v| v.is_object()) {
            return quant_spec(spec).map(Some);
        }
        // mlx-lm infers mxfp4 from uint8 scales.
        let mxfp4 = self.raw(&format!("{prefix}.scales"))?.dtype() == DType::U8;
        match self.default_quant {
            Some(spec) if mxfp4 == spec.mxfp4 => Ok(Some(spec)),
            _ if mxfp4 => Ok(Some(QuantSpec { bits: 4, group_size: 32, mxfp4: true })),
            Some(spec) => Ok(Some(QuantSpec { mxfp4: false, ..spec })),
            None => Err(meta(format!("`{prefix}` is quantized but config.json has no `quantization`"))),
        }
    }

    /// The weight of module `prefix` (`prefix.weight`, dequantized when quantized) as f32
    /// `[..., out, in]`.
    pub fn weight(&self, prefix: &str, device: &Device) -> Result<Tensor, EngineError> {
        let name = format!("{prefix}.weight");
        let Some(spec) = self.quant_of(prefix)? else { return self.tensor(&name, device) };
        let packed = self.raw(&name)?;
        let dims = packed.dims().to_vec();
        let Some((&packed_cols, lead)) = dims.split_last() else {
            return Err(meta(format!("`{name}` is a scalar")));
        };
        let in_features = packed_cols * 32 / spec.bits;
        let words: Vec<u32> = packed.flatten_all()?.to_vec1()?;
        let scales_t = self.raw(&format!("{prefix}.scales"))?;
        let values = if spec.mxfp4 {
            let scales: Vec<u8> = scales_t.flatten_all()?.to_vec1()?;
            quant::dequantize_mxfp4(&words, &scales, in_features, spec.group_size)
        } else {
            let scales: Vec<f32> = scales_t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let biases: Vec<f32> =
                self.raw(&format!("{prefix}.biases"))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            quant::dequantize_affine(&words, &scales, &biases, in_features, spec.bits, spec.group_size)
        }
        .map_err(|e| meta(format!("`{name}`: {e}")))?;
        let mut shape = lead.to_vec();
        shape.push(in_features);
        let t = Tensor::from_vec(values, shape, device)?;
        self.record(&name, tensor_bytes(&t));
        Ok(t)
    }

    /// `prefix.bias` when the module has one (never quantized).
    pub fn bias(&self, prefix: &str, device: &Device) -> Result<Option<Tensor>, EngineError> {
        let name = format!("{prefix}.bias");
        if self.has(&name) { self.tensor(&name, device).map(Some) } else { Ok(None) }
    }

    /// A linear layer `prefix` (weight and optional bias).
    pub fn linear(&self, prefix: &str, device: &Device) -> Result<candle_nn::Linear, EngineError> {
        Ok(candle_nn::Linear::new(self.weight(prefix, device)?, self.bias(prefix, device)?))
    }

    /// A linear layer that stays packed when that is exact (see the module docs).
    pub fn packed_linear(&self, prefix: &str, device: &Device) -> Result<MlxLinear, EngineError> {
        if let Some(matrix) = self.q4_1(prefix, device)? {
            return Ok(MlxLinear::Packed { matrix, bias: self.bias(prefix, device)? });
        }
        if !self.layout.ours(device)
            && self.raw(&format!("{prefix}.weight"))?.rank() == 2
            && let Some(blocks) = self.host_blocks(prefix)?
        {
            let layer = blocks.upload(device)?;
            self.record(&format!("{prefix}.weight"), layer.bytes());
            return Ok(MlxLinear::Quantized { layer, bias: self.bias(prefix, device)? });
        }
        Ok(MlxLinear::Dense(self.linear(prefix, device)?))
    }

    /// Module `prefix` (an embedding table) as a Q4_1 tensor on `device` for Candle's
    /// kernels, when it is a 4-bit affine matrix with f16-exact scales and biases and the
    /// layout puts packed layers on Candle's kernels.
    pub fn quantized_table(
        &self,
        prefix: &str,
        device: &Device,
    ) -> Result<Option<std::sync::Arc<candle_core::quantized::QTensor>>, EngineError> {
        if self.layout.ours(device) || self.raw(&format!("{prefix}.weight"))?.rank() != 2 {
            return Ok(None);
        }
        match self.host_blocks(prefix)? {
            Some(blocks) if blocks.offsets.is_none() => {
                let table = blocks.qtensor(device)?;
                self.record(&format!("{prefix}.weight"), super::weights::qtensor_bytes(&table));
                Ok(Some(std::sync::Arc::new(table)))
            }
            _ => Ok(None),
        }
    }

    /// Module `prefix`'s affine codes as ggml blocks (every leading dimension folded into
    /// rows): Q4_1 for 4 bits, Q8_0 with offsets for the other widths; `None` for mxfp4,
    /// scales (or 4-bit biases) that are no f16 values, or [`Self::dequantize_all`].
    fn host_blocks(&self, prefix: &str) -> Result<Option<quant::HostBlocks>, EngineError> {
        use candle_core::quantized::GgmlDType;
        if self.dequantize_all {
            return Ok(None);
        }
        let Some(spec) = self.quant_of(prefix)? else { return Ok(None) };
        if spec.mxfp4 {
            return Ok(None);
        }
        let packed = self.raw(&format!("{prefix}.weight"))?;
        let Some((&packed_cols, lead)) = packed.dims().split_last() else { return Ok(None) };
        let rows: usize = lead.iter().product();
        let cols = packed_cols * 32 / spec.bits;
        let words: Vec<u32> = packed.flatten_all()?.to_vec1()?;
        let floats = |name: &str| -> Result<Vec<f32>, EngineError> {
            Ok(self.raw(&format!("{prefix}.{name}"))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let (scales, biases) = (floats("scales")?, floats("biases")?);
        if spec.bits == 4
            && let Some(data) = quant::affine4_to_q4_1(&words, &scales, &biases, cols, spec.group_size)
        {
            return Ok(Some(quant::HostBlocks { dtype: GgmlDType::Q4_1, rows, cols, data, offsets: None }));
        }
        Ok(quant::affine_to_q8_0(&words, &scales, &biases, cols, spec.bits, spec.group_size).map(|(data, offsets)| {
            quant::HostBlocks { dtype: GgmlDType::Q8_0, rows, cols, data, offsets: Some((offsets, spec.group_size)) }
        }))
    }

    /// Module `prefix` as Q4_1 blocks, when it is a 4-bit affine matrix with f16-exact
    /// scales and biases and packing is on.
    pub fn q4_1(&self, prefix: &str, device: &Device) -> Result<Option<rapid_kernels::QuantMatrix>, EngineError> {
        if self.raw(&format!("{prefix}.weight"))?.rank() != 2 {
            return Ok(None);
        }
        self.q4_1_rows(prefix, device)
    }

    /// As [`Self::q4_1`], with every leading dimension (stacked experts) folded into rows.
    fn q4_1_rows(&self, prefix: &str, device: &Device) -> Result<Option<rapid_kernels::QuantMatrix>, EngineError> {
        if self.dequantize_all || !self.layout.ours(device) {
            return Ok(None);
        }
        let Some(spec) = self.quant_of(prefix)? else { return Ok(None) };
        if spec.mxfp4 || spec.bits != 4 {
            return Ok(None);
        }
        let packed = self.raw(&format!("{prefix}.weight"))?;
        let Some((&packed_cols, lead)) = packed.dims().split_last() else { return Ok(None) };
        let rows: usize = lead.iter().product();
        let in_features = packed_cols * 8;
        let words: Vec<u32> = packed.flatten_all()?.to_vec1()?;
        let floats = |name: &str| -> Result<Vec<f32>, EngineError> {
            Ok(self.raw(&format!("{prefix}.{name}"))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
        };
        let Some(blocks) =
            quant::affine4_to_q4_1(&words, &floats("scales")?, &floats("biases")?, in_features, spec.group_size)
        else {
            return Ok(None);
        };
        let matrix = rapid_kernels::QuantMatrix::new(rapid_kernels::Format::Q4_1, rows, in_features, blocks)
            .map_err(|e| meta(format!("`{prefix}`: {e}")))?;
        self.record(&format!("{prefix}.weight"), matrix.bytes());
        Ok(Some(matrix))
    }

    /// The `count` experts stacked in module `prefix` (`[E, out, in]`), each its own layer
    /// with its row of `prefix.bias` when there is one: packed when exact, else f32.
    pub fn packed_experts(&self, prefix: &str, count: usize, device: &Device) -> Result<Vec<MlxLinear>, EngineError> {
        let bias = self.bias(prefix, device)?;
        let bias_of =
            |e: usize| -> Result<Option<Tensor>, EngineError> { Ok(bias.as_ref().map(|b| b.get(e)).transpose()?) };
        let shape_error =
            |dims: &[usize]| meta(format!("{prefix} has shape {dims:?}, expected {count} stacked experts"));
        let stored = self.raw_dims(&format!("{prefix}.weight"))?;
        if stored.len() != 3 || stored[0] != count {
            return Err(shape_error(&stored));
        }
        if let Some(all) = self.q4_1_rows(prefix, device)? {
            if count == 0 || !all.rows().is_multiple_of(count) {
                return Err(shape_error(&[all.rows(), all.cols()]));
            }
            let per = all.rows() / count;
            let parts = all.split_rows(&vec![per; count]).map_err(|e| meta(format!("`{prefix}`: {e}")))?;
            return parts
                .into_iter()
                .enumerate()
                .map(|(e, matrix)| Ok(MlxLinear::Packed { matrix, bias: bias_of(e)? }))
                .collect();
        }
        if !self.layout.ours(device)
            && let Some(all) = self.host_blocks(prefix)?
        {
            if count == 0 || !all.rows.is_multiple_of(count) {
                return Err(shape_error(&[all.rows, all.cols]));
            }
            let per = all.rows / count;
            let parts = all.split_rows(&vec![per; count]).map_err(|e| meta(format!("`{prefix}`: {e}")))?;
            let mut experts = Vec::with_capacity(count);
            let mut bytes = 0;
            for (e, part) in parts.iter().enumerate() {
                let layer = part.upload(device)?;
                bytes += layer.bytes();
                experts.push(MlxLinear::Quantized { layer, bias: bias_of(e)? });
            }
            self.record(&format!("{prefix}.weight"), bytes);
            return Ok(experts);
        }
        let w = self.weight(prefix, device)?;
        if w.rank() != 3 || w.dim(0)? != count {
            return Err(shape_error(w.dims()));
        }
        (0..count).map(|e| Ok(dense_linear(w.get(e)?, bias_of(e)?))).collect()
    }
}

/// A dense (f32) layer from a weight and an optional bias, for layers built from
/// reshaped or split tensors.
pub fn dense_linear(weight: Tensor, bias: Option<Tensor>) -> MlxLinear {
    MlxLinear::Dense(candle_nn::Linear::new(weight, bias))
}

/// A linear layer of an MLX checkpoint: packed Q4_1 blocks through our kernel, ggml
/// blocks through Candle's quantized matmul (GPUs), or f32.
#[derive(Clone)]
pub enum MlxLinear {
    Dense(candle_nn::Linear),
    Packed { matrix: rapid_kernels::QuantMatrix, bias: Option<Tensor> },
    Quantized { layer: quant::QuantLinear, bias: Option<Tensor> },
}

impl std::fmt::Debug for MlxLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dense(linear) => write!(f, "MlxLinear::Dense({:?})", linear.weight().dims()),
            Self::Packed { matrix, .. } => write!(f, "MlxLinear::Packed(Q4_1 {}x{})", matrix.rows(), matrix.cols()),
            Self::Quantized { layer, .. } => write!(f, "MlxLinear::Quantized({layer:?})"),
        }
    }
}

impl MlxLinear {
    /// Consecutive output rows as layers of their own (fused `qkv_proj`, `gate_up_proj`).
    pub fn split_rows(self, sizes: &[usize]) -> candle_core::Result<Vec<Self>> {
        let narrow_bias =
            |bias: &Option<Tensor>, start: usize, n: usize| bias.as_ref().map(|b| b.narrow(0, start, n)).transpose();
        let mut parts = Vec::with_capacity(sizes.len());
        let mut start = 0;
        match self {
            Self::Dense(linear) => {
                let bias = linear.bias().cloned();
                for &n in sizes {
                    let w = linear.weight().narrow(0, start, n)?.contiguous()?;
                    parts.push(Self::Dense(candle_nn::Linear::new(w, narrow_bias(&bias, start, n)?)));
                    start += n;
                }
            }
            Self::Packed { matrix, bias } => {
                for (part, &n) in matrix.split_rows(sizes).map_err(candle_core::Error::wrap)?.into_iter().zip(sizes) {
                    parts.push(Self::Packed { matrix: part, bias: narrow_bias(&bias, start, n)? });
                    start += n;
                }
            }
            Self::Quantized { layer, bias } => {
                let device = layer.device();
                let host = layer.to_host()?;
                drop(layer);
                for (part, &n) in host.split_rows(sizes).map_err(candle_core::Error::msg)?.iter().zip(sizes) {
                    parts.push(Self::Quantized { layer: part.upload(&device)?, bias: narrow_bias(&bias, start, n)? });
                    start += n;
                }
            }
        }
        Ok(parts)
    }

    pub fn out_features(&self) -> candle_core::Result<usize> {
        match self {
            Self::Dense(linear) => linear.weight().dim(0),
            Self::Packed { matrix, .. } => Ok(matrix.rows()),
            Self::Quantized { layer, .. } => Ok(layer.rows()),
        }
    }
}

impl candle_core::Module for MlxLinear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Dense(linear) => linear.forward(x),
            Self::Packed { matrix, bias } => {
                let y = super::models::packed_matmul(matrix, x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
            Self::Quantized { layer, bias } => {
                let y = layer.forward(x)?;
                match bias {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// Parses `config.json`. Python's `json` writes non-finite floats as the bare literals
/// `Infinity`, `-Infinity` and `NaN` (transformers does for the Mamba-2 default
/// `time_step_limit` of `(0, inf)`), which strict JSON rejects; when the strict parse fails
/// those literals (outside strings) are read as the strings `"Infinity"`, `"-Infinity"`,
/// `"NaN"`, for the config field that expects a float there to interpret.
pub fn parse_config(text: &str) -> serde_json::Result<Value> {
    let strict = match serde_json::from_str(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let mut quoted = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if !in_string && let Some(literal) = ["-Infinity", "Infinity", "NaN"].into_iter().find(|l| rest.starts_with(l))
        {
            quoted.push('"');
            quoted.push_str(literal);
            quoted.push('"');
            rest = &rest[literal.len()..];
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        }
        quoted.push(c);
        rest = &rest[c.len_utf8()..];
    }
    // The first error is the one about the file as written.
    serde_json::from_str(&quoted).map_err(|_| strict)
}

fn quant_spec(value: &Value) -> Result<QuantSpec, EngineError> {
    let get = |key: &str| value.get(key).and_then(Value::as_u64).map(|v| v as usize);
    let mode = value.get("mode").and_then(Value::as_str).unwrap_or("affine");
    let spec = QuantSpec {
        bits: get("bits").ok_or_else(|| meta("`quantization` has no `bits`"))?,
        group_size: get("group_size").ok_or_else(|| meta("`quantization` has no `group_size`"))?,
        mxfp4: mode == "mxfp4",
    };
    if !matches!(mode, "affine" | "mxfp4") {
        return Err(meta(format!("quantization mode `{mode}` is not supported (affine, mxfp4)")));
    }
    if !matches!(spec.bits, 2..=8) || spec.group_size == 0 {
        return Err(meta(format!("unsupported quantization: {} bits, group size {}", spec.bits, spec.group_size)));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_non_finite_floats_read_as_strings() {
        let text = r#"{"time_step_limit": [0.0, Infinity], "x": -Infinity, "y": NaN, "s": "Infinity \" NaN"}"#;
        let v = parse_config(text).expect("parses");
        assert_eq!(v["time_step_limit"], serde_json::json!([0.0, "Infinity"]));
        assert_eq!(v["x"], "-Infinity");
        assert_eq!(v["y"], "NaN");
        assert_eq!(v["s"], "Infinity \" NaN");
        assert!(parse_config("{\"a\": Inf}").is_err());
    }
}
