//! One parser session inside a wasm plugin.

use wasmtime::Store;
use wasmtime::component::{Instance, ResourceAny};

use super::ParseEvent;
use crate::plugins::PluginError;
use crate::plugins::bindings::parser as wit;
use crate::plugins::exports::OutputParserExports;
use crate::plugins::limits::{
    EVENT_OVERHEAD_BYTES, OUTPUT_BYTES_PER_FEED, OUTPUT_BYTES_PER_INPUT_BYTE, OutputLimit, OutputScope, PluginState,
    classify,
};
use crate::plugins::loader::OutputParserPlugin;
use crate::plugins::runtime::set_output_limit;
use crate::plugins::{PluginRuntime, SandboxLimits};

/// A live session: its own store, so a trap here poisons nothing else.
pub struct ParserSession {
    plugin: String,
    limits: SandboxLimits,
    store: Store<PluginState>,
    instance: Instance,
    exports: OutputParserExports,
    handle: ResourceAny,
    /// Output bytes this session may still emit in this response (see
    /// [`SandboxLimits::output_bytes_per_response`]).
    budget: usize,
}

impl std::fmt::Debug for ParserSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParserSession").field("plugin", &self.plugin).finish_non_exhaustive()
    }
}

impl ParserSession {
    /// Starts a session of `parser` in `plugin`.
    pub fn start(
        runtime: &PluginRuntime,
        plugin: &OutputParserPlugin,
        parser: &str,
        tools_json: &str,
        reasoning_started: bool,
    ) -> Result<Self, PluginError> {
        let mut store = runtime.store();
        let limits = *runtime.limits();
        let fail =
            |e: wasmtime::Error, store: &Store<PluginState>| classify(e, store.data(), &plugin.name, "create", &limits);
        let instance = match plugin.pre.instantiate(&mut store) {
            Ok(i) => i,
            Err(e) => return Err(fail(e, &store)),
        };
        let config =
            wit::SessionConfig { parser: parser.to_string(), tools_json: tools_json.to_string(), reasoning_started };
        let created = instance
            .get_typed_func::<(&wit::SessionConfig,), (Result<ResourceAny, String>,)>(
                &mut store,
                &plugin.exports.create,
            )
            .and_then(|f| Ok(f.call(&mut store, (&config,))?.0));
        let handle = match created {
            Ok(Ok(handle)) => handle,
            Ok(Err(message)) => {
                let detail: String = message.chars().take(500).collect();
                return Err(PluginError::BadAnswer { plugin: plugin.name.clone(), call: "create", detail });
            }
            Err(e) => return Err(fail(e, &store)),
        };
        Ok(Self {
            plugin: plugin.name.clone(),
            limits,
            store,
            instance,
            exports: plugin.exports.clone(),
            handle,
            budget: limits.output_bytes_per_response,
        })
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// On a metered runtime ([`PluginRuntime::metered`]): the wasm instructions this session
    /// may still run; past them a call traps like any other fault. `false` when not metered.
    pub fn set_fuel(&mut self, fuel: u64) -> bool {
        self.store.set_fuel(fuel).is_ok()
    }

    /// On a metered runtime: the instructions left of what was set. `None` when not metered.
    pub fn fuel_left(&self) -> Option<u64> {
        self.store.get_fuel().ok()
    }

    pub fn feed(&mut self, delta: &str) -> Result<Vec<ParseEvent>, PluginError> {
        self.prepare_call(delta.len());
        let result = self
            .instance
            .get_typed_func::<(ResourceAny, &str), (Vec<wit::Event>,)>(&mut self.store, &self.exports.feed)
            .and_then(|f| Ok(f.call(&mut self.store, (self.handle, delta))?.0));
        self.convert(result, "feed")
    }

    pub fn finish(&mut self) -> Result<Vec<ParseEvent>, PluginError> {
        self.prepare_call(0);
        let result = self
            .instance
            .get_typed_func::<(ResourceAny,), (Vec<wit::Event>,)>(&mut self.store, &self.exports.finish)
            .and_then(|f| Ok(f.call(&mut self.store, (self.handle,))?.0));
        self.convert(result, "finish")
    }

    /// Each call gets the full deadline however long the session lives, and may return at
    /// most what is left of the response's output budget (grown by this call's input).
    fn prepare_call(&mut self, input_bytes: usize) {
        self.store.set_epoch_deadline(deadline_ticks(&self.limits));
        self.budget = self
            .budget
            .saturating_add(input_bytes.saturating_mul(OUTPUT_BYTES_PER_INPUT_BYTE))
            .saturating_add(OUTPUT_BYTES_PER_FEED);
        let limit = if self.budget < self.limits.output_bytes_per_call {
            OutputLimit { bytes: self.budget, scope: OutputScope::Response }
        } else {
            OutputLimit { bytes: self.limits.output_bytes_per_call, scope: OutputScope::PerCall }
        };
        set_output_limit(&mut self.store, limit);
    }

    fn convert(
        &mut self,
        result: wasmtime::Result<Vec<wit::Event>>,
        call: &'static str,
    ) -> Result<Vec<ParseEvent>, PluginError> {
        let events = result.map_err(|e| classify(e, self.store.data(), &self.plugin, call, &self.limits))?;
        let cost: usize = events.iter().map(|e| event_text_len(e).saturating_add(EVENT_OVERHEAD_BYTES)).sum();
        if cost > self.budget {
            return Err(PluginError::OutputExceeded {
                plugin: self.plugin.clone(),
                call,
                limit_bytes: self.budget,
                scope: OutputScope::Response,
            });
        }
        self.budget -= cost;
        Ok(events
            .into_iter()
            .map(|e| match e {
                wit::Event::Content(t) => ParseEvent::Content(t),
                wit::Event::Reasoning(t) => ParseEvent::Reasoning(t),
                wit::Event::ToolCallBegin(b) => ParseEvent::ToolCallBegin { index: b.index, id: b.id, name: b.name },
                wit::Event::ToolCallArguments(a) => {
                    ParseEvent::ToolCallArguments { index: a.index, fragment: a.fragment }
                }
                wit::Event::ToolCallEnd(i) => ParseEvent::ToolCallEnd(i),
                wit::Event::Malformed(m) => ParseEvent::Malformed(m),
            })
            .collect())
    }
}

fn event_text_len(event: &wit::Event) -> usize {
    match event {
        wit::Event::Content(t) | wit::Event::Reasoning(t) | wit::Event::Malformed(t) => t.len(),
        wit::Event::ToolCallBegin(b) => b.id.len() + b.name.len(),
        wit::Event::ToolCallArguments(a) => a.fragment.len(),
        wit::Event::ToolCallEnd(_) => 0,
    }
}

fn deadline_ticks(limits: &SandboxLimits) -> u64 {
    crate::plugins::runtime::deadline_ticks(limits.call_timeout)
}
