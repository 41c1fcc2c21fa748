//! rapid-host: an OpenAI-compatible LLM server whose output parsers and alias policies are
//! sandboxed WebAssembly plugins.

//!
//! Without the default `server` feature the library is the engine alone (with the alias
//! table and the host facts it reads): no HTTP, no wasmtime, no network client.

pub mod engine;
pub mod host_facts;
#[cfg(feature = "server")]
pub mod hub;
pub mod memory;
#[cfg(feature = "server")]
pub mod parsers;
#[cfg(feature = "server")]
pub mod plugins;
pub mod registry;
#[cfg(feature = "server")]
pub mod resolve;
#[cfg(feature = "server")]
pub mod scaffold;
#[cfg(feature = "server")]
pub mod server;
