//! Bindings for the `alias-policy-plugin` world.
//!
//! A policy crate implements [`AliasPolicy`] (`info` and `resolve`) and calls
//! `rapid_plugin_sdk::alias_policy::export_alias_policy!(MyPolicy);`.

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "alias-policy-plugin",
        path: "../../wit/since_v0.2.0",
        default_bindings_module: "rapid_plugin_sdk::alias_policy::bindings",
        pub_export_macro: true,
        export_macro_name: "export_alias_policy",
    });
}

pub use bindings::export_alias_policy;
pub use bindings::exports::rapid::plugin::alias_policy::{
    AliasEntry, Guest as AliasPolicy, HostFacts, ModelFormat, PathKind, Resolution, ResolveError, ResolveRequest,
    RetiredName, SourceKind,
};
pub use bindings::rapid::plugin::types::{Capability, CapabilityKind, PluginInfo};

/// Plugin info for a plugin that provides exactly one alias policy.
pub fn policy_info(name: &str, description: &str) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        description: description.to_string(),
        provides: vec![Capability { name: name.to_string(), kind: CapabilityKind::AliasPolicy }],
    }
}
