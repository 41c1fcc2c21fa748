//! Sandbox limits: a plugin that loops forever or grows memory without bound is stopped,
//! and the host and every other call keep working.

use std::thread;

use rapid_host::plugins::PluginError;
use rapid_host::resolve::{ModelResolver, ResolveFailure};

use crate::support::{facts, load, policy, registry, test_limits};

#[test]
fn an_endless_loop_hits_the_deadline() {
    let set = load(&["testing/policy-chaos.wasm"]);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    match chaos.resolve("spin") {
        Err(ResolveFailure::Plugin(PluginError::Timeout { plugin, limit, .. })) => {
            assert_eq!(plugin, "chaos");
            assert_eq!(limit, test_limits().call_timeout);
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(chaos.resolve("fine").is_ok());
}

#[test]
fn unbounded_memory_growth_hits_the_cap() {
    let set = load(&["testing/policy-chaos.wasm"]);
    let registry = registry();
    let chaos = ModelResolver::new(&registry, policy(&set, "chaos"), facts(16));
    match chaos.resolve("bloat") {
        Err(ResolveFailure::Plugin(PluginError::MemoryExceeded { plugin, limit_bytes, .. })) => {
            assert_eq!(plugin, "chaos");
            assert_eq!(limit_bytes, test_limits().memory_bytes);
        }
        other => panic!("expected the memory cap, got {other:?}"),
    }
    assert!(chaos.resolve("fine").is_ok());
}

#[test]
fn misbehaving_calls_do_not_disturb_concurrent_ones() {
    let set = load(&["testing/policy-chaos.wasm", "policy-strict.wasm"]);
    let registry = registry();
    thread::scope(|scope| {
        let bad: Vec<_> = ["spin", "bloat", "trap"]
            .into_iter()
            .map(|name| {
                let (set, registry) = (&set, &registry);
                scope.spawn(move || ModelResolver::new(registry, policy(set, "chaos"), facts(16)).resolve(name))
            })
            .collect();
        let strict = ModelResolver::new(&registry, policy(&set, "strict"), facts(16));
        for _ in 0..20 {
            let r = strict.resolve("qwen3.5-9b-4bit").expect("strict keeps working");
            assert_eq!(r.hf_path, "mlx-community/Qwen3.5-9B-4bit");
        }
        for handle in bad {
            assert!(matches!(handle.join().expect("no panic"), Err(ResolveFailure::Plugin(_))));
        }
    });
}
