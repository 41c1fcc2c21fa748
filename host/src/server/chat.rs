//! `POST /v1/chat/completions`.

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

use super::metrics::Metrics;
use super::run::RunEvent;
use super::structured::{self, HostCalls};
use super::{AppError, AppState, JsonBody};
use crate::engine::generate::TokenLogprob;
use crate::engine::{GenerationEvent, GenerationRequest, SamplingParams};
use crate::parsers::{AssembledMessage, ParseEvent, ParserPipeline, PipelineConfig, tool_prompt};

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

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

fn tool_choice(value: Option<&Value>, has_tools: bool) -> Result<ToolChoice, AppError> {
    let bad = || {
        AppError::bad(
            "`tool_choice` must be none, auto, required or {\"type\":\"function\",\"function\":{\"name\":…}}",
            Some("tool_choice"),
        )
    };
    match value {
        None => Ok(if has_tools { ToolChoice::Auto } else { ToolChoice::None }),
        Some(Value::String(s)) => match s.as_str() {
            "none" => Ok(ToolChoice::None),
            "auto" => Ok(ToolChoice::Auto),
            "required" => Ok(ToolChoice::Required),
            _ => Err(bad()),
        },
        Some(v) => v
            .pointer("/function/name")
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Named(n.to_string()))
            .ok_or_else(bad),
    }
}

/// OpenAI content (a string or a list of parts) as plain text for the template.
fn text_content(content: &Value) -> Result<Value, AppError> {
    match content {
        Value::Null | Value::String(_) => Ok(content.clone()),
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
            Ok(Value::String(text))
        }
        _ => Err(AppError::bad("message content must be a string or a list of parts", Some("messages"))),
    }
}

/// Messages as chat templates expect them: text content, tool-call arguments as objects.
fn template_messages(messages: &[Value]) -> Result<Vec<Value>, AppError> {
    if messages.is_empty() {
        return Err(AppError::bad("`messages` must not be empty", Some("messages")));
    }
    messages
        .iter()
        .map(|m| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| AppError::bad("every message needs a `role`", Some("messages")))?;
            if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
                return Err(AppError::bad(format!("unknown message role `{role}`"), Some("messages")));
            }
            let mut out = m.as_object().cloned().unwrap_or_default();
            out.insert("role".into(), json!(if role == "developer" { "system" } else { role }));
            out.insert("content".into(), text_content(m.get("content").unwrap_or(&Value::Null))?);
            if let Some(Value::Array(calls)) = m.get("tool_calls") {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        let mut c = c.clone();
                        if let Some(args) = c.pointer("/function/arguments").and_then(Value::as_str)
                            && let Ok(obj) = serde_json::from_str::<Value>(args)
                            && let Some(f) = c.get_mut("function")
                        {
                            f["arguments"] = obj;
                        }
                        c
                    })
                    .collect();
                out.insert("tool_calls".into(), Value::Array(calls));
            }
            Ok(Value::Object(out))
        })
        .collect()
}

/// Everything a chat request needs before generating.
struct Prepared {
    prompt_tokens: Vec<u32>,
    pipeline: Option<ParserPipeline>,
    /// Set when a forced tool call is a bare JSON object the host reads itself.
    host_calls: Option<HostCalls>,
    /// `parallel_tool_calls: false`: calls after the first are dropped.
    single_call: bool,
}

impl Prepared {
    /// Feeds generated text through the parsers (or passes it through). Plugin code runs on
    /// a blocking thread, never on the runtime's.
    async fn parse(&mut self, text: &str) -> Vec<ParseEvent> {
        let events = match (&mut self.host_calls, &mut self.pipeline) {
            (Some(calls), _) => {
                calls.feed(text);
                Vec::new()
            }
            (None, Some(p)) => p.feed_off_runtime(text).await,
            (None, None) if text.is_empty() => Vec::new(),
            (None, None) => vec![ParseEvent::Content(text.to_string())],
        };
        self.limit_calls(events)
    }

    async fn finish_parsing(&mut self, metrics: &Metrics) -> Vec<ParseEvent> {
        let mut events = self.host_calls.as_mut().map(HostCalls::finish).unwrap_or_default();
        if let Some(p) = &mut self.pipeline {
            events.extend(p.finish_off_runtime().await);
            Metrics::add(&metrics.parser_failures, p.failures.len() as u64);
        }
        self.limit_calls(events)
    }

    fn limit_calls(&self, mut events: Vec<ParseEvent>) -> Vec<ParseEvent> {
        if self.single_call {
            events.retain(|e| match e {
                ParseEvent::ToolCallBegin { index, .. }
                | ParseEvent::ToolCallArguments { index, .. }
                | ParseEvent::ToolCallEnd(index) => *index == 0,
                _ => true,
            });
        }
        events
    }
}

fn prepare(state: &AppState, req: &ChatRequest) -> Result<(Prepared, GenerationRequest), AppError> {
    state.check_model(req.model.as_deref())?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(AppError::bad("only `n` = 1 is supported", Some("n")));
    }
    let json_schema = structured::response_format_schema(req.response_format.as_ref())?;
    let top_logprobs = match (req.logprobs, req.top_logprobs) {
        (_, Some(n)) if n > 20 => return Err(AppError::bad("`top_logprobs` must be at most 20", Some("top_logprobs"))),
        (false, Some(_)) => return Err(AppError::bad("`top_logprobs` needs `logprobs: true`", Some("top_logprobs"))),
        (true, n) => Some(n.unwrap_or(0)),
        (false, None) => None,
    };
    let sampling = req.sampling.to_params()?;
    let tools = req.tools.clone().unwrap_or_default();
    let choice = tool_choice(req.tool_choice.as_ref(), !tools.is_empty())?;
    if choice == ToolChoice::Required && tools.is_empty() {
        return Err(AppError::bad("`tool_choice` `required` needs a non-empty `tools` list", Some("tool_choice")));
    }
    let tools: Vec<Value> = match &choice {
        ToolChoice::None => Vec::new(),
        ToolChoice::Named(name) => {
            let picked: Vec<Value> = tools
                .iter()
                .filter(|t| t.pointer("/function/name").and_then(Value::as_str) == Some(name))
                .cloned()
                .collect();
            if picked.is_empty() {
                return Err(AppError::bad(
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    Some("tool_choice"),
                ));
            }
            picked
        }
        _ => tools,
    };
    let mut messages = template_messages(&req.messages)?;
    let kwargs = req.chat_template_kwargs.clone().unwrap_or_default();
    let engine = &state.engine;
    let snapshot = state.plugins.current();
    let tools_json = Value::Array(tools.clone()).to_string();
    let render = |messages: &[Value], tools: Option<&Value>| {
        engine
            .template
            .render(&Value::Array(messages.to_vec()), tools, true, &kwargs)
            .map_err(|e| AppError::bad(e.to_string(), Some("messages")))
    };
    let tools_value = (!tools.is_empty()).then(|| Value::Array(tools.clone()));
    let mut prompt = render(&messages, tools_value.as_ref())?;
    if let Some(tools_value) = &tools_value
        && prompt == render(&messages, None)?
    {
        // The template ignores `tools`: describe them in the tool parser's wire format.
        let from_plugin = state.tool_parser.as_deref().and_then(|parser| {
            tool_prompt(&snapshot, parser, &tools_json)
                .inspect_err(|e| {
                    // The plugin's failure, not the client's: fall back to the host's prompt.
                    tracing::warn!("no tool prompt from the parser plugin, using the host's: {e}");
                    Metrics::add(&state.metrics.parser_failures, 1);
                })
                .ok()
                .flatten()
        });
        let instruction = from_plugin
            .unwrap_or_else(|| format!("You can call these functions, given as JSON schemas:\n{tools_value}"));
        let must = match &choice {
            ToolChoice::Required => "\n\nYou must call at least one function in this answer.".to_string(),
            ToolChoice::Named(name) => format!("\n\nYou must call the function `{name}` in this answer."),
            _ => String::new(),
        };
        let instruction = format!("{instruction}{must}");
        match messages.first_mut() {
            Some(first) if first["role"] == "system" => {
                let text = first["content"].as_str().unwrap_or_default().to_string();
                first["content"] = json!(format!("{text}\n\n{instruction}"));
            }
            _ => messages.insert(0, json!({"role": "system", "content": instruction})),
        }
        prompt = render(&messages, None)?;
    }
    let reasoning_started = prompt.trim_end().ends_with("<think>");
    let bos_text = engine.tokenizer.bos.and_then(|b| engine.tokenizer.token(b)).unwrap_or_default();
    let add_bos = engine.tokenizer.add_bos && (bos_text.is_empty() || !prompt.starts_with(bos_text));
    let prompt_tokens = engine.tokenizer.encode(&prompt, add_bos).map_err(|e| AppError::Internal(e.to_string()))?;
    let context = engine.context_length();
    if prompt_tokens.len() >= context {
        return Err(AppError::BadRequest {
            message: format!(
                "this model's context is {context} tokens, but the prompt has {} tokens; shorten the messages",
                prompt_tokens.len()
            ),
            param: Some("messages"),
            code: "context_length_exceeded",
        });
    }
    let room = context - prompt_tokens.len();
    let asked = req.max_completion_tokens.or(req.max_tokens);
    if asked == Some(0) {
        return Err(AppError::bad("`max_tokens` must be at least 1", Some("max_tokens")));
    }
    let max_tokens = asked.unwrap_or(state.limits.default_max_tokens).min(room);

    let output = match (&choice, &json_schema) {
        (ToolChoice::Required | ToolChoice::Named(_), _) => {
            Some(structured::forced_tool_calls(state, &snapshot, &tools)?)
        }
        (_, Some(schema)) => Some(structured::json_output(state, schema)?),
        _ => None,
    };
    let host_calls = output.as_ref().is_some_and(|o| o.host_calls);
    let config = PipelineConfig {
        tool_parser: if tools.is_empty() || host_calls { None } else { state.tool_parser.clone() },
        // A grammar leaves no room for a reasoning block.
        reasoning_parser: if output.is_some() { None } else { state.reasoning_parser.clone() },
        tools_json,
        reasoning_started,
    };
    let pipeline = if config.tool_parser.is_none() && config.reasoning_parser.is_none() {
        None
    } else {
        Metrics::add(&state.metrics.parser_sessions, 1);
        match ParserPipeline::new(&snapshot, &config) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!("parsers unavailable, answering with raw text: {e}");
                Metrics::add(&state.metrics.parser_failures, 1);
                None
            }
        }
    };
    let generation = GenerationRequest {
        prompt_tokens: prompt_tokens.clone(),
        max_tokens,
        sampling,
        stop: req.stop.clone().map(Stop::into_vec).unwrap_or_default(),
        logprobs: top_logprobs,
        ignore_eos: false,
        constraint: output.map(|o| o.constraint),
    };
    let prepared = Prepared {
        prompt_tokens,
        pipeline,
        host_calls: host_calls.then(HostCalls::default),
        single_call: req.parallel_tool_calls == Some(false),
    };
    Ok((prepared, generation))
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
    let (prepared, generation) = prepare(state, &req)?;
    let rx = state.runner.start(generation)?;
    let id = completion_id("chatcmpl");
    let created = now();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        tokio::spawn(stream_chat(Arc::clone(state), prepared, rx, tx, id, created, include_usage));
        return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).into_response());
    }
    let (message, finish, usage, logprobs) = collect(state, prepared, rx).await?;
    let mut choice = json!({
        "index": 0,
        "message": message.to_openai(),
        "logprobs": logprobs.map(|l| json!({"content": logprob_entries(&l)})),
        "finish_reason": finish,
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
        "usage": usage,
        "system_fingerprint": null,
    }))
    .into_response())
}

fn usage_json(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

type Collected = (AssembledMessage, &'static str, Value, Option<Vec<TokenLogprob>>);

async fn collect(
    state: &AppState,
    mut prepared: Prepared,
    mut rx: mpsc::Receiver<RunEvent>,
) -> Result<Collected, AppError> {
    let mut message = AssembledMessage::default();
    let mut logprobs: Option<Vec<TokenLogprob>> = None;
    let mut finish = "stop";
    let mut completion = 0;
    while let Some(event) = rx.recv().await {
        match event {
            RunEvent::Event(GenerationEvent::Text { text, logprobs: lp }) => {
                message.extend(&prepared.parse(&text).await);
                if !lp.is_empty() {
                    logprobs.get_or_insert_with(Vec::new).extend(lp);
                }
            }
            RunEvent::Event(GenerationEvent::Done { finish: f, usage, .. }) => {
                finish = f.as_openai();
                completion = usage.completion_tokens;
            }
            RunEvent::Failed(e) => return Err(AppError::Internal(e)),
        }
    }
    message.extend(&prepared.finish_parsing(&state.metrics).await);
    Metrics::add(&state.metrics.malformed_tool_calls, message.malformed.len() as u64);
    Metrics::add(&state.metrics.prompt_tokens, prepared.prompt_tokens.len() as u64);
    Metrics::add(&state.metrics.completion_tokens, completion as u64);
    if !message.tool_calls.is_empty() {
        finish = "tool_calls";
    }
    Ok((message, finish, usage_json(prepared.prompt_tokens.len(), completion), logprobs))
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
    mut prepared: Prepared,
    mut rx: mpsc::Receiver<RunEvent>,
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
        return;
    }
    let mut finish = "stop";
    let mut completion = 0;
    let mut saw_tool_call = false;
    let mut malformed = 0u64;
    let mut pending_logprobs: Vec<TokenLogprob> = Vec::new();
    let mut failed = None;
    loop {
        let Some(event) = rx.recv().await else { break };
        let parsed = match event {
            RunEvent::Event(GenerationEvent::Text { text, logprobs }) => {
                pending_logprobs.extend(logprobs);
                prepared.parse(&text).await
            }
            RunEvent::Event(GenerationEvent::Done { finish: f, usage, .. }) => {
                finish = f.as_openai();
                completion = usage.completion_tokens;
                continue;
            }
            RunEvent::Failed(e) => {
                failed = Some(e);
                break;
            }
        };
        for event in &parsed {
            saw_tool_call |= matches!(event, ParseEvent::ToolCallBegin { .. });
            malformed += u64::from(matches!(event, ParseEvent::Malformed(_)));
            if let Some(delta) = delta_of(event) {
                let lp = (!pending_logprobs.is_empty())
                    .then(|| json!({"content": logprob_entries(&std::mem::take(&mut pending_logprobs))}));
                if !send(chunk(&id, created, &model, delta, None, lp)).await {
                    // The client went away: dropping `rx` cancels the generation.
                    Metrics::add(&state.metrics.cancelled, 1);
                    return;
                }
            }
        }
    }
    for event in prepared.finish_parsing(&state.metrics).await {
        saw_tool_call |= matches!(event, ParseEvent::ToolCallBegin { .. });
        malformed += u64::from(matches!(event, ParseEvent::Malformed(_)));
        if let Some(delta) = delta_of(&event)
            && !send(chunk(&id, created, &model, delta, None, None)).await
        {
            return;
        }
    }
    Metrics::add(&state.metrics.malformed_tool_calls, malformed);
    Metrics::add(&state.metrics.prompt_tokens, prepared.prompt_tokens.len() as u64);
    Metrics::add(&state.metrics.completion_tokens, completion as u64);
    if let Some(error) = failed {
        let body = json!({"error": {"message": format!("generation failed: {error}"), "type": "server_error", "param": null, "code": "internal_error"}});
        let _ = send(Event::default().data(body.to_string())).await;
    } else {
        if saw_tool_call {
            finish = "tool_calls";
        }
        let _ = send(chunk(&id, created, &model, json!({}), Some(finish), None)).await;
        if include_usage {
            let body = json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": null, "choices": [], "usage": usage_json(prepared.prompt_tokens.len(), completion),
            });
            let _ = send(Event::default().data(body.to_string())).await;
        }
    }
    let _ = send(Event::default().data("[DONE]")).await;
}
