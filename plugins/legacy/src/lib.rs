//! `legacy`: the strict rules, except that a retired short name still resolves to its
//! explicit replacement, with a deprecation note.

use rapid_plugin_sdk::alias_policy::{AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, policy_info};
use rapid_plugin_sdk::policy::{find_alias, from_alias, resolve_local, resolve_standard};

struct Legacy;

impl AliasPolicy for Legacy {
    fn info() -> PluginInfo {
        policy_info("legacy", "Strict rules, plus retired short names mapped to their replacements")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        if let Some(local) = resolve_local(&request)? {
            return Ok(local);
        }
        let retired = request.retired.iter().find(|r| r.name == request.name);
        if let Some(entry) = retired.and_then(|r| find_alias(&request, &r.replacement)) {
            let note = format!("'{}' is deprecated and will stop working: use '{}'", request.name, entry.name);
            return Ok(from_alias(entry, vec![note]));
        }
        resolve_standard(&request)
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Legacy);
