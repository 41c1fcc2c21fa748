//! Discovery and loading of plugin components from a directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime::component::InstancePre;

use super::bindings::types as wit_types;
use super::exports::{self, AliasPolicyExports, Exported, OutputParserExports};
use super::limits::{PluginState, classify};
use super::policy::AliasPolicyPlugin;
use super::{PluginError, PluginRuntime};

pub use super::inspect::ALLOWED_IMPORT_PREFIXES;

/// The plugins that ship with rapid-host (`scripts/build-plugins` names them so). When two
/// files claim the same plugin or capability name, a bundled one keeps it; between two
/// others neither loads. File order never decides: `00-hijack.wasm` cannot take `hermes`.
pub const BUNDLED_PLUGIN_FILES: &[&str] = &[
    "parser-deepseek.wasm",
    "parser-gemma4.wasm",
    "parser-glm47.wasm",
    "parser-harmony.wasm",
    "parser-hermes.wasm",
    "parser-kimi.wasm",
    "parser-llama.wasm",
    "parser-minimax.wasm",
    "parser-qwen3-coder.wasm",
    "parser-think.wasm",
    "policy-legacy.wasm",
    "policy-memory-fit.wasm",
    "policy-strict.wasm",
];

/// What a plugin component implements, from the interfaces it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    AliasPolicy,
    OutputParser,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AliasPolicy => "alias-policy",
            Self::OutputParser => "output-parser",
        })
    }
}

/// A capability a plugin provides: `(name, kind)`, kind as in the WIT (`tool-call-parser`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provided {
    pub name: String,
    pub kind: &'static str,
}

/// A loaded plugin, as `rapid-host plugins` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PluginSummary {
    pub file: PathBuf,
    pub name: String,
    pub version: String,
    pub description: String,
    pub kind: PluginKind,
    pub wit_version: String,
    pub provides: Vec<Provided>,
    pub imports: Vec<String>,
    /// Whether the precompiled artifact came from the cache.
    pub from_cache: bool,
}

/// A file that did not load, and why. The other plugins load regardless.
#[derive(Debug)]
pub struct LoadFailure {
    pub file: PathBuf,
    pub error: PluginError,
}

/// An output-parser plugin, loaded and linked; sessions are started per response.
#[derive(Clone)]
pub struct OutputParserPlugin {
    pub name: String,
    pub file: PathBuf,
    pub wit_version: String,
    pub pre: InstancePre<PluginState>,
    pub exports: OutputParserExports,
}

impl fmt::Debug for OutputParserPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputParserPlugin").field("name", &self.name).field("file", &self.file).finish_non_exhaustive()
    }
}

/// All plugins loaded from one directory.
#[derive(Debug)]
pub struct PluginSet {
    runtime: PluginRuntime,
    pub plugins: Vec<PluginSummary>,
    pub failures: Vec<LoadFailure>,
    policies: BTreeMap<String, AliasPolicyPlugin>,
    tool_parsers: BTreeMap<String, OutputParserPlugin>,
    reasoning_parsers: BTreeMap<String, OutputParserPlugin>,
}

/// A component that loaded and answered `info`, not yet registered in a set.
struct Candidate {
    summary: PluginSummary,
    /// SHA-256 of the file: two copies of the same bytes are one plugin.
    digest: [u8; 32],
    policy: Option<AliasPolicyPlugin>,
    parser: Option<OutputParserPlugin>,
}

impl Candidate {
    fn file_name(&self) -> String {
        file_label(&self.summary.file)
    }

    fn bundled(&self) -> bool {
        BUNDLED_PLUGIN_FILES.contains(&self.file_name().as_str())
    }

    /// The names this plugin claims: its own, and each capability's.
    fn claims(&self) -> Vec<(&'static str, String)> {
        let mut claims = vec![("plugin name", self.summary.name.clone())];
        claims.extend(self.summary.provides.iter().map(|c| (c.kind, c.name.clone())));
        claims
    }
}

fn file_label(file: &Path) -> String {
    file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned())
}

impl PluginSet {
    pub fn empty(runtime: PluginRuntime) -> Self {
        Self {
            runtime,
            plugins: Vec::new(),
            failures: Vec::new(),
            policies: BTreeMap::new(),
            tool_parsers: BTreeMap::new(),
            reasoning_parsers: BTreeMap::new(),
        }
    }

    /// Loads every `*.wasm` directly inside `dir`. Only an unreadable directory is an
    /// error; a bad file becomes a [`LoadFailure`] naming it. Names claimed by more than one
    /// file are settled by [`settle_conflicts`], whatever the files are called.
    pub fn load_dir(runtime: PluginRuntime, dir: &Path) -> Result<Self, PluginError> {
        let unreadable = |e: std::io::Error| PluginError::Load {
            path: dir.to_path_buf(),
            reason: format!("cannot read plugin directory: {e}"),
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(unreadable)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "wasm") && p.is_file())
            .collect();
        files.sort();
        let mut set = Self::empty(runtime);
        let mut candidates = Vec::new();
        for file in files {
            match set.inspect(&file) {
                Ok(candidate) => candidates.push(candidate),
                Err(error) => set.refuse(&file, error),
            }
        }
        let (winners, losers) = settle_conflicts(candidates);
        for (candidate, reason) in losers {
            let path = candidate.summary.file.clone();
            set.refuse(&path, PluginError::Load { path: path.clone(), reason });
        }
        for candidate in winners {
            set.register(candidate);
        }
        set.failures.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(set)
    }

    /// Adds the plugins of `dir` to this set; names already taken stay with their owner.
    pub fn load_dir_into(&mut self, dir: &Path) -> Result<(), PluginError> {
        let other = Self::load_dir(self.runtime.clone(), dir)?;
        for summary in other.plugins {
            self.load_file(&summary.file);
        }
        Ok(())
    }

    /// Loads one component into this set; names it claims that are already taken stay with
    /// their owner. On failure records it and leaves the set as it was.
    pub fn load_file(&mut self, file: &Path) {
        let result = self.inspect(file).and_then(|candidate| {
            for (kind, name) in candidate.claims() {
                if let Some(owner) = self.owner_of(kind, &name) {
                    return Err(PluginError::Load {
                        path: file.to_path_buf(),
                        reason: format!("{kind} `{name}` is already taken by {}", owner.display()),
                    });
                }
            }
            Ok(candidate)
        });
        match result {
            Ok(candidate) => self.register(candidate),
            Err(error) => self.refuse(file, error),
        }
    }

    fn refuse(&mut self, file: &Path, error: PluginError) {
        tracing::debug!("plugin not loaded: {error}");
        self.failures.push(LoadFailure { file: file.to_path_buf(), error });
    }

    /// The file that already provides `name` as `kind` in this set.
    fn owner_of(&self, kind: &str, name: &str) -> Option<&Path> {
        match kind {
            "plugin name" => self.plugins.iter().find(|p| p.name == name).map(|p| p.file.as_path()),
            "alias-policy" => self.policies.get(name).map(AliasPolicyPlugin::file),
            "tool-call-parser" => self.tool_parsers.get(name).map(|p| p.file.as_path()),
            _ => self.reasoning_parsers.get(name).map(|p| p.file.as_path()),
        }
    }

    /// Reads, checks, compiles and links one component and asks it for its `info`. Nothing
    /// is compiled before the file's size, magic bytes, imports and exports have passed.
    fn inspect(&self, file: &Path) -> Result<Candidate, PluginError> {
        use sha2::{Digest, Sha256};

        let fail = |reason: String| PluginError::Load { path: file.to_path_buf(), reason };
        let bytes = super::inspect::read_component(file).map_err(&fail)?;
        let interface = super::inspect::interface(&bytes).map_err(&fail)?;
        super::inspect::check_imports(&interface.imports).map_err(&fail)?;
        let (exported, wit_version) = exports::detect(&interface.exports).map_err(&fail)?;
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let (component, from_cache) =
            self.runtime.compile(&bytes).map_err(|e| fail(format!("not a valid WebAssembly component: {e}")))?;
        drop(bytes);
        let pre = self.runtime.instance_pre(&component).map_err(|e| fail(format!("cannot link: {e}")))?;
        let label = file_label(file);

        let (kind, info, policy, parser) = match exported {
            Exported::AliasPolicy => {
                let found = AliasPolicyExports::find(&component, &wit_version).map_err(&fail)?;
                let mut plugin =
                    AliasPolicyPlugin::new(label.clone(), file.to_path_buf(), pre, found, self.runtime.clone());
                let info = convert_info(plugin.info()?);
                plugin.set_label(&info.name);
                (PluginKind::AliasPolicy, info, Some(plugin), None)
            }
            Exported::OutputParser => {
                let found = OutputParserExports::find(&component, &wit_version).map_err(&fail)?;
                let mut store = self.runtime.store();
                let info = pre
                    .instantiate(&mut store)
                    .and_then(|instance| {
                        let func = instance.get_typed_func::<(), (wit_types::PluginInfo,)>(&mut store, &found.info)?;
                        Ok(func.call(&mut store, ())?.0)
                    })
                    .map_err(|e| classify(e, store.data(), &label, "info", self.runtime.limits()))?;
                let info = convert_info(info);
                let plugin = OutputParserPlugin {
                    name: info.name.clone(),
                    file: file.to_path_buf(),
                    wit_version: wit_version.clone(),
                    pre,
                    exports: found,
                };
                (PluginKind::OutputParser, info, None, Some(plugin))
            }
        };

        if info.name.trim().is_empty() || info.provides.is_empty() {
            return Err(fail(String::from("plugin info must carry a name and provide at least one capability")));
        }
        for cap in &info.provides {
            let expected = match kind {
                PluginKind::AliasPolicy => cap.kind == "alias-policy",
                PluginKind::OutputParser => cap.kind != "alias-policy",
            };
            if !expected {
                return Err(fail(format!("a {kind} plugin cannot provide {} `{}`", cap.kind, cap.name)));
            }
        }
        let imports = interface.imports;
        let summary = PluginSummary {
            file: file.to_path_buf(),
            name: info.name,
            version: info.version,
            description: info.description,
            kind,
            wit_version,
            provides: info.provides,
            imports,
            from_cache,
        };
        Ok(Candidate { summary, digest, policy, parser })
    }

    fn register(&mut self, candidate: Candidate) {
        let Candidate { summary, policy, parser, .. } = candidate;
        for cap in &summary.provides {
            match (cap.kind, &policy, &parser) {
                ("alias-policy", Some(policy), _) => {
                    self.policies.insert(cap.name.clone(), policy.clone());
                }
                ("tool-call-parser", _, Some(parser)) => {
                    self.tool_parsers.insert(cap.name.clone(), parser.clone());
                }
                ("reasoning-parser", _, Some(parser)) => {
                    self.reasoning_parsers.insert(cap.name.clone(), parser.clone());
                }
                _ => {}
            }
        }
        tracing::debug!(plugin = %summary.name, kind = %summary.kind, from_cache = summary.from_cache,
            "plugin loaded from {}", summary.file.display());
        self.plugins.push(summary);
    }

    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    pub fn policy(&self, name: &str) -> Option<&AliasPolicyPlugin> {
        self.policies.get(name)
    }

    pub fn policy_names(&self) -> impl Iterator<Item = &str> {
        self.policies.keys().map(String::as_str)
    }

    /// The plugin providing tool-call parser `name`.
    pub fn tool_parser(&self, name: &str) -> Option<&OutputParserPlugin> {
        self.tool_parsers.get(name)
    }

    /// The plugin providing reasoning parser `name`.
    pub fn reasoning_parser(&self, name: &str) -> Option<&OutputParserPlugin> {
        self.reasoning_parsers.get(name)
    }

    pub fn tool_parser_names(&self) -> BTreeSet<String> {
        self.tool_parsers.keys().cloned().collect()
    }

    pub fn reasoning_parser_names(&self) -> BTreeSet<String> {
        self.reasoning_parsers.keys().cloned().collect()
    }
}

/// Plugin info in host terms, whichever world it came from.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub version: String,
    pub description: String,
    pub provides: Vec<Provided>,
}

fn convert_info(info: wit_types::PluginInfo) -> Info {
    Info {
        name: info.name,
        version: info.version,
        description: info.description,
        provides: info
            .provides
            .into_iter()
            .map(|c| Provided {
                kind: match c.kind {
                    wit_types::CapabilityKind::AliasPolicy => "alias-policy",
                    wit_types::CapabilityKind::ToolCallParser => "tool-call-parser",
                    wit_types::CapabilityKind::ReasoningParser => "reasoning-parser",
                },
                name: c.name,
            })
            .collect(),
    }
}

/// Splits candidates into those that load and those refused, with the reason. Identical
/// files are one plugin (kept once). A name claimed by several different plugins stays with
/// the one bundled plugin among them; with none (or two) bundled, all claimants are
/// refused. Each round looks at every conflict at once and the rounds repeat until none
/// is left, so the outcome depends on the files, never on their order.
fn settle_conflicts(candidates: Vec<Candidate>) -> (Vec<Candidate>, Vec<(Candidate, String)>) {
    let mut refused: BTreeMap<usize, String> = BTreeMap::new();
    // Copies of the same bytes: keep the bundled copy, else the first name.
    let mut by_digest: BTreeMap<[u8; 32], Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        by_digest.entry(c.digest).or_default().push(i);
    }
    for copies in by_digest.values().filter(|copies| copies.len() > 1) {
        let keep = copies.iter().copied().find(|&i| candidates[i].bundled()).unwrap_or(copies[0]);
        for &i in copies.iter().filter(|&&i| i != keep) {
            refused.insert(
                i,
                format!("is a copy of {} (the same bytes), which is loaded instead", candidates[keep].file_name()),
            );
        }
    }
    loop {
        let mut claimants: BTreeMap<(&'static str, String), Vec<usize>> = BTreeMap::new();
        for (i, c) in candidates.iter().enumerate().filter(|(i, _)| !refused.contains_key(i)) {
            for claim in c.claims() {
                claimants.entry(claim).or_default().push(i);
            }
        }
        let mut losers: BTreeMap<usize, String> = BTreeMap::new();
        for ((kind, name), who) in claimants.iter().filter(|(_, who)| who.len() > 1) {
            let files: Vec<String> = who.iter().map(|&i| candidates[i].file_name()).collect();
            let bundled: Vec<usize> = who.iter().copied().filter(|&i| candidates[i].bundled()).collect();
            if let [keeper] = bundled.as_slice() {
                for &i in who.iter().filter(|&&i| i != *keeper) {
                    losers.entry(i).or_insert_with(|| {
                        format!(
                            "{kind} `{name}` belongs to the bundled plugin {}, which keeps it; give this plugin \
                             another name",
                            candidates[*keeper].file_name()
                        )
                    });
                }
            } else {
                for &i in who {
                    losers.entry(i).or_insert_with(|| {
                        format!(
                            "{kind} `{name}` is claimed by {}; none of them is loaded, remove or rename all but one",
                            files.join(" and ")
                        )
                    });
                }
            }
        }
        if losers.is_empty() {
            break;
        }
        refused.extend(losers);
    }
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for (i, candidate) in candidates.into_iter().enumerate() {
        match refused.remove(&i) {
            Some(reason) => losers.push((candidate, reason)),
            None => winners.push(candidate),
        }
    }
    (winners, losers)
}
