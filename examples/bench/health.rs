//! Issue 12: active health checks, detection and writes. S Services of three endpoints each, every
//! endpoint a Go gRPC health server (testbed's healthserver) inside a network namespace this
//! bench creates: one flipped server of its own per Service (port 50051), and one server on
//! 0.0.0.0:50052 answering for the two others (so a flipped endpoint is one of three, under the
//! panic guard's 50%). The bridge probes them at `--probe-interval` (the default 5 s).
//!
//! Each round flips every Service's own server at once: NOT_SERVING (SIGUSR1), and the next round
//! SERVING again (SIGUSR2). Detection is timed per endpoint, from the signal sent until a kube
//! watch shows that endpoint's `ready` condition change. Then the states hold for one interval.
//! Writes: the bridge's EndpointSlice writes in the audit log from the flip until the end of the
//! hold, divided by the endpoints that changed state. A flipped endpoint is alone in its slice
//! (its port is its own), so a write can carry one change only: the goal is exactly 1.0.
//!
//! Probes dial only the namespace's addresses: every registered address is one of them.

use crate::Ctx;
use crate::bridge::{BRIDGE_OWNED, Bridge, note_log_warnings, stop_bridge};
use crate::changes::create_namespace;
use crate::harness::{DONE, block, progress, step};
use crate::stats::{Stats, r3, secs};
use etcd_bridge_testbed::netns::{Netns, healthserver};
use etcd_bridge_testbed::process::Proc;
use etcd_bridge_testbed::seed::{seed_key, seed_value};
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The port of the flipped servers, and of the server answering for the others.
const FLIPPED_PORT: u16 = 50051;
const STEADY_PORT: u16 = 50052;

/// A health server inside `ns`, listening on `listen`; waits until it says it serves.
pub fn start_server(ctx: &Ctx, ns: &Netns, listen: &str, label: &str) -> Proc {
    // Built with `go build` the first time (then cached): blocking work.
    let bin = block(healthserver)
        .unwrap_or_else(|e| panic!("tests/go/cmd/healthserver could not be built:\n{e}"));
    let log = ctx.bed.dir.join(format!("healthserver-{label}.log"));
    let args = ns.exec_args(bin, &[format!("-listen={listen}")]);
    // `ip netns exec` execs the server: the pid is the server's, so signals reach it.
    block(|| {
        let mut proc = Proc::spawn("healthserver", Path::new("ip"), &args, &log)
            .unwrap_or_else(|e| panic!("start a health server on {listen}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !proc.full_log().contains("serving on") {
            assert!(
                proc.is_running() && Instant::now() < deadline,
                "the health server on {listen} did not start\n{}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        proc
    })
}

/// The bridge's probe flags for `interval` (the timeout is the default 1 s, or half a shorter
/// interval).
pub fn probe_flags(ctx: &Ctx, interval: Duration) -> Vec<String> {
    let timeout = Duration::from_secs(1).min(interval / 2);
    let mut flags = ctx.import_args.clone();
    flags.push("--probe=*".into());
    flags.push(format!("--probe-interval={}ms", interval.as_millis()));
    flags.push(format!("--probe-timeout={}ms", timeout.as_millis()));
    flags
}

/// Waits until the bridge says `n` endpoints are probed and serving; how long that took.
pub async fn all_probed(bridge: &mut Bridge, n: usize, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    let series = r#"etcd_bridge_probed_endpoints{state="serving"}"#;
    loop {
        let text = bridge.metrics().await;
        if etcd_bridge_testbed::metrics::value(&text, series) == Some(n as f64) {
            return Some(started.elapsed());
        }
        bridge.check_alive();
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A kube watch of the `ready` condition of every endpoint address in a namespace, timing the
/// changes the bench waits for.
#[derive(Default)]
struct ReadyState {
    ready: HashMap<String, bool>,
    /// address → (the `ready` awaited, when the flip was sent)
    pending: HashMap<String, (bool, Instant)>,
    samples: Vec<f64>,
    synced: bool,
}

#[derive(Clone)]
struct ReadyWatch(Arc<Mutex<ReadyState>>);

impl ReadyWatch {
    fn start(client: kube::Client, namespace: &str) -> ReadyWatch {
        let state = Arc::new(Mutex::new(ReadyState::default()));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let st = state.clone();
        let config = watcher::Config::default().labels(BRIDGE_OWNED);
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let t = Instant::now();
                let mut s = st.lock().unwrap();
                let slice = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => o,
                    Ok(watcher::Event::InitDone) => {
                        s.synced = true;
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        if !DONE.load(Ordering::Relaxed) {
                            eprintln!("bench: health watch: {e} (retrying)");
                        }
                        continue;
                    }
                };
                for e in &slice.endpoints {
                    let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                    for a in &e.addresses {
                        s.ready.insert(a.clone(), ready);
                        if let Some((want, sent)) = s.pending.get(a).copied()
                            && want == ready
                        {
                            s.pending.remove(a);
                            s.samples
                                .push(t.saturating_duration_since(sent).as_secs_f64() * 1000.0);
                        }
                    }
                }
            }
        });
        ReadyWatch(state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadyState> {
        self.0.lock().unwrap()
    }
}

pub async fn section(ctx: &mut Ctx) -> Value {
    let services = ctx.sz.health_services;
    let interval = ctx.sz.health_interval;
    step(&format!(
        "health: detection and writes, {services} Services × 3 endpoints, one server flipped in each, --probe-interval={interval:?}, {} rounds each way",
        ctx.sz.health_rounds
    ));
    let netns = Netns::create(3 * services as u32)
        .unwrap_or_else(|e| panic!("health: cannot create a network namespace: {e}"));
    let ips: Vec<String> = netns
        .assign(3 * services as u32)
        .unwrap_or_else(|e| panic!("health: {e}"))
        .iter()
        .map(|a| a.to_string())
        .collect();
    progress(&format!(
        "network namespace {}: {} addresses from {}",
        netns.name,
        ips.len(),
        ips[0]
    ));
    let mut flipped: Vec<(String, Proc)> = (0..services)
        .map(|i| {
            let ip = ips[i].clone();
            let p = start_server(
                ctx,
                &netns,
                &format!("{ip}:{FLIPPED_PORT}"),
                &format!("hd-{i}"),
            );
            (ip, p)
        })
        .collect();
    let steady = start_server(ctx, &netns, &format!("0.0.0.0:{STEADY_PORT}"), "hd-steady");
    let (ns, prefix) = ("bench-health", "/bench-health/");
    for i in 0..services {
        let name = format!("hd-{i:03}");
        let kv = |addr: String| {
            (
                seed_key(prefix, &name, "", &addr),
                seed_value(&name, "", &addr, 1),
            )
        };
        for (k, v) in [
            kv(format!("{}:{FLIPPED_PORT}", ips[i])),
            kv(format!("{}:{STEADY_PORT}", ips[services + 2 * i])),
            kv(format!("{}:{STEADY_PORT}", ips[services + 2 * i + 1])),
        ] {
            ctx.etcd
                .put(k, v, None)
                .await
                .unwrap_or_else(|e| panic!("etcd put (health): {e}"));
        }
    }
    create_namespace(&ctx.client, ns).await;
    let watch = ReadyWatch::start(ctx.client.clone(), ns);
    let flags = probe_flags(ctx, interval);
    let spec = crate::bridge::BridgeSpec {
        extra: &flags,
        ..ctx.spec(ns, prefix, "health")
    };
    let mut bridge = Bridge::spawn(&spec);
    bridge.ready(ctx.sz.converge_timeout).await;
    let probed = all_probed(
        &mut bridge,
        3 * services,
        interval * 3 + Duration::from_secs(10),
    )
    .await;
    match probed {
        Some(t) => progress(&format!(
            "every endpoint probed serving {} after ready",
            secs(Some(t))
        )),
        None => ctx.anomalies.push(format!(
            "health: not every one of {} endpoints was probed serving before the flips",
            3 * services
        )),
    }
    let wait = interval * 2 + Duration::from_secs(5);
    let (mut down, mut up) = (Vec::new(), Vec::new());
    let (mut changes, mut writes, mut metric_writes, mut missed) = (0usize, 0usize, 0.0, 0usize);
    for round in 0..2 * ctx.sz.health_rounds {
        let to_down = round % 2 == 0;
        let mark = ctx.audit.mark();
        let m0 = slice_metric(&bridge).await;
        {
            watch.lock().samples.clear();
            // Each timed from just before its own signal; the lock is not held while `kill`
            // runs, so the watch is never kept waiting.
            for (ip, p) in &flipped {
                let t = Instant::now();
                watch.lock().pending.insert(ip.clone(), (!to_down, t));
                p.signal(if to_down { "USR1" } else { "USR2" });
            }
        }
        let deadline = Instant::now() + wait;
        while !watch.lock().pending.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing more while the states hold: one more probe of every endpoint.
        tokio::time::sleep(interval).await;
        let (samples, lost) = {
            let mut s = watch.lock();
            let lost = s.pending.len();
            s.pending.clear();
            (std::mem::take(&mut s.samples), lost)
        };
        let w = ctx
            .audit
            .bridge_writes(mark, ns)
            .iter()
            .filter(|w| w.resource == "endpointslices")
            .count();
        let mw = slice_metric(&bridge).await - m0;
        progress(&format!(
            "round {}: {} → {} shown for {} of {services} endpoints, {}; {w} slice writes (bridge's metric: {mw})",
            round + 1,
            if to_down { "NOT_SERVING" } else { "SERVING" },
            if to_down { "not ready" } else { "ready" },
            samples.len(),
            Stats::new(samples.clone(), lost).brief()
        ));
        changes += samples.len();
        missed += lost;
        writes += w;
        metric_writes += mw;
        if to_down { &mut down } else { &mut up }.extend(samples);
    }
    let log = bridge.log();
    let probes =
        etcd_bridge_testbed::metrics::sum(&bridge.metrics().await, "etcd_bridge_probes_total");
    stop_bridge(&mut ctx.anomalies, &mut bridge, "health");
    note_log_warnings(ctx, "health", &log);
    // The servers, then the namespace: nothing may dial its addresses once it is gone.
    for (_, p) in &mut flipped {
        p.kill();
    }
    drop(steady);
    drop(netns);
    let (down, up) = (Stats::new(down, 0), Stats::new(up, 0));
    if missed > 0 {
        ctx.anomalies.push(format!(
            "health: {missed} flips never showed in the slices within {wait:?}"
        ));
    }
    let ideal = interval.as_secs_f64() * 1000.0;
    json!({
        "measured": true,
        "services": services,
        "endpoints": 3 * services,
        "interval_ms": interval.as_millis() as u64,
        "goal_ms": (2 * interval + Duration::from_secs(1)).as_millis() as u64,
        "not_serving_to_not_ready": down.json(),
        "serving_to_ready": up.json(),
        "missed": missed,
        "floor": {
            "what": "a periodic prober's wait for its next probe: uniform over one period (interval ± 10% jitter)",
            "p50_ms": r3(Some(ideal * 0.5)),
            "p99_ms": r3(Some(ideal * 0.99 * 1.1)),
        },
        "state_changes": changes,
        "slice_writes_audit": writes,
        "slice_writes_metric": metric_writes,
        "writes_per_change": if changes > 0 { json!(writes as f64 / changes as f64) } else { Value::Null },
        "how_writes_are_counted": "the bridge's EndpointSlice writes in the audit log from each flip to the end of the hold after it (one interval), over the endpoints whose state changed; each flipped endpoint is alone in its slice, so no write can carry two",
        "probes_total": probes,
    })
}

/// The bridge's own count of EndpointSlice writes.
async fn slice_metric(bridge: &Bridge) -> f64 {
    let text = bridge.metrics().await;
    let series = r#"etcd_bridge_api_writes_total{verb="apply",kind="EndpointSlice"}"#;
    etcd_bridge_testbed::metrics::value(&text, series).unwrap_or(0.0)
}

/// The line of the results table.
pub fn brief(v: &Value) -> String {
    if v["measured"] != true {
        return "health: not measured".into();
    }
    format!(
        "interval {} ms: NOT_SERVING → not ready p50 {} p99 {} ms; SERVING → ready p50 {} p99 {} ms; {} slice writes for {} changes",
        v["interval_ms"],
        v["not_serving_to_not_ready"]["p50_ms"],
        v["not_serving_to_not_ready"]["p99_ms"],
        v["serving_to_ready"]["p50_ms"],
        v["serving_to_ready"]["p99_ms"],
        v["slice_writes_audit"],
        v["state_changes"],
    )
}
