//! Test-only policy that reads the wall clock. Rust std turns that into an import of
//! `wasi:clocks/wall-clock`, which the host does not offer, so loading must fail with a
//! message naming the import.

use rapid_plugin_sdk::alias_policy::{
    AliasPolicy, PluginInfo, Resolution, ResolveError, ResolveRequest, SourceKind, policy_info,
};

struct Clocky;

impl AliasPolicy for Clocky {
    fn info() -> PluginInfo {
        policy_info("clocky", "Test-only: imports a clock")
    }

    fn resolve(request: ResolveRequest) -> Result<Resolution, ResolveError> {
        let now = std::time::SystemTime::now();
        Ok(Resolution {
            alias: None,
            hf_path: request.name,
            file: None,
            source: SourceKind::HubRepo,
            notes: vec![format!("{now:?}")],
        })
    }
}

rapid_plugin_sdk::alias_policy::export_alias_policy!(Clocky);
