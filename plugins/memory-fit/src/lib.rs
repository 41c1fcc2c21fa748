//! `memory-fit`: a name without a quantization suffix (`qwen3.5-27b`) picks the largest
//! quantization of that model that fits the host's free memory. Everything else follows
//! the strict rules.

use rapid_plugin_sdk::alias_policy::{
    AliasEntry, AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, policy_info,
};
use rapid_plugin_sdk::naming::{bits_per_weight, params_billions, parse_alias_name, split_quant};
use rapid_plugin_sdk::policy::{aliases_with_stem, from_alias, resolve_local, resolve_standard};

/// Memory needed beyond the weights: KV cache, activations, runtime. Weights × 1.2.
const HEADROOM: f64 = 1.2;

struct MemoryFit;

/// Estimated bytes of weights, from the exact size when known, else params × bits.
fn weight_bytes(entry: &AliasEntry) -> Option<f64> {
    if let Some(size) = entry.size_bytes {
        return Some(size as f64);
    }
    let name = parse_alias_name(&entry.name).ok()?;
    let params = params_billions(name.params?)? * 1e9;
    Some(params * bits_per_weight(name.quant)? / 8.0)
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / f64::from(1u32 << 30))
}

impl AliasPolicy for MemoryFit {
    fn info() -> PluginInfo {
        policy_info("memory-fit", "A name without quant suffix picks the largest quantization that fits free memory")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        if let Some(local) = resolve_local(&request)? {
            return Ok(local);
        }
        if split_quant(&request.name).is_some() || request.name.contains('/') {
            return resolve_standard(&request);
        }
        let candidates = aliases_with_stem(&request, &request.name);
        if candidates.is_empty() {
            return resolve_standard(&request);
        }
        let free = request.host.free_memory_bytes as f64;
        let mut sized: Vec<(&AliasEntry, f64, f64)> = candidates
            .iter()
            .filter_map(|e| {
                let quant = split_quant(&e.name)?.1;
                Some((*e, weight_bytes(e)?, bits_per_weight(quant)?))
            })
            .collect();
        // Largest quantization first; among equal bits, the smaller download.
        sized.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.1.total_cmp(&b.1)));
        if let Some((entry, bytes, _)) = sized.iter().find(|(_, bytes, _)| bytes * HEADROOM <= free) {
            let note = format!(
                "picked {} for '{}': needs about {} with headroom, {} free",
                entry.name,
                request.name,
                gib(bytes * HEADROOM),
                gib(free)
            );
            return Ok(from_alias(entry, vec![note]));
        }
        let mut by_size = sized.clone();
        by_size.sort_by(|a, b| a.1.total_cmp(&b.1));
        Err(ResolveError {
            message: match by_size.first() {
                Some((smallest, bytes, _)) => format!(
                    "no quantization of '{}' fits in {} of free memory (smallest: {} needs about {})",
                    request.name,
                    gib(free),
                    smallest.name,
                    gib(bytes * HEADROOM)
                ),
                None => format!("cannot estimate the size of any quantization of '{}'", request.name),
            },
            suggestions: candidates.iter().map(|e| e.name.clone()).collect(),
        })
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(MemoryFit);
