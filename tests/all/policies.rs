//! The three shipped alias policies, run as real wasm components.

use rapid_host::resolve::{ModelResolver, ResolveFailure, ResolvedModel, SourceKind};

use crate::support::{facts, load, policy, registry};

const ALL: &[&str] = &["policy-strict.wasm", "policy-legacy.wasm", "policy-memory-fit.wasm"];

fn resolve_with(policy_name: &str, free_gib: u64, name: &str) -> Result<ResolvedModel, ResolveFailure> {
    let set = load(ALL);
    let registry = registry();
    ModelResolver::new(&registry, policy(&set, policy_name), facts(free_gib)).resolve(name)
}

fn refusal(result: Result<ResolvedModel, ResolveFailure>) -> (String, Vec<String>) {
    match result {
        Err(ResolveFailure::Unknown { message, suggestions }) => (message, suggestions),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn strict_resolves_exact_aliases() {
    let r = resolve_with("strict", 16, "gemma-4-12b-qat-4bit").expect("resolves");
    assert_eq!(r.alias.as_deref(), Some("gemma-4-12b-qat-4bit"));
    assert_eq!(r.hf_path, "mlx-community/gemma-4-12B-it-qat-4bit");
    assert_eq!(r.source, SourceKind::HubRepo);
    let r = resolve_with("strict", 16, "phi-4-14b-4bit").expect("resolves");
    assert_eq!(r.hf_path, "mlx-community/phi-4-4bit");
    let smol = resolve_with("strict", 16, "smollm2-135m-q4_1").expect("resolves");
    assert_eq!(smol.source, SourceKind::PipPackage);
    assert_eq!(smol.file.as_deref(), Some("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert_eq!(smol.profile.and_then(|p| p.arch).as_deref(), Some("llama"));
}

#[test]
fn strict_passes_org_repo_through() {
    let r = resolve_with("strict", 16, "someone/Some-Model-7B").expect("passthrough");
    assert_eq!((r.alias, r.hf_path.as_str(), r.source), (None, "someone/Some-Model-7B", SourceKind::HubRepo));
}

#[test]
fn a_local_path_wins_over_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory named like an alias and like an org/repo: the path still wins.
    let alias_dir = dir.path().join("qwen3.5-4b-4bit");
    std::fs::create_dir(&alias_dir).expect("mkdir");
    let name = alias_dir.to_string_lossy().into_owned();
    let r = resolve_with("strict", 16, &name).expect("local dir");
    assert_eq!((r.alias.as_deref(), r.source), (None, SourceKind::LocalDir));

    let gguf = dir.path().join("model.gguf");
    std::fs::write(&gguf, b"GGUF").expect("write");
    let r = resolve_with("strict", 16, &gguf.to_string_lossy()).expect("local gguf");
    assert_eq!(r.source, SourceKind::LocalFile);

    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"hi").expect("write");
    let (message, _) = refusal(resolve_with("strict", 16, &other.to_string_lossy()));
    assert!(message.contains("not a .gguf"), "{message}");
}

#[test]
fn strict_refuses_retired_names_naming_the_explicit_aliases() {
    for (retired, expected) in [
        ("qwen3.5-4b", &["qwen3.5-4b-4bit", "qwen3.5-4b-8bit"][..]),
        ("gemma4", &["gemma-4-12b-qat-4bit"][..]),
        ("phi4-14b", &["phi-4-14b-4bit"][..]),
    ] {
        let (message, suggestions) = refusal(resolve_with("strict", 16, retired));
        assert!(message.contains("retired"), "{retired}: {message}");
        assert_eq!(&suggestions[..expected.len()], expected, "{retired}");
    }
}

#[test]
fn strict_suggests_within_the_family_only() {
    let (_, s) = refusal(resolve_with("strict", 16, "qwen3.5-30b"));
    assert!(s.iter().take(2).any(|x| x.starts_with("qwen3.5-35b-")), "{s:?}");
    let (_, s) = refusal(resolve_with("strict", 16, "hermes"));
    assert!(s.contains(&"hermes3-8b-4bit".to_string()), "{s:?}");
    let (message, s) = refusal(resolve_with("strict", 16, "gpt2"));
    assert!(s.is_empty(), "{s:?}");
    assert!(message.contains("gpt2"), "{message}");
}

#[test]
fn legacy_maps_retired_names_with_a_deprecation_note() {
    let r = resolve_with("legacy", 16, "qwen3.5-4b").expect("legacy resolves");
    assert_eq!(r.alias.as_deref(), Some("qwen3.5-4b-4bit"));
    assert_eq!(r.hf_path, "mlx-community/Qwen3.5-4B-MLX-4bit");
    assert!(r.notes.iter().any(|n| n.contains("deprecated") && n.contains("qwen3.5-4b-4bit")), "{:?}", r.notes);
    let r = resolve_with("legacy", 16, "phi4-14b").expect("legacy resolves");
    assert_eq!(r.hf_path, "mlx-community/phi-4-4bit");
    // Current aliases and unknown names behave as under strict.
    assert!(resolve_with("legacy", 16, "gemma-4-12b-qat-4bit").expect("alias").notes.is_empty());
    refusal(resolve_with("legacy", 16, "no-such-model"));
}

#[test]
fn memory_fit_picks_the_largest_quant_that_fits() {
    // qwen3.5-27b: 4bit ≈ 14.1 GiB, 8bit ≈ 26.7 GiB of weights, plus 20 % headroom.
    let big = resolve_with("memory-fit", 48, "qwen3.5-27b").expect("fits");
    assert_eq!(big.alias.as_deref(), Some("qwen3.5-27b-8bit"));
    let small = resolve_with("memory-fit", 20, "qwen3.5-27b").expect("fits");
    assert_eq!(small.alias.as_deref(), Some("qwen3.5-27b-4bit"));
    assert!(small.notes.iter().any(|n| n.contains("picked qwen3.5-27b-4bit")), "{:?}", small.notes);
    // Three quantizations of one model: 8bit > 6bit > 4bit.
    assert_eq!(resolve_with("memory-fit", 64, "qwen3.6-35b").expect("fits").alias.as_deref(), Some("qwen3.6-35b-8bit"));
    assert_eq!(resolve_with("memory-fit", 36, "qwen3.6-35b").expect("fits").alias.as_deref(), Some("qwen3.6-35b-6bit"));
}

#[test]
fn memory_fit_refuses_when_nothing_fits_and_keeps_explicit_names() {
    let (message, suggestions) = refusal(resolve_with("memory-fit", 4, "qwen3.5-27b"));
    assert!(message.contains("fits"), "{message}");
    assert_eq!(suggestions, ["qwen3.5-27b-4bit", "qwen3.5-27b-8bit"]);
    // An explicit quant is taken as asked, even if it would not fit.
    let r = resolve_with("memory-fit", 4, "qwen3.5-27b-8bit").expect("explicit");
    assert_eq!(r.alias.as_deref(), Some("qwen3.5-27b-8bit"));
}
