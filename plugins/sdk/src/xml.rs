//! Helpers for XML-ish tool-call formats (`<function=NAME><parameter=K>V</parameter>`,
//! `<invoke name="N"><parameter name="K">V</parameter>`, `<arg_key>K</arg_key>`).

use crate::json::{ObjectBuilder, Tools};
use crate::markers::find_first;
use crate::tool_calls::Call;

/// Strips one leading and one trailing newline: the templates put values on their own line.
pub fn strip_newlines(value: &str) -> &str {
    let v = value.strip_prefix("\r\n").or_else(|| value.strip_prefix('\n')).unwrap_or(value);
    v.strip_suffix("\r\n").or_else(|| v.strip_suffix('\n')).unwrap_or(v)
}

/// Parses every `<function=NAME>…</function>` block in `text` (Qwen3-Coder XML).
pub fn function_blocks(text: &str, tools: &Tools) -> Result<Vec<Call>, String> {
    let mut calls = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<function=") {
        let after = &rest[start + "<function=".len()..];
        let name_end = after.find('>').ok_or("unterminated <function=")?;
        let name = after[..name_end].trim();
        if name.is_empty() {
            return Err(String::from("empty function name"));
        }
        let body_all = &after[name_end + 1..];
        let (body, next) = match body_all.find("</function>") {
            Some(end) => (&body_all[..end], &body_all[end + "</function>".len()..]),
            None => (body_all, ""),
        };
        let mut args = ObjectBuilder::default();
        let mut params = body;
        while let Some(p) = params.find("<parameter=") {
            let after_p = &params[p + "<parameter=".len()..];
            let key_end = after_p.find('>').ok_or("unterminated <parameter=")?;
            let key = after_p[..key_end].trim();
            let value_all = &after_p[key_end + 1..];
            // A missing </parameter> ends at the next parameter or the end of the body.
            let (value, after_value) = match find_first(value_all, &["</parameter>", "<parameter="]) {
                Some((end, 0)) => (&value_all[..end], &value_all[end + "</parameter>".len()..]),
                Some((end, _)) => (&value_all[..end], &value_all[end..]),
                None => (value_all, ""),
            };
            args.push(key, &tools.typed_value(name, key, strip_newlines(value)));
            params = after_value;
        }
        calls.push(Call::new(name, args.finish()));
        rest = next;
    }
    if calls.is_empty() { Err(String::from("no <function=…> block")) } else { Ok(calls) }
}

/// The value of attribute `attr` in a tag's text: `name="x"` → `x`.
pub fn attribute<'a>(tag: &'a str, attr: &str) -> Option<&'a str> {
    let pattern = format!("{attr}=");
    let at = tag.find(&pattern)? + pattern.len();
    let rest = &tag[at..];
    let quote = rest.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let body = &rest[1..];
    body.find(quote).map(|end| &body[..end])
}
