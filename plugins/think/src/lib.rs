//! Reasoning parsers for tag-delimited thinking: `qwen3`, `deepseek_r1`, `minimax`
//! (`<think>R</think>C`, also the implicit form where the template opened the tag) and
//! `glm4` (the same, with GLM's `<|begin_of_box|>` answer markers removed).

use rapid_plugin_sdk::output_parser::{
    Adapter, CapabilityKind, ParserPlugin, PluginInfo, SessionConfig, parser_info, unknown_parser,
};
use rapid_plugin_sdk::reasoning::{ReasoningSplitter, THINK_TAGS, TagReasoning};
use rapid_plugin_sdk::tool_calls::Splitter;

const GLM4: TagReasoning =
    TagReasoning { open: &["<think>"], close: &["</think>"], strip: &["<|begin_of_box|>", "<|end_of_box|>"] };

const PARSERS: &[&str] = &["qwen3", "deepseek_r1", "glm4", "minimax"];

struct Think;

impl ParserPlugin for Think {
    fn info() -> PluginInfo {
        let parsers: Vec<_> = PARSERS.iter().map(|p| (*p, CapabilityKind::ReasoningParser)).collect();
        parser_info("think", "<think>…</think> reasoning (Qwen3, DeepSeek-R1, GLM-4, MiniMax)", &parsers)
    }

    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> {
        let format = match config.parser.as_str() {
            "qwen3" | "deepseek_r1" | "minimax" => THINK_TAGS,
            "glm4" => GLM4,
            _ => return Err(unknown_parser(config, PARSERS)),
        };
        Ok(Box::new(ReasoningSplitter::new(format, config.reasoning_started)))
    }
}

type Component = Adapter<Think>;
rapid_plugin_sdk::output_parser::export_output_parser!(Component);
