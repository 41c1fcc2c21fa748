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
                message: refusal.message,
                // Only real aliases are worth suggesting, whatever the plugin says.
                suggestions: refusal.suggestions.into_iter().filter(|s| self.registry.get(s).is_some()).collect(),
            }),
        }
    }

    /// A policy's answer is only data from a plugin: it must name a real alias, and what
    /// it says about that alias must match the table.
    fn check(&self, name: &str, r: wit::Resolution) -> Result<ResolvedModel, ResolveFailure> {
        let bad = |detail: String| {
            ResolveFailure::Plugin(PluginError::BadAnswer {
                plugin: self.policy.name().to_string(),
                call: "resolve",
                detail,
            })
        };
        let profile = match &r.alias {
            Some(alias) => {
                let entry =
                    self.registry.get(alias).ok_or_else(|| bad(format!("alias `{alias}` is not in the table")))?;
                if entry.hf_path != r.hf_path {
                    return Err(bad(format!("alias `{alias}` is {}, not {}", entry.hf_path, r.hf_path)));
                }
                Some(entry.clone())
            }
            None => None,
        };
        if r.hf_path.trim().is_empty() {
            return Err(bad(String::from("empty hf_path")));
        }
        Ok(ResolvedModel {
            requested: name.to_string(),
            alias: r.alias,
            hf_path: r.hf_path,
            file: r.file,
            source: match r.source {
                wit::SourceKind::LocalDir => SourceKind::LocalDir,
                wit::SourceKind::LocalFile => SourceKind::LocalFile,
                wit::SourceKind::HubRepo => SourceKind::HubRepo,
                wit::SourceKind::PipPackage => SourceKind::PipPackage,
            },
            notes: r.notes,
            profile,
        })
    }
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
