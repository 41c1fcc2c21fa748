//! Host-side types generated from the newest WIT (`wit/since_v0.2.0`).
//!
//! Only the types are used: calls go through [`super::exports`], which looks functions up
//! under whichever supported version a plugin was built against. Wasmtime checks records
//! and variants structurally, so these types serve every version whose functions kept
//! their shape (the versioning policy in `wit/README.md` guarantees that).

pub mod alias_policy {
    wasmtime::component::bindgen!({ world: "alias-policy-plugin", path: "../wit/since_v0.2.0" });
}

pub mod output_parser {
    wasmtime::component::bindgen!({
        world: "output-parser-plugin",
        path: "../wit/since_v0.2.0",
        with: { "rapid:plugin/types": crate::plugins::bindings::alias_policy::rapid::plugin::types },
    });
}

pub use alias_policy::exports::rapid::plugin::alias_policy as policy;
pub use alias_policy::rapid::plugin::types;
pub use output_parser::exports::rapid::plugin::output_parser as parser;
