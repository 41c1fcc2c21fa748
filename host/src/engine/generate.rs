//! The token loop: prefill, sample, detokenize, stop strings, streaming, cancellation.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::constraint::Constraint;
use super::sampling::{Sampler, SamplingParams, log_softmax};
use super::tokenizer::Detokenizer;
use super::{Engine, EngineError};

/// Prompt tokens processed per forward pass during prefill.
const PREFILL_CHUNK: usize = 512;

#[derive(Debug, Clone, Default)]
pub struct GenerationRequest {
    pub prompt_tokens: Vec<u32>,
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Text that ends generation; never emitted, even when split across tokens.
    pub stop: Vec<String>,
    /// `Some(n)`: report each token's log-probability and the `n` most likely alternatives.
    pub logprobs: Option<usize>,
    /// Generate `max_tokens` whatever the model says (benchmarks).
    pub ignore_eos: bool,
    /// A compiled grammar the output must follow (structured output, forced tool calls).
    pub constraint: Option<Constraint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token, or the grammar completed.
    Stop,
    /// One of the request's stop strings (its index in `GenerationRequest::stop`).
    StopSequence(usize),
    /// `max_tokens` or the context ran out.
    Length,
    /// The consumer went away.
    Cancelled,
}

impl FinishReason {
    pub fn as_openai(self) -> &'static str {
        match self {
            Self::Stop | Self::StopSequence(_) | Self::Cancelled => "stop",
            Self::Length => "length",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub prefill: Duration,
    pub decode: Duration,
}

impl Timings {
    pub fn prefill_tps(&self, usage: &Usage) -> f64 {
        usage.prompt_tokens as f64 / self.prefill.as_secs_f64().max(1e-9)
    }

    /// Decode speed over the tokens after the first (the first comes out of prefill).
    pub fn decode_tps(&self, usage: &Usage) -> f64 {
        usage.completion_tokens.saturating_sub(1) as f64 / self.decode.as_secs_f64().max(1e-9)
    }
}

/// Log-probability of one generated token and its top alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenerationEvent {
    /// New text (possibly empty while a character or a possible stop string is pending),
    /// with the logprobs of the tokens it came from when asked.
    Text {
        text: String,
        logprobs: Vec<TokenLogprob>,
    },
    Done {
        finish: FinishReason,
        usage: Usage,
        timings: TimingsReport,
    },
}

/// Timings as they are reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimingsReport {
    pub prefill_tps: f64,
    pub decode_tps: f64,
}

/// The rayon threads Candle's own parallel operations (element-wise maps over large
/// tensors, f32 matrix products) split across while the token loop runs on one of them.
/// Our quantized kernels and attention use Candle's barrier pool instead
/// (`rapid_kernels::threads`), whose spinning workers answer faster than a rayon join.
fn compute_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| rayon::ThreadPoolBuilder::new().num_threads(rayon::current_num_threads()).build().ok()).as_ref()
}

/// Runs `request` on `engine`, calling `on_event` as text arrives. Returning
/// `ControlFlow::Break` cancels. Always ends with one `Done` event unless it errors.
pub fn generate(
    engine: &Engine,
    request: &GenerationRequest,
    on_event: impl FnMut(GenerationEvent) -> ControlFlow<()> + Send,
) -> Result<(), EngineError> {
    match compute_pool() {
        Some(pool) => pool.install(|| generate_here(engine, request, on_event)),
        None => generate_here(engine, request, on_event),
    }
}

fn generate_here(
    engine: &Engine,
    request: &GenerationRequest,
    mut on_event: impl FnMut(GenerationEvent) -> ControlFlow<()>,
) -> Result<(), EngineError> {
    let context = engine.context_length();
    let prompt = &request.prompt_tokens;
    if prompt.is_empty() {
        return Err(EngineError::Tokenizer(String::from("the prompt is empty")));
    }
    if prompt.len() >= context {
        return Err(EngineError::PromptTooLong { prompt: prompt.len(), context });
    }
    let mut sampler = Sampler::new(request.sampling.clone());
    for &t in prompt {
        sampler.observe(t);
    }
    let mut cache = engine.model.new_cache();
    let started = Instant::now();
    let mut logits = None;
    for chunk in prompt.chunks(PREFILL_CHUNK) {
        logits = Some(engine.model.forward(chunk, &mut cache)?);
    }
    let mut logits: Vec<f32> = match logits {
        Some(l) => l.to_vec1()?,
        None => return Err(EngineError::Tokenizer(String::from("the prompt is empty"))),
    };
    let prefill = started.elapsed();
    let decode_start = Instant::now();

    let mut usage = Usage { prompt_tokens: prompt.len(), completion_tokens: 0 };
    let mut detok = Detokenizer::default();
    let mut pending = String::new();
    let mut finish = FinishReason::Length;
    let mut logprobs = Vec::new();
    let max_tokens = request.max_tokens.min(context - prompt.len());
    let mut constraint = request.constraint.clone();
    while usage.completion_tokens < max_tokens {
        if let Some(constraint) = &mut constraint {
            if constraint.is_finished() {
                finish = FinishReason::Stop;
                break;
            }
            constraint.mask(&mut logits)?;
        }
        sampler.penalize(&mut logits);
        let token = sampler.sample(&logits);
        usage.completion_tokens += 1;
        if let Some(top_n) = request.logprobs {
            logprobs.push(token_logprob(engine, &logits, token, top_n));
        }
        if !request.ignore_eos && engine.tokenizer.stop_ids.contains(&token) {
            finish = FinishReason::Stop;
            break;
        }
        if let Some(constraint) = &mut constraint {
            constraint.accept(token)?;
        }
        sampler.observe(token);
        pending.push_str(&detok.push(&engine.tokenizer, token)?);
        if let Some((at, which)) = find_stop(&pending, &request.stop) {
            pending.truncate(at);
            finish = FinishReason::StopSequence(which);
            break;
        }
        let keep = held_back(&pending, &request.stop);
        let ready: String = pending.drain(..pending.len() - keep).collect();
        if on_event(GenerationEvent::Text { text: ready, logprobs: std::mem::take(&mut logprobs) }).is_break() {
            finish = FinishReason::Cancelled;
            break;
        }
        if usage.completion_tokens == max_tokens {
            break;
        }
        logits = engine.model.forward(&[token], &mut cache)?.to_vec1()?;
    }
    if finish != FinishReason::Cancelled {
        if finish == FinishReason::Length {
            pending.push_str(&detok.finish(&engine.tokenizer)?);
            if let Some((at, which)) = find_stop(&pending, &request.stop) {
                pending.truncate(at);
                finish = FinishReason::StopSequence(which);
            }
        }
        if !pending.is_empty() || !logprobs.is_empty() {
            let _ = on_event(GenerationEvent::Text { text: pending, logprobs });
        }
    }
    let timings = Timings { prefill, decode: decode_start.elapsed() };
    let report = TimingsReport { prefill_tps: timings.prefill_tps(&usage), decode_tps: timings.decode_tps(&usage) };
    let _ = on_event(GenerationEvent::Done { finish, usage, timings: report });
    Ok(())
}

fn token_logprob(engine: &Engine, logits: &[f32], token: u32, top_n: usize) -> TokenLogprob {
    let lp = log_softmax(logits);
    let text = |id: u32| engine.tokenizer.decode(&[id]).unwrap_or_default();
    // Tokens a grammar ruled out are not alternatives.
    let mut order: Vec<u32> = (0..lp.len() as u32).filter(|&id| lp[id as usize].is_finite()).collect();
    let n = top_n.min(order.len());
    if n > 0 {
        order.select_nth_unstable_by(n - 1, |a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
        order.truncate(n);
        order.sort_by(|a, b| lp[*b as usize].total_cmp(&lp[*a as usize]));
    } else {
        order.clear();
    }
    TokenLogprob {
        token: text(token),
        logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: order.into_iter().map(|id| (text(id), lp[id as usize])).collect(),
    }
}

/// Byte offset of the earliest stop string in `text`.
/// The earliest stop string in `text`: where it starts, and which one it is.
fn find_stop(text: &str, stops: &[String]) -> Option<(usize, usize)> {
    stops.iter().enumerate().filter(|(_, s)| !s.is_empty()).filter_map(|(i, s)| Some((text.find(s.as_str())?, i))).min()
}

/// Bytes at the end of `text` that could begin a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut keep = 0;
    for stop in stops {
        for len in (1..stop.len().min(text.len() + 1)).rev() {
            let start = text.len() - len;
            if len > keep && text.is_char_boundary(start) && stop.starts_with(&text[start..]) {
                keep = len;
                break;
            }
        }
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_found_and_prefixes_held() {
        let stops = vec![String::from("###"), String::from("END")];
        assert_eq!(find_stop("abc ### d", &stops).map(|(at, _)| at), Some(4));
        assert_eq!(held_back("abc #", &stops), 1);
        assert_eq!(held_back("abc ##", &stops), 2);
        assert_eq!(held_back("abc EN", &stops), 2);
        assert_eq!(held_back("abc", &stops), 0);
    }
}
