//! What each parser plugin costs: calls, input bytes and time inside the plugin, recorded
//! where the pipeline calls it and shown in `/metrics` and by `rapid-host plugin test`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::metrics::Histogram;

/// Per-call time buckets (seconds): a Rust guest's feed is ~1 µs, an interpreter's ~10 µs,
/// and a parser that rescans its buffer reaches milliseconds on long outputs.
pub const CALL_SECONDS_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// One plugin's running totals.
#[derive(Debug)]
pub struct PluginCost {
    pub feeds: AtomicU64,
    pub finishes: AtomicU64,
    /// Bytes of model output fed in.
    pub input_bytes: AtomicU64,
    /// Seconds inside the plugin per `feed` or `finish` call.
    pub call_seconds: Histogram,
}

impl Default for PluginCost {
    fn default() -> Self {
        Self {
            feeds: AtomicU64::default(),
            finishes: AtomicU64::default(),
            input_bytes: AtomicU64::default(),
            call_seconds: Histogram::new(CALL_SECONDS_BUCKETS),
        }
    }
}

impl PluginCost {
    pub fn feed(&self, bytes: usize, took: Duration) {
        self.feeds.fetch_add(1, Ordering::Relaxed);
        self.input_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.call_seconds.observe(took.as_secs_f64());
    }

    pub fn finish(&self, took: Duration) {
        self.finishes.fetch_add(1, Ordering::Relaxed);
        self.call_seconds.observe(took.as_secs_f64());
    }
}

/// Costs by plugin name, shared by every pipeline of one runtime (and so kept across plugin
/// reloads).
#[derive(Debug, Default)]
pub struct ParserCosts {
    by_plugin: Mutex<BTreeMap<String, Arc<PluginCost>>>,
}

impl ParserCosts {
    /// The totals of `plugin`, created on first use.
    pub fn plugin(&self, plugin: &str) -> Arc<PluginCost> {
        match self.by_plugin.lock() {
            Ok(mut map) => Arc::clone(map.entry(plugin.to_string()).or_default()),
            Err(poisoned) => Arc::clone(poisoned.into_inner().entry(plugin.to_string()).or_default()),
        }
    }

    /// Every plugin's totals, by name.
    pub fn snapshot(&self) -> Vec<(String, Arc<PluginCost>)> {
        let map = match self.by_plugin.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(name, cost)| (name.clone(), Arc::clone(cost))).collect()
    }
}
