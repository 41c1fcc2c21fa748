//! The reasoning parser, then the tool-call parser, as one stream that never fails.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Instant;

use super::cost::PluginCost;
use super::{ParseEvent, ParserSession};
use crate::plugins::limits::{OutputLimit, OutputScope};
use crate::plugins::loader::OutputParserPlugin;
use crate::plugins::runtime::set_output_limit;
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
///
/// What a plugin emits is data, checked here before it reaches a client: a tool call is
/// held until its `tool-call-end` and goes out only if its name is clean and its arguments
/// assemble to a JSON object (otherwise its text becomes content plus a `malformed`
/// event); events for a call that already ended, or never began, are dropped; an id with
/// control or bidirectional characters is replaced by one of ours.
#[derive(Debug)]
pub struct ParserPipeline {
    stages: Vec<Option<ParserSession>>,
    /// Where each stage's calls are timed, by plugin (`/metrics`).
    stage_costs: Vec<Arc<PluginCost>>,
    /// The instructions each stage was given, on a metered runtime.
    fuel_budget: Option<u64>,
    /// Calls begun and not yet ended, by (stage, the stage's own index).
    pending: BTreeMap<(usize, u32), PendingCall>,
    /// Calls that ended (or were dropped): later events for them are ignored.
    closed: BTreeSet<(usize, u32)>,
    ids: BTreeSet<String>,
    next_index: u32,
    pub failures: Vec<PluginError>,
    /// Events dropped because they broke the event protocol (after end, ended twice, ...).
    pub dropped_events: u64,
}

#[derive(Debug)]
struct PendingCall {
    plugin: String,
    id: String,
    name: String,
    arguments: String,
}

/// The longest tool name or call id the host passes on.
const MAX_NAME_CHARS: usize = 256;

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
        Ok(Self::with_stages(stages, stage_costs))
    }

    fn with_stages(stages: Vec<Option<ParserSession>>, stage_costs: Vec<Arc<PluginCost>>) -> Self {
        Self {
            stages,
            stage_costs,
            fuel_budget: None,
            pending: BTreeMap::new(),
            closed: BTreeSet::new(),
            ids: BTreeSet::new(),
            next_index: 0,
            failures: Vec::new(),
            dropped_events: 0,
        }
    }

    /// Parses the next piece of model output, on the calling thread.
    pub fn feed(&mut self, delta: &str) -> Vec<ParseEvent> {
        let mut out = Vec::new();
        self.run(0, delta, &mut out);
        out
    }

    /// End of output: flushes every stage in order, on the calling thread.
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
            // Calls the stage never ended are judged on what they have.
            self.flush_pending(stage, &mut out);
        }
        if self.dropped_events > 0 {
            tracing::warn!("parser plugins broke the event protocol: {} events dropped", self.dropped_events);
        }
        out
    }

    /// [`Self::feed`] on a blocking thread: plugin code (up to its deadline per call) never
    /// runs on the async runtime's threads, so a slow parser stalls only its own response.
    pub async fn feed_off_runtime(&mut self, delta: &str) -> Vec<ParseEvent> {
        let owned = delta.to_string();
        let fallback = vec![ParseEvent::Content(delta.to_string())];
        self.off_runtime(move |pipeline| pipeline.feed(&owned), fallback).await
    }

    /// [`Self::finish`] on a blocking thread.
    pub async fn finish_off_runtime(&mut self) -> Vec<ParseEvent> {
        self.off_runtime(Self::finish, Vec::new()).await
    }

    async fn off_runtime(
        &mut self,
        work: impl FnOnce(&mut Self) -> Vec<ParseEvent> + Send + 'static,
        fallback: Vec<ParseEvent>,
    ) -> Vec<ParseEvent> {
        if self.stages.iter().all(Option::is_none) {
            // No plugin code left to run: only the host's own bookkeeping.
            return work(self);
        }
        let mut pipeline = std::mem::replace(self, Self::with_stages(Vec::new(), Vec::new()));
        let joined = tokio::task::spawn_blocking(move || {
            let events = work(&mut pipeline);
            (pipeline, events)
        })
        .await;
        match joined {
            Ok((pipeline, events)) => {
                *self = pipeline;
                events
            }
            Err(e) => {
                // The pipeline is gone with its thread; the rest of the response is raw text.
                tracing::error!("parser worker stopped: {e}");
                self.failures.push(PluginError::Runtime(format!("parser worker stopped: {e}")));
                fallback
            }
        }
    }

    /// End of an output that was cut short (`max_tokens`, a stop string): as [`Self::finish`],
    /// but an unclosed call section at the end becomes a call with the arguments generated
    /// so far instead of content (see [`super::partial::cut_call`]); that call gets no
    /// `ToolCallEnd`, since it never ended. A section too short to name its function is
    /// dropped (reported as malformed), so no markup reaches the content. `tool_names` are
    /// the request's tools; `forced` the one tool a named `tool_choice` allows.
    pub fn finish_cut(&mut self, tool_names: &[String], forced: Option<&str>) -> Vec<ParseEvent> {
        let mut events = self.finish();
        let tail = events
            .len()
            .checked_sub(2)
            .filter(|&at| matches!((&events[at], &events[at + 1]), (ParseEvent::Content(_), ParseEvent::Malformed(_))));
        if let Some(at) = tail
            && let ParseEvent::Content(section) = &events[at]
        {
            let section = section.clone();
            match super::partial::cut_call(&section, tool_names, forced) {
                Some((name, arguments)) => {
                    let index = self.next_index;
                    self.next_index += 1;
                    let mut call = vec![ParseEvent::ToolCallBegin { index, id: new_call_id(), name }];
                    if !arguments.is_empty() {
                        call.push(ParseEvent::ToolCallArguments { index, fragment: arguments });
                    }
                    events.splice(at..at + 2, call);
                }
                None if section
                    .find('{')
                    .is_none_or(|open| super::partial::JsonPrefix::is_unfinished(&section[open..])) =>
                {
                    events.remove(at);
                }
                None => {}
            }
        }
        events
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
                self.flush_pending(stage, out);
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
                    let key = (stage, index);
                    if self.pending.contains_key(&key) || self.closed.contains(&key) {
                        self.dropped_events += 1;
                    } else {
                        let plugin = self.stages.get(stage).and_then(Option::as_ref).map(|s| s.plugin().to_string());
                        let plugin = plugin.unwrap_or_default();
                        self.pending.insert(key, PendingCall { plugin, id, name, arguments: String::new() });
                    }
                }
                ParseEvent::ToolCallArguments { index, fragment } => match self.pending.get_mut(&(stage, index)) {
                    Some(call) => call.arguments.push_str(&fragment),
                    None => self.dropped_events += 1,
                },
                ParseEvent::ToolCallEnd(index) => match self.pending.remove(&(stage, index)) {
                    Some(call) => {
                        self.closed.insert((stage, index));
                        self.complete(stage, call, out);
                    }
                    None => self.dropped_events += 1,
                },
                other => out.push(other),
            }
        }
    }

    /// Judges the calls `stage` left open, in index order.
    fn flush_pending(&mut self, stage: usize, out: &mut Vec<ParseEvent>) {
        let open: Vec<(usize, u32)> = self.pending.range((stage, 0)..=(stage, u32::MAX)).map(|(k, _)| *k).collect();
        for key in open {
            if let Some(call) = self.pending.remove(&key) {
                self.closed.insert(key);
                self.complete(stage, call, out);
            }
        }
    }

    /// A finished call goes out whole under the next response-wide index, or, when it is not
    /// a valid call, as content plus a `malformed` event.
    fn complete(&mut self, stage: usize, call: PendingCall, out: &mut Vec<ParseEvent>) {
        let PendingCall { plugin, id, name, arguments } = call;
        let arguments = if arguments.trim().is_empty() { String::from("{}") } else { arguments };
        let problem = if let Some(c) = name.chars().find(|&c| refused_char(c)) {
            Some(format!("the tool name contains {}", describe_char(c)))
        } else if name.trim().is_empty() {
            Some(String::from("the tool name is empty"))
        } else if name.chars().count() > MAX_NAME_CHARS {
            Some(format!("the tool name is longer than {MAX_NAME_CHARS} characters"))
        } else {
            match serde_json::from_str::<serde_json::Value>(&arguments) {
                Ok(serde_json::Value::Object(_)) => None,
                Ok(_) => Some(String::from("the arguments are JSON but not an object")),
                Err(e) => Some(format!("the arguments are not JSON ({e})")),
            }
        };
        if let Some(problem) = problem {
            let shown: String =
                name.chars().take(MAX_NAME_CHARS).map(|c| if refused_char(c) { '\u{fffd}' } else { c }).collect();
            out.push(ParseEvent::Malformed(format!("tool call `{shown}` from plugin `{plugin}` dropped: {problem}")));
            self.run(stage + 1, &format!("{shown}{arguments}"), out);
            return;
        }
        let clean_id = !id.is_empty()
            && id.chars().count() <= MAX_NAME_CHARS
            && !id.chars().any(refused_char)
            && !self.ids.contains(&id);
        let id = if clean_id { id } else { new_call_id() };
        self.ids.insert(id.clone());
        let index = self.next_index;
        self.next_index += 1;
        out.push(ParseEvent::ToolCallBegin { index, id, name });
        out.push(ParseEvent::ToolCallArguments { index, fragment: arguments });
        out.push(ParseEvent::ToolCallEnd(index));
    }
}

/// Characters no tool name or call id may carry: controls (C0, DEL, C1), bidirectional
/// controls (they reorder what a person reads: U+202E), and invisible joiners and marks.
fn refused_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{061C}' | '\u{FEFF}')
}

fn describe_char(c: char) -> String {
    format!("the control or invisible character U+{:04X}", u32::from(c))
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
    // A tool prompt becomes prompt tokens: an 11 MB one must never reach the tokenizer.
    let bytes = plugins.runtime().limits().tool_prompt_limit(tools_json.len());
    let limit = OutputLimit { bytes, scope: OutputScope::ToolPrompt };
    call_text_export(plugins, plugin, index, "tool-prompt", parser, tools_json, Some(limit))
}

/// The tool-call parser's Lark grammar for calls to `tools_json`, or `None` when the plugin
/// leaves it to the host.
pub fn tool_call_grammar(plugins: &PluginSet, parser: &str, tools_json: &str) -> Result<Option<String>, PipelineError> {
    let plugin = find_tool_parser(plugins, parser)?;
    call_text_export(plugins, plugin, &plugin.exports.tool_call_grammar, "tool-call-grammar", parser, tools_json, None)
}

fn find_tool_parser<'a>(plugins: &'a PluginSet, parser: &str) -> Result<&'a OutputParserPlugin, PipelineError> {
    plugins.tool_parser(parser).ok_or_else(|| PipelineError::UnknownParser {
        kind: "tool-call",
        name: parser.to_string(),
        available: plugins.tool_parser_names().into_iter().collect::<Vec<_>>().join(", "),
    })
}

/// Calls an exported `func(parser: string, tools-json: string) -> option<string>` in a
/// fresh sandboxed instance; `limit` replaces the per-call output limit.
fn call_text_export(
    plugins: &PluginSet,
    plugin: &OutputParserPlugin,
    index: &wasmtime::component::ComponentExportIndex,
    what: &'static str,
    parser: &str,
    tools_json: &str,
    limit: Option<OutputLimit>,
) -> Result<Option<String>, PipelineError> {
    let runtime = plugins.runtime();
    let mut store = runtime.store();
    if let Some(limit) = limit {
        set_output_limit(&mut store, limit);
    }
    let result = plugin.pre.instantiate(&mut store).and_then(|instance| {
        let func = instance.get_typed_func::<(&str, &str), (Option<String>,)>(&mut store, index)?;
        Ok(func.call(&mut store, (parser, tools_json))?.0)
    });
    result.map_err(|e| {
        PipelineError::Plugin(crate::plugins::limits::classify(e, store.data(), &plugin.name, what, runtime.limits()))
    })
}
