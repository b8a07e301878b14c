//! Burst: new registrations on every existing service, in shuffled order, put in txns as fast as
//! etcd takes them. Timed from the first put until every address is in place; the writes are
//! compared with the slices the watch saw change.

use crate::Ctx;
use crate::audit::writes_json;
use crate::changes::converge;
use crate::harness::{progress, step};
use crate::import::Estate;
use crate::metrics::histogram_delta;
use crate::model::{TXN_OPS, fresh_ip, put_all};
use crate::stats::{dur_json, secs};
use serde_json::json;
use std::time::{Duration, Instant};

/// What the goals need of the burst.
pub struct Burst {
    pub converged: Option<Duration>,
    pub writes: usize,
    pub touched: usize,
}

pub async fn section(ctx: &mut Ctx, estate: &mut Estate) -> Burst {
    let Estate {
        ns,
        prefix,
        model,
        tracker,
        bridge,
    } = estate;
    let burst_n = ctx.sz.burst;
    step(&format!(
        "burst: {burst_n} new registrations on the {} existing services, in random order, txns of {TXN_OPS}, as fast as etcd takes them",
        ctx.sz.services
    ));
    let per = burst_n / ctx.sz.services;
    let mut burst: Vec<(String, String)> = Vec::with_capacity(burst_n);
    for name in model.names.clone() {
        for _ in 0..per {
            let ip = fresh_ip();
            model.want.get_mut(&name).unwrap().insert(ip.clone());
            burst.push((name.clone(), ip));
        }
    }
    ctx.rng.shuffle(&mut burst);
    tracker.reset_touched();
    let mark = ctx.audit.mark();
    let metrics_before = bridge.metrics().await;
    let cpu = ctx.cpu.mark(Some(bridge));
    let started = Instant::now();
    let put_time = put_all(&mut ctx.etcd, prefix, &burst, "burst").await;
    let (converged, _) = converge(
        tracker,
        &model.want,
        started,
        ctx.sz.converge_timeout,
        Some(bridge),
        "burst",
    )
    .await;
    let burst_cpu = ctx.cpu.since(&cpu, Some(bridge));
    tokio::time::sleep(ctx.sz.settle).await;
    let burst_writes = ctx.audit.bridge_writes(mark, ns);
    let touched = tracker.touched();
    let metrics_after = bridge.metrics().await;
    progress(&format!(
        "{burst_n} puts in {:.2} s; converged after {}; {} writes for {touched} slices touched",
        put_time.as_secs_f64(),
        secs(converged),
        burst_writes.len()
    ));
    ctx.report.insert(
        "burst".into(),
        json!({
            "puts": burst.len(),
            "txn_ops": TXN_OPS,
            "puts_s": dur_json(Some(put_time)),
            "converged_s": dur_json(converged),
            "writes": writes_json(&burst_writes),
            "slices_touched": touched,
            "writes_per_slice": burst_writes.len() as f64 / touched.max(1) as f64,
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
            "cpu": burst_cpu,
        }),
    );
    Burst {
        converged,
        writes: burst_writes.len(),
        touched,
    }
}
