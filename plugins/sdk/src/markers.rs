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

/// Text for one output channel (content or reasoning). Whitespace at the edges of a
/// channel segment is dropped (`</think>\n\nAnswer` gives `Answer`), and the decision
/// never depends on how the text was chunked: trailing whitespace is held back until
/// non-whitespace follows.
#[derive(Debug)]
pub struct Channel {
    at_start: bool,
    pending_ws: String,
}

impl Default for Channel {
    fn default() -> Self {
        Self { at_start: true, pending_ws: String::new() }
    }
}

impl Channel {
    /// Adds `text`; returns what can be emitted now (possibly empty).
    pub fn push(&mut self, text: &str) -> String {
        let text = if self.at_start { text.trim_start() } else { text };
        if text.is_empty() {
            return String::new();
        }
        self.at_start = false;
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

    /// Ends the current segment: held-back whitespace is dropped.
    pub fn close(&mut self) {
        self.pending_ws.clear();
        self.at_start = true;
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
        let text = "\n  Hello,  world \n\n";
        let whole = {
            let mut c = Channel::default();
            c.push(text)
        };
        let mut c = Channel::default();
        let pieces: String = text.chars().map(|ch| c.push(&ch.to_string())).collect();
        assert_eq!(whole, "Hello,  world");
        assert_eq!(pieces, whole);
    }
}
