//! Structured output: `response_format` and forced tool calls become a grammar that the
//! engine decodes under, so the output is valid by construction.
//!
//! Forced tool calls use the tool-call parser plugin's own grammar for its wire format
//! (`tool-call-grammar`); when the plugin offers none, or its grammar does not compile, the
//! host constrains the output to one bare `{"name": …, "arguments": …}` object and turns
//! it into the call itself ([`HostCalls`]), so tool forcing works with any parser.
//!
//! When the request allows one call only (a named `tool_choice`, or `parallel_tool_calls:
//! false`), the grammar ends after that call ([`one_call`]), as OpenAI answers.

use serde_json::{Value, json};

use super::{AppError, AppState};
use crate::engine::constraint::{Constraint, ConstraintError, GrammarCompiler};
use crate::parsers::partial::{JsonPrefix, string_after_key, value_start_after_key};
use crate::parsers::pipeline::new_call_id;
use crate::parsers::{ParseEvent, tool_call_grammar};
use crate::plugins::PluginSet;

/// The JSON schema `response_format` asks for, if any.
pub fn response_format_schema(format: Option<&Value>) -> Result<Option<Value>, AppError> {
    let Some(format) = format else { return Ok(None) };
    let bad = |message: &str| AppError::BadRequest {
        message: message.to_string(),
        param: Some("response_format"),
        code: "invalid_response_format",
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({ "type": "object" }))),
        Some("json_schema") => {
            let spec = format
                .get("json_schema")
                .and_then(Value::as_object)
                .ok_or_else(|| bad("`response_format.json_schema` must be an object with `name` and `schema`"))?;
            match spec.get("schema") {
                None => Ok(Some(json!({ "type": "object" }))),
                Some(schema @ (Value::Object(_) | Value::Bool(true))) => Ok(Some(schema.clone())),
                Some(_) => Err(bad("`response_format.json_schema.schema` must be a JSON schema object")),
            }
        }
        Some(other) => {
            Err(bad(&format!("`response_format.type` `{other}` is not one of text, json_object, json_schema")))
        }
        None => Err(bad("`response_format` needs a `type`")),
    }
}

/// A request's grammar, and who reads the calls out of the output.
#[derive(Debug)]
pub struct OutputConstraint {
    pub constraint: Constraint,
    /// The output is one bare call object that the host itself turns into a tool call.
    pub host_calls: bool,
}

fn compiler(state: &AppState) -> Result<&GrammarCompiler, AppError> {
    state.engine.grammar().map_err(|e| AppError::Internal(e.to_string()))
}

/// A failed compilation of a client's schema: the schema's fault is a 400 naming the field.
fn client_schema_error(e: ConstraintError, what: &str, param: &'static str, code: &'static str) -> AppError {
    match e {
        ConstraintError::Grammar(message) => {
            AppError::BadRequest { message: format!("{what} cannot be used: {message}"), param: Some(param), code }
        }
        ConstraintError::Busy => AppError::Busy(e.to_string()),
        other => AppError::Internal(other.to_string()),
    }
}

/// Constrains the output to `schema` (`response_format`).
pub fn json_output(state: &AppState, schema: &Value) -> Result<OutputConstraint, AppError> {
    let constraint = compiler(state)?.compile(GrammarCompiler::json_schema(schema)).map_err(|e| {
        client_schema_error(e, "`response_format` schema", "response_format", "invalid_response_format")
    })?;
    Ok(OutputConstraint { constraint, host_calls: false })
}

/// Constrains the output to calls of `tools` (already narrowed to the named one, if any);
/// to exactly one call when `single`.
pub fn forced_tool_calls(
    state: &AppState,
    plugins: &PluginSet,
    tools: &[Value],
    single: bool,
) -> Result<OutputConstraint, AppError> {
    let compiler = compiler(state)?;
    let tools_json = Value::Array(tools.to_vec()).to_string();
    if let Some(parser) = state.tool_parser.as_deref() {
        let grammar = tool_call_grammar(plugins, parser, &tools_json)
            .map(|lark| lark.map(|lark| if single { one_call(&lark).unwrap_or(lark) } else { lark }));
        match grammar {
            Ok(Some(lark)) => match compiler.compile(GrammarCompiler::lark(&lark)) {
                Ok(constraint) => return Ok(OutputConstraint { constraint, host_calls: false }),
                Err(ConstraintError::Busy) => return Err(AppError::Busy(ConstraintError::Busy.to_string())),
                Err(e) => {
                    // The plugin's fault: fall back as other plugin failures do.
                    super::metrics::Metrics::add(&state.metrics.parser_failures, 1);
                    tracing::warn!("tool-call grammar of parser `{parser}` does not compile, using JSON: {e}");
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("parser `{parser}` failed to give a tool-call grammar, using JSON: {e}"),
        }
    }
    let schema =
        host_call_schema(tools).ok_or_else(|| AppError::bad("every tool needs a `function.name`", Some("tools")))?;
    let constraint = compiler
        .compile(GrammarCompiler::json_schema(&schema))
        .map_err(|e| client_schema_error(e, "a tool's `parameters` schema", "tools", "invalid_tool_schema"))?;
    Ok(OutputConstraint { constraint, host_calls: true })
}

/// A plugin's tool-call grammar cut to exactly one call. The SDK's grammars (and the
/// convention documented for plugin authors) name one call `tool_call` and repeat it in
/// `start` (`start: tool_call (SEP tool_call)*`); `start: tool_call` ends the output after
/// the first. `None` when the grammar has no `tool_call` rule: it is used whole, and the
/// response keeps the first call only.
pub fn one_call(lark: &str) -> Option<String> {
    let rule = |line: &str, name: &str| {
        line.trim_start().strip_prefix(name).is_some_and(|rest| rest.trim_start().starts_with(':'))
    };
    if !lark.lines().any(|l| rule(l, "tool_call")) || !lark.lines().any(|l| rule(l, "start")) {
        return None;
    }
    let mut out = String::new();
    let mut in_start = false;
    for line in lark.lines() {
        if rule(line, "start") {
            out.push_str("start: tool_call\n");
            in_start = true;
            continue;
        }
        // Alternatives of `start` continued on the next lines.
        if in_start && line.trim_start().starts_with('|') {
            continue;
        }
        in_start = false;
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

/// `{"name": NAME, "arguments": PARAMETERS}` for any of `tools`.
fn host_call_schema(tools: &[Value]) -> Option<Value> {
    rapid_plugin_sdk::grammar::call_object_schema(tools, "name", "arguments")
}

/// Reads the constrained bare call object `{"name": …, "arguments": {…}}` as it streams:
/// the call begins once its name is out, and the arguments go out as they are generated.
#[derive(Debug, Default)]
pub struct HostCalls {
    text: String,
    /// Where the call object starts in `text`.
    object: Option<usize>,
    begun: bool,
    /// Where the arguments' text starts in `text`, once `"arguments":` is out.
    arguments: Option<usize>,
    /// How far the arguments have been read.
    read: usize,
    json: JsonPrefix,
    ended: bool,
    broken: bool,
}

impl HostCalls {
    pub fn feed(&mut self, text: &str) -> Vec<ParseEvent> {
        self.text.push_str(text);
        let mut out = Vec::new();
        if self.broken || self.ended {
            return out;
        }
        let Some(open) = self.object.or_else(|| self.text.find('{')) else { return out };
        self.object = Some(open);
        let object = &self.text[open..];
        if !self.begun
            && let Some(name) = string_after_key(object, "name")
        {
            self.begun = true;
            out.push(ParseEvent::ToolCallBegin { index: 0, id: new_call_id(), name });
        }
        if self.begun
            && self.arguments.is_none()
            && let Some(at) = value_start_after_key(object, "arguments")
        {
            self.arguments = Some(open + at);
            self.read = open + at;
        }
        if self.arguments.is_some() {
            let start = self.read;
            for (i, c) in self.text[start..].char_indices() {
                if self.json.push(c).is_err() {
                    self.broken = true;
                    break;
                }
                self.read = start + i + c.len_utf8();
                if self.json.complete() {
                    self.ended = true;
                    break;
                }
            }
            let fragment = self.text[start..self.read].trim_start();
            if !fragment.is_empty() {
                out.push(ParseEvent::ToolCallArguments { index: 0, fragment: fragment.to_string() });
            }
            if self.ended {
                out.push(ParseEvent::ToolCallEnd(0));
            }
        }
        out
    }

    /// End of output. A call cut short keeps its arguments so far and gets no end; when
    /// nothing named the function yet, `forced` (a named `tool_choice`) still makes it a call.
    pub fn finish(&mut self, forced: Option<&str>) -> Vec<ParseEvent> {
        match (self.begun, forced) {
            _ if self.broken => vec![ParseEvent::Malformed(format!("not a call object: {}", self.text))],
            (true, _) => Vec::new(),
            (false, Some(name)) => {
                vec![ParseEvent::ToolCallBegin { index: 0, id: new_call_id(), name: name.to_string() }]
            }
            (false, None) => vec![ParseEvent::Malformed(String::from("no tool call was generated"))],
        }
    }

    /// The call is complete: nothing after it belongs to the answer.
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats() {
        assert_eq!(response_format_schema(None).ok(), Some(None));
        assert_eq!(response_format_schema(Some(&json!({"type": "text"}))).ok(), Some(None));
        assert_eq!(
            response_format_schema(Some(&json!({"type": "json_object"}))).ok(),
            Some(Some(json!({"type": "object"})))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            response_format_schema(Some(
                &json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
            ))
            .ok(),
            Some(Some(schema))
        );
        for bad in [
            json!({"type": "yaml"}),
            json!({}),
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"schema": 3}}),
        ] {
            assert!(response_format_schema(Some(&bad)).is_err(), "{bad}");
        }
    }

    fn fed(calls: &mut HostCalls, pieces: &[&str]) -> Vec<ParseEvent> {
        pieces.iter().flat_map(|p| calls.feed(p)).collect()
    }

    #[test]
    fn host_calls_stream_the_arguments_as_generated() {
        let mut calls = HostCalls::default();
        let events =
            fed(&mut calls, &["{\"name\": \"get_w", "eather\", \"arguments\": {\"ci", "ty\": \"Paris\"}", "}"]);
        assert!(matches!(&events[0], ParseEvent::ToolCallBegin { index: 0, name, .. } if name == "get_weather"));
        assert_eq!(events[1], ParseEvent::ToolCallArguments { index: 0, fragment: String::from("{\"ci") });
        assert_eq!(events[2], ParseEvent::ToolCallArguments { index: 0, fragment: String::from("ty\": \"Paris\"}") });
        assert_eq!(events[3], ParseEvent::ToolCallEnd(0));
        assert_eq!(events.len(), 4);
        assert!(calls.ended());
        assert!(calls.finish(None).is_empty());
    }

    #[test]
    fn cut_host_calls_keep_their_arguments_so_far() {
        let mut calls = HostCalls::default();
        let events = fed(&mut calls, &["{\"name\": \"get_weather\", \"argu", "ments\": {\"city\": \"Pa"]);
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[1], ParseEvent::ToolCallArguments { index: 0, fragment: String::from("{\"city\": \"Pa") });
        assert!(calls.finish(Some("get_weather")).is_empty(), "no end for a cut call");
        // Cut before the name: a named choice is still a call, anything else is nothing.
        let mut calls = HostCalls::default();
        assert!(fed(&mut calls, &["{\"na"]).is_empty());
        assert!(
            matches!(&calls.finish(Some("get_weather"))[..], [ParseEvent::ToolCallBegin { name, .. }] if name == "get_weather")
        );
        let mut calls = HostCalls::default();
        assert!(matches!(&calls.finish(None)[..], [ParseEvent::Malformed(_)]));
    }

    #[test]
    fn one_call_grammars_end_after_the_first_call() {
        let lark = "start: tool_call (\"\\n\" tool_call)*\ntool_call: \"<tool_call>\" payload \"</tool_call>\"\npayload: %json {}\n";
        let one = one_call(lark).expect("has a tool_call rule");
        assert!(one.starts_with("start: tool_call\n"), "{one}");
        assert!(one.contains("tool_call: \"<tool_call>\" payload"), "{one}");
        assert_eq!(one.lines().count(), 3, "{one}");
        assert_eq!(one_call("start: call+\ncall: \"x\"\n"), None);
    }
}
