//! `POST /v1/responses` (and `GET /v1/responses/{id}`): OpenAI's Responses API over the one
//! request path ([`super::request`]).
//!
//! Stateless by default as far as generation goes; a response is kept in a bounded
//! in-memory store (unless `store: false`) so that `previous_response_id` can continue its
//! conversation. Tools other than functions (web search, file search, shell…) are skipped
//! with a warning, never refused: agents send them by default. Streams carry every event a
//! client needs, each with a `sequence_number`: `response.created`, `response.in_progress`,
//! per output item `output_item.added`, its content events, `output_item.done`, then
//! `response.completed` (or `response.incomplete` when `max_output_tokens` cut it).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::chat::now;
use super::output::Finish;
use super::request::{self, ChatInput, Message, Outcome, PastCall, Role, Step, Tool, ToolChoice};
use super::{AppError, AppState, JsonBody, structured};
use crate::engine::SamplingParams;
use crate::parsers::ParseEvent;

/// Responses kept for `previous_response_id`, oldest dropped first.
pub const STORED_RESPONSES: usize = 256;

/// A finished response: its body (for `GET`) and the whole conversation it ended (for
/// `previous_response_id`).
#[derive(Debug, Clone)]
struct Stored {
    body: Value,
    conversation: Vec<Message>,
}

/// The bounded in-memory store of responses.
#[derive(Debug)]
pub struct ResponseStore {
    capacity: usize,
    inner: Mutex<(HashMap<String, Stored>, VecDeque<String>)>,
}

impl Default for ResponseStore {
    fn default() -> Self {
        Self::new(STORED_RESPONSES)
    }
}

impl ResponseStore {
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), inner: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    fn put(&self, id: String, stored: Stored) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (map, order) = &mut *guard;
        if map.insert(id.clone(), stored).is_none() {
            order.push_back(id);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    fn get(&self, id: &str) -> Option<Stored> {
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0.get(id).cloned()
    }

    /// Responses held now.
    pub fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Deserialize)]
pub struct ResponsesRequest {
    pub model: Option<String>,
    pub input: Option<Value>,
    pub instructions: Option<String>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub text: Option<Value>,
    pub reasoning: Option<Value>,
    pub max_output_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub store: Option<bool>,
    pub previous_response_id: Option<String>,
    pub metadata: Option<Value>,
}

fn bad(message: impl Into<String>, param: &'static str) -> AppError {
    AppError::bad(message, Some(param))
}

/// Text of a message's `content`: a string or a list of text parts.
fn content_text(content: &Value) -> Result<String, AppError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text" | "summary_text" | "reasoning_text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    Some("refusal") => text.push_str(part.get("refusal").and_then(Value::as_str).unwrap_or_default()),
                    Some(other @ ("input_image" | "input_file" | "input_audio")) => {
                        return Err(bad(
                            format!("content part `{other}` is not supported by this text model"),
                            "input",
                        ));
                    }
                    Some(other) => return Err(bad(format!("unknown content part `{other}`"), "input")),
                    None => return Err(bad("content parts need a `type`", "input")),
                }
            }
            Ok(text)
        }
        _ => Err(bad("`content` must be a string or a list of parts", "input")),
    }
}

/// `input` items in the internal model, appended to `out`.
fn input_messages(input: &Value, out: &mut Vec<Message>) -> Result<(), AppError> {
    let items = match input {
        Value::String(s) => {
            out.push(Message::text(Role::User, s.clone()));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(bad("`input` must be a string or a list of items", "input")),
    };
    for item in items {
        let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
        match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("user") => Role::User,
                    Some("assistant") => Role::Assistant,
                    Some("system" | "developer") => Role::System,
                    Some(other) => return Err(bad(format!("unknown message role `{other}`"), "input")),
                    None => return Err(bad("every message needs a `role`", "input")),
                };
                let text = content_text(item.get("content").unwrap_or(&Value::Null))?;
                match out.last_mut() {
                    // System and developer text joins one leading message.
                    Some(last) if role == Role::System && last.role == Role::System => {
                        last.content = format!("{}\n\n{text}", last.content);
                    }
                    _ => out.push(Message::text(role, text)),
                }
            }
            "function_call" => {
                let name = item
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("a `function_call` item needs a `name`", "input"))?;
                let call = PastCall {
                    id: item.get("call_id").and_then(Value::as_str).unwrap_or_default().to_string(),
                    name: name.to_string(),
                    arguments: match item.get("arguments") {
                        Some(Value::String(s)) => s.clone(),
                        Some(other) => other.to_string(),
                        None => String::from("{}"),
                    },
                };
                match out.last_mut() {
                    Some(last) if last.role == Role::Assistant => last.tool_calls.push(call),
                    _ => {
                        let mut message = Message::text(Role::Assistant, String::new());
                        message.tool_calls.push(call);
                        out.push(message);
                    }
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(parts @ Value::Array(_)) => content_text(parts)?,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let mut message = Message::text(Role::Tool, output);
                message.tool_call_id = item.get("call_id").and_then(Value::as_str).map(str::to_string);
                out.push(message);
            }
            // Earlier reasoning is not shown to the model again (templates drop it too).
            "reasoning" => {}
            other => tracing::warn!("skipping `{other}` input item: only messages and function calls run here"),
        }
    }
    Ok(())
}

/// Function tools; other tool types are skipped with a warning.
fn tools(tools: &[Value]) -> Result<Vec<Tool>, AppError> {
    let mut out = Vec::new();
    for t in tools {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        if kind != "function" {
            tracing::warn!("skipping tool of type `{kind}`: only function tools run here");
            continue;
        }
        let name = t
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("every function tool needs a `name`", "tools"))?;
        out.push(Tool {
            name: name.to_string(),
            description: t.get("description").and_then(Value::as_str).map(str::to_string),
            parameters: t.get("parameters").filter(|p| p.is_object()).cloned(),
        });
    }
    Ok(out)
}

fn tool_choice(value: Option<&Value>) -> Result<Option<ToolChoice>, AppError> {
    match value {
        None => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Some(ToolChoice::None)),
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            other => Err(bad(format!("`tool_choice` `{other}` is not one of none, auto, required"), "tool_choice")),
        },
        Some(v) if v.get("type").and_then(Value::as_str) == Some("function") => v
            .get("name")
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_string())))
            .ok_or_else(|| bad("`tool_choice` of type `function` needs a `name`", "tool_choice")),
        Some(v) => {
            tracing::warn!("`tool_choice` {v} names a tool type that does not run here; using auto");
            Ok(Some(ToolChoice::Auto))
        }
    }
}

/// `text.format` as a JSON schema to constrain to, if any.
fn text_format_schema(text: Option<&Value>) -> Result<Option<Value>, AppError> {
    let Some(format) = text.and_then(|t| t.get("format")) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        // The Responses shape puts the schema beside `name`; chat completions nest it.
        Some("json_schema") => structured::response_format_schema(Some(&json!({
            "type": "json_schema",
            "json_schema": {"name": format.get("name").cloned().unwrap_or(json!("output")),
                            "schema": format.get("schema").cloned().unwrap_or(json!({"type": "object"}))},
        }))),
        Some("json_object") => structured::response_format_schema(Some(format)),
        Some(other) => {
            Err(bad(format!("`text.format.type` `{other}` is not one of text, json_schema, json_object"), "text"))
        }
        None => Err(bad("`text.format` needs a `type`", "text")),
    }
}

/// A Responses request in the internal model.
fn chat_input(state: &AppState, req: &ResponsesRequest) -> Result<ChatInput, AppError> {
    state.check_model(req.model.as_deref())?;
    let mut messages = Vec::new();
    if let Some(instructions) = req.instructions.as_deref().filter(|i| !i.is_empty()) {
        messages.push(Message::text(Role::System, instructions));
    }
    if let Some(previous) = &req.previous_response_id {
        let stored = state.responses.get(previous).ok_or_else(|| AppError::BadRequest {
            message: format!("previous response `{previous}` is not stored here (it was sent with store: false, or is older than the last {STORED_RESPONSES})"),
            param: Some("previous_response_id"),
            code: "previous_response_not_found",
        })?;
        // The earlier turn's instructions do not carry over; this request's do.
        messages.extend(stored.conversation.into_iter().filter(|m| m.role != Role::System));
    }
    input_messages(req.input.as_ref().ok_or_else(|| bad("`input` is required", "input"))?, &mut messages)?;
    if !messages.iter().any(|m| m.role != Role::System) {
        return Err(bad("`input` must hold at least one message", "input"));
    }
    let mut input = ChatInput::new(messages);
    input.tools = tools(req.tools.as_deref().unwrap_or_default())?;
    input.tool_choice = tool_choice(req.tool_choice.as_ref())?;
    input.parallel_tool_calls = req.parallel_tool_calls != Some(false);
    let d = SamplingParams::default();
    input.sampling = SamplingParams {
        temperature: req.temperature.unwrap_or(d.temperature),
        top_p: req.top_p.unwrap_or(d.top_p),
        ..d
    };
    input.sampling.validate().map_err(|m| AppError::bad(m, None))?;
    input.max_tokens = req.max_output_tokens;
    input.max_tokens_param = "max_output_tokens";
    input.json_schema = text_format_schema(req.text.as_ref())?;
    if let Some(effort) = req.reasoning.as_ref().and_then(|r| r.get("effort")).and_then(Value::as_str) {
        input.template_kwargs.insert("enable_thinking".into(), json!(!matches!(effort, "none" | "minimal")));
    }
    Ok(input)
}

fn new_id(prefix: &str) -> String {
    let id = crate::parsers::pipeline::new_call_id();
    format!("{prefix}_{}", &id["call_".len()..])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    Reasoning,
    Message,
    Call(u32),
}

/// Builds output items from parse events and says what to stream: one item per kind in
/// order, never an empty message or reasoning item.
#[derive(Debug, Default)]
struct Items {
    items: Vec<Value>,
    open: Option<(usize, Open)>,
    held: String,
    events: Vec<(&'static str, Value)>,
}

impl Items {
    fn emit(&mut self, kind: &'static str, body: Value) {
        self.events.push((kind, body));
    }

    fn close(&mut self) {
        let Some((index, kind)) = self.open.take() else { return };
        let item_id = self.items[index]["id"].clone();
        match kind {
            Open::Reasoning => {
                let text = self.items[index]["content"][0]["text"].clone();
                self.emit(
                    "response.reasoning_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": text}),
                );
            }
            Open::Message => {
                let part = self.items[index]["content"][0].clone();
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "text": part["text"], "logprobs": []}),
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "part": part}),
                );
            }
            Open::Call(_) => {
                let item = &self.items[index];
                let body = json!({"item_id": item_id, "output_index": index, "name": item["name"], "arguments": item["arguments"]});
                self.emit("response.function_call_arguments.done", body);
            }
        }
        self.items[index]["status"] = json!("completed");
        let item = self.items[index].clone();
        self.emit("response.output_item.done", json!({"output_index": index, "item": item}));
    }

    fn start(&mut self, kind: Open, item: Value) -> usize {
        self.close();
        let index = self.items.len();
        self.items.push(item.clone());
        self.open = Some((index, kind));
        self.emit("response.output_item.added", json!({"output_index": index, "item": item}));
        index
    }

    fn push(&mut self, event: &ParseEvent) {
        match event {
            ParseEvent::Reasoning(t) if t.is_empty() => {}
            ParseEvent::Reasoning(t) => {
                let index = match self.open {
                    Some((index, Open::Reasoning)) => index,
                    _ => {
                        let item = json!({"id": new_id("rs"), "type": "reasoning", "summary": [],
                                          "content": [{"type": "reasoning_text", "text": ""}], "status": "in_progress"});
                        self.start(Open::Reasoning, item)
                    }
                };
                append(&mut self.items[index]["content"][0]["text"], t);
                let item_id = self.items[index]["id"].clone();
                self.emit(
                    "response.reasoning_text.delta",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": t}),
                );
            }
            ParseEvent::Content(t) => {
                let index = match self.open {
                    Some((index, Open::Message)) => index,
                    _ if t.trim().is_empty() => {
                        self.held.push_str(t);
                        return;
                    }
                    _ => {
                        let id = new_id("msg");
                        let item = json!({"id": id, "type": "message", "role": "assistant", "status": "in_progress", "content": []});
                        let index = self.start(Open::Message, item);
                        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
                        self.items[index]["content"] = json!([part.clone()]);
                        self.emit(
                            "response.content_part.added",
                            json!({"item_id": id, "output_index": index, "content_index": 0, "part": part}),
                        );
                        index
                    }
                };
                let delta = format!("{}{t}", std::mem::take(&mut self.held));
                append(&mut self.items[index]["content"][0]["text"], &delta);
                let item_id = self.items[index]["id"].clone();
                self.emit(
                    "response.output_text.delta",
                    json!({"item_id": item_id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
                );
            }
            ParseEvent::ToolCallBegin { index: call, id, name } => {
                self.held.clear();
                let item = json!({"id": new_id("fc"), "type": "function_call", "call_id": id, "name": name,
                                  "arguments": "", "status": "in_progress"});
                self.start(Open::Call(*call), item);
            }
            ParseEvent::ToolCallArguments { index: call, fragment } => {
                if let Some((index, Open::Call(open))) = self.open
                    && open == *call
                {
                    append(&mut self.items[index]["arguments"], fragment);
                    let item_id = self.items[index]["id"].clone();
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": item_id, "output_index": index, "delta": fragment}),
                    );
                }
            }
            ParseEvent::ToolCallEnd(call) => {
                if matches!(self.open, Some((_, Open::Call(open))) if open == *call) {
                    self.close();
                }
            }
            ParseEvent::Malformed(_) => {}
        }
    }
}

fn append(target: &mut Value, text: &str) {
    let joined = format!("{}{text}", target.as_str().unwrap_or_default());
    *target = Value::String(joined);
}

/// The response object around `output`.
struct Envelope {
    id: String,
    created_at: u64,
    model: String,
    req: ResponsesEcho,
}

/// The request fields a response echoes.
#[derive(Clone)]
struct ResponsesEcho {
    instructions: Value,
    max_output_tokens: Value,
    parallel_tool_calls: bool,
    previous_response_id: Value,
    reasoning: Value,
    store: bool,
    temperature: Value,
    text: Value,
    tool_choice: Value,
    tools: Value,
    top_p: Value,
    metadata: Value,
}

impl Envelope {
    fn body(&self, status: &str, output: &[Value], outcome: Option<&Outcome>) -> Value {
        let incomplete = (status == "incomplete").then(|| json!({"reason": "max_output_tokens"}));
        let usage = outcome.map(|o| {
            json!({
                "input_tokens": o.prompt_tokens,
                "input_tokens_details": {"cached_tokens": o.cached_tokens},
                "output_tokens": o.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": o.prompt_tokens + o.completion_tokens,
            })
        });
        let r = &self.req;
        json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "instructions": r.instructions,
            "max_output_tokens": r.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": r.parallel_tool_calls,
            "previous_response_id": r.previous_response_id,
            "reasoning": r.reasoning,
            "store": r.store,
            "temperature": r.temperature,
            "text": r.text,
            "tool_choice": r.tool_choice,
            "tools": r.tools,
            "top_p": r.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": null,
            "metadata": r.metadata,
        })
    }
}

fn status_of(outcome: &Outcome) -> &'static str {
    match outcome.finish {
        Finish::Length => "incomplete",
        Finish::Stop | Finish::StopSequence(_) | Finish::ToolCalls => "completed",
    }
}

/// The conversation a response ends, for `previous_response_id`.
fn conversation(mut messages: Vec<Message>, output: &[Value]) -> Vec<Message> {
    let mut reply = Message::text(Role::Assistant, String::new());
    for item in output {
        match item["type"].as_str() {
            Some("message") => reply.content.push_str(item["content"][0]["text"].as_str().unwrap_or_default()),
            Some("function_call") => reply.tool_calls.push(PastCall {
                id: item["call_id"].as_str().unwrap_or_default().to_string(),
                name: item["name"].as_str().unwrap_or_default().to_string(),
                arguments: item["arguments"].as_str().unwrap_or_default().to_string(),
            }),
            _ => {}
        }
    }
    messages.push(reply);
    messages
}

pub async fn handle(
    State(state): State<Arc<AppState>>,
    body: Result<JsonBody<ResponsesRequest>, AppError>,
) -> Response {
    let result = match body {
        Ok(JsonBody(req)) => respond(&state, req).await,
        Err(e) => Err(e),
    };
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics.request("/v1/responses", response.status().as_u16());
    response
}

async fn respond(state: &Arc<AppState>, req: ResponsesRequest) -> Result<Response, AppError> {
    let input = chat_input(state, &req)?;
    let history = input.messages.clone();
    let mut generation = request::start(state, input).await?;
    let store = req.store != Some(false);
    let echo = ResponsesEcho {
        instructions: json!(req.instructions),
        max_output_tokens: json!(req.max_output_tokens),
        parallel_tool_calls: req.parallel_tool_calls != Some(false),
        previous_response_id: json!(req.previous_response_id),
        reasoning: req.reasoning.clone().unwrap_or_else(|| json!({"effort": null, "summary": null})),
        store,
        temperature: json!(req.temperature.unwrap_or(1.0)),
        text: req.text.clone().unwrap_or_else(|| json!({"format": {"type": "text"}})),
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        tools: json!(req.tools.clone().unwrap_or_default()),
        top_p: json!(req.top_p.unwrap_or(1.0)),
        metadata: req.metadata.clone().unwrap_or_else(|| json!({})),
    };
    let envelope = Envelope { id: new_id("resp"), created_at: now(), model: state.model_id().to_string(), req: echo };
    let keep = move |state: &AppState, envelope: &Envelope, body: &Value, output: &[Value]| {
        if store {
            let stored = Stored { body: body.clone(), conversation: conversation(history.clone(), output) };
            state.responses.put(envelope.id.clone(), stored);
        }
    };
    if req.stream {
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        let state = Arc::clone(state);
        tokio::spawn(async move {
            let mut sequence = 0u64;
            let mut send = |kind: &'static str, mut body: Value| {
                body["type"] = json!(kind);
                body["sequence_number"] = json!(sequence);
                sequence += 1;
                let event = Event::default().event(kind).data(body.to_string());
                let tx = tx.clone();
                async move { tx.send(Ok(event)).await.is_ok() }
            };
            let created = envelope.body("in_progress", &[], None);
            if !send("response.created", json!({"response": created.clone()})).await
                || !send("response.in_progress", json!({"response": created})).await
            {
                generation.cancelled();
                return;
            }
            let mut items = Items::default();
            while let Some(step) = generation.next().await {
                match step {
                    Step::Events { events, .. } => {
                        for event in &events {
                            items.push(event);
                        }
                    }
                    Step::Done(outcome) => {
                        items.close();
                        for (kind, body) in std::mem::take(&mut items.events) {
                            if !send(kind, body).await {
                                return;
                            }
                        }
                        let status = status_of(&outcome);
                        let body = envelope.body(status, &items.items, Some(&outcome));
                        keep(&state, &envelope, &body, &items.items);
                        let kind = if status == "completed" { "response.completed" } else { "response.incomplete" };
                        let _ = send(kind, json!({"response": body})).await;
                        return;
                    }
                    Step::Failed(error) => {
                        let mut body = envelope.body("failed", &items.items, None);
                        body["error"] = json!({"code": "server_error", "message": error.to_string()});
                        let _ = send("response.failed", json!({"response": body})).await;
                        return;
                    }
                }
                for (kind, body) in std::mem::take(&mut items.events) {
                    if !send(kind, body).await {
                        generation.cancelled();
                        return;
                    }
                }
            }
        });
        return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).into_response());
    }
    let mut items = Items::default();
    let outcome = loop {
        match generation.next().await {
            Some(Step::Events { events, .. }) => {
                for event in &events {
                    items.push(event);
                }
                items.events.clear();
            }
            Some(Step::Done(outcome)) => {
                items.close();
                break outcome;
            }
            Some(Step::Failed(e)) => return Err(e),
            None => return Err(AppError::Internal(String::from("the generation ended without a result"))),
        }
    };
    let body = envelope.body(status_of(&outcome), &items.items, Some(&outcome));
    keep(state, &envelope, &body, &items.items);
    Ok(Json(body).into_response())
}

/// `GET /v1/responses/{id}`: a stored response.
pub async fn retrieve(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let response = match state.responses.get(&id) {
        Some(stored) => Json(stored.body).into_response(),
        None => AppError::NotFound(format!("No response with id `{id}` is stored here")).into_response(),
    };
    state.metrics.request("/v1/responses/{id}", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_stream_in_order_and_never_empty() {
        let mut items = Items::default();
        for event in [
            ParseEvent::Reasoning("think".into()),
            ParseEvent::Content("\n".into()),
            ParseEvent::Content("Hi".into()),
            ParseEvent::ToolCallBegin { index: 0, id: "call_1".into(), name: "f".into() },
            ParseEvent::ToolCallArguments { index: 0, fragment: "{}".into() },
            ParseEvent::ToolCallEnd(0),
        ] {
            items.push(&event);
        }
        items.close();
        let kinds: Vec<&str> = items.items.iter().map(|i| i["type"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["reasoning", "message", "function_call"]);
        assert_eq!(items.items[1]["content"][0]["text"], "\nHi");
        assert_eq!(items.items[2]["call_id"], "call_1");
        assert!(items.items[2]["id"].as_str().is_some_and(|id| id.starts_with("fc_")));
        let names: Vec<&str> = items.events.iter().map(|(k, _)| *k).collect();
        let added = names.iter().position(|k| *k == "response.content_part.added");
        let delta = names.iter().position(|k| *k == "response.output_text.delta");
        assert!(added < delta, "{names:?}");
        assert!(items.items.iter().all(|i| i["status"] == "completed"));
    }

    #[test]
    fn the_store_is_bounded() {
        let store = ResponseStore::new(2);
        for id in ["a", "b", "c"] {
            store.put(id.into(), Stored { body: json!({}), conversation: Vec::new() });
        }
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none() && store.get("c").is_some());
    }

    #[test]
    fn items_become_messages() {
        let mut out = Vec::new();
        input_messages(
            &json!([
                {"role": "developer", "content": "be brief"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                {"type": "web_search_call", "id": "ws_1"},
            ]),
            &mut out,
        )
        .expect("items");
        assert_eq!(out.len(), 4);
        assert_eq!(out[2].tool_calls[0].id, "call_1");
        assert_eq!(out[3].role, Role::Tool);
        assert!(input_messages(&json!([{"role": "user", "content": [{"type": "input_image"}]}]), &mut out).is_err());
    }
}
