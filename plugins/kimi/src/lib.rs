//! `kimi`: `<|tool_calls_section_begin|><|tool_call_begin|>functions.NAME:IDX
//! <|tool_call_argument_begin|>{ARGS}<|tool_call_end|>…<|tool_calls_section_end|>`.
//! The model's own call id (`functions.NAME:IDX`) is kept: Kimi's template expects it back.

use rapid_plugin_sdk::json::{self, Tools};
use rapid_plugin_sdk::markers::strip_partial_suffix;
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};

const SECTION_BEGIN: &str = "<|tool_calls_section_begin|>";
const SECTION_END: &str = "<|tool_calls_section_end|>";
const CALL_BEGIN: &str = "<|tool_call_begin|>";
const CALL_END: &str = "<|tool_call_end|>";
const ARGS_BEGIN: &str = "<|tool_call_argument_begin|>";

struct KimiFormat;

impl CallFormat for KimiFormat {
    fn openers(&self) -> &[&'static str] {
        &[SECTION_BEGIN]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &[SECTION_END], eof)
    }

    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let mut calls = Vec::new();
        for piece in section.split(CALL_BEGIN).skip(1) {
            let body = piece.split(CALL_END).next().unwrap_or(piece);
            // The output may have ended inside a closing marker.
            let body = strip_partial_suffix(strip_partial_suffix(body.trim_end(), SECTION_END), CALL_END);
            let Some((id, args)) = body.split_once(ARGS_BEGIN) else {
                return Section::Malformed(String::from("tool call without arguments"));
            };
            let id = id.trim();
            let name = id.strip_prefix("functions.").unwrap_or(id);
            let name = name.rsplit_once(':').map_or(name, |(n, _)| n);
            if name.is_empty() {
                return Section::Malformed(String::from("tool call without a name"));
            }
            let args = args.split(SECTION_END).next().unwrap_or(args);
            let Some(args) = json::arguments_text(args) else {
                return Section::Malformed(format!("arguments of {name} are not a JSON object"));
            };
            calls.push(Call { name: name.to_string(), arguments: args, id: Some(id.to_string()) });
        }
        if calls.is_empty() {
            Section::Malformed(String::from("tool-call section without calls"))
        } else {
            Section::Calls(calls)
        }
    }
}

struct Kimi;

impl ParserPlugin for Kimi {
    fn info() -> PluginInfo {
        parser_info("kimi", "Kimi K2 tool-call sections", &[("kimi", CapabilityKind::ToolCallParser)])
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "kimi" {
            return Err(unknown_parser(config, &["kimi"]));
        }
        Ok(Box::new(ToolCallSplitter::new(KimiFormat, Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<Kimi>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
