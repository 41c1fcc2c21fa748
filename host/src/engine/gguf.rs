//! A GGUF file: metadata and quantized tensors.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::{QTensor, gguf_file};

use super::EngineError;

#[allow(missing_debug_implementations)]
pub struct GgufFile {
    pub path: PathBuf,
    pub content: gguf_file::Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, EngineError> {
        let file = File::open(path).map_err(|source| EngineError::Open { path: path.display().to_string(), source })?;
        let mut reader = BufReader::new(file);
        let content = gguf_file::Content::read(&mut reader)
            .map_err(|e| EngineError::NotGguf { path: path.display().to_string(), message: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), content, reader })
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

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    pub fn tensor(&mut self, name: &str, device: &Device) -> Result<QTensor, EngineError> {
        Ok(self.content.tensor(&mut self.reader, name, device)?)
    }
}
