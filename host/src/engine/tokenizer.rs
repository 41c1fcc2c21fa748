//! Tokenizers built from GGUF metadata (`tokenizer.ggml.*`), and incremental
//! detokenization for streaming.

use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, Tokenizer};

use std::sync::Arc;

use super::EngineError;
use super::gguf::GgufFile;
use super::spm::SpmModel;

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

/// What turns text into ids and back: a `tokenizers` pipeline (GPT-2 byte-level vocabularies,
/// `tokenizer.json` files), or SentencePiece as llama.cpp runs it (GGUF `llama` vocabularies).
#[derive(Debug, Clone)]
pub enum TextModel {
    Pipeline(Box<Tokenizer>),
    SentencePiece(Arc<SpmModel>),
}

impl TextModel {
    /// Ids of `text`, special tokens written in it recognized (no BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        match self {
            Self::Pipeline(t) => Ok(t.encode(text, false).map_err(err)?.get_ids().to_vec()),
            Self::SentencePiece(m) => Ok(m.encode(text)),
        }
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        match self {
            Self::Pipeline(t) => t.decode(ids, false).map_err(err),
            Self::SentencePiece(m) => Ok(m.decode(ids)),
        }
    }
}

/// A model's tokenizer with the ids the engine needs.
pub struct ModelTokenizer {
    pub inner: TextModel,
    pub bos: Option<u32>,
    /// Tokens that end generation (end of sequence, end of turn).
    pub stop_ids: Vec<u32>,
    pub add_bos: bool,
    tokens: Arc<Vocabulary>,
    types: Vec<i32>,
    kind: VocabKind,
}

/// How vocabulary strings spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VocabKind {
    /// GPT-2 byte-level: every byte is a printable stand-in character.
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xXX>` a raw byte.
    SentencePiece,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab", &self.tokens.len())
            .field("bos", &self.bos)
            .finish_non_exhaustive()
    }
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

impl ModelTokenizer {
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, EngineError> {
        let model = gguf.string("tokenizer.ggml.model")?;
        let tokens = gguf.strings("tokenizer.ggml.tokens")?;
        let types = gguf.i32s("tokenizer.ggml.token_type").unwrap_or_default();
        let kind = if model == "gpt2" { VocabKind::ByteLevel } else { VocabKind::SentencePiece };
        let vocabulary = Arc::new(Vocabulary::new(&tokens));
        let inner = match model.as_str() {
            "gpt2" => {
                let merges = gguf.strings("tokenizer.ggml.merges")?;
                let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
                let merges: Vec<(String, String)> = merges
                    .iter()
                    .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())))
                    .collect();
                let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(err)?;
                let mut tokenizer = Tokenizer::new(bpe);
                let byte_level = ByteLevel::new(false, true, true);
                // llama.cpp's pre-tokenizer per model family; SmolLM splits digits one by one.
                let pre = gguf.string("tokenizer.ggml.pre").unwrap_or_default();
                let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
                    "smollm" => Sequence::new(vec![
                        PreTokenizerWrapper::Digits(Digits::new(true)),
                        PreTokenizerWrapper::ByteLevel(byte_level),
                    ])
                    .into(),
                    _ => byte_level.into(),
                };
                tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
                tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(byte_level)));
                // Control and user-defined tokens (`<|im_start|>`, `<tool_call>`) are matched
                // whole in text and kept when decoding, so parsers see the markers.
                let specials: Vec<AddedToken> = tokens
                    .iter()
                    .zip(types.iter().chain(std::iter::repeat(&1)))
                    .filter(|(_, t)| **t == TOKEN_CONTROL || **t == TOKEN_USER_DEFINED)
                    .map(|(tok, t)| AddedToken::from(tok.clone(), *t == TOKEN_CONTROL))
                    .collect();
                tokenizer.add_special_tokens(specials).map_err(err)?;
                TextModel::Pipeline(Box::new(tokenizer))
            }
            "llama" => {
                let scores = gguf.f32s("tokenizer.ggml.scores")?;
                let add_space_prefix =
                    gguf.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.to_bool().ok()).unwrap_or(true);
                let unknown = gguf.u32("tokenizer.ggml.unknown_token_id").ok();
                let spm = SpmModel::new(vocabulary.clone(), scores, &types, add_space_prefix, unknown)?;
                TextModel::SentencePiece(Arc::new(spm))
            }
            other => return Err(EngineError::Tokenizer(format!("tokenizer model `{other}` is not supported yet"))),
        };

        let bos = gguf.u32("tokenizer.ggml.bos_token_id").ok();
        let mut stop_ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"] {
            if let Ok(id) = gguf.u32(key) {
                stop_ids.push(id);
            }
        }
        // Chat models end a turn with a token the metadata does not always name.
        for marker in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"] {
            if let Some(id) = tokens.iter().position(|t| t == marker) {
                stop_ids.push(id as u32);
            }
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let add_bos = gguf.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false);
        Ok(Self { inner, bos, stop_ids, add_bos, tokens: vocabulary, types, kind })
    }

    /// A `tokenizer.json` (with `tokenizer_config.json` and `config.json` beside it, for the
    /// special tokens), as Hugging Face and MLX checkpoints ship it.
    pub fn from_dir(dir: &std::path::Path, config: &serde_json::Value) -> Result<Self, EngineError> {
        use serde_json::Value;
        let inner = Tokenizer::from_file(dir.join("tokenizer.json")).map_err(err)?;
        let tk_config: Value = std::fs::read_to_string(dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let size = inner.get_vocab_size(true);
        let tokens: Vec<String> = (0..size as u32).map(|id| inner.id_to_token(id).unwrap_or_default()).collect();
        let mut types = vec![1; size];
        for (id, added) in inner.get_added_tokens_decoder() {
            if let Some(slot) = types.get_mut(id as usize) {
                *slot = if added.special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED };
            }
        }
        let kind = match inner.get_decoder() {
            Some(DecoderWrapper::ByteLevel(_)) => VocabKind::ByteLevel,
            _ => VocabKind::SentencePiece,
        };
        // `bos_token` / `eos_token` are strings or `{"content": ...}` objects.
        let named = |key: &str| -> Option<u32> {
            let v = tk_config.get(key)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(Value::as_str))?;
            inner.token_to_id(text)
        };
        let bos = named("bos_token").or_else(|| config.get("bos_token_id").and_then(Value::as_u64).map(|v| v as u32));
        let mut stop_ids: Vec<u32> = named("eos_token").into_iter().collect();
        for source in [config.get("eos_token_id"), config.pointer("/text_config/eos_token_id")].into_iter().flatten() {
            match source {
                Value::Array(ids) => stop_ids.extend(ids.iter().filter_map(Value::as_u64).map(|v| v as u32)),
                other => stop_ids.extend(other.as_u64().map(|v| v as u32)),
            }
        }
        for marker in ["<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>"] {
            stop_ids.extend(inner.token_to_id(marker));
        }
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let add_bos = tk_config.get("add_bos_token").and_then(Value::as_bool).unwrap_or(false);
        let inner = TextModel::Pipeline(Box::new(inner));
        Ok(Self { inner, bos, stop_ids, add_bos, tokens: Arc::new(Vocabulary::new(&tokens)), types, kind })
    }

    /// Token ids of `text`; control tokens written in the text are recognized.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        let encoded = self.inner.encode(text)?;
        let mut ids = Vec::with_capacity(encoded.len() + 1);
        if add_bos && let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(&encoded);
        Ok(ids)
    }

    /// Text of `ids`, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner.decode(ids)
    }

    pub fn token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The bytes each token stands for, as constrained decoding needs them: control tokens
    /// are prefixed with 0xFF so no grammar literal can produce them by accident.
    pub fn token_bytes(&self) -> Vec<Vec<u8>> {
        let byte_of = byte_level_decoder();
        self.tokens
            .iter()
            .enumerate()
            .map(|(id, token)| match self.types.get(id).copied() {
                Some(TOKEN_CONTROL) => [&[0xFF_u8][..], token.as_bytes()].concat(),
                Some(TOKEN_USER_DEFINED) => token.as_bytes().to_vec(),
                _ => match self.kind {
                    VocabKind::ByteLevel => token.chars().map(|c| byte_of.get(&c).copied().unwrap_or(b'?')).collect(),
                    VocabKind::SentencePiece => sentencepiece_bytes(token),
                },
            })
            .collect()
    }
}

/// The inverse of GPT-2's byte-to-character table.
fn byte_level_decoder() -> std::collections::HashMap<char, u8> {
    let mut map = std::collections::HashMap::with_capacity(256);
    let mut shifted = 0u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap_or('?')
        };
        map.insert(c, b);
    }
    map
}

fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    match super::spm::byte_token(piece) {
        Some(byte) => vec![byte],
        None => piece.replace('\u{2581}', " ").into_bytes(),
    }
}

/// Every token's text in one buffer (a `Vec<String>` costs ~56 bytes per token in headers
/// and allocations: ~15 MB for a 262k-token vocabulary).
#[derive(Debug, Clone, Default)]
pub struct Vocabulary {
    text: String,
    ends: Vec<u32>,
}

impl Vocabulary {
    pub fn new(tokens: &[String]) -> Self {
        let mut text = String::with_capacity(tokens.iter().map(String::len).sum());
        let mut ends = Vec::with_capacity(tokens.len());
        for token in tokens {
            text.push_str(token);
            ends.push(text.len() as u32);
        }
        Self { text, ends }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn get(&self, id: usize) -> Option<&str> {
        let end = *self.ends.get(id)? as usize;
        let start = if id == 0 { 0 } else { self.ends[id - 1] as usize };
        self.text.get(start..end)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|id| self.get(id))
    }
}

/// Streams text from tokens without ever splitting a UTF-8 character: text is released
/// only once the decoded tail no longer ends in a replacement character.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    /// Adds a token; returns the text it completes, if any.
    pub fn push(&mut self, tokenizer: &ModelTokenizer, id: u32) -> Result<String, EngineError> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is left at the end (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self, tokenizer: &ModelTokenizer) -> Result<String, EngineError> {
        let prefix = tokenizer.decode(&self.ids[self.prefix_offset..self.read_offset])?;
        let full = tokenizer.decode(&self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}
