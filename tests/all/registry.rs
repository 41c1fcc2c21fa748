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
    assert_eq!(registry.len(), 74);
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
