//! The wasmtime engine shared by all plugins, configured as a sandbox.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine, Store};

use super::PluginError;
use super::cache::ArtifactCache;
use super::limits::{PluginState, SandboxLimits, StoreLimiter};

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
}

impl PluginRuntime {
    /// A runtime with the given limits; `cache_dir` keeps precompiled components.
    pub fn new(limits: SandboxLimits, cache_dir: Option<PathBuf>) -> Result<Self, PluginError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        // Epochs bound every call in wall-clock time at almost no cost per call.
        config.epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| PluginError::Runtime(format!("{e:#}")))?;
        spawn_epoch_ticker(&engine);
        let cache = cache_dir.map(|dir| ArtifactCache::new(dir, &engine));
        Ok(Self { inner: Arc::new(Inner { engine, limits, cache }) })
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

    /// A fresh store for one call: memory cap and an epoch deadline.
    pub fn store(&self) -> Store<PluginState> {
        let limits = &self.inner.limits;
        let mut store = Store::new(&self.inner.engine, PluginState { limiter: StoreLimiter::new(limits) });
        store.limiter(|state| &mut state.limiter);
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        store
    }
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
