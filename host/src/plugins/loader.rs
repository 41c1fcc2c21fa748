//! Discovery and loading of plugin components from a directory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use wasmtime::component::{Component, InstancePre};

use super::bindings::types as wit_types;
use super::exports::{self, AliasPolicyExports, Exported, OutputParserExports};
use super::limits::{PluginState, classify};
use super::policy::AliasPolicyPlugin;
use super::{PluginError, PluginRuntime};

/// Imports a plugin may declare. Language runtimes declare WASI stdio and environment even
/// when the plugin never uses them; they are linked to stubs that trap. Anything else
/// (filesystem, sockets, clocks, randomness, HTTP) is refused at load time, so a plugin
/// that needs it fails loudly and early instead of at its first call.
pub const ALLOWED_IMPORT_PREFIXES: &[&str] = &["rapid:plugin/types@", "wasi:io/", "wasi:cli/"];

/// What to do about a refused WASI import: interpreter guests declare WASI unless told not to.
const STUB_WASI_HINT: &str = ". Interpreter guests: build with `--stub-wasi` (componentize-py: \
    `componentize-py ... componentize --stub-wasi app`; componentize-qjs: `--sync --stub-wasi`). \
    Rust: avoid the std APIs that need the host (files, clocks, randomness: use BTreeMap, not HashMap)";

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

    /// Loads every `*.wasm` directly inside `dir`, in name order. Only an unreadable
    /// directory is an error; a bad file becomes a [`LoadFailure`] naming it.
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
        for file in files {
            set.load_file(&file);
        }
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

    /// Loads one component; on failure records it and leaves the set as it was.
    pub fn load_file(&mut self, file: &Path) {
        match self.try_load(file) {
            Ok(()) => {}
            Err(error) => {
                tracing::debug!("plugin not loaded: {error}");
                self.failures.push(LoadFailure { file: file.to_path_buf(), error });
            }
        }
    }

    fn try_load(&mut self, file: &Path) -> Result<(), PluginError> {
        let fail = |reason: String| PluginError::Load { path: file.to_path_buf(), reason };
        let bytes = std::fs::read(file).map_err(|e| fail(format!("cannot read: {e}")))?;
        let (component, from_cache) =
            self.runtime.compile(&bytes).map_err(|e| fail(format!("not a valid WebAssembly component: {e}")))?;
        let (exported, wit_version) = exports::detect(&component, self.runtime.engine()).map_err(&fail)?;
        let imports = check_imports(&self.runtime, &component).map_err(&fail)?;
        let pre = self.runtime.instance_pre(&component).map_err(|e| fail(format!("cannot link: {e}")))?;
        let label = file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned());

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
                    .map_err(|e| {
                        classify(e, store.data().limiter.refused_memory, &label, "info", self.runtime.limits())
                    })?;
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
        if let Some(other) = self.plugins.iter().find(|p| p.name == info.name) {
            return Err(fail(format!("plugin name `{}` is already taken by {}", info.name, other.file.display())));
        }
        for cap in &info.provides {
            let expected = match kind {
                PluginKind::AliasPolicy => cap.kind == "alias-policy",
                PluginKind::OutputParser => cap.kind != "alias-policy",
            };
            if !expected {
                return Err(fail(format!("a {kind} plugin cannot provide {} `{}`", cap.kind, cap.name)));
            }
            let taken = match cap.kind {
                "alias-policy" => self.policies.contains_key(&cap.name),
                "tool-call-parser" => self.tool_parsers.contains_key(&cap.name),
                _ => self.reasoning_parsers.contains_key(&cap.name),
            };
            if taken {
                return Err(fail(format!("{} `{}` is already provided by another plugin", cap.kind, cap.name)));
            }
        }

        for cap in &info.provides {
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
        tracing::debug!(plugin = %info.name, %kind, from_cache, "plugin loaded from {}", file.display());
        self.plugins.push(PluginSummary {
            file: file.to_path_buf(),
            name: info.name,
            version: info.version,
            description: info.description,
            kind,
            wit_version,
            provides: info.provides,
            imports,
            from_cache,
        });
        Ok(())
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

/// The component's imports, or an error naming the first one off the allow-list.
fn check_imports(runtime: &PluginRuntime, component: &Component) -> Result<Vec<String>, String> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(runtime.engine()).map(|(name, _)| name.to_string()).collect();
    if let Some(bad) = imports.iter().find(|name| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| name.starts_with(p))) {
        return Err(format!(
            "imports `{bad}`, which rapid-host does not offer to plugins (allowed: {}){}",
            ALLOWED_IMPORT_PREFIXES.join(", "),
            if bad.starts_with("wasi:") { STUB_WASI_HINT } else { "" }
        ));
    }
    Ok(imports)
}
