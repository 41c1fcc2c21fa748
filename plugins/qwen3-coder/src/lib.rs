//! `qwen3_coder_xml`: `<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>\n
//! </function>\n</tool_call>`, values typed by the tool's JSON schema. A bare
//! `<function=…>…</function>` without the outer tags is accepted too (tokenizers that lack
//! the `<tool_call>` special token).

use rapid_plugin_sdk::json::Tools;
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{CallFormat, Scan, Section, Splitter, ToolCallSplitter};
use rapid_plugin_sdk::xml::function_blocks;

struct QwenXml;

impl CallFormat for QwenXml {
    fn openers(&self) -> &[&'static str] {
        &["<tool_call>", "<function="]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        let closer = if buf.starts_with("<tool_call>") { "</tool_call>" } else { "</function>" };
        scan.until_closer(buf, &[closer], eof)
    }

    fn parse(&self, section: &str, tools: &Tools) -> Section {
        match function_blocks(section, tools) {
            Ok(calls) => Section::Calls(calls),
            Err(e) => Section::Malformed(e),
        }
    }
}

struct Qwen3Coder;

impl ParserPlugin for Qwen3Coder {
    fn info() -> PluginInfo {
        parser_info(
            "qwen3-coder",
            "Qwen3-Coder XML <function=…><parameter=…> tool calls",
            &[("qwen3_coder_xml", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "qwen3_coder_xml" {
            return Err(unknown_parser(config, &["qwen3_coder_xml"]));
        }
        Ok(Box::new(ToolCallSplitter::new(QwenXml, Tools::parse(&config.tools_json))))
    }

    fn tool_call_grammar(_parser: &str, tools_json: &str) -> Option<String> {
        rapid_plugin_sdk::grammar::qwen_xml_calls(tools_json)
    }
}

type Component = Adapter<Qwen3Coder>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
