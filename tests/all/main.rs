//! Integration tests of rapid-host, one binary, one file per topic. They run the real
//! plugin components built by `scripts/build-plugins` (the README's test command builds
//! them first).

mod auth;
mod authoring;
mod batching;
mod cli;
mod device_layout;
mod gguf_device;
mod gguf_from_mlx;
mod hostile_plugins;
mod hostile_requests;
mod hub;
mod limits;
mod loading;
mod mlx_parity;
mod openai_sdk;
mod parity;
mod parser_cost;
mod parsers;
mod policies;
mod prefix_cache;
mod registry;
mod reload;
mod replicas;
mod sdk_apis;
mod server;
mod structured;
mod support;
mod traps;
mod versions;
