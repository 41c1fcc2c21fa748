//! Structured output: `response_format` and forced tool calls become a grammar that the
//! engine decodes under, so the output is valid by construction.
//!
//! Forced tool calls use the tool-call parser plugin's own grammar for its wire format
//! (`tool-call-grammar`); when the plugin offers none, or its grammar does not compile, the
//! host constrains the output to one bare `{"name": …, "arguments": …}` object and turns
//! it into the call itself ([`HostCalls`]), so tool forcing works with any parser.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{AppError, AppState};
use crate::engine::constraint::{Constraint, ConstraintError, GrammarCompiler};
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

/// Constrains the output to `schema` (`response_format`).
pub fn json_output(state: &AppState, schema: &Value) -> Result<OutputConstraint, AppError> {
    let constraint = compiler(state)?.compile(GrammarCompiler::json_schema(schema)).map_err(|e| match e {
        ConstraintError::Grammar(message) => AppError::BadRequest {
            message: format!("`response_format` schema cannot be used: {message}"),
            param: Some("response_format"),
            code: "invalid_response_format",
        },
        other => AppError::Internal(other.to_string()),
    })?;
    Ok(OutputConstraint { constraint, host_calls: false })
}

/// Constrains the output to calls of `tools` (already narrowed to the named one, if any).
pub fn forced_tool_calls(state: &AppState, plugins: &PluginSet, tools: &[Value]) -> Result<OutputConstraint, AppError> {
    let compiler = compiler(state)?;
    let tools_json = Value::Array(tools.to_vec()).to_string();
    if let Some(parser) = state.tool_parser.as_deref() {
        match tool_call_grammar(plugins, parser, &tools_json) {
            Ok(Some(lark)) => match compiler.compile(GrammarCompiler::lark(&lark)) {
                Ok(constraint) => return Ok(OutputConstraint { constraint, host_calls: false }),
                Err(e) => tracing::warn!("tool-call grammar of parser `{parser}` does not compile, using JSON: {e}"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!("parser `{parser}` failed to give a tool-call grammar, using JSON: {e}"),
        }
    }
    let schema =
        host_call_schema(tools).ok_or_else(|| AppError::bad("every tool needs a `function.name`", Some("tools")))?;
    let constraint = compiler.compile(GrammarCompiler::json_schema(&schema)).map_err(|e| match e {
        ConstraintError::Grammar(message) => AppError::BadRequest {
            message: format!("a tool's `parameters` schema cannot be used: {message}"),
            param: Some("tools"),
            code: "invalid_tool_schema",
        },
        other => AppError::Internal(other.to_string()),
    })?;
    Ok(OutputConstraint { constraint, host_calls: true })
}

/// `{"name": NAME, "arguments": PARAMETERS}` for any of `tools`.
fn host_call_schema(tools: &[Value]) -> Option<Value> {
    rapid_plugin_sdk::grammar::call_object_schema(tools, "name", "arguments")
}

/// Collects a constrained bare call object and emits it as a tool call at the end.
#[derive(Debug, Default)]
pub struct HostCalls {
    text: String,
}

#[derive(Deserialize)]
struct BareCall<'a> {
    name: String,
    #[serde(borrow)]
    arguments: &'a RawValue,
}

impl HostCalls {
    pub fn feed(&mut self, text: &str) {
        self.text.push_str(text);
    }

    pub fn finish(&mut self) -> Vec<ParseEvent> {
        let text = std::mem::take(&mut self.text);
        match serde_json::from_str::<BareCall>(&text) {
            Ok(call) => vec![
                ParseEvent::ToolCallBegin { index: 0, id: new_call_id(), name: call.name },
                ParseEvent::ToolCallArguments {
                    index: 0,
                    fragment: rapid_plugin_sdk::json::object(call.arguments.get())
                        .unwrap_or_else(|| call.arguments.get().to_string()),
                },
                ParseEvent::ToolCallEnd(0),
            ],
            // Cut short (max_tokens): what was generated is still the answer.
            Err(e) if text.is_empty() => vec![ParseEvent::Malformed(format!("no tool call was generated: {e}"))],
            Err(e) => vec![ParseEvent::Content(text), ParseEvent::Malformed(format!("incomplete tool call: {e}"))],
        }
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

    #[test]
    fn host_calls_become_one_call_with_the_models_argument_text() {
        let mut calls = HostCalls::default();
        calls.feed("{\"name\": \"get_weather\", ");
        calls.feed("\"arguments\": {\"city\": \"Paris\", \"unit\": \"c\"}}");
        let events = calls.finish();
        assert!(matches!(&events[0], ParseEvent::ToolCallBegin { index: 0, name, .. } if name == "get_weather"));
        assert_eq!(
            events[1],
            ParseEvent::ToolCallArguments { index: 0, fragment: String::from("{\"city\":\"Paris\",\"unit\":\"c\"}") }
        );
        assert_eq!(events[2], ParseEvent::ToolCallEnd(0));
    }

    #[test]
    fn truncated_host_calls_stay_content() {
        let mut calls = HostCalls::default();
        calls.feed("{\"name\": \"get_weather\", \"argu");
        let events = calls.finish();
        assert_eq!(events[0], ParseEvent::Content(String::from("{\"name\": \"get_weather\", \"argu")));
        assert!(matches!(events[1], ParseEvent::Malformed(_)));
    }
}
