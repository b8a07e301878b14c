//! Writing changes and timing them: to etcd (the bridge), an EndpointSlice (the floor), Endpoints
//! (the peer); and waiting until a watch shows the whole estate.

use crate::bridge::Bridge;
use crate::harness::{Rng, progress};
use crate::model::{Change, Model, PORT, reg_key, reg_value};
use crate::stats::Stats;
use crate::tracker::Tracker;
use etcd_client::Client as Etcd;
use k8s_openapi::api::core::v1::{Endpoints, Namespace};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

pub enum Sink<'a> {
    Etcd(&'a mut Etcd, String),
    Slice(Api<EndpointSlice>),
    Endpoints(Api<Endpoints>),
}

pub fn ssa() -> PatchParams {
    PatchParams::apply("etcd-bridge-bench").force()
}

pub fn slice_json(name: &str, service: &str, ips: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "bench": "floor",
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "bench.etcd-bridge.io",
            },
            "annotations": {"etcd-bridge.io/weight": "10"},
        },
        "addressType": "IPv4",
        "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
    })
}

pub fn service_json(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        },
    })
}

pub fn endpoints_json(name: &str, ips: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name},
        "subsets": [{
            "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        }],
    })
}

impl Sink<'_> {
    pub async fn write(&mut self, model: &Model, c: &Change) {
        match self {
            Sink::Etcd(etcd, prefix) => {
                let key = reg_key(prefix, &c.service, &c.ip);
                let r = if c.add {
                    etcd.put(key, reg_value(&c.service, &c.ip), None)
                        .await
                        .map(|_| ())
                } else {
                    etcd.delete(key, None).await.map(|_| ())
                };
                r.unwrap_or_else(|e| panic!("etcd write: {e}"));
            }
            Sink::Slice(api) => {
                let body = slice_json("floor", &c.service, &model.want[&c.service]);
                api.patch("floor", &ssa(), &Patch::Apply(&body))
                    .await
                    .unwrap_or_else(|e| panic!("apply the floor EndpointSlice: {e}"));
            }
            Sink::Endpoints(api) => {
                let body = endpoints_json(&c.service, &model.want[&c.service]);
                api.patch(&c.service, &ssa(), &Patch::Apply(&body))
                    .await
                    .unwrap_or_else(|e| panic!("apply Endpoints {}: {e}", c.service));
            }
        }
    }
}

pub struct Run {
    pub stats: Stats,
    pub rate: f64,
    pub missed: Vec<(String, String, bool)>,
}

/// Makes `n` changes, alternately an add and a delete, one every `gap`, each timed from the
/// moment its write is sent until `tracker` sees it. Waits up to `drain` for the last ones.
pub async fn run_changes(
    sink: &mut Sink<'_>,
    tracker: &Tracker,
    model: &mut Model,
    rng: &mut Rng,
    (n, gap, drain): (usize, Duration, Duration),
    what: &str,
) -> Run {
    tracker.take_samples();
    tracker.drop_pending();
    let start = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let c = model.change(rng, i % 2 == 0, tracker);
        tracker.expect(&c.service, &c.ip, c.add, Instant::now());
        sink.write(model, &c).await;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {n} changes sent, {} awaited",
                i + 1,
                tracker.pending()
            ));
        }
    }
    let sent = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + drain;
    while tracker.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missed = tracker.drop_pending();
    let stats = Stats::new(tracker.take_samples(), missed.len());
    let rate = if n > 1 { (n - 1) as f64 / sent } else { 0.0 };
    progress(&format!("{what}: {} at {rate:.1} changes/s", stats.brief()));
    Run {
        stats,
        rate,
        missed,
    }
}

/// Waits until `tracker` shows every service of `want` and nothing else. Returns the time from
/// `since` to the last change the watch saw (None on timeout), and when `/readyz` first said 200
/// if a bridge is given.
pub async fn converge(
    tracker: &Tracker,
    want: &HashMap<String, BTreeSet<String>>,
    since: Instant,
    timeout: Duration,
    mut bridge: Option<&mut Bridge>,
    what: &str,
) -> (Option<Duration>, Option<Duration>) {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    let mut ready = None;
    // (when the watch last saw an address come or go, what the comparison found then): the
    // comparison walks every service, which at 6,000 or 10,000 services costs the bench a good
    // share of a core at 40 checks a second, so it is made only after the watch saw a change.
    let mut checked: Option<(Option<Instant>, usize)> = None;
    loop {
        if let Some(b) = bridge.as_deref_mut() {
            if ready.is_none() && b.is_ready().await {
                ready = Some(b.spawned.elapsed());
            }
            b.check_alive();
        }
        let seen = tracker.last_change();
        let bad = match checked {
            Some((at, bad)) if at == seen => bad,
            _ => tracker.mismatched(want),
        };
        checked = Some((seen, bad));
        if bad == 0 {
            let at = tracker
                .last_change()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(since));
            return (Some(at), ready);
        }
        if Instant::now() > deadline {
            progress(&format!(
                "{what}: NOT converged after {timeout:?}: {bad} services differ"
            ));
            return (None, ready);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {} services in place, {} slices seen",
                want.len().saturating_sub(bad),
                want.len(),
                tracker.slices()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}
