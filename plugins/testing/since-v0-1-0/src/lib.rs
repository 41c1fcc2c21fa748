//! A tool-call parser named `plain-v0-1-0`, built against `wit/since_v0.1.0` as a third
//! party would have before 0.2.0 existed: everything is content. The host must keep
//! loading it after the 0.2.0 bump (and answer "none" for the 0.2.0 `tool-prompt`).

wit_bindgen::generate!({ world: "output-parser-plugin", path: "../../../wit/since_v0.1.0" });

use exports::rapid::plugin::output_parser::{Event, Guest, GuestSession, Session, SessionConfig};
use rapid::plugin::types::{Capability, CapabilityKind, PluginInfo};

struct Plain;

struct PlainSession;

impl Guest for Plain {
    type Session = PlainSession;

    fn info() -> PluginInfo {
        PluginInfo {
            name: String::from("plain-v0-1-0"),
            version: String::from("0.1.0"),
            description: String::from("Test-only: built against WIT 0.1.0; all text is content"),
            provides: vec![Capability { name: String::from("plain-v0-1-0"), kind: CapabilityKind::ToolCallParser }],
        }
    }

    fn tool_call_grammar(_parser: String, _tools_json: String) -> Option<String> {
        None
    }
}

impl GuestSession for PlainSession {
    fn create(_config: SessionConfig) -> Result<Session, String> {
        Ok(Session::new(PlainSession))
    }

    fn feed(&self, delta: String) -> Vec<Event> {
        vec![Event::Content(delta)]
    }

    fn finish(&self) -> Vec<Event> {
        Vec::new()
    }
}

export!(Plain);
