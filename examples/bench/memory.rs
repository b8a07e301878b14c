//! Memory at 100k registrations (10,000 services × 10 endpoints): a new bridge on an empty prefix
//! while they are loaded, then a restart over them, which is the cold start at that size.

use crate::Ctx;
use crate::audit::writes_json;
use crate::bridge::{BRIDGE_OWNED, Bridge, note_log_warnings, stop_bridge};
use crate::changes::{converge, create_namespace};
use crate::harness::{progress, step};
use crate::model::{Model, all_regs, put_all};
use crate::stats::{dur_json, r3, secs};
use crate::tracker::Tracker;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::json;
use std::time::Instant;

pub struct Big {
    pub rss: Option<f64>,
    pub rss_restart: Option<f64>,
    pub registrations: usize,
}

/// Memory at 100k registrations: 10,000 services × 10 endpoints.
pub async fn section(ctx: &mut Ctx) -> Big {
    let (ns, prefix) = ("bench-big", "/bench-big/");
    let model = Model::new("big", ctx.sz.big_services, ctx.sz.big_endpoints);
    let regs = model.registrations();
    step(&format!(
        "memory: {regs} registrations ({} services × {}), loaded in txns while the bridge runs",
        ctx.sz.big_services, ctx.sz.big_endpoints
    ));
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "big"));
    let ready = bridge.ready(ctx.sz.restart_timeout).await;
    assert!(
        ready.is_some(),
        "the big bridge never got ready on an empty prefix"
    );
    let cpu = ctx.cpu.mark(Some(&bridge));
    let started = Instant::now();
    let load = put_all(&mut ctx.etcd, prefix, &all_regs(&model), "load").await;
    progress(&format!("{regs} puts in {:.1} s", load.as_secs_f64()));
    let (converged, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.big_timeout,
        Some(&mut bridge),
        "100k",
    )
    .await;
    let big_cpu = ctx.cpu.since(&cpu, Some(&bridge));
    let (hwm, rss) = bridge.rss_mib();
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().labels(BRIDGE_OWNED))
        .await
        .map(|l| l.items.len())
        .ok();
    progress(&format!(
        "in place after {}: {} Services, {} EndpointSlices; VmHWM {:.1} MiB, VmRSS {:.1} MiB",
        secs(converged),
        services.map_or("-".into(), |n| n.to_string()),
        tracker.slices(),
        hwm.unwrap_or(0.0),
        rss.unwrap_or(0.0)
    ));
    if converged.is_none() {
        ctx.anomalies.push(format!(
            "100k: the bridge did not bring every object in place within {:?}",
            ctx.sz.big_timeout
        ));
    }
    let log1 = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "100k");

    // A restart reads all of it at once: the cold start at this size.
    step(&format!(
        "memory: restart of the bridge over {regs} registrations (one etcd read of the whole prefix)"
    ));
    let mark = ctx.audit.mark();
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "big-restarted"));
    let ready2 = bridge.ready(ctx.sz.restart_timeout).await;
    tokio::time::sleep(ctx.sz.settle).await;
    let writes2 = ctx.audit.bridge_writes(mark, ns);
    let (hwm2, _) = bridge.rss_mib();
    let log2 = bridge.log();
    progress(&format!(
        "/readyz 200 after {}, {} writes, VmHWM {:.1} MiB",
        secs(ready2),
        writes2.len(),
        hwm2.unwrap_or(0.0)
    ));
    if ready2.is_none() {
        let why = log2
            .lines()
            .rev()
            .find(|l| l.contains("WARN") || l.contains("ERROR"))
            .unwrap_or("(nothing in the log)")
            .to_string();
        ctx.anomalies.push(format!(
            "100k: after a restart over {regs} registrations the bridge was not ready within {:?}; its last warning: {why}",
            ctx.sz.restart_timeout
        ));
    }
    stop_bridge(&mut ctx.anomalies, &mut bridge, "100k (restarted)");
    note_log_warnings(ctx, "100k", &(log1 + &log2));
    ctx.report.insert(
        "memory_100k".into(),
        json!({
            "registrations": regs,
            "services": ctx.sz.big_services,
            "etcd_load_s": dur_json(Some(load)),
            "in_place_s": dur_json(converged),
            "services_listed": services,
            "slices_seen": tracker.slices(),
            "vm_hwm_mib": r3(hwm),
            "vm_rss_mib": r3(rss),
            "cpu": big_cpu,
            "restart": {
                "ready_s": dur_json(ready2),
                "writes": writes_json(&writes2),
                "vm_hwm_mib": r3(hwm2),
            },
        }),
    );
    Big {
        rss: hwm,
        rss_restart: ready2.and(hwm2),
        registrations: regs,
    }
}
