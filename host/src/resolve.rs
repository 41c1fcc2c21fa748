//! Model name → weights, through the active alias-policy plugin.
//!
//! The host does what a sandboxed plugin cannot (look at the disk, measure memory), hands
//! the facts and the alias table to the policy, and checks the answer before trusting it.

use std::path::Path;

use serde::Serialize;

use crate::host_facts::HostFacts;
use crate::plugins::bindings::policy as wit;
use crate::plugins::{AliasPolicyPlugin, PluginError};
use crate::registry::{AliasEntry, AliasRegistry, AliasSource, ModelFormat};

/// Where the weights come from, in host terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    LocalDir,
    LocalFile,
    HubRepo,
    PipPackage,
}

/// A successful resolution.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedModel {
    pub requested: String,
    pub alias: Option<String>,
    pub hf_path: String,
    pub file: Option<String>,
    pub source: SourceKind,
    pub notes: Vec<String>,
    /// The alias's profile, when the name resolved to an alias.
    pub profile: Option<AliasEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveFailure {
    /// The policy refused the name; `suggestions` are explicit aliases.
    #[error("{message}")]
    Unknown { message: String, suggestions: Vec<String> },
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Resolves model names with one policy over one registry.
#[derive(Debug)]
pub struct ModelResolver<'a> {
    registry: &'a AliasRegistry,
    policy: &'a AliasPolicyPlugin,
    facts: HostFacts,
    table: Vec<wit::AliasEntry>,
    retired: Vec<wit::RetiredName>,
}

impl<'a> ModelResolver<'a> {
    pub fn new(registry: &'a AliasRegistry, policy: &'a AliasPolicyPlugin, facts: HostFacts) -> Self {
        let table = registry.iter().map(|(name, e)| to_wit_entry(name, e)).collect();
        let retired = registry
            .retired()
            .map(|(name, replacement)| wit::RetiredName {
                name: name.to_string(),
                replacement: replacement.to_string(),
            })
            .collect();
        Self { registry, policy, facts, table, retired }
    }

    pub fn resolve(&self, name: &str) -> Result<ResolvedModel, ResolveFailure> {
        let request = wit::ResolveRequest {
            name: name.to_string(),
            path: path_kind(Path::new(name)),
            aliases: self.table.clone(),
            retired: self.retired.clone(),
            host: wit::HostFacts {
                free_memory_bytes: self.facts.free_memory_bytes,
                total_memory_bytes: self.facts.total_memory_bytes,
                backend: self.facts.backend.clone(),
            },
        };
        match self.policy.resolve(&request)? {
            Ok(resolution) => self.check(name, resolution),
            Err(refusal) => Err(ResolveFailure::Unknown {
                message: printable(&refusal.message, 1000),
                // Only real aliases are worth suggesting, whatever the plugin says.
                suggestions: refusal.suggestions.into_iter().filter(|s| self.registry.get(s).is_some()).collect(),
            }),
        }
    }

    /// A policy's answer is only data from a plugin, checked against the alias table before
    /// the host opens or downloads anything:
    /// - an alias must be in the table, with the table's repository, source and file;
    /// - a name that is an alias resolves to an alias (no other model under its name);
    /// - a local path only when the user typed that path; a pip package only for an alias;
    /// - a repository is `org/repo`, a file a plain file name (no separators, no `..`).
    fn check(&self, name: &str, r: wit::Resolution) -> Result<ResolvedModel, ResolveFailure> {
        let bad = |detail: String| {
            ResolveFailure::Plugin(PluginError::BadAnswer {
                plugin: self.policy.name().to_string(),
                call: "resolve",
                detail: printable(&detail, 500),
            })
        };
        let source = match r.source {
            wit::SourceKind::LocalDir => SourceKind::LocalDir,
            wit::SourceKind::LocalFile => SourceKind::LocalFile,
            wit::SourceKind::HubRepo => SourceKind::HubRepo,
            wit::SourceKind::PipPackage => SourceKind::PipPackage,
        };
        if r.hf_path.trim().is_empty() {
            return Err(bad(String::from("empty hf_path")));
        }
        if let Some(file) = &r.file
            && !is_plain_file_name(file)
        {
            return Err(bad(format!("file `{file}` is not a plain file name")));
        }
        let (profile, file) = match &r.alias {
            Some(alias) => {
                let entry =
                    self.registry.get(alias).ok_or_else(|| bad(format!("alias `{alias}` is not in the table")))?;
                if entry.hf_path != r.hf_path {
                    return Err(bad(format!("alias `{alias}` is {}, not {}", entry.hf_path, r.hf_path)));
                }
                let table_source = match entry.source {
                    AliasSource::Hub => SourceKind::HubRepo,
                    AliasSource::Pip => SourceKind::PipPackage,
                };
                if source != table_source {
                    return Err(bad(format!("alias `{alias}` comes from {table_source:?}, not {source:?}")));
                }
                if r.file.is_some() && r.file != entry.file {
                    return Err(bad(format!(
                        "alias `{alias}` is the file {}, not {}",
                        entry.file.as_deref().unwrap_or("chosen by the repository"),
                        r.file.as_deref().unwrap_or_default()
                    )));
                }
                (Some(entry.clone()), entry.file.clone())
            }
            None => {
                if self.registry.get(name).is_some() {
                    return Err(bad(format!(
                        "`{name}` is an alias, but the answer ({}) names no alias: no other model may run under an \
                         alias's name",
                        r.hf_path
                    )));
                }
                match source {
                    SourceKind::LocalDir | SourceKind::LocalFile => {
                        if r.file.is_some() || !same_local_path(name, &r.hf_path) {
                            return Err(bad(format!(
                                "a local path is allowed only when it is the path the user gave (`{name}`), not `{}`",
                                r.hf_path
                            )));
                        }
                    }
                    SourceKind::HubRepo if !is_repo_id(&r.hf_path) => {
                        return Err(bad(format!("`{}` is not an org/repo id", r.hf_path)));
                    }
                    SourceKind::HubRepo => {}
                    SourceKind::PipPackage => {
                        return Err(bad(String::from("a pip package can only be an alias from the table")));
                    }
                }
                (None, r.file)
            }
        };
        Ok(ResolvedModel {
            requested: name.to_string(),
            alias: r.alias,
            hf_path: r.hf_path,
            file,
            source,
            notes: r.notes.iter().take(10).map(|n| printable(n, 500)).collect(),
            profile,
        })
    }
}

/// `name` with no directory part and nothing a path could escape through.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', ':'])
        && !name.chars().any(char::is_control)
        && name.len() <= 255
}

/// `org/repo`: exactly one `/`, both sides non-empty, no `.` or `..`, no other characters
/// than a hub id may carry (the SDK's rule, which the host cannot link).
fn is_repo_id(name: &str) -> bool {
    let mut parts = name.split('/');
    let (Some(org), Some(repo), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let ok = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.len() <= 96
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    ok(org) && ok(repo)
}

/// Whether the policy's path is the one the user typed (or the same file or directory).
fn same_local_path(typed: &str, answered: &str) -> bool {
    if typed == answered {
        return Path::new(typed).exists();
    }
    match (std::fs::canonicalize(typed), std::fs::canonicalize(answered)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Text from a plugin, safe to print: control characters (terminal escapes) replaced, at
/// most `max` characters.
fn printable(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

fn path_kind(path: &Path) -> wit::PathKind {
    if path.is_dir() {
        wit::PathKind::Directory
    } else if path.is_file() {
        if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            wit::PathKind::GgufFile
        } else {
            wit::PathKind::OtherFile
        }
    } else {
        wit::PathKind::Missing
    }
}

fn to_wit_entry(name: &str, e: &AliasEntry) -> wit::AliasEntry {
    wit::AliasEntry {
        name: name.to_string(),
        hf_path: e.hf_path.clone(),
        source: match e.source {
            AliasSource::Hub => wit::SourceKind::HubRepo,
            AliasSource::Pip => wit::SourceKind::PipPackage,
        },
        format: match e.format {
            ModelFormat::Mlx => wit::ModelFormat::Mlx,
            ModelFormat::Gguf => wit::ModelFormat::Gguf,
            ModelFormat::Safetensors => wit::ModelFormat::Safetensors,
        },
        arch: e.arch.clone(),
        quant: e.quant.clone(),
        file: e.file.clone(),
        size_bytes: e.size_bytes,
        is_moe: e.is_moe,
        is_hybrid: e.is_hybrid,
        loadable: e.loadable(),
    }
}

/// Fixtures for alias-policy plugins (`rapid-host plugin test`): a model name, optionally
/// the free memory to report, and the expected alias / repository or refusal.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFixtures {
    #[serde(default)]
    pub about: Option<String>,
    pub cases: Vec<PolicyCase>,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCase {
    pub name: String,
    pub model: String,
    /// Free memory handed to the policy, e.g. `16GiB`.
    #[serde(default)]
    pub free_memory: Option<String>,
    pub expect: PolicyExpect,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyExpect {
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default)]
    pub hf_path: Option<String>,
    /// The policy refuses, with a message containing this text.
    #[serde(default)]
    pub error_contains: Option<String>,
    /// Suggestions that must be offered (in this order, at the start of the list).
    #[serde(default)]
    pub suggestions: Vec<String>,
}

impl PolicyFixtures {
    /// One `.json` file or every `*.json` in a directory.
    pub fn load(path: &Path) -> Result<Vec<(std::path::PathBuf, Self)>, std::io::Error> {
        crate::parsers::fixtures::json_files(path)?
            .into_iter()
            .map(|file| {
                let text = std::fs::read_to_string(&file)?;
                let parsed = serde_json::from_str(&text).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", file.display()))
                })?;
                Ok((file, parsed))
            })
            .collect()
    }
}

impl PolicyCase {
    pub fn check(&self, outcome: &Result<ResolvedModel, ResolveFailure>) -> Result<(), String> {
        match (outcome, &self.expect.error_contains) {
            (Ok(r), None) => {
                if self.expect.alias.is_some() && r.alias != self.expect.alias {
                    return Err(format!("alias {:?}, want {:?}", r.alias, self.expect.alias));
                }
                match &self.expect.hf_path {
                    Some(want) if *want != r.hf_path => Err(format!("hf_path {}, want {want}", r.hf_path)),
                    _ => Ok(()),
                }
            }
            (Ok(r), Some(want)) => Err(format!("resolved to {} but should fail with {want:?}", r.hf_path)),
            (Err(ResolveFailure::Unknown { message, suggestions }), Some(want)) => {
                if !message.contains(want.as_str()) {
                    return Err(format!("error {message:?} does not contain {want:?}"));
                }
                if !suggestions.starts_with(&self.expect.suggestions) {
                    return Err(format!("suggestions {suggestions:?}, want {:?} first", self.expect.suggestions));
                }
                Ok(())
            }
            (Err(e), _) => Err(format!("failed: {e}")),
        }
    }
}
