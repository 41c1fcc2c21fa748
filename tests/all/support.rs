//! Shared helpers: where the built plugins are, and runtimes with test limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rapid_host::host_facts::HostFacts;
use rapid_host::plugins::{AliasPolicyPlugin, PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::registry::AliasRegistry;

/// The checkout the tests read fixtures from: where they were built, unless
/// `RAPID_HOST_REPO` names a copy (a test binary carried to a GPU machine).
pub fn repo_root() -> PathBuf {
    match std::env::var_os("RAPID_HOST_REPO") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
    }
}

/// The device model tests run on: `RAPID_HOST_TEST_DEVICE` (cpu, cuda, metal), cpu by default,
/// so the same tests check a GPU build where one is lent.
pub fn test_device() -> candle_core::Device {
    let name = std::env::var("RAPID_HOST_TEST_DEVICE").unwrap_or_else(|_| "cpu".to_string());
    rapid_host::engine::device(&name).unwrap_or_else(|e| panic!("RAPID_HOST_TEST_DEVICE={name}: {e}"))
}

pub fn plugins_dir() -> PathBuf {
    repo_root().join("plugins")
}

/// A built plugin component; fails with instructions when the plugins were not built.
pub fn plugin_file(relative: &str) -> PathBuf {
    let path = plugins_dir().join(relative);
    assert!(
        path.is_file(),
        "{} is missing: build the plugins with scripts/build-plugins (scripts/test does)",
        path.display()
    );
    path
}

/// Tight limits so misbehaving plugins are stopped quickly.
pub fn test_limits() -> SandboxLimits {
    SandboxLimits {
        memory_bytes: 16 << 20,
        call_timeout: Duration::from_millis(300),
        table_elements: 10_000,
        ..SandboxLimits::default()
    }
}

pub fn runtime() -> PluginRuntime {
    PluginRuntime::new(test_limits(), None).expect("runtime starts")
}

/// A set holding just the given plugin files.
pub fn load(files: &[&str]) -> PluginSet {
    let mut set = PluginSet::empty(runtime());
    for f in files {
        set.load_file(&plugin_file(f));
    }
    assert!(set.failures.is_empty(), "load failures: {:?}", set.failures);
    set
}

pub fn policy<'a>(set: &'a PluginSet, name: &str) -> &'a AliasPolicyPlugin {
    set.policy(name).unwrap_or_else(|| panic!("policy {name} loaded"))
}

pub fn registry() -> AliasRegistry {
    AliasRegistry::builtin().expect("built-in aliases.json passes its contract")
}

pub fn facts(free_gib: u64) -> HostFacts {
    HostFacts { free_memory_bytes: free_gib << 30, total_memory_bytes: 64 << 30, backend: "cpu".into() }
}
