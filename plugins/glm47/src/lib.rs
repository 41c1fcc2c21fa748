//! `glm47`: `<tool_call>NAME\n<arg_key>K</arg_key>\n<arg_value>V</arg_value>…</tool_call>`,
//! values typed by the tool's JSON schema.

use rapid_plugin_sdk::json::{ObjectBuilder, Tools};
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};

struct GlmFormat;

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<(&'a str, &'a str)> {
    let start = text.find(open)? + open.len();
    let end = text[start..].find(close)? + start;
    Some((&text[start..end], &text[end + close.len()..]))
}

impl CallFormat for GlmFormat {
    fn openers(&self) -> &[&'static str] {
        &["<tool_call>"]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &["</tool_call>"], eof)
    }

    fn parse(&self, section: &str, tools: &Tools) -> Section {
        let body = section.strip_prefix("<tool_call>").unwrap_or(section);
        let body = body.strip_suffix("</tool_call>").unwrap_or(body);
        let name_end = body.find("<arg_key>").unwrap_or(body.len());
        let name = body[..name_end].trim();
        if name.is_empty() || name.contains(['<', '>', '{']) {
            return Section::Malformed(format!("bad tool name {name:?}"));
        }
        let mut args = ObjectBuilder::default();
        let mut rest = &body[name_end..];
        while rest.contains("<arg_key>") {
            let Some((key, after)) = between(rest, "<arg_key>", "</arg_key>") else {
                return Section::Malformed(String::from("unterminated <arg_key>"));
            };
            let Some((value, after)) = between(after, "<arg_value>", "</arg_value>") else {
                return Section::Malformed(format!("argument {key} has no <arg_value>"));
            };
            args.push(key.trim(), &tools.typed_value(name, key.trim(), value));
            rest = after;
        }
        Section::Calls(vec![Call::new(name, args.finish())])
    }
}

struct Glm47;

impl ParserPlugin for Glm47 {
    fn info() -> PluginInfo {
        parser_info(
            "glm47",
            "GLM-4.5/4.7 <arg_key>/<arg_value> tool calls",
            &[("glm47", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "glm47" {
            return Err(unknown_parser(config, &["glm47"]));
        }
        Ok(Box::new(ToolCallSplitter::new(GlmFormat, Tools::parse(&config.tools_json))))
    }
}

type Component = Adapter<Glm47>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
