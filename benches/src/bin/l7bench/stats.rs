//! Latency samples and their percentiles.
//!
//! Runs are short (tens of thousands of samples), so every sample is kept
//! and percentiles are exact (nearest rank) rather than from a histogram.

use serde_json::{Map, Value, json};

/// Latency samples in nanoseconds.
#[derive(Default)]
pub struct Samples(Vec<u64>);

impl Samples {
    pub fn push(&mut self, ns: u64) {
        self.0.push(ns);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `{prefix}p50_us`, `p99_us`, `p999_us`, `max_us`, `mean_us` into `out`
    /// (nulls when there are no samples).
    pub fn report(mut self, prefix: &str, out: &mut Map<String, Value>) {
        self.0.sort_unstable();
        let n = self.0.len();
        let us = |ns: u64| json!((ns as f64 / 100.0).round() / 10.0);
        let pct = |q: f64| {
            if n == 0 {
                return Value::Null;
            }
            let rank = ((q / 100.0) * n as f64).ceil() as usize;
            us(self.0[rank.clamp(1, n) - 1])
        };
        out.insert(format!("{prefix}p50_us"), pct(50.0));
        out.insert(format!("{prefix}p99_us"), pct(99.0));
        out.insert(format!("{prefix}p999_us"), pct(99.9));
        out.insert(format!("{prefix}max_us"), pct(100.0));
        let mean = if n == 0 {
            Value::Null
        } else {
            us(self.0.iter().sum::<u64>() / n as u64)
        };
        out.insert(format!("{prefix}mean_us"), mean);
    }
}
