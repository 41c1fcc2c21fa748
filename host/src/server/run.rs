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
        }
    }

    /// Requests generating or queued right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Starts `request`; its events arrive on the returned channel. Refuses with 503 when
    /// the server is at its concurrency limit.
    pub fn start(self: &Arc<Self>, request: GenerationRequest) -> Result<mpsc::Receiver<RunEvent>, AppError> {
        let permit =
            Arc::clone(&self.slots).try_acquire_owned().map_err(|_| AppError::Overloaded { limit: self.limit })?;
        let (tx, rx) = mpsc::channel(256);
        let runner = Arc::clone(self);
        let admitted = Instant::now();
        runner.in_flight.fetch_add(1, Ordering::Relaxed);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let result = {
                let _turn = runner.busy.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // A client that left while queued is not worth a generation.
                if tx.is_closed() {
                    Ok(())
                } else {
                    if request.constraint.is_some() {
                        Metrics::add(&runner.metrics.constrained, 1);
                    }
                    let mut first_token: Option<Instant> = None;
                    generate(&runner.engine, &request, |event| {
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
                    })
                }
            };
            if let Err(e) = result {
                let _ = tx.blocking_send(RunEvent::Failed(e.to_string()));
            }
            runner.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(rx)
    }
}
