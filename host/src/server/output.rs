//! What a generation's text becomes: content, reasoning and tool calls, under the same rules
//! for every API (chat completions, Messages, Responses).
//!
//! - A request that allows one call (a named `tool_choice`, `parallel_tool_calls: false`)
//!   gets exactly one: calls after the first are dropped, and nothing after it is answer.
//! - Under a forced call the grammar makes the whole output calls, so no text of it is
//!   content (whitespace between calls, markup of a call cut short).
//! - A call cut short (`max_tokens`, a stop string) stays a call with the arguments generated
//!   so far, gets no end, and the response finishes with `length`.
//! - Argument fragments go out as soon as the parser (or [`HostCalls`]) produces them.

use std::collections::BTreeSet;

use super::structured::HostCalls;
use crate::engine::generate::FinishReason;
use crate::parsers::{ParseEvent, ParserPipeline};

/// Why a response ended, in API-neutral terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its answer.
    Stop,
    /// One of the request's stop strings.
    StopSequence(String),
    /// `max_tokens`, or a tool call cut short (by `max_tokens` or a stop string).
    Length,
    /// The answer is one or more complete tool calls.
    ToolCalls,
}

/// How one response's text is read.
#[derive(Debug)]
pub struct Output {
    pub(super) pipeline: Option<ParserPipeline>,
    /// A forced call as a bare JSON object the host reads itself.
    pub(super) host_calls: Option<HostCalls>,
    /// A grammar makes the output tool calls only.
    pub(super) forced: bool,
    /// The one function a named `tool_choice` allows.
    pub(super) forced_name: Option<String>,
    /// At most one call (named choice, `parallel_tool_calls: false`).
    pub(super) single_call: bool,
    /// The request's function names (after `tool_choice` narrowed them).
    pub(super) tool_names: Vec<String>,
    begun: u32,
    open: BTreeSet<u32>,
    /// The one allowed call is complete: nothing after it is answer.
    closed: bool,
    pub malformed: u64,
    pub parser_failures: u64,
}

impl Output {
    pub(super) fn new(
        pipeline: Option<ParserPipeline>,
        host_calls: Option<HostCalls>,
        forced: bool,
        forced_name: Option<String>,
        single_call: bool,
        tool_names: Vec<String>,
    ) -> Self {
        Self {
            pipeline,
            host_calls,
            forced,
            forced_name,
            single_call,
            tool_names,
            begun: 0,
            open: BTreeSet::new(),
            closed: false,
            malformed: 0,
            parser_failures: 0,
        }
    }

    /// Parser plugin code runs when this output is read.
    pub fn runs_plugins(&self) -> bool {
        self.pipeline.is_some()
    }

    /// The answer is complete though generation may go on (the one allowed call ended).
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// Reads the next piece of generated text.
    pub fn feed(&mut self, text: &str) -> Vec<ParseEvent> {
        if self.closed {
            return Vec::new();
        }
        let events = match (&mut self.host_calls, &mut self.pipeline) {
            (Some(calls), _) => calls.feed(text),
            (None, Some(p)) => p.feed(text),
            (None, None) if text.is_empty() => Vec::new(),
            (None, None) => vec![ParseEvent::Content(text.to_string())],
        };
        self.rules(events)
    }

    /// End of output; `cut` when `max_tokens` or a stop string ended it.
    pub fn finish(&mut self, cut: bool) -> Vec<ParseEvent> {
        if self.closed {
            return Vec::new();
        }
        let forced_name = self.forced_name.clone().filter(|_| cut);
        let mut events = self.host_calls.as_mut().map(|c| c.finish(forced_name.as_deref())).unwrap_or_default();
        if let Some(p) = &mut self.pipeline {
            if cut {
                events.extend(p.finish_cut(&self.tool_names, forced_name.as_deref()));
            } else {
                events.extend(p.finish());
            }
            self.parser_failures += p.failures.len() as u64;
        }
        let mut events = self.rules(events);
        // A named choice cut before any call showed: the call it forced, with no arguments yet.
        if let Some(name) = forced_name
            && self.forced
            && self.begun == 0
        {
            let event = ParseEvent::ToolCallBegin { index: 0, id: crate::parsers::pipeline::new_call_id(), name };
            events.extend(self.rules(vec![event]));
        }
        events
    }

    /// The finish reason, given the engine's.
    pub fn finish_reason(&self, engine: FinishReason, stop: &[String]) -> Finish {
        match engine {
            FinishReason::Length | FinishReason::StopSequence(_) if !self.open.is_empty() => Finish::Length,
            _ if self.begun > 0 => Finish::ToolCalls,
            FinishReason::Length => Finish::Length,
            FinishReason::StopSequence(i) => Finish::StopSequence(stop.get(i).cloned().unwrap_or_default()),
            FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
        }
    }

    fn rules(&mut self, events: Vec<ParseEvent>) -> Vec<ParseEvent> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            if let ParseEvent::Malformed(_) = event {
                self.malformed += 1;
                out.push(event);
                continue;
            }
            if self.closed {
                continue;
            }
            match &event {
                ParseEvent::Content(_) if self.forced => continue,
                ParseEvent::ToolCallBegin { index, .. }
                | ParseEvent::ToolCallArguments { index, .. }
                | ParseEvent::ToolCallEnd(index)
                    if self.single_call && *index > 0 =>
                {
                    self.closed = true;
                    continue;
                }
                ParseEvent::ToolCallBegin { index, .. } => {
                    self.begun += 1;
                    self.open.insert(*index);
                }
                ParseEvent::ToolCallEnd(index) => {
                    self.open.remove(index);
                    if self.single_call {
                        self.closed = true;
                    }
                }
                _ => {}
            }
            out.push(event);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(index: u32, name: &str, arguments: &str) -> Vec<ParseEvent> {
        vec![
            ParseEvent::ToolCallBegin { index, id: format!("call_{index}"), name: name.to_string() },
            ParseEvent::ToolCallArguments { index, fragment: arguments.to_string() },
            ParseEvent::ToolCallEnd(index),
        ]
    }

    #[test]
    fn one_call_when_one_is_allowed() {
        let mut output = Output::new(None, None, true, Some("f".into()), true, vec!["f".into()]);
        let mut events = call(0, "f", "{}");
        events.push(ParseEvent::Content("\n".into()));
        events.extend(call(1, "f", "{\"a\": 1}"));
        let kept = output.rules(events);
        assert_eq!(kept, call(0, "f", "{}"));
        assert!(output.closed());
        assert_eq!(output.finish_reason(FinishReason::Length, &[]), Finish::ToolCalls);
    }

    #[test]
    fn parallel_calls_keep_their_order() {
        let mut output = Output::new(None, None, true, None, false, vec!["f".into(), "g".into()]);
        let mut events = call(0, "f", "{}");
        events.extend(call(1, "g", "{}"));
        events.extend(call(2, "f", "{}"));
        assert_eq!(output.rules(events.clone()), events);
        assert_eq!(output.finish_reason(FinishReason::Stop, &[]), Finish::ToolCalls);
    }

    #[test]
    fn a_cut_call_finishes_with_length() {
        let mut output = Output::new(None, None, true, Some("f".into()), true, vec!["f".into()]);
        let kept = output.rules(vec![
            ParseEvent::ToolCallBegin { index: 0, id: "call_0".into(), name: "f".into() },
            ParseEvent::ToolCallArguments { index: 0, fragment: "{\"a\": ".into() },
        ]);
        assert_eq!(kept.len(), 2);
        assert_eq!(output.finish_reason(FinishReason::Length, &[]), Finish::Length);
        assert_eq!(output.finish_reason(FinishReason::StopSequence(0), &["x".into()]), Finish::Length);
    }

    #[test]
    fn a_named_choice_cut_before_any_text_is_still_its_call() {
        let mut output = Output::new(None, None, true, Some("f".into()), true, vec!["f".into()]);
        let events = output.finish(true);
        assert!(matches!(&events[..], [ParseEvent::ToolCallBegin { index: 0, name, .. }] if name == "f"), "{events:?}");
        assert_eq!(output.finish_reason(FinishReason::Length, &[]), Finish::Length);
    }

    #[test]
    fn stop_strings_are_named() {
        let output = Output::new(None, None, false, None, false, Vec::new());
        assert_eq!(
            output.finish_reason(FinishReason::StopSequence(1), &["a".into(), "b".into()]),
            Finish::StopSequence("b".into())
        );
    }
}
