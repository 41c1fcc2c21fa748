//! The WebAssembly plugin runtime: a small facade over focused modules.
//!
//! - [`runtime`]: the wasmtime engine, its sandbox configuration and the epoch ticker.
//! - [`cache`]: precompiled artifacts keyed by file hash and engine.
//! - [`limits`]: per-store memory cap, output limits and the classification of failed calls.
//! - [`inspect`]: size, magic bytes, imports and exports of a file, before compiling it.
//! - [`loader`]: discovery of `*.wasm` components, kind and version, name conflicts.
//! - [`policy`]: calling alias-policy plugins.
//!
//! Every call runs in a fresh `Store` instantiated from a cached `InstancePre`, so a
//! plugin that traps, loops or bloats poisons only the store of that one call.

pub mod bindings;
pub mod cache;
pub mod exports;
pub mod hub;
pub mod inspect;
pub mod limits;
pub mod loader;
pub mod policy;
pub mod runtime;

pub use hub::PluginHub;
pub use limits::SandboxLimits;
pub use loader::{LoadFailure, PluginKind, PluginSet, PluginSummary};
pub use policy::AliasPolicyPlugin;
pub use runtime::PluginRuntime;

use std::path::PathBuf;
use std::time::Duration;

/// Why a plugin could not be loaded or a call into it failed. The host keeps running in
/// every case; the error names the plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("plugin `{plugin}` trapped in {call}: {detail}")]
    Trap { plugin: String, call: &'static str, detail: String },
    #[error("plugin `{plugin}` ran past its {limit:?} deadline in {call} and was stopped")]
    Timeout { plugin: String, call: &'static str, limit: Duration },
    #[error("plugin `{plugin}` tried to grow its memory past the {limit_bytes}-byte cap in {call} and was stopped")]
    MemoryExceeded { plugin: String, call: &'static str, limit_bytes: usize },
    #[error("plugin `{plugin}` returned more than {limit_bytes} bytes from {call} ({scope}) and was stopped")]
    OutputExceeded { plugin: String, call: &'static str, limit_bytes: usize, scope: limits::OutputScope },
    #[error("plugin `{plugin}` returned an invalid answer from {call}: {detail}")]
    BadAnswer { plugin: String, call: &'static str, detail: String },
    #[error("plugin runtime: {0}")]
    Runtime(String),
}

/// The WIT package versions this host can load.
/// One per directory `wit/since_vX.Y.Z`; see `wit/README.md` for the policy.
pub const SUPPORTED_WIT_VERSIONS: &[&str] = &["0.1.0", "0.2.0"];
/// The WIT package namespace and name.
pub const WIT_PACKAGE: &str = "rapid:plugin";
