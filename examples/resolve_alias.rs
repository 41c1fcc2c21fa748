//! Resolve model names through an alias-policy plugin, as `rapid-host info` does.
//!
//! ```sh
//! scripts/build-plugins
//! cargo run --example resolve_alias -- qwen3.5-4b gemma-4-12b-qat-4bit
//! cargo run --example resolve_alias -- --policy memory-fit qwen3.5-27b
//! ```

use std::path::Path;

use rapid_host::host_facts::HostFacts;
use rapid_host::plugins::{PluginRuntime, PluginSet, SandboxLimits};
use rapid_host::registry::AliasRegistry;
use rapid_host::resolve::{ModelResolver, ResolveFailure};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let policy_name = match args.iter().position(|a| a == "--policy") {
        Some(i) if i + 1 < args.len() => {
            let name = args.remove(i + 1);
            args.remove(i);
            name
        }
        _ => String::from("strict"),
    };

    let registry = AliasRegistry::builtin()?;
    let plugins_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let runtime = PluginRuntime::new(SandboxLimits::default(), PluginRuntime::default_cache_dir())?;
    let set = PluginSet::load_dir(runtime, &plugins_dir)?;
    let policy = set
        .policy(&policy_name)
        .ok_or_else(|| anyhow::anyhow!("no `{policy_name}` policy in {}", plugins_dir.display()))?;
    let resolver = ModelResolver::new(&registry, policy, HostFacts::detect("cpu"));

    for name in &args {
        match resolver.resolve(name) {
            Ok(model) => println!("{name} -> {} ({:?}) {:?}", model.hf_path, model.source, model.notes),
            Err(ResolveFailure::Unknown { message, suggestions }) => {
                println!("{name}: {message}; did you mean {suggestions:?}")
            }
            Err(ResolveFailure::Plugin(e)) => println!("{name}: plugin failed: {e}"),
        }
    }
    Ok(())
}
