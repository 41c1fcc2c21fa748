//! Constrained decoding with llguidance: a grammar (a JSON schema or a Lark grammar) masks
//! the logits before each sample, so the output is valid by construction.
//!
//! The token trie and bias slices are built once per model ([`GrammarCompiler`]); each
//! request compiles its grammar into a [`Constraint`] that follows the tokens it samples.
//!
//! Grammars come from clients (`response_format`, tool schemas) and from parser plugins, so
//! compiling one is untrusted work: llguidance recurses along `$ref` chains and rule chains,
//! and a deep enough one would overflow a thread's stack and abort the process. Compilation
//! therefore runs on a thread of its own with a large stack, after a bound on the grammar's
//! size and reference count, under a time budget, and at most a few at once; the first
//! token mask is computed there too, so a grammar that cannot be matched fails before any
//! token is generated (a client's fault, answered 400) rather than in the middle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    /// Too many grammars compiling at once (some may be past their time budget).
    #[error("too many grammars are compiling at once; retry shortly")]
    Busy,
}

/// Bounds on the grammars [`GrammarCompiler::compile`] accepts.
#[derive(Debug, Clone, Copy)]
pub struct CompileLimits {
    /// Bytes of JSON schema or Lark text.
    pub max_grammar_bytes: usize,
    /// `$ref`s in a JSON schema, or rules in a Lark grammar: each can add a level of
    /// recursion to the compiler.
    pub max_references: usize,
    /// Wall time one compilation may take before the request is answered with an error.
    pub timeout: Duration,
    /// Compilations running at once, counting those past their time budget.
    pub max_concurrent: usize,
    /// Stack of the compiling thread.
    pub stack_bytes: usize,
}

impl Default for CompileLimits {
    fn default() -> Self {
        Self {
            max_grammar_bytes: 1 << 20,
            max_references: 2_000,
            timeout: Duration::from_secs(10),
            max_concurrent: 4,
            stack_bytes: 512 << 20,
        }
    }
}

/// Compilations alive right now (a thread past its budget is given up on, not killed).
static COMPILING: AtomicUsize = AtomicUsize::new(0);

/// Counts a live compilation; dropped when its thread ends, panics included.
struct CompilingGuard;

impl CompilingGuard {
    fn enter(limit: usize) -> Option<Self> {
        let before = COMPILING.fetch_add(1, Ordering::SeqCst);
        if before >= limit {
            COMPILING.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Self)
    }
}

impl Drop for CompilingGuard {
    fn drop(&mut self) {
        COMPILING.fetch_sub(1, Ordering::SeqCst);
    }
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
    factory: Arc<ParserFactory>,
    vocab_size: usize,
    limits: CompileLimits,
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
        Ok(Self { factory: Arc::new(factory), vocab_size, limits: CompileLimits::default() })
    }

    /// The same compiler under other bounds.
    pub fn with_limits(mut self, limits: CompileLimits) -> Self {
        self.limits = limits;
        self
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

    /// Compiles `grammar` on a thread of its own (see the module docs); an unsatisfiable,
    /// malformed or oversized grammar is a [`ConstraintError::Grammar`] that says why.
    /// Blocks the calling thread: call it from a blocking context.
    pub fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, ConstraintError> {
        let limits = self.limits;
        check_size(&grammar, &limits)?;
        let guard = CompilingGuard::enter(limits.max_concurrent).ok_or(ConstraintError::Busy)?;
        let factory = Arc::clone(&self.factory);
        let vocab_size = self.vocab_size;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(String::from("grammar-compile"))
            .stack_size(limits.stack_bytes)
            .spawn(move || {
                let _guard = guard;
                let result = compile_here(&factory, grammar, vocab_size);
                if result.is_err() {
                    // A failed grammar may have built a large lexer first: give it back.
                    crate::memory::release_free_memory();
                }
                let _ = tx.send(result);
            })
            .map_err(|e| ConstraintError::Setup(format!("cannot start a grammar thread: {e}")))?;
        match rx.recv_timeout(limits.timeout) {
            Ok(result) => result,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(ConstraintError::Grammar(format!(
                "the grammar takes longer than {} s to compile; simplify it",
                limits.timeout.as_secs_f32()
            ))),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Err(ConstraintError::Grammar(String::from("the grammar compiler failed on this grammar")))
            }
        }
    }
}

fn compile_here(
    factory: &ParserFactory,
    grammar: TopLevelGrammar,
    vocab_size: usize,
) -> Result<Constraint, ConstraintError> {
    let parser = factory.create_parser(grammar).map_err(|e| ConstraintError::Grammar(e.to_string()))?;
    let mut matcher = Matcher::new(Ok(parser));
    if let Some(e) = matcher.get_error() {
        return Err(ConstraintError::Grammar(e));
    }
    // The lexer and the Earley sets are built lazily: the first mask is where a grammar
    // that exceeds llguidance's limits fails, and it should fail here, not mid-answer.
    if let Err(e) = matcher.compute_mask() {
        return Err(ConstraintError::Grammar(e.to_string()));
    }
    Ok(Constraint { matcher: Some(matcher), vocab_size })
}

/// Refuses grammars whose size or reference count could exhaust the compiler.
fn check_size(grammar: &TopLevelGrammar, limits: &CompileLimits) -> Result<(), ConstraintError> {
    for part in &grammar.grammars {
        if let Some(schema) = &part.json_schema {
            check_patterns(schema)?;
        }
        let (bytes, references, what) = match (&part.json_schema, &part.lark_grammar) {
            (Some(schema), _) => (schema.to_string().len(), count_refs(schema), "`$ref`s"),
            (None, Some(lark)) => (lark.len(), lark.lines().filter(|l| is_rule_line(l)).count(), "rules"),
            (None, None) => continue,
        };
        if bytes > limits.max_grammar_bytes {
            return Err(ConstraintError::Grammar(format!(
                "the grammar is {bytes} bytes; at most {} are accepted",
                limits.max_grammar_bytes
            )));
        }
        if let Some(lark) = &part.lark_grammar
            && bracket_depth(lark) > MAX_LARK_NESTING
        {
            return Err(ConstraintError::Grammar(format!(
                "the grammar nests parentheses or brackets more than {MAX_LARK_NESTING} deep"
            )));
        }
        if let Some(lark) = &part.lark_grammar
            && let Some(alternatives) = most_alternatives(lark)
            && alternatives > MAX_LARK_ALTERNATIVES
        {
            return Err(ConstraintError::Grammar(format!(
                "a grammar rule has {alternatives} alternatives; at most {MAX_LARK_ALTERNATIVES} are supported"
            )));
        }
        if references > limits.max_references {
            return Err(ConstraintError::Grammar(format!(
                "the grammar has {references} {what}; at most {} are accepted",
                limits.max_references
            )));
        }
    }
    Ok(())
}

/// How far one regular expression of a schema may expand (`x{1000}{1000}` is a million
/// characters): llguidance builds its lexer by unrolling counted repetitions, and such a
/// pattern would exhaust its limits only mid-answer, after building hundreds of megabytes.
const MAX_PATTERN_EXPANSION: u64 = 20_000;

/// Refuses `pattern`s (and `patternProperties` keys) that expand beyond the bound.
fn check_patterns(schema: &serde_json::Value) -> Result<(), ConstraintError> {
    let mut stack = vec![schema];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                let mut patterns: Vec<&str> = Vec::new();
                if let Some(serde_json::Value::String(p)) = map.get("pattern") {
                    patterns.push(p);
                }
                if let Some(serde_json::Value::Object(props)) = map.get("patternProperties") {
                    patterns.extend(props.keys().map(String::as_str));
                }
                for pattern in patterns {
                    let ast = regex_syntax::ast::parse::Parser::new().parse(pattern).map_err(|e| {
                        ConstraintError::Grammar(format!("`pattern` {pattern:?} is not a regular expression: {e}"))
                    })?;
                    let size = expansion(&ast);
                    if size > MAX_PATTERN_EXPANSION {
                        return Err(ConstraintError::Grammar(format!(
                            "`pattern` {pattern:?} expands to about {size} characters; at most {MAX_PATTERN_EXPANSION} are supported"
                        )));
                    }
                }
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(())
}

/// Characters a regular expression unrolls to, counting each repetition at its bound.
fn expansion(ast: &regex_syntax::ast::Ast) -> u64 {
    use regex_syntax::ast::{Ast, RepetitionKind, RepetitionRange};
    match ast {
        Ast::Repetition(rep) => {
            let times = match &rep.op.kind {
                RepetitionKind::Range(RepetitionRange::Exactly(n) | RepetitionRange::AtLeast(n)) => u64::from(*n),
                RepetitionKind::Range(RepetitionRange::Bounded(_, n)) => u64::from(*n),
                _ => 1,
            };
            times.max(1).saturating_mul(expansion(&rep.ast))
        }
        Ast::Group(group) => expansion(&group.ast),
        Ast::Concat(concat) => concat.asts.iter().map(expansion).fold(0, u64::saturating_add),
        Ast::Alternation(alt) => alt.asts.iter().map(expansion).fold(0, u64::saturating_add),
        _ => 1,
    }
}

/// `$ref` keys anywhere in a JSON schema (also those inside Lark `%json` blocks count
/// toward the Lark grammar's size, not here).
fn count_refs(value: &serde_json::Value) -> usize {
    let mut count = 0;
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                count += usize::from(map.contains_key("$ref"));
                stack.extend(map.values());
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    count
}

/// Nesting of `(` and `[` a Lark grammar may use (its parser recurses on each level).
const MAX_LARK_NESTING: usize = 256;

/// Alternatives one Lark rule may list: llguidance's Earley rows hold one item per
/// alternative and refuse more than 2000 - mid-answer, once the row is reached.
const MAX_LARK_ALTERNATIVES: usize = 1_000;

/// The characters of a Lark grammar outside its string and regex literals.
fn lark_syntax(lark: &str) -> impl Iterator<Item = char> + '_ {
    let mut literal: Option<char> = None;
    let mut escaped = false;
    lark.chars().filter(move |&c| {
        if let Some(close) = literal {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, c) if c == close || c == '\n' => literal = None,
                _ => {}
            }
            return false;
        }
        if c == '"' || c == '/' {
            literal = Some(c);
            return false;
        }
        true
    })
}

/// Deepest nesting of `(` / `[` outside literals.
fn bracket_depth(lark: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in lark_syntax(lark) {
        match c {
            '(' | '[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The most `|`-separated alternatives of any one rule (a rule's definition runs until
/// the next rule line).
fn most_alternatives(lark: &str) -> Option<usize> {
    let mut most = None::<usize>;
    let mut current = 0usize;
    for line in lark.lines() {
        if is_rule_line(line) {
            current = 1;
        }
        current += lark_syntax(line).filter(|&c| c == '|').count();
        most = Some(most.map_or(current, |m| m.max(current)));
    }
    most
}

/// A Lark line that defines a rule or token: `name: ...`.
fn is_rule_line(line: &str) -> bool {
    let line = line.trim_start();
    let Some((name, _)) = line.split_once(':') else { return false };
    let name = name.trim_end().trim_start_matches(['?', '!']);
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// How a grammar that fails mid-answer is reported (the server recognizes it).
pub const TOO_COMPLEX: &str = "the grammar became too complex to follow";

/// One request's grammar state.
#[derive(Clone)]
pub struct Constraint {
    /// `None` once the grammar failed mid-answer (its parser is dropped at once).
    matcher: Option<Matcher>,
    vocab_size: usize,
}

impl std::fmt::Debug for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constraint").field("stopped", &self.is_finished()).finish_non_exhaustive()
    }
}

impl Constraint {
    /// Sets every token the grammar forbids next to minus infinity.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ConstraintError> {
        let allowed = match self.matcher.as_mut().map(Matcher::compute_mask) {
            Some(Ok(allowed)) => allowed,
            Some(Err(e)) => return Err(self.fail(e.to_string())),
            None => return Err(ConstraintError::Runtime(format!("{TOO_COMPLEX} (it failed before)"))),
        };
        for (id, logit) in logits.iter_mut().enumerate() {
            if id >= self.vocab_size || !allowed.is_allowed(id as TokenId) {
                *logit = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    pub fn accept(&mut self, token: u32) -> Result<(), ConstraintError> {
        match self.matcher.as_mut().map(|m| m.consume_token(token)) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(self.fail(e.to_string())),
            None => Err(ConstraintError::Runtime(format!("{TOO_COMPLEX} (it failed before)"))),
        }
    }

    /// The grammar cannot go on (it outgrew llguidance's limits mid-answer): drops the
    /// parser at once and gives its memory back, and keeps only the first line of the
    /// error (the rest is the parser's internal state).
    fn fail(&mut self, message: String) -> ConstraintError {
        self.matcher = None;
        crate::memory::release_free_memory();
        let first = message.lines().next().unwrap_or_default();
        ConstraintError::Runtime(format!("{TOO_COMPLEX}: {first}"))
    }

    /// The grammar is complete and allows nothing more.
    pub fn is_finished(&self) -> bool {
        self.matcher.as_ref().is_none_or(Matcher::is_stopped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lark_shape_is_read_outside_literals() {
        assert_eq!(bracket_depth("start: ((\"(\" /[(]+/ x))"), 2);
        assert_eq!(most_alternatives("start: a | b | \"|\" | /x|y/\n  | c\nother: d"), Some(5));
        assert!(is_rule_line("?value.2: x") && is_rule_line("start: a") && !is_rule_line("  | b"));
    }

    #[test]
    fn pattern_expansion_multiplies_nested_counts() {
        let size = |p: &str| {
            let ast = regex_syntax::ast::parse::Parser::new().parse(p).expect("regex");
            expansion(&ast)
        };
        assert_eq!(size("^(x{1000}){1000}$"), 1_000_002);
        assert_eq!(size("^[a-z]{1,64}(\\.[a-z]{1,64}){0,10}$"), 1 + 64 + 10 * 65 + 1);
        assert!(check_patterns(&json!({"properties": {"a": {"pattern": "^(x{1000}){1000}$"}}})).is_err());
        assert!(check_patterns(&json!({"patternProperties": {"^(y{500}){500}$": {}}})).is_err());
        assert!(check_patterns(&json!({"pattern": "^[0-9]{3}-[0-9]{4}$"})).is_ok());
        assert!(check_patterns(&json!({"pattern": "(unclosed"})).is_err());
    }

    #[test]
    fn references_are_counted_anywhere() {
        let schema = json!({"$ref": "#/$defs/a", "$defs": {"a": {"items": [{"$ref": "#/$defs/b"}]}, "b": {}}});
        assert_eq!(count_refs(&schema), 2);
    }
}
