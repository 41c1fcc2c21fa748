//! Finding markers in streamed text, where a marker may be split across chunks.

/// Earliest occurrence of any of `markers` in `hay`: `(byte offset, marker index)`. On a
/// tie the longer marker wins, so `<|tool_call>` beats a shorter marker it starts with.
pub fn find_first(hay: &str, markers: &[&str]) -> Option<(usize, usize)> {
    markers
        .iter()
        .enumerate()
        .filter_map(|(i, m)| hay.find(m).map(|pos| (pos, i)))
        .min_by_key(|&(pos, i)| (pos, usize::MAX - markers[i].len()))
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
    }

    #[test]
    fn partial_markers_are_held_back() {
        assert_eq!(partial_suffix("hello <tool", &["<tool_call>"]), 5);
        assert_eq!(partial_suffix("hello <", &["<tool_call>", "</think>"]), 1);
        assert_eq!(partial_suffix("hello", &["<tool_call>"]), 0);
        assert_eq!(partial_suffix("x<｜tool", &["<｜tool▁calls▁begin｜>"]), "<｜tool".len());
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
