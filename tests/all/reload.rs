//! Hot reload: a new plugin set replaces the old one for new requests, while requests
//! already running finish on the instances they started with.

use rapid_host::parsers::{AssembledMessage, ParserPipeline, PipelineConfig};
use rapid_host::plugins::PluginHub;

use crate::support::{plugin_file, runtime};

#[test]
fn in_flight_sessions_finish_on_the_old_set() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("parser-hermes.wasm"), dir.path().join("parser.wasm")).expect("copy");
    let hub = PluginHub::load(runtime(), dir.path()).expect("hub");

    // A response starts on the current set and gets half-way.
    let old = hub.current();
    let config = PipelineConfig { tool_parser: Some("hermes".into()), ..PipelineConfig::default() };
    let mut pipeline = ParserPipeline::new(&old, &config).expect("pipeline");
    let mut message = AssembledMessage::default();
    message.extend(&pipeline.feed("Sure. <tool_call>{\"name\": \"f\", "));

    // Meanwhile the plugin file is replaced by another parser and the hub reloads.
    std::fs::copy(plugin_file("parser-kimi.wasm"), dir.path().join("parser.wasm")).expect("replace");
    let new = hub.reload().expect("reload");
    assert!(new.tool_parser("kimi").is_some() && new.tool_parser("hermes").is_none());
    assert!(hub.current().tool_parser("kimi").is_some(), "new requests see the new set");
    assert!(ParserPipeline::new(&hub.current(), &config).is_err(), "hermes is gone for new requests");

    // The running response completes on the instance it started with.
    message.extend(&pipeline.feed("\"arguments\": {\"a\": 1}}</tool_call>"));
    message.extend(&pipeline.finish());
    assert!(pipeline.failures.is_empty(), "{:?}", pipeline.failures);
    assert_eq!(message.content, "Sure.");
    assert_eq!(message.tool_calls[0].name, "f");
    assert_eq!(message.tool_calls[0].arguments, "{\"a\":1}");
    assert!(old.tool_parser("hermes").is_some(), "the old snapshot is intact");
}

#[test]
fn a_broken_file_during_reload_is_reported_and_the_rest_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(plugin_file("policy-strict.wasm"), dir.path().join("policy-strict.wasm")).expect("copy");
    let hub = PluginHub::load(runtime(), dir.path()).expect("hub");
    std::fs::write(dir.path().join("half-copied.wasm"), b"\0asm\x0d\0\x01\0partial").expect("write");
    let set = hub.reload().expect("reload");
    assert_eq!(set.failures.len(), 1);
    assert!(set.policy("strict").is_some());
}
