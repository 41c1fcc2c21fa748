//! `minimax`: `<minimax:tool_call>\n<invoke name="NAME">\n<parameter name="K">V</parameter>
//! \n</invoke>\n</minimax:tool_call>`, several invokes per section, values typed by schema.

use rapid_plugin_sdk::json::{ObjectBuilder, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};
use rapid_plugin_sdk::xml::{attribute, strip_newlines};

struct MiniMaxFormat;

impl CallFormat for MiniMaxFormat {
    fn openers(&self) -> &[&'static str] {
        &["<minimax:tool_call>"]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &["</minimax:tool_call>"], eof)
    }

    fn parse(&self, section: &str, tools: &Tools) -> Section {
        let mut calls = Vec::new();
        for piece in section.split("<invoke").skip(1) {
            let Some((tag, body)) = piece.split_once('>') else {
                return Section::Malformed(String::from("unterminated <invoke"));
            };
            let Some(name) = attribute(tag, "name").filter(|n| !n.is_empty()) else {
                return Section::Malformed(String::from("<invoke> without a name"));
            };
            let body = body.split("</invoke>").next().unwrap_or(body);
            let mut args = ObjectBuilder::default();
            for param in body.split("<parameter").skip(1) {
                let Some((tag, value)) = param.split_once('>') else {
                    return Section::Malformed(String::from("unterminated <parameter"));
                };
                let Some(key) = attribute(tag, "name") else {
                    return Section::Malformed(String::from("<parameter> without a name"));
                };
                let value = value.split("</parameter>").next().unwrap_or(value);
                args.push(key, &tools.typed_value(name, key, strip_newlines(value)));
            }
            calls.push(Call::new(name, args.finish()));
        }
        if calls.is_empty() {
            Section::Malformed(String::from("tool-call section without <invoke>"))
        } else {
            Section::Calls(calls)
        }
    }
}

struct MiniMax;

impl ParserPlugin for MiniMax {
    fn info() -> PluginInfo {
        parser_info("minimax", "MiniMax M2 <invoke> tool calls", &[("minimax", CapabilityKind::ToolCallParser)])
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "minimax" {
            return Err(unknown_parser(config, &["minimax"]));
        }
        Ok(Box::new(ToolCallSplitter::new(MiniMaxFormat, Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<MiniMax>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
