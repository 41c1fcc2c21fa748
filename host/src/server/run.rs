//! The scheduler: one thread owns every live sequence and runs one forward per step over a
//! ragged batch of them (the next token of each decoding sequence plus chunks of prompts,
//! [`crate::engine::generate::step`]). Requests are admitted up to
//! `--max-concurrent-requests` (more get 503); up to `--max-running-requests` of them are in
//! the batch, the rest wait first come, first served. Sequences join and leave between
//! steps; a request whose receiver is dropped leaves at the next step.
//!
//! Request tasks do templates, tokenizing, grammar compilation and output parsing; the
//! scheduler thread only steps sequences.
//!
//! With a prefix cache ([`crate::engine::prefix_cache`]), a sequence that joins starts
//! from the longest cached prefix of its prompt and prefills only the rest; sequences that
//! finish or are cancelled donate their cache to it.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};

use super::AppError;
use super::metrics::Metrics;
use crate::engine::generate::{DEFAULT_BATCH_TOKENS, EventSink, Sequence, in_compute_pool, step};
use crate::engine::prefix_cache::{PrefixCache, PrefixCacheConfig, PrefixCacheStats};
use crate::engine::{Engine, GenerationEvent, GenerationRequest};

#[derive(Debug)]
pub enum RunEvent {
    Event(GenerationEvent),
    Failed(String),
}

/// How the scheduler batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Sequences in the batch at once (`--max-running-requests`).
    pub max_running: usize,
    /// Prompt tokens per step, and the size of a prompt's chunks (`--max-batch-tokens`).
    pub max_batch_tokens: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self { max_running: 8, max_batch_tokens: DEFAULT_BATCH_TOKENS }
    }
}

/// The numbers the scheduler publishes after each step.
#[derive(Debug, Default)]
struct Gauges {
    running: AtomicUsize,
    waiting: AtomicUsize,
    cached_tokens: AtomicUsize,
    /// Bytes one cached position takes (0 until a sequence has run).
    position_bytes: AtomicUsize,
    prefix_bytes: AtomicUsize,
    prefix_entries: AtomicUsize,
    prefix_snapshots: AtomicUsize,
}

/// A request handed to the scheduler.
struct Job {
    request: GenerationRequest,
    tx: mpsc::Sender<RunEvent>,
    admission: Admission,
}

#[derive(Debug)]
pub struct Runner {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    limit: usize,
    batch: BatchLimits,
    in_flight: Arc<AtomicUsize>,
    gauges: Arc<Gauges>,
    jobs: std::sync::mpsc::Sender<Job>,
    prefix: Option<PrefixCacheConfig>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("prompt", &self.request.prompt_tokens.len()).finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner with the default batch limits (8 running, 512 prompt tokens per step).
    pub fn new(engine: Arc<Engine>, limit: usize, metrics: Arc<Metrics>) -> Self {
        Self::with_batching(engine, limit, metrics, BatchLimits::default())
    }

    /// Starts the scheduler thread (without a prefix cache); it ends when the runner is
    /// dropped.
    pub fn with_batching(engine: Arc<Engine>, limit: usize, metrics: Arc<Metrics>, batch: BatchLimits) -> Self {
        Self::with_prefix_cache(engine, limit, metrics, batch, None)
    }

    /// As [`Self::with_batching`], with a prefix cache bounded by `prefix` (`None`: none).
    pub fn with_prefix_cache(
        engine: Arc<Engine>,
        limit: usize,
        metrics: Arc<Metrics>,
        batch: BatchLimits,
        prefix: Option<PrefixCacheConfig>,
    ) -> Self {
        let batch =
            BatchLimits { max_running: batch.max_running.max(1), max_batch_tokens: batch.max_batch_tokens.max(1) };
        let gauges = Arc::new(Gauges::default());
        let (jobs, queue) = std::sync::mpsc::channel();
        let scheduler = Scheduler {
            engine: Arc::clone(&engine),
            batch,
            gauges: Arc::clone(&gauges),
            metrics,
            prefix: prefix.map(PrefixCache::new),
        };
        let spawned = std::thread::Builder::new().name(String::from("scheduler")).spawn(move || scheduler.run(queue));
        if let Err(e) = spawned {
            tracing::error!("cannot start the scheduler thread: {e}");
        }
        Self {
            engine,
            slots: Arc::new(Semaphore::new(limit.max(1))),
            limit: limit.max(1),
            batch,
            in_flight: Arc::new(AtomicUsize::new(0)),
            gauges,
            jobs,
            prefix,
        }
    }

    /// The prefix cache's bounds, `None` without one.
    pub fn prefix_cache(&self) -> Option<&PrefixCacheConfig> {
        self.prefix.as_ref()
    }

    /// The prefix cache's size now (its counters live in [`Metrics`]).
    pub fn prefix_cache_size(&self) -> PrefixCacheStats {
        PrefixCacheStats {
            entries: self.gauges.prefix_entries.load(Ordering::Relaxed),
            bytes: self.gauges.prefix_bytes.load(Ordering::Relaxed),
            snapshots: self.gauges.prefix_snapshots.load(Ordering::Relaxed),
            ..PrefixCacheStats::default()
        }
    }

    /// Requests generating or queued right now (those being prepared included).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Sequences in the scheduler's batch.
    pub fn running(&self) -> usize {
        self.gauges.running.load(Ordering::Relaxed)
    }

    /// Requests handed to the scheduler and waiting for a place in the batch.
    pub fn waiting(&self) -> usize {
        self.gauges.waiting.load(Ordering::Relaxed)
    }

    /// The share (0..1) of the KV capacity in use: positions the running sequences cache
    /// over `max_running` sequences of the model's context length (each sequence's cache
    /// grows as it needs; this is the bound they grow towards), with the prefix cache's
    /// bytes over its budget added to both sides once a position's size is known.
    pub fn kv_cache_usage(&self) -> f64 {
        let capacity = self.kv_capacity_tokens().max(1) as f64;
        let cached = self.gauges.cached_tokens.load(Ordering::Relaxed) as f64;
        let position = self.gauges.position_bytes.load(Ordering::Relaxed) as f64;
        let usage = match &self.prefix {
            Some(prefix) if position > 0.0 => {
                let held = self.gauges.prefix_bytes.load(Ordering::Relaxed) as f64;
                (cached * position + held) / (capacity * position + prefix.max_bytes as f64)
            }
            _ => cached / capacity,
        };
        usage.min(1.0)
    }

    /// The positions the running sequences' caches can grow to together: a context window
    /// for each place in the batch.
    pub fn kv_capacity_tokens(&self) -> usize {
        self.engine.context_length() * self.batch.max_running
    }

    /// Takes a place among the requests generating or waiting, before the request is
    /// prepared (template, tokenizing, grammar), so that work too is bounded. Refuses with
    /// 503 when the server is at its concurrency limit. Dropping the admission frees it.
    pub fn admit(&self) -> Result<Admission, AppError> {
        let permit =
            Arc::clone(&self.slots).try_acquire_owned().map_err(|_| AppError::Overloaded { limit: self.limit })?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Admission { _permit: permit, in_flight: Arc::clone(&self.in_flight), admitted: Instant::now() })
    }

    /// Starts `request`; its events arrive on the returned channel. Refuses with 503 when
    /// the server is at its concurrency limit.
    pub fn start(self: &Arc<Self>, request: GenerationRequest) -> Result<mpsc::Receiver<RunEvent>, AppError> {
        let admission = self.admit()?;
        Ok(self.start_admitted(admission, request))
    }

    /// Starts an admitted request; its events arrive on the returned channel.
    pub fn start_admitted(
        self: &Arc<Self>,
        admission: Admission,
        request: GenerationRequest,
    ) -> mpsc::Receiver<RunEvent> {
        // Room for every event the request can produce (one per token, a last text, `Done`,
        // or one failure), so the scheduler never waits on a slow reader.
        let events = request.max_tokens.min(self.engine.context_length()) + 3;
        let (tx, rx) = mpsc::channel(events);
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(Job { request, tx, admission }) {
            let _ = job.tx.try_send(RunEvent::Failed(String::from("the scheduler has stopped")));
        }
        rx
    }
}

/// A request's place among those generating or waiting (see [`Runner::admit`]).
#[derive(Debug)]
pub struct Admission {
    _permit: tokio::sync::OwnedSemaphorePermit,
    in_flight: Arc<AtomicUsize>,
    admitted: Instant,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A sequence in the batch and what it answers to.
struct Live {
    sequence: Sequence<'static>,
    tx: mpsc::Sender<RunEvent>,
    _admission: Admission,
}

/// The loop on the scheduler thread.
struct Scheduler {
    engine: Arc<Engine>,
    batch: BatchLimits,
    gauges: Arc<Gauges>,
    metrics: Arc<Metrics>,
    prefix: Option<PrefixCache>,
}

impl Scheduler {
    fn run(mut self, queue: std::sync::mpsc::Receiver<Job>) {
        let mut waiting: VecDeque<Job> = VecDeque::new();
        let mut running: Vec<Live> = Vec::new();
        loop {
            if running.is_empty() && waiting.is_empty() {
                // Idle: sleep until a request arrives (or the runner is gone).
                match queue.recv() {
                    Ok(job) => waiting.push_back(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = queue.try_recv() {
                waiting.push_back(job);
            }
            // Clients that left while waiting are not worth a generation. What leaves is
            // dropped (freeing its admission) only after the gauges say so, so a client that
            // sees `in_flight` fall never reads stale running / waiting numbers.
            let (gone, kept): (Vec<Job>, Vec<Job>) = waiting.drain(..).partition(|job| job.tx.is_closed());
            waiting.extend(kept);
            while running.len() < self.batch.max_running {
                let Some(job) = waiting.pop_front() else { break };
                if let Some(live) = self.join(job) {
                    running.push(live);
                }
            }
            // Clients that left while running free their place now.
            for live in running.iter_mut().filter(|l| l.tx.is_closed()) {
                live.sequence.cancel();
            }
            let (mut left, stay): (Vec<Live>, Vec<Live>) = running.drain(..).partition(|l| l.sequence.is_finished());
            running = stay;
            for live in &mut left {
                self.donate(&mut live.sequence);
            }
            self.publish(&running, waiting.len());
            drop((gone, left));
            if running.is_empty() {
                continue;
            }
            let mut sequences: Vec<Sequence<'static>> = Vec::with_capacity(running.len());
            let mut owners = Vec::with_capacity(running.len());
            for live in running.drain(..) {
                sequences.push(live.sequence);
                owners.push((live.tx, live._admission));
            }
            // Each step, not the whole loop, runs on the compute pool: an idle scheduler must
            // not hold one of its threads (other runners and `generate` calls share the pool).
            let budget = self.batch.max_batch_tokens;
            match in_compute_pool(|| step(&self.engine, &mut sequences, budget)) {
                Ok(report) => {
                    self.metrics.batch_size.observe(report.sequences as f64);
                    self.metrics.batch_tokens.observe(report.tokens as f64);
                    Metrics::add(&self.metrics.prefill_tokens, report.prompt_tokens as u64);
                }
                Err(e) => {
                    // The forward itself failed: every sequence in the batch fails with it.
                    tracing::error!("batched forward failed: {e}");
                    for (tx, _) in &owners {
                        let _ = tx.try_send(RunEvent::Failed(e.to_string()));
                    }
                    self.publish(&running, waiting.len());
                    continue;
                }
            }
            let mut finished = Vec::new();
            for (mut sequence, (tx, admission)) in sequences.into_iter().zip(owners) {
                if let Some(e) = sequence.take_error() {
                    let _ = tx.try_send(RunEvent::Failed(e.to_string()));
                }
                if sequence.is_finished() {
                    self.donate(&mut sequence);
                    finished.push(admission);
                } else {
                    running.push(Live { sequence, tx, _admission: admission });
                }
            }
            self.publish(&running, waiting.len());
            drop(finished);
        }
    }

    /// The sequence for `job`, its events going to the job's channel with the latency
    /// metrics on the way; `None` (after telling the client) when the request is refused.
    fn join(&mut self, job: Job) -> Option<Live> {
        let Job { request, tx, admission } = job;
        if request.constraint.is_some() {
            Metrics::add(&self.metrics.constrained, 1);
        }
        let sink = event_sink(tx.clone(), Arc::clone(&self.metrics), admission.admitted);
        match Sequence::new(&self.engine, request, sink) {
            Ok(mut sequence) => {
                self.reuse_prefix(&mut sequence);
                Some(Live { sequence, tx, _admission: admission })
            }
            Err(e) => {
                let _ = tx.try_send(RunEvent::Failed(e.to_string()));
                None
            }
        }
    }

    /// Starts a joining sequence from the longest cached prefix of its prompt.
    fn reuse_prefix(&mut self, sequence: &mut Sequence<'static>) {
        let Some(prefix) = &mut self.prefix else { return };
        sequence.snapshot_every(prefix.config().snapshot_interval);
        let prompt = &sequence.request().prompt_tokens;
        // Room for the prompt, as the cache would grow to while prefilling it.
        let room = prompt.len().next_power_of_two().max(256);
        match prefix.lookup(prompt, room) {
            Some(hit) => {
                let reused = hit.reused;
                if sequence.reuse_prefix(hit.cache) {
                    Metrics::add(&self.metrics.prefix_cache_hits, 1);
                    Metrics::add(&self.metrics.prefix_cache_tokens_saved, reused as u64);
                    tracing::debug!(
                        "prefix cache hit: {reused} of {} prompt tokens",
                        sequence.request().prompt_tokens.len()
                    );
                } else {
                    Metrics::add(&self.metrics.prefix_cache_misses, 1);
                }
            }
            None => Metrics::add(&self.metrics.prefix_cache_misses, 1),
        }
    }

    /// Gives what a finished or cancelled sequence cached to the prefix cache.
    fn donate(&mut self, sequence: &mut Sequence<'static>) {
        let Some(prefix) = &mut self.prefix else { return };
        if let Some(donation) = sequence.donation() {
            prefix.insert(donation);
        }
        let stats = prefix.stats();
        self.gauges.prefix_bytes.store(stats.bytes, Ordering::Relaxed);
        self.gauges.prefix_entries.store(stats.entries, Ordering::Relaxed);
        self.gauges.prefix_snapshots.store(stats.snapshots, Ordering::Relaxed);
    }

    fn publish(&self, running: &[Live], waiting: usize) {
        self.gauges.running.store(running.len(), Ordering::Relaxed);
        self.gauges.waiting.store(waiting, Ordering::Relaxed);
        let cached = running.iter().map(|l| l.sequence.cached_tokens()).sum();
        self.gauges.cached_tokens.store(cached, Ordering::Relaxed);
        if self.gauges.position_bytes.load(Ordering::Relaxed) == 0
            && let Some(bytes) = running.iter().map(|l| l.sequence.position_bytes()).find(|&b| b > 0)
        {
            self.gauges.position_bytes.store(bytes, Ordering::Relaxed);
        }
    }
}

/// Events into `tx` (never blocking: the channel has room for all of them), with time to
/// first token, decode time and time per output token observed on the way.
fn event_sink(tx: mpsc::Sender<RunEvent>, metrics: Arc<Metrics>, admitted: Instant) -> EventSink<'static> {
    let mut first_token: Option<Instant> = None;
    Box::new(move |event| {
        match &event {
            GenerationEvent::Text { .. } if first_token.is_none() => {
                first_token = Some(Instant::now());
                metrics.time_to_first_token.observe(admitted.elapsed().as_secs_f64());
            }
            GenerationEvent::Done { usage, .. } => {
                if let Some(first) = first_token {
                    let decode = first.elapsed().as_secs_f64();
                    metrics.decode_time.observe(decode);
                    if usage.completion_tokens > 1 {
                        metrics.time_per_output_token.observe(decode / (usage.completion_tokens - 1) as f64);
                    }
                }
            }
            GenerationEvent::Text { .. } => {}
        }
        if tx.try_send(RunEvent::Event(event)).is_err() { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
}
