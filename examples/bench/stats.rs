//! Latency statistics and how they are printed and written to the JSON.

use serde_json::{Value, json};
use std::time::Duration;

/// Latency statistics in milliseconds (nearest-rank percentiles).
#[derive(Clone, Default)]
pub struct Stats {
    pub samples: Vec<f64>,
    pub missed: usize,
}

impl Stats {
    pub fn new(mut samples: Vec<f64>, missed: usize) -> Stats {
        samples.sort_by(|a, b| a.total_cmp(b));
        Stats { samples, missed }
    }
    pub fn pct(&self, p: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        Some(self.samples[rank.clamp(1, self.samples.len()) - 1])
    }
    pub fn p50(&self) -> Option<f64> {
        self.pct(50.0)
    }
    pub fn p99(&self) -> Option<f64> {
        self.pct(99.0)
    }
    pub fn max(&self) -> Option<f64> {
        self.samples.last().copied()
    }
    pub fn json(&self) -> Value {
        let mean = (!self.samples.is_empty())
            .then(|| self.samples.iter().sum::<f64>() / self.samples.len() as f64);
        json!({
            "n": self.samples.len(),
            "missed": self.missed,
            "p50_ms": r3(self.p50()),
            "p90_ms": r3(self.pct(90.0)),
            "p99_ms": r3(self.p99()),
            "max_ms": r3(self.max()),
            "mean_ms": r3(mean),
            "samples_ms": self.samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        })
    }
    pub fn brief(&self) -> String {
        format!(
            "p50 {} p99 {} max {} (n={}{})",
            ms(self.p50()),
            ms(self.p99()),
            ms(self.max()),
            self.samples.len(),
            if self.missed > 0 {
                format!(", {} missed", self.missed)
            } else {
                String::new()
            }
        )
    }
}

pub fn r3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

pub fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "-".into(),
    }
}

pub fn secs(d: Option<Duration>) -> String {
    d.map_or("did not finish".into(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

pub fn dur_json(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
    })
}
