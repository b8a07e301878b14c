//! Isolated changes: single changes far enough apart that each is a flush of its own, with the
//! bridge's writes counted in the audit log and by its own counter (the goal: one write each).

use crate::Ctx;
use crate::audit::writes_json;
use crate::floor::FloorSlice;
use crate::harness::{progress, step};
use crate::import::Estate;
use crate::metrics::histogram_delta;
use serde_json::json;

/// What the goals need of the isolated changes.
pub struct Isolated {
    pub writes: usize,
    pub changes: usize,
    pub missed: usize,
}

pub async fn section(ctx: &mut Ctx, estate: &mut Estate, floor_slice: &mut FloorSlice) -> Isolated {
    step(&format!(
        "isolated changes: {} changes {} ms apart, writes counted in the audit log",
        ctx.sz.isolated,
        ctx.sz.isolated_gap.as_millis()
    ));
    let (n, gap, drain) = (ctx.sz.isolated, ctx.sz.isolated_gap, ctx.sz.drain);
    // The floor at the same spacing: an idle system wakes up slower than a busy one.
    let floor_isolated = floor_slice.run(&mut ctx.rng, (n, gap, drain)).await;
    progress(&format!(
        "floor (SSA → watch) at the same spacing: {}",
        floor_isolated.brief()
    ));
    let mark = ctx.audit.mark();
    let metric0 = estate.bridge.api_writes().await;
    let metrics_before = estate.bridge.metrics().await;
    let iso = estate.run_changes(ctx, (n, gap, drain), "isolated").await;
    tokio::time::sleep(ctx.sz.settle).await;
    let iso_writes = ctx.audit.bridge_writes(mark, estate.ns);
    let metric1 = estate.bridge.api_writes().await;
    let metrics_after = estate.bridge.metrics().await;
    progress(&format!(
        "{} writes for {n} changes ({} by the bridge's own counter)",
        iso_writes.len(),
        metric1
            .zip(metric0)
            .map_or("-".into(), |(a, b)| format!("{}", a - b))
    ));
    if iso_writes.len() > n {
        ctx.anomalies.push(format!(
            "isolated changes: {} API writes for {n} single-endpoint changes (expected {n}): {}",
            iso_writes.len(),
            writes_json(&iso_writes)
        ));
    }
    ctx.report.insert(
        "isolated".into(),
        json!({
            "changes": n,
            "gap_ms": gap.as_millis() as u64,
            "seen": iso.stats.samples.len(),
            "missed": iso.stats.missed,
            "writes": writes_json(&iso_writes),
            "writes_by_metric": metric1.zip(metric0).map(|(a, b)| a - b),
            "writes_per_change": iso_writes.len() as f64 / n as f64,
            "latency": iso.stats.json(),
            "floor_apply_at_same_spacing": floor_isolated.json(),
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
        }),
    );
    Isolated {
        writes: iso_writes.len(),
        changes: n,
        missed: iso.stats.missed,
    }
}
