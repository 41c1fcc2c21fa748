//! rapid-host: an OpenAI-compatible LLM server whose output parsers and alias policies are
//! sandboxed WebAssembly plugins.

pub mod engine;
pub mod host_facts;
pub mod hub;
pub mod parsers;
pub mod plugins;
pub mod registry;
pub mod resolve;
pub mod scaffold;
pub mod server;
