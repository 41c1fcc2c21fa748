//! A GGUF file: metadata and quantized tensors.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};

use super::EngineError;

/// A matrix as its GGUF blocks: `rows` (output features) of `cols` values.
#[derive(Debug)]
pub struct RawTensor {
    pub dtype: candle_core::quantized::GgmlDType,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<u8>,
}

#[allow(missing_debug_implementations)]
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    reader: BufReader<File>,
    /// Which kernels the loaders put the quantized matrices in.
    pub layout: super::weights::WeightLayout,
    /// What the loaders handed to the model, by tensor name.
    pub held: super::weights::WeightMemory,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        use std::io::{Read, Seek};

        let file = File::open(path).map_err(|source| EngineError::Open { path: path.display().to_string(), source })?;
        let mut reader = BufReader::new(file);
        let not_gguf = |message: String| EngineError::NotGguf { path: path.display().to_string(), message };
        // The magic bytes first, in our words: the parser's error would quote the file's
        // first bytes, and the path may be any file at all.
        let mut magic = [0u8; 4];
        let starts_gguf = reader.read_exact(&mut magic).is_ok() && (&magic == b"GGUF" || &magic == b"FUGG");
        if !starts_gguf {
            return Err(not_gguf(String::from("it does not start with the GGUF magic bytes")));
        }
        reader.rewind().map_err(|e| not_gguf(e.to_string()))?;
        let content = gguf_file::Content::read(&mut reader).map_err(|e| not_gguf(e.to_string()))?;
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
            layout: super::weights::WeightLayout::default(),
            held: super::weights::WeightMemory::default(),
        })
    }

    pub fn architecture(&self) -> Result<String, EngineError> {
        self.string("general.architecture")
    }

    pub fn get(&self, key: &str) -> Option<&gguf_file::Value> {
        self.content.metadata.get(key)
    }

    fn missing(key: &str) -> EngineError {
        EngineError::Metadata(format!("missing `{key}`"))
    }

    pub fn string(&self, key: &str) -> Result<String, EngineError> {
        self.get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_string()
            .cloned()
            .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
    }

    pub fn u32(&self, key: &str) -> Result<u32, EngineError> {
        self.get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_u32()
            .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
    }

    pub fn f32(&self, key: &str) -> Result<f32, EngineError> {
        self.get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_f32()
            .map_err(|e| EngineError::Metadata(format!("`{key}`: {e}")))
    }

    pub fn u32_or(&self, key: &str, default: u32) -> u32 {
        self.get(key).and_then(|v| v.to_u32().ok()).unwrap_or(default)
    }

    pub fn f32_or(&self, key: &str, default: f32) -> f32 {
        self.get(key).and_then(|v| v.to_f32().ok()).unwrap_or(default)
    }

    pub fn strings(&self, key: &str) -> Result<Vec<String>, EngineError> {
        let values = self
            .get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_vec()
            .map_err(|e| EngineError::Metadata(e.to_string()))?;
        values.iter().map(|v| v.to_string().cloned().map_err(|e| EngineError::Metadata(e.to_string()))).collect()
    }

    pub fn i32s(&self, key: &str) -> Result<Vec<i32>, EngineError> {
        let values = self
            .get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_vec()
            .map_err(|e| EngineError::Metadata(e.to_string()))?;
        values.iter().map(|v| v.to_i32().map_err(|e| EngineError::Metadata(e.to_string()))).collect()
    }

    pub fn f32s(&self, key: &str) -> Result<Vec<f32>, EngineError> {
        let values = self
            .get(key)
            .ok_or_else(|| Self::missing(key))?
            .to_vec()
            .map_err(|e| EngineError::Metadata(e.to_string()))?;
        values.iter().map(|v| v.to_f32().map_err(|e| EngineError::Metadata(e.to_string()))).collect()
    }

    /// Frees the vocabulary arrays (`tokenizer.ggml.tokens`, `.scores`, `.merges`, ...) once
    /// the tokenizer is built from them: for gemma's 262k-token vocabulary tens of MB that
    /// would otherwise stay resident while the weights load.
    pub fn drop_vocabulary(&mut self) {
        self.content
            .metadata
            .retain(|key, value| !(key.starts_with("tokenizer.ggml.") && matches!(value, gguf_file::Value::Array(_))));
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Tensor `name` on `device`, recorded in [`Self::held`] at its size there (a loader
    /// that keeps it in another form records that instead).
    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        let tensor = self.content.tensor(&mut self.reader, name, device)?;
        self.held.record(name, super::weights::qtensor_bytes(&tensor));
        Ok(tensor)
    }

    /// The bytes tensor `name` takes in the file.
    pub fn file_bytes(&self, name: &str) -> Option<usize> {
        let info = self.content.tensor_infos.get(name)?;
        let dtype = info.ggml_dtype;
        Some(info.shape.elem_count() / dtype.block_size() * dtype.type_size())
    }

    /// A matrix's raw GGUF blocks, read straight from the file: for weights our own kernels
    /// hold, without a Candle tensor (and a second copy) between.
    pub fn raw_tensor(&mut self, name: &str) -> Result<RawTensor, EngineError> {
        use std::io::{Read, Seek, SeekFrom};
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::Metadata(format!("tensor `{name}` is missing")))?;
        let dims = info.shape.dims2().map_err(|_| EngineError::Metadata(format!("tensor `{name}` is not a matrix")))?;
        let dtype = info.ggml_dtype;
        let elements = info.shape.elem_count();
        if !elements.is_multiple_of(dtype.block_size()) {
            return Err(EngineError::Metadata(format!("tensor `{name}` does not fill its {dtype:?} blocks")));
        }
        let bytes = elements / dtype.block_size() * dtype.type_size();
        let start = self.content.tensor_data_offset + info.offset;
        let mut data = vec![0u8; bytes];
        self.reader.seek(SeekFrom::Start(start)).map_err(|e| EngineError::Metadata(format!("{name}: {e}")))?;
        self.reader.read_exact(&mut data).map_err(|e| EngineError::Metadata(format!("{name}: {e}")))?;
        Ok(RawTensor { dtype, rows: dims.0, cols: dims.1, data })
    }
}
