//! `{{parser}}`: a tool-call parser plugin for rapid-host.
//!
//! Wire format handled (change it to your model's): calls wrapped in `<call>…</call>`,
//! each a JSON object `{"name": ..., "arguments": {...}}`. Text outside calls is content.
//!
//! The SDK does the streaming: `ToolCallSplitter` finds the openers across chunk
//! boundaries, holds back half-received markers, waits for each section to complete and
//! hands it to `parse`. Whatever the chunking, the result is the same.

use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Section, Splitter, ToolCallSplitter, until_closer};
use serde_json::Value;

const PARSER: &str = "{{parser}}";
const OPEN: &str = "<call>";
const CLOSE: &str = "</call>";

struct Format;

impl CallFormat for Format {
    /// Markers that start a tool-call section anywhere in the output.
    fn openers(&self) -> &[&'static str] {
        &[OPEN]
    }

    /// How long the section at the start of `buf` is, once it is complete.
    fn section_len(&self, buf: &str, eof: bool) -> Option<usize> {
        until_closer(buf, &[CLOSE], eof)
    }

    /// One complete section → calls. A broken one becomes content and is reported.
    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let body = section.strip_prefix(OPEN).unwrap_or(section);
        let body = body.strip_suffix(CLOSE).unwrap_or(body);
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return Section::Malformed(String::from("call is not JSON"));
        };
        let Some(name) = value.get("name").and_then(Value::as_str) else {
            return Section::Malformed(String::from("call has no name"));
        };
        let arguments = match value.get("arguments") {
            None => String::from("{}"),
            Some(args) => match json::object(&args.to_string()) {
                Some(a) => a,
                None => return Section::Malformed(String::from("arguments are not an object")),
            },
        };
        Section::Calls(vec![Call::new(name, arguments)])
    }
}

struct Plugin;

impl ParserPlugin for Plugin {
    fn info() -> PluginInfo {
        parser_info("{{name}}", "Tool calls in <call>{json}</call>", &[(PARSER, CapabilityKind::ToolCallParser)])
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != PARSER {
            return Err(unknown_parser(config, &[PARSER]));
        }
        Ok(Box::new(ToolCallSplitter::new(Format, Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<Plugin>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
