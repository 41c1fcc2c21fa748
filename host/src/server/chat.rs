//! `POST /v1/chat/completions`: OpenAI's chat wire format over the one request path
//! ([`super::request`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::output::Finish;
use super::request::{self, ChatInput, Generation, Message, Outcome, PastCall, Role, Step, Tool, ToolChoice};
use super::structured;
use super::{AppError, AppState, JsonBody};
use crate::engine::SamplingParams;
use crate::engine::generate::TokenLogprob;
use crate::parsers::{AssembledMessage, ParseEvent};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by chat and completions requests.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
}

impl SamplingFields {
    pub fn to_params(&self) -> Result<SamplingParams, AppError> {
        let d = SamplingParams::default();
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: self.top_k.unwrap_or(d.top_k),
            min_p: self.min_p.unwrap_or(d.min_p),
            repetition_penalty: self.repetition_penalty.unwrap_or(d.repetition_penalty),
            presence_penalty: self.presence_penalty.unwrap_or(d.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(d.frequency_penalty),
            seed: self.seed,
        };
        params.validate().map_err(|m| AppError::bad(m, None))?;
        Ok(params)
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Value>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    pub max_completion_tokens: Option<usize>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<usize>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    pub chat_template_kwargs: Option<Map<String, Value>>,
}

fn tool_choice(value: Option<&Value>) -> Result<Option<ToolChoice>, AppError> {
    let bad = || {
        AppError::bad(
            "`tool_choice` must be none, auto, required or {\"type\":\"function\",\"function\":{\"name\":…}}",
            Some("tool_choice"),
        )
    };
    match value {
        None => Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(Some(ToolChoice::None)),
            "auto" => Ok(Some(ToolChoice::Auto)),
            "required" => Ok(Some(ToolChoice::Required)),
            _ => Err(bad()),
        },
        Some(v) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| Some(ToolChoice::Named(n.to_string())))
            .ok_or_else(bad),
    }
}

/// OpenAI content (a string or a list of parts) as plain text.
fn text_content(content: &Value) -> Result<String, AppError> {
    match content {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default()),
                    Some(other) => {
                        return Err(AppError::bad(
                            format!("content part `{other}` is not supported by this text model"),
                            Some("messages"),
                        ));
                    }
                    None => return Err(AppError::bad("content parts need a `type`", Some("messages"))),
                }
            }
            Ok(text)
        }
        _ => Err(AppError::bad("message content must be a string or a list of parts", Some("messages"))),
    }
}

/// OpenAI messages in the internal model.
fn messages(messages: &[Value]) -> Result<Vec<Message>, AppError> {
    messages
        .iter()
        .map(|m| {
            let role = match m.get("role").and_then(Value::as_str) {
                Some("system" | "developer") => Role::System,
                Some("user") => Role::User,
                Some("assistant") => Role::Assistant,
                Some("tool") => Role::Tool,
                Some(other) => return Err(AppError::bad(format!("unknown message role `{other}`"), Some("messages"))),
                None => return Err(AppError::bad("every message needs a `role`", Some("messages"))),
            };
            let mut message = Message::text(role, text_content(m.get("content").unwrap_or(&Value::Null))?);
            message.reasoning = m.get("reasoning_content").and_then(Value::as_str).map(str::to_string);
            message.tool_call_id = m.get("tool_call_id").and_then(Value::as_str).map(str::to_string);
            message.name = m.get("name").and_then(Value::as_str).map(str::to_string);
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                for call in calls {
                    let name = call.pointer("/function/name").and_then(Value::as_str).ok_or_else(|| {
                        AppError::bad("every `tool_calls` entry needs a `function.name`", Some("messages"))
                    })?;
                    // Arguments arrive as a JSON string (OpenAI) or, from some clients, an object.
                    let arguments = match call.pointer("/function/arguments") {
                        Some(Value::String(s)) => s.clone(),
                        None | Some(Value::Null) => String::from("{}"),
                        Some(other) => other.to_string(),
                    };
                    message.tool_calls.push(PastCall {
                        id: call.get("id").and_then(Value::as_str).unwrap_or_default().to_string(),
                        name: name.to_string(),
                        arguments,
                    });
                }
            }
            Ok(message)
        })
        .collect()
}

/// OpenAI `tools` in the internal model.
pub fn tools(tools: &[Value]) -> Result<Vec<Tool>, AppError> {
    tools
        .iter()
        .map(|t| {
            let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
            if kind != "function" {
                return Err(AppError::bad(
                    format!("tool type `{kind}` is not supported; use `function`"),
                    Some("tools"),
                ));
            }
            let function = t.get("function").unwrap_or(t);
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| AppError::bad("every tool needs a `function.name`", Some("tools")))?;
            Ok(Tool {
                name: name.to_string(),
                description: function.get("description").and_then(Value::as_str).map(str::to_string),
                parameters: function.get("parameters").filter(|p| p.is_object()).cloned(),
            })
        })
        .collect()
}

/// A chat request in the internal model.
fn chat_input(state: &AppState, req: &ChatRequest) -> Result<ChatInput, AppError> {
    state.check_model(req.model.as_deref())?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(AppError::bad("only `n` = 1 is supported", Some("n")));
    }
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => return Err(AppError::bad("`top_logprobs` must be at most 20", Some("top_logprobs"))),
        (false, Some(_)) => return Err(AppError::bad("`top_logprobs` needs `logprobs: true`", Some("top_logprobs"))),
        (true, n) => Some(n.unwrap_or(0)),
        (false, None) => None,
    };
    if req.messages.is_empty() {
        return Err(AppError::bad("`messages` must not be empty", Some("messages")));
    }
    let mut input = ChatInput::new(messages(&req.messages)?);
    input.tools = tools(req.tools.as_deref().unwrap_or_default())?;
    input.tool_choice = tool_choice(req.tool_choice.as_ref())?;
    input.parallel_tool_calls = req.parallel_tool_calls != Some(false);
    input.sampling = req.sampling.to_params()?;
    input.max_tokens = req.max_completion_tokens.or(req.max_tokens);
    input.stop = req.stop.clone().map(Stop::into_vec).unwrap_or_default();
    input.json_schema = structured::response_format_schema(req.response_format.as_ref())?;
    input.logprobs = logprobs;
    input.template_kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    Ok(input)
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(finish: &Finish) -> &'static str {
    match finish {
        Finish::Stop | Finish::StopSequence(_) => "stop",
        Finish::Length => "length",
        Finish::ToolCalls => "tool_calls",
    }
}

pub fn completion_id(prefix: &str) -> String {
    let id = crate::parsers::pipeline::new_call_id();
    format!("{prefix}-{}", &id["call_".len()..])
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn logprob_entries(items: &[TokenLogprob]) -> Vec<Value> {
    items
        .iter()
        .map(|t| {
            json!({
                "token": t.token,
                "logprob": t.logprob,
                "bytes": t.token.as_bytes(),
                "top_logprobs": t.top.iter().map(|(tok, lp)| json!({"token": tok, "logprob": lp, "bytes": tok.as_bytes()})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

pub async fn handle(State(state): State<Arc<AppState>>, JsonBody(req): JsonBody<ChatRequest>) -> Response {
    let result = respond(&state, req).await;
    let response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics.request("/v1/chat/completions", response.status().as_u16());
    response
}

async fn respond(state: &Arc<AppState>, req: ChatRequest) -> Result<Response, AppError> {
    let input = chat_input(state, &req)?;
    let generation = request::start(state, input).await?;
    let id = completion_id("chatcmpl");
    let created = now();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        tokio::spawn(stream_chat(Arc::clone(state), generation, tx, id, created, include_usage));
        return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).into_response());
    }
    let (message, outcome, logprobs) = collect(generation).await?;
    let mut choice = json!({
        "index": 0,
        "message": message.to_openai(),
        "logprobs": logprobs.map(|l| json!({"content": logprob_entries(&l)})),
        "finish_reason": finish_reason(&outcome.finish),
    });
    if message.reasoning.is_empty()
        && let Some(m) = choice["message"].as_object_mut()
    {
        m.remove("reasoning_content");
    }
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": state.model_id(),
        "choices": [choice],
        "usage": usage_json(&outcome),
        "system_fingerprint": null,
    }))
    .into_response())
}

/// OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt tokens
/// the prefix cache gave.
fn usage_json(outcome: &Outcome) -> Value {
    let (prompt, completion) = (outcome.prompt_tokens, outcome.completion_tokens);
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens}})
}

/// A whole generation, assembled as a client would.
pub async fn collect(
    mut generation: Generation,
) -> Result<(AssembledMessage, Outcome, Option<Vec<TokenLogprob>>), AppError> {
    let mut message = AssembledMessage::default();
    let mut logprobs: Option<Vec<TokenLogprob>> = None;
    while let Some(step) = generation.next().await {
        match step {
            Step::Events { events, logprobs: lp } => {
                message.extend(&events);
                if !lp.is_empty() {
                    logprobs.get_or_insert_with(Vec::new).extend(lp);
                }
            }
            Step::Done(outcome) => return Ok((message, outcome, logprobs)),
            Step::Failed(e) => return Err(e),
        }
    }
    Err(AppError::Internal(String::from("the generation ended without a result")))
}

/// One SSE chunk of a chat completion stream.
fn chunk(id: &str, created: u64, model: &str, delta: Value, finish: Option<&str>, logprobs: Option<Value>) -> Event {
    let body = json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
    });
    Event::default().data(body.to_string())
}

fn delta_of(event: &ParseEvent) -> Option<Value> {
    Some(match event {
        ParseEvent::Content(t) => json!({"content": t}),
        ParseEvent::Reasoning(t) => json!({"reasoning_content": t}),
        ParseEvent::ToolCallBegin { index, id, name } => json!({"tool_calls": [{
            "index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}
        }]}),
        ParseEvent::ToolCallArguments { index, fragment } => {
            json!({"tool_calls": [{"index": index, "function": {"arguments": fragment}}]})
        }
        ParseEvent::ToolCallEnd(_) | ParseEvent::Malformed(_) => return None,
    })
}

async fn stream_chat(
    state: Arc<AppState>,
    mut generation: Generation,
    tx: mpsc::Sender<Result<Event, Infallible>>,
    id: String,
    created: u64,
    include_usage: bool,
) {
    let model = state.model_id().to_string();
    let send = |event: Event| {
        let tx = tx.clone();
        async move { tx.send(Ok(event)).await.is_ok() }
    };
    if !send(chunk(&id, created, &model, json!({"role": "assistant", "content": ""}), None, None)).await {
        generation.cancelled();
        return;
    }
    let mut pending_logprobs: Vec<TokenLogprob> = Vec::new();
    while let Some(step) = generation.next().await {
        match step {
            Step::Events { events, logprobs } => {
                pending_logprobs.extend(logprobs);
                for event in &events {
                    if let Some(delta) = delta_of(event) {
                        let lp = (!pending_logprobs.is_empty())
                            .then(|| json!({"content": logprob_entries(&std::mem::take(&mut pending_logprobs))}));
                        if !send(chunk(&id, created, &model, delta, None, lp)).await {
                            // The client went away: dropping the generation cancels it.
                            generation.cancelled();
                            return;
                        }
                    }
                }
            }
            Step::Done(outcome) => {
                let _ = send(chunk(&id, created, &model, json!({}), Some(finish_reason(&outcome.finish)), None)).await;
                if include_usage {
                    let body = json!({
                        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "system_fingerprint": null, "choices": [],
                        "usage": usage_json(&outcome),
                    });
                    let _ = send(Event::default().data(body.to_string())).await;
                }
            }
            Step::Failed(error) => {
                let _ = send(Event::default().data(error.envelope().to_string())).await;
            }
        }
    }
    let _ = send(Event::default().data("[DONE]")).await;
}
