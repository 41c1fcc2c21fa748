//! Finding markers in streamed text, where a marker may be split across chunks.

/// Earliest occurrence of any of `markers` in `hay`: `(byte offset, marker index)`. On a
/// tie the longer marker wins, so `<|tool_call>` beats a shorter marker it starts with.
///
/// One pass that stops at the first match: the cost is the distance to that match, not
/// `markers.len()` scans of the whole text, so a splitter that consumes the text up to each
/// marker it finds stays linear in its input.
pub fn find_first(hay: &str, markers: &[&str]) -> Option<(usize, usize)> {
    let mut first_bytes = [0u64; 4];
    for marker in markers {
        if let Some(&b) = marker.as_bytes().first() {
            first_bytes[usize::from(b >> 6)] |= 1 << (b & 63);
        }
    }
    let bytes = hay.as_bytes();
    for (pos, &b) in bytes.iter().enumerate() {
        if first_bytes[usize::from(b >> 6)] & (1 << (b & 63)) == 0 {
            continue;
        }
        // A marker's first byte is ASCII or a UTF-8 lead byte, so `pos` is a char boundary.
        let best = markers
            .iter()
            .enumerate()
            .filter(|(_, m)| !m.is_empty() && bytes[pos..].starts_with(m.as_bytes()))
            .max_by_key(|(i, m)| (m.len(), usize::MAX - i));
        if let Some((i, _)) = best {
            return Some((pos, i));
        }
    }
    None
}

/// Text received but not yet consumed. Consuming moves an offset instead of shifting what
/// follows (the consumed prefix is dropped at the next [`Pending::push`]), so a splitter that
/// consumes a long delta piece by piece stays linear in its input.
#[derive(Debug, Default)]
pub struct Pending {
    text: String,
    head: usize,
}

impl Pending {
    pub fn push(&mut self, delta: &str) {
        if self.head > 0 {
            self.text.drain(..self.head);
            self.head = 0;
        }
        self.text.push_str(delta);
    }

    /// What is left to consume.
    pub fn as_str(&self) -> &str {
        &self.text[self.head..]
    }

    pub fn is_empty(&self) -> bool {
        self.head == self.text.len()
    }

    /// Consumes and returns the next `len` bytes (clamped to what is left; `len` must fall
    /// on a char boundary).
    pub fn take(&mut self, len: usize) -> &str {
        let start = self.head;
        self.head = (start + len).min(self.text.len());
        &self.text[start..self.head]
    }

    /// Consumes everything but the last `keep` bytes.
    pub fn take_all_but(&mut self, keep: usize) -> &str {
        let len = self.as_str().len().saturating_sub(keep);
        self.take(len)
    }
}

/// Bytes at the end of `hay` that could be the start of a marker and must be held back
/// until more text arrives. Always on a char boundary.
pub fn partial_suffix(hay: &str, markers: &[&str]) -> usize {
    let mut best = 0;
    for marker in markers {
        let longest = marker.len().saturating_sub(1).min(hay.len());
        for len in (best + 1..=longest).rev() {
            let start = hay.len() - len;
            if hay.is_char_boundary(start) && marker.starts_with(&hay[start..]) {
                best = len;
                break;
            }
        }
    }
    best
}

/// `text` without a trailing piece of `marker` (a proper prefix of it): what is left when
/// the output ended in the middle of a closing marker, e.g. at `max_tokens`.
pub fn strip_partial_suffix<'a>(text: &'a str, marker: &str) -> &'a str {
    &text[..text.len() - partial_suffix(text, &[marker])]
}

/// Text for one output channel (content or reasoning), with whitespace handled the same
/// way whatever the chunking: leading whitespace of the channel and trailing whitespace at
/// the end of output are dropped, and around a tool call (a [`Channel::close`]) runs of
/// whitespace collapse to the run that came before the call, so `Checking. <call> Done.`
/// reads `Checking. Done.`. Trailing whitespace is held back until non-whitespace follows.
#[derive(Debug, Default)]
pub struct Channel {
    started: bool,
    skip_leading: bool,
    pending_ws: String,
}

impl Channel {
    /// Adds `text`; returns what can be emitted now (possibly empty).
    pub fn push(&mut self, text: &str) -> String {
        let text = if !self.started || self.skip_leading { text.trim_start() } else { text };
        if text.is_empty() {
            return String::new();
        }
        self.skip_leading = false;
        self.started = true;
        let body = text.trim_end();
        if body.is_empty() {
            self.pending_ws.push_str(text);
            return String::new();
        }
        let mut out = std::mem::take(&mut self.pending_ws);
        out.push_str(body);
        self.pending_ws.push_str(&text[body.len()..]);
        out
    }

    /// Something other than text (a tool call, a reasoning block) interrupts the channel.
    pub fn close(&mut self) {
        self.skip_leading = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_marker_wins() {
        assert_eq!(find_first("ab<x>cd<y>", &["<y>", "<x>"]), Some((2, 1)));
        assert_eq!(find_first("abc", &["<x>"]), None);
        assert_eq!(find_first("a<|tool_call>", &["<|", "<|tool_call>"]), Some((1, 1)));
        assert_eq!(find_first("x｜<｜tool▁sep｜>", &["<｜tool▁sep｜>"]), Some(("x｜".len(), 0)));
        assert_eq!(find_first("<a", &["<a>"]), None);
    }

    #[test]
    fn pending_consumes_without_shifting() {
        let mut p = Pending::default();
        p.push("hello <x> world");
        assert_eq!(p.take(6), "hello ");
        assert_eq!(p.as_str(), "<x> world");
        assert_eq!(p.take_all_but(2), "<x> wor");
        p.push("!");
        assert_eq!(p.as_str(), "ld!");
        assert_eq!(p.take(100), "ld!");
        assert!(p.is_empty());
    }

    #[test]
    fn partial_markers_are_held_back() {
        assert_eq!(partial_suffix("hello <tool", &["<tool_call>"]), 5);
        assert_eq!(partial_suffix("hello <", &["<tool_call>", "</think>"]), 1);
        assert_eq!(partial_suffix("hello", &["<tool_call>"]), 0);
        assert_eq!(partial_suffix("x<｜tool", &["<｜tool▁calls▁begin｜>"]), "<｜tool".len());
        assert_eq!(strip_partial_suffix("{}</tool_", "</tool_call>"), "{}");
        assert_eq!(strip_partial_suffix("{}", "</tool_call>"), "{}");
        // a complete marker is not "partial"
        assert_eq!(partial_suffix("<a>", &["<a>"]), 0);
    }

    #[test]
    fn channel_trims_segment_edges_whatever_the_chunking() {
        let run = |parts: &[&str], chunked: bool| {
            let mut c = Channel::default();
            let mut out = String::new();
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    c.close();
                }
                if chunked {
                    for ch in part.chars() {
                        out.push_str(&c.push(&ch.to_string()));
                    }
                } else {
                    out.push_str(&c.push(part));
                }
            }
            out
        };
        let parts = ["\n  Hello,  world ", "\n Done. \n\n"];
        assert_eq!(run(&parts, false), "Hello,  world Done.");
        assert_eq!(run(&parts, true), "Hello,  world Done.");
    }
}
