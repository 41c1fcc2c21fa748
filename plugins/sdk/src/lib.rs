//! Rust SDK for rapid-host plugins.
//!
//! Without features this crate holds only pure helpers that the host shares with guests
//! (the alias naming rules), so a policy plugin and the host's contract tests can never
//! disagree on what `qwen3.5-4b-4bit` means. With the default `guest` feature it also
//! generates the component bindings and offers ready-made pieces for policies.

pub mod naming;
pub mod suggest;

#[cfg(feature = "guest")]
pub mod alias_policy;
#[cfg(feature = "guest")]
pub mod output_parser;
#[cfg(feature = "guest")]
pub mod policy;
