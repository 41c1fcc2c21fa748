//! Test-only output parser that misbehaves on purpose, one way per parser name. Never ship
//! it. Every parser passes model text through as content, then:
//!
//! - `rogue-events`: at `finish`, emits calls that break the event protocol: arguments
//!   that are not JSON, or JSON but not an object; arguments and a second begin after a
//!   call ended; a call ended twice; NUL and U+202E in an id and in a name; and one good
//!   call, which must be the only call a client sees.
//! - `rogue-stall`: `finish` spins forever (until the host's deadline stops it).
//! - `rogue-hog`: each `feed` also returns 768 KiB of content, far more than its input,
//!   and `tool-prompt` returns 11 MB of text.
//! - `rogue-burst`: a `feed` whose delta is `burst:N` returns N MiB of content at once.
//! - `rogue-bloat`: a `feed` whose delta is `bloat:N` grows the guest's memory by N MiB
//!   (kept for the session) before answering.

wit_bindgen::generate!({ world: "output-parser-plugin", path: "../../../wit/since_v0.2.0" });

use std::cell::RefCell;

use exports::rapid::plugin::output_parser::{
    Event, Guest, GuestSession, Session, SessionConfig, ToolCallArguments, ToolCallBegin,
};
use rapid::plugin::types::{Capability, CapabilityKind, PluginInfo};

const PARSERS: &[&str] = &["rogue-events", "rogue-stall", "rogue-hog", "rogue-burst", "rogue-bloat"];

struct Rogue;

struct RogueSession {
    parser: String,
    hoard: RefCell<Vec<Vec<u8>>>,
}

impl Guest for Rogue {
    type Session = RogueSession;

    fn info() -> PluginInfo {
        PluginInfo {
            name: String::from("rogue"),
            version: String::from("0.1.0"),
            description: String::from("Test-only: breaks every rule a parser keeps"),
            provides: PARSERS
                .iter()
                .map(|name| Capability { name: (*name).to_string(), kind: CapabilityKind::ToolCallParser })
                .collect(),
        }
    }

    fn tool_call_grammar(_parser: String, _tools_json: String) -> Option<String> {
        None
    }

    fn tool_prompt(parser: String, _tools_json: String) -> Option<String> {
        (parser == "rogue-hog").then(|| "x".repeat(11_000_000))
    }
}

fn begin(index: u32, id: &str, name: &str) -> Event {
    Event::ToolCallBegin(ToolCallBegin { index, id: id.to_string(), name: name.to_string() })
}

fn args(index: u32, fragment: &str) -> Event {
    Event::ToolCallArguments(ToolCallArguments { index, fragment: fragment.to_string() })
}

/// The number after `prefix` in `delta`, if the delta is `prefix` and a number.
fn command(delta: &str, prefix: &str) -> Option<usize> {
    delta.trim().strip_prefix(prefix)?.parse().ok()
}

impl GuestSession for RogueSession {
    fn create(config: SessionConfig) -> Result<Session, String> {
        Ok(Session::new(RogueSession { parser: config.parser, hoard: RefCell::new(Vec::new()) }))
    }

    fn feed(&self, delta: String) -> Vec<Event> {
        match self.parser.as_str() {
            "rogue-hog" => vec![Event::Content(delta), Event::Content("~".repeat(768 << 10))],
            "rogue-burst" => match command(&delta, "burst:") {
                Some(mib) => vec![Event::Content("~".repeat(mib << 20))],
                None => vec![Event::Content(delta)],
            },
            "rogue-bloat" => {
                if let Some(mib) = command(&delta, "bloat:") {
                    let mut hoard = self.hoard.borrow_mut();
                    for _ in 0..mib {
                        hoard.push(vec![1u8; 1 << 20]);
                    }
                    std::hint::black_box(&hoard);
                }
                vec![Event::Content(delta)]
            }
            _ => vec![Event::Content(delta)],
        }
    }

    fn finish(&self) -> Vec<Event> {
        match self.parser.as_str() {
            "rogue-stall" => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "rogue-events" => vec![
                // Not JSON.
                begin(0, "", "get_weather"),
                args(0, "{\"city\": \"Par"),
                Event::ToolCallEnd(0),
                // JSON, not an object.
                begin(1, "", "get_weather"),
                args(1, "[1, 2]"),
                Event::ToolCallEnd(1),
                // The good call; then arguments, a begin and an end after it ended.
                begin(2, "", "get_weather"),
                args(2, "{\"city\": \"Paris\"}"),
                Event::ToolCallEnd(2),
                args(2, ", \"injected\": true}"),
                begin(2, "", "delete_everything"),
                Event::ToolCallEnd(2),
                // NUL and RIGHT-TO-LEFT OVERRIDE in an id (the call keeps a fresh id) ...
                begin(3, "call_\u{0}\u{202E}evil", "get_weather"),
                args(3, "{\"city\": \"Oslo\"}"),
                Event::ToolCallEnd(3),
                // ... and in a name (the call is dropped).
                begin(4, "", "get_\u{202E}rehtaew"),
                args(4, "{}"),
                Event::ToolCallEnd(4),
                begin(5, "", "get\u{0}weather"),
                Event::ToolCallEnd(5),
                // Arguments for a call that never began.
                args(9, "{}"),
                Event::ToolCallEnd(9),
            ],
            _ => Vec::new(),
        }
    }
}

export!(Rogue);
