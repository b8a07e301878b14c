//! The bridge's sync-latency histogram, per phase (the test bed's `metrics` reads the rest).

use serde_json::{Value, json};
use std::collections::HashMap;

/// The bridge's `sync_latency_seconds` histogram: (upper bound, cumulative count) per bucket,
/// and the sum and count.
pub fn sync_histogram(text: &str) -> (Vec<(String, f64)>, f64, f64) {
    let name = "etcd_bridge_sync_latency_seconds";
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let value = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if let Some(b) = rest.strip_prefix("_bucket{le=\"") {
            buckets.push((b.split('"').next().unwrap_or_default().to_string(), value));
        } else if rest.starts_with("_sum") {
            sum = value;
        } else if rest.starts_with("_count") {
            count = value;
        }
    }
    (buckets, sum, count)
}

pub fn histogram_delta(before: &str, after: &str) -> Value {
    let (b0, s0, c0) = sync_histogram(before);
    let (b1, s1, c1) = sync_histogram(after);
    let base: HashMap<String, f64> = b0.into_iter().collect();
    let buckets: Vec<Value> = b1
        .iter()
        .map(|(le, v)| json!({"le": le, "count": v - base.get(le).copied().unwrap_or(0.0)}))
        .collect();
    let n = c1 - c0;
    json!({
        "count": n,
        "mean_ms": if n > 0.0 { json!(((s1 - s0) / n * 1e6).round() / 1e3) } else { Value::Null },
        "cumulative_buckets": buckets,
    })
}
