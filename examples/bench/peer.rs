//! The peer: kube-controller-manager's EndpointSlice mirroring controller, which turns Endpoints
//! into EndpointSlices, timed the same way as the bridge.

use crate::Ctx;
use crate::changes::{
    Sink, converge, create_namespace, endpoints_json, run_changes, service_json, ssa,
};
use crate::harness::step;
use crate::model::Model;
use crate::stats::{Stats, dur_json};
use crate::tracker::Tracker;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::api::{Api, Patch};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// The label of the EndpointSlices kube-controller-manager mirrors from Endpoints.
const MIRRORED: &str =
    "endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io";

/// The peer's section: its latency, with its CPU per component in the report.
pub async fn section(ctx: &mut Ctx) -> Stats {
    step(&format!(
        "peer: kube-controller-manager's EndpointSlice mirroring, {} services × {} endpoints, {} changes at {}/s",
        ctx.sz.peer_services, ctx.sz.peer_endpoints, ctx.sz.peer_changes, ctx.sz.peer_rate
    ));
    let cpu_peer = ctx.cpu.mark(None);
    let (mut peer, peer_stats) = peer(ctx).await;
    peer.as_object_mut()
        .unwrap()
        .insert("cpu".into(), ctx.cpu.since(&cpu_peer, None));
    ctx.report.insert("peer".into(), peer);
    peer_stats
}

/// The peer: kube-controller-manager mirrors Endpoints into EndpointSlices.
async fn peer(ctx: &mut Ctx) -> (Value, Stats) {
    let ns = "bench-peer";
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, MIRRORED);
    tracker.synced().await;
    let mut model = Model::new("peer", ctx.sz.peer_services, ctx.sz.peer_endpoints);
    let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let started = Instant::now();
    let jobs = model.names.iter().map(|name| {
        let (svcs, eps) = (svcs.clone(), eps.clone());
        let body = endpoints_json(name, &model.want[name]);
        async move {
            svcs.patch(name, &ssa(), &Patch::Apply(&service_json(name)))
                .await
                .unwrap_or_else(|e| panic!("create Service {name}: {e}"));
            eps.patch(name, &ssa(), &Patch::Apply(&body))
                .await
                .unwrap_or_else(|e| panic!("create Endpoints {name}: {e}"));
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let (mirrored, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.converge_timeout,
        None,
        "peer: initial mirroring",
    )
    .await;
    assert!(
        mirrored.is_some(),
        "kube-controller-manager did not mirror the peer's Endpoints (see {})",
        ctx.bed
            .dir
            .join("cluster/kube-controller-manager.log")
            .display()
    );
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.peer_rate);
    let run = run_changes(
        &mut Sink::Endpoints(eps),
        &tracker,
        &mut model,
        &mut ctx.rng,
        (ctx.sz.peer_changes, gap, ctx.sz.drain),
        "peer: Endpoints → mirrored slice",
    )
    .await;
    if !run.missed.is_empty() {
        let msg = format!(
            "peer: {} of {} Endpoints changes never showed in a mirrored slice",
            run.missed.len(),
            ctx.sz.peer_changes
        );
        assert!(!ctx.opts.smoke, "harness check failed: {msg}");
        ctx.anomalies.push(msg);
    }
    let v = json!({
        "what": "kube-controller-manager's EndpointSlice mirroring: SSA of a selector-less Service's Endpoints → the mirrored EndpointSlice seen by a watch",
        "services": ctx.sz.peer_services,
        "endpoints_per_service": ctx.sz.peer_endpoints,
        "target_rate_per_s": ctx.sz.peer_rate,
        "achieved_rate_per_s": (run.rate * 10.0).round() / 10.0,
        "initial_mirroring_s": dur_json(mirrored),
        "latency": run.stats.json(),
    });
    (v, run.stats)
}
