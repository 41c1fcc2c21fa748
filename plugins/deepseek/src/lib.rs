//! DeepSeek tool calls, inside `<｜tool▁calls▁begin｜>…<｜tool▁calls▁end｜>`:
//! - `deepseek` (V3, R1): `<｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\n```json\n{ARGS}\n```<｜tool▁call▁end｜>`
//! - `deepseek_v31`: `<｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{ARGS}<｜tool▁call▁end｜>`
//!
//! Both shapes are accepted by both names: the `function` type word and the fence tell
//! them apart, and models drift between them.

use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::markers::strip_partial_suffix;
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};

const CALLS_BEGIN: &str = "<｜tool▁calls▁begin｜>";
const CALLS_END: &str = "<｜tool▁calls▁end｜>";
const CALL_BEGIN: &str = "<｜tool▁call▁begin｜>";
const CALL_END: &str = "<｜tool▁call▁end｜>";
const SEP: &str = "<｜tool▁sep｜>";
const PARSERS: &[&str] = &["deepseek", "deepseek_v31"];

struct DeepSeekFormat;

fn one_call(body: &str) -> Result<Call, String> {
    let (head, tail) = body.split_once(SEP).ok_or("tool call without <｜tool▁sep｜>")?;
    let head = head.trim();
    let (name, args) = if head == "function" || head.is_empty() {
        // V3: NAME on the rest of the line, then a ```json fence.
        let (name, rest) = tail.split_once('\n').unwrap_or((tail, ""));
        let rest = rest.trim();
        let fenced = rest.strip_prefix("```json").or_else(|| rest.strip_prefix("```")).unwrap_or(rest);
        (name.trim(), fenced.trim().strip_suffix("```").unwrap_or(fenced))
    } else {
        (head, tail)
    };
    if name.is_empty() {
        return Err(String::from("tool call without a name"));
    }
    let args = json::arguments_text(args).ok_or("arguments are not a JSON object")?;
    Ok(Call::new(name, args))
}

impl CallFormat for DeepSeekFormat {
    fn openers(&self) -> &[&'static str] {
        &[CALLS_BEGIN, CALL_BEGIN]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        let closer = if buf.starts_with(CALLS_BEGIN) { CALLS_END } else { CALL_END };
        scan.until_closer(buf, &[closer], eof)
    }

    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let mut calls = Vec::new();
        for piece in section.split(CALL_BEGIN).skip(1) {
            let body = piece.split(CALL_END).next().unwrap_or(piece);
            let body = body.split(CALLS_END).next().unwrap_or(body);
            // The output may have ended inside a closing marker.
            let body = strip_partial_suffix(strip_partial_suffix(body.trim_end(), CALLS_END), CALL_END);
            match one_call(body) {
                Ok(call) => calls.push(call),
                Err(e) => return Section::Malformed(e),
            }
        }
        if calls.is_empty() {
            Section::Malformed(String::from("tool-call section without calls"))
        } else {
            Section::Calls(calls)
        }
    }
}

struct DeepSeek;

impl ParserPlugin for DeepSeek {
    fn info() -> PluginInfo {
        parser_info(
            "deepseek",
            "DeepSeek V3/R1 and V3.1 tool calls",
            &[("deepseek", CapabilityKind::ToolCallParser), ("deepseek_v31", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if !PARSERS.contains(&config.parser.as_str()) {
            return Err(unknown_parser(config, PARSERS));
        }
        Ok(Box::new(ToolCallSplitter::new(DeepSeekFormat, Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<DeepSeek>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
