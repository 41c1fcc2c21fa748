//! Runs generations on the blocking thread pool, one at a time on the engine, with a cap on
//! how many requests may be generating or waiting. Dropping the receiver cancels.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};

use super::AppError;
use super::metrics::Metrics;
use crate::engine::generate::generate;
use crate::engine::{Engine, GenerationEvent, GenerationRequest};

#[derive(Debug)]
pub enum RunEvent {
    Event(GenerationEvent),
    Failed(String),
}

#[derive(Debug)]
pub struct Runner {
    engine: Arc<Engine>,
    slots: Arc<Semaphore>,
    limit: usize,
    /// The engine runs one sequence at a time until continuous batching lands.
    busy: std::sync::Mutex<()>,
    in_flight: Arc<AtomicUsize>,
    /// Sequences generating right now (the rest of `in_flight` waits).
    running: AtomicUsize,
    /// Positions the live sequences hold in their KV caches.
    cached_tokens: AtomicUsize,
    metrics: Arc<Metrics>,
}

impl Runner {
    pub fn new(engine: Arc<Engine>, limit: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            engine,
            slots: Arc::new(Semaphore::new(limit.max(1))),
            limit: limit.max(1),
            busy: std::sync::Mutex::new(()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            running: AtomicUsize::new(0),
            cached_tokens: AtomicUsize::new(0),
        }
    }

    /// Requests generating or queued right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Sequences generating right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Requests admitted but not yet generating.
    pub fn waiting(&self) -> usize {
        self.in_flight().saturating_sub(self.running())
    }

    /// The share (0..1) of the KV capacity the live sequences hold: one sequence of the
    /// model's context length until batching lands.
    pub fn kv_cache_usage(&self) -> f64 {
        let capacity = self.engine.context_length().max(1);
        (self.cached_tokens.load(Ordering::Relaxed) as f64 / capacity as f64).min(1.0)
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
        let (tx, rx) = mpsc::channel(256);
        let runner = Arc::clone(self);
        let admitted = admission.admitted;
        tokio::task::spawn_blocking(move || {
            let _admission = admission;
            let result = {
                let _turn = runner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // A client that left while queued is not worth a generation.
                if tx.is_closed() {
                    Ok(())
                } else {
                    if request.constraint.is_some() {
                        Metrics::add(&runner.metrics.constrained, 1);
                    }
                    runner.running.fetch_add(1, Ordering::Relaxed);
                    runner.cached_tokens.store(request.prompt_tokens.len(), Ordering::Relaxed);
                    let mut first_token: Option<Instant> = None;
                    let outcome = generate(&runner.engine, &request, |event| {
                        if matches!(event, GenerationEvent::Text { .. }) {
                            // One text event per sampled token.
                            runner.cached_tokens.fetch_add(1, Ordering::Relaxed);
                        }
                        match &event {
                            GenerationEvent::Text { .. } if first_token.is_none() => {
                                first_token = Some(Instant::now());
                                runner.metrics.time_to_first_token.observe(admitted.elapsed().as_secs_f64());
                            }
                            GenerationEvent::Done { usage, .. } => {
                                if let Some(first) = first_token {
                                    let decode = first.elapsed().as_secs_f64();
                                    runner.metrics.decode_time.observe(decode);
                                    if usage.completion_tokens > 1 {
                                        let per_token = decode / (usage.completion_tokens - 1) as f64;
                                        runner.metrics.time_per_output_token.observe(per_token);
                                    }
                                }
                            }
                            GenerationEvent::Text { .. } => {}
                        }
                        if tx.blocking_send(RunEvent::Event(event)).is_err() {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    });
                    runner.cached_tokens.store(0, Ordering::Relaxed);
                    runner.running.fetch_sub(1, Ordering::Relaxed);
                    outcome
                }
            };
            if let Err(e) = result {
                let _ = tx.blocking_send(RunEvent::Failed(e.to_string()));
            }
        });
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
