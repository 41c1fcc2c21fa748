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
    /// What one call may hand back to the host: its strings, and its lists at their size
    /// in host memory. Enforced while wasmtime copies the answer out (its "hostcall fuel"),
    /// so the host never allocates more; wasmtime's own default is 128 MiB.
    pub output_bytes_per_call: usize,
    /// What the parsers of one response may emit before any output: events then cost
    /// their text plus [`EVENT_OVERHEAD_BYTES`], and the budget grows by
    /// [`OUTPUT_BYTES_PER_INPUT_BYTE`] for each byte of model output fed in.
    pub output_bytes_per_response: usize,
    /// The longest tool prompt a parser may return for an empty `tools` list; each byte of
    /// the request's tools JSON allows [`TOOL_PROMPT_BYTES_PER_TOOLS_BYTE`] more.
    pub tool_prompt_bytes: usize,
}

/// What an event costs in a response's output budget besides its text (its size in host
/// memory, about what wasmtime counts per list element).
pub const EVENT_OVERHEAD_BYTES: usize = 64;
/// A parser's output budget grows by this much per byte of model output fed to it (JSON
/// escaping can turn one byte into six) ...
pub const OUTPUT_BYTES_PER_INPUT_BYTE: usize = 8;
/// ... and by this much per feed, so a stream of one-byte deltas can carry a few events each.
pub const OUTPUT_BYTES_PER_FEED: usize = 4 * EVENT_OVERHEAD_BYTES;
/// A tool prompt may restate the request's tools this many times over.
pub const TOOL_PROMPT_BYTES_PER_TOOLS_BYTE: usize = 2;

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 << 20,
            call_timeout: Duration::from_secs(2),
            table_elements: 100_000,
            output_bytes_per_call: 8 << 20,
            output_bytes_per_response: 1 << 20,
            tool_prompt_bytes: 64 << 10,
        }
    }
}

impl SandboxLimits {
    /// The longest tool prompt accepted for a request whose tools JSON is `tools_json_len` bytes.
    pub fn tool_prompt_limit(&self, tools_json_len: usize) -> usize {
        self.tool_prompt_bytes.saturating_add(tools_json_len.saturating_mul(TOOL_PROMPT_BYTES_PER_TOOLS_BYTE))
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

/// Host state of a plugin store: its limiter, and the output limit of the call under way.
/// Plugins get no WASI context.
#[derive(Debug)]
pub struct PluginState {
    pub(crate) limiter: StoreLimiter,
    pub(crate) output_limit: OutputLimit,
}

/// The most a call may hand back, and which limit that is (for the error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub bytes: usize,
    pub scope: OutputScope,
}

/// Which limit capped a call's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputScope {
    PerCall,
    /// What was left of the response's budget.
    Response,
    ToolPrompt,
}

impl std::fmt::Display for OutputScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PerCall => "the limit per call",
            Self::Response => "what was left of this response's output budget",
            Self::ToolPrompt => "the limit on a tool prompt for this request",
        })
    }
}

/// wasmtime's message when a call's answer is larger than the store's hostcall fuel (its
/// error type is private).
const FUEL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Classifies the error of a call that failed inside `plugin`.
pub fn classify(
    error: wasmtime::Error,
    state: &PluginState,
    plugin: &str,
    call: &'static str,
    limits: &SandboxLimits,
) -> PluginError {
    if state.limiter.refused_memory {
        return PluginError::MemoryExceeded { plugin: plugin.to_string(), call, limit_bytes: limits.memory_bytes };
    }
    if format!("{error:#}").contains(FUEL_EXHAUSTED) {
        return PluginError::OutputExceeded {
            plugin: plugin.to_string(),
            call,
            limit_bytes: state.output_limit.bytes,
            scope: state.output_limit.scope,
        };
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout { plugin: plugin.to_string(), call, limit: limits.call_timeout },
        Some(trap) => PluginError::Trap { plugin: plugin.to_string(), call, detail: trap.to_string() },
        None => PluginError::Trap { plugin: plugin.to_string(), call, detail: format!("{error:#}") },
    }
}
