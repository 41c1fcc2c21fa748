//! Alias naming rules: `<family>-<version>-<params>-<modality?>-<technique?>-<quant>`.

use std::fmt;

/// Quantization suffixes of MLX-format checkpoints.
pub const MLX_QUANTS: &[&str] = &["4bit", "8bit", "2bit", "3bit", "6bit", "mxfp4", "mxfp4-q8", "dwq", "ud", "unpacked"];

/// GGUF tensor types allowed as a suffix.
pub const GGUF_QUANTS: &[&str] = &["q4_0", "q4_1", "q4_k_m", "q5_k_m", "q6_k", "q8_0", "f16", "bf16"];

/// Words a repository uses instead of a parameter count for its small variants.
const SMALL_SIZE_WORDS: &[&str] = &["mini", "tiny", "micro", "nano"];

/// Why a name breaks the naming rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamingError {
    Empty,
    NotLowercase,
    BadCharacter(char),
    MissingQuant,
    EmptySegment,
    FamilyMustStartWithLetter,
    SeveralParamSegments(String, String),
}

impl fmt::Display for NamingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "name is empty"),
            Self::NotLowercase => write!(f, "name must be lowercase"),
            Self::BadCharacter(c) => write!(f, "character {c:?} is not allowed"),
            Self::MissingQuant => write!(
                f,
                "name must end with a quantization suffix, one of: {}",
                all_quants().collect::<Vec<_>>().join(" ")
            ),
            Self::EmptySegment => write!(f, "name has an empty `-` segment"),
            Self::FamilyMustStartWithLetter => write!(f, "family segment must start with a letter"),
            Self::SeveralParamSegments(a, b) => {
                write!(f, "name has two parameter-count segments ({a}, {b})")
            }
        }
    }
}

impl std::error::Error for NamingError {}

/// Every allowed quantization suffix.
pub fn all_quants() -> impl Iterator<Item = &'static str> {
    MLX_QUANTS.iter().chain(GGUF_QUANTS).copied()
}

/// Splits `name` into stem and quantization suffix, preferring the longest suffix
/// (`gpt-oss-20b-mxfp4-q8` is `mxfp4-q8`, not an unknown `q8`).
pub fn split_quant(name: &str) -> Option<(&str, &'static str)> {
    all_quants()
        .filter(|q| name.len() > q.len() + 1 && name.ends_with(q) && name.as_bytes()[name.len() - q.len() - 1] == b'-')
        .max_by_key(|q| q.len())
        .map(|q| (&name[..name.len() - q.len() - 1], q))
}

/// Effective bits per weight of a quantization, counting MLX group scales and biases
/// (group size 64) or GGUF block overhead. Used for memory estimates only.
pub fn bits_per_weight(quant: &str) -> Option<f64> {
    Some(match quant {
        "2bit" => 2.5,
        "3bit" => 3.5,
        "4bit" | "ud" | "dwq" | "q4_0" => 4.5,
        "q4_1" => 5.0,
        "q4_k_m" => 4.85,
        "mxfp4" | "mxfp4-q8" => 4.25,
        "q5_k_m" => 5.7,
        "6bit" => 6.5,
        "q6_k" => 6.56,
        "8bit" | "q8_0" => 8.5,
        "unpacked" | "f16" | "bf16" => 16.0,
        _ => return None,
    })
}

/// Is this `-` segment a parameter count (`4b`, `1.7b`, `135m`, `e4b`)?
pub fn is_params_segment(segment: &str) -> bool {
    let body = segment.strip_prefix('e').unwrap_or(segment);
    let Some(number) = body.strip_suffix('b').or_else(|| body.strip_suffix('m')).or_else(|| body.strip_suffix('t'))
    else {
        return false;
    };
    !number.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && number.chars().next().is_some_and(|c| c.is_ascii_digit())
        && !number.ends_with('.')
}

/// A name that follows the rule, taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasName<'a> {
    pub stem: &'a str,
    pub quant: &'static str,
    /// The parameter-count segment, when the name has one (`kimi-k2.5-3bit` does not).
    pub params: Option<&'a str>,
}

/// Checks `name` against the naming rule.
pub fn parse_alias_name(name: &str) -> Result<AliasName<'_>, NamingError> {
    if name.is_empty() {
        return Err(NamingError::Empty);
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(NamingError::NotLowercase);
    }
    if let Some(c) =
        name.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')))
    {
        return Err(NamingError::BadCharacter(c));
    }
    let (stem, quant) = split_quant(name).ok_or(NamingError::MissingQuant)?;
    // `_` belongs to GGUF quant names only.
    if stem.contains('_') {
        return Err(NamingError::BadCharacter('_'));
    }
    let segments: Vec<&str> = stem.split('-').collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(NamingError::EmptySegment);
    }
    if !segments[0].starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(NamingError::FamilyMustStartWithLetter);
    }
    let mut params = None;
    for segment in segments.iter().skip(1).copied().filter(|s| is_params_segment(s)) {
        if let Some(previous) = params {
            return Err(NamingError::SeveralParamSegments(String::from(previous), segment.to_string()));
        }
        params = Some(segment);
    }
    Ok(AliasName { stem, quant, params })
}

/// Parameter count in billions for a params segment (`35b` → 35, `135m` → 0.135, `e4b` → 4,
/// `1t` → 1000).
pub fn params_billions(segment: &str) -> Option<f64> {
    let body = segment.strip_prefix('e').unwrap_or(segment);
    if let Some(n) = body.strip_suffix('b') {
        n.parse().ok()
    } else if let Some(n) = body.strip_suffix('m') {
        n.parse::<f64>().ok().map(|m| m / 1000.0)
    } else if let Some(n) = body.strip_suffix('t') {
        n.parse::<f64>().ok().map(|t| t * 1000.0)
    } else {
        None
    }
}

/// Parameter-count tokens in a repository name, lowercased: `Qwen3.5-35B-A3B-4bit` → `["35b"]`.
/// Active-parameter tokens of MoE models (`A3B`) are not totals and are skipped.
pub fn repo_param_tokens(hf_path: &str) -> Vec<String> {
    let repo = hf_path.rsplit('/').next().unwrap_or(hf_path).to_ascii_lowercase();
    repo.split(['-', '_']).filter(|t| is_params_segment(t)).map(str::to_string).collect()
}

/// Whether the params segment of an alias agrees with its repository name.
///
/// This is the `phi-4-14b` bug class: an alias that promises one model size and downloads
/// another. When the repository states a size, the alias must state the same one; when
/// the repository only says `mini`/`tiny`/..., the alias may not promise a number.
pub fn params_agree(alias: &AliasName<'_>, hf_path: &str) -> Result<(), String> {
    let Some(params) = alias.params else {
        return Ok(());
    };
    let tokens = repo_param_tokens(hf_path);
    if !tokens.is_empty() {
        return if tokens.iter().any(|t| t == params) {
            Ok(())
        } else {
            Err(format!("alias says {params} but {hf_path} says {}", tokens.join("/")))
        };
    }
    let repo = hf_path.to_ascii_lowercase();
    match SMALL_SIZE_WORDS.iter().find(|w| repo.split(['-', '_', '/']).any(|t| t == **w)) {
        Some(word) => Err(format!("alias says {params} but {hf_path} is the `{word}` variant")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_quant_suffix_wins() {
        assert_eq!(split_quant("gpt-oss-20b-mxfp4-q8"), Some(("gpt-oss-20b", "mxfp4-q8")));
        assert_eq!(split_quant("qwen3.5-4b-4bit"), Some(("qwen3.5-4b", "4bit")));
        assert_eq!(split_quant("gemma3-270m-q4_k_m"), Some(("gemma3-270m", "q4_k_m")));
        assert_eq!(split_quant("qwen3.5-4b"), None);
        assert_eq!(split_quant("4bit"), None);
    }

    #[test]
    fn names_are_parsed_or_rejected() {
        let n = parse_alias_name("gemma-4-12b-qat-4bit").expect("valid");
        assert_eq!((n.stem, n.quant, n.params), ("gemma-4-12b-qat", "4bit", Some("12b")));
        assert_eq!(parse_alias_name("kimi-k2.5-3bit").expect("valid").params, None);
        assert_eq!(parse_alias_name("Qwen3.5-4b-4bit"), Err(NamingError::NotLowercase));
        assert_eq!(parse_alias_name("qwen3.5-4b"), Err(NamingError::MissingQuant));
        assert_eq!(parse_alias_name("qwen--4b-4bit"), Err(NamingError::EmptySegment));
        assert!(matches!(parse_alias_name("qwen-4b-8b-4bit"), Err(NamingError::SeveralParamSegments(..))));
    }

    #[test]
    fn params_must_match_the_repo() {
        let ok = parse_alias_name("qwen3.5-35b-4bit").expect("valid");
        assert!(params_agree(&ok, "mlx-community/Qwen3.5-35B-A3B-4bit").is_ok());
        let phi = parse_alias_name("phi-4-14b-4bit").expect("valid");
        assert!(params_agree(&phi, "mlx-community/phi-4-4bit").is_ok());
        assert!(params_agree(&phi, "mlx-community/phi-4-mini-instruct-4bit").is_err());
        assert!(params_agree(&phi, "mlx-community/Phi-4-7B-4bit").is_err());
        assert_eq!(params_billions("135m"), Some(0.135));
        assert_eq!(params_billions("e4b"), Some(4.0));
    }
}
