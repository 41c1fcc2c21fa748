//! Per-store resource limits, and turning a failed call into a [`PluginError`].

use std::time::Duration;

use wasmtime::{ResourceLimiter, Trap};

use super::PluginError;

/// The sandbox every plugin call runs in.
#[derive(Debug, Clone, Copy)]
pub struct SandboxLimits {
    /// Linear memory a store may grow to, in bytes (all memories together).
    pub memory_bytes: usize,
    /// Wall-clock budget of one call into a plugin.
    pub call_timeout: Duration,
    /// Table elements a store may grow to.
    pub table_elements: usize,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self { memory_bytes: 64 << 20, call_timeout: Duration::from_secs(2), table_elements: 100_000 }
    }
}

/// The store's limiter: caps memory and remembers when it refused, so a failed call can
/// be reported as "memory cap" rather than an anonymous trap.
#[derive(Debug)]
pub struct StoreLimiter {
    memory_cap: usize,
    table_cap: usize,
    memory_in_use: usize,
    pub(crate) refused_memory: bool,
}

impl StoreLimiter {
    pub fn new(limits: &SandboxLimits) -> Self {
        Self {
            memory_cap: limits.memory_bytes,
            table_cap: limits.table_elements,
            memory_in_use: 0,
            refused_memory: false,
        }
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_in_use - current.min(self.memory_in_use) + desired;
        if total > self.memory_cap {
            self.refused_memory = true;
            // An error (not `Ok(false)`) traps at once: a guest allocator that ignores a
            // failed grow cannot keep spinning.
            return Err(wasmtime::format_err!("memory cap of {} bytes reached", self.memory_cap));
        }
        self.memory_in_use = total;
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= self.table_cap)
    }

    // Interpreter guests (componentize-py) carry more than 16 core instances.
    fn instances(&self) -> usize {
        64
    }

    fn tables(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        16
    }
}

/// Host state of a plugin store: nothing but its limiter. Plugins get no WASI context.
#[derive(Debug)]
pub struct PluginState {
    pub(crate) limiter: StoreLimiter,
}

/// Classifies the error of a call that failed inside `plugin`.
pub fn classify(
    error: wasmtime::Error,
    refused_memory: bool,
    plugin: &str,
    call: &'static str,
    limits: &SandboxLimits,
) -> PluginError {
    if refused_memory {
        return PluginError::MemoryExceeded { plugin: plugin.to_string(), call, limit_bytes: limits.memory_bytes };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout { plugin: plugin.to_string(), call, limit: limits.call_timeout },
        Some(trap) => PluginError::Trap { plugin: plugin.to_string(), call, detail: trap.to_string() },
        None => PluginError::Trap { plugin: plugin.to_string(), call, detail: format!("{error:#}") },
    }
}
