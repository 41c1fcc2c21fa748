//! Discovery, the precompiled-artifact cache, and refusing bad components by name.

use std::path::Path;

use rapid_host::plugins::{PluginKind, PluginRuntime, PluginSet};

use crate::support::{plugin_file, plugins_dir, test_limits};

fn copy(from: &str, to: &Path) {
    std::fs::copy(plugin_file(from), to).expect("copy plugin");
}

#[test]
fn the_shipped_plugins_directory_loads_every_policy_and_parser() {
    let set =
        PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), &plugins_dir()).expect("dir");
    assert!(set.failures.is_empty(), "{:?}", set.failures);
    let names: Vec<&str> = set.policy_names().collect();
    for expected in ["legacy", "memory-fit", "strict"] {
        assert!(names.contains(&expected), "{names:?}");
    }
    // Test-only plugins live in plugins/testing/ and are never picked up by `--plugins plugins/`.
    assert!(set.policy("chaos").is_none());
    let kinds = |kind: PluginKind| set.plugins.iter().filter(|p| p.kind == kind).count();
    assert_eq!(kinds(PluginKind::AliasPolicy), 3);
    assert_eq!(kinds(PluginKind::OutputParser), 10);
    assert!(set.plugins.iter().all(|p| p.wit_version == "0.2.0"));
    let tools = set.tool_parser_names();
    for name in [
        "hermes",
        "qwen3_coder_xml",
        "llama",
        "gemma4",
        "harmony",
        "deepseek",
        "deepseek_v31",
        "glm47",
        "minimax",
        "kimi",
    ] {
        assert!(tools.contains(name), "tool parser {name}: {tools:?}");
    }
    let reasoning = set.reasoning_parser_names();
    for name in ["qwen3", "deepseek_r1", "gemma4", "glm4", "harmony", "minimax"] {
        assert!(reasoning.contains(name), "reasoning parser {name}: {reasoning:?}");
    }
}

#[test]
fn bad_files_are_reported_by_name_and_the_rest_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy("policy-strict.wasm", &dir.path().join("a-strict.wasm"));
    std::fs::write(dir.path().join("garbage.wasm"), b"this is not wasm").expect("write");
    // A core module (not a component): valid wasm, wrong kind.
    std::fs::write(dir.path().join("core.wasm"), b"\0asm\x01\0\0\0").expect("write");
    copy("testing/policy-clocky.wasm", &dir.path().join("clocky.wasm"));
    copy("policy-legacy.wasm", &dir.path().join("z-legacy.wasm"));
    // The same plugin twice: it loads once, the other copy is refused, naming it.
    copy("policy-strict.wasm", &dir.path().join("b-strict-again.wasm"));
    std::fs::write(dir.path().join("README.txt"), b"not a plugin, ignored").expect("write");

    let set = PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), dir.path()).expect("dir");
    let loaded: Vec<&str> = set.plugins.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(loaded, ["strict", "legacy"]);
    let failure = |file: &str| {
        set.failures
            .iter()
            .find(|f| f.file.ends_with(file))
            .map(|f| f.error.to_string())
            .unwrap_or_else(|| panic!("{file} should have failed: {:?}", set.failures))
    };
    assert!(failure("garbage.wasm").contains("garbage.wasm"));
    assert!(failure("garbage.wasm").contains("not a WebAssembly component"));
    assert!(failure("core.wasm").contains("core.wasm"));
    assert!(failure("clocky.wasm").contains("wasi:clocks/"), "{}", failure("clocky.wasm"));
    let copy = failure("b-strict-again.wasm");
    assert!(copy.contains("is a copy of a-strict.wasm"), "{copy}");
    assert_eq!(set.failures.len(), 4);
}

#[test]
fn a_missing_directory_is_an_error() {
    let err = PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), Path::new("/no/such/dir"))
        .expect_err("missing dir");
    assert!(err.to_string().contains("/no/such/dir"), "{err}");
}

#[test]
fn precompiled_artifacts_are_cached_and_stale_ones_replaced() {
    let cache = tempfile::tempdir().expect("tempdir");
    let load = || {
        let runtime = PluginRuntime::new(test_limits(), Some(cache.path().to_path_buf())).expect("runtime");
        let mut set = PluginSet::empty(runtime);
        set.load_file(&plugin_file("policy-strict.wasm"));
        assert!(set.failures.is_empty(), "{:?}", set.failures);
        set
    };
    assert!(!load().plugins[0].from_cache, "first load compiles");
    let artifacts: Vec<_> = std::fs::read_dir(cache.path()).expect("cache dir").filter_map(Result::ok).collect();
    assert_eq!(artifacts.len(), 1);
    let artifact = artifacts[0].path();
    assert!(artifact.extension().is_some_and(|e| e == "cwasm"));

    let second = load();
    assert!(second.plugins[0].from_cache, "second load uses the artifact");
    assert!(second.policy("strict").is_some());

    // A corrupted artifact is ignored, recompiled and rewritten.
    std::fs::write(&artifact, b"corrupted").expect("corrupt");
    let third = load();
    assert!(!third.plugins[0].from_cache);
    assert!(load().plugins[0].from_cache, "rewritten artifact is used again");
}
