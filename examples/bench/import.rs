//! The import sections, in one run over one estate (1,000 services × 10 endpoints by default):
//! cold start, the floor and the peer, propagation, isolated changes, restart, burst, and the
//! memory at 10k. Their order matters: each starts from the state the one before it left.

use crate::bridge::{Bridge, note_log_warnings, stop_bridge};
use crate::changes::{Run, Sink, run_changes};
use crate::model::Model;
use crate::stats::{Stats, r3};
use crate::tracker::Tracker;
use crate::{Ctx, burst, cold_start, floor, isolated, peer, propagation, restart};
use serde_json::json;
use std::time::Duration;

/// What the import sections measured, for the goals.
pub struct Import {
    pub floor_etcd: Stats,
    pub floor_apply: Stats,
    pub peer_p50: Option<f64>,
    pub peer: Stats,
    pub prop: Stats,
    pub isolated_writes: usize,
    pub isolated_changes: usize,
    pub isolated_missed: usize,
    pub burst_converged: Option<Duration>,
    pub burst_writes: usize,
    pub burst_slices: usize,
    pub cold: Option<Duration>,
    pub restart_writes: usize,
    pub restart_ready: Option<Duration>,
    pub rss_10k: Option<f64>,
    pub registrations: usize,
}

/// What the import sections share: one namespace and prefix, what etcd should hold, the watch of
/// the bridge's EndpointSlices, and the bridge (a new one after the restart section).
pub struct Estate {
    pub ns: &'static str,
    pub prefix: &'static str,
    pub model: Model,
    pub tracker: Tracker,
    pub bridge: Bridge,
}

impl Estate {
    /// `n` etcd changes, one every `gap`, each timed until the bridge's slices show it; waits up
    /// to `drain` for the last ones.
    pub async fn run_changes(
        &mut self,
        ctx: &mut Ctx,
        (n, gap, drain): (usize, Duration, Duration),
        what: &str,
    ) -> Run {
        run_changes(
            &mut Sink::Etcd(&mut ctx.etcd, self.prefix.to_string()),
            &self.tracker,
            &mut self.model,
            &mut ctx.rng,
            (n, gap, drain),
            what,
        )
        .await
    }
}

pub async fn import_sections(ctx: &mut Ctx) -> Import {
    let model = Model::new("svc", ctx.sz.services, ctx.sz.endpoints);
    let regs = model.registrations();
    let (cold, mut estate) = cold_start::section(ctx, model).await;
    // The floor and the peer, back to back with the propagation.
    let mut floor = floor::section(ctx).await;
    let peer = peer::section(ctx).await;
    let prop = propagation::section(ctx, &mut estate).await;
    let iso = isolated::section(ctx, &mut estate, &mut floor.slice).await;
    let (hwm_10k, rss_10k) = estate.bridge.rss_mib();
    let restart = restart::section(ctx, &mut estate).await;
    let burst = burst::section(ctx, &mut estate).await;
    let (hwm_after_burst, _) = estate.bridge.rss_mib();
    ctx.report.insert(
        "memory_10k".into(),
        json!({
            "registrations": regs,
            "vm_hwm_mib": r3(hwm_10k),
            "vm_rss_mib": r3(rss_10k),
            "note": "the first bridge, after cold start, propagation and isolated changes",
            "restarted_bridge_vm_hwm_mib_after_burst": r3(hwm_after_burst),
            "registrations_after_burst": estate.model.registrations(),
        }),
    );
    let log2 = estate.bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut estate.bridge, "import (restarted)");
    note_log_warnings(ctx, "import", &(restart.first_log + &log2));

    Import {
        floor_etcd: floor.etcd,
        floor_apply: floor.apply,
        peer_p50: peer.p50(),
        peer,
        prop,
        isolated_writes: iso.writes,
        isolated_changes: iso.changes,
        isolated_missed: iso.missed,
        burst_converged: burst.converged,
        burst_writes: burst.writes,
        burst_slices: burst.touched,
        cold,
        restart_writes: restart.writes,
        restart_ready: restart.ready,
        rss_10k: hwm_10k,
        registrations: regs,
    }
}
