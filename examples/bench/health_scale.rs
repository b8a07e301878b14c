//! Issue 12: the prober at scale. N endpoints (10 per Service) probed with gRPC health checks every
//! interval (the default 5 s), beside the same estate with the prober off, in the same run. The
//! bridge's CPU seconds per second over a window of several intervals (/proc/PID/stat) and its
//! RSS; the health server's CPU too, so that it is seen not to be the bottleneck.
//!
//! The addresses: an AnyIP route inside a network namespace this bench creates (`ip route add
//! local RANGE dev lo` there: every address of RANGE is the namespace's own), and one health
//! server listening on 0.0.0.0 in it answers for all of them. The host routes RANGE via the
//! namespace's one assigned address, so its neighbour table holds one entry, not N (Linux's
//! default gc_thresh3 is 1,024). Before the bridge starts, the bench connects from the host to the
//! first and the last address of RANGE: the path the bridge's probes take.
//!
//! Three bridges over the same estate: the first creates the objects (not measured), then one
//! with the prober off and one with it on each start over objects already right, so that both
//! peaks are a restart's.

use crate::Ctx;
use crate::bridge::{BRIDGE_OWNED, Bridge, note_log_warnings, stop_bridge};
use crate::changes::{converge, create_namespace};
use crate::cpu::cpu_secs;
use crate::harness::{block, progress, step};
use crate::health::{all_probed, probe_flags, start_server};
use crate::metrics::histogram;
use crate::model::put_kvs;
use crate::stats::{r3, secs};
use crate::tracker::Tracker;
use etcd_bridge_testbed::netns::{Netns, ip};
use etcd_bridge_testbed::process::Proc;
use etcd_bridge_testbed::seed::{seed_key, seed_value};
use etcd_client::DeleteOptions;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

const PORT: u16 = 50051;
const PER_SERVICE: usize = 10;

/// The AnyIP range inside `netns`, clear of the gateway and the assigned addresses: the upper
/// quarter of a /16 (16,384 addresses), or the upper half of a /24 (128).
fn range(netns: &Netns, n: usize) -> (String, Vec<Ipv4Addr>) {
    let [a, b, c, _] = netns.gateway().octets();
    let (base, cidr, room) = if n > 120 {
        (u32::from(Ipv4Addr::new(a, b, 64, 0)), 18, 16_384)
    } else {
        (u32::from(Ipv4Addr::new(a, b, c, 128)), 25, 128)
    };
    assert!(n < room - 1, "{n} endpoints do not fit in the AnyIP range");
    let addrs = (0..n)
        .map(|i| Ipv4Addr::from(base + 1 + i as u32))
        .collect();
    (format!("{}/{cidr}", Ipv4Addr::from(base)), addrs)
}

/// TCP-connects from the host (this process) to `addr`: the path the bridge's probes take.
async fn reachable(addr: Ipv4Addr) -> Result<(), String> {
    let to = (addr, PORT);
    match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(to)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect to {addr}:{PORT}: {e}")),
        Err(_) => Err(format!("connect to {addr}:{PORT}: timed out")),
    }
}

/// What one bridge cost over the window.
struct Window {
    cpu_per_s: f64,
    server_cpu_per_s: f64,
    hwm: Option<f64>,
    rss: Option<f64>,
    json: Value,
}

pub async fn section(ctx: &mut Ctx) -> Value {
    let n = ctx.sz.probe_endpoints;
    let interval = ctx.sz.probe_interval;
    let window = ctx.sz.probe_window;
    step(&format!(
        "health at scale: {n} endpoints probed every {interval:?} (gRPC), beside the prober off; windows of {window:?}"
    ));
    let netns = Netns::create(n as u32)
        .unwrap_or_else(|e| panic!("health at scale: cannot create a network namespace: {e}"));
    // One assigned address: the namespace's route back to the host, and the host's next hop.
    let hop = netns.assign(1).unwrap_or_else(|e| panic!("{e}"))[0];
    let (cidr, addrs) = range(&netns, n);
    ip(&[
        "-n",
        &netns.name,
        "route",
        "add",
        "local",
        &cidr,
        "dev",
        "lo",
    ])
    .unwrap_or_else(|e| panic!("AnyIP route in {}: {e}", netns.name));
    // Removed with the veth when the namespace goes.
    ip(&["route", "add", &cidr, "via", &hop.to_string()])
        .unwrap_or_else(|e| panic!("host route to {cidr}: {e}"));
    let mut server = start_server(ctx, &netns, &format!("0.0.0.0:{PORT}"), "scale");
    for a in [addrs[0], addrs[n - 1]] {
        reachable(a).await.unwrap_or_else(|e| {
            panic!("health at scale: the host cannot reach the namespace: {e}")
        });
    }
    progress(&format!(
        "namespace {}: AnyIP {cidr} (host route via {hop}), one health server on 0.0.0.0:{PORT} (pid {}); {} and {} reachable from the host",
        netns.name,
        server.pid(),
        addrs[0],
        addrs[n - 1]
    ));

    let (ns, prefix) = ("bench-probe", "/bench-probe/");
    let mut want: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut kvs = Vec::with_capacity(n);
    for (i, a) in addrs.iter().enumerate() {
        let name = format!("pr-{:05}", i / PER_SERVICE);
        let addr = format!("{a}:{PORT}");
        kvs.push((
            seed_key(prefix, &name, "", &addr),
            seed_value(&name, "", &addr, 10),
        ));
        want.entry(name).or_default().insert(a.to_string());
    }
    put_kvs(&mut ctx.etcd, &kvs, "health at scale").await;
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;

    // The objects, made by a bridge that is not measured.
    let mut first = Bridge::spawn(&ctx.spec(ns, prefix, "probe-create"));
    let (in_place, _) = converge(
        &tracker,
        &want,
        first.spawned,
        ctx.sz.big_timeout,
        Some(&mut first),
        "health at scale",
    )
    .await;
    progress(&format!("{n} endpoints in place after {}", secs(in_place)));
    stop_bridge(&mut ctx.anomalies, &mut first, "health at scale, creating");

    let off_flags = ctx.import_args.clone();
    let on_flags = probe_flags(ctx, interval);
    let off = measure(ctx, ns, prefix, "probe-off", &off_flags, None, &server).await;
    let on = measure(ctx, ns, prefix, "probe-on", &on_flags, Some(n), &server).await;

    server.kill();
    let netns_name = netns.name.clone();
    drop(netns);
    let _ = ctx
        .etcd
        .delete(prefix, Some(DeleteOptions::new().with_prefix()))
        .await;
    let extra_cpu = on.cpu_per_s - off.cpu_per_s;
    let extra_rss = on.hwm.zip(off.hwm).map(|(a, b)| a - b);
    progress(&format!(
        "prober on: {:.3} CPU ({:+.3} over off), VmHWM {:.1} MiB ({:+.1} MiB), VmRSS {:.1} MiB; the health server {:.3} CPU",
        on.cpu_per_s,
        extra_cpu,
        on.hwm.unwrap_or(0.0),
        extra_rss.unwrap_or(0.0),
        on.rss.unwrap_or(0.0),
        on.server_cpu_per_s
    ));
    json!({
        "measured": true,
        "endpoints": n,
        "interval_ms": interval.as_millis() as u64,
        "window_s": window.as_secs_f64(),
        "addresses": format!("AnyIP {cidr} in namespace {}, host route via {hop}, one health server on 0.0.0.0:{PORT}", netns_name),
        "prober_off": off.json,
        "prober_on": on.json,
        "bridge_cpu_per_s_on": r3(Some(on.cpu_per_s)),
        "bridge_cpu_per_s_off": r3(Some(off.cpu_per_s)),
        "bridge_cpu_per_s_added": r3(Some(extra_cpu)),
        "vm_hwm_mib_added": r3(extra_rss),
        "vm_rss_mib_added": r3(on.rss.zip(off.rss).map(|(a, b)| a - b)),
        "server_cpu_per_s": r3(Some(on.server_cpu_per_s)),
    })
}

/// Starts a bridge with `flags` over the estate; once it is ready (and, with the prober on, every
/// endpoint has been probed serving), measures a window.
async fn measure(
    ctx: &mut Ctx,
    ns: &str,
    prefix: &str,
    label: &str,
    flags: &[String],
    probed: Option<usize>,
    server: &Proc,
) -> Window {
    let spec = crate::bridge::BridgeSpec {
        extra: flags,
        ..ctx.spec(ns, prefix, label)
    };
    let mut bridge = Bridge::spawn(&spec);
    let ready = bridge.ready(ctx.sz.converge_timeout).await;
    let mut all_serving = None;
    if let Some(n) = probed {
        all_serving = all_probed(
            &mut bridge,
            n,
            ctx.sz.probe_interval * 4 + Duration::from_secs(20),
        )
        .await;
        if all_serving.is_none() {
            ctx.anomalies.push(format!(
                "health at scale: not every one of {n} endpoints was probed serving"
            ));
        }
    } else {
        tokio::time::sleep(ctx.sz.settle).await;
    }
    let tck = ctx.cpu.tck;
    let pid = bridge.proc.pid();
    let before = bridge.metrics().await;
    let mark = ctx.audit.mark();
    let (b0, s0, t0) = (
        cpu_secs(pid, tck),
        cpu_secs(server.pid(), tck),
        Instant::now(),
    );
    let conntrack0 = conntrack();
    tokio::time::sleep(ctx.sz.probe_window).await;
    let (b1, s1) = (cpu_secs(pid, tck), cpu_secs(server.pid(), tck));
    let wall = t0.elapsed().as_secs_f64();
    bridge.check_alive();
    let (hwm, rss) = bridge.rss_mib();
    let after = bridge.metrics().await;
    let writes = ctx.audit.bridge_writes(mark, ns).len();
    let per_s = |a: Option<f64>, b: Option<f64>| a.zip(b).map_or(f64::NAN, |(a, b)| (b - a) / wall);
    let (cpu, server_cpu) = (per_s(b0, b1), per_s(s0, s1));
    let probes = |t: &str| etcd_bridge_testbed::metrics::sum(t, "etcd_bridge_probes_total");
    let serving = |t: &str| {
        etcd_bridge_testbed::metrics::value(t, r#"etcd_bridge_probes_total{outcome="serving"}"#)
            .unwrap_or(0.0)
    };
    let probes_per_s = (probes(&after) - probes(&before)) / wall;
    let failed = (probes(&after) - serving(&after)) - (probes(&before) - serving(&before));
    progress(&format!(
        "{label}: ready after {}; {:.3} CPU s/s over {wall:.1} s, VmHWM {:.1} MiB, VmRSS {:.1} MiB; {probes_per_s:.0} probes/s ({failed} not serving); health server {server_cpu:.3} CPU; {writes} writes; {}",
        secs(ready),
        cpu,
        hwm.unwrap_or(0.0),
        rss.unwrap_or(0.0),
        sockstat()
    ));
    if failed > 0.0 {
        ctx.anomalies.push(format!(
            "health at scale: {failed} probes did not answer SERVING in the window ({label})"
        ));
    }
    let log = bridge.log();
    stop_bridge(
        &mut ctx.anomalies,
        &mut bridge,
        &format!("health at scale, {label}"),
    );
    note_log_warnings(ctx, &format!("health at scale, {label}"), &log);
    let json = json!({
        "ready_s": ready.map(|d| d.as_secs_f64()),
        "all_probed_serving_s": all_serving.map(|d| d.as_secs_f64()),
        "window_s": wall,
        "bridge_cpu_s": b0.zip(b1).map(|(a, b)| b - a),
        "bridge_cpu_per_s": r3(Some(cpu)),
        "vm_hwm_mib": r3(hwm),
        "vm_rss_mib": r3(rss),
        "server_cpu_per_s": r3(Some(server_cpu)),
        "probes_per_s": r3(Some(probes_per_s)),
        "probes_not_serving": failed,
        "probe_duration": histogram(&after, "etcd_bridge_probe_duration_seconds"),
        "apiserver_writes": writes,
        "conntrack_entries": [conntrack0, conntrack()],
        "sockstat_tcp": sockstat(),
    });
    Window {
        cpu_per_s: cpu,
        server_cpu_per_s: server_cpu,
        hwm,
        rss,
        json,
    }
}

/// The host's connection-tracking entries, when conntrack is loaded.
fn conntrack() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// The host's TCP socket counts (`inuse`, `tw` for TIME_WAIT): each probe opens and closes one.
fn sockstat() -> String {
    block(|| std::fs::read_to_string("/proc/net/sockstat"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("TCP:")).map(str::to_owned))
        .unwrap_or_default()
}

/// The line of the results table.
pub fn brief(v: &Value) -> String {
    if v["measured"] != true {
        return "health at scale: not measured".into();
    }
    format!(
        "{} endpoints every {} ms: bridge {} CPU (off: {}), VmHWM {} MiB (off: {}), {} probes/s; health server {} CPU",
        v["endpoints"],
        v["interval_ms"],
        v["bridge_cpu_per_s_on"],
        v["bridge_cpu_per_s_off"],
        v["prober_on"]["vm_hwm_mib"],
        v["prober_off"]["vm_hwm_mib"],
        v["prober_on"]["probes_per_s"],
        v["server_cpu_per_s"],
    )
}
