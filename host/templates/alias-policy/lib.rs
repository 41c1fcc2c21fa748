//! `{{name}}`: an alias policy plugin for rapid-host.
//!
//! Starts from the standard rules (local path > exact alias > `org/repo` > error with
//! suggestions) and adds one of its own: `latest-small` picks the smallest alias by size
//! that this build can load. Change `resolve` to your own rules.

use rapid_plugin_sdk::alias_policy::{
    AliasPolicy, PluginInfo, ResolveError, ResolveRequest, Resolution, policy_info,
};
use rapid_plugin_sdk::policy::{from_alias, resolve_standard};

struct Policy;

impl AliasPolicy for Policy {
    fn info() -> PluginInfo {
        policy_info("{{name}}", "Standard rules plus `latest-small`")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        if request.name == "latest-small" {
            let smallest = request
                .aliases
                .iter()
                .filter(|a| a.loadable)
                .filter_map(|a| a.size_bytes.map(|s| (s, a)))
                .min_by_key(|(s, _)| *s);
            return match smallest {
                Some((_, entry)) => Ok(from_alias(entry, vec![String::from("smallest loadable alias")])),
                None => Err(ResolveError { message: String::from("no loadable alias with a known size"), suggestions: Vec::new() }),
            };
        }
        resolve_standard(&request)
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Policy);
