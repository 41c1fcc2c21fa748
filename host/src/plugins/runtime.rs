//! The wasmtime engine shared by all plugins, configured as a sandbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, Store};

use super::PluginError;
use super::cache::ArtifactCache;
use super::limits::{OutputLimit, OutputScope, PluginState, SandboxLimits, StoreLimiter};
use crate::parsers::cost::ParserCosts;

/// How often the epoch advances. Deadlines are whole ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The engine, its limits and the artifact cache. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PluginRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    engine: Engine,
    limits: SandboxLimits,
    cache: Option<ArtifactCache>,
    /// Every store counts the wasm instructions it runs (see [`PluginRuntime::metered`]).
    metered: bool,
    parser_costs: ParserCosts,
}

impl PluginRuntime {
    /// A runtime with the given limits; `cache_dir` keeps precompiled components.
    pub fn new(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        Self::build(limits, cache_dir, false)
    }

    /// A runtime whose stores count the wasm instructions they run (wasmtime fuel): a cost
    /// measure that does not depend on the machine or its load, for tests that bound a
    /// plugin's work and for `plugin test`. Stores start with unlimited fuel; a caller can
    /// set a budget (`ParserSession::set_fuel`). Metered code runs somewhat slower, so the
    /// server does not use it.
    pub fn metered(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        Self::build(limits, cache_dir, true)
    }

    fn build(limits: SandboxLimits, cache_dir: Option<PathBuf>, metered: bool) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Epochs bound every call in wall-clock time at almost no cost per call.
        config.epoch_interruption(true);
        config.consume_fuel(metered);
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);
        // The compatibility hash covers the fuel setting, so metered artifacts get their own files.
        let cache = cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        let parser_costs = ParserCosts::default();
        Ok(Self { inner: Arc::new(Inner { engine, limits, cache, metered, parser_costs }) })
    }

    /// The default cache directory: `$XDG_CACHE_HOME/rapid-host/plugins` or
    /// `~/.cache/rapid-host/plugins`.
    pub fn default_cache_dir() -> Option<PathBuf> {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
        Some(base.join("rapid-host").join("plugins"))
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn limits(&self) -> &SandboxLimits {
        &self.inner.limits
    }

    /// Whether stores count instructions ([`PluginRuntime::metered`]).
    pub fn is_metered(&self) -> bool {
        self.inner.metered
    }

    /// What each parser plugin has cost so far, across every pipeline of this runtime.
    pub fn parser_costs(&self) -> &ParserCosts {
        &self.inner.parser_costs
    }

    /// Compiles `bytes`, or loads the precompiled artifact; reports whether the cache hit.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Component, bool), String> {
        match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, bytes),
            None => Component::new(&self.inner.engine, bytes).map(|c| (c, false)).map_err(|e| format!("{e:#}")),
        }
    }

    /// Links `component` with nothing but trapping stubs for its allowed imports.
    pub fn instance_pre(&self, component: &Component) -> Result<InstancePre<PluginState>, String> {
        let mut linker = Linker::new(&self.inner.engine);
        // The loader has already rejected imports off the allow-list; what remains (WASI
        // stdio and environment declared by language runtimes) traps if ever called, so
        // plugins see no filesystem, network, clock, randomness or environment.
        linker.define_unknown_imports_as_traps(component).map_err(|e| format!("{e:#}"))?;
        linker.instantiate_pre(component).map_err(|e| format!("{e:#}"))
    }

    /// A fresh store for one call: memory cap, output limit and an epoch deadline.
    pub fn store(&self) -> Store<PluginState> {
        let limits = &self.inner.limits;
        let output_limit = OutputLimit { bytes: limits.output_bytes_per_call, scope: OutputScope::PerCall };
        let state = PluginState { limiter: StoreLimiter::new(limits), output_limit };
        let mut store = Store::new(&self.inner.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        if self.inner.metered {
            // Counted, not limited: the wall-clock deadline still bounds every call.
            if let Err(e) = store.set_fuel(u64::MAX) {
                tracing::warn!("cannot give a metered plugin store fuel: {e:#}");
            }
        }
        set_output_limit(&mut store, output_limit);
        store
    }
}

/// Caps what the next calls in `store` may hand back (wasmtime's hostcall fuel is per call).
pub fn set_output_limit(store: &mut Store<PluginState>, limit: OutputLimit) {
    store.data_mut().output_limit = limit;
    store.set_hostcall_fuel(limit.bytes);
}

/// Epoch ticks that make up `timeout` (at least one).
pub fn deadline_ticks(timeout: Duration) -> u64 {
    let ticks = timeout.as_millis().div_ceil(EPOCH_TICK.as_millis()).max(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Advances the engine's epoch until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("plugin-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot start the plugin epoch thread, plugin deadlines will not fire: {e}");
    }
}
