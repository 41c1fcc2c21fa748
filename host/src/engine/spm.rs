//! SentencePiece tokenization of GGUF `llama`-model vocabularies (Gemma, Llama 2, Mistral)
//! as llama.cpp does it (`llm_tokenizer_spm`): special and user-defined tokens are split
//! out of the raw text first, spaces escaped to `▁`, then adjacent pieces merged
//! greedily - the pair whose concatenation is the highest-scoring token first, the leftmost
//! on ties - for as long as some concatenation is a token; characters no token covers fall
//! back to `<0xXX>` byte tokens.
//!
//! Built straight from the vocabulary (one hash table of token ids keyed by their text)
//! instead of a BPE with merges derived from every split of every piece: for Gemma's 262k
//! tokens that derivation took ~0.5 s and ~70 MB at load.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};

use super::EngineError;
use super::tokenizer::Vocabulary;

/// GGUF token types (llama.cpp `llama_token_type`) whose text is matched whole in the input.
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;

#[derive(Debug)]
pub struct SpmModel {
    vocab: Arc<Vocabulary>,
    scores: Vec<f32>,
    /// Token ids keyed by their text (which lives in `vocab`).
    by_text: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// `<0xXX>` byte tokens.
    bytes: [Option<u32>; 256],
    /// Control and user-defined tokens, matched leftmost-longest in the raw text.
    specials: Option<(AhoCorasick, Vec<u32>)>,
    add_space_prefix: bool,
    unknown: Option<u32>,
}

/// A candidate merge of two adjacent symbols.
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    /// The highest score first; on equal scores the leftmost (llama.cpp's comparator).
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A run of the text: `len` bytes from `start`; `len == 0` once merged into its left neighbour.
#[derive(Debug, Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmModel {
    pub fn new(
        vocab: Arc<Vocabulary>,
        scores: Vec<f32>,
        types: &[i32],
        add_space_prefix: bool,
        unknown: Option<u32>,
    ) -> Result<Self, EngineError> {
        let hasher = hashbrown::DefaultHashBuilder::default();
        let text = |id: u32| vocab.get(id as usize).unwrap_or_default();
        let mut by_text = hashbrown::HashTable::with_capacity(vocab.len());
        for id in 0..vocab.len() as u32 {
            let hash = hasher.hash_one(text(id));
            // A text spelled by two ids maps to the later one, as llama.cpp's map does.
            match by_text.find_mut(hash, |&other| text(other) == text(id)) {
                Some(slot) => *slot = id,
                None => {
                    by_text.insert_unique(hash, id, |&other| hasher.hash_one(text(other)));
                }
            }
        }
        let mut model =
            Self { vocab, scores, by_text, hasher, bytes: [None; 256], specials: None, add_space_prefix, unknown };
        for b in 0..=255u8 {
            model.bytes[usize::from(b)] = model.id(&format!("<0x{b:02X}>"));
        }
        let (patterns, ids): (Vec<&str>, Vec<u32>) = model
            .vocab
            .iter()
            .enumerate()
            .filter(|&(id, text)| {
                !text.is_empty() && matches!(types.get(id).copied(), Some(TOKEN_CONTROL | TOKEN_USER_DEFINED))
            })
            .map(|(id, text)| (text, id as u32))
            .unzip();
        if !patterns.is_empty() {
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .map_err(|e| EngineError::Tokenizer(format!("special tokens: {e}")))?;
            model.specials = Some((matcher, ids));
        }
        Ok(model)
    }

    /// The id of the token spelled `text`.
    fn id(&self, text: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(text);
        self.by_text.find(hash, |&id| self.vocab.get(id as usize) == Some(text)).copied()
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = Vec::new();
        // llama.cpp prefixes a space to text that starts the input or follows a special token.
        let mut after_special = true;
        let mut last = 0;
        if let Some((matcher, ids)) = &self.specials {
            for m in matcher.find_iter(text) {
                if m.start() > last {
                    self.fragment(&text[last..m.start()], after_special, &mut out);
                }
                out.push(ids[m.pattern().as_usize()]);
                after_special = true;
                last = m.end();
            }
        }
        if last < text.len() {
            self.fragment(&text[last..], after_special, &mut out);
        }
        out
    }

    /// Ordinary text between special tokens.
    fn fragment(&self, text: &str, after_special: bool, out: &mut Vec<u32>) {
        let mut escaped = String::with_capacity(text.len() + 3);
        if self.add_space_prefix && after_special {
            escaped.push('\u{2581}');
        }
        for c in text.chars() {
            escaped.push(if c == ' ' { '\u{2581}' } else { c });
        }
        self.merge(&escaped, out);
    }

    fn merge(&self, text: &str, out: &mut Vec<u32>) {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (i, (start, c)) in text.char_indices().enumerate() {
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        let Some(last) = symbols.last_mut() else { return };
        last.next = None;
        let mut queue = BinaryHeap::new();
        let try_add =
            |queue: &mut BinaryHeap<Bigram>, symbols: &[Symbol], left: Option<usize>, right: Option<usize>| {
                let (Some(left), Some(right)) = (left, right) else { return };
                let (l, r) = (symbols[left], symbols[right]);
                let size = l.len + r.len;
                if let Some(id) = self.id(&text[l.start..l.start + size]) {
                    let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
                    queue.push(Bigram { score, left, right, size });
                }
            };
        for i in 1..symbols.len() {
            try_add(&mut queue, &symbols, Some(i - 1), Some(i));
        }
        while let Some(bigram) = queue.pop() {
            let (l, r) = (symbols[bigram.left], symbols[bigram.right]);
            // Outdated: one side has merged elsewhere since.
            if l.len == 0 || r.len == 0 || l.len + r.len != bigram.size {
                continue;
            }
            symbols[bigram.left].len += r.len;
            symbols[bigram.right].len = 0;
            symbols[bigram.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(bigram.left);
            }
            try_add(&mut queue, &symbols, l.prev, Some(bigram.left));
            try_add(&mut queue, &symbols, Some(bigram.left), r.next);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.id(piece) {
                Some(id) => out.push(id),
                // Only single characters can miss (every merge is a token): their bytes.
                None => out.extend(piece.bytes().filter_map(|b| self.bytes[usize::from(b)].or(self.unknown))),
            }
            at = s.next;
        }
    }

    /// Text of `ids`: `▁` as a space, `<0xXX>` tokens as their bytes, special tokens kept.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(piece) = self.vocab.get(id as usize) else { continue };
            match byte_token(piece) {
                Some(b) => bytes.push(b),
                None => {
                    for c in piece.chars() {
                        match c {
                            '\u{2581}' => bytes.push(b' '),
                            c => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                        }
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The byte a `<0xXX>` piece stands for.
pub fn byte_token(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() == 2 { u8::from_str_radix(hex, 16).ok() } else { None }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small vocabulary: byte tokens for every byte, some pieces with scores, a control
    /// token and a user-defined one.
    fn model(add_space_prefix: bool) -> (SpmModel, Vec<String>) {
        let mut tokens: Vec<(String, f32, i32)> = vec![("<unk>".into(), 0.0, 2), ("<s>".into(), 0.0, 3)];
        tokens.extend((0..=255u8).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
        for (piece, score) in [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("he", -3.0),
            ("ll", -1.5),
            ("llo", -4.0),
            ("hello", -5.0),
            ("▁hello", -6.0),
            ("ab", -1.0),
            ("bc", -1.0),
            ("a", -2.0),
            ("b", -2.0),
            ("c", -2.0),
        ] {
            tokens.push((piece.into(), score, 1));
        }
        tokens.push(("<turn>".into(), 0.0, 3));
        tokens.push(("  ".into(), 0.0, 4));
        let texts: Vec<String> = tokens.iter().map(|t| t.0.clone()).collect();
        let scores = tokens.iter().map(|t| t.1).collect();
        let types: Vec<i32> = tokens.iter().map(|t| t.2).collect();
        let vocab = Arc::new(Vocabulary::new(&texts));
        (SpmModel::new(vocab, scores, &types, add_space_prefix, Some(0)).expect("model"), texts)
    }

    fn pieces(texts: &[String], ids: &[u32]) -> Vec<String> {
        ids.iter().map(|&id| texts[id as usize].clone()).collect()
    }

    #[test]
    fn merges_follow_the_scores_and_fall_back_to_bytes() {
        let (m, texts) = model(false);
        // "ll" (-1.5) merges first, then "he" (-3), then "llo" (-4), then "hello" (-5).
        assert_eq!(pieces(&texts, &m.encode("hello")), ["hello"]);
        // Equal scores: the leftmost pair ("ab") wins over "bc".
        assert_eq!(pieces(&texts, &m.encode("abc")), ["ab", "c"]);
        // "é" is no token: its two UTF-8 bytes.
        assert_eq!(pieces(&texts, &m.encode("é")), ["<0xC3>", "<0xA9>"]);
        assert!(m.encode("").is_empty());
    }

    #[test]
    fn special_and_user_defined_tokens_are_matched_in_the_raw_text() {
        let (m, texts) = model(true);
        // A space prefix starts the text and follows each special or user-defined token
        // (llama.cpp's add_space_prefix); two spaces are the user-defined token, not escaped
        // spaces.
        assert_eq!(pieces(&texts, &m.encode("hello<turn>hello")), ["▁hello", "<turn>", "▁hello"]);
        assert_eq!(pieces(&texts, &m.encode("a  b")), ["▁", "a", "  ", "▁", "b"]);
        let (plain, texts) = model(false);
        assert_eq!(pieces(&texts, &plain.encode("hello hello")), ["hello", "▁hello"]);
    }

    #[test]
    fn decoding_restores_spaces_bytes_and_special_tokens() {
        let (m, _) = model(true);
        let ids = m.encode("hello<turn> héllo");
        assert_eq!(m.decode(&ids), " hello<turn>  héllo");
        // A lone continuation byte decodes to the replacement character, not a panic.
        let lone = m.id("<0xA9>").expect("byte token");
        assert_eq!(m.decode(&[lone]), "\u{FFFD}");
    }
}
