//! The bridge's sync-latency histogram, per phase (the test bed's `metrics` reads the rest).

use serde_json::{Value, json};
use std::collections::HashMap;

/// The bridge's `sync_latency_seconds` histogram: (upper bound, cumulative count) per bucket,
/// and the sum and count.
pub fn sync_histogram(text: &str) -> (Vec<(String, f64)>, f64, f64) {
    parse_histogram(text, "etcd_bridge_sync_latency_seconds")
}

/// The histogram `name`: (upper bound, cumulative count) per bucket, and the sum and count.
pub fn parse_histogram(text: &str, name: &str) -> (Vec<(String, f64)>, f64, f64) {
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

/// The histogram `name` as JSON: count, mean, the buckets, and the upper bound of the bucket that
/// holds p50 and p99 (a histogram knows no better); `null` when the bridge has no such metric.
pub fn histogram(text: &str, name: &str) -> Value {
    let (buckets, sum, count) = parse_histogram(text, name);
    if buckets.is_empty() {
        return Value::Null;
    }
    let at = |q: f64| {
        let rank = (q * count).ceil().max(1.0);
        buckets
            .iter()
            .find(|(_, c)| *c >= rank)
            .map(|(le, _)| le.clone())
    };
    json!({
        "count": count,
        "mean_ms": if count > 0.0 { json!((sum / count * 1e6).round() / 1e3) } else { Value::Null },
        "p50_le_s": at(0.5),
        "p99_le_s": at(0.99),
        "cumulative_buckets": buckets.iter().map(|(le, c)| json!({"le": le, "count": c})).collect::<Vec<_>>(),
    })
}
