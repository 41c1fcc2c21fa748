//! Tool calls cut short: generation stopped (`max_tokens`, a stop string) inside a call.
//!
//! A parser plugin sees an unclosed call section at the end of the output and hands it back
//! as content with a `malformed` report. OpenAI's rule is that a call that had begun stays a
//! call: the client gets the name and the arguments generated so far, and no markup reaches
//! `content`. [`cut_call`] reads the name and the partial arguments out of such a section;
//! [`JsonPrefix`] says whether text is the beginning of a JSON value (so that a section
//! whose JSON is broken rather than unfinished stays a malformed call).

/// What comes next in a JSON text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    Key,
    Colon,
    CommaOrEnd,
}

/// A JSON value read one character at a time: valid so far or not, and complete or not.
#[derive(Debug, Clone)]
pub struct JsonPrefix {
    /// Open containers, `true` for objects.
    stack: Vec<bool>,
    expect: Expect,
    /// Inside a string: (escape pending, unicode hex digits left, the string is a key).
    string: Option<(bool, u8, bool)>,
    number: bool,
    literal: Option<(&'static str, usize)>,
    complete: bool,
}

impl Default for JsonPrefix {
    fn default() -> Self {
        Self { stack: Vec::new(), expect: Expect::Value, string: None, number: false, literal: None, complete: false }
    }
}

/// Invalid JSON at this character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotJson;

impl JsonPrefix {
    /// The top-level value is complete (only whitespace may follow).
    pub fn complete(&self) -> bool {
        self.complete
    }

    /// Whether `text` is the start of one JSON value, unfinished.
    pub fn is_unfinished(text: &str) -> bool {
        let mut scan = Self::default();
        text.chars().all(|c| scan.push(c).is_ok()) && !scan.complete && !text.trim().is_empty()
    }

    fn value_done(&mut self) {
        if self.stack.is_empty() {
            self.complete = true;
        } else {
            self.expect = Expect::CommaOrEnd;
        }
    }

    /// Reads `c`.
    pub fn push(&mut self, c: char) -> Result<(), NotJson> {
        if let Some((escape, hex, key)) = self.string {
            self.string = match (escape, hex) {
                (_, n) if n > 0 => {
                    if !c.is_ascii_hexdigit() {
                        return Err(NotJson);
                    }
                    Some((false, n - 1, key))
                }
                (true, _) => match c {
                    'u' => Some((false, 4, key)),
                    '"' | '\\' | '/' | 'b' | 'f' | 'n' | 'r' | 't' => Some((false, 0, key)),
                    _ => return Err(NotJson),
                },
                (false, _) => match c {
                    '\\' => Some((true, 0, key)),
                    '"' => {
                        if key {
                            self.expect = Expect::Colon;
                        } else {
                            self.value_done();
                        }
                        None
                    }
                    c if (c as u32) < 0x20 => return Err(NotJson),
                    _ => Some((false, 0, key)),
                },
            };
            return Ok(());
        }
        if let Some((word, at)) = self.literal {
            if word[at..].starts_with(c) {
                let at = at + c.len_utf8();
                if at == word.len() {
                    self.literal = None;
                    self.value_done();
                } else {
                    self.literal = Some((word, at));
                }
                return Ok(());
            }
            return Err(NotJson);
        }
        if self.number {
            if c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-') {
                return Ok(());
            }
            self.number = false;
            self.value_done();
        }
        if c.is_whitespace() {
            return Ok(());
        }
        if self.complete {
            return Err(NotJson);
        }
        match (self.expect, c) {
            (Expect::Value | Expect::ValueOrEnd, '{') => {
                self.stack.push(true);
                self.expect = Expect::KeyOrEnd;
            }
            (Expect::Value | Expect::ValueOrEnd, '[') => {
                self.stack.push(false);
                self.expect = Expect::ValueOrEnd;
            }
            (Expect::Value | Expect::ValueOrEnd, '"') => self.string = Some((false, 0, false)),
            (Expect::Value | Expect::ValueOrEnd, '-' | '0'..='9') => self.number = true,
            (Expect::Value | Expect::ValueOrEnd, 't') => self.literal = Some(("true", 1)),
            (Expect::Value | Expect::ValueOrEnd, 'f') => self.literal = Some(("false", 1)),
            (Expect::Value | Expect::ValueOrEnd, 'n') => self.literal = Some(("null", 1)),
            (Expect::KeyOrEnd | Expect::Key, '"') => self.string = Some((false, 0, true)),
            (Expect::Colon, ':') => self.expect = Expect::Value,
            (Expect::CommaOrEnd, ',') => {
                self.expect = if self.stack.last() == Some(&true) { Expect::Key } else { Expect::Value };
            }
            (Expect::KeyOrEnd | Expect::CommaOrEnd, '}') if self.stack.last() == Some(&true) => {
                self.stack.pop();
                self.value_done();
            }
            (Expect::ValueOrEnd | Expect::CommaOrEnd, ']') if self.stack.last() == Some(&false) => {
                self.stack.pop();
                self.value_done();
            }
            _ => return Err(NotJson),
        }
        Ok(())
    }
}

/// An unfinished JSON value closed as briefly as possible (an open string ended, a key given
/// `null`, a dangling comma dropped, open containers closed), so that clients which need an
/// object get what the arguments of a call cut short hold so far. `None` when `text` is not
/// the start of a JSON value.
pub fn close_prefix(text: &str) -> Option<String> {
    let mut scan = JsonPrefix::default();
    for c in text.chars() {
        scan.push(c).ok()?;
    }
    if scan.complete {
        return Some(text.to_string());
    }
    let mut out = text.trim_end().to_string();
    if let Some((escape, hex, key)) = scan.string {
        if escape || hex > 0 {
            // Drop the unfinished escape.
            let cut = out.rfind('\\').unwrap_or(out.len());
            out.truncate(cut);
        }
        out.push('"');
        if key {
            out.push_str(": null");
        }
    } else if let Some((word, at)) = scan.literal {
        out.push_str(&word[at..]);
    } else if scan.number {
        while out.ends_with(['-', '+', '.', 'e', 'E']) {
            out.pop();
        }
        if !out.ends_with(|c: char| c.is_ascii_digit()) {
            out.push('0');
        }
    } else {
        match scan.expect {
            Expect::Colon => out.push_str(": null"),
            Expect::Value if out.ends_with(':') => out.push_str(" null"),
            Expect::Value | Expect::Key if out.ends_with(',') => {
                out.pop();
            }
            _ => {}
        }
    }
    for object in scan.stack.iter().rev() {
        out.push(if *object { '}' } else { ']' });
    }
    serde_json::from_str::<serde_json::Value>(&out).is_ok().then_some(out)
}

/// The name and the arguments so far of a call section that generation cut short, or
/// `None` when `section` is not an unfinished call.
///
/// Understood: a JSON call object (`{"name": …, "arguments"|"parameters": {…`, as hermes,
/// llama and most JSON formats write it) that is valid JSON as far as it goes, and
/// `<function=NAME>` (Qwen3-Coder XML; its arguments are not JSON, so none are kept).
/// `tool_names` (when not empty) must contain the name; `forced` is the one tool the request
/// allows, used when the name itself was not generated yet.
pub fn cut_call(section: &str, tool_names: &[String], forced: Option<&str>) -> Option<(String, String)> {
    let known = |name: &str| tool_names.is_empty() || tool_names.iter().any(|t| t == name);
    if let Some(open) = section.find('{') {
        let object = &section[open..];
        if JsonPrefix::is_unfinished(object) {
            let name = string_after_key(object, "name").filter(|n| known(n));
            let arguments = ["arguments", "parameters"]
                .iter()
                .filter_map(|key| value_start_after_key(object, key))
                .min()
                .map(|at| object[at..].to_string())
                .unwrap_or_default();
            return name.or_else(|| forced.map(str::to_string)).map(|name| (name, arguments));
        }
    }
    if let Some(at) = section.find("<function=") {
        let rest = &section[at + "<function=".len()..];
        if let Some(end) = rest.find('>') {
            let name = rest[..end].trim();
            if known(name) && !section.contains("</function>") {
                return Some((name.to_string(), String::new()));
            }
        }
    }
    forced.filter(|_| !section.trim().is_empty()).map(|name| (name.to_string(), String::new()))
}

/// Byte offset (in `object`) where the value of `"key":` starts, if the key is there.
pub fn value_start_after_key(object: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let at = object.find(&quoted)? + quoted.len();
    let rest = &object[at..];
    let colon = rest.trim_start().strip_prefix(':')?;
    let value = colon.trim_start();
    Some(object.len() - value.len())
}

/// The complete string value of `"key":`, if generated.
pub fn string_after_key(object: &str, key: &str) -> Option<String> {
    let start = value_start_after_key(object, key)?;
    let value = &object[start..];
    let mut scan = JsonPrefix::default();
    for (i, c) in value.char_indices() {
        scan.push(c).ok()?;
        if scan.complete() {
            return serde_json::from_str::<String>(&value[..i + c.len_utf8()]).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_prefixes() {
        for unfinished in ["{", "{\"a\": [1, 2", "{\"a\": \"x\\", "{\"a\": tr", "{\"a\": {\"b\": null}, \"c\": 1.5"] {
            assert!(JsonPrefix::is_unfinished(unfinished), "{unfinished}");
        }
        for not in ["{\"a\": 1}", "{a: 1", "{\"a\" 1", "{\"a\": 1}}", "", "{\"a\": tx", "[1,]"] {
            assert!(!JsonPrefix::is_unfinished(not), "{not}");
        }
    }

    #[test]
    fn a_cut_json_call_keeps_its_name_and_arguments_so_far() {
        let tools = vec![String::from("get_weather")];
        let section = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Par";
        assert_eq!(
            cut_call(section, &tools, None),
            Some((String::from("get_weather"), String::from("{\"city\": \"Par")))
        );
        // Before the arguments: the name alone.
        assert_eq!(
            cut_call("<tool_call>\n{\"name\": \"get_weather\", \"argu", &tools, None),
            Some((String::from("get_weather"), String::new()))
        );
        // Before the name: only a forced choice knows it.
        assert_eq!(cut_call("<tool_call>\n{\"na", &tools, None), None);
        assert_eq!(
            cut_call("<tool_call>\n{\"na", &tools, Some("get_weather")),
            Some((String::from("get_weather"), String::new()))
        );
        // Broken rather than cut: not a call.
        assert_eq!(cut_call("<tool_call>\n{\"name\": \"get_weather\", oops}\n</tool_call>", &tools, None), None);
        // A name the request does not offer: not a call.
        assert_eq!(cut_call("{\"name\": \"rm_rf\", \"arguments\": {", &tools, None), None);
    }

    #[test]
    fn prefixes_close_into_values() {
        for (prefix, closed) in [
            ("{\"city\": \"Par", "{\"city\": \"Par\"}"),
            ("{\"city\": \"Paris\", ", "{\"city\": \"Paris\"}"),
            ("{\"city\": ", "{\"city\": null}"),
            ("{\"ci", "{\"ci\": null}"),
            ("{\"a\": [1, 2", "{\"a\": [1, 2]}"),
            ("{\"a\": tr", "{\"a\": true}"),
            ("{\"a\": -", "{\"a\": 0}"),
            ("{", "{}"),
        ] {
            assert_eq!(close_prefix(prefix).as_deref(), Some(closed), "{prefix}");
        }
        assert_eq!(close_prefix("{oops"), None);
    }

    #[test]
    fn a_cut_xml_call_keeps_its_name() {
        let tools = vec![String::from("get_weather")];
        assert_eq!(
            cut_call("<tool_call>\n<function=get_weather>\n<parameter=city>\nPar", &tools, None),
            Some((String::from("get_weather"), String::new()))
        );
    }
}
