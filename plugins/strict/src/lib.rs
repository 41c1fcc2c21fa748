//! `strict`, the default alias policy: local path > exact alias > `org/repo` > error.
//! Retired short names are errors that name the explicit aliases they could mean.

use rapid_plugin_sdk::alias_policy::{AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, policy_info};
use rapid_plugin_sdk::policy::resolve_standard;

struct Strict;

impl AliasPolicy for Strict {
    fn info() -> PluginInfo {
        policy_info("strict", "Exact aliases only; retired short names fail with suggestions")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        resolve_standard(&request)
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Strict);
