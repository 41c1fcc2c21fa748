//! Third-party authoring: `plugin new` scaffolds a crate that builds and passes `plugin
//! test`; the JavaScript example plugin passes its fixtures and loads beside ours.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{plugins_dir, repo_root};

fn rapid_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapid-host")).args(args).output().expect("binary runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Builds a scaffolded crate for wasm32-wasip2, sharing the plugins' target directory (and
/// lockfile) so the SDK's dependencies are not compiled again.
fn build(crate_dir: &Path, file: &str) -> PathBuf {
    std::fs::copy(plugins_dir().join("Cargo.lock"), crate_dir.join("Cargo.lock")).expect("lockfile");
    let target = std::env::var_os("PLUGINS_TARGET_DIR").map_or_else(|| plugins_dir().join("target"), PathBuf::from);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--quiet"])
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .expect("cargo runs");
    assert!(out.status.success(), "scaffold does not build:\n{}", text(&out));
    target.join("wasm32-wasip2/release").join(file)
}

#[test]
fn a_scaffolded_parser_builds_and_passes_its_fixtures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rapid_host(&["plugin", "new", "acme-calls", "--kind", "parser", "--dir", &dir.path().to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    let root = dir.path().join("acme-calls");
    for file in ["Cargo.toml", "src/lib.rs", "fixtures/basic.json", "README.md", ".cargo/config.toml"] {
        assert!(root.join(file).is_file(), "{file} scaffolded");
    }
    let wasm = build(&root, "acme_calls.wasm");
    let fixtures = root.join("fixtures");
    let out = rapid_host(&["plugin", "test", &wasm.to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 passed, 0 failed"), "{}", text(&out));

    // A wrong expectation fails, with a non-zero exit for CI and the difference shown.
    let path = fixtures.join("basic.json");
    let broken =
        std::fs::read_to_string(&path).expect("read").replace("\"content\": \"Checking.\"", "\"content\": \"Nope.\"");
    std::fs::write(&path, broken).expect("write");
    let out = rapid_host(&["plugin", "test", &wasm.to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("FAIL") && text(&out).contains("want Some(\"Nope.\")"), "{}", text(&out));
}

#[test]
fn a_scaffolded_alias_policy_builds_and_resolves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        rapid_host(&["plugin", "new", "acme-policy", "--kind", "alias-policy", "--dir", &dir.path().to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    let root = dir.path().join("acme-policy");
    let wasm = build(&root, "acme_policy.wasm");
    let fixtures = root.join("fixtures");
    let out = rapid_host(&["plugin", "test", &wasm.to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("3 passed, 0 failed"), "{}", text(&out));

    let plugins = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&wasm, plugins.path().join("acme-policy.wasm")).expect("copy");
    let out = rapid_host(&[
        "info",
        "gemma-4-12b-qat-4bit",
        "--plugins",
        &plugins.path().to_string_lossy(),
        "--alias-policy",
        "acme-policy",
        "--no-plugin-cache",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).starts_with("gemma-4-12b-qat-4bit -> mlx-community/gemma-4-12B-it-qat-4bit"), "{}", text(&out));
}

#[test]
fn scaffold_refuses_bad_names_and_existing_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().into_owned();
    let out = rapid_host(&["plugin", "new", "Bad_Name", "--dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("Bad_Name"), "{}", text(&out));
    assert!(rapid_host(&["plugin", "new", "twice", "--dir", &d]).status.success());
    let out = rapid_host(&["plugin", "new", "twice", "--dir", &d]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already exists"), "{}", text(&out));
}

fn mistral_wasm() -> PathBuf {
    let path = repo_root().join("examples/plugins/mistral-js/mistral.wasm");
    assert!(path.is_file(), "{} missing: scripts/build-plugins builds it (needs npm)", path.display());
    path
}

#[test]
fn the_javascript_plugin_passes_its_fixtures() {
    let fixtures = repo_root().join("examples/plugins/mistral-js/fixtures");
    let out =
        rapid_host(&["plugin", "test", &mistral_wasm().to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("10 passed, 0 failed"), "{}", text(&out));
}

#[test]
fn the_javascript_plugin_loads_beside_the_shipped_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(plugins_dir()).expect("plugins").filter_map(Result::ok) {
        if entry.path().extension().is_some_and(|e| e == "wasm") {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("copy");
        }
    }
    std::fs::copy(mistral_wasm(), dir.path().join("mistral-js.wasm")).expect("copy");
    let out = rapid_host(&["plugins", "--json", "--no-plugin-cache", "--plugins", &dir.path().to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(doc["failures"].as_array().is_some_and(Vec::is_empty), "{doc}");
    let mistral = doc["plugins"].as_array().into_iter().flatten().find(|p| p["name"] == "mistral-js").expect("listed");
    assert_eq!(mistral["wit_version"], "0.2.0");
    // `--stub-wasi`: no WASI at all, only the contract's own type interface.
    assert_eq!(mistral["imports"], serde_json::json!(["rapid:plugin/types@0.2.0"]));
    assert_eq!(mistral["provides"][0]["name"], "mistral");
}
