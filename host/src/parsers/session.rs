//! One parser session inside a wasm plugin.

use wasmtime::Store;
use wasmtime::component::{Instance, ResourceAny};

use super::ParseEvent;
use crate::plugins::PluginError;
use crate::plugins::bindings::parser as wit;
use crate::plugins::exports::OutputParserExports;
use crate::plugins::limits::{PluginState, classify};
use crate::plugins::loader::OutputParserPlugin;
use crate::plugins::{PluginRuntime, SandboxLimits};

/// A live session: its own store, so a trap here poisons nothing else.
pub struct ParserSession {
    plugin: String,
    limits: SandboxLimits,
    store: Store<PluginState>,
    instance: Instance,
    exports: OutputParserExports,
    handle: ResourceAny,
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
        let fail = |e: wasmtime::Error, store: &Store<PluginState>| {
            classify(e, store.data().limiter.refused_memory, &plugin.name, "create", &limits)
        };
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
                return Err(PluginError::BadAnswer { plugin: plugin.name.clone(), call: "create", detail: message });
            }
            Err(e) => return Err(fail(e, &store)),
        };
        Ok(Self { plugin: plugin.name.clone(), limits, store, instance, exports: plugin.exports.clone(), handle })
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
        // Each call gets the full deadline, however long the session lives.
        self.store.set_epoch_deadline(deadline_ticks(&self.limits));
        let result = self
            .instance
            .get_typed_func::<(ResourceAny, &str), (Vec<wit::Event>,)>(&mut self.store, &self.exports.feed)
            .and_then(|f| Ok(f.call(&mut self.store, (self.handle, delta))?.0));
        self.convert(result, "feed")
    }

    pub fn finish(&mut self) -> Result<Vec<ParseEvent>, PluginError> {
        self.store.set_epoch_deadline(deadline_ticks(&self.limits));
        let result = self
            .instance
            .get_typed_func::<(ResourceAny,), (Vec<wit::Event>,)>(&mut self.store, &self.exports.finish)
            .and_then(|f| Ok(f.call(&mut self.store, (self.handle,))?.0));
        self.convert(result, "finish")
    }

    fn convert(
        &self,
        result: wasmtime::Result<Vec<wit::Event>>,
        call: &'static str,
    ) -> Result<Vec<ParseEvent>, PluginError> {
        let events = result
            .map_err(|e| classify(e, self.store.data().limiter.refused_memory, &self.plugin, call, &self.limits))?;
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

fn deadline_ticks(limits: &SandboxLimits) -> u64 {
    crate::plugins::runtime::deadline_ticks(limits.call_timeout)
}
