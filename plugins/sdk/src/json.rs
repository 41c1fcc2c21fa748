//! JSON helpers for parsers: validation, compact re-serialization that keeps key order,
//! and values typed by the tool's JSON schema.

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

/// `text` as compact JSON, keeping key order and number spelling, or `None` if it is not
/// one valid JSON value.
pub fn minify(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text).ok()?;
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    Some(out)
}

/// `text` as a compact JSON object, or `None` if it is not one.
pub fn object(text: &str) -> Option<String> {
    let compact = minify(text.trim())?;
    compact.starts_with('{').then_some(compact)
}

/// The top-level fields of the JSON object `text`, each value as its own text (verbatim:
/// key order and number spelling kept), or `None` if `text` is not one JSON object. One
/// pass over the text, whatever the values hold.
pub fn fields(text: &str) -> Option<BTreeMap<String, &RawValue>> {
    serde_json::from_str(text).ok()
}

/// A call's arguments as the compact JSON object text every parser emits: an object as the
/// model wrote it (key order kept), the same object double-encoded as a JSON string, or
/// `{}` for `null` or none. Anything else is an error.
pub fn arguments(raw: Option<&RawValue>) -> Result<String, String> {
    let Some(raw) = raw else { return Ok(String::from("{}")) };
    let text = raw.get().trim();
    match text.as_bytes().first() {
        Some(b'{') => object(text).ok_or_else(|| String::from("arguments are not a JSON object")),
        Some(b'"') => {
            let inner: String = serde_json::from_str(text).map_err(|e| e.to_string())?;
            if inner.trim().is_empty() {
                return Ok(String::from("{}"));
            }
            object(&inner).ok_or_else(|| String::from("arguments string is not a JSON object"))
        }
        _ if text == "null" => Ok(String::from("{}")),
        _ => Err(String::from("arguments are not a JSON object")),
    }
}

/// [`arguments`] for arguments written bare, as the text of one JSON value (`{…}`, a
/// double-encoded `"{…}"`, `null`) or nothing at all (`{}`); `None` when it is none of these.
pub fn arguments_text(text: &str) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return Some(String::from("{}"));
    }
    let raw: Box<RawValue> = serde_json::from_str(text).ok()?;
    arguments(Some(&raw)).ok()
}

/// A JSON string literal.
pub fn string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// Byte length of the JSON object or array at the start of `text` (leading whitespace
/// counted), found by matching brackets outside strings; `None` while incomplete or when
/// `text` does not start with one.
pub fn value_len(text: &str) -> Option<usize> {
    match ValueScan::default().scan(text) {
        ValueEnd::At(len) => Some(len),
        ValueEnd::Incomplete | ValueEnd::Invalid => None,
    }
}

/// Where a [`ValueScan`] got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueEnd {
    /// The value ends this many bytes into the text just scanned.
    At(usize),
    /// Not yet: scan the text that follows.
    Incomplete,
    /// The text does not start with an object or array.
    Invalid,
}

/// Matches the brackets of one JSON object or array that arrives in pieces: each piece is
/// scanned once, the state carried to the next. Brackets inside strings do not count.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ValueScan {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

impl ValueScan {
    /// Scans `text`, the bytes after those scanned by earlier calls.
    pub fn scan(&mut self, text: &str) -> ValueEnd {
        for (i, &b) in text.as_bytes().iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' => {
                    let Some(depth) = self.depth.checked_sub(1) else { return ValueEnd::Invalid };
                    self.depth = depth;
                    if depth == 0 {
                        return ValueEnd::At(i + 1);
                    }
                }
                _ if self.depth == 0 && b.is_ascii_whitespace() => {}
                _ if self.depth == 0 => return ValueEnd::Invalid,
                b'"' => self.in_string = true,
                _ => {}
            }
        }
        ValueEnd::Incomplete
    }
}

/// Builds a JSON object in insertion order.
#[derive(Debug, Default)]
pub struct ObjectBuilder {
    body: String,
}

impl ObjectBuilder {
    /// Adds `key` with `value`, which must already be JSON text.
    pub fn push(&mut self, key: &str, value: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        self.body.push_str(&string(key));
        self.body.push(':');
        self.body.push_str(value);
    }

    pub fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

/// The request's tools, for typing parameter values by their schema.
#[derive(Debug, Default, Clone)]
pub struct Tools {
    parameters: BTreeMap<String, Value>,
}

impl Tools {
    /// Parses an OpenAI `tools` array (`[{"type":"function","function":{"name",
    /// "parameters"}}]`). Anything unusable is ignored: typing is best effort.
    pub fn parse(tools_json: &str) -> Self {
        let mut parameters = BTreeMap::new();
        if let Ok(Value::Array(tools)) = serde_json::from_str::<Value>(tools_json) {
            for tool in tools {
                let function = tool.get("function").unwrap_or(&tool);
                if let Some(name) = function.get("name").and_then(Value::as_str) {
                    let params = function.get("parameters").cloned().unwrap_or(Value::Null);
                    parameters.insert(name.to_string(), params);
                }
            }
        }
        Self { parameters }
    }

    /// Whether `name` is one of the request's tools (always true when none were given).
    pub fn knows(&self, name: &str) -> bool {
        self.parameters.is_empty() || self.parameters.contains_key(name)
    }

    /// The schema `type` of parameter `key` of function `name`, if declared.
    pub fn param_type(&self, name: &str, key: &str) -> Option<String> {
        let schema = self.parameters.get(name)?.get("properties")?.get(key)?;
        match schema.get("type")? {
            Value::String(t) => Some(t.clone()),
            // ["integer", "null"]: the first non-null type decides.
            Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null").map(str::to_string),
            _ => None,
        }
    }

    /// `raw` (the text between parameter tags) as JSON typed by the declared schema type.
    /// Values that do not fit their type stay strings rather than failing the call.
    pub fn typed_value(&self, name: &str, key: &str, raw: &str) -> String {
        let trimmed = raw.trim();
        match self.param_type(name, key).as_deref() {
            Some("integer") if trimmed.parse::<i64>().is_ok() => trimmed.to_string(),
            Some("number") if trimmed.parse::<f64>().is_ok_and(f64::is_finite) => {
                minify(trimmed).unwrap_or_else(|| string(raw))
            }
            Some("boolean") if matches!(trimmed.to_ascii_lowercase().as_str(), "true" | "false") => {
                trimmed.to_ascii_lowercase()
            }
            Some("null") if trimmed == "null" => String::from("null"),
            Some("object") if trimmed.starts_with('{') => minify(trimmed).unwrap_or_else(|| string(raw)),
            Some("array") if trimmed.starts_with('[') => minify(trimmed).unwrap_or_else(|| string(raw)),
            _ => string(raw),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minify_keeps_order_and_strings() {
        assert_eq!(minify("{ \"b\": 1, \"a\" : \"x y\\\" }\" }").as_deref(), Some("{\"b\":1,\"a\":\"x y\\\" }\"}"));
        assert_eq!(minify("{\"a\": }"), None);
        assert_eq!(object("[1]"), None);
    }

    #[test]
    fn arguments_are_one_compact_object_string() {
        let call = r#"{"name": "f", "arguments": {"b": 1.50, "a": "x y"}, "n": null}"#;
        let f = fields(call).expect("object");
        assert_eq!(arguments(f.get("arguments").copied()).as_deref(), Ok(r#"{"b":1.50,"a":"x y"}"#));
        assert_eq!(arguments(f.get("missing").copied()).as_deref(), Ok("{}"));
        assert_eq!(arguments(f.get("n").copied()).as_deref(), Ok("{}"));
        let double = fields(r#"{"arguments": "{\"city\": \"Paris\"}"}"#).expect("object");
        assert_eq!(arguments(double.get("arguments").copied()).as_deref(), Ok(r#"{"city":"Paris"}"#));
        let empty = fields(r#"{"arguments": ""}"#).expect("object");
        assert_eq!(arguments(empty.get("arguments").copied()).as_deref(), Ok("{}"));
        let list = fields(r#"{"arguments": [1]}"#).expect("object");
        assert!(arguments(list.get("arguments").copied()).is_err());
        assert!(fields("[1]").is_none());
        assert_eq!(arguments_text(" {\"a\": [1, 2]} ").as_deref(), Some(r#"{"a":[1,2]}"#));
        assert_eq!(arguments_text(r#""{\"a\": 1}""#).as_deref(), Some(r#"{"a":1}"#));
        assert_eq!(arguments_text("\n").as_deref(), Some("{}"));
        assert_eq!(arguments_text("null").as_deref(), Some("{}"));
        assert_eq!(arguments_text("{\"a\": 1}{\"b\": 2}"), None);
        assert_eq!(arguments_text("[1]"), None);
    }

    #[test]
    fn value_len_matches_brackets_outside_strings() {
        assert_eq!(value_len(r#"{"a": "}{"} tail"#), Some(11));
        assert_eq!(value_len(r#"  {"a": [1, {"b": 2}]}x"#), Some(22));
        assert_eq!(value_len(r#"{"a": "#), None);
        assert_eq!(value_len("x{}"), None);
        // In pieces, each scanned once: the same answer.
        let text = r#"{"a": "}{\"", "b": [1, {"c": 2}]} tail"#;
        for cut in 1..text.len() {
            let mut scan = ValueScan::default();
            let (a, b) = text.split_at(cut);
            let got = match scan.scan(a) {
                ValueEnd::At(n) => n,
                ValueEnd::Incomplete => cut + value_len_rest(&mut scan, b),
                ValueEnd::Invalid => panic!("invalid at cut {cut}"),
            };
            assert_eq!(got, text.len() - " tail".len(), "cut {cut}");
        }
    }

    fn value_len_rest(scan: &mut ValueScan, text: &str) -> usize {
        match scan.scan(text) {
            ValueEnd::At(n) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn values_are_typed_by_schema() {
        let tools = Tools::parse(
            r#"[{"type":"function","function":{"name":"f","parameters":{"properties":{
                "n":{"type":"integer"},"x":{"type":"number"},"ok":{"type":"boolean"},
                "o":{"type":"object"},"l":{"type":["array","null"]},"s":{"type":"string"}}}}}]"#,
        );
        assert_eq!(tools.typed_value("f", "n", " 5\n"), "5");
        assert_eq!(tools.typed_value("f", "n", "five"), "\"five\"");
        assert_eq!(tools.typed_value("f", "x", "2.50"), "2.50");
        assert_eq!(tools.typed_value("f", "ok", "True"), "true");
        assert_eq!(tools.typed_value("f", "o", "{\"a\": 1}"), "{\"a\":1}");
        assert_eq!(tools.typed_value("f", "l", "[1, 2]"), "[1,2]");
        assert_eq!(tools.typed_value("f", "s", "5"), "\"5\"");
        assert_eq!(tools.typed_value("g", "n", "5"), "\"5\"");
        assert!(tools.knows("f") && !tools.knows("g"));
        assert!(Tools::parse("[]").knows("anything"));
    }
}
