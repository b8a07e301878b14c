//! The data plane, on a real node of the bench's own (testbed/src/node.rs: containerd, kubelet,
//! kube-proxy in iptables mode, CoreDNS): how long after an etcd write a pod's gRPC client sees
//! it, beside the same path for a selector Service backed by a pod (the floor: what Kubernetes'
//! own EndpointSlice controller, CoreDNS and kube-proxy take for a Service created by the API).
//!
//! - etcd PUT → the name in DNS (headless: the registered address is an A record);
//! - etcd DELETE → the name gone from DNS;
//! - etcd PUT → the first successful grpc.health.v1 call through the ClusterIP
//!   (`--headless=false`; the client dials `dns:///NAME.NS.svc.cluster.local:PORT`, which
//!   resolves to the ClusterIP once CoreDNS has the Service, and the call succeeds once
//!   kube-proxy has its rules).
//!
//! The registered server is the seed-style Go server in a network namespace beside the node
//! (testbed/src/outside.rs); the floor's backend is the same server in a pod. The client is
//! `healthclient -wait` in a pod (`kubectl exec`): it is watching before each write, tries every
//! 20 ms, and stamps what it sees with the machine's wall clock, from which the write's time (taken
//! in this process just before the write is sent) is subtracted. Each figure includes up to one
//! 20 ms period and the client's own lookups (Go's resolver walks the pod's search path).
//!
//! kube-proxy runs with its default `minSyncPeriod` (1 s from the end of one sync to the start of
//! the next): a new Service's first sync comes at once and the one for its endpoints a second
//! later, for the bridge's Services and the floor's alike. Each step starts after 1.5 s without
//! writes, so kube-proxy is idle, and the section counts the syncs each headless step caused
//! (kube-proxy ignores the EndpointSlices labelled `service.kubernetes.io/headless`).

use crate::Ctx;
use crate::bridge::{Bridge, note_log_warnings, stop_bridge};
use crate::harness::{block, progress, step};
use crate::stats::{Stats, ms};
use etcd_bridge_testbed::grpc_tools::{self, SERVER, Seen, ToolsPod};
use etcd_bridge_testbed::outside::Outside;
use etcd_bridge_testbed::process::Proc;
use etcd_bridge_testbed::seed::{seed_key, seed_value};
use etcd_bridge_testbed::{Node, kube_proxy, node_images};
use etcd_client::PutOptions;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime};

const PORT: u16 = 50051;
/// How long one event may take before the repetition counts as missed.
const EVENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Nothing written for this long before each step: kube-proxy waits at least a second from the
/// end of one sync to the start of the next, so each step starts on an idle kube-proxy (as on a
/// quiet node), and the syncs a step caused are all counted.
const QUIET: Duration = Duration::from_millis(1_500);
/// Namespaces: the headless bridge's, the ClusterIP bridge's, and the floor's (its Services, the
/// backend pod and the client pod).
const NS_DNS: &str = "bench-dp-dns";
const NS_IP: &str = "bench-dp-clusterip";
const NS_FLOOR: &str = "bench-dp-floor";

/// The figures: each series' latencies in ms.
#[derive(Default)]
struct Series {
    put_to_dns: Vec<f64>,
    delete_to_gone: Vec<f64>,
    put_to_call: Vec<f64>,
    floor_create_to_dns: Vec<f64>,
    floor_delete_to_gone: Vec<f64>,
    floor_create_to_call: Vec<f64>,
    /// kube-proxy's rule syncs during each headless PUT and DELETE (and the quiet spell after).
    syncs_headless: Vec<u64>,
    floor_syncs_headless: Vec<u64>,
    missed: Vec<String>,
}

pub async fn section(ctx: &mut Ctx) -> Value {
    step(&format!(
        "data plane on a real node: etcd → CoreDNS / kube-proxy → a pod's gRPC call ({} repetitions, at most {} s)",
        ctx.sz.dataplane_reps,
        ctx.sz.dataplane_budget.as_secs()
    ));
    match dataplane(ctx).await {
        Ok(v) => v,
        // `--smoke` is the harness's check in `make test`: a node that cannot start fails it.
        Err(e) if ctx.opts.smoke => panic!("harness check failed: the data-plane section: {e}"),
        Err(e) => {
            ctx.anomalies.push(format!("data plane: not measured: {e}"));
            json!({"measured": false, "note": format!("data plane: failed: {e}")})
        }
    }
}

/// Everything the section runs; dropped (pods' node, servers, namespaces) at its end.
struct Rig {
    backend: ToolsPod,
    client: ToolsPod,
    /// Held: the outside's server runs until the rig is dropped.
    _server: Proc,
    outside: Outside,
    /// Dropped last: with it go its pods.
    node: Node,
}

async fn dataplane(ctx: &mut Ctx) -> Result<Value, String> {
    let t = Instant::now();
    let rig = block(|| rig(ctx))?;
    progress(&format!(
        "node, images, outside server, backend and client pods up in {:.1} s (the node itself: {:.1} s)",
        t.elapsed().as_secs_f64(),
        rig.node.started_in.as_secs_f64()
    ));
    let server_ip = rig.outside.plan.ip().to_string();
    let headless_spec = ctx.spec(NS_DNS, "/bench-dp-dns/", "dataplane-headless");
    let mut headless = Bridge::spawn(&headless_spec);
    let mut extra = ctx.import_args.clone();
    extra.push("--headless=false".into());
    let cluster_ip_spec = crate::bridge::BridgeSpec {
        extra: &extra,
        ..ctx.spec(NS_IP, "/bench-dp-clusterip/", "dataplane-clusterip")
    };
    let mut cluster_ip = Bridge::spawn(&cluster_ip_spec);
    for b in [&mut headless, &mut cluster_ip] {
        b.ready(ctx.sz.restart_timeout)
            .await
            .ok_or("a data-plane bridge did not become ready")?;
    }
    let lease = ctx
        .etcd
        .lease_grant(3_600, None)
        .await
        .map_err(|e| format!("etcd lease: {e}"))?
        .id();
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), NS_FLOOR);
    let mut w = Writer {
        etcd: ctx.etcd.clone(),
        services,
        lease,
    };
    let server = format!("{server_ip}:{PORT}");
    let syncs = || block(|| kube_proxy::syncs(&rig.node)).unwrap_or_default();
    let quiet = || async { tokio::time::sleep(QUIET).await };

    let mut s = Series::default();
    let started = Instant::now();
    let mut reps = 0;
    while reps < ctx.sz.dataplane_reps && started.elapsed() < ctx.sz.dataplane_budget {
        let k = reps;
        reps += 1;
        // The bridge, headless: PUT → the A record; DELETE → no such host.
        let before = syncs();
        let (name, key) = (
            format!("n{k}"),
            seed_key("/bench-dp-dns/", &format!("n{k}"), "", &server),
        );
        let put = Op::Put(key.clone(), seed_value(&name, "", &server, 1));
        let target = format!("dns:///{name}.{NS_DNS}.svc.cluster.local:{PORT}");
        let got = w
            .timed(
                &rig.client,
                &target,
                Some(&server_ip),
                vec![(put, "resolved"), (Op::Delete(key), "unresolved")],
                &mut s.missed,
            )
            .await?;
        push(&mut s.put_to_dns, got[0]);
        push(&mut s.delete_to_gone, got[1]);
        quiet().await;
        let after = syncs();
        s.syncs_headless.push(after.saturating_sub(before));

        // The floor, headless: a selector Service created → the backend pod's A record; deleted
        // → no such host.
        let name = format!("f{k}");
        let target = format!("dns:///{name}.{NS_FLOOR}.svc.cluster.local:{PORT}");
        let create = Op::Create(Box::new(selector_service(&name, true)));
        let got = w
            .timed(
                &rig.client,
                &target,
                Some(&rig.backend.ip),
                vec![(create, "resolved"), (Op::Remove(name), "unresolved")],
                &mut s.missed,
            )
            .await?;
        push(&mut s.floor_create_to_dns, got[0]);
        push(&mut s.floor_delete_to_gone, got[1]);
        quiet().await;
        let before = after;
        let after = syncs();
        s.floor_syncs_headless.push(after.saturating_sub(before));

        // The bridge, --headless=false: PUT → the first SERVING through the ClusterIP, after a
        // quiet spell (kube-proxy's sync budget is full, as on a quiet node).
        let (name, key) = (
            format!("c{k}"),
            seed_key("/bench-dp-clusterip/", &format!("c{k}"), "", &server),
        );
        let put = Op::Put(key.clone(), seed_value(&name, "", &server, 1));
        let target = format!("dns:///{name}.{NS_IP}.svc.cluster.local:{PORT}");
        let got = w
            .timed(
                &rig.client,
                &target,
                None,
                vec![(put, "serving")],
                &mut s.missed,
            )
            .await?;
        push(&mut s.put_to_call, got[0]);
        w.send(Op::Delete(key)).await?;
        quiet().await;

        // The floor, ClusterIP: a selector Service created → the first SERVING through it.
        let name = format!("g{k}");
        let target = format!("dns:///{name}.{NS_FLOOR}.svc.cluster.local:{PORT}");
        let create = Op::Create(Box::new(selector_service(&name, false)));
        let got = w
            .timed(
                &rig.client,
                &target,
                None,
                vec![(create, "serving")],
                &mut s.missed,
            )
            .await?;
        push(&mut s.floor_create_to_call, got[0]);
        w.send(Op::Remove(name)).await?;
        quiet().await;
    }

    for (b, what) in [
        (&mut headless, "data plane, headless"),
        (&mut cluster_ip, "data plane, ClusterIP"),
    ] {
        stop_bridge(&mut ctx.anomalies, b, what);
        let log = b.log();
        note_log_warnings(ctx, what, &log);
    }
    let _ = ctx.etcd.lease_revoke(lease).await;
    let took = started.elapsed();
    block(move || drop(rig));
    Ok(report(ctx, s, reps, took))
}

/// The node and everything on it the repetitions use.
fn rig(ctx: &Ctx) -> Result<Rig, String> {
    let images = node_images::build(&ctx.opts.bridge)?;
    let node = Node::start(&ctx.bed.cluster, &ctx.bed.dir.join("node"), images)?;
    let tools = grpc_tools::build()?;
    grpc_tools::import(&node, &tools.image)?;
    for ns in [NS_DNS, NS_IP, NS_FLOOR] {
        ctx.bed.cluster.create_namespace(ns)?;
    }
    let mut outside = Outside::start(&node, &ctx.bed.dir.join("outside"))?;
    // The server only serves: the section writes its registrations itself, to time them.
    let _ = outside.expose(ctx.bed.registry.client_port)?;
    let listen = format!("-listen={}:{PORT}", outside.plan.ip());
    let mut server = outside.spawn(
        "dataplane-server",
        &tools.server,
        &[listen, "-register=false".into()],
    )?;
    etcd_bridge_testbed::process::wait_until(
        "the outside server",
        Duration::from_secs(10),
        &mut server,
        || std::fs::read_to_string(server_log(&outside)).is_ok_and(|l| l.contains("serving on")),
    )?;
    let listen_all = format!("-listen=0.0.0.0:{PORT}");
    let backend = ToolsPod::start(
        &ctx.bed.cluster,
        NS_FLOOR,
        "backend",
        &tools.image,
        "app: dp-backend",
        &[SERVER, "-register=false", &listen_all],
    )?;
    let client = ToolsPod::start(
        &ctx.bed.cluster,
        NS_FLOOR,
        "client",
        &tools.image,
        "app: dp-client",
        &[],
    )?;
    Ok(Rig {
        backend,
        client,
        _server: server,
        outside,
        node,
    })
}

fn server_log(outside: &Outside) -> std::path::PathBuf {
    outside.dir.join("dataplane-server.log")
}

/// A Service selecting the backend pod: headless, or with a ClusterIP.
fn selector_service(name: &str, headless: bool) -> Service {
    let mut spec = json!({
        "selector": {"app": "dp-backend"},
        "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "targetPort": PORT, "protocol": "TCP"}],
    });
    if headless {
        spec["clusterIP"] = json!("None");
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).expect("a Service")
}

/// The write whose effect a step times.
enum Op {
    /// etcd PUT of a key (under the section's lease), and its value.
    Put(String, String),
    /// etcd DELETE of a key.
    Delete(String),
    /// A Service created in the floor's namespace.
    Create(Box<Service>),
    /// The floor's Service of that name deleted.
    Remove(String),
}

struct Writer {
    etcd: etcd_client::Client,
    services: Api<Service>,
    lease: i64,
}

impl Writer {
    async fn send(&mut self, op: Op) -> Result<(), String> {
        match op {
            Op::Put(key, value) => self
                .etcd
                .put(key, value, Some(PutOptions::new().with_lease(self.lease)))
                .await
                .map(drop)
                .map_err(|e| format!("etcd put: {e}")),
            Op::Delete(key) => self
                .etcd
                .delete(key, None)
                .await
                .map(drop)
                .map_err(|e| format!("etcd delete: {e}")),
            Op::Create(svc) => self
                .services
                .create(&PostParams::default(), &svc)
                .await
                .map(drop)
                .map_err(|e| format!("create a Service: {e}")),
            Op::Remove(name) => self
                .services
                .delete(&name, &DeleteParams::default())
                .await
                .map(drop)
                .map_err(|e| format!("delete Service {name}: {e}")),
        }
    }

    /// Starts the client in the pod watching `target` for the steps' events in turn; for each
    /// step sends its write and times until the client sees its event (ms after the write was
    /// sent), or records it as missed.
    async fn timed(
        &mut self,
        client: &ToolsPod,
        target: &str,
        expect: Option<&str>,
        steps: Vec<(Op, &str)>,
        missed: &mut Vec<String>,
    ) -> Result<Vec<Option<f64>>, String> {
        let events: Vec<&str> = steps.iter().map(|(_, e)| *e).collect();
        let mut watch = match block(|| client.watch(target, &events.join(","), expect)) {
            Ok(w) => w,
            Err(e) => {
                missed.push(format!("{target}: {e}"));
                return Ok(vec![None; steps.len()]);
            }
        };
        let mut out = Vec::new();
        for (op, event) in steps {
            let sent = SystemTime::now();
            self.send(op).await?;
            match block(|| watch.next(event, EVENT_TIMEOUT)) {
                Ok(seen) => {
                    if event == "serving" && !seen.detail.contains("from 10.0.0.") {
                        missed.push(format!(
                            "{target}: the call did not go through a ClusterIP: {}",
                            seen.detail
                        ));
                    }
                    out.push(Some(ms_after(&seen, sent)));
                }
                Err(e) => {
                    missed.push(format!("{target} {event}: {e}"));
                    out.push(None);
                }
            }
        }
        Ok(out)
    }
}

fn push(series: &mut Vec<f64>, v: Option<f64>) {
    series.extend(v);
}

fn ms_after(seen: &Seen, since: SystemTime) -> f64 {
    seen.after(since).as_secs_f64() * 1000.0
}

fn report(ctx: &mut Ctx, s: Series, reps: usize, took: Duration) -> Value {
    let stats = |v: &[f64]| Stats::new(v.to_vec(), reps.saturating_sub(v.len()));
    let rows = [
        (
            "etcd PUT → name in DNS (headless)",
            stats(&s.put_to_dns),
            "floor: Service created → name in DNS",
            stats(&s.floor_create_to_dns),
        ),
        (
            "etcd DELETE → name gone from DNS",
            stats(&s.delete_to_gone),
            "floor: Service deleted → name gone",
            stats(&s.floor_delete_to_gone),
        ),
        (
            "etcd PUT → first call via ClusterIP",
            stats(&s.put_to_call),
            "floor: Service created → first call",
            stats(&s.floor_create_to_call),
        ),
    ];
    println!(
        "\ndata plane ({reps} repetitions in {:.0} s; a pod's client, every 20 ms):\n",
        took.as_secs_f64()
    );
    println!(
        "| {:<38} | {:>8} | {:>8} | {:<38} | {:>8} | {:>8} |",
        "etcd-bridge", "p50", "p99", "floor (a selector Service, a pod)", "p50", "p99"
    );
    println!(
        "|{:-<40}|{:->10}|{:->10}|{:-<40}|{:->10}|{:->10}|",
        "", "", "", "", "", ""
    );
    for (what, st, floor, fl) in &rows {
        println!(
            "| {what:<38} | {:>8} | {:>8} | {floor:<38} | {:>8} | {:>8} |",
            ms(st.p50()),
            ms(st.p99()),
            ms(fl.p50()),
            ms(fl.p99())
        );
    }
    let median = |v: &[u64]| {
        let mut v = v.to_vec();
        v.sort();
        v.get(v.len().saturating_sub(1) / 2).copied()
    };
    let (bridge_syncs, floor_syncs) = (median(&s.syncs_headless), median(&s.floor_syncs_headless));
    println!(
        "| {:<38} | {:>19} | {:<38} | {:>19} |",
        "kube-proxy syncs, headless PUT+DELETE",
        bridge_syncs.map_or("-".into(), |n| n.to_string()),
        "floor: headless create+delete",
        floor_syncs.map_or("-".into(), |n| n.to_string()),
    );
    if bridge_syncs > floor_syncs {
        ctx.anomalies.push(format!(
            "data plane: kube-proxy synced its rules {} times for a headless registration and its deletion ({} for a headless selector Service): it watches the bridge's headless EndpointSlices, which lack the label service.kubernetes.io/headless that the EndpointSlice controller sets",
            bridge_syncs.unwrap_or_default(),
            floor_syncs.unwrap_or_default()
        ));
    }
    for m in &s.missed {
        ctx.anomalies.push(format!("data plane: missed: {m}"));
    }
    json!({
        "measured": true,
        "repetitions": reps,
        "took_s": (took.as_secs_f64() * 10.0).round() / 10.0,
        "sampling": "healthclient -wait in a pod, every 20 ms, stamped with the wall clock; the write's time taken just before it is sent; 1.5 s without writes before each step",
        "kube_proxy": "iptables mode, minSyncPeriod 1s (its default: a second at least from the end of one sync to the start of the next)",
        "put_to_dns": rows[0].1.json(),
        "delete_to_dns_gone": rows[1].1.json(),
        "put_to_first_call_via_cluster_ip": rows[2].1.json(),
        "kube_proxy_syncs_per_headless_put_and_delete": s.syncs_headless,
        "floor": {
            "create_to_dns": rows[0].3.json(),
            "delete_to_dns_gone": rows[1].3.json(),
            "create_to_first_call_via_cluster_ip": rows[2].3.json(),
            "kube_proxy_syncs_per_headless_create_and_delete": s.floor_syncs_headless,
        },
        "missed": s.missed,
    })
}
