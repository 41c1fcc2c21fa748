//! Constrained decoding with llguidance: a grammar (a JSON schema or a Lark grammar) masks
//! the logits before each sample, so the output is valid by construction.
//!
//! The token trie and bias slices are built once per model ([`GrammarCompiler`]); each
//! request compiles its grammar into a [`Constraint`] that follows the tokens it samples.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};

use rapid_plugin_sdk::grammar::compact_json_options;

use super::tokenizer::ModelTokenizer;

#[derive(Debug, thiserror::Error)]
pub enum ConstraintError {
    #[error("cannot build the token trie for constrained decoding: {0}")]
    Setup(String),
    /// The grammar or schema itself is at fault (the request's, or a plugin's).
    #[error("{0}")]
    Grammar(String),
    #[error("constrained decoding failed: {0}")]
    Runtime(String),
}

/// llguidance's view of our tokenizer.
struct TokenizerView {
    trie: TokTrie,
    tokenizer: super::tokenizer::TextModel,
}

impl TokenizerEnv for TokenizerView {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// llguidance re-tokenizes grammar literals; the model's own tokenizer does it exactly.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        let text = String::from_utf8_lossy(s);
        self.tokenizer.encode(text.as_ref()).unwrap_or_default()
    }
}

/// Compiles grammars against one model's vocabulary.
pub struct GrammarCompiler {
    factory: ParserFactory,
    vocab_size: usize,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler").field("vocab_size", &self.vocab_size).finish_non_exhaustive()
    }
}

impl GrammarCompiler {
    pub fn new(tokenizer: &ModelTokenizer) -> Result<Self, ConstraintError> {
        let words = tokenizer.token_bytes();
        let vocab_size = words.len();
        let eos = tokenizer
            .stop_ids
            .first()
            .copied()
            .ok_or_else(|| ConstraintError::Setup(String::from("the model names no end-of-sequence token")))?;
        let mut info = TokRxInfo::new(vocab_size as u32, eos);
        info.tok_bos = tokenizer.bos;
        let trie = TokTrie::from(&info, &words).with_eos_tokens(&tokenizer.stop_ids);
        let env: TokEnv = Arc::new(TokenizerView { trie, tokenizer: tokenizer.inner.clone() });
        let mut factory =
            ParserFactory::new(&env, InferenceCapabilities::default(), &SlicedBiasComputer::general_slices())
                .map_err(|e| ConstraintError::Setup(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory, vocab_size })
    }

    /// A JSON schema as a grammar, compact (no free whitespace): small models otherwise
    /// tend to spend their tokens on blank lines.
    pub fn json_schema(schema: &serde_json::Value) -> TopLevelGrammar {
        let mut schema = schema.clone();
        if let Some(obj) = schema.as_object_mut() {
            obj.entry("x-guidance").or_insert_with(compact_json_options);
        }
        TopLevelGrammar::from_json_schema(schema)
    }

    pub fn lark(grammar: &str) -> TopLevelGrammar {
        TopLevelGrammar::from_lark(grammar.to_string())
    }

    /// Compiles `grammar`; an unsatisfiable or malformed grammar is a [`ConstraintError::Grammar`].
    pub fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, ConstraintError> {
        let parser = self.factory.create_parser(grammar).map_err(|e| ConstraintError::Grammar(e.to_string()))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(ConstraintError::Grammar(e));
        }
        Ok(Constraint { matcher, vocab_size: self.vocab_size })
    }
}

/// One request's grammar state.
#[derive(Clone)]
pub struct Constraint {
    matcher: Matcher,
    vocab_size: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.matcher.is_stopped()).finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets every token the grammar forbids next to minus infinity.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = self.matcher.compute_mask().map_err(|e| ConstraintError::Runtime(e.to_string()))?;
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= self.vocab_size || !allowed.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        self.matcher.consume_token(token).map_err(|e| ConstraintError::Runtime(e.to_string()))
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.is_stopped()
    }
}
