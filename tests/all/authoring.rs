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

fn pythonic_wasm() -> PathBuf {
    let path = repo_root().join("examples/plugins/pythonic-py/pythonic.wasm");
    assert!(path.is_file(), "{} missing: scripts/build-plugins builds it (needs python3)", path.display());
    path
}

#[test]
fn the_python_plugin_passes_its_fixtures() {
    let fixtures = repo_root().join("examples/plugins/pythonic-py/fixtures");
    let out =
        rapid_host(&["plugin", "test", &pythonic_wasm().to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("12 passed, 0 failed"), "{}", text(&out));
    // The cost report: calls, time, and instructions per byte (counted, so always there).
    assert!(text(&out).contains("cost of pythonic-py:"), "{}", text(&out));
    assert!(text(&out).contains("wasm instructions per input byte"), "{}", text(&out));
}

/// Kills the server when the test ends, pass or fail.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `serve` on the plugins in `dir` with the compiled-plugin cache (an interpreter
/// guest takes seconds to compile), and waits for it to listen.
fn serve(dir: &Path, tool_parser: &str) -> (Killed, u16, String) {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(["serve", "--port", &port.to_string(), "--tool-call-parser", tool_parser, "--models-dir"])
        .arg(repo_root().join("models"))
        .arg("--plugins")
        .arg(dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let server = Killed(child);
    let mut banner = String::new();
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("listening on") || line.contains("error") {
            break;
        }
    }
    (server, port, banner)
}

/// `GET path` on the server at `port`: the response body.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connects");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(response)
}

#[test]
fn the_python_plugin_loads_in_serve_beside_the_javascript_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugins_dir().join("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");
    std::fs::copy(pythonic_wasm(), dir.path().join("pythonic-py.wasm")).expect("copy");
    std::fs::copy(mistral_wasm(), dir.path().join("mistral-js.wasm")).expect("copy");
    let (_server, port, banner) = serve(dir.path(), "pythonic");
    assert!(banner.contains("3 loaded") && banner.contains("(0 failed)"), "{banner}");
    assert!(banner.contains("tool calls: pythonic"), "{banner}");
    let listing = get(port, "/v1/plugins");
    for name in ["\"pythonic-py\"", "\"pythonic\"", "\"mistral-js\""] {
        assert!(listing.contains(name), "{name} not in {listing}");
    }
}

/// Runs `command` in `dir`, failing the test with its output.
fn run_in(dir: &Path, command: &mut Command) {
    let out = command.current_dir(dir).output().expect("runs");
    assert!(out.status.success(), "{command:?} failed:\n{}", text(&out));
}

/// What a newcomer does from the README: scaffold, build with the language's own tool,
/// `plugin test`, and the plugin loads. The toolchains are the ones scripts/build-plugins
/// installed for the examples (componentize-qjs from npm, componentize-py from pip).
#[test]
fn scaffolded_javascript_and_python_parsers_build_and_pass_their_fixtures() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_string_lossy().into_owned();
    for lang in ["js", "python"] {
        let out = rapid_host(&["plugin", "new", &format!("acme-{lang}"), "--lang", lang, "--dir", &d]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let js = dir.path().join("acme-js");
    for file in ["package.json", "parser.js", "wit/plugin.wit", "fixtures/basic.json", "README.md"] {
        assert!(js.join(file).is_file(), "{file} scaffolded");
    }
    let node_modules = repo_root().join("examples/plugins/mistral-js/node_modules");
    assert!(node_modules.is_dir(), "scripts/build-plugins installs componentize-qjs (needs npm)");
    std::os::unix::fs::symlink(&node_modules, js.join("node_modules")).expect("symlink");
    run_in(&js, Command::new("npm").args(["run", "build"]));

    let py = dir.path().join("acme-python");
    for file in ["app.py", "output_parser.py", "calls.py", "build.sh", "requirements.txt", "wit/plugin.wit"] {
        assert!(py.join(file).is_file(), "{file} scaffolded");
    }
    let componentize_py = repo_root().join("examples/plugins/pythonic-py/.venv/bin/componentize-py");
    assert!(componentize_py.is_file(), "scripts/build-plugins installs componentize-py (needs python3)");
    run_in(&py, Command::new("./build.sh").env("COMPONENTIZE_PY", &componentize_py));

    let plugins = tempfile::tempdir().expect("tempdir");
    for (root, file, name) in [(&js, "acme_js.wasm", "acme-js"), (&py, "acme_python.wasm", "acme-python")] {
        let wasm = root.join(file);
        let fixtures = root.join("fixtures");
        let out = rapid_host(&["plugin", "test", &wasm.to_string_lossy(), "--fixtures", &fixtures.to_string_lossy()]);
        assert!(out.status.success() && text(&out).contains("3 passed, 0 failed"), "{name}: {}", text(&out));
        std::fs::copy(&wasm, plugins.path().join(format!("{name}.wasm"))).expect("copy");
    }
    let out = rapid_host(&["plugins", "--json", "--plugins", &plugins.path().to_string_lossy()]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(doc["failures"].as_array().is_some_and(Vec::is_empty), "{doc}");
    for (name, parser) in [("acme-js", "acme_js"), ("acme-python", "acme_python")] {
        let plugin = doc["plugins"].as_array().into_iter().flatten().find(|p| p["name"] == name).expect("listed");
        assert_eq!(plugin["provides"][0]["name"], parser, "{doc}");
        assert_eq!(plugin["imports"], serde_json::json!(["rapid:plugin/types@0.2.0"]), "{doc}");
    }
}

#[test]
fn javascript_and_python_scaffolds_are_parsers_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = rapid_host(&[
        "plugin",
        "new",
        "acme",
        "--lang",
        "python",
        "--kind",
        "alias-policy",
        "--dir",
        &dir.path().to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--lang rust"), "{}", text(&out));
}

/// A component built without `--stub-wasi` imports WASI, which the host refuses: the error
/// says how to build it.
#[test]
fn a_refused_wasi_import_names_the_fix() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugins_dir().join("testing/policy-clocky.wasm"), dir.path().join("clocky.wasm")).expect("copy");
    let out = rapid_host(&["plugins", "--json", "--no-plugin-cache", "--plugins", &dir.path().to_string_lossy()]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    let error = doc["failures"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("wasi:clocks/") && error.contains("--stub-wasi"), "{doc}");
}

/// Fixture files are checked against docs/fixture.schema.json: the error names the file,
/// the case and the field.
#[test]
fn a_fixture_that_breaks_the_schema_is_refused_with_file_case_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = dir.path().join("mine.json");
    std::fs::write(
        &fixture,
        r#"{"tool_parser": "hermes", "cases": [{"name": "object arguments", "raw": "x",
            "expect": {"content": null, "tool_calls": [{"name": "f", "arguments": {"a": 1}}]}}]}"#,
    )
    .expect("write");
    let wasm = plugins_dir().join("parser-hermes.wasm");
    let out = rapid_host(&["plugin", "test", &wasm.to_string_lossy(), "--fixtures", &fixture.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("mine.json") && said.contains("fixture.schema.json"), "{said}");
    assert!(said.contains("case \"object arguments\"") && said.contains("expect.tool_calls[0].arguments"), "{said}");
    assert!(said.contains("must be a string, not an object"), "{said}");
}
