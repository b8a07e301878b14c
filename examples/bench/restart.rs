//! Restart: SIGTERM the bridge, and start it again with every object already right. Timed from
//! spawn until `/readyz` says 200; the writes after it should be none.

use crate::Ctx;
use crate::audit::writes_json;
use crate::bridge::{Bridge, stop_bridge};
use crate::harness::{progress, step};
use crate::import::Estate;
use crate::stats::{dur_json, r3, secs};
use serde_json::json;
use std::time::Duration;

/// What the restart measured, and the first bridge's log (read before it stopped).
pub struct Restart {
    pub writes: usize,
    pub ready: Option<Duration>,
    pub first_log: String,
}

/// Replaces `estate.bridge` with a new one.
pub async fn section(ctx: &mut Ctx, estate: &mut Estate) -> Restart {
    step("restart: the bridge stops (SIGTERM) and starts again, every object already right");
    let first_log = estate.bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut estate.bridge, "import");
    let mark = ctx.audit.mark();
    let events0 = estate.tracker.events();
    let cpu = ctx.cpu.mark(None);
    estate.bridge = Bridge::spawn(&ctx.spec(estate.ns, estate.prefix, "import-restarted"));
    let bridge = &mut estate.bridge;
    let ready = bridge.ready(ctx.sz.restart_timeout).await;
    tokio::time::sleep(ctx.sz.settle).await;
    let restart_writes = ctx.audit.bridge_writes(mark, estate.ns);
    let restart_metric = bridge.api_writes().await;
    let restart_events = estate.tracker.events() - events0;
    let (restart_hwm, _) = bridge.rss_mib();
    progress(&format!(
        "/readyz 200 after {}, {} writes in the audit log ({} by its counter), {} slice events in the {} s after",
        secs(ready),
        restart_writes.len(),
        restart_metric.map_or("-".into(), |v| v.to_string()),
        restart_events,
        ctx.sz.settle.as_secs()
    ));
    if !restart_writes.is_empty() {
        ctx.anomalies.push(format!(
            "restart with every object right: the bridge wrote {} times ({})",
            restart_writes.len(),
            writes_json(&restart_writes)
        ));
    }
    ctx.report.insert(
        "restart".into(),
        json!({
            "registrations": estate.model.registrations(),
            "ready_s": dur_json(ready),
            "writes": writes_json(&restart_writes),
            "writes_by_metric": restart_metric,
            "slice_events_seen": restart_events,
            "vm_hwm_mib": r3(restart_hwm),
            "settle_s": ctx.sz.settle.as_secs(),
            "cpu": ctx.cpu.since(&cpu, Some(bridge)),
        }),
    );
    Restart {
        writes: restart_writes.len(),
        ready,
        first_log,
    }
}
