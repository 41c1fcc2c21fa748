//! Test-only tool-call parser `deepgrammar`. Never ship it: it exists to prove that a
//! plugin's forced-call grammar cannot crash or stall the host that compiles it.
//!
//! Its calls are hermes-style (`<tool_call>{"name", "arguments"}</tool_call>`). The grammar
//! it returns for a forced call depends on the first tool's name, `KIND_N`: `chain_N` gives
//! a chain of N rules (each naming the next), `nest_N` N nested parentheses, `huge_N` N
//! alternatives; any other name a well-formed grammar.

use rapid_plugin_sdk::grammar;
use rapid_plugin_sdk::json::Tools;
use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::tool_calls::{Call, CallFormat, Scan, Section, Splitter, ToolCallSplitter};
use serde_json::Value;

struct Format;

impl CallFormat for Format {
    fn openers(&self) -> &[&'static str] {
        &["<tool_call>"]
    }

    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize> {
        scan.until_closer(buf, &["</tool_call>"], eof)
    }

    fn parse(&self, section: &str, _tools: &Tools) -> Section {
        let body = section.trim_start_matches("<tool_call>").trim_end_matches("</tool_call>").trim();
        let Ok(value) = serde_json::from_str::<Value>(body) else {
            return Section::Malformed(String::from("tool call is not JSON"));
        };
        match (value.get("name").and_then(Value::as_str), value.get("arguments")) {
            (Some(name), Some(arguments @ Value::Object(_))) => {
                Section::Calls(vec![Call::new(name, arguments.to_string())])
            }
            _ => Section::Malformed(String::from("tool call needs a name and object arguments")),
        }
    }
}

struct DeepGrammar;

impl ParserPlugin for DeepGrammar {
    fn info() -> PluginInfo {
        parser_info(
            "deep-grammar",
            "Test-only: forced-call grammars that exhaust a grammar compiler",
            &[("deepgrammar", CapabilityKind::ToolCallParser)],
        )
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        if config.parser != "deepgrammar" {
            return Err(unknown_parser(config, &["deepgrammar"]));
        }
        Ok(Box::new(ToolCallSplitter::new(Format, Tools::parse(&config.tools_json))))
    }

    fn tool_call_grammar(_parser: &str, tools_json: &str) -> Option<String> {
        let tools: Vec<Value> = serde_json::from_str(tools_json).ok()?;
        let first = grammar::tool_names(&tools).into_iter().next().unwrap_or_default();
        let (kind, n) = first.split_once('_').unwrap_or((first.as_str(), "0"));
        let n: usize = n.parse().unwrap_or(0);
        match kind {
            "chain" => {
                let mut lark = String::from("start: r0\n");
                for i in 0..n {
                    lark.push_str(&format!("r{i}: r{}\n", i + 1));
                }
                lark.push_str(&format!("r{n}: \"x\"\n"));
                Some(lark)
            }
            "nest" => Some(format!("start: {}\"x\"{}\n", "(".repeat(n), ")".repeat(n))),
            "huge" => {
                let words: Vec<String> = (0..n).map(|i| format!("\"w{i}\"")).collect();
                Some(format!("start: {}\n", words.join(" | ")))
            }
            _ => {
                grammar::json_calls_in_markers(tools_json, "<tool_call>\n", "\n</tool_call>", "\n", "name", "arguments")
            }
        }
    }
}

type Component = Adapter<DeepGrammar>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
