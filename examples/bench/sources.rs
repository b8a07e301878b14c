//! Issue 13: two registries, one of them frozen. A bridge imports the bench's registry (the
//! flags' source) and a second etcd as an EtcdSource. Registrations are put in the first, one
//! every 100 ms, and each is timed from its PUT to its Service in a watch: with both answering,
//! with the second SIGSTOPped (its hang not noticed yet), and with it noticed down. Drift repairs
//! run every 3 s, each reading every source again: none may wait on the frozen one.

use crate::Ctx;
use crate::bridge::{Bridge, BridgeSpec, note_log_warnings, stop_bridge};
use crate::changes::create_namespace;
use crate::harness::{block, progress, step};
use crate::model::{fresh_ip, reg_key, reg_value};
use crate::stats::{Stats, r3};
use etcd_bridge_testbed::first_seen::FirstSeen;
use etcd_bridge_testbed::{Etcd as EtcdServer, scratch_dir};
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub async fn section(ctx: &mut Ctx) -> Value {
    let (ns, prefix) = ("bench-sources", "/bench-sources/");
    let n = ctx.sz.sources_changes;
    step(&format!(
        "two registries, one frozen: {n} PUTs 100 ms apart in each phase (both answering, the other frozen, the other seen down)"
    ));
    let other = block(|| EtcdServer::start(&scratch_dir("bench-sources"), "registry", &[]))
        .unwrap_or_else(|e| panic!("sources: a second registry etcd did not start:\n{e}"));
    let crd = etcd_bridge_testbed::repo::path("crds/etcdsources.etcd-bridge.io.yaml");
    let yaml = std::fs::read_to_string(&crd).expect("read the EtcdSource CRD");
    block(|| {
        ctx.bed
            .cluster
            .install_crd(&yaml, "etcdsources.etcd-bridge.io")
    })
    .unwrap_or_else(|e| panic!("sources: {e}"));
    create_namespace(&ctx.client, ns).await;
    let object = format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: other, namespace: {ns}}}\nspec: {{endpoints: [\"{}\"], prefixes: [{{prefix: /other/}}]}}\n",
        other.endpoint()
    );
    let out = block(|| (ctx.bed.cluster).kubectl_stdin(&["apply", "-f", "-"], &object));
    assert!(
        out.status.success(),
        "sources: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut other_etcd = etcd_client::Client::connect([other.endpoint()], None)
        .await
        .expect("connect to the second registry");
    for i in 0..20 {
        let ip = fresh_ip();
        let name = format!("other-{i}");
        other_etcd
            .put(reg_key("/other/", &name, &ip), reg_value(&name, &ip), None)
            .await
            .expect("put in the second registry");
    }
    let extra = [
        ctx.import_args.clone(),
        vec![
            "--sources=true".into(),
            "--etcd-timeout=2s".into(),
            "--resync-interval=3s".into(),
        ],
    ]
    .concat();
    let mut bridge = Bridge::spawn(&BridgeSpec {
        extra: &extra,
        ..ctx.spec(ns, prefix, "sources")
    });
    assert!(
        bridge.ready(ctx.sz.restart_timeout).await.is_some(),
        "sources: the bridge never got ready"
    );
    let seen = FirstSeen::start(Api::<Service>::namespaced(ctx.client.clone(), ns));
    seen.wait("other-19", Duration::from_secs(30)).await;

    let before = propagation(ctx, prefix, "before", n, &seen).await;
    other.freeze();
    let during = propagation(ctx, prefix, "during", n, &seen).await;
    let down = Instant::now();
    while !connected_false(ctx, ns) {
        if down.elapsed() > Duration::from_secs(60) {
            ctx.anomalies
                .push("sources: the frozen source was not seen down within 60 s".into());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let noticed = down.elapsed();
    let after = propagation(ctx, prefix, "after", n, &seen).await;
    other.thaw();
    let log = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "sources");
    note_log_warnings(ctx, "sources", &log);
    for (what, s) in [
        ("both answering", &before),
        ("the other frozen", &during),
        ("the other seen down", &after),
    ] {
        progress(&format!("{what}: {}", s.brief()));
    }
    json!({
        "measured": true,
        "changes_per_phase": n,
        "gap_ms": 100,
        "resync_interval_s": 3,
        "both_answering": before.json(),
        "other_frozen": during.json(),
        "other_seen_down": after.json(),
        "seen_down_after_s": r3(Some(noticed.as_secs_f64())),
    })
}

/// The EtcdSource `other` says Connected=False.
fn connected_false(ctx: &Ctx, ns: &str) -> bool {
    let path = "jsonpath={.status.conditions[?(@.type==\"Connected\")].status}";
    let out =
        block(|| (ctx.bed.cluster).kubectl(&["-n", ns, "get", "etcdsource", "other", "-o", path]));
    String::from_utf8_lossy(&out.stdout).trim() == "False"
}

pub fn brief(v: &Value) -> String {
    let p = |k: &str| format!("p50 {} ms p99 {} ms", v[k]["p50_ms"], v[k]["p99_ms"]);
    format!(
        "two registries, the other frozen: PUT → Service {} with both answering, {} with the other frozen, {} with it seen down",
        p("both_answering"),
        p("other_frozen"),
        p("other_seen_down")
    )
}

/// `n` new services, 100 ms apart, each timed from its PUT to its Service.
async fn propagation(
    ctx: &mut Ctx,
    prefix: &str,
    phase: &str,
    n: usize,
    seen: &FirstSeen,
) -> Stats {
    let mut sent = Vec::new();
    for i in 0..n {
        let (name, ip) = (format!("{phase}-{i}"), fresh_ip());
        let at = Instant::now();
        ctx.etcd
            .put(reg_key(prefix, &name, &ip), reg_value(&name, &ip), None)
            .await
            .unwrap_or_else(|e| panic!("etcd put (sources): {e}"));
        sent.push((name, at));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut samples = Vec::new();
    let mut missed = 0;
    for (name, at) in sent {
        match seen.wait(&name, Duration::from_secs(30)).await {
            Some(t) => samples.push(t.saturating_duration_since(at).as_secs_f64() * 1e3),
            None => missed += 1,
        }
    }
    Stats::new(samples, missed)
}
