//! Bindings for the `output-parser-plugin` world, and an adapter so a parser plugin is
//! just a [`ParserPlugin`] impl:
//!
//! ```ignore
//! struct Hermes;
//! impl ParserPlugin for Hermes {
//!     fn info() -> PluginInfo { parser_info("hermes", "...", &[("hermes", CapabilityKind::ToolCallParser)]) }
//!     fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String> { ... }
//! }
//! type Component = Adapter<Hermes>;
//! rapid_plugin_sdk::output_parser::export_output_parser!(Component);
//! ```

use std::cell::RefCell;
use std::marker::PhantomData;

#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "output-parser-plugin",
        path: "../../wit/since_v0.2.0",
        default_bindings_module: "rapid_plugin_sdk::output_parser::bindings",
        pub_export_macro: true,
        export_macro_name: "export_output_parser",
    });
}

pub use bindings::export_output_parser;
use bindings::exports::rapid::plugin::output_parser as wit;
pub use bindings::exports::rapid::plugin::output_parser::SessionConfig;
pub use bindings::rapid::plugin::types::{Capability, CapabilityKind, PluginInfo};

use crate::tool_calls::{Event, Splitter};

/// What a parser plugin implements; [`Adapter`] turns it into the WIT exports.
pub trait ParserPlugin: 'static {
    fn info() -> PluginInfo;

    /// A fresh splitter for one session (one response).
    fn splitter(config: &SessionConfig) -> Result<Box<dyn Splitter>, String>;

    /// A Lark grammar for this parser's wire format, if the plugin offers one.
    fn tool_call_grammar(_parser: &str, _tools_json: &str) -> Option<String> {
        None
    }

    /// A system-prompt section teaching a model this wire format for `tools_json`, for
    /// models whose chat template ignores tools (since WIT 0.2.0).
    fn tool_prompt(_parser: &str, _tools_json: &str) -> Option<String> {
        None
    }
}

/// Plugin info for a parser plugin providing `parsers` (name, kind).
pub fn parser_info(name: &str, description: &str, parsers: &[(&str, CapabilityKind)]) -> PluginInfo {
    PluginInfo {
        name: name.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        description: description.to_string(),
        provides: parsers.iter().map(|(n, kind)| Capability { name: n.to_string(), kind: *kind }).collect(),
    }
}

/// Implements the WIT `output-parser` interface for a [`ParserPlugin`].
pub struct Adapter<P>(PhantomData<P>);

/// One session: the splitter behind a `RefCell` (WIT methods take `&self`).
pub struct AdapterSession<P> {
    splitter: RefCell<Box<dyn Splitter>>,
    _plugin: PhantomData<P>,
}

fn to_wit(events: Vec<Event>) -> Vec<wit::Event> {
    events
        .into_iter()
        .map(|e| match e {
            Event::Content(t) => wit::Event::Content(t),
            Event::Reasoning(t) => wit::Event::Reasoning(t),
            Event::ToolCallBegin { index, id, name } => {
                wit::Event::ToolCallBegin(wit::ToolCallBegin { index, id, name })
            }
            Event::ToolCallArguments { index, fragment } => {
                wit::Event::ToolCallArguments(wit::ToolCallArguments { index, fragment })
            }
            Event::ToolCallEnd(index) => wit::Event::ToolCallEnd(index),
            Event::Malformed(reason) => wit::Event::Malformed(reason),
        })
        .collect()
}

impl<P: ParserPlugin> wit::GuestSession for AdapterSession<P> {
    fn create(config: SessionConfig) -> Result<wit::Session, String> {
        let splitter = P::splitter(&config)?;
        Ok(wit::Session::new(Self { splitter: RefCell::new(splitter), _plugin: PhantomData }))
    }

    fn feed(&self, delta: String) -> Vec<wit::Event> {
        to_wit(self.splitter.borrow_mut().feed(&delta))
    }

    fn finish(&self) -> Vec<wit::Event> {
        to_wit(self.splitter.borrow_mut().finish())
    }
}

impl<P: ParserPlugin> wit::Guest for Adapter<P> {
    type Session = AdapterSession<P>;

    fn info() -> PluginInfo {
        P::info()
    }

    fn tool_call_grammar(parser: String, tools_json: String) -> Option<String> {
        P::tool_call_grammar(&parser, &tools_json)
    }

    fn tool_prompt(parser: String, tools_json: String) -> Option<String> {
        P::tool_prompt(&parser, &tools_json)
    }
}

/// The error for a session asked for a parser this plugin does not provide.
pub fn unknown_parser(config: &SessionConfig, provided: &[&str]) -> String {
    format!("this plugin provides {}, not `{}`", provided.join(", "), config.parser)
}
