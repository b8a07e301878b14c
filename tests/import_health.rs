//! Active health checks on the real test bed: Go gRPC servers with the standard health service
//! (`tests/go/cmd/healthserver`), toggled SERVING and NOT_SERVING, SIGSTOPped and killed, and the
//! EndpointSlice conditions following them; a weight-0 registration draining; the panic guard
//! holding a Service whose servers mostly stop at once; a restarted bridge keeping what its
//! slices show; `--probe-mode=tcp` following a server killed and restarted, but not one
//! SIGSTOPped (its kernel still accepts); with `--probe-watch`, changes streamed at once and a
//! server without Watch checked.
//!
//! Traffic stays on this machine: the servers listen on addresses this test assigns inside a
//! network namespace it creates (`ip netns add`, a veth pair, 10.231.N.0/24: the test bed's
//! `netns`), and every address registered is one of them. The bridge is stopped before the namespace is removed (locals drop
//! in reverse order), so it never probes an address nothing here owns.

mod common;

use common::*;
use etcd_bridge_testbed::netns::{Netns, healthserver};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const PORT: u16 = 50051;
/// Fast probes, so the test is quick: every 500 ms, two failures to mark an endpoint down.
const INTERVAL: Duration = Duration::from_millis(500);
const PROBE_FLAGS: &[&str] = &[
    "--probe=*",
    "--probe-interval=500ms",
    "--probe-timeout=250ms",
    "--probe-failure-threshold=2",
    "--aggregate=false",
];

// ---------------------------------------------------------------------------------------------
// The servers

/// A network namespace with `n` server addresses assigned; fails the test if the sandbox refuses.
fn netns(n: u32) -> (Netns, Vec<String>) {
    let ns = Netns::create(n).unwrap_or_else(|e| panic!("{e}"));
    let addrs = ns.assign(n).unwrap_or_else(|e| panic!("{e}"));
    (ns, addrs.iter().map(|a| a.to_string()).collect())
}

/// A health server inside the namespace, listening on `ip`:[`PORT`].
struct Server {
    proc: Proc,
    ip: String,
}

impl Server {
    fn start(scope: &Scope, ns: &Netns, ip: &str) -> Server {
        Server::start_with(scope, ns, ip, &[])
    }

    /// With the server's own flags, e.g. `-no-watch`.
    fn start_with(scope: &Scope, ns: &Netns, ip: &str, flags: &[&str]) -> Server {
        let log = scope
            .bed
            .dir
            .join(format!("healthserver-{}-{ip}.log", scope.namespace));
        let bin = healthserver().unwrap_or_else(|e| {
            panic!("tests/go/cmd/healthserver could not be built (no skipping):\n{e}")
        });
        let mut flags: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
        flags.push(format!("-listen={ip}:{PORT}"));
        let args = ns.exec_args(bin, &flags);
        // `ip netns exec` execs the server: the pid is the server's, so signals reach it.
        // A restarted server appends to the same log: wait for one more "serving on".
        let started = |text: &str| text.matches("serving on").count();
        let before = started(&std::fs::read_to_string(&log).unwrap_or_default());
        let mut proc = Proc::spawn("healthserver", Path::new("ip"), &args, &log)
            .unwrap_or_else(|e| panic!("start a health server: {e}"));
        let deadline = Instant::now() + WAIT;
        while started(&proc.full_log()) <= before {
            assert!(
                proc.is_running() && Instant::now() < deadline,
                "the health server on {ip} did not start\n{}",
                proc.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            proc,
            ip: ip.to_string(),
        }
    }

    fn addr(&self) -> String {
        format!("{}:{PORT}", self.ip)
    }
}

/// A test's own estate: its scope, a network namespace with `n` health servers, each
/// registered as `service` v1 (weight 1, a 600 s lease). Bind the namespace (`ns: _ns`) for the
/// whole test, and start the bridge after this: locals drop in reverse order, so the bridge
/// stops before the namespace goes.
struct Estate {
    scope: Scope,
    ns: Netns,
    ips: Vec<String>,
    servers: Vec<Server>,
}

async fn estate(base: &str, n: u32, service: &str) -> Estate {
    let scope = Scope::new(base);
    let (ns, ips) = netns(n);
    let servers: Vec<Server> = ips
        .iter()
        .map(|ip| Server::start(&scope, &ns, ip))
        .collect();
    let mut etcd = scope.etcd().await;
    for s in &servers {
        register(&mut etcd, &scope.prefix, service, "v1", &s.addr(), 1, 600).await;
    }
    Estate {
        scope,
        ns,
        ips,
        servers,
    }
}

// ---------------------------------------------------------------------------------------------
// Conditions

/// (ready, serving, terminating), with the API's defaults for unset conditions.
type Flags = (bool, bool, bool);
const READY: Flags = (true, true, false);
const DOWN: Flags = (false, false, false);
const DRAINING: Flags = (false, true, true);

/// Every endpoint of Service `service` and its conditions.
async fn conditions(apis: &Apis, service: &str) -> Option<BTreeMap<String, Flags>> {
    let slices = try_slices_of(&apis.slices, service).await?;
    Some(
        slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| {
                let c = e.conditions.clone().unwrap_or_default();
                let ready = c.ready.unwrap_or(true);
                let flags = (
                    ready,
                    c.serving.unwrap_or(ready),
                    c.terminating.unwrap_or(false),
                );
                (e.addresses.join(","), flags)
            })
            .collect(),
    )
}

/// Waits until Service `service` shows exactly `want`; returns how long that took.
async fn shows(apis: &Apis, service: &str, want: &[(&str, Flags)]) -> Duration {
    shows_within(apis, service, want, WAIT).await
}

async fn shows_within(
    apis: &Apis,
    service: &str,
    want: &[(&str, Flags)],
    wait: Duration,
) -> Duration {
    let want: BTreeMap<String, Flags> = want.iter().map(|(a, f)| (a.to_string(), *f)).collect();
    let started = Instant::now();
    eventually(&format!("{service} showing {want:?}"), wait, || async {
        (conditions(apis, service).await? == want).then_some(())
    })
    .await;
    started.elapsed()
}

/// The bridge's EndpointSlice writes (apply or delete) in this namespace since `mark`.
fn slice_writes(scope: &Scope, mark: u64) -> usize {
    let user = bridge_user(&scope.namespace);
    object_writes(&audit_writes(
        &scope.bed.cluster.audit_log(),
        mark,
        &scope.namespace,
    ))
    .iter()
    .filter(|w| w.user == user && w.resource == "endpointslices")
    .count()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn slice_conditions_follow_the_servers_health_one_write_per_change() {
    let scope = Scope::new("health");
    let (ns, ips) = netns(5);
    let mut servers: Vec<Server> = ips
        .iter()
        .map(|ip| Server::start(&scope, &ns, ip))
        .collect();
    let mut etcd = scope.etcd().await;
    for (i, s) in servers.iter().enumerate() {
        // The fifth is draining: registered with weight 0.
        let weight = if i == 4 { 0 } else { 1 };
        register(
            &mut etcd,
            &scope.prefix,
            "greeter",
            "v1",
            &s.addr(),
            weight,
            600,
        )
        .await;
    }
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, PROBE_FLAGS);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let all = |changed: &[(usize, Flags)]| -> Vec<(&str, Flags)> {
        (0..5)
            .map(|i| {
                let base = if i == 4 { DRAINING } else { READY };
                let f = changed.iter().find(|(j, _)| *j == i).map_or(base, |c| c.1);
                (ips[i].as_str(), f)
            })
            .collect()
    };
    shows(&apis, "greeter-v1", &all(&[])).await;
    // Every endpoint probed, and serving (the drained one serves too).
    eventually("5 endpoints probed serving", WAIT, || async {
        (bridge.metric(r#"etcd_bridge_probed_endpoints{state="serving"}"#) == Some(5.0))
            .then_some(())
    })
    .await;

    // NOT_SERVING and back, five times: the detection latency, and one write per change.
    let mut detect = Vec::new();
    for _ in 0..5 {
        let mark = audit_mark(&scope.bed.cluster.audit_log());
        servers[0].proc.signal("USR1");
        detect.push(shows(&apis, "greeter-v1", &all(&[(0, DOWN)])).await);
        // Nothing more while the states hold.
        tokio::time::sleep(INTERVAL * 4).await;
        assert_eq!(slice_writes(&scope, mark), 1, "one write for NOT_SERVING");
        let mark = audit_mark(&scope.bed.cluster.audit_log());
        servers[0].proc.signal("USR2");
        shows(&apis, "greeter-v1", &all(&[])).await;
        tokio::time::sleep(INTERVAL * 4).await;
        assert_eq!(slice_writes(&scope, mark), 1, "one write for SERVING again");
    }
    detect.sort();
    eprintln!(
        "NOT_SERVING -> slice not ready: p50 {:?}, max {:?} over {} (interval {INTERVAL:?}; goal 2 x interval + 1 s)",
        percentile(&detect, 0.5),
        detect.last().unwrap(),
        detect.len()
    );
    assert!(*detect.last().unwrap() <= INTERVAL * 2 + Duration::from_secs(1));

    // `preview --probe` sees the same: one round, while the first server says NOT_SERVING.
    servers[0].proc.signal("USR1");
    shows(&apis, "greeter-v1", &all(&[(0, DOWN)])).await;
    let (ok, out, err) = preview(
        &scope.registry_endpoint,
        &scope.prefix,
        &["--probe", "--aggregate=false"],
    );
    assert!(ok, "preview --probe failed: {err}");
    assert!(out.contains(&format!("{}(not-serving)", ips[0])), "{out}");
    assert!(out.contains(&format!("{}(draining)", ips[4])), "{out}");
    assert!(!out.contains("panic guard"), "{out}");
    servers[0].proc.signal("USR2");
    shows(&apis, "greeter-v1", &all(&[])).await;

    // SIGSTOP: the kernel still accepts connections, the server never answers; probes time out.
    servers[1].proc.signal("STOP");
    let stopped = shows(&apis, "greeter-v1", &all(&[(1, DOWN)])).await;
    servers[1].proc.signal("CONT");
    shows(&apis, "greeter-v1", &all(&[])).await;

    // Killed: connections are refused.
    servers[2].proc.kill();
    let gone = shows(&apis, "greeter-v1", &all(&[(2, DOWN)])).await;
    eprintln!("SIGSTOP -> not ready in {stopped:?}; SIGKILL -> not ready in {gone:?}");
    let text = bridge.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    for outcome in ["not_serving", "timed_out", "unreachable", "serving"] {
        let series = format!(r#"etcd_bridge_probes_total{{outcome="{outcome}"}}"#);
        let n = etcd_bridge_testbed::metrics::value(&text, &series).unwrap_or(0.0);
        assert!(n >= 1.0, "{series} = {n}\n{text}");
    }
    assert!(text.contains("etcd_bridge_probe_duration_seconds_count"));
    assert_eq!(
        bridge.metric("etcd_bridge_panic_guard_activations_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn the_panic_guard_keeps_a_service_ready_when_most_servers_stop_at_once() {
    let Estate {
        scope,
        ns: _ns,
        servers,
        ..
    } = estate("health-panic", 4, "payments").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, PROBE_FLAGS);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let ready: Vec<(&str, Flags)> = servers.iter().map(|s| (s.ip.as_str(), READY)).collect();
    shows(&apis, "payments-v1", &ready).await;

    // Three of four stop at once: more than half fail, so all four are kept ready.
    for s in &servers[..3] {
        s.proc.signal("STOP");
    }
    let started = Instant::now();
    eventually("the panic guard holding payments-v1", WAIT, || async {
        (bridge.metric("etcd_bridge_panic_guard_services") == Some(1.0)).then_some(())
    })
    .await;
    eprintln!("panic guard engaged {:?} after the stop", started.elapsed());
    shows(&apis, "payments-v1", &ready).await;
    // And it stays so while they are stopped.
    tokio::time::sleep(INTERVAL * 6).await;
    assert_eq!(
        conditions(&apis, "payments-v1").await.unwrap(),
        ready.iter().map(|(a, f)| (a.to_string(), *f)).collect(),
        "kept ready while the guard holds"
    );
    assert_eq!(
        bridge.metric("etcd_bridge_panic_guard_activations_total"),
        Some(1.0)
    );
    let events = scope.kubectl(&[
        "get",
        "events.events.k8s.io",
        "--field-selector=reason=PanicGuard",
        "-o",
        "jsonpath={.items[*].note}",
    ]);
    assert!(events.contains("3 of 4 endpoints"), "{events:?}");

    for s in &servers[..3] {
        s.proc.signal("CONT");
    }
    eventually("the panic guard releasing payments-v1", WAIT, || async {
        (bridge.metric("etcd_bridge_panic_guard_services") == Some(0.0)).then_some(())
    })
    .await;
    shows(&apis, "payments-v1", &ready).await;
}

#[tokio::test]
async fn a_restarted_bridge_keeps_a_failed_endpoint_not_ready() {
    let Estate {
        scope,
        ns: _ns,
        servers,
        ..
    } = estate("health-restart", 3, "orders").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let mut first = scope.bridge(&kubeconfig, PROBE_FLAGS);
    first.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    servers[0].proc.signal("USR1");
    let want = [
        (servers[0].ip.as_str(), DOWN),
        (servers[1].ip.as_str(), READY),
        (servers[2].ip.as_str(), READY),
    ];
    shows(&apis, "orders-v1", &want).await;

    // A new bridge takes over: it starts from what the slices show, so the endpoint that is not
    // serving never flaps to ready while the new leader's own probes begin.
    first.stop();
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    let mut second = scope.bridge(&kubeconfig, PROBE_FLAGS);
    second.leading(WAIT).await;
    let until = Instant::now() + INTERVAL * 8;
    while Instant::now() < until {
        let now = conditions(&apis, "orders-v1").await.unwrap_or_default();
        assert_eq!(
            now.get(servers[0].ip.as_str()),
            Some(&DOWN),
            "flapped after the restart: {now:?}\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slice_writes(&scope, mark),
        0,
        "the new leader wrote nothing"
    );
    // It does probe: the server's recovery shows.
    servers[0].proc.signal("USR2");
    shows(&apis, "orders-v1", &want.map(|(a, _)| (a, READY))).await;
}

#[tokio::test]
async fn tcp_mode_follows_a_server_killed_and_restarted_but_not_one_stopped() {
    let Estate {
        scope,
        ns,
        ips,
        mut servers,
    } = estate("health-tcp", 2, "ledger").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let flags = [PROBE_FLAGS, &["--probe-mode=tcp"]].concat();
    let mut bridge = scope.bridge(&kubeconfig, &flags);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let both = |first: Flags| [(ips[0].as_str(), first), (ips[1].as_str(), READY)];
    shows(&apis, "ledger-v1", &both(READY)).await;
    eventually("2 endpoints probed serving", WAIT, || async {
        (bridge.metric(r#"etcd_bridge_probed_endpoints{state="serving"}"#) == Some(2.0))
            .then_some(())
    })
    .await;
    let outcome = |o: &str| {
        bridge
            .metric(&format!(r#"etcd_bridge_probes_total{{outcome="{o}"}}"#))
            .unwrap_or(0.0)
    };

    // The mode's limit: a SIGSTOPped server's kernel still completes the handshake, so a TCP
    // check passes where a gRPC one times out (the first test above). Six intervals, still ready.
    let serving_before = outcome("serving");
    servers[0].proc.signal("STOP");
    let until = Instant::now() + INTERVAL * 6;
    while Instant::now() < until {
        let now = conditions(&apis, "ledger-v1").await.unwrap_or_default();
        assert_eq!(
            now.get(ips[0].as_str()),
            Some(&READY),
            "a stopped server still accepts TCP: {now:?}\n{}",
            bridge.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        outcome("serving") >= serving_before + 6.0,
        "the stopped server's checks kept passing: {} -> {}",
        serving_before,
        outcome("serving")
    );
    assert_eq!(
        outcome("timed_out"),
        0.0,
        "TCP checks never wait on the server"
    );
    servers[0].proc.signal("CONT");

    // Killed: its port closes, connections are refused, and after the failure threshold (2) the
    // endpoint is neither ready nor serving.
    assert_eq!(outcome("unreachable"), 0.0);
    servers[0].proc.kill();
    let down = shows(&apis, "ledger-v1", &both(DOWN)).await;
    let refused = outcome("unreachable");
    assert!(
        refused >= 2.0,
        "not ready only after 2 refused connections, saw {refused}"
    );
    assert!(
        down <= INTERVAL * 2 + Duration::from_secs(1),
        "kill -> not ready in {down:?}"
    );

    // Restarted on the same address: one accepted connection (success threshold 1) and it is
    // ready again.
    let restarted = Instant::now();
    servers[0] = Server::start(&scope, &ns, &ips[0]);
    let starting = restarted.elapsed();
    let up = shows(&apis, "ledger-v1", &both(READY)).await;
    eprintln!(
        "TCP mode (interval {INTERVAL:?}, failure threshold 2): SIGKILL -> not ready in {} ms; \
         restarted server listening -> ready in {} ms (+{} ms for it to start); \
         SIGSTOPped: ready throughout",
        down.as_millis(),
        up.as_millis(),
        starting.as_millis()
    );
    assert!(
        up <= INTERVAL + Duration::from_secs(1),
        "restart -> ready in {up:?}"
    );
}

/// The issue's leader change with a standby running: the standby keeps its cache warm but
/// probes nothing; when the leader is killed it leads from what the slices show, so the endpoint
/// that is not serving stays not ready through the handover, and nothing is written for it.
#[tokio::test]
async fn a_killed_leaders_standby_takes_over_without_flapping_conditions() {
    let Estate {
        scope,
        ns: _ns,
        servers,
        ..
    } = estate("health-failover", 3, "orders").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let flags = [PROBE_FLAGS, &["--lease-duration=3s"]].concat();
    let mut leader = scope.bridge(&kubeconfig, &flags);
    leader.leading(WAIT).await;
    let mut standby = scope.bridge(&kubeconfig, &flags);
    standby.ready(WAIT).await;
    assert_eq!(
        standby.metric("etcd_bridge_leader"),
        Some(0.0),
        "the second bridge is the standby"
    );
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    servers[0].proc.signal("USR1");
    let want = [
        (servers[0].ip.as_str(), DOWN),
        (servers[1].ip.as_str(), READY),
        (servers[2].ip.as_str(), READY),
    ];
    shows(&apis, "orders-v1", &want).await;

    let mark = audit_mark(&scope.bed.cluster.audit_log());
    leader.proc.kill();
    let killed = Instant::now();
    let mut led_after = None;
    // Through the Lease's expiry and eight probe intervals of the new leader.
    while led_after.is_none() || killed.elapsed() < led_after.unwrap() + INTERVAL * 8 {
        assert!(
            killed.elapsed() < WAIT,
            "the standby never led\n{}",
            standby.log()
        );
        if led_after.is_none() && standby.metric("etcd_bridge_leader") == Some(1.0) {
            led_after = Some(killed.elapsed());
        }
        let now = conditions(&apis, "orders-v1").await.unwrap_or_default();
        let want: BTreeMap<String, Flags> = want.iter().map(|(a, f)| (a.to_string(), *f)).collect();
        assert_eq!(now, want, "flapped during the handover\n{}", standby.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "figures: leader killed -> standby led after {:?} (Lease 3 s); conditions held for {:?} after",
        led_after.unwrap(),
        INTERVAL * 8
    );
    assert_eq!(
        slice_writes(&scope, mark),
        0,
        "nothing written through the handover"
    );
    // The new leader probes: the server's recovery shows.
    servers[0].proc.signal("USR2");
    let took = shows(&apis, "orders-v1", &want.map(|(a, _)| (a, READY))).await;
    eprintln!("figures: SERVING again -> ready {took:?} after, under the new leader");
}

/// With `--probe-watch` and a 30 s interval, only the Watch stream can explain a change that
/// shows within seconds. The second server answers Watch with UNIMPLEMENTED: it is checked.
#[tokio::test]
async fn with_watch_a_status_change_shows_at_once_and_a_server_without_watch_is_checked() {
    const LONG: Duration = Duration::from_secs(30);
    let scope = Scope::new("health-watch");
    let (ns, ips) = netns(2);
    let mut servers = vec![
        Server::start(&scope, &ns, &ips[0]),
        Server::start_with(&scope, &ns, &ips[1], &["-no-watch"]),
    ];
    let mut etcd = scope.etcd().await;
    for s in &servers {
        register(&mut etcd, &scope.prefix, "streams", "v1", &s.addr(), 1, 600).await;
    }
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(
        &kubeconfig,
        &[
            "--probe=*",
            "--probe-watch",
            "--probe-interval=30s",
            "--probe-timeout=1s",
            "--probe-failure-threshold=2",
            "--aggregate=false",
        ],
    );
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let want = |first: Flags, second: Flags| [(ips[0].as_str(), first), (ips[1].as_str(), second)];
    shows(&apis, "streams-v1", &want(READY, READY)).await;
    // Each endpoint's first tick comes within one interval: then one stream is open (the
    // second server's Watch is UNIMPLEMENTED), and both have a verdict of serving; the second
    // one's can only come from a Check.
    eventually(
        "one stream open, both endpoints serving",
        LONG + WAIT,
        || async {
            let streams = bridge.metric("etcd_bridge_probe_watch_streams");
            let serving = bridge.metric(r#"etcd_bridge_probed_endpoints{state="serving"}"#);
            (streams == Some(1.0) && serving == Some(2.0)).then_some(())
        },
    )
    .await;

    // NOT_SERVING and back, five times: streamed, so far faster than the 30 s interval.
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        servers[0].proc.signal("USR1");
        down.push(shows(&apis, "streams-v1", &want(DOWN, READY)).await);
        servers[0].proc.signal("USR2");
        up.push(shows(&apis, "streams-v1", &want(READY, READY)).await);
    }
    down.sort();
    up.sort();
    eprintln!(
        "watch: NOT_SERVING -> slice not ready: p50 {} ms, max {} ms; SERVING -> ready: p50 {} ms, max {} ms (interval {LONG:?})",
        percentile(&down, 0.5).as_millis(),
        down.last().unwrap().as_millis(),
        percentile(&up, 0.5).as_millis(),
        up.last().unwrap().as_millis(),
    );
    // The interval cannot explain it: ten changes in a row, each well within a tenth of it.
    assert!(*down.last().unwrap() < LONG / 10, "{down:?}");
    assert!(*up.last().unwrap() < LONG / 10, "{up:?}");
    // Streamed statuses are counted as results; still one stream, none re-opened.
    let text = bridge.get("/metrics").map(|(_, b)| b).unwrap_or_default();
    let count = |outcome: &str| {
        let series = format!(r#"etcd_bridge_probes_total{{outcome="{outcome}"}}"#);
        etcd_bridge_testbed::metrics::value(&text, &series).unwrap_or(0.0)
    };
    assert!(count("not_serving") >= 5.0, "{text}");
    assert_eq!(count("unreachable"), 0.0, "no stream broke\n{text}");
    assert_eq!(bridge.metric("etcd_bridge_probe_watch_streams"), Some(1.0));

    // The server without Watch is followed by its Checks: its NOT_SERVING shows at a tick.
    servers[1].proc.signal("USR1");
    let checked = shows_within(&apis, "streams-v1", &want(READY, DOWN), LONG + WAIT).await;
    eprintln!(
        "no-watch server: NOT_SERVING -> slice not ready in {} ms (by Check, interval {LONG:?})",
        checked.as_millis()
    );
    assert_eq!(bridge.metric("etcd_bridge_probe_watch_streams"), Some(1.0));

    // A killed server ends its stream at once; the stream is closed.
    servers[0].proc.kill();
    eventually("the killed server's stream closed", WAIT, || async {
        (bridge.metric("etcd_bridge_probe_watch_streams") == Some(0.0)).then_some(())
    })
    .await;
    assert!(
        bridge.metric(r#"etcd_bridge_probes_total{outcome="unreachable"}"#) >= Some(1.0),
        "a stream that ends counts as a failure"
    );
    bridge.stop();
}

/// With `--probe-watch`, a wedged server (SIGSTOP) keeps its stream open and silent: the Check
/// that still goes out at every tick is what notices it, within the interval's thresholds.
#[tokio::test]
async fn with_watch_a_wedged_server_is_still_caught_by_its_checks() {
    let Estate {
        scope,
        ns: _ns,
        ips,
        servers,
    } = estate("health-watch-stop", 2, "wedge").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[PROBE_FLAGS, &["--probe-watch"]].concat());
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let want = |first: Flags| [(ips[0].as_str(), first), (ips[1].as_str(), READY)];
    shows(&apis, "wedge-v1", &want(READY)).await;
    eventually("both streams open", WAIT, || async {
        (bridge.metric("etcd_bridge_probe_watch_streams") == Some(2.0)).then_some(())
    })
    .await;
    servers[0].proc.signal("STOP");
    let took = shows(&apis, "wedge-v1", &want(DOWN)).await;
    eprintln!("watch: SIGSTOP -> not ready in {took:?} (interval {INTERVAL:?}, threshold 2)");
    assert!(
        took < INTERVAL * 2 + Duration::from_secs(3),
        "a wedged server took {took:?}"
    );
    servers[0].proc.signal("CONT");
    shows(&apis, "wedge-v1", &want(READY)).await;
}

/// `--probe=source:NAME` selects by registry: here `default`, the flags' own (an EtcdSource's
/// name selects its services the same way, by the source each target carries).
#[tokio::test]
async fn a_source_named_in_probe_has_its_endpoints_probed() {
    let Estate {
        scope,
        ns: _ns,
        ips,
        servers,
    } = estate("health-by-source", 2, "bysource").await;
    let kubeconfig = scope.bridge_kubeconfig();
    let flags: Vec<&str> = PROBE_FLAGS
        .iter()
        .map(|f| {
            if *f == "--probe=*" {
                "--probe=source:default"
            } else {
                f
            }
        })
        .collect();
    let mut bridge = scope.bridge(&kubeconfig, &flags);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    servers[0].proc.signal("USR1");
    let took = shows(
        &apis,
        "bysource-v1",
        &[(ips[0].as_str(), DOWN), (ips[1].as_str(), READY)],
    )
    .await;
    eprintln!("source:default: NOT_SERVING -> not ready in {took:?}");
}
