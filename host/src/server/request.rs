//! The one request model every chat API adapts to, and its path: admission first
//! ([`Runner::admit`](super::run::Runner::admit)), then the preparation (template, tool
//! prompt, tokenizing, plugin calls, grammar) on the blocking pool, then generation. Parser
//! plugins, structured output, stop strings, limits and metrics thus behave the same under
//! `/v1/chat/completions`, `/v1/messages` and `/v1/responses`.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::metrics::Metrics;
use super::output::{Finish, Output};
use super::run::RunEvent;
use super::structured::{self, HostCalls};
use super::{AppError, AppState};
use crate::engine::generate::{FinishReason, TokenLogprob};
use crate::engine::{GenerationEvent, GenerationRequest, SamplingParams};
use crate::parsers::{ParseEvent, ParserPipeline, PipelineConfig, tool_prompt};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// A call the assistant made earlier in the conversation.
#[derive(Debug, Clone)]
pub struct PastCall {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

#[derive(Debug, Clone)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// The assistant's reasoning, where a client sends it back.
    pub reasoning: Option<String>,
    pub tool_calls: Vec<PastCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), reasoning: None, tool_calls: Vec::new(), tool_call_id: None, name: None }
    }

    /// The message as chat templates expect it (OpenAI's shape, arguments as objects).
    fn to_template(&self) -> Value {
        let mut out = Map::new();
        out.insert("role".into(), json!(self.role.as_str()));
        // Always a string: many templates concatenate `content` (SmolLM2's fails on null), and
        // the ones that test it treat "" as no content.
        out.insert("content".into(), Value::String(self.content.clone()));
        if let Some(reasoning) = &self.reasoning {
            out.insert("reasoning_content".into(), json!(reasoning));
        }
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .iter()
                .map(|c| {
                    let arguments = serde_json::from_str::<Value>(&c.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!(c.arguments));
                    json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments}})
                })
                .collect();
            out.insert("tool_calls".into(), Value::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            out.insert("tool_call_id".into(), json!(id));
        }
        if let Some(name) = &self.name {
            out.insert("name".into(), json!(name));
        }
        Value::Object(out)
    }
}

/// A function the model may call.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// A JSON schema of the arguments object.
    pub parameters: Option<Value>,
}

impl Tool {
    /// OpenAI's tool shape, which templates and parser plugins read.
    fn to_openai(&self) -> Value {
        let mut function = Map::new();
        function.insert("name".into(), json!(self.name));
        if let Some(d) = &self.description {
            function.insert("description".into(), json!(d));
        }
        function.insert("parameters".into(), self.parameters.clone().unwrap_or_else(|| json!({"type": "object"})));
        json!({"type": "function", "function": function})
    }
}

/// What `tool_choice` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    /// At least one call (Anthropic's `any`).
    Required,
    /// Exactly one call of this function.
    Named(String),
}

/// One chat request, whatever API it came in by.
#[derive(Debug, Clone)]
pub struct ChatInput {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    /// `None`: auto with tools, none without.
    pub tool_choice: Option<ToolChoice>,
    pub parallel_tool_calls: bool,
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    /// Output constrained to this JSON schema.
    pub json_schema: Option<Value>,
    /// Alternatives per token to report, when logprobs are asked for.
    pub logprobs: Option<usize>,
    pub template_kwargs: Map<String, Value>,
    /// The API's field for `max_tokens` (named in errors).
    pub max_tokens_param: &'static str,
}

impl ChatInput {
    pub fn new(messages: Vec<Message>) -> Self {
        Self {
            messages,
            tools: Vec::new(),
            tool_choice: None,
            parallel_tool_calls: true,
            sampling: SamplingParams::default(),
            max_tokens: None,
            stop: Vec::new(),
            json_schema: None,
            logprobs: None,
            template_kwargs: Map::new(),
            max_tokens_param: "max_tokens",
        }
    }
}

/// The prompt of a request, as the model will see it.
#[derive(Debug)]
pub struct Prompt {
    pub tokens: Vec<u32>,
    /// The template opened a reasoning block.
    pub reasoning_started: bool,
    choice: ToolChoice,
    tools: Vec<Value>,
}

/// Renders and tokenizes `input`'s conversation (templates, tool prompts): what
/// `count_tokens` counts and what generation starts from. Blocking work.
pub fn render_prompt(state: &AppState, input: &ChatInput) -> Result<Prompt, AppError> {
    if input.messages.is_empty() {
        return Err(AppError::bad("`messages` must not be empty", Some("messages")));
    }
    let choice =
        input.tool_choice.clone().unwrap_or(if input.tools.is_empty() { ToolChoice::None } else { ToolChoice::Auto });
    if choice == ToolChoice::Required && input.tools.is_empty() {
        return Err(AppError::bad("`tool_choice` `required` needs a non-empty `tools` list", Some("tool_choice")));
    }
    let tools: Vec<Value> = match &choice {
        ToolChoice::None => Vec::new(),
        ToolChoice::Named(name) => {
            let picked: Vec<Value> = input.tools.iter().filter(|t| &t.name == name).map(Tool::to_openai).collect();
            if picked.is_empty() {
                return Err(AppError::bad(
                    format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    Some("tool_choice"),
                ));
            }
            picked
        }
        _ => input.tools.iter().map(Tool::to_openai).collect(),
    };
    let mut messages: Vec<Value> = input.messages.iter().map(Message::to_template).collect();
    let engine = &state.engine;
    let render = |messages: &[Value], tools: Option<&Value>| {
        engine
            .template
            .render(&Value::Array(messages.to_vec()), tools, true, &input.template_kwargs)
            .map_err(|e| AppError::bad(e.to_string(), Some("messages")))
    };
    let tools_value = (!tools.is_empty()).then(|| Value::Array(tools.clone()));
    let prompt = match &tools_value {
        Some(tools_value) if engine.template.supports_tools => render(&messages, Some(tools_value))?,
        Some(tools_value) => {
            // The template ignores `tools`: describe them in the tool parser's wire format.
            let snapshot = state.plugins.current();
            let from_plugin = state.tool_parser.as_deref().and_then(|parser| {
                tool_prompt(&snapshot, parser, &tools_value.to_string())
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
            render(&messages, None)?
        }
        None => render(&messages, None)?,
    };
    let reasoning_started = prompt.trim_end().ends_with("<think>");
    let bos_text = engine.tokenizer.bos.and_then(|b| engine.tokenizer.token(b)).unwrap_or_default();
    let add_bos = engine.tokenizer.add_bos && (bos_text.is_empty() || !prompt.starts_with(bos_text));
    let tokens = engine.tokenizer.encode(&prompt, add_bos).map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(Prompt { tokens, reasoning_started, choice, tools })
}

/// A request ready to generate.
#[derive(Debug)]
pub struct Prepared {
    pub generation: GenerationRequest,
    pub output: Output,
    /// The request field whose schema constrains the output, when it is the client's (not
    /// a plugin's grammar): a grammar that fails mid-answer is then the client's 400.
    pub schema_param: Option<&'static str>,
}

/// Everything before generation: prompt, limits, grammar, parsers. Blocking work.
pub fn prepare(state: &AppState, input: &ChatInput) -> Result<Prepared, AppError> {
    input.sampling.validate().map_err(|m| AppError::bad(m, None))?;
    let Prompt { tokens, reasoning_started, choice, tools } = render_prompt(state, input)?;
    let context = state.engine.context_length();
    if tokens.len() >= context {
        return Err(AppError::BadRequest {
            message: format!(
                "this model's context is {context} tokens, but the prompt has {} tokens; shorten the messages",
                tokens.len()
            ),
            param: Some("messages"),
            code: "context_length_exceeded",
        });
    }
    if input.max_tokens == Some(0) {
        return Err(AppError::bad(
            format!("`{}` must be at least 1", input.max_tokens_param),
            Some(input.max_tokens_param),
        ));
    }
    let max_tokens = input.max_tokens.unwrap_or(state.limits.default_max_tokens).min(context - tokens.len());
    let forced = matches!(choice, ToolChoice::Required | ToolChoice::Named(_));
    let single_call = matches!(choice, ToolChoice::Named(_)) || !input.parallel_tool_calls;
    let snapshot = state.plugins.current();
    let output = if forced {
        Some(structured::forced_tool_calls(state, &snapshot, &tools, single_call)?)
    } else {
        match &input.json_schema {
            Some(schema) => Some(structured::json_output(state, schema)?),
            None => None,
        }
    };
    let host_calls = output.as_ref().is_some_and(|o| o.host_calls);
    let schema_param = match &output {
        None => None,
        Some(_) if forced => host_calls.then_some("tools"),
        Some(_) => Some("response_format"),
    };
    let tools_json = Value::Array(tools.clone()).to_string();
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
    let forced_name = match &choice {
        ToolChoice::Named(name) => Some(name.clone()),
        _ => None,
    };
    let tool_names = rapid_plugin_sdk::grammar::tool_names(&tools);
    let output_reader =
        Output::new(pipeline, host_calls.then(HostCalls::default), forced, forced_name, single_call, tool_names);
    let generation = GenerationRequest {
        prompt_tokens: tokens,
        max_tokens,
        sampling: input.sampling.clone(),
        stop: input.stop.clone(),
        logprobs: input.logprobs,
        ignore_eos: false,
        constraint: output.map(|o| o.constraint),
        boundaries: Vec::new(),
    };
    Ok(Prepared { generation, output: output_reader, schema_param })
}

/// Runs blocking preparation work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppError> + Send + 'static,
) -> Result<T, AppError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| AppError::Internal(format!("preparation failed: {e}")))?
}

/// Admits, prepares and starts `input`.
pub async fn start(state: &Arc<AppState>, input: ChatInput) -> Result<Generation, AppError> {
    let admission = state.runner.admit()?;
    let prepared = {
        let state = Arc::clone(state);
        blocking(move || prepare(&state, &input)).await?
    };
    let prompt_tokens = prepared.generation.prompt_tokens.len();
    let stop = prepared.generation.stop.clone();
    let schema_param = prepared.schema_param;
    let rx = state.runner.start_admitted(admission, prepared.generation);
    Ok(Generation {
        state: Arc::clone(state),
        rx,
        output: Some(prepared.output),
        prompt_tokens,
        stop,
        engine_finish: None,
        completion_tokens: 0,
        cached_tokens: 0,
        outcome: None,
        over: false,
        schema_param,
    })
}

/// How a response ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub finish: Finish,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens the prefix cache gave (not prefilled).
    pub cached_tokens: usize,
}

/// What a generation produces, step by step.
#[derive(Debug)]
pub enum Step {
    Events { events: Vec<ParseEvent>, logprobs: Vec<TokenLogprob> },
    Done(Outcome),
    Failed(AppError),
}

/// A running generation, read through the response rules ([`Output`]). Dropping it cancels.
#[derive(Debug)]
pub struct Generation {
    state: Arc<AppState>,
    rx: mpsc::Receiver<RunEvent>,
    /// `None` only if a parser worker thread died; the rest is then raw text.
    output: Option<Output>,
    prompt_tokens: usize,
    stop: Vec<String>,
    engine_finish: Option<FinishReason>,
    completion_tokens: usize,
    cached_tokens: usize,
    outcome: Option<Outcome>,
    over: bool,
    schema_param: Option<&'static str>,
}

impl Generation {
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_tokens
    }

    /// Runs `work` on the response rules; where parser plugins run, on a blocking thread, so
    /// plugin code (up to its deadline per call) never stalls the async runtime.
    async fn read(
        &mut self,
        work: impl FnOnce(&mut Output) -> Vec<ParseEvent> + Send + 'static,
        fallback: Vec<ParseEvent>,
    ) -> Vec<ParseEvent> {
        let Some(mut output) = self.output.take() else { return fallback };
        if !output.runs_plugins() {
            let events = work(&mut output);
            self.output = Some(output);
            return events;
        }
        match tokio::task::spawn_blocking(move || {
            let events = work(&mut output);
            (output, events)
        })
        .await
        {
            Ok((output, events)) => {
                self.output = Some(output);
                events
            }
            Err(e) => {
                tracing::error!("parser worker stopped: {e}");
                Metrics::add(&self.state.metrics.parser_failures, 1);
                fallback
            }
        }
    }

    /// The next step: events as they come, then [`Step::Done`] (or [`Step::Failed`]), then `None`.
    pub async fn next(&mut self) -> Option<Step> {
        if self.over {
            return None;
        }
        if let Some(outcome) = self.outcome.take() {
            self.over = true;
            return Some(Step::Done(outcome));
        }
        loop {
            match self.rx.recv().await {
                Some(RunEvent::Event(GenerationEvent::Text { text, logprobs })) => {
                    let fallback = if text.is_empty() { Vec::new() } else { vec![ParseEvent::Content(text.clone())] };
                    let events = self.read(move |output| output.feed(&text), fallback).await;
                    if events.is_empty() && logprobs.is_empty() {
                        continue;
                    }
                    return Some(Step::Events { events, logprobs });
                }
                Some(RunEvent::Event(GenerationEvent::Done { finish, usage, .. })) => {
                    self.engine_finish = Some(finish);
                    self.completion_tokens = usage.completion_tokens;
                    self.cached_tokens = usage.cached_tokens;
                }
                Some(RunEvent::Failed(e)) => {
                    self.over = true;
                    return Some(Step::Failed(self.failure(e)));
                }
                None => {
                    let engine = self.engine_finish.unwrap_or(FinishReason::Stop);
                    let cut = matches!(engine, FinishReason::Length | FinishReason::StopSequence(_));
                    let events = self.read(move |output| output.finish(cut), Vec::new()).await;
                    let metrics = &self.state.metrics;
                    let finish = match &self.output {
                        Some(output) => {
                            Metrics::add(&metrics.malformed_tool_calls, output.malformed);
                            Metrics::add(&metrics.parser_failures, output.parser_failures);
                            output.finish_reason(engine, &self.stop)
                        }
                        None if cut => Finish::Length,
                        None => Finish::Stop,
                    };
                    Metrics::add(&metrics.prompt_tokens, self.prompt_tokens as u64);
                    Metrics::add(&metrics.completion_tokens, self.completion_tokens as u64);
                    self.outcome = Some(Outcome {
                        finish,
                        prompt_tokens: self.prompt_tokens,
                        completion_tokens: self.completion_tokens,
                        cached_tokens: self.cached_tokens,
                    });
                    return Some(Step::Events { events, logprobs: Vec::new() });
                }
            }
        }
    }

    /// What a failed generation answers: a client schema that outgrew the grammar engine's
    /// limits mid-answer is a 400 naming the field, anything else a 500.
    fn failure(&self, error: String) -> AppError {
        match self.schema_param {
            Some(param) if error.contains(crate::engine::constraint::TOO_COMPLEX) => AppError::BadRequest {
                message: format!("the `{param}` schema cannot be followed: {error}"),
                param: Some(param),
                code: if param == "tools" { "invalid_tool_schema" } else { "invalid_response_format" },
            },
            _ => AppError::Internal(error),
        }
    }

    /// Counts a client that went away mid-stream.
    pub fn cancelled(&self) {
        Metrics::add(&self.state.metrics.cancelled, 1);
    }
}
