//! `llama`: Llama 3.x tool calls: `<|python_tag|>{"name": ..., "parameters": {...}}`, the
//! same JSON object bare at the start of the answer, and `<function=NAME>{json}</function>`.
//! Several JSON calls may follow each other, separated by `;` or whitespace. A bare JSON
//! answer that is not a call (no `name`) stays content.

use rapid_plugin_sdk::grammar;
use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};

const PYTHON_TAG: &str = "<|python_tag|>";
const FUNCTION: &str = "<function=";

struct LlamaFormat;

/// `{"name", "parameters"|"arguments"}` → a call; `None` when the object is not a call.
fn json_call(text: &str) -> Option<Result<Call, String>> {
    let fields = json::fields(text)?;
    let name: String = serde_json::from_str(fields.get("name")?.get()).ok()?;
    let args = json::arguments(fields.get("parameters").or_else(|| fields.get("arguments")).copied());
    Some(args.map(|a| Call::new(name, a)))
}

impl CallFormat for LlamaFormat {
    fn openers(&self) -> &[&'static str] {
        &[PYTHON_TAG, FUNCTION]
    }

    fn leading_openers(&self) -> &[&'static str] {
        &["{"]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        if buf.starts_with(FUNCTION) {
            return scan.until_closer(buf, &["</function>"], eof);
        }
        // One or more JSON objects separated by `;`; the section ends after the last one.
        let start = if buf.starts_with(PYTHON_TAG) { PYTHON_TAG.len() } else { 0 };
        scan.json_values(buf, start, &[';'], eof)
    }

    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        if let Some(rest) = section.strip_prefix(FUNCTION) {
            let Some((name, body)) = rest.split_once('>') else {
                return Section::Malformed("unterminated <function=".into());
            };
            let body = body.strip_suffix("</function>").unwrap_or(body);
            return match json::object(body) {
                Some(args) => Section::Calls(vec![Call::new(name.trim(), args)]),
                None => Section::Malformed(format!("arguments of {name} are not a JSON object")),
            };
        }
        let tagged = section.starts_with(PYTHON_TAG);
        let body = section.strip_prefix(PYTHON_TAG).unwrap_or(section);
        let mut calls = Vec::new();
        let mut rest = body;
        loop {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
            if rest.is_empty() {
                break;
            }
            let Some(len) = json::value_len(rest) else {
                return if tagged {
                    Section::Malformed("incomplete JSON after <|python_tag|>".into())
                } else {
                    Section::NotACall
                };
            };
            match json_call(&rest[..len]) {
                Some(Ok(call)) => calls.push(call),
                Some(Err(e)) => return Section::Malformed(e),
                None if tagged => return Section::Malformed("not a {\"name\", \"parameters\"} object".into()),
                None => return Section::NotACall,
            }
            rest = &rest[len..];
        }
        if calls.is_empty() && tagged {
            return Section::Malformed(String::from("no JSON call after <|python_tag|>"));
        }
        Section::Calls(calls)
    }
}

struct Llama;

impl ParserPlugin for Llama {
    fn info() -> PluginInfo {
        parser_info(
            "llama",
            "Llama 3.x JSON tool calls (<|python_tag|>, bare JSON, <function=…>)",
            &[("llama", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "llama" {
            return Err(unknown_parser(config, &["llama"]));
        }
        Ok(Box::new(ToolCallSplitter::new(LlamaFormat, Tools::parse(&config.tools_json))))
    }

    /// The bare-JSON form: `<|python_tag|>` is a control token that grammar text cannot produce.
    fn tool_call_grammar(_parser: &str, tools_json: &str) -> Option<String> {
        grammar::json_calls_in_markers(tools_json, "", "", "; ", "name", "parameters")
    }
}

type Component = Adapter<Llama>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
