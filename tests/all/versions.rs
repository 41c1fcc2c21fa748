//! WIT versioning: released versions are frozen, and plugins built against an older
//! supported version keep loading and working.

use std::collections::BTreeSet;

use rapid_host::parsers::{AssembledMessage, ParserPipeline, PipelineConfig, tool_prompt};
use rapid_host::plugins::{PluginKind, PluginRuntime, PluginSet, SUPPORTED_WIT_VERSIONS};
use sha2::{Digest, Sha256};

use crate::support::{plugin_file, plugins_dir, repo_root, test_limits};

#[test]
fn released_wit_versions_are_frozen() {
    let wit = repo_root().join("wit");
    let manifest = std::fs::read_to_string(wit.join("frozen.txt")).expect("wit/frozen.txt");
    let mut listed = BTreeSet::new();
    for line in manifest.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (file, hash) = line.split_once(' ').expect("`path sha256` lines");
        let bytes = std::fs::read(wit.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let actual: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(actual, hash.trim(), "{file} changed after release: add a new since_vX.Y.Z directory instead");
        let dir = file.split('/').next().expect("dir");
        let version = dir.strip_prefix("since_v").expect("since_v dir");
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(text.contains(&format!("package rapid:plugin@{version};")), "{file} must declare version {version}");
        listed.insert(version.to_string());
    }
    let dirs: BTreeSet<String> = std::fs::read_dir(&wit)
        .expect("wit dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("since_v").map(str::to_string))
        .collect();
    assert_eq!(dirs, listed, "every wit/since_v* directory is released and listed in frozen.txt");
    let supported: BTreeSet<String> = SUPPORTED_WIT_VERSIONS.iter().map(|v| v.to_string()).collect();
    assert_eq!(supported, listed, "the host supports exactly the released versions");
}

#[test]
fn a_plugin_built_against_the_previous_version_still_loads_and_works() {
    let mut set =
        PluginSet::load_dir(PluginRuntime::new(test_limits(), None).expect("runtime"), &plugins_dir()).expect("dir");
    set.load_file(&plugin_file("testing/parser-since-v0-1-0.wasm"));
    assert!(set.failures.is_empty(), "{:?}", set.failures);
    let old = set.plugins.iter().find(|p| p.name == "plain-v0-1-0").expect("old plugin listed");
    assert_eq!((old.kind, old.wit_version.as_str()), (PluginKind::OutputParser, "0.1.0"));
    assert!(set.plugins.iter().any(|p| p.wit_version == "0.2.0"), "new plugins load beside it");

    let config = PipelineConfig { tool_parser: Some("plain-v0-1-0".into()), ..PipelineConfig::default() };
    let mut pipeline = ParserPipeline::new(&set, &config).expect("session on a 0.1.0 plugin");
    let mut message = AssembledMessage::default();
    message.extend(&pipeline.feed("hello "));
    message.extend(&pipeline.feed("world"));
    message.extend(&pipeline.finish());
    assert_eq!(message.content, "hello world");

    // The 0.2.0 addition: absent in the old plugin, present in a new one.
    assert_eq!(tool_prompt(&set, "plain-v0-1-0", "[]").expect("no trap"), None);
    let tools = r#"[{"type":"function","function":{"name":"get_weather","parameters":{}}}]"#;
    let prompt = tool_prompt(&set, "hermes", tools).expect("no trap").expect("hermes writes a tool prompt");
    assert!(prompt.contains("<tool_call>") && prompt.contains("get_weather"), "{prompt}");
}
