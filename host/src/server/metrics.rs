//! Prometheus metrics: requests by route and status, tokens, parser failures, queue depth,
//! the load gauges (waiting, running, KV-cache use) under rapid-host's names and under vLLM's,
//! and latency histograms (time to first token, decode time, time per output token).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;

use super::AppState;
use crate::parsers::cost::ParserCosts;

/// A Prometheus histogram with fixed buckets (seconds).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    state: Mutex<HistogramState>,
}

#[derive(Debug, Default, Clone)]
struct HistogramState {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
    max: f64,
}

impl Histogram {
    pub const fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, state: Mutex::new(HistogramState { counts: Vec::new(), sum: 0.0, count: 0, max: 0.0 }) }
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.count)
    }

    /// The largest observation so far (0 before any).
    pub fn max_observed(&self) -> f64 {
        self.state.lock().map_or(0.0, |s| s.max)
    }

    /// Observations in `(low, high]`, two of the bucket bounds.
    pub fn count_between(&self, low: f64, high: f64) -> u64 {
        let s = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let at = |bound: f64| {
            self.bounds.iter().position(|b| *b == bound).and_then(|i| s.counts.get(i).copied()).unwrap_or(0)
        };
        at(high).saturating_sub(at(low))
    }

    pub fn observe(&self, value: f64) {
        if let Ok(mut s) = self.state.lock() {
            if s.counts.len() != self.bounds.len() {
                s.counts = vec![0; self.bounds.len()];
            }
            for (slot, bound) in s.counts.iter_mut().zip(self.bounds) {
                if value <= *bound {
                    *slot += 1;
                }
            }
            s.sum += value;
            s.count += 1;
            s.max = s.max.max(value);
        }
    }

    /// Sum of the observed values and how many there were.
    pub fn sum_and_count(&self) -> (f64, u64) {
        self.state.lock().map(|s| (s.sum, s.count)).unwrap_or_default()
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} histogram\n"));
        self.render_series(name, "", out);
    }

    /// The buckets, sum and count of one series; `labels` is `key="value",…` or empty.
    fn render_series(&self, name: &str, labels: &str, out: &mut String) {
        let s = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds.iter().enumerate() {
            let n = s.counts.get(i).copied().unwrap_or(0);
            out.push_str(&format!("{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}\n"));
        }
        let braced = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        out.push_str(&format!(
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}\n{name}_sum{braced} {}\n{name}_count{braced} {}\n",
            s.count, s.sum, s.count
        ));
    }
}

/// Per parser plugin: calls, input bytes, and time inside the plugin per call.
fn render_parser_costs(costs: &ParserCosts, out: &mut String) {
    let costs = costs.snapshot();
    out.push_str(
        "# HELP rapid_host_parser_plugin_calls_total Calls into each parser plugin, by call.\n\
         # TYPE rapid_host_parser_plugin_calls_total counter\n",
    );
    for (plugin, cost) in &costs {
        for (call, n) in [("feed", &cost.feeds), ("finish", &cost.finishes)] {
            out.push_str(&format!(
                "rapid_host_parser_plugin_calls_total{{plugin=\"{}\",call=\"{call}\"}} {}\n",
                label(plugin),
                n.load(Ordering::Relaxed)
            ));
        }
    }
    out.push_str(
        "# HELP rapid_host_parser_plugin_input_bytes_total Model output fed to each parser plugin.\n\
         # TYPE rapid_host_parser_plugin_input_bytes_total counter\n",
    );
    for (plugin, cost) in &costs {
        out.push_str(&format!(
            "rapid_host_parser_plugin_input_bytes_total{{plugin=\"{}\"}} {}\n",
            label(plugin),
            cost.input_bytes.load(Ordering::Relaxed)
        ));
    }
    let name = "rapid_host_parser_plugin_call_seconds";
    out.push_str(&format!(
        "# HELP {name} Time inside each parser plugin per feed or finish call (the sum is the plugin's total).\n\
         # TYPE {name} histogram\n"
    ));
    for (plugin, cost) in &costs {
        cost.call_seconds.render_series(name, &format!("plugin=\"{}\"", label(plugin)), out);
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

const LATENCY_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];
const BATCH_SIZE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0];
const BATCH_TOKENS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0];
const PER_TOKEN_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28];

#[derive(Debug)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub parser_sessions: AtomicU64,
    pub parser_failures: AtomicU64,
    pub malformed_tool_calls: AtomicU64,
    pub cancelled: AtomicU64,
    pub constrained: AtomicU64,
    /// Prompt tokens run through the model (those the prefix cache gave are not).
    pub prefill_tokens: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prefix_cache_misses: AtomicU64,
    /// Prompt tokens the prefix cache gave instead of a prefill.
    pub prefix_cache_tokens_saved: AtomicU64,
    /// From admission (queue wait included) to the first generated token.
    pub time_to_first_token: Histogram,
    /// From the first generated token to the last.
    pub decode_time: Histogram,
    pub time_per_output_token: Histogram,
    /// Sequences per scheduler step (one forward).
    pub batch_size: Histogram,
    /// Tokens (rows) per scheduler step: one per decoding sequence plus prompt chunks.
    pub batch_tokens: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::default(),
            prompt_tokens: AtomicU64::default(),
            completion_tokens: AtomicU64::default(),
            parser_sessions: AtomicU64::default(),
            parser_failures: AtomicU64::default(),
            malformed_tool_calls: AtomicU64::default(),
            cancelled: AtomicU64::default(),
            constrained: AtomicU64::default(),
            prefill_tokens: AtomicU64::default(),
            prefix_cache_hits: AtomicU64::default(),
            prefix_cache_misses: AtomicU64::default(),
            prefix_cache_tokens_saved: AtomicU64::default(),
            time_to_first_token: Histogram::new(LATENCY_BUCKETS),
            decode_time: Histogram::new(LATENCY_BUCKETS),
            time_per_output_token: Histogram::new(PER_TOKEN_BUCKETS),
            batch_size: Histogram::new(BATCH_SIZE_BUCKETS),
            batch_tokens: Histogram::new(BATCH_TOKENS_BUCKETS),
        }
    }
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route, status)).or_insert(0) += 1;
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub async fn render(State(state): State<Arc<AppState>>) -> String {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# TYPE rapid_host_requests_total counter\n");
    if let Ok(map) = m.requests.lock() {
        for ((route, status), n) in map.iter() {
            out.push_str(&format!("rapid_host_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}\n"));
        }
    }
    let counters = [
        ("rapid_host_prompt_tokens_total", &m.prompt_tokens),
        ("rapid_host_completion_tokens_total", &m.completion_tokens),
        ("rapid_host_parser_sessions_total", &m.parser_sessions),
        ("rapid_host_parser_failures_total", &m.parser_failures),
        ("rapid_host_malformed_tool_calls_total", &m.malformed_tool_calls),
        ("rapid_host_cancelled_generations_total", &m.cancelled),
        ("rapid_host_constrained_generations_total", &m.constrained),
        ("rapid_host_prefill_tokens_total", &m.prefill_tokens),
        ("rapid_host_prefix_cache_hits_total", &m.prefix_cache_hits),
        ("rapid_host_prefix_cache_misses_total", &m.prefix_cache_misses),
        ("rapid_host_prefix_cache_tokens_saved_total", &m.prefix_cache_tokens_saved),
    ];
    for (name, value) in counters {
        out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed)));
    }
    out.push_str(&format!(
        "# TYPE rapid_host_queue_depth gauge\nrapid_host_queue_depth {}\n",
        state.runner.in_flight()
    ));
    let prefix = state.runner.prefix_cache_size();
    let budget = state.runner.prefix_cache().map_or(0, |c| c.max_bytes);
    for (name, help, value) in [
        ("rapid_host_prefix_cache_bytes", "Bytes of keys, values and states the prefix cache holds.", prefix.bytes),
        ("rapid_host_prefix_cache_capacity_bytes", "The prefix cache's byte budget (0: no prefix cache).", budget),
        ("rapid_host_prefix_cache_entries", "Sequences the prefix cache holds.", prefix.entries),
        ("rapid_host_prefix_cache_snapshots", "Recurrent-state snapshots the prefix cache holds.", prefix.snapshots),
    ] {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    }
    render_load(&state, &mut out);
    m.batch_size.render("rapid_host_batch_size", "Sequences per scheduler step (one forward pass).", &mut out);
    m.batch_tokens.render(
        "rapid_host_batch_tokens",
        "Tokens per scheduler step: one per decoding sequence plus prompt chunks.",
        &mut out,
    );
    m.time_to_first_token.render(
        "rapid_host_time_to_first_token_seconds",
        "Admission (queue wait included) to the first generated token.",
        &mut out,
    );
    m.decode_time.render("rapid_host_decode_seconds", "First generated token to the last.", &mut out);
    m.time_per_output_token.render(
        "rapid_host_time_per_output_token_seconds",
        "Decode time divided by the tokens after the first.",
        &mut out,
    );
    render_parser_costs(state.plugins.current().runtime().parser_costs(), &mut out);
    out
}

/// The load an inference gateway routes by, read fresh on every scrape (the endpoint picker
/// of the Gateway API Inference Extension scrapes every 50 ms by default): rapid-host's own
/// names, then the same numbers under the vLLM names the picker reads unless told otherwise
/// (`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`,
/// and the optional `vllm:cache_config_info`), labelled with the served model as vLLM does.
fn render_load(state: &AppState, out: &mut String) {
    let runner = &state.runner;
    let (waiting, running, usage) = (runner.waiting(), runner.running(), runner.kv_cache_usage());
    let gauges: [(&str, &str, String); 3] = [
        ("requests_waiting", "Requests admitted and waiting for a place in the batch.", waiting.to_string()),
        ("requests_running", "Requests generating right now.", running.to_string()),
        (
            "kv_cache_usage_ratio",
            "Share (0..1) of the KV-cache capacity in use: the live sequences, plus the prefix cache over its budget.",
            usage.to_string(),
        ),
    ];
    for (name, help, value) in &gauges {
        out.push_str(&format!(
            "# HELP rapid_host_{name} {help}\n# TYPE rapid_host_{name} gauge\nrapid_host_{name} {value}\n"
        ));
    }
    let model = escape_label(state.model_id());
    let vllm = [
        ("vllm:num_requests_waiting", "Requests waiting to be processed (rapid_host_requests_waiting).", &gauges[0].2),
        ("vllm:num_requests_running", "Requests running (rapid_host_requests_running).", &gauges[1].2),
        (
            "vllm:kv_cache_usage_perc",
            "KV-cache usage, 1 means 100 percent (rapid_host_kv_cache_usage_ratio).",
            &gauges[2].2,
        ),
    ];
    for (name, help, value) in vllm {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{model_name=\"{model}\"}} {value}\n"));
    }
    // Each live sequence has a KV cache of its own that grows a position at a time, so a
    // block is one token and the capacity is a context window per sequence the batch holds
    // (what kv_cache_usage() divides by). The endpoint picker raises block sizes below its
    // minimum to that minimum.
    let blocks = runner.kv_capacity_tokens();
    out.push_str(&format!(
        "# HELP vllm:cache_config_info Information of the KV-cache layout (block size in tokens, blocks).\n\
         # TYPE vllm:cache_config_info gauge\n\
         vllm:cache_config_info{{block_size=\"1\",num_gpu_blocks=\"{blocks}\",model_name=\"{model}\"}} 1\n"
    ));
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
