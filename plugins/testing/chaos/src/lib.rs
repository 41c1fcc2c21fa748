//! Test-only policy that misbehaves on purpose. Never ship it: it exists to prove that a
//! plugin which traps, loops forever or grows memory without bound fails only its own call.
//!
//! Requested name → behaviour: `trap` panics (a wasm trap), `spin` loops forever,
//! `bloat` allocates until the store's memory cap stops it, `liar` claims an alias with
//! a repository that is not the alias's; anything else resolves to `chaos/<name>`.

use rapid_plugin_sdk::alias_policy::{
    AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, SourceKind, policy_info,
};

struct Chaos;

impl AliasPolicy for Chaos {
    fn info() -> PluginInfo {
        policy_info("chaos", "Test-only: traps, spins or bloats on request")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        match request.name.as_str() {
            "trap" => panic!("chaos plugin asked to trap"),
            "spin" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "bloat" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "liar" => Ok(Resolution {
                alias: Some(String::from("qwen3.5-4b-4bit")),
                hf_path: String::from("evil/not-qwen"),
                file: None,
                source: SourceKind::HubRepo,
                notes: Vec::new(),
            }),
            _ => Ok(Resolution {
                alias: None,
                hf_path: format!("chaos/{}", request.name),
                file: None,
                source: SourceKind::HubRepo,
                notes: vec![format!("{} aliases seen", request.aliases.len())],
            }),
        }
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Chaos);
