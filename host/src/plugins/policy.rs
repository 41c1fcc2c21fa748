//! Calls into alias-policy plugins.

use std::path::{Path, PathBuf};

use wasmtime::component::{Instance, InstancePre};

use super::bindings::policy as wit;
use super::bindings::types::PluginInfo;
use super::exports::AliasPolicyExports;
use super::limits::{PluginState, classify};
use super::{PluginError, PluginRuntime};

/// An alias-policy plugin, ready to instantiate per call.
#[derive(Clone)]
pub struct AliasPolicyPlugin {
    label: String,
    file: PathBuf,
    pre: InstancePre<PluginState>,
    exports: AliasPolicyExports,
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
        pre: InstancePre<PluginState>,
        exports: AliasPolicyExports,
        runtime: PluginRuntime,
    ) -> Self {
        Self { label, file, pre, exports, runtime }
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

    pub(crate) fn info(&self) -> Result<PluginInfo, PluginError> {
        self.call("info", |instance, store| {
            let func = instance.get_typed_func::<(), (PluginInfo,)>(&mut *store, &self.exports.info)?;
            Ok(func.call(&mut *store, ())?.0)
        })
    }

    /// Asks the policy to resolve `request`. The outer error is the plugin failing (trap,
    /// deadline, memory cap); the inner one is the policy's own answer.
    pub fn resolve(
        &self,
        request: &wit::ResolveRequest,
    ) -> Result<Result<wit::Resolution, wit::ResolveError>, PluginError> {
        self.call("resolve", |instance, store| {
            let func = instance
                .get_typed_func::<(&wit::ResolveRequest,), (Result<wit::Resolution, wit::ResolveError>,)>(
                    &mut *store,
                    &self.exports.resolve,
                )?;
            Ok(func.call(&mut *store, (request,))?.0)
        })
    }

    /// One call in a fresh store: whatever happens inside, nothing outlives it.
    fn call<R>(
        &self,
        name: &'static str,
        f: impl FnOnce(&Instance, &mut wasmtime::Store<PluginState>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = self.runtime.store();
        let result = self.pre.instantiate(&mut store).and_then(|instance| f(&instance, &mut store));
        result.map_err(|e| classify(e, store.data(), &self.label, name, self.runtime.limits()))
    }
}
