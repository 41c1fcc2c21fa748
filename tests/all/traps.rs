//! A plugin that traps fails that call only; the host and other calls keep working.

use rapid_host::plugins::PluginError;
use rapid_host::resolve::{ModelResolver, ResolveFailure};

use crate::support::{facts, load, policy, registry};

#[test]
fn a_trapping_plugin_fails_only_its_own_call() {
    let set = load(&["testing/policy-chaos.wasm", "policy-strict.wasm"]);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    match chaos.resolve("trap") {
        Err(ResolveFailure::Plugin(PluginError::Trap { plugin, call, .. })) => {
            assert_eq!((plugin.as_str(), call), ("chaos", "resolve"));
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The same plugin answers the next call from a fresh instance.
    let ok = chaos.resolve("fine").expect("fresh instance works");
    assert_eq!(ok.hf_path, "chaos/fine");
    assert_eq!(ok.notes, [format!("{} aliases seen", registry.len())]);
    // And other plugins never noticed.
    let strict = ModelResolver::new(&registry, policy(&set, "strict"), facts(16));
    assert!(strict.resolve("gemma-4-12b-qat-4bit").is_ok());
}

#[test]
fn repeated_traps_do_not_leak_or_poison() {
    let set = load(&["testing/policy-chaos.wasm"]);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    for _ in 0..50 {
        assert!(matches!(chaos.resolve("trap"), Err(ResolveFailure::Plugin(PluginError::Trap { .. }))));
    }
    assert!(chaos.resolve("fine").is_ok());
}

#[test]
fn a_policy_answer_that_misstates_an_alias_is_rejected() {
    let set = load(&["testing/policy-chaos.wasm"]);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    match chaos.resolve("liar") {
        Err(ResolveFailure::Plugin(PluginError::BadAnswer { plugin, detail, .. })) => {
            assert_eq!(plugin, "chaos");
            assert!(detail.contains("evil/not-qwen"), "{detail}");
        }
        other => panic!("expected the answer to be refused, got {other:?}"),
    }
}

#[test]
fn every_alias_resolves_to_itself_under_strict() {
    let set = load(&["policy-strict.wasm"]);
    let registry = registry();
    let strict = ModelResolver::new(&registry, policy(&set, "strict"), facts(16));
    for (name, _) in registry.iter() {
        let r = strict.resolve(name).expect("every alias resolves");
        assert_eq!(r.alias.as_deref(), Some(name));
        assert_eq!(r.profile.as_ref().map(|p| p.hf_path.as_str()), Some(r.hf_path.as_str()));
    }
}
