//! Issue 13: sharded leadership.
//! - Scale: the registrations of the 100k estate, already in etcd, brought into a cluster by one
//!   replica (one bucket) and by three replicas sharing three buckets: time until every object
//!   is in place, each on a namespace of its own, with the same admin credentials.
//! - Handoff: three replicas, three buckets, registrations changing every 20 ms; a replica is
//!   kill -9'd (and replaced) five times: time until every bucket is held again. Each replica
//!   runs as a ServiceAccount of its own, so the audit log tells who wrote each object, and every
//!   write is checked against who held that object's bucket's Lease at the time.

use crate::Ctx;
use crate::bridge::{BRIDGE_OWNED, Bridge, BridgeSpec, note_log_warnings, stop_bridge};
use crate::changes::{converge, create_namespace};
use crate::harness::{block, progress, step};
use crate::model::{Model, all_regs, fresh_ip, put_all, reg_key, reg_value};
use crate::stats::{Stats, dur_json, r3, secs};
use crate::tracker::Tracker;
use etcd_bridge::leader::buckets;
use etcd_bridge_testbed::audit;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const LEASE: &str = "eb";
const KILLS: usize = 5;
/// The handoff's Lease duration: the goal is at most this + 1 s.
const HANDOFF_LEASE: Duration = Duration::from_secs(3);

pub async fn section(ctx: &mut Ctx) -> Value {
    let prefix = "/bench-shards/";
    let model = Model::new("sh", ctx.sz.big_services, ctx.sz.big_endpoints);
    let regs = model.registrations();
    step(&format!(
        "sharded leadership: {regs} registrations in etcd, brought in by 1 replica, then by 3 replicas with 3 buckets"
    ));
    let load = put_all(&mut ctx.etcd, prefix, &all_regs(&model), "shards load").await;
    progress(&format!("{regs} puts in {:.1} s", load.as_secs_f64()));
    let mut runs = Vec::new();
    for (replicas, n) in [(1usize, 1u32), (3, 3)] {
        let ns = format!("bench-shards-{replicas}");
        create_namespace(&ctx.client, &ns).await;
        let tracker = Tracker::start(ctx.client.clone(), &ns, BRIDGE_OWNED);
        tracker.synced().await;
        let cpu = ctx.cpu.mark(None);
        let started = Instant::now();
        let mut bridges: Vec<Bridge> = (0..replicas)
            .map(|r| {
                let extra = [
                    ctx.import_args.clone(),
                    vec![
                        "--leader-election=true".into(),
                        format!("--leader-buckets={n}"),
                        format!("--identity=scale-{replicas}-{r}"),
                    ],
                ]
                .concat();
                Bridge::spawn(&BridgeSpec {
                    extra: &extra,
                    ..ctx.spec(&ns, prefix, &format!("shards-{replicas}-{r}"))
                })
            })
            .collect();
        let label = format!("{replicas} replica(s), {n} bucket(s)");
        let (in_place, _) = converge(
            &tracker,
            &model.want,
            started,
            ctx.sz.big_timeout,
            bridges.first_mut(),
            &label,
        )
        .await;
        // Where the time goes: the control plane's CPU, and each replica's (started in the phase).
        let components = ctx.cpu.since(&cpu, None);
        let bridge_cpu: Vec<Value> = (bridges.iter())
            .map(|b| r3(crate::cpu::cpu_secs(b.proc.pid(), ctx.cpu.tck)))
            .collect();
        progress(&format!("CPU: {components}; bridges {bridge_cpu:?} s"));
        let hwm: Vec<Option<f64>> = bridges.iter().map(|b| b.rss_mib().0).collect();
        progress(&format!(
            "{label}: every object in place after {}; VmHWM per replica {:?} MiB",
            secs(in_place),
            hwm.iter().map(|h| r3(*h)).collect::<Vec<_>>()
        ));
        if in_place.is_none() {
            ctx.anomalies.push(format!(
                "shards: {label} did not bring every object in place within {:?}",
                ctx.sz.big_timeout
            ));
        }
        let mut log = String::new();
        for (r, b) in bridges.iter_mut().enumerate() {
            log += &b.log();
            stop_bridge(&mut ctx.anomalies, b, &format!("shards {label} #{r}"));
        }
        note_log_warnings(ctx, &format!("shards {label}"), &log);
        runs.push((
            in_place,
            hwm,
            json!({"components": components, "bridges_cpu_s": bridge_cpu}),
        ));
    }
    let floor = apiserver_floor(ctx, &model).await;
    let (one, three) = (runs[0].0, runs[1].0);
    let ratio = match (one, three) {
        (Some(a), Some(b)) if a > Duration::ZERO => Some(b.as_secs_f64() / a.as_secs_f64()),
        _ => None,
    };
    progress(&format!(
        "3 replicas / 1 replica: {}",
        ratio.map_or("-".into(), |r| format!("{r:.2}×"))
    ));

    let handoff = handoff(ctx).await;
    json!({
        "measured": true,
        "registrations": regs,
        "etcd_load_s": dur_json(Some(load)),
        "one_replica_in_place_s": dur_json(one),
        "three_replicas_in_place_s": dur_json(three),
        "ratio": r3(ratio),
        "apiserver_floor": floor,
        "one_replica_vm_hwm_mib": runs[0].1.iter().map(|h| r3(*h)).collect::<Vec<_>>(),
        "three_replicas_vm_hwm_mib": runs[1].1.iter().map(|h| r3(*h)).collect::<Vec<_>>(),
        "one_replica_cpu": runs[0].2,
        "three_replicas_cpu": runs[1].2,
        "handoff": handoff,
    })
}

/// Writes in flight for the floor: three replicas' worth (each syncs 16 Services at once).
const FLOOR_IN_FLIGHT: usize = 48;

/// The floor of the scale runs: the same Services and EndpointSlices server-side applied by the
/// harness itself, 48 at a time, with no bridge and no etcd in the way. No number of replicas
/// can bring the objects in faster than this apiserver accepts them.
async fn apiserver_floor(ctx: &mut Ctx, model: &Model) -> Value {
    use crate::changes::{service_json, slice_json, ssa};
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, Patch};
    let ns = "bench-shards-floor";
    step(&format!(
        "sharded leadership, floor: the same {} Services and their EndpointSlices applied by the harness, {FLOOR_IN_FLIGHT} at a time",
        model.want.len()
    ));
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
    let owned = |mut v: Value| {
        v["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("etcd-bridge");
        v
    };
    let cpu = ctx.cpu.mark(None);
    let started = Instant::now();
    let writes = futures::stream::iter(model.want.iter())
        .map(|(name, ips)| {
            let (services, slices) = (services.clone(), slices.clone());
            let service = owned(service_json(name));
            let slice = owned(slice_json(&format!("{name}-0"), name, ips));
            async move {
                let p = ssa();
                services.patch(name, &p, &Patch::Apply(&service)).await?;
                slices
                    .patch(&format!("{name}-0"), &p, &Patch::Apply(&slice))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(FLOOR_IN_FLIGHT);
    let failed = writes
        .filter(|r| futures::future::ready(r.is_err()))
        .count()
        .await;
    let (in_place, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.big_timeout,
        None,
        "floor (no bridge)",
    )
    .await;
    let components = ctx.cpu.since(&cpu, None);
    progress(&format!(
        "floor: every object in place after {} ({failed} writes failed); CPU: {components}",
        secs(in_place)
    ));
    if failed > 0 || in_place.is_none() {
        ctx.anomalies.push(format!(
            "shards floor: {failed} writes failed, in place: {}",
            secs(in_place)
        ));
    }
    json!({
        "in_flight": FLOOR_IN_FLIGHT,
        "in_place_s": dur_json(in_place),
        "failed_writes": failed,
        "cpu": components,
    })
}

pub fn brief(v: &Value) -> String {
    format!(
        "sharded leadership: {} registrations in place after {} s with 1 replica, {} s with 3 replicas and 3 buckets ({}×; floor: the same objects applied by the harness, {} at a time, no bridge: {} s); handoff after kill -9 (Lease {} s): {}; object writes by a replica not holding the bucket: {} of {}",
        v["registrations"],
        v["one_replica_in_place_s"],
        v["three_replicas_in_place_s"],
        v["ratio"],
        v["apiserver_floor"]["in_flight"],
        v["apiserver_floor"]["in_place_s"],
        v["handoff"]["lease_duration_s"],
        v["handoff"]["handoff_ms"],
        v["handoff"]["writes_without_the_bucket"],
        v["handoff"]["object_writes_checked"]
    )
}

/// A ServiceAccount per replica with every right in `ns` (the bench measures, RBAC is tested).
fn accounts(ns: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|sa| {
            format!(
                "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}, namespace: {ns}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\nsubjects:\n- {{kind: ServiceAccount, name: {sa}, namespace: {ns}}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

async fn handoff(ctx: &mut Ctx) -> Value {
    let (ns, prefix) = ("bench-shards-kill", "/bench-shards-kill/");
    let mut model = Model::new("hk", 300, 5);
    step(&format!(
        "sharded leadership: handoff: 3 replicas, 3 buckets, Lease {HANDOFF_LEASE:?}; a replica kill -9'd {KILLS} times while registrations change every 20 ms"
    ));
    create_namespace(&ctx.client, ns).await;
    let ids: Vec<String> = (0..3 + KILLS).map(|i| format!("r{i}")).collect();
    let out = block(|| (ctx.bed.cluster).kubectl_stdin(&["apply", "-f", "-"], &accounts(ns, &ids)));
    assert!(
        out.status.success(),
        "creating the replicas' ServiceAccounts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    put_all(&mut ctx.etcd, prefix, &all_regs(&model), "handoff load").await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let mark = ctx.audit.mark();
    let mut next = 0;
    let mut live: Vec<Bridge> = Vec::new();
    let mut start = |ctx: &mut Ctx, live: &mut Vec<Bridge>| {
        let id = &ids[next];
        next += 1;
        let path = ctx.bed.dir.join(format!("{ns}-{id}.kubeconfig"));
        let kubeconfig = block(|| ctx.bed.cluster.service_account_kubeconfig(ns, id, &path))
            .unwrap_or_else(|e| panic!("a kubeconfig for replica {id}: {e}"));
        let extra = [
            ctx.import_args.clone(),
            vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-election=true".into(),
                "--leader-buckets=3".into(),
                format!("--lease-name={LEASE}"),
                format!("--lease-duration={}s", HANDOFF_LEASE.as_secs()),
                format!("--identity={id}"),
            ],
        ]
        .concat();
        live.push(Bridge::spawn(&BridgeSpec {
            extra: &extra,
            ..ctx.spec(ns, prefix, &format!("handoff-{id}"))
        }));
    };
    for _ in 0..3 {
        start(ctx, &mut live);
    }
    let mut samples = Vec::new();
    let mut log = String::new();
    for round in 0..KILLS {
        // Every replica holds one bucket before each kill, so the one killed is a bucket leader.
        let balanced = Instant::now();
        while held_each(&live).await != [1, 1, 1] {
            assert!(
                balanced.elapsed() < Duration::from_secs(60),
                "handoff: the replicas never held one bucket each: {:?}",
                held_each(&live).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut dead = live.remove(0);
        log += &dead.log();
        dead.proc.kill();
        let killed = Instant::now();
        start(ctx, &mut live);
        let mut taken = None;
        let mut rng_service = round;
        while killed.elapsed() < HANDOFF_LEASE * 3 {
            // The burst: a fresh address for one service after another.
            let service = model.names[rng_service % model.names.len()].clone();
            rng_service += 7;
            let ip = fresh_ip();
            ctx.etcd
                .put(
                    reg_key(prefix, &service, &ip),
                    reg_value(&service, &ip),
                    None,
                )
                .await
                .unwrap_or_else(|e| panic!("etcd put (handoff): {e}"));
            model.want.get_mut(&service).unwrap().insert(ip);
            if taken.is_none() && held_each(&live).await.iter().sum::<usize>() == 3 {
                taken = Some(killed.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        progress(&format!(
            "kill {}: every bucket held again after {}",
            round + 1,
            secs(taken)
        ));
        match taken {
            Some(t) => samples.push(t.as_secs_f64() * 1e3),
            None => ctx.anomalies.push(format!(
                "handoff: after kill {} the buckets were not all held within {:?}",
                round + 1,
                HANDOFF_LEASE * 3
            )),
        }
    }
    let (converged, _) = converge(
        &tracker,
        &model.want,
        Instant::now(),
        Duration::from_secs(60),
        None,
        "handoff",
    )
    .await;
    for (i, b) in live.iter_mut().enumerate() {
        log += &b.log();
        stop_bridge(&mut ctx.anomalies, b, &format!("handoff #{i}"));
    }
    note_log_warnings(ctx, "shards handoff", &log);
    let writes = audit::writes(&ctx.bed.cluster.audit_log(), mark, ns);
    let accounts = format!("system:serviceaccount:{ns}:");
    let bucket_of = |w: &audit::AuditWrite| match w.resource.as_str() {
        "services" => Some(buckets::of_service("default", &w.name, 3)),
        "endpointslices" => {
            audit::service_of_slice(&w.name).map(|s| buckets::of_service("default", s, 3))
        }
        _ => None,
    };
    let (checked, violations) = audit::single_writer(&writes, LEASE, &accounts, bucket_of);
    let missed = KILLS - samples.len();
    let stats = Stats::new(samples, missed);
    progress(&format!(
        "handoff {}; {checked} object writes checked, {} by a replica not holding the bucket; converged: {}",
        stats.brief(),
        violations.len(),
        converged.is_some()
    ));
    for v in violations.iter().take(5) {
        ctx.anomalies.push(format!("handoff: {v}"));
    }
    if converged.is_none() {
        ctx.anomalies
            .push("handoff: the estate did not converge after the kills".into());
    }
    json!({
        "kills": KILLS,
        "lease_duration_s": HANDOFF_LEASE.as_secs(),
        "handoff_ms": stats.json(),
        "object_writes_checked": checked,
        "writes_without_the_bucket": violations.len(),
        "converged": converged.is_some(),
    })
}

/// How many buckets each live replica says it holds (0 for one that does not answer).
async fn held_each(live: &[Bridge]) -> Vec<usize> {
    let mut held = Vec::new();
    for b in live {
        let m = b.metrics().await;
        let v = etcd_bridge_testbed::metrics::value(&m, "etcd_bridge_buckets_held");
        held.push(v.unwrap_or(0.0) as usize);
    }
    held.sort();
    held
}
