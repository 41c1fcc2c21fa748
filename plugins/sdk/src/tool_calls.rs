//! The streaming tool-call splitter: text outside call sections streams out as content,
//! partial markers are held back, and each complete section is parsed by a [`CallFormat`].
//!
//! A section is parsed only once it is complete, so the calls never depend on how the
//! text was chunked; content is emitted as early as it is known not to be a marker.

use crate::json::Tools;
use crate::markers::{Channel, find_first, partial_suffix};

/// What a parser session emits, in host-neutral form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Content(String),
    Reasoning(String),
    ToolCallBegin {
        index: u32,
        id: String,
        name: String,
    },
    ToolCallArguments {
        index: u32,
        fragment: String,
    },
    ToolCallEnd(u32),
    /// A section that looked like a call but did not parse; its text went out as content.
    Malformed(String),
}

/// One parsed call: name, arguments as a compact JSON object, and the id when the format
/// carries one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: String,
    pub arguments: String,
    pub id: Option<String>,
}

impl Call {
    pub fn new(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self { name: name.into(), arguments: arguments.into(), id: None }
    }
}

/// The outcome of parsing one section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Section {
    Calls(Vec<Call>),
    /// Not a call after all (a bare JSON answer): plain content, nothing to report.
    NotACall,
    /// Looked like a call but is broken: content, and reported.
    Malformed(String),
}

/// A tool-call wire format.
pub trait CallFormat {
    /// Markers that open a call section anywhere in the text.
    fn openers(&self) -> &[&'static str];

    /// Markers that open a section only at the very start of the output (after
    /// whitespace), such as the bare JSON object of Llama.
    fn leading_openers(&self) -> &[&'static str] {
        &[]
    }

    /// Length of the section at the start of `buf` (which starts with an opener), or
    /// `None` while it is incomplete. At `eof`, return what there is.
    fn section_len(&self, buf: &str, eof: bool) -> Option<usize>;

    /// Parses one complete section.
    fn parse(&self, section: &str, tools: &Tools) -> Section;
}

/// Section length for formats that end at a closing marker, or at end of output.
pub fn until_closer(buf: &str, closers: &[&str], eof: bool) -> Option<usize> {
    match find_first(buf, closers) {
        Some((pos, i)) => Some(pos + closers[i].len()),
        None if eof => Some(buf.len()),
        None => None,
    }
}

/// The tool-call splitter of one parser session.
#[derive(Debug)]
pub struct ToolCallSplitter<F> {
    format: F,
    tools: Tools,
    buf: String,
    in_section: bool,
    seen_text: bool,
    next_index: u32,
    content: Channel,
}

impl<F: CallFormat> ToolCallSplitter<F> {
    pub fn new(format: F, tools: Tools) -> Self {
        Self {
            format,
            tools,
            buf: String::new(),
            in_section: false,
            seen_text: false,
            next_index: 0,
            content: Channel::default(),
        }
    }

    pub fn feed(&mut self, delta: &str) -> Vec<Event> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        self.run(false, &mut out);
        out
    }

    pub fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        self.run(true, &mut out);
        self.content.close();
        out
    }

    fn run(&mut self, eof: bool, out: &mut Vec<Event>) {
        loop {
            if self.in_section {
                let Some(len) = self.format.section_len(&self.buf, eof) else { return };
                let len = len.clamp(1, self.buf.len());
                let section: String = self.buf.drain(..len).collect();
                self.in_section = false;
                self.emit_section(&section, out);
                continue;
            }
            if self.buf.is_empty() {
                return;
            }
            if !self.seen_text {
                let rest = self.buf.trim_start();
                let leading = self.format.leading_openers();
                if leading.iter().any(|o| rest.starts_with(o)) {
                    let skip = self.buf.len() - rest.len();
                    self.buf.drain(..skip);
                    self.in_section = true;
                    self.seen_text = true;
                    continue;
                }
                if !eof && (rest.is_empty() || leading.iter().any(|o| o.starts_with(rest))) {
                    return;
                }
            }
            let openers = self.format.openers();
            match find_first(&self.buf, openers) {
                Some((pos, _)) => {
                    let before: String = self.buf.drain(..pos).collect();
                    self.content_text(&before, out);
                    self.content.close();
                    self.in_section = true;
                    self.seen_text = true;
                }
                None => {
                    let keep = if eof { 0 } else { partial_suffix(&self.buf, openers) };
                    let text: String = self.buf.drain(..self.buf.len() - keep).collect();
                    self.content_text(&text, out);
                    return;
                }
            }
        }
    }

    fn content_text(&mut self, text: &str, out: &mut Vec<Event>) {
        if !text.trim().is_empty() {
            self.seen_text = true;
        }
        let emitted = self.content.push(text);
        if !emitted.is_empty() {
            out.push(Event::Content(emitted));
        }
    }

    fn emit_section(&mut self, section: &str, out: &mut Vec<Event>) {
        match self.format.parse(section, &self.tools) {
            Section::Calls(calls) if !calls.is_empty() => {
                self.content.close();
                for call in calls {
                    let index = self.next_index;
                    self.next_index += 1;
                    out.push(Event::ToolCallBegin { index, id: call.id.unwrap_or_default(), name: call.name });
                    out.push(Event::ToolCallArguments { index, fragment: call.arguments });
                    out.push(Event::ToolCallEnd(index));
                }
            }
            Section::Calls(_) | Section::NotACall => self.content_text(section, out),
            Section::Malformed(reason) => {
                self.content_text(section, out);
                out.push(Event::Malformed(reason));
            }
        }
    }
}

/// Anything that turns streamed text into events: a tool-call or reasoning splitter, or
/// a hand-written state machine.
pub trait Splitter {
    fn feed(&mut self, delta: &str) -> Vec<Event>;
    fn finish(&mut self) -> Vec<Event>;
}

impl<F: CallFormat> Splitter for ToolCallSplitter<F> {
    fn feed(&mut self, delta: &str) -> Vec<Event> {
        ToolCallSplitter::feed(self, delta)
    }

    fn finish(&mut self) -> Vec<Event> {
        ToolCallSplitter::finish(self)
    }
}

impl Splitter for crate::reasoning::ReasoningSplitter {
    fn feed(&mut self, delta: &str) -> Vec<Event> {
        crate::reasoning::ReasoningSplitter::feed(self, delta)
    }

    fn finish(&mut self) -> Vec<Event> {
        crate::reasoning::ReasoningSplitter::finish(self)
    }
}

/// Two splitters in a row: the first one's content is the second one's input (reasoning
/// first, then tool calls within the answer).
pub struct Chain {
    first: Box<dyn Splitter>,
    second: Box<dyn Splitter>,
}

impl Chain {
    pub fn new(first: Box<dyn Splitter>, second: Box<dyn Splitter>) -> Self {
        Self { first, second }
    }

    fn route(&mut self, events: Vec<Event>, out: &mut Vec<Event>) {
        for event in events {
            match event {
                Event::Content(text) => out.extend(self.second.feed(&text)),
                other => out.push(other),
            }
        }
    }
}

impl Splitter for Chain {
    fn feed(&mut self, delta: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let events = self.first.feed(delta);
        self.route(events, &mut out);
        out
    }

    fn finish(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        let events = self.first.finish();
        self.route(events, &mut out);
        out.extend(self.second.finish());
        out
    }
}
