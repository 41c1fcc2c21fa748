//! `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, several in a row.
//!
//! Also accepts what models of this family actually emit: `"parameters"` for
//! `"arguments"`, arguments double-encoded as a JSON string, a missing `</tool_call>` at
//! the end of output, and the Qwen3-Coder XML body (`<function=NAME>…`) inside the tags.

use rapid_plugin_sdk::grammar;
use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::markers::strip_partial_suffix;
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};
use rapid_plugin_sdk::xml::function_blocks;
use serde_json::Value;

struct HermesFormat;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

/// One `{"name", "arguments"}` object → a call.
fn json_call(body: &str) -> Result<Call, String> {
    let fields = json::fields(body).ok_or_else(|| String::from("tool call is not a JSON object"))?;
    let name = fields
        .get("name")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
        .filter(|n| !n.is_empty())
        .ok_or("tool call has no name")?;
    let arguments = json::arguments(fields.get("arguments").or_else(|| fields.get("parameters")).copied())?;
    Ok(Call::new(name, arguments))
}

impl CallFormat for HermesFormat {
    fn openers(&self) -> &[&'static str] {
        &[OPEN]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &[CLOSE], eof)
    }

    fn parse(&self, section: &str, tools: &Tools) -> Section {
        let body = section.strip_prefix(OPEN).unwrap_or(section);
        // Without its closer (or the piece of it the output ended in).
        let body = body.strip_suffix(CLOSE).unwrap_or_else(|| strip_partial_suffix(body.trim_end(), CLOSE)).trim();
        if body.starts_with("<function=") {
            return match function_blocks(body, tools) {
                Ok(calls) => Section::Calls(calls),
                Err(e) => Section::Malformed(e),
            };
        }
        match json_call(body) {
            Ok(call) => Section::Calls(vec![call]),
            Err(e) => Section::Malformed(e),
        }
    }
}

struct Hermes;

impl ParserPlugin for Hermes {
    fn info() -> PluginInfo {
        parser_info(
            "hermes",
            "Hermes/Qwen <tool_call>{json}</tool_call>",
            &[("hermes", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "hermes" {
            return Err(unknown_parser(config, &["hermes"]));
        }
        Ok(Box::new(ToolCallSplitter::new(HermesFormat, Tools::parse(&config.tools_json))))
    }

    fn tool_call_grammar(_parser: &str, tools_json: &str) -> Option<String> {
        grammar::json_calls_in_markers(tools_json, "<tool_call>\n", "\n</tool_call>", "\n", "name", "arguments")
    }

    fn tool_prompt(_parser: &str, tools_json: &str) -> Option<String> {
        let tools: Vec<Value> = serde_json::from_str(tools_json).ok()?;
        if tools.is_empty() {
            return None;
        }
        let listed: Vec<String> = tools.iter().map(Value::to_string).collect();
        Some(format!(
            "# Tools\n\nYou may call one or more functions to help with the user's request. \
             The functions are described inside <tools></tools> tags:\n<tools>\n{}\n</tools>\n\n\
             To call a function, answer with a JSON object holding its name and arguments inside \
             <tool_call></tool_call> tags, one block per call:\n<tool_call>\n\
             {{\"name\": <function-name>, \"arguments\": <arguments-json-object>}}\n</tool_call>",
            listed.join("\n")
        ))
    }
}

type Component = Adapter<Hermes>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
