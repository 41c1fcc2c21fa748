//! The streaming reasoning splitter for tag-delimited reasoning (`<think>…</think>`,
//! Gemma's `<|channel>thought…<channel|>`).

use crate::markers::{Channel, Pending, find_first, partial_suffix};
use crate::tool_calls::Event;

/// How a model marks its reasoning.
#[derive(Debug, Clone, Copy)]
pub struct TagReasoning {
    /// Markers that open reasoning.
    pub open: &'static [&'static str],
    /// Markers that close it. A close marker outside reasoning is dropped, never shown.
    pub close: &'static [&'static str],
    /// Markers removed from content wherever they appear (`<|begin_of_box|>`).
    pub strip: &'static [&'static str],
}

/// The `<think>R</think>C` family.
pub const THINK_TAGS: TagReasoning = TagReasoning { open: &["<think>"], close: &["</think>"], strip: &[] };

/// Splits reasoning from content for one session.
#[derive(Debug)]
pub struct ReasoningSplitter {
    format: TagReasoning,
    markers: Vec<&'static str>,
    buf: Pending,
    in_reasoning: bool,
    content: Channel,
    reasoning: Channel,
}

impl ReasoningSplitter {
    /// `started`: the chat template already opened reasoning (the implicit `<think>`).
    pub fn new(format: TagReasoning, started: bool) -> Self {
        let markers = format.open.iter().chain(format.close).chain(format.strip).copied().collect();
        Self {
            format,
            markers,
            buf: Pending::default(),
            in_reasoning: started,
            content: Channel::default(),
            reasoning: Channel::default(),
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
        out
    }

    fn run(&mut self, eof: bool, out: &mut Vec<Event>) {
        loop {
            let markers: &[&'static str] = if self.in_reasoning { self.format.close } else { &self.markers };
            match find_first(self.buf.as_str(), markers) {
                Some((pos, i)) => {
                    let marker = markers[i];
                    let before = self.buf.take(pos).to_string();
                    self.buf.take(marker.len());
                    self.emit(&before, out);
                    if self.in_reasoning {
                        self.reasoning.close();
                        self.in_reasoning = false;
                    } else if self.format.open.contains(&marker) {
                        self.content.close();
                        self.in_reasoning = true;
                    }
                }
                None => {
                    let keep = if eof { 0 } else { partial_suffix(self.buf.as_str(), markers) };
                    let text = self.buf.take_all_but(keep).to_string();
                    self.emit(&text, out);
                    return;
                }
            }
        }
    }

    fn emit(&mut self, text: &str, out: &mut Vec<Event>) {
        if self.in_reasoning {
            let t = self.reasoning.push(text);
            if !t.is_empty() {
                out.push(Event::Reasoning(t));
            }
        } else {
            let t = self.content.push(text);
            if !t.is_empty() {
                out.push(Event::Content(t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(events: &[Event]) -> (String, String) {
        let mut c = String::new();
        let mut r = String::new();
        for e in events {
            match e {
                Event::Content(t) => c.push_str(t),
                Event::Reasoning(t) => r.push_str(t),
                _ => {}
            }
        }
        (c, r)
    }

    fn run(text: &str, started: bool, chunk: usize) -> (String, String) {
        let mut s = ReasoningSplitter::new(THINK_TAGS, started);
        let chars: Vec<char> = text.chars().collect();
        let mut events = Vec::new();
        for piece in chars.chunks(chunk) {
            events.extend(s.feed(&piece.iter().collect::<String>()));
        }
        events.extend(s.finish());
        assemble(&events)
    }

    #[test]
    fn think_tags_split_at_any_chunking() {
        for chunk in [1, 2, 3, 7, 1000] {
            assert_eq!(
                run("<think>Let me see.</think>\n\nIt is 42.", false, chunk),
                ("It is 42.".into(), "Let me see.".into())
            );
            assert_eq!(run("Let me see.</think>It is 42.", true, chunk), ("It is 42.".into(), "Let me see.".into()));
            assert_eq!(
                run("Plain answer < 3 </think", false, chunk),
                ("Plain answer < 3 </think".into(), String::new())
            );
        }
    }
}
