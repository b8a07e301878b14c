//! Cold start: every registration is in etcd, and the bridge starts on an empty namespace. Timed
//! from the process spawn until the watch shows every object in place, and until `/readyz` says
//! 200.

use crate::Ctx;
use crate::audit::writes_json;
use crate::bridge::{BRIDGE_OWNED, Bridge};
use crate::changes::{converge, create_namespace};
use crate::harness::{progress, step};
use crate::import::Estate;
use crate::model::{Model, TXN_OPS, all_regs, put_all};
use crate::stats::{dur_json, r3, secs};
use crate::tracker::Tracker;
use serde_json::json;
use std::time::Duration;

/// Loads `model` into etcd and starts the import bridge on it; returns the time until every
/// object was in place (None if never) and the estate the next sections work on.
pub async fn section(ctx: &mut Ctx, model: Model) -> (Option<Duration>, Estate) {
    let (ns, prefix) = ("bench-import", "/bench-import/");
    let regs = model.registrations();
    step(&format!(
        "cold start: {regs} registrations over {} services in etcd, then the bridge starts on an empty namespace",
        ctx.sz.services
    ));
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let load = put_all(&mut ctx.etcd, prefix, &all_regs(&model), "load").await;
    progress(&format!(
        "{regs} puts in {:.2} s (txns of {TXN_OPS})",
        load.as_secs_f64()
    ));
    let mark = ctx.audit.mark();
    let cpu = ctx.cpu.mark(None);
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "import"));
    let spawned = bridge.spawned;
    let (cold, mut cold_ready) = converge(
        &tracker,
        &model.want,
        spawned,
        ctx.sz.converge_timeout,
        Some(&mut bridge),
        "cold start",
    )
    .await;
    if cold_ready.is_none() {
        cold_ready = bridge.ready(ctx.sz.converge_timeout).await;
    }
    tokio::time::sleep(ctx.sz.settle).await;
    let cold_writes = ctx.audit.bridge_writes(mark, ns);
    let (hwm, rss) = bridge.rss_mib();
    progress(&format!(
        "every object in place after {}, /readyz 200 after {}, {} writes, VmHWM {:.1} MiB",
        secs(cold),
        secs(cold_ready),
        cold_writes.len(),
        hwm.unwrap_or(0.0)
    ));
    ctx.report.insert(
        "cold_start".into(),
        json!({
            "registrations": regs,
            "services": ctx.sz.services,
            "etcd_load_s": dur_json(Some(load)),
            "in_place_s": dur_json(cold),
            "ready_s": dur_json(cold_ready),
            "writes": writes_json(&cold_writes),
            "vm_hwm_mib": r3(hwm),
            "vm_rss_mib": r3(rss),
            "cpu": ctx.cpu.since(&cpu, Some(&bridge)),
        }),
    );
    let estate = Estate {
        ns,
        prefix,
        model,
        tracker,
        bridge,
    };
    (cold, estate)
}
