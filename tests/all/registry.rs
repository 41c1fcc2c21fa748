//! The alias registry contract, over the whole of aliases.json, with a negative control
//! for every rule so each guard is proven to bite.

use std::collections::BTreeMap;

use rapid_host::registry::{AliasRegistry, RegistryError};
use serde_json::{Value, json};

use crate::support::{plugins_dir, registry, repo_root, runtime};

fn seed() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/seed/seed-aliases.json")).expect("seed file");
    serde_json::from_str(&text).expect("seed parses")
}

fn aliases_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(repo_root().join("aliases.json")).expect("aliases.json"))
        .expect("json")
}

/// The rules a modified copy of aliases.json breaks.
fn broken_rules(doc: &Value) -> Vec<&'static str> {
    match AliasRegistry::from_json(&doc.to_string()) {
        Ok(_) => Vec::new(),
        Err(RegistryError::Contract(problems)) => problems.iter().map(|p| p.rule).collect(),
        Err(other) => panic!("expected a contract error, got {other}"),
    }
}

fn with_alias(name: &str, entry: Value) -> Value {
    let mut doc = aliases_json();
    doc["aliases"][name] = entry;
    doc
}

fn hub(hf_path: &str, quant: &str) -> Value {
    json!({ "hf_path": hf_path, "source": "hub", "format": "mlx", "quant": quant, "tool_call_parser": null, "reasoning_parser": null })
}

#[test]
fn every_seed_alias_is_served_with_its_exact_hf_path() {
    let registry = registry();
    let seed = seed();
    assert_eq!(seed.len(), 72);
    for (name, profile) in &seed {
        let entry = registry.get(name).unwrap_or_else(|| panic!("seed alias {name} missing"));
        assert_eq!(Some(entry.hf_path.as_str()), profile["hf_path"].as_str(), "{name}");
        assert_eq!(entry.tool_call_parser.as_deref(), profile["tool_call_parser"].as_str(), "{name}");
        assert_eq!(entry.reasoning_parser.as_deref(), profile["reasoning_parser"].as_str(), "{name}");
    }
}

#[test]
fn the_two_runnable_gguf_models_come_from_pip() {
    let registry = registry();
    let smol = registry.get("smollm2-135m-q4_1").expect("smollm2 alias");
    assert_eq!(smol.file.as_deref(), Some("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(smol.arch.as_deref(), Some("llama"));
    let gemma = registry.get("gemma3-270m-q4_k_m").expect("gemma alias");
    assert_eq!(gemma.file.as_deref(), Some("gemma-3-270m-q4_k_m.gguf"));
    assert_eq!(gemma.sha256.as_deref(), Some("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"));
    assert_eq!(gemma.pip.as_ref().map(Vec::len), Some(4));
    assert_eq!(registry.default_alias(), "smollm2-135m-q4_1");
    assert_eq!(registry.len(), 76);
}

#[test]
fn retired_names_come_from_the_rename_map() {
    let registry = registry();
    let text =
        std::fs::read_to_string(repo_root().join("tests/fixtures/seed/seed-rename-map.json")).expect("rename map");
    let map: BTreeMap<String, String> = serde_json::from_str(&text).expect("json");
    let retired: BTreeMap<&str, &str> = registry.retired().collect();
    for (old, new) in &map {
        if old == new {
            assert!(registry.get(old).is_some(), "{old} is current, not retired");
        } else {
            assert_eq!(retired.get(old.as_str()), Some(&new.as_str()), "{old}");
        }
    }
    for name in ["qwen3.5-4b", "gemma4", "phi4-14b"] {
        assert!(retired.contains_key(name), "{name} is retired");
    }
}

#[test]
fn the_shipped_file_is_clean() {
    assert!(registry().problems().is_empty());
}

#[test]
fn unknown_keys_are_rejected() {
    let mut entry = hub("org/some-model-4bit", "4bit");
    entry["tool_parser"] = json!("hermes");
    let doc = with_alias("some-1b-4bit", entry);
    let err = AliasRegistry::from_json(&doc.to_string()).expect_err("typo rejected");
    assert!(matches!(err, RegistryError::Parse(_)));
    assert!(err.to_string().contains("tool_parser"), "{err}");
}

#[test]
fn names_need_an_explicit_quant_suffix_from_the_vocabulary() {
    assert_eq!(broken_rules(&with_alias("newmodel-4b", hub("org/x-4B", "4bit"))), ["naming rule"]);
    assert_eq!(broken_rules(&with_alias("qwen3.5-4b-5bit", hub("org/x-4B", "5bit"))), ["naming rule"]);
    assert_eq!(broken_rules(&with_alias("Qwen3.5-4b-4bit", hub("org/x-4B", "4bit"))), ["naming rule"]);
    assert_eq!(
        broken_rules(&with_alias("newmodel-4b-4bit", hub("org/x-4B", "8bit"))),
        ["quant field matches the name's suffix"]
    );
}

#[test]
fn hf_path_must_be_org_repo() {
    for bad in ["just-a-repo", "org/repo/extra", "/repo", "org/ repo"] {
        let rules = broken_rules(&with_alias("newmodel-4b-4bit", hub(bad, "4bit")));
        assert!(rules.contains(&"hf_path is org/repo"), "{bad}: {rules:?}");
    }
}

#[test]
fn no_two_aliases_share_a_source() {
    let doc = with_alias("qwen3.5-4b-dwq", hub("mlx-community/Qwen3.5-4B-MLX-4bit", "dwq"));
    assert_eq!(broken_rules(&doc), ["no two aliases share a source"]);
}

#[test]
fn params_segment_must_agree_with_hf_path() {
    // The phi-4-14b bug class: the name promises 14B, the repo is the mini model.
    let mut doc = aliases_json();
    doc["aliases"]["phi-4-14b-4bit"]["hf_path"] = json!("mlx-community/phi-4-mini-instruct-4bit");
    doc["aliases"].as_object_mut().expect("object").remove("phi-4-mini-4bit");
    assert_eq!(broken_rules(&doc), ["params segment agrees with hf_path"]);
    let doc = with_alias("qwen3.5-9b-6bit", hub("mlx-community/Qwen3.5-4B-6bit", "6bit"));
    assert_eq!(broken_rules(&doc), ["params segment agrees with hf_path"]);
}

#[test]
fn gguf_entries_name_their_file_and_pip_entries_their_wheels() {
    let mut entry = hub("org/model-GGUF", "q4_0");
    entry["format"] = json!("gguf");
    assert_eq!(broken_rules(&with_alias("newmodel-1b-q4_0", entry.clone())), ["GGUF entries name their file"]);
    entry["file"] = json!("model.gguf");
    entry["source"] = json!("pip");
    assert_eq!(broken_rules(&with_alias("newmodel-1b-q4_0", entry)), ["pip entries list their wheels"]);
    assert_eq!(
        broken_rules(&with_alias("newmodel-1b-q8_0", hub("org/model-1B", "q8_0"))),
        ["GGUF quant suffix if and only if format is gguf"]
    );
}

#[test]
fn retired_names_must_point_at_aliases_and_not_shadow_them() {
    let mut doc = aliases_json();
    doc["retired"]["qwen3.5-4b"] = json!("qwen3.5-4b-5bit");
    doc["retired"]["qwen3.5-9b-4bit"] = json!("qwen3.5-9b-8bit");
    let rules = broken_rules(&doc);
    assert!(rules.contains(&"a retired name points at an existing alias"), "{rules:?}");
    assert!(rules.contains(&"a retired name is not also an alias"), "{rules:?}");
}

#[test]
fn missing_parsers_are_reported() {
    let registry = registry();
    let problems = registry.missing_parsers(&Default::default(), &Default::default());
    assert!(problems.iter().any(|p| p.detail.contains("tool_call_parser hermes")), "{problems:?}");
    assert!(problems.iter().any(|p| p.detail.contains("reasoning_parser qwen3")), "{problems:?}");
}

#[test]
fn every_parser_name_exists_among_the_loaded_plugins() {
    let set = rapid_host::plugins::PluginSet::load_dir(runtime(), &plugins_dir()).expect("plugins dir");
    let problems = registry().missing_parsers(&set.tool_parser_names(), &set.reasoning_parser_names());
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Sizes checked against a table of known repository sizes, not only the sizes a repo's
/// name states: `glm4.7-9b-4bit` is GLM-4.7-Flash (~30B) and `kimi-48b-4bit` is
/// Kimi-K2-Instruct (~1T). The seed names stay (marked misnamed, with a note); correctly
/// sized aliases serve the same repositories.
#[test]
fn alias_sizes_agree_with_known_repo_sizes() {
    let registry = registry();
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/seed/known-repo-sizes.json")).expect("table");
    let table: Value = serde_json::from_str(&text).expect("json");
    let sizes = table["sizes"].as_object().expect("sizes");
    let mut checked = 0;
    for (name, e) in registry.iter() {
        let Some(known) = sizes.get(&e.hf_path).and_then(|s| s["total_b"].as_f64()) else { continue };
        let parsed = rapid_plugin_sdk::naming::parse_alias_name(name).expect("valid name");
        let Some(stated) = parsed.params.and_then(rapid_plugin_sdk::naming::params_billions) else { continue };
        let agrees = (stated - known).abs() <= known * 0.1;
        if e.misnamed.is_some() {
            assert!(!agrees, "{name} is marked misnamed but states {stated}B for a {known}B repo");
        } else {
            assert!(agrees, "{name} states {stated}B but {} has {known}B", e.hf_path);
        }
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} aliases checked");
    for (seed, good, total) in
        [("glm4.7-9b-4bit", "glm4.7-flash-30b-4bit", 30.0), ("kimi-48b-4bit", "kimi-k2-1t-4bit", 1000.0)]
    {
        let misnamed = registry.get(seed).and_then(|e| e.misnamed.clone()).unwrap_or_else(|| panic!("{seed} marked"));
        assert_eq!(misnamed.use_instead, good);
        let (seed_entry, good_entry) = (registry.get(seed).expect("seed"), registry.get(good).expect("good"));
        assert_eq!(seed_entry.hf_path, good_entry.hf_path);
        assert_eq!(good_entry.tool_call_parser, seed_entry.tool_call_parser);
        let stated = rapid_plugin_sdk::naming::parse_alias_name(good).ok().and_then(|n| n.params);
        assert_eq!(stated.and_then(rapid_plugin_sdk::naming::params_billions), Some(total), "{good}");
    }
}

#[test]
fn a_misnamed_alias_must_point_at_a_correct_alias_for_its_repository() {
    let mut doc = aliases_json();
    doc["aliases"]["glm4.7-9b-4bit"]["misnamed"]["use_instead"] = json!("kimi-k2-1t-4bit");
    assert_eq!(broken_rules(&doc), ["a misnamed alias points at a correct alias for the same repository"]);
    // Without the mark, the seed name and the correct one share a source.
    let mut doc = aliases_json();
    doc["aliases"]["glm4.7-9b-4bit"].as_object_mut().expect("object").remove("misnamed");
    assert_eq!(broken_rules(&doc), ["no two aliases share a source"]);
}

/// `info` and `models` show the note on the seed names.
#[test]
fn info_and_models_show_the_size_note_on_misnamed_seed_names() {
    let rapid_host = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rapid-host")).args(args).output().expect("runs");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let plugins = crate::support::plugins_dir();
    let info = rapid_host(&["info", "kimi-48b-4bit", "--plugins", &plugins.to_string_lossy()]);
    assert!(info.contains("note: `kimi-48b-4bit` states the wrong size") && info.contains("kimi-k2-1t-4bit"), "{info}");
    let models = rapid_host(&["models"]);
    assert!(
        models.contains("note: `glm4.7-9b-4bit` states the wrong size") && models.contains("about 30B"),
        "{models}"
    );
    let json: Value = serde_json::from_str(&rapid_host(&["models", "--json"])).expect("json");
    let glm = json["models"].as_array().into_iter().flatten().find(|m| m["alias"] == "glm4.7-9b-4bit").expect("listed");
    assert!(glm["note"].as_str().is_some_and(|n| n.contains("glm4.7-flash-30b-4bit")), "{glm}");
    let good = json["models"].as_array().into_iter().flatten().find(|m| m["alias"] == "glm4.7-flash-30b-4bit");
    assert!(good.is_some_and(|m| m["note"].is_null()), "{good:?}");
}
