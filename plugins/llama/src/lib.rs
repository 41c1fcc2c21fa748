//! `llama`: Llama 3.x tool calls: `<|python_tag|>{"name": ..., "parameters": {...}}`, the
//! same JSON object bare at the start of the answer, and `<function=NAME>{json}</function>`.
//! Several JSON calls may follow each other, separated by `;` or whitespace. A bare JSON
//! answer that is not a call (no `name`) stays content.

use rapid_plugin_sdk::grammar;
use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Section, Splitter, ToolCallSplitter, until_closer};
use serde_json::Value;

const PYTHON_TAG: &str = "<|python_tag|>";
const FUNCTION: &str = "<function=";

struct LlamaFormat;

/// `{"name", "parameters"|"arguments"}` → a call; `None` when the object is not a call.
fn json_call(text: &str) -> Option<Result<Call, String>> {
    let value: Value = serde_json::from_str(text).ok()?;
    let name = value.get("name")?.as_str()?.to_string();
    let args = match value.get("parameters").or_else(|| value.get("arguments")) {
        None | Some(Value::Null) => Ok(String::from("{}")),
        Some(Value::String(s)) => json::object(s).ok_or_else(|| String::from("arguments string is not an object")),
        Some(Value::Object(_)) => {
            // Re-minify the original object text so key order is the model's.
            let key_at = text.find("\"parameters\"").or_else(|| text.find("\"arguments\""));
            let raw = key_at.and_then(|at| {
                let colon = text[at..].find(':')? + at + 1;
                let len = json::value_len(&text[colon..])?;
                json::object(&text[colon..colon + len])
            });
            Ok(raw.unwrap_or_else(|| value["parameters"].to_string()))
        }
        Some(_) => Err(String::from("parameters are not an object")),
    };
    Some(args.map(|a| Call::new(name, a)))
}

impl CallFormat for LlamaFormat {
    fn openers(&self) -> &[&'static str] {
        &[PYTHON_TAG, FUNCTION]
    }

    fn leading_openers(&self) -> &[&'static str] {
        &["{"]
    }

    fn section_len(&self, buf: &str, eof: bool) -> Option<usize> {
        if buf.starts_with(FUNCTION) {
            return until_closer(buf, &["</function>"], eof);
        }
        let start = if buf.starts_with(PYTHON_TAG) { PYTHON_TAG.len() } else { 0 };
        // One or more JSON objects separated by `;`; the section ends after the last one.
        let mut end = start;
        loop {
            let rest = &buf[end..];
            let after = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ';');
            if after.is_empty() {
                // Another `; {…}` may still come.
                return eof.then_some(buf.len());
            }
            if !after.starts_with('{') {
                return Some(end);
            }
            match json::value_len(after) {
                Some(len) => end = buf.len() - after.len() + len,
                None => return eof.then_some(buf.len()),
            }
        }
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
