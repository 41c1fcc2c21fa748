//! Live sequences and the step that advances them: prefill in chunks, sample, detokenize,
//! stop strings, logprobs, streaming, cancellation. [`step`] runs one forward over a ragged
//! batch of sequences (the server's scheduler calls it in a loop); [`generate`] is a batch of
//! one through the same step.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use super::constraint::Constraint;
use super::kv_cache::RecurrentStates;
use super::models::SeqInput;
use super::prefix_cache::Donation;
use super::sampling::{Sampler, SamplingParams, log_softmax};
use super::tokenizer::Detokenizer;
use super::{Engine, EngineError, KvCache};

/// Prompt tokens one step runs by default (`serve --max-batch-tokens`): the size of a
/// prompt's chunks, alone or in a batch.
pub const DEFAULT_BATCH_TOKENS: usize = 512;

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
    /// Prompt positions where a chat message ends (the HTTP side knows the template): with
    /// a prefix cache, a recurrent model's state is snapshotted there, so a later request
    /// that shares the conversation only up to one of them still reuses it.
    pub boundaries: Vec<usize>,
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
    /// Prompt tokens taken from the prefix cache instead of being prefilled.
    pub cached_tokens: usize,
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
///
/// A batch of one through the scheduler's own step ([`step`]), so a request alone runs the
/// same code, chunks and arithmetic as in a served batch.
pub fn generate(
    engine: &Engine,
    request: &GenerationRequest,
    on_event: impl FnMut(GenerationEvent) -> ControlFlow<()> + Send,
) -> Result<(), EngineError> {
    let run = || {
        let mut batch = vec![Sequence::new(engine, request.clone(), Box::new(on_event))?];
        while !batch[0].is_finished() {
            step(engine, &mut batch, DEFAULT_BATCH_TOKENS)?;
        }
        batch[0].take_error().map_or(Ok(()), Err)
    };
    match compute_pool() {
        Some(pool) => pool.install(run),
        None => run(),
    }
}

/// Runs `work` where the scheduler's forwards run: on [`compute_pool`] when there is one.
pub fn in_compute_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match compute_pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// Where a sequence's events go; `Break` means its consumer left.
pub type EventSink<'a> = Box<dyn FnMut(GenerationEvent) -> ControlFlow<()> + Send + 'a>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Prompt tokens still to run.
    Prefill,
    /// One sampled token to run per step.
    Decode,
    Finished,
}

/// One live sequence: its request, cache, sampler, grammar, detokenizer, stop-string
/// window and logprobs, stepped by [`step`] alone or with others.
pub struct Sequence<'a> {
    request: GenerationRequest,
    sink: EventSink<'a>,
    cache: KvCache,
    sampler: Sampler,
    constraint: Option<Constraint>,
    detok: Detokenizer,
    pending: String,
    logprobs: Vec<TokenLogprob>,
    usage: Usage,
    max_tokens: usize,
    /// Prompt tokens in the cache.
    fed: usize,
    /// The token sampled last: the next step's input.
    last: [u32; 1],
    /// With a prefix cache: a recurrent model's prompt is snapshotted every this many
    /// tokens, at the request's boundaries and at its end.
    snapshot_interval: Option<usize>,
    snapshots: Vec<(usize, RecurrentStates)>,
    /// Failed (its cache may be half-written): nothing to donate.
    failed: bool,
    phase: Phase,
    error: Option<EngineError>,
    started: Option<Instant>,
    prefill: Duration,
    decode_start: Option<Instant>,
}

impl std::fmt::Debug for Sequence<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sequence")
            .field("prompt", &self.request.prompt_tokens.len())
            .field("fed", &self.fed)
            .field("usage", &self.usage)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl<'a> Sequence<'a> {
    /// A sequence for `request`, its events into `sink`; refuses an empty prompt or one the
    /// context cannot hold.
    pub fn new(engine: &Engine, request: GenerationRequest, sink: EventSink<'a>) -> Result<Self, EngineError> {
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
        Ok(Self {
            max_tokens: request.max_tokens.min(context - prompt.len()),
            usage: Usage { prompt_tokens: prompt.len(), completion_tokens: 0, cached_tokens: 0 },
            constraint: request.constraint.clone(),
            cache: engine.model.new_cache(),
            sampler,
            request,
            sink,
            detok: Detokenizer::default(),
            pending: String::new(),
            logprobs: Vec::new(),
            fed: 0,
            last: [0],
            snapshot_interval: None,
            snapshots: Vec::new(),
            failed: false,
            phase: Phase::Prefill,
            error: None,
            started: None,
            prefill: Duration::ZERO,
            decode_start: None,
        })
    }

    /// Done: finished, cancelled or failed.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Whether the prompt is still being run.
    pub fn is_prefilling(&self) -> bool {
        self.phase == Phase::Prefill
    }

    /// Why the sequence failed, once.
    pub fn take_error(&mut self) -> Option<EngineError> {
        self.error.take()
    }

    /// Positions held in the sequence's KV cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Bytes one cached position takes in this sequence's cache (0 before it ran).
    pub fn position_bytes(&self) -> usize {
        self.cache.position_bytes()
    }

    pub fn request(&self) -> &GenerationRequest {
        &self.request
    }

    /// Ends the sequence now (its consumer left): `Done` with [`FinishReason::Cancelled`].
    pub fn cancel(&mut self) {
        if !self.is_finished() {
            self.finish(FinishReason::Cancelled);
        }
    }

    /// Ends the sequence with `error` (no `Done`: the caller reports the error).
    pub fn fail(&mut self, error: EngineError) {
        self.error = Some(error);
        self.failed = true;
        self.phase = Phase::Finished;
    }

    /// Starts from `cache`, which holds the first `cache.len()` prompt tokens (a prefix
    /// cache hit): only the rest is prefilled. Refused (returning `false`) once the sequence
    /// ran, or when the cache does not leave a prompt token to run.
    pub fn reuse_prefix(&mut self, cache: KvCache) -> bool {
        let reused = cache.len();
        if self.phase != Phase::Prefill || self.fed != 0 || reused == 0 || reused >= self.request.prompt_tokens.len() {
            return false;
        }
        self.cache = cache;
        self.fed = reused;
        self.usage.cached_tokens = reused;
        true
    }

    /// Snapshots a recurrent model's state every `interval` prompt tokens, at the
    /// request's message boundaries and at the end of the prompt (prefill chunks are cut
    /// there), for [`Self::donation`].
    pub fn snapshot_every(&mut self, interval: usize) {
        self.snapshot_interval = Some(interval.max(1));
    }

    /// What the sequence leaves to a prefix cache once it is done: the prompt tokens it
    /// ran, their keys and values, and the recurrent snapshots taken on the way. `None`
    /// while it runs, after a failure, or when taken already.
    ///
    /// The generated tokens' keys and values stay out: a decode step attends in llama.cpp's
    /// single-query order, so they differ in rounding from what a prefill of the same tokens
    /// computes, and a later turn built on them would not answer exactly as without the
    /// cache. The next turn prefills the answer again (a few tokens next to its new message).
    pub fn donation(&mut self) -> Option<Donation> {
        if self.phase != Phase::Finished || self.failed {
            return None;
        }
        let len = self.fed.min(self.cache.len());
        if len == 0 {
            return None;
        }
        let tokens = self.request.prompt_tokens.get(..len)?.to_vec();
        let mut snapshots = std::mem::take(&mut self.snapshots);
        snapshots.retain(|(at, _)| *at <= len);
        let capacity = self.cache.capacity();
        let mut cache = std::mem::replace(&mut self.cache, KvCache::new(0, capacity));
        let recurrent = cache.has_recurrent_state();
        if recurrent && cache.len() == len && !snapshots.iter().any(|(at, _)| *at == len) {
            // Cancelled mid-prompt: the states are those at its last prompt token.
            snapshots.push((len, cache.recurrent_states()));
        }
        // The recurrent states are past the prompt now; its snapshots stay.
        cache.truncate_attention(len);
        Some(Donation { tokens, cache, snapshots, recurrent })
    }

    /// The next prompt position past `fed` where a snapshot is due, when snapshots are on
    /// and the model is (or may be, before its first chunk) recurrent.
    fn next_snapshot(&self) -> Option<usize> {
        let interval = self.snapshot_interval?;
        if self.fed > 0 && !self.cache.has_recurrent_state() {
            return None;
        }
        let every = (self.fed / interval + 1) * interval;
        let boundary = self.request.boundaries.iter().copied().filter(|&b| b > self.fed).min();
        Some(boundary.map_or(every, |b| b.min(every)).min(self.request.prompt_tokens.len()))
    }

    /// Rows this sequence would run in a step with `chunk` prompt tokens per step.
    fn wants(&self, chunk: usize) -> usize {
        match self.phase {
            Phase::Prefill => {
                let left = self.request.prompt_tokens.len() - self.fed;
                let mut rows = left.min(chunk.max(1));
                if let Some(at) = self.next_snapshot()
                    && at > self.fed
                {
                    rows = rows.min(at - self.fed);
                }
                // Never a last chunk of one row: one query takes the decode step's summation
                // order, and the prompt's last row must come out as it does in any other cut
                // (with or without a prefix cache hit).
                if left - rows == 1 && rows > 1 {
                    rows -= 1;
                }
                rows
            }
            Phase::Decode => 1,
            Phase::Finished => 0,
        }
    }

    /// After a forward ran `rows` of this sequence's tokens: the last one's `logits`.
    fn ran(&mut self, engine: &Engine, rows: usize, mut logits: Vec<f32>) {
        if self.phase == Phase::Prefill {
            self.fed += rows;
            if let Some(interval) = self.snapshot_interval
                && self.cache.has_recurrent_state()
                && (self.fed.is_multiple_of(interval)
                    || self.fed == self.request.prompt_tokens.len()
                    || self.request.boundaries.contains(&self.fed))
            {
                self.snapshots.push((self.fed, self.cache.recurrent_states()));
            }
            if self.fed < self.request.prompt_tokens.len() {
                return;
            }
            self.prefill = self.started.map_or(Duration::ZERO, |s| s.elapsed());
            self.decode_start = Some(Instant::now());
            self.phase = Phase::Decode;
        }
        if let Err(e) = self.next_token(engine, &mut logits) {
            self.fail(e);
        }
    }

    /// Samples from `logits`, emits what text is ready, and ends the sequence where it ends.
    fn next_token(&mut self, engine: &Engine, logits: &mut [f32]) -> Result<(), EngineError> {
        if self.usage.completion_tokens >= self.max_tokens {
            self.finish(FinishReason::Length);
            return Ok(());
        }
        if let Some(constraint) = &mut self.constraint {
            if constraint.is_finished() {
                self.finish(FinishReason::Stop);
                return Ok(());
            }
            constraint.mask(logits)?;
        }
        self.sampler.penalize(logits);
        let token = self.sampler.sample(logits);
        self.usage.completion_tokens += 1;
        if let Some(top_n) = self.request.logprobs {
            self.logprobs.push(token_logprob(engine, logits, token, top_n));
        }
        if !self.request.ignore_eos && engine.tokenizer.stop_ids.contains(&token) {
            self.finish(FinishReason::Stop);
            return Ok(());
        }
        if let Some(constraint) = &mut self.constraint {
            constraint.accept(token)?;
        }
        self.sampler.observe(token);
        self.pending.push_str(&self.detok.push(&engine.tokenizer, token)?);
        if let Some((at, which)) = find_stop(&self.pending, &self.request.stop) {
            self.pending.truncate(at);
            self.finish(FinishReason::StopSequence(which));
            return Ok(());
        }
        let keep = held_back(&self.pending, &self.request.stop);
        let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
        let event = GenerationEvent::Text { text: ready, logprobs: std::mem::take(&mut self.logprobs) };
        if (self.sink)(event).is_break() {
            self.finish(FinishReason::Cancelled);
            return Ok(());
        }
        if self.usage.completion_tokens == self.max_tokens {
            self.finish_with(engine, FinishReason::Length)?;
            return Ok(());
        }
        self.last = [token];
        Ok(())
    }

    /// [`Self::finish`], first flushing the detokenizer when the length ran out.
    fn finish_with(&mut self, engine: &Engine, mut finish: FinishReason) -> Result<(), EngineError> {
        if finish == FinishReason::Length {
            self.pending.push_str(&self.detok.finish(&engine.tokenizer)?);
            if let Some((at, which)) = find_stop(&self.pending, &self.request.stop) {
                self.pending.truncate(at);
                finish = FinishReason::StopSequence(which);
            }
        }
        self.finish(finish);
        Ok(())
    }

    /// Emits the held-back text (unless cancelled) and `Done`.
    fn finish(&mut self, finish: FinishReason) {
        if finish != FinishReason::Cancelled && (!self.pending.is_empty() || !self.logprobs.is_empty()) {
            let text = std::mem::take(&mut self.pending);
            let _ = (self.sink)(GenerationEvent::Text { text, logprobs: std::mem::take(&mut self.logprobs) });
        }
        let timings =
            Timings { prefill: self.prefill, decode: self.decode_start.map_or(Duration::ZERO, |s| s.elapsed()) };
        let usage = self.usage;
        let report = TimingsReport { prefill_tps: timings.prefill_tps(&usage), decode_tps: timings.decode_tps(&usage) };
        let _ = (self.sink)(GenerationEvent::Done { finish, usage, timings: report });
        self.phase = Phase::Finished;
    }
}

/// What one step ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Sequences in the forward.
    pub sequences: usize,
    /// Rows (tokens) in the forward.
    pub tokens: usize,
    /// Of those, prompt tokens (prefill).
    pub prompt_tokens: usize,
}

/// One step of the unfinished sequences in `batch` (in order of arrival): one forward over
/// the next token of every decoding sequence and chunks of prompts, then each sequence
/// samples from its logits. Prompts run in chunks of `chunk` tokens cut from their start
/// (the same cuts alone and in any batch), as many chunks per step as fit in `chunk` rows
/// (at least one); decoding sequences add one row each.
///
/// A sequence that fails (its grammar, its detokenizer) ends with its error; a forward that
/// fails is returned, and the sequences in it are not advanced.
pub fn step(engine: &Engine, batch: &mut [Sequence<'_>], chunk: usize) -> Result<StepReport, EngineError> {
    let mut prompt_rows = 0;
    let mut rows = Vec::with_capacity(batch.len());
    for seq in batch.iter() {
        let want = seq.wants(chunk);
        let take = match seq.phase {
            Phase::Prefill if prompt_rows > 0 && prompt_rows + want > chunk => 0,
            Phase::Prefill => {
                prompt_rows += want;
                want
            }
            _ => want,
        };
        rows.push(take);
    }
    let mut inputs = Vec::with_capacity(batch.len());
    let now = Instant::now();
    for (seq, &n) in batch.iter_mut().zip(&rows) {
        if n == 0 {
            continue;
        }
        let Sequence { request, cache, last, fed, phase, started, .. } = seq;
        started.get_or_insert(now);
        let tokens = if *phase == Phase::Prefill { &request.prompt_tokens[*fed..*fed + n] } else { &last[..] };
        inputs.push(SeqInput { tokens, cache });
    }
    let report = StepReport { sequences: inputs.len(), tokens: rows.iter().sum(), prompt_tokens: prompt_rows };
    if inputs.is_empty() {
        return Ok(report);
    }
    let logits = engine.model.forward_batch(&mut inputs)?;
    drop(inputs);
    let mut logits = logits.into_iter();
    for (seq, &n) in batch.iter_mut().zip(&rows) {
        if n == 0 {
            continue;
        }
        match logits.next() {
            Some(l) => seq.ran(engine, n, l),
            None => seq.fail(EngineError::Candle(candle_core::Error::Msg(String::from("a forward lost a sequence")))),
        }
    }
    Ok(report)
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
