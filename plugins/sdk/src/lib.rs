//! Rust SDK for rapid-host plugins.
//!
//! Without features this crate holds only pure helpers that the host shares with guests
//! (the alias naming rules), so a policy plugin and the host's contract tests can never
//! disagree on what `qwen3.5-4b-4bit` means, and the streaming machinery of output parsers
//! (marker matching across chunks, hold-back, JSON and schema-typed values), testable
//! natively. With the default `guest` feature it also generates the component bindings.

pub mod grammar;
pub mod json;
pub mod markers;
pub mod naming;
pub mod reasoning;
pub mod suggest;
pub mod tool_calls;
pub mod xml;

#[cfg(feature = "guest")]
pub mod alias_policy;
#[cfg(feature = "guest")]
pub mod output_parser;
#[cfg(feature = "guest")]
pub mod policy;
