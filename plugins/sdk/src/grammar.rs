//! Grammars (Lark, llguidance dialect) that constrain decoding to a tool-call wire format.
//!
//! The host asks a parser plugin for `tool-call-grammar(parser, tools-json)` when a request
//! forces a tool call (`tool_choice` `required` or a named function). The grammar's `start`
//! rule must match a whole answer made of one or more calls; `tools-json` already holds only
//! the tools the model may call. JSON payloads are written with `%json { schema }`.
//!
//! One call is the rule `tool_call`: when a request allows a single call (a named
//! `tool_choice`, `parallel_tool_calls: false`), the host replaces `start` with
//! `start: tool_call`, so decoding ends after it. The builders here follow that convention.

use serde_json::{Value, json};

/// `x-guidance` options for compact JSON: small models otherwise spend tokens on blank lines.
pub fn compact_json_options() -> Value {
    json!({ "whitespace_flexible": false, "item_separator": ", ", "key_separator": ": " })
}

/// A tool's parameters schema (an object schema when the tool gives none).
pub fn parameters_schema(tool: &Value) -> Value {
    let function = tool.get("function").unwrap_or(tool);
    match function.get("parameters") {
        Some(p @ Value::Object(_)) => p.clone(),
        _ => json!({ "type": "object" }),
    }
}

/// Function names in `tools_json`, in order.
pub fn tool_names(tools: &[Value]) -> Vec<String> {
    tools
        .iter()
        .filter_map(|t| t.get("function").unwrap_or(t).get("name").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// JSON schema of one call object `{"<name_key>": NAME, "<arguments_key>": ARGS}` for any of
/// `tools`, with the name first, as the model writes it.
///
/// A tool's `parameters` may hold `$defs` / `definitions` and `$ref`s into them (or `#`
/// for the parameters themselves); wrapped inside the call object, those would point at
/// the wrong root, so each tool's definitions move to the wrapper's `$defs` under a
/// per-tool prefix and its references are rewritten to match.
pub fn call_object_schema(tools: &[Value], name_key: &str, arguments_key: &str) -> Option<Value> {
    let mut defs = serde_json::Map::new();
    let variants: Vec<Value> = tools
        .iter()
        .enumerate()
        .filter_map(|(i, tool)| {
            let name = tool.get("function").unwrap_or(tool).get("name").and_then(Value::as_str)?;
            let arguments = hoist_definitions(parameters_schema(tool), &format!("tool{i}"), &mut defs);
            Some(json!({
                "type": "object",
                "properties": { name_key: { "const": name }, arguments_key: arguments },
                "required": [name_key, arguments_key],
                "additionalProperties": false,
            }))
        })
        .collect();
    if variants.is_empty() {
        return None;
    }
    let mut schema = if variants.len() == 1 { variants[0].clone() } else { json!({ "anyOf": variants }) };
    if !defs.is_empty() {
        schema["$defs"] = Value::Object(defs);
    }
    schema["x-guidance"] = compact_json_options();
    Some(schema)
}

/// Moves `params`' own definitions into `defs` as `<prefix>-<name>`, rewrites its local
/// `$ref`s to them, and returns what stands in for `params` (a `$ref` to its moved copy
/// when it refers to itself with `#`).
fn hoist_definitions(mut params: Value, prefix: &str, defs: &mut serde_json::Map<String, Value>) -> Value {
    let mut own = serde_json::Map::new();
    if let Some(obj) = params.as_object_mut() {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(map)) = obj.remove(key) {
                own.extend(map);
            }
        }
    }
    let mut refers_to_root = false;
    rewrite_refs(&mut params, prefix, &mut refers_to_root);
    for (name, mut def) in own {
        rewrite_refs(&mut def, prefix, &mut refers_to_root);
        defs.insert(format!("{prefix}-{name}"), def);
    }
    if refers_to_root {
        defs.insert(prefix.to_string(), params);
        json!({ "$ref": format!("#/$defs/{prefix}") })
    } else {
        params
    }
}

fn rewrite_refs(value: &mut Value, prefix: &str, refers_to_root: &mut bool) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get_mut("$ref") {
                let rest = target.strip_prefix("#/$defs/").or_else(|| target.strip_prefix("#/definitions/"));
                if let Some(rest) = rest {
                    *target = format!("#/$defs/{prefix}-{rest}");
                } else if target == "#" {
                    *refers_to_root = true;
                    *target = format!("#/$defs/{prefix}");
                } else if let Some(rest) = target.strip_prefix("#/") {
                    // A pointer into the parameters themselves.
                    *refers_to_root = true;
                    *target = format!("#/$defs/{prefix}/{rest}");
                }
            }
            for (key, v) in map.iter_mut() {
                if key != "$ref" {
                    rewrite_refs(v, prefix, refers_to_root);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, prefix, refers_to_root)),
        _ => {}
    }
}

/// A Lark string literal for `text`.
pub fn literal(text: &str) -> String {
    Value::String(text.to_string()).to_string()
}

/// Calls written as `OPEN` JSON-object `CLOSE`, joined by `separator`:
/// `start: tool_call (SEP tool_call)*`.
pub fn json_calls_in_markers(
    tools_json: &str,
    open: &str,
    close: &str,
    separator: &str,
    name_key: &str,
    arguments_key: &str,
) -> Option<String> {
    let tools: Vec<Value> = serde_json::from_str(tools_json).ok()?;
    let schema = call_object_schema(&tools, name_key, arguments_key)?;
    // Lark has no empty literal: an empty marker is simply left out.
    let lit = |text: &str| if text.is_empty() { String::new() } else { literal(text) };
    Some(format!(
        "start: tool_call ({sep} tool_call)*\ntool_call: {open} payload {close}\npayload: %json {schema}\n",
        sep = lit(separator),
        open = lit(open),
        close = lit(close),
    ))
}

/// The value of one `<parameter=KEY>` in the Qwen3-Coder XML format: strings are written
/// raw (text without `<`, the format has no escaping; a string `enum` as its literals),
/// every other type as JSON under the parameter's own schema (so `minimum`, `enum`, nested
/// objects hold). Each ends with the newline before the closer.
fn xml_value(schema: &Value) -> String {
    let kind = schema.get("type").and_then(Value::as_str);
    let strings: Option<Vec<&str>> =
        schema.get("enum").and_then(Value::as_array).map(|o| o.iter().filter_map(Value::as_str).collect());
    match (kind, strings) {
        (_, Some(options)) if !options.is_empty() && Some(options.len()) == schema["enum"].as_array().map(Vec::len) => {
            let texts: Vec<String> = options.iter().map(|o| literal(&format!("{o}\n"))).collect();
            format!("({})", texts.join(" | "))
        }
        (Some("string") | None, _) => String::from("/[^<\\n][^<]*\\n/"),
        _ => {
            let mut schema = schema.clone();
            schema["x-guidance"] = compact_json_options();
            format!("%json {schema} \"\\n\"")
        }
    }
}

/// Calls in the Qwen3-Coder XML format: `<tool_call>\n<function=NAME>\n<parameter=KEY>\n
/// VALUE\n</parameter>\n</function>\n</tool_call>`, required parameters in schema order.
pub fn qwen_xml_calls(tools_json: &str) -> Option<String> {
    let tools: Vec<Value> = serde_json::from_str(tools_json).ok()?;
    let mut rules = Vec::new();
    let mut functions = Vec::new();
    for (f, tool) in tools.iter().enumerate() {
        let function = tool.get("function").unwrap_or(tool);
        let name = function.get("name").and_then(Value::as_str)?;
        let params = parameters_schema(tool);
        // Each parameter's schema becomes a grammar root of its own: it carries the
        // tool's definitions so `$ref`s into them still resolve.
        let definitions: Vec<(&str, &Value)> =
            ["$defs", "definitions"].into_iter().filter_map(|k| params.get(k).map(|d| (k, d))).collect();
        let required: Vec<&str> = params
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut body = Vec::new();
        for (k, key) in required.iter().enumerate() {
            let mut schema = params.pointer(&format!("/properties/{key}")).cloned().unwrap_or(Value::Null);
            if let Some(obj) = schema.as_object_mut() {
                for (k, d) in &definitions {
                    obj.entry(k.to_string()).or_insert_with(|| (*d).clone());
                }
            }
            rules.push(format!(
                "f{f}_p{k}: {} {} \"</parameter>\\n\"",
                literal(&format!("<parameter={key}>\n")),
                xml_value(&schema)
            ));
            body.push(format!("f{f}_p{k}"));
        }
        rules.push(format!("f{f}: {} {} \"</function>\\n\"", literal(&format!("<function={name}>\n")), body.join(" ")));
        functions.push(format!("f{f}"));
    }
    if functions.is_empty() {
        return None;
    }
    Some(format!(
        "start: tool_call (\"\\n\" tool_call)*\ntool_call: \"<tool_call>\\n\" ({}) \"</tool_call>\"\n{}\n",
        functions.join(" | "),
        rules.join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_schema_pins_names_and_keeps_parameters() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "now"}}
        ]);
        let schema = call_object_schema(tools.as_array().expect("array"), "name", "arguments").expect("schema");
        let variants = schema["anyOf"].as_array().expect("anyOf");
        assert_eq!(variants.len(), 2);
        assert_eq!(variants[0]["properties"]["name"]["const"], "get_weather");
        assert_eq!(variants[0]["properties"]["arguments"]["required"][0], "city");
        assert_eq!(variants[1]["properties"]["arguments"], json!({"type": "object"}));
        assert_eq!(schema["x-guidance"]["whitespace_flexible"], false);
    }

    #[test]
    fn tool_definitions_move_to_the_wrapper_root() {
        let tools = json!([
            {"type": "function", "function": {"name": "add", "parameters": {
                "type": "object",
                "properties": {"item": {"$ref": "#/$defs/Item"}, "next": {"$ref": "#"}},
                "$defs": {"Item": {"type": "object", "properties": {"sku": {"type": "string"}, "more": {"$ref": "#/definitions/Tag"}}}},
                "definitions": {"Tag": {"type": "string"}}
            }}},
            {"type": "function", "function": {"name": "other", "parameters": {
                "type": "object", "properties": {"item": {"$ref": "#/$defs/Item"}},
                "$defs": {"Item": {"type": "integer"}}
            }}}
        ]);
        let schema = call_object_schema(tools.as_array().expect("array"), "name", "arguments").expect("schema");
        let defs = &schema["$defs"];
        // The first tool refers to itself: its parameters moved too, and are referenced.
        assert_eq!(schema["anyOf"][0]["properties"]["arguments"], json!({"$ref": "#/$defs/tool0"}));
        assert_eq!(defs["tool0"]["properties"]["item"]["$ref"], "#/$defs/tool0-Item");
        assert_eq!(defs["tool0"]["properties"]["next"]["$ref"], "#/$defs/tool0");
        assert_eq!(defs["tool0-Item"]["properties"]["more"]["$ref"], "#/$defs/tool0-Tag");
        assert_eq!(defs["tool0-Tag"], json!({"type": "string"}));
        // The second keeps its parameters inline; same definition name, no collision.
        assert_eq!(schema["anyOf"][1]["properties"]["arguments"]["properties"]["item"]["$ref"], "#/$defs/tool1-Item");
        assert_eq!(defs["tool1-Item"], json!({"type": "integer"}));
        assert!(schema["anyOf"][1]["properties"]["arguments"].get("$defs").is_none());
    }

    #[test]
    fn markers_become_escaped_literals() {
        let tools = r#"[{"type":"function","function":{"name":"f"}}]"#;
        let lark = json_calls_in_markers(tools, "<tool_call>\n", "\n</tool_call>", "\n", "name", "arguments")
            .expect("grammar");
        assert!(lark.starts_with("start: tool_call (\"\\n\" tool_call)*\n"), "{lark}");
        assert!(lark.contains("tool_call: \"<tool_call>\\n\" payload \"\\n</tool_call>\""), "{lark}");
        assert!(lark.contains("payload: %json {"), "{lark}");
    }

    #[test]
    fn qwen_xml_grammar_types_each_required_parameter() {
        let tools = r#"[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object",
            "properties":{"city":{"type":"string"},"days":{"type":"integer"},"unit":{"enum":["c","f"]}},
            "required":["city","days","unit"]}}}]"#;
        let lark = qwen_xml_calls(tools).expect("grammar");
        assert!(lark.contains("f0: \"<function=get_weather>\\n\" f0_p0 f0_p1 f0_p2 \"</function>\\n\""), "{lark}");
        assert!(lark.contains("f0_p1: \"<parameter=days>\\n\" %json {"), "{lark}");
        assert!(lark.contains("(\"c\\n\" | \"f\\n\")"), "{lark}");
        assert_eq!(qwen_xml_calls("[]"), None);
    }

    #[test]
    fn no_tools_no_grammar() {
        assert_eq!(json_calls_in_markers("[]", "<a>", "</a>", "", "name", "arguments"), None);
        assert_eq!(json_calls_in_markers("not json", "<a>", "</a>", "", "name", "arguments"), None);
    }
}
