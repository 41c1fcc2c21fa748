//! `{{parser}}`: a tool-call parser plugin for rapid-host.
//!
//! Wire format handled (change it to your model's): calls wrapped in `<call>…</call>`,
//! each a JSON object `{"name": ..., "arguments": {...}}`. Text outside calls is content.
//!
//! The SDK does the streaming: `ToolCallSplitter` finds the openers across chunk
//! boundaries, holds back half-received markers, waits for each section to complete and
//! hands it to `parse`. Whatever the chunking, the result is the same, and the work stays
//! linear in the output: the search for a section's end resumes where it stopped (`Scan`).

use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};

const PARSER: &str = "{{parser}}";
const OPEN: &str = "<call>";
const CLOSE: &str = "</call>";

struct Format;

impl CallFormat for Format {
    /// Markers that start a tool-call section anywhere in the output.
    fn openers(&self) -> &[&'static str] {
        &[OPEN]
    }

    /// How long the section at the start of `buf` is, once it is complete. Called after
    /// every feed while the section streams in; `scan` remembers where the last call stopped.
    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &[CLOSE], eof)
    }

    /// One complete section → calls. A broken one becomes content and is reported.
    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let body = section.strip_prefix(OPEN).unwrap_or(section);
        let body = body.strip_suffix(CLOSE).unwrap_or(body);
        // Each field's own text: the arguments keep the model's key order and spelling.
        let Some(fields) = json::fields(body) else {
            return Section::Malformed(String::from("call is not a JSON object"));
        };
        let Some(name) = fields.get("name").and_then(|n| serde_json::from_str::<String>(n.get()).ok()) else {
            return Section::Malformed(String::from("call has no name"));
        };
        // An object, the same object double-encoded as a string, or nothing (`{}`).
        match json::arguments(fields.get("arguments").copied()) {
            Ok(arguments) => Section::Calls(vec![Call::new(name, arguments)]),
            Err(reason) => Section::Malformed(reason),
        }
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
