//! Propagation: etcd changes at a steady rate (alternately an add and a delete on a random
//! service), each timed from the etcd write until the bridge's EndpointSlice shows it.

use crate::Ctx;
use crate::audit::writes_json;
use crate::changes::converge;
use crate::harness::step;
use crate::import::Estate;
use crate::metrics::histogram_delta;
use crate::stats::Stats;
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn section(ctx: &mut Ctx, estate: &mut Estate) -> Stats {
    let regs = estate.model.registrations();
    step(&format!(
        "propagation: {} changes at {}/s (alternating add/delete on random services) over {regs} registrations",
        ctx.sz.changes, ctx.sz.rate
    ));
    let metrics_before = estate.bridge.metrics().await;
    let mark = ctx.audit.mark();
    let cpu = ctx.cpu.mark(Some(&estate.bridge));
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.rate);
    let (n, drain) = (ctx.sz.changes, ctx.sz.drain);
    let prop = estate
        .run_changes(ctx, (n, gap, drain), "propagation: etcd → EndpointSlice")
        .await;
    estate.bridge.check_alive();
    let prop_cpu = ctx.cpu.since(&cpu, Some(&estate.bridge));
    tokio::time::sleep(ctx.sz.settle).await;
    let prop_writes = ctx.audit.bridge_writes(mark, estate.ns);
    let metrics_after = estate.bridge.metrics().await;
    if !prop.missed.is_empty() {
        ctx.anomalies.push(format!(
            "propagation: {} of {n} etcd changes never showed in the bridge's EndpointSlices within {drain:?} (e.g. {})",
            prop.missed.len(),
            describe_missed(&prop.missed)
        ));
    }
    let (still, _) = converge(
        &estate.tracker,
        &estate.model.want,
        Instant::now(),
        Duration::from_secs(10),
        Some(&mut estate.bridge),
        "after propagation",
    )
    .await;
    if still.is_none() {
        ctx.anomalies.push(
            "propagation: after the changes the cluster does not match etcd (services differ)"
                .into(),
        );
    }
    ctx.report.insert(
        "propagation".into(),
        json!({
            "changes": n,
            "target_rate_per_s": ctx.sz.rate,
            "achieved_rate_per_s": (prop.rate * 10.0).round() / 10.0,
            "latency": prop.stats.json(),
            "writes": writes_json(&prop_writes),
            "writes_per_change": prop_writes.len() as f64 / n as f64,
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
            "cpu": prop_cpu,
        }),
    );
    prop.stats
}

/// The first few changes that never showed, for the report.
fn describe_missed(missed: &[(String, String, bool)]) -> String {
    missed
        .iter()
        .take(5)
        .map(|(s, ip, add)| format!("{} {ip} in {s}", if *add { "add" } else { "delete" }))
        .collect::<Vec<_>>()
        .join(", ")
}
