//! The reasoning parser, then the tool-call parser, as one stream that never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use super::cost::PluginCost;
use super::{ParseEvent, ParserSession};
use crate::plugins::loader::OutputParserPlugin;
use crate::plugins::{PluginError, PluginSet};

/// Which parsers a response goes through.
#[derive(Debug, Clone, Default)]
pub struct PipelineConfig {
    pub tool_parser: Option<String>,
    pub reasoning_parser: Option<String>,
    /// The request's `tools` as JSON (`[]` for none).
    pub tools_json: String,
    /// The chat template already opened a reasoning block.
    pub reasoning_started: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("no loaded plugin provides the {kind} parser `{name}` (available: {available})")]
    UnknownParser { kind: &'static str, name: String, available: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
}

/// Parser sessions for one response. If a plugin traps or times out mid-stream, its stage
/// passes text through unchanged for the rest of the response and the failure is kept in
/// [`ParserPipeline::failures`]; the response always completes.
#[derive(Debug)]
pub struct ParserPipeline {
    stages: Vec<Option<ParserSession>>,
    /// Where each stage's calls are timed, by plugin (`/metrics`).
    stage_costs: Vec<Arc<PluginCost>>,
    /// The instructions each stage was given, on a metered runtime.
    fuel_budget: Option<u64>,
    index_map: BTreeMap<(usize, u32), u32>,
    next_index: u32,
    pub failures: Vec<PluginError>,
}

impl ParserPipeline {
    pub fn new(plugins: &PluginSet, config: &PipelineConfig) -> Result<Self, PipelineError> {
        let unknown = |kind: &'static str, name: &str, known: BTreeSet<String>| PipelineError::UnknownParser {
            kind,
            name: name.to_string(),
            available: known.into_iter().collect::<Vec<_>>().join(", "),
        };
        let mut wanted: Vec<(&str, &OutputParserPlugin)> = Vec::new();
        if let Some(name) = &config.reasoning_parser {
            let plugin = plugins
                .reasoning_parser(name)
                .ok_or_else(|| unknown("reasoning", name, plugins.reasoning_parser_names()))?;
            wanted.push((name, plugin));
        }
        if let Some(name) = &config.tool_parser {
            let plugin =
                plugins.tool_parser(name).ok_or_else(|| unknown("tool-call", name, plugins.tool_parser_names()))?;
            // One plugin that handles both under one name (gemma4, harmony) runs one session.
            if !wanted.iter().any(|(n, p)| *n == name.as_str() && p.file == plugin.file) {
                wanted.push((name, plugin));
            }
        }
        let stages = wanted
            .into_iter()
            .map(|(name, plugin)| {
                ParserSession::start(plugins.runtime(), plugin, name, &config.tools_json, config.reasoning_started)
                    .map(Some)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let costs = plugins.runtime().parser_costs();
        let stage_costs =
            stages.iter().map(|s| costs.plugin(s.as_ref().map_or("", |s: &ParserSession| s.plugin()))).collect();
        Ok(Self {
            stages,
            stage_costs,
            fuel_budget: None,
            index_map: BTreeMap::new(),
            next_index: 0,
            failures: Vec::new(),
        })
    }

    /// Parses the next piece of model output.
    pub fn feed(&mut self, delta: &str) -> Vec<ParseEvent> {
        let mut out = Vec::new();
        self.run(0, delta, &mut out);
        out
    }

    /// End of output: flushes every stage in order.
    pub fn finish(&mut self) -> Vec<ParseEvent> {
        let mut out = Vec::new();
        for stage in 0..self.stages.len() {
            let result = match &mut self.stages[stage] {
                Some(session) => {
                    let started = Instant::now();
                    let result = session.finish();
                    self.stage_costs[stage].finish(started.elapsed());
                    result
                }
                None => continue,
            };
            match result {
                Ok(events) => self.route(stage, events, &mut out),
                Err(e) => self.fail(stage, e),
            }
        }
        out
    }

    fn run(&mut self, stage: usize, text: &str, out: &mut Vec<ParseEvent>) {
        if text.is_empty() {
            return;
        }
        let Some(slot) = self.stages.get_mut(stage) else {
            out.push(ParseEvent::Content(text.to_string()));
            return;
        };
        let result = match slot {
            Some(session) => {
                let started = Instant::now();
                let result = session.feed(text);
                self.stage_costs[stage].feed(text.len(), started.elapsed());
                result
            }
            None => return self.run(stage + 1, text, out),
        };
        match result {
            Ok(events) => self.route(stage, events, out),
            Err(e) => {
                self.fail(stage, e);
                self.run(stage + 1, text, out);
            }
        }
    }

    /// On a metered runtime: gives every stage `fuel` wasm instructions from now on; a stage
    /// that runs past them traps (contained like any fault). Returns `false` when not metered.
    pub fn set_fuel(&mut self, fuel: u64) -> bool {
        self.fuel_budget = Some(fuel);
        self.stages.iter_mut().flatten().all(|s| s.set_fuel(fuel))
    }

    /// On a metered runtime, after [`ParserPipeline::set_fuel`]: the instructions the live
    /// stages have run since.
    pub fn fuel_used(&self) -> Option<u64> {
        let budget = self.fuel_budget?;
        self.stages.iter().flatten().map(|s| s.fuel_left().map(|left| budget - left.min(budget))).sum()
    }

    fn fail(&mut self, stage: usize, error: PluginError) {
        tracing::warn!("parser plugin failed, passing raw text through for the rest of this response: {error}");
        self.failures.push(error);
        self.stages[stage] = None;
    }

    fn route(&mut self, stage: usize, events: Vec<ParseEvent>, out: &mut Vec<ParseEvent>) {
        for event in events {
            match event {
                ParseEvent::Content(text) => self.run(stage + 1, &text, out),
                ParseEvent::ToolCallBegin { index, id, name } => {
                    let global = self.next_index;
                    self.next_index += 1;
                    self.index_map.insert((stage, index), global);
                    let id = if id.is_empty() { new_call_id() } else { id };
                    out.push(ParseEvent::ToolCallBegin { index: global, id, name });
                }
                ParseEvent::ToolCallArguments { index, fragment } => {
                    if let Some(&global) = self.index_map.get(&(stage, index)) {
                        out.push(ParseEvent::ToolCallArguments { index: global, fragment });
                    }
                }
                ParseEvent::ToolCallEnd(index) => {
                    if let Some(&global) = self.index_map.get(&(stage, index)) {
                        out.push(ParseEvent::ToolCallEnd(global));
                    }
                }
                other => out.push(other),
            }
        }
    }
}

/// `call_` and 24 hex digits, like OpenAI's ids.
pub fn new_call_id() -> String {
    let state = std::collections::hash_map::RandomState::new();
    let a = state.hash_one(0u8);
    let b = state.hash_one(1u8);
    format!("call_{:016x}{:08x}", a, b as u32)
}

/// The tool-call parser's own system-prompt section for `tools_json` (WIT 0.2.0 and
/// later), or `None` when the plugin predates it or has none to offer.
pub fn tool_prompt(plugins: &PluginSet, parser: &str, tools_json: &str) -> Result<Option<String>, PipelineError> {
    let plugin = find_tool_parser(plugins, parser)?;
    let Some(index) = &plugin.exports.tool_prompt else { return Ok(None) };
    call_text_export(plugins, plugin, index, "tool-prompt", parser, tools_json)
}

/// The tool-call parser's Lark grammar for calls to `tools_json`, or `None` when the plugin
/// leaves it to the host.
pub fn tool_call_grammar(plugins: &PluginSet, parser: &str, tools_json: &str) -> Result<Option<String>, PipelineError> {
    let plugin = find_tool_parser(plugins, parser)?;
    call_text_export(plugins, plugin, &plugin.exports.tool_call_grammar, "tool-call-grammar", parser, tools_json)
}

fn find_tool_parser<'a>(plugins: &'a PluginSet, parser: &str) -> Result<&'a OutputParserPlugin, PipelineError> {
    plugins.tool_parser(parser).ok_or_else(|| PipelineError::UnknownParser {
        kind: "tool-call",
        name: parser.to_string(),
        available: plugins.tool_parser_names().into_iter().collect::<Vec<_>>().join(", "),
    })
}

/// Calls an exported `func(parser: string, tools-json: string) -> option<string>` in a
/// fresh sandboxed instance.
fn call_text_export(
    plugins: &PluginSet,
    plugin: &OutputParserPlugin,
    index: &wasmtime::component::ComponentExportIndex,
    what: &'static str,
    parser: &str,
    tools_json: &str,
) -> Result<Option<String>, PipelineError> {
    let runtime = plugins.runtime();
    let mut store = runtime.store();
    let result = plugin.pre.instantiate(&mut store).and_then(|instance| {
        let func = instance.get_typed_func::<(&str, &str), (Option<String>,)>(&mut store, index)?;
        Ok(func.call(&mut store, (parser, tools_json))?.0)
    });
    result.map_err(|e| {
        PipelineError::Plugin(crate::plugins::limits::classify(
            e,
            store.data().limiter.refused_memory,
            &plugin.name,
            what,
            runtime.limits(),
        ))
    })
}
