//! Calls into alias-policy plugins.

use std::path::{Path, PathBuf};

use super::bindings::alias_policy::AliasPolicyPluginPre;
use super::bindings::alias_policy::exports::rapid::plugin::alias_policy as wit;
use super::limits::{PluginState, classify};
use super::loader::{Info, convert_policy_info};
use super::{PluginError, PluginRuntime};

/// An alias-policy plugin, ready to instantiate per call.
#[derive(Clone)]
pub struct AliasPolicyPlugin {
    label: String,
    file: PathBuf,
    pre: AliasPolicyPluginPre<PluginState>,
    runtime: PluginRuntime,
}

impl std::fmt::Debug for AliasPolicyPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AliasPolicyPlugin").field("name", &self.label).field("file", &self.file).finish_non_exhaustive()
    }
}

impl AliasPolicyPlugin {
    pub(crate) fn new(
        label: String,
        file: PathBuf,
        pre: AliasPolicyPluginPre<PluginState>,
        runtime: PluginRuntime,
    ) -> Self {
        Self { label, file, pre, runtime }
    }

    /// Names the plugin in errors by its own name once `info` has told it.
    pub(crate) fn set_label(&mut self, name: &str) {
        self.label = name.to_string();
    }

    pub fn name(&self) -> &str {
        &self.label
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    pub(crate) fn info(&self) -> Result<Info, PluginError> {
        self.call("info", |plugin, store| plugin.rapid_plugin_alias_policy().call_info(store)).map(convert_policy_info)
    }

    /// Asks the policy to resolve `request`. The outer error is the plugin failing (trap,
    /// deadline, memory cap); the inner one is the policy's own answer.
    pub fn resolve(
        &self,
        request: &wit::ResolveRequest,
    ) -> Result<Result<wit::Resolution, wit::ResolveError>, PluginError> {
        self.call("resolve", |plugin, store| plugin.rapid_plugin_alias_policy().call_resolve(store, request))
    }

    /// One call in a fresh store: whatever happens inside, nothing outlives it.
    fn call<R>(
        &self,
        name: &'static str,
        f: impl FnOnce(
            &super::bindings::alias_policy::AliasPolicyPlugin,
            &mut wasmtime::Store<PluginState>,
        ) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = self.runtime.store();
        let result = self.pre.instantiate(&mut store).and_then(|plugin| f(&plugin, &mut store));
        result.map_err(|e| classify(e, store.data().limiter.refused_memory, &self.label, name, self.runtime.limits()))
    }
}
