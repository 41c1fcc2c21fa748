//! The streaming tool-call splitter: text outside call sections streams out as content,
//! partial markers are held back, and each complete section is parsed by a [`CallFormat`].
//!
//! A section is parsed only once it is complete, so the calls never depend on how the
//! text was chunked; content is emitted as early as it is known not to be a marker.
//!
//! Streaming stays linear in the output however it is chunked: every byte is looked at a
//! bounded number of times. The search for a section's end resumes where the previous feed
//! left it (a [`Scan`]), so a tool call whose arguments are a 1 MB file, streamed one
//! character at a time, costs about what it costs whole.

use crate::json::{Tools, ValueEnd, ValueScan};
use crate::markers::{Channel, Pending, find_first, partial_suffix};

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
    ///
    /// While a section streams in, this is called after every feed with the section so far;
    /// `scan` (fresh for each section) carries where the previous call stopped, so resume
    /// from it instead of searching `buf` from the start: [`Scan::until_closer`] does this
    /// for sections that end at a closing marker.
    fn section_len(&self, buf: &str, scan: &mut Scan, eof: bool) -> Option<usize>;

    /// Parses one complete section.
    fn parse(&self, section: &str, tools: &Tools) -> Section;
}

/// How far the search for the end of the current section got: kept by the splitter from
/// one [`CallFormat::section_len`] call to the next and reset for each section, so each
/// byte of a section is searched once, not once per feed.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// Bytes at the start of the section already searched; the end is not among them.
    pub pos: usize,
    /// The brackets of a JSON value being matched, for sections that end with one.
    pub json: ValueScan,
    /// Where the last complete value ended, for sections of several values.
    pub end: usize,
    /// Free for a format's own scanner: a nesting depth, a phase.
    pub depth: usize,
    /// Free for a format's own scanner: inside a quoted string.
    pub quoted: bool,
}

impl Scan {
    /// The section ends after the first of `closers`, or at end of output. Resumes where the
    /// previous call stopped: only the text that arrived since (and the last few bytes, where
    /// a closer may have been cut in two) is searched.
    pub fn until_closer(&mut self, buf: &str, closers: &[&str], eof: bool) -> Option<usize> {
        let from = floor_char_boundary(buf, self.pos);
        match find_first(&buf[from..], closers) {
            Some((pos, i)) => Some(from + pos + closers[i].len()),
            None if eof => Some(buf.len()),
            None => {
                let longest = closers.iter().map(|c| c.len()).max().unwrap_or(1);
                self.pos = buf.len().saturating_sub(longest.saturating_sub(1));
                None
            }
        }
    }

    /// The section is one or more JSON objects or arrays from byte `start` on, separated by
    /// whitespace or any of `separators`; it ends after the last one (at end of output,
    /// with what there is). Resumes where the previous call stopped.
    pub fn json_values(&mut self, buf: &str, start: usize, separators: &[char], eof: bool) -> Option<usize> {
        if self.pos < start {
            self.pos = start;
            self.end = start;
        }
        loop {
            if self.depth == 1 {
                match self.json.scan(&buf[self.pos..]) {
                    ValueEnd::At(len) => {
                        self.pos += len;
                        self.end = self.pos;
                        self.json = ValueScan::default();
                        self.depth = 0;
                    }
                    ValueEnd::Incomplete => {
                        self.pos = buf.len();
                        return eof.then_some(buf.len());
                    }
                    ValueEnd::Invalid => return Some(self.end),
                }
                continue;
            }
            let rest = &buf[self.pos..];
            let after = rest.trim_start_matches(|c: char| c.is_whitespace() || separators.contains(&c));
            self.pos = buf.len() - after.len();
            if after.is_empty() {
                // Another value may still come.
                return eof.then_some(buf.len());
            }
            if !after.starts_with(['{', '[']) {
                return Some(self.end);
            }
            self.depth = 1;
        }
    }
}

/// The largest char boundary of `text` at or below `at`.
pub fn floor_char_boundary(text: &str, at: usize) -> usize {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// The tool-call splitter of one parser session.
#[derive(Debug)]
pub struct ToolCallSplitter<F> {
    format: F,
    tools: Tools,
    buf: Pending,
    in_section: bool,
    scan: Scan,
    seen_text: bool,
    next_index: u32,
    content: Channel,
}

impl<F: CallFormat> ToolCallSplitter<F> {
    pub fn new(format: F, tools: Tools) -> Self {
        Self {
            format,
            tools,
            buf: Pending::default(),
            in_section: false,
            scan: Scan::default(),
            seen_text: false,
            next_index: 0,
            content: Channel::default(),
        }
    }

    pub fn feed(&mut self, delta: &str) -> Vec<Event> {
        self.buf.push(delta);
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
            if self.buf.is_empty() {
                if eof {
                    self.in_section = false;
                }
                return;
            }
            if self.in_section {
                let rest = self.buf.as_str();
                let Some(len) = self.format.section_len(rest, &mut self.scan, eof) else { return };
                let mut len = len.clamp(1, rest.len());
                while !rest.is_char_boundary(len) {
                    len += 1;
                }
                let section = self.buf.take(len).to_string();
                self.in_section = false;
                self.scan = Scan::default();
                self.emit_section(&section, out);
                continue;
            }
            if !self.seen_text {
                // Leading whitespace is never content: drop it now rather than look at it
                // again on every feed.
                let rest = self.buf.as_str();
                let skip = rest.len() - rest.trim_start().len();
                self.buf.take(skip);
                let rest = self.buf.as_str();
                let leading = self.format.leading_openers();
                if leading.iter().any(|o| rest.starts_with(o)) {
                    self.in_section = true;
                    self.seen_text = true;
                    continue;
                }
                if !eof && (rest.is_empty() || leading.iter().any(|o| o.starts_with(rest))) {
                    return;
                }
            }
            let openers = self.format.openers();
            match find_first(self.buf.as_str(), openers) {
                Some((pos, _)) => {
                    let before = self.buf.take(pos).to_string();
                    self.content_text(&before, out);
                    self.content.close();
                    self.in_section = true;
                    self.seen_text = true;
                }
                None => {
                    let keep = if eof { 0 } else { partial_suffix(self.buf.as_str(), openers) };
                    let text = self.buf.take_all_but(keep).to_string();
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
