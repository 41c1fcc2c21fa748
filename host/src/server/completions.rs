//! `POST /v1/completions`: raw text in, raw text out (no template, no parsers).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::chat::{SamplingFields, Stop, StreamOptions, completion_id, now};
use super::metrics::Metrics;
use super::request;
use super::run::RunEvent;
use super::{AppError, AppState, JsonBody};
use crate::engine::generate::TokenLogprob;
use crate::engine::{GenerationEvent, GenerationRequest};

/// OpenAI's default for this endpoint.
const DEFAULT_MAX_TOKENS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<usize>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub stop: Option<Stop>,
    pub n: Option<u32>,
    #[serde(default)]
    pub echo: bool,
    /// Number of alternatives per token (0-5); absent means none.
    pub logprobs: Option<usize>,
    pub suffix: Option<String>,
    /// Generate `max_tokens` whatever the model says (vLLM's and llama-server's extension;
    /// benchmarks use it).
    #[serde(default)]
    pub ignore_eos: bool,
}

struct Job {
    prompt: String,
    request: GenerationRequest,
}

fn prepare(state: &AppState, req: &CompletionRequest) -> Result<Vec<Job>, AppError> {
    state.check_model(req.model.as_deref())?;
    if req.n.is_some_and(|n| n != 1) {
        return Err(AppError::bad("only `n` = 1 is supported", Some("n")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(AppError::bad("`suffix` (fill-in-the-middle) is not supported", Some("suffix")));
    }
    if req.logprobs.is_some_and(|n| n > 5) {
        return Err(AppError::bad("`logprobs` must be at most 5", Some("logprobs")));
    }
    let prompts = match &req.prompt {
        Prompt::One(p) => vec![p.clone()],
        Prompt::Many(ps) if !ps.is_empty() => ps.clone(),
        Prompt::Many(_) => return Err(AppError::bad("`prompt` must not be empty", Some("prompt"))),
    };
    let sampling = req.sampling.to_params()?;
    let engine = &state.engine;
    let context = engine.context_length();
    prompts
        .into_iter()
        .map(|prompt| {
            let tokens = engine
                .tokenizer
                .encode(&prompt, engine.tokenizer.add_bos)
                .map_err(|e| AppError::Internal(e.to_string()))?;
            if tokens.is_empty() {
                return Err(AppError::bad("`prompt` must not be empty", Some("prompt")));
            }
            if tokens.len() >= context {
                return Err(AppError::BadRequest {
                    message: format!(
                        "this model's context is {context} tokens, but the prompt has {} tokens",
                        tokens.len()
                    ),
                    param: Some("prompt"),
                    code: "context_length_exceeded",
                });
            }
            let max_tokens = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).min(context - tokens.len());
            if max_tokens == 0 {
                return Err(AppError::bad("`max_tokens` must be at least 1", Some("max_tokens")));
            }
            Ok(Job {
                prompt,
                request: GenerationRequest {
                    prompt_tokens: tokens,
                    max_tokens,
                    sampling: sampling.clone(),
                    stop: req.stop.clone().map(Stop::into_vec).unwrap_or_default(),
                    logprobs: req.logprobs,
                    ignore_eos: req.ignore_eos,
                    constraint: None,
                    boundaries: Vec::new(),
                },
            })
        })
        .collect()
}

fn logprobs_json(items: &[TokenLogprob], start_offset: usize) -> Value {
    let mut offset = start_offset;
    let mut offsets = Vec::new();
    for t in items {
        offsets.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": items.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": items.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": items.iter().map(|t| {
            t.top.iter().map(|(tok, lp)| (tok.clone(), json!(lp))).collect::<Map<String, Value>>()
        }).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

pub async fn handle(State(state): State<Arc<AppState>>, JsonBody(req): JsonBody<CompletionRequest>) -> Response {
    let response = respond(&state, req).await.unwrap_or_else(IntoResponse::into_response);
    state.metrics.request("/v1/completions", response.status().as_u16());
    response
}

async fn respond(state: &Arc<AppState>, req: CompletionRequest) -> Result<Response, AppError> {
    // As every API: a place among the requests in flight first, then tokenizing on the
    // blocking pool, then generation.
    let admission = state.runner.admit()?;
    let req = Arc::new(req);
    let jobs = {
        let (state, req) = (Arc::clone(state), Arc::clone(&req));
        request::blocking(move || prepare(&state, &req)).await?
    };
    let mut admission = Some(admission);
    let id = completion_id("cmpl");
    let created = now();
    if req.stream {
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let (tx, out) = mpsc::channel::<Result<Event, Infallible>>(64);
        let state = Arc::clone(state);
        let echo = req.echo;
        let first_rx = match admission.take() {
            Some(admission) => state.runner.start_admitted(admission, jobs[0].request.clone()),
            None => state.runner.start(jobs[0].request.clone())?,
        };
        tokio::spawn(async move {
            let model = state.model_id().to_string();
            let chunk = |index: usize, text: &str, finish: Option<&str>| {
                json!({"id": id, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"text": text, "index": index, "logprobs": null, "finish_reason": finish}]})
            };
            let (mut prompt_total, mut completion_total, mut cached_total) = (0, 0, 0);
            let mut first = Some(first_rx);
            for (index, job) in jobs.iter().enumerate() {
                let mut rx = match first.take() {
                    Some(rx) => rx,
                    None => match state.runner.start(job.request.clone()) {
                        Ok(rx) => rx,
                        Err(e) => {
                            let _ = tx
                                .send(Ok(
                                    Event::default().data(json!({"error": {"message": e.to_string()}}).to_string())
                                ))
                                .await;
                            break;
                        }
                    },
                };
                if echo
                    && tx.send(Ok(Event::default().data(chunk(index, &job.prompt, None).to_string()))).await.is_err()
                {
                    return;
                }
                prompt_total += job.request.prompt_tokens.len();
                while let Some(event) = rx.recv().await {
                    let data = match event {
                        RunEvent::Event(GenerationEvent::Text { text, .. }) if text.is_empty() => continue,
                        RunEvent::Event(GenerationEvent::Text { text, .. }) => chunk(index, &text, None),
                        RunEvent::Event(GenerationEvent::Done { finish, usage, .. }) => {
                            completion_total += usage.completion_tokens;
                            cached_total += usage.cached_tokens;
                            chunk(index, "", Some(finish.as_openai()))
                        }
                        RunEvent::Failed(e) => {
                            json!({"error": {"message": format!("generation failed: {e}"), "type": "server_error"}})
                        }
                    };
                    if tx.send(Ok(Event::default().data(data.to_string()))).await.is_err() {
                        Metrics::add(&state.metrics.cancelled, 1);
                        return;
                    }
                }
            }
            Metrics::add(&state.metrics.prompt_tokens, prompt_total as u64);
            Metrics::add(&state.metrics.completion_tokens, completion_total as u64);
            if include_usage {
                let usage = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [],
                    "usage": usage_json(prompt_total, completion_total, cached_total)});
                let _ = tx.send(Ok(Event::default().data(usage.to_string()))).await;
            }
            let _ = tx.send(Ok(Event::default().data("[DONE]"))).await;
        });
        return Ok(Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).into_response());
    }

    let mut choices = Vec::new();
    let (mut prompt_total, mut completion_total, mut cached_total) = (0, 0, 0);
    for (index, job) in jobs.iter().enumerate() {
        let mut rx = match admission.take() {
            Some(admission) => state.runner.start_admitted(admission, job.request.clone()),
            None => state.runner.start(job.request.clone())?,
        };
        let mut text = if req.echo { job.prompt.clone() } else { String::new() };
        let offset = text.len();
        let mut logprobs = Vec::new();
        let mut finish = "stop";
        while let Some(event) = rx.recv().await {
            match event {
                RunEvent::Event(GenerationEvent::Text { text: t, logprobs: lp }) => {
                    text.push_str(&t);
                    logprobs.extend(lp);
                }
                RunEvent::Event(GenerationEvent::Done { finish: f, usage, .. }) => {
                    finish = f.as_openai();
                    completion_total += usage.completion_tokens;
                    cached_total += usage.cached_tokens;
                }
                RunEvent::Failed(e) => return Err(AppError::Internal(e)),
            }
        }
        prompt_total += job.request.prompt_tokens.len();
        choices.push(json!({
            "text": text,
            "index": index,
            "logprobs": req.logprobs.map(|_| logprobs_json(&logprobs, offset)),
            "finish_reason": finish,
        }));
    }
    Metrics::add(&state.metrics.prompt_tokens, prompt_total as u64);
    Metrics::add(&state.metrics.completion_tokens, completion_total as u64);
    Ok(Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": state.model_id(),
        "choices": choices,
        "usage": usage_json(prompt_total, completion_total, cached_total),
    }))
    .into_response())
}

/// OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt tokens
/// the prefix cache gave.
fn usage_json(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached}})
}
