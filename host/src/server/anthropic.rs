//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API over
//! the one request path ([`super::request`]), with its own wire types, event sequence and
//! error envelope.
//!
//! Streams go `message_start`, `ping`, then per content block (indices 0, 1, 2 in order)
//! `content_block_start`, deltas of the block's own type (`thinking_delta` and a closing
//! `signature_delta`, `text_delta`, `input_json_delta`), `content_block_stop`; then
//! `message_delta` (stop reason, `usage.output_tokens`) and `message_stop`. Thinking blocks
//! come from the reasoning parser and are never empty.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::output::Finish;
use super::request::{self, ChatInput, Message, Outcome, PastCall, Role, Step, Tool, ToolChoice};
use super::{AppError, AppState, JsonBody};
use crate::engine::SamplingParams;
use crate::parsers::ParseEvent;

/// An [`AppError`] in Anthropic's envelope: `{"type":"error","error":{"type","message"}}`.
#[derive(Debug)]
pub struct AnthropicError(pub AppError);

impl From<AppError> for AnthropicError {
    fn from(e: AppError) -> Self {
        Self(e)
    }
}

/// Anthropic's error type for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

/// Anthropic's error body.
pub fn error_body(status: StatusCode, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

impl IntoResponse for AnthropicError {
    fn into_response(self) -> Response {
        let message = self.0.to_string();
        let mut response = self.0.into_response();
        let status = response.status();
        let body = Json(error_body(status, &message)).into_response().into_body();
        *response.body_mut() = body;
        response
    }
}

#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub max_tokens: Option<usize>,
    pub messages: Vec<InMessage>,
    pub system: Option<Value>,
    #[serde(default)]
    pub stream: bool,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub thinking: Option<Value>,
    /// Structured outputs: `{"format": {"type": "json_schema", "schema": …}}`.
    pub output_config: Option<Value>,
    /// The beta's earlier spelling of `output_config.format`.
    pub output_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: String,
    pub content: Value,
}

fn bad(message: impl Into<String>) -> AppError {
    AppError::bad(message, None)
}

/// Text of `system`: a string or a list of text blocks.
fn system_text(system: &Value) -> Result<String, AppError> {
    match system {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut texts = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                    other => {
                        return Err(bad(format!(
                            "`system` blocks must be text blocks, not {}",
                            other.unwrap_or("untyped")
                        )));
                    }
                }
            }
            Ok(texts.join("\n\n"))
        }
        _ => Err(bad("`system` must be a string or a list of text blocks")),
    }
}

/// Text of a `tool_result`'s content: a string or a list of text blocks.
fn tool_result_text(content: Option<&Value>) -> Result<String, AppError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut texts = Vec::new();
            for block in blocks {
                match block.get("type").and_then(Value::as_str) {
                    Some("text") => texts.push(block.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some("image" | "document") => {
                        return Err(bad("image and document content is not supported by this text model"));
                    }
                    other => return Err(bad(format!("unknown `tool_result` content block {other:?}"))),
                }
            }
            Ok(texts.join("\n"))
        }
        Some(_) => Err(bad("`tool_result.content` must be a string or a list of blocks")),
    }
}

/// Anthropic messages in the internal model. A `system` role inside `messages` (Claude Code
/// sends one) is a system message like the top-level `system`.
fn messages(req: &MessagesRequest) -> Result<Vec<Message>, AppError> {
    let mut out = Vec::new();
    let system = system_text(req.system.as_ref().unwrap_or(&Value::Null))?;
    if !system.is_empty() {
        out.push(Message::text(Role::System, system));
    }
    if req.messages.is_empty() {
        return Err(bad("`messages` must not be empty"));
    }
    for m in &req.messages {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" => Role::System,
            other => return Err(bad(format!("unknown message role `{other}`; use user or assistant"))),
        };
        if role == Role::System {
            let text = system_text(&m.content)?;
            match out.last_mut() {
                // Consecutive system text joins one message (templates want one, first).
                Some(last) if last.role == Role::System => {
                    last.content = format!("{}\n\n{text}", last.content);
                }
                _ => out.push(Message::text(Role::System, text)),
            }
            continue;
        }
        let blocks = match &m.content {
            Value::String(s) => vec![json!({"type": "text", "text": s})],
            Value::Array(blocks) => blocks.clone(),
            _ => return Err(bad("message `content` must be a string or a list of content blocks")),
        };
        let mut message = Message::text(role, String::new());
        for block in &blocks {
            match block.get("type").and_then(Value::as_str) {
                Some("text") => {
                    if !message.content.is_empty() {
                        message.content.push('\n');
                    }
                    message.content.push_str(block.get("text").and_then(Value::as_str).unwrap_or_default());
                }
                Some("image" | "document") => {
                    return Err(bad("image and document content is not supported by this text model"));
                }
                Some("thinking") if role == Role::Assistant => {
                    let text = block.get("thinking").and_then(Value::as_str).unwrap_or_default();
                    message.reasoning.get_or_insert_with(String::new).push_str(text);
                }
                Some("redacted_thinking") => {}
                Some("tool_use") if role == Role::Assistant => {
                    let name = block
                        .get("name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("a `tool_use` block needs a `name`"))?;
                    message.tool_calls.push(PastCall {
                        id: block.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                        name: name.to_string(),
                        arguments: block.get("input").cloned().unwrap_or_else(|| json!({})).to_string(),
                    });
                }
                Some("tool_result") if role == Role::User => {
                    let mut text = tool_result_text(block.get("content"))?;
                    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
                        text = format!("Error: {text}");
                    }
                    let mut result = Message::text(Role::Tool, text);
                    result.tool_call_id = block.get("tool_use_id").and_then(Value::as_str).map(str::to_string);
                    out.push(result);
                }
                Some(other) => {
                    return Err(bad(format!(
                        "content block type `{other}` is not supported in a `{}` message",
                        m.role
                    )));
                }
                None => return Err(bad("content blocks need a `type`")),
            }
        }
        if !message.content.is_empty() || !message.tool_calls.is_empty() || message.reasoning.is_some() {
            out.push(message);
        }
    }
    Ok(out)
}

/// Anthropic tools; server tools (web search, code execution…) are not run here and are
/// skipped with a warning.
fn tools(tools: &[Value]) -> Result<Vec<Tool>, AppError> {
    let mut out = Vec::new();
    for t in tools {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("custom");
        let name = t.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        if kind != "custom" {
            tracing::warn!("skipping tool {:?} of type `{kind}`: only custom tools run here", name.unwrap_or(""));
            continue;
        }
        let name = name.ok_or_else(|| bad("every tool needs a `name`"))?;
        let schema = t.get("input_schema").filter(|s| s.is_object()).cloned();
        out.push(Tool {
            name: name.to_string(),
            description: t.get("description").and_then(Value::as_str).map(str::to_string),
            parameters: schema,
        });
    }
    Ok(out)
}

/// `tool_choice`: auto, any, tool (by name) or none; and whether parallel calls are allowed.
fn tool_choice(value: Option<&Value>) -> Result<(Option<ToolChoice>, bool), AppError> {
    let Some(value) = value else { return Ok((None, true)) };
    let parallel = value.get("disable_parallel_tool_use").and_then(Value::as_bool) != Some(true);
    let choice = match value.get("type").and_then(Value::as_str) {
        Some("auto") => ToolChoice::Auto,
        Some("any") => ToolChoice::Required,
        Some("none") => ToolChoice::None,
        Some("tool") => ToolChoice::Named(
            value
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("`tool_choice` of type `tool` needs a `name`"))?
                .to_string(),
        ),
        _ => return Err(bad("`tool_choice.type` must be auto, any, tool or none")),
    };
    Ok((Some(choice), parallel))
}

/// A Messages request in the internal model.
fn chat_input(state: &AppState, req: &MessagesRequest) -> Result<ChatInput, AppError> {
    state.check_model(req.model.as_deref())?;
    let mut input = ChatInput::new(messages(req)?);
    input.tools = tools(req.tools.as_deref().unwrap_or_default())?;
    let (choice, parallel) = tool_choice(req.tool_choice.as_ref())?;
    input.tool_choice = choice;
    input.parallel_tool_calls = parallel;
    let d = SamplingParams::default();
    input.sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(d.temperature),
        top_p: req.top_p.unwrap_or(d.top_p),
        top_k: req.top_k.unwrap_or(d.top_k),
        ..d
    };
    input.sampling.validate().map_err(bad)?;
    input.max_tokens = req.max_tokens;
    input.stop = req.stop_sequences.clone().unwrap_or_default();
    let format = req.output_config.as_ref().and_then(|c| c.get("format")).or(req.output_format.as_ref());
    input.json_schema = match format {
        None | Some(Value::Null) => None,
        Some(format) if format.get("type").and_then(Value::as_str) == Some("json_schema") => {
            match format.get("schema") {
                Some(schema @ Value::Object(_)) => Some(schema.clone()),
                _ => return Err(bad("`output_config.format` needs a `schema` object")),
            }
        }
        Some(_) => return Err(bad("`output_config.format.type` must be `json_schema`")),
    };
    match req.thinking.as_ref().and_then(|t| t.get("type")).and_then(Value::as_str) {
        Some("enabled") => {
            input.template_kwargs.insert("enable_thinking".into(), json!(true));
        }
        Some("disabled") => {
            input.template_kwargs.insert("enable_thinking".into(), json!(false));
        }
        _ => {}
    }
    Ok(input)
}

fn message_id() -> String {
    let id = crate::parsers::pipeline::new_call_id();
    format!("msg_{}", &id["call_".len()..])
}

/// A tool-use id in Anthropic's form.
fn tool_use_id(call_id: &str) -> String {
    format!("toolu_{}", call_id.strip_prefix("call_").unwrap_or(call_id))
}

/// `stop_reason` and `stop_sequence`.
fn stop_reason(finish: &Finish) -> (&'static str, Value) {
    match finish {
        Finish::Stop => ("end_turn", Value::Null),
        Finish::StopSequence(s) => ("stop_sequence", json!(s)),
        Finish::Length => ("max_tokens", Value::Null),
        Finish::ToolCalls => ("tool_use", Value::Null),
    }
}

/// What thinking blocks carry as `signature`: this server does not sign its thinking.
const SIGNATURE: &str = "rapid-host";

/// One step of building the content blocks.
#[derive(Debug, Clone, PartialEq)]
enum BlockEvent {
    Start { index: usize, block: Value },
    Delta { index: usize, delta: Value },
    Stop { index: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Thinking,
    Text,
    ToolUse(u32),
}

/// Turns parse events into content blocks: indices 0, 1, 2 in order, a block per kind,
/// never an empty thinking or text block.
#[derive(Debug, Default)]
struct Blocks {
    next: usize,
    open: Option<(usize, Open)>,
    /// Whitespace held before a text block opens (dropped if no text follows).
    held: String,
}

impl Blocks {
    fn close(&mut self, out: &mut Vec<BlockEvent>) {
        if let Some((index, kind)) = self.open.take() {
            if kind == Open::Thinking {
                out.push(BlockEvent::Delta {
                    index,
                    delta: json!({"type": "signature_delta", "signature": SIGNATURE}),
                });
            }
            out.push(BlockEvent::Stop { index });
        }
    }

    fn start(&mut self, kind: Open, block: Value, out: &mut Vec<BlockEvent>) -> usize {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((index, kind));
        out.push(BlockEvent::Start { index, block });
        index
    }

    fn push(&mut self, event: &ParseEvent, out: &mut Vec<BlockEvent>) {
        match event {
            ParseEvent::Reasoning(t) if t.is_empty() => {}
            ParseEvent::Reasoning(t) => {
                let index = match self.open {
                    Some((index, Open::Thinking)) => index,
                    _ => self.start(Open::Thinking, json!({"type": "thinking", "thinking": "", "signature": ""}), out),
                };
                out.push(BlockEvent::Delta { index, delta: json!({"type": "thinking_delta", "thinking": t}) });
            }
            ParseEvent::Content(t) => {
                let index = match self.open {
                    Some((index, Open::Text)) => index,
                    _ if t.trim().is_empty() => {
                        self.held.push_str(t);
                        return;
                    }
                    _ => self.start(Open::Text, json!({"type": "text", "text": ""}), out),
                };
                let text = format!("{}{t}", std::mem::take(&mut self.held));
                out.push(BlockEvent::Delta { index, delta: json!({"type": "text_delta", "text": text}) });
            }
            ParseEvent::ToolCallBegin { index: call, id, name } => {
                self.held.clear();
                let block = json!({"type": "tool_use", "id": tool_use_id(id), "name": name, "input": {}});
                self.start(Open::ToolUse(*call), block, out);
            }
            ParseEvent::ToolCallArguments { index: call, fragment } => {
                if let Some((index, Open::ToolUse(open))) = self.open
                    && open == *call
                {
                    out.push(BlockEvent::Delta {
                        index,
                        delta: json!({"type": "input_json_delta", "partial_json": fragment}),
                    });
                }
            }
            ParseEvent::ToolCallEnd(call) => {
                if matches!(self.open, Some((_, Open::ToolUse(open))) if open == *call) {
                    self.close(out);
                }
            }
            ParseEvent::Malformed(_) => {}
        }
    }
}

/// Applies block events to a non-streamed `content` list.
fn apply(content: &mut Vec<Value>, partial_json: &mut Vec<String>, event: BlockEvent) {
    match event {
        BlockEvent::Start { block, .. } => {
            content.push(block);
            partial_json.push(String::new());
        }
        BlockEvent::Delta { index, delta } => {
            let Some(block) = content.get_mut(index) else { return };
            match delta["type"].as_str() {
                Some("text_delta") => append(block, "text", &delta["text"]),
                Some("thinking_delta") => append(block, "thinking", &delta["thinking"]),
                Some("signature_delta") => block["signature"] = delta["signature"].clone(),
                Some("input_json_delta") => {
                    if let Some(json) = partial_json.get_mut(index) {
                        json.push_str(delta["partial_json"].as_str().unwrap_or_default());
                    }
                }
                _ => {}
            }
        }
        BlockEvent::Stop { .. } => {}
    }
}

fn append(block: &mut Value, key: &str, text: &Value) {
    let joined = format!("{}{}", block[key].as_str().unwrap_or_default(), text.as_str().unwrap_or_default());
    block[key] = Value::String(joined);
}

/// The arguments of a call as an `input` object (a call cut short: what of it parses, or
/// an empty object).
fn input_object(arguments: &str) -> Value {
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
        .or_else(|| crate::parsers::partial::close_prefix(arguments).and_then(|t| serde_json::from_str(&t).ok()))
        .unwrap_or_else(|| json!({}))
}

/// Anthropic's usage: `input_tokens` are the prompt tokens after the last cache read
/// (`cache_read_input_tokens`, what the prefix cache gave), as the Messages API counts them.
fn usage(outcome: &Outcome) -> Value {
    json!({
        "input_tokens": outcome.prompt_tokens - outcome.cached_tokens.min(outcome.prompt_tokens),
        "output_tokens": outcome.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": outcome.cached_tokens,
    })
}

pub async fn handle(State(state): State<Arc<AppState>>, body: Result<JsonBody<MessagesRequest>, AppError>) -> Response {
    let result = match body {
        Ok(JsonBody(req)) => respond(&state, req).await,
        Err(e) => Err(e),
    };
    let response = result.unwrap_or_else(|e| AnthropicError(e).into_response());
    state.metrics.request("/v1/messages", response.status().as_u16());
    response
}

async fn respond(state: &Arc<AppState>, req: MessagesRequest) -> Result<Response, AppError> {
    if req.max_tokens.is_none() {
        return Err(AppError::bad("`max_tokens` is required", Some("max_tokens")));
    }
    let input = chat_input(state, &req)?;
    let mut generation = request::start(state, input).await?;
    let id = message_id();
    let model = state.model_id().to_string();
    if req.stream {
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        let prompt_tokens = generation.prompt_tokens();
        tokio::spawn(async move {
            let send = |name: &'static str, data: Value| {
                let tx = tx.clone();
                async move { tx.send(Ok(Event::default().event(name).data(data.to_string()))).await.is_ok() }
            };
            let start = json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "content": [], "model": model,
                "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": 0,
                          "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
            }});
            if !send("message_start", start).await || !send("ping", json!({"type": "ping"})).await {
                generation.cancelled();
                return;
            }
            let mut blocks = Blocks::default();
            while let Some(step) = generation.next().await {
                let mut out = Vec::new();
                match step {
                    Step::Events { events, .. } => {
                        for event in &events {
                            blocks.push(event, &mut out);
                        }
                    }
                    Step::Done(outcome) => {
                        blocks.close(&mut out);
                        if !send_blocks(&send, out).await {
                            return;
                        }
                        let (reason, sequence) = stop_reason(&outcome.finish);
                        let delta = json!({"type": "message_delta",
                            "delta": {"stop_reason": reason, "stop_sequence": sequence},
                            "usage": usage(&outcome)});
                        if send("message_delta", delta).await {
                            let _ = send("message_stop", json!({"type": "message_stop"})).await;
                        }
                        return;
                    }
                    Step::Failed(error) => {
                        let body = error_body(error.status(), &error.to_string());
                        let _ = send("error", body).await;
                        return;
                    }
                }
                if !send_blocks(&send, out).await {
                    generation.cancelled();
                    return;
                }
            }
        });
        return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).into_response());
    }
    let mut blocks = Blocks::default();
    let mut content = Vec::new();
    let mut partial_json = Vec::new();
    let outcome = loop {
        let mut out = Vec::new();
        match generation.next().await {
            Some(Step::Events { events, .. }) => {
                for event in &events {
                    blocks.push(event, &mut out);
                }
            }
            Some(Step::Done(outcome)) => {
                blocks.close(&mut out);
                for event in out {
                    apply(&mut content, &mut partial_json, event);
                }
                break outcome;
            }
            Some(Step::Failed(e)) => return Err(e),
            None => return Err(AppError::Internal(String::from("the generation ended without a result"))),
        }
        for event in out {
            apply(&mut content, &mut partial_json, event);
        }
    };
    for (block, json) in content.iter_mut().zip(&partial_json) {
        if block["type"] == "tool_use" {
            block["input"] = input_object(json);
        }
    }
    let (reason, sequence) = stop_reason(&outcome.finish);
    Ok(Json(json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(&outcome),
    }))
    .into_response())
}

async fn send_blocks<F, Fut>(send: &F, events: Vec<BlockEvent>) -> bool
where
    F: Fn(&'static str, Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for event in events {
        let (name, data) = match event {
            BlockEvent::Start { index, block } => {
                ("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": block}))
            }
            BlockEvent::Delta { index, delta } => {
                ("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": delta}))
            }
            BlockEvent::Stop { index } => ("content_block_stop", json!({"type": "content_block_stop", "index": index})),
        };
        if !send(name, data).await {
            return false;
        }
    }
    true
}

/// `count_tokens`: the same body as a message, less `max_tokens`.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<MessagesRequest>, AppError>,
) -> Response {
    let result = async {
        let JsonBody(req) = body?;
        let input = chat_input(&state, &req)?;
        let worker = Arc::clone(&state);
        let prompt = request::blocking(move || request::render_prompt(&worker, &input)).await?;
        Ok::<_, AppError>(Json(json!({"input_tokens": prompt.tokens.len()})).into_response())
    }
    .await;
    let response = result.unwrap_or_else(|e| AnthropicError(e).into_response());
    state.metrics.request("/v1/messages/count_tokens", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(events: &[ParseEvent]) -> Vec<BlockEvent> {
        let mut blocks = Blocks::default();
        let mut out = Vec::new();
        for e in events {
            blocks.push(e, &mut out);
        }
        blocks.close(&mut out);
        out
    }

    #[test]
    fn blocks_open_in_order_and_never_empty() {
        let out = run(&[
            ParseEvent::Reasoning(String::new()),
            ParseEvent::Reasoning("hmm".into()),
            ParseEvent::Content("\n\n".into()),
            ParseEvent::ToolCallBegin { index: 0, id: "call_1".into(), name: "f".into() },
            ParseEvent::ToolCallArguments { index: 0, fragment: "{\"a\": 1}".into() },
            ParseEvent::ToolCallEnd(0),
        ]);
        let starts: Vec<(usize, String)> = out
            .iter()
            .filter_map(|e| match e {
                BlockEvent::Start { index, block } => Some((*index, block["type"].as_str().unwrap_or("").to_string())),
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![(0, "thinking".to_string()), (1, "tool_use".to_string())]);
        assert!(out.contains(&BlockEvent::Delta {
            index: 0,
            delta: json!({"type": "signature_delta", "signature": SIGNATURE})
        }));
        assert_eq!(out.last(), Some(&BlockEvent::Stop { index: 1 }));
        let mut content = Vec::new();
        let mut json = Vec::new();
        for e in out {
            apply(&mut content, &mut json, e);
        }
        assert_eq!(content[0]["thinking"], "hmm");
        assert_eq!(json[1], "{\"a\": 1}");
        assert_eq!(content[1]["id"], "toolu_1");
    }

    #[test]
    fn system_roles_inside_messages_become_one_system_message() {
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "default", "max_tokens": 8, "system": [{"type": "text", "text": "A"}],
            "messages": [{"role": "system", "content": "B"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                         {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]}]}]
        }))
        .expect("request");
        let out = messages(&req).expect("messages");
        assert_eq!(out[0].role, Role::System);
        assert_eq!(out[0].content, "A\n\nB");
        assert_eq!(out[1].content, "hi");
        assert_eq!(out[2].tool_calls[0].arguments, "{\"x\":1}");
        assert_eq!(out[3].role, Role::Tool);
        assert_eq!(out[3].content, "42");
        assert_eq!(out[3].tool_call_id.as_deref(), Some("toolu_1"));
    }

    #[test]
    fn images_are_a_clear_400() {
        let req: MessagesRequest = serde_json::from_value(json!({
            "model": "default", "max_tokens": 8,
            "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}}]}]
        }))
        .expect("request");
        let err = messages(&req).expect_err("images are refused");
        assert!(err.to_string().contains("image"), "{err}");
    }
}
