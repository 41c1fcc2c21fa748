//! Prometheus metrics: requests by route and status, tokens, parser failures, queue depth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;

use super::AppState;

#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    pub parser_sessions: AtomicU64,
    pub parser_failures: AtomicU64,
    pub malformed_tool_calls: AtomicU64,
    pub cancelled: AtomicU64,
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
    ];
    for (name, value) in counters {
        out.push_str(&format!("# TYPE {name} counter\n{name} {}\n", value.load(Ordering::Relaxed)));
    }
    out.push_str(&format!(
        "# TYPE rapid_host_queue_depth gauge\nrapid_host_queue_depth {}\n",
        state.runner.in_flight()
    ));
    out
}
