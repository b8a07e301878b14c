//! Active health checks on the real test bed: Go gRPC servers with the standard health service
//! (`tests/go/cmd/healthserver`), toggled SERVING and NOT_SERVING, SIGSTOPped and killed, and the
//! EndpointSlice conditions following them; a weight-0 registration draining; the panic guard
//! holding a Service whose servers mostly stop at once; a restarted bridge keeping what its
//! slices show.
//!
//! Traffic stays on this machine: the servers listen on addresses this test assigns inside a
//! network namespace it creates (`ip netns add`, a veth pair, 10.231.N.0/24), and every address
//! registered is one of them. The bridge is stopped before the namespace is removed (locals drop
//! in reverse order), so it never probes an address nothing here owns.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
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
// The network namespace

/// Runs `ip args...`; the error names the command and what it said.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// A network namespace `ebh-N` joined to the host by a veth pair: the host side is 10.231.N.1/24
/// (the bridge's route to the servers), and the servers' addresses are added inside.
struct Netns {
    name: String,
    host_if: String,
    n: u8,
}

impl Netns {
    /// Claims a free N (the namespace name is the lock: `ip netns add` fails if it exists).
    fn create() -> Netns {
        for n in 1..=250u8 {
            let subnet = format!("10.231.{n}.0/24");
            let routed = Command::new("ip")
                .args(["-4", "route", "show", &subnet])
                .output()
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(true);
            if routed {
                continue;
            }
            let name = format!("ebh-{n}");
            match ip(&["netns", "add", &name]) {
                Ok(()) => {}
                Err(e) if e.contains("exists") => continue,
                Err(e) => panic!("cannot create a network namespace for the health servers: {e}"),
            }
            let ns = Netns {
                host_if: format!("ebh{n}h"),
                name,
                n,
            };
            ns.wire()
                .unwrap_or_else(|e| panic!("cannot wire network namespace {}: {e}", ns.name));
            return ns;
        }
        panic!("no free 10.231.N.0/24 for a network namespace (ebh-1..250 all taken)");
    }

    fn wire(&self) -> Result<(), String> {
        let peer = format!("ebh{}n", self.n);
        let host_ip = format!("10.231.{}.1/24", self.n);
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ])?;
        ip(&["link", "set", &peer, "netns", &self.name])?;
        ip(&["addr", "add", &host_ip, "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        ip(&["-n", &self.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &self.name, "link", "set", &peer, "up"])
    }

    /// Assigns the `i`th server address inside the namespace and returns it.
    fn address(&self, i: u8) -> String {
        let addr = format!("10.231.{}.{}", self.n, 10 + i);
        let peer = format!("ebh{}n", self.n);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            &peer,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        addr
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of the veth pair deletes both.
        for args in [
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            if let Err(e) = ip(&args) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Go health server

/// `tests/go/cmd/healthserver`, built once into `~/.cache/etcd-bridge/seedgo/health-{hash}/`.
fn healthserver() -> &'static Path {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(build_healthserver) {
        Ok(p) => p,
        Err(e) => panic!("tests/go/cmd/healthserver could not be built (no skipping):\n{e}"),
    }
}

fn build_healthserver() -> Result<PathBuf, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go");
    let mut h = Sha256::new();
    for f in ["cmd/healthserver/main.go", "go.mod", "go.sum"] {
        h.update(std::fs::read(src.join(f)).map_err(|e| format!("read {f}: {e}"))?);
    }
    let hash: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cache = std::env::var_os("ETCD_BRIDGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/etcd-bridge")))
        .ok_or("neither ETCD_BRIDGE_CACHE nor HOME is set: nowhere to cache the Go binary")?;
    let out = cache.join("seedgo").join(format!("health-{hash}"));
    let bin = out.join("healthserver");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // A private name, renamed into place when complete: concurrent builds never see half a file.
    let tmp = bin.with_extension(format!("tmp{}", std::process::id()));
    let built = Command::new("go")
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(&tmp)
        .arg("./cmd/healthserver")
        .current_dir(&src)
        .output()
        .map_err(|e| format!("run `go build` (is Go installed and on PATH?): {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "go build ./cmd/healthserver failed: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(bin)
}

/// A health server inside the namespace, listening on `ip`:[`PORT`].
struct Server {
    proc: Proc,
    ip: String,
}

impl Server {
    fn start(scope: &Scope, ns: &Netns, ip: &str) -> Server {
        let log = scope
            .bed
            .dir
            .join(format!("healthserver-{}-{ip}.log", scope.namespace));
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            ns.name.clone(),
            healthserver().display().to_string(),
            format!("-listen={ip}:{PORT}"),
        ];
        // `ip netns exec` execs the server: the pid is the server's, so signals reach it.
        let mut proc = Proc::spawn("healthserver", Path::new("ip"), &args, &log)
            .unwrap_or_else(|e| panic!("start a health server: {e}"));
        let deadline = Instant::now() + WAIT;
        while !proc.full_log().contains("serving on") {
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
    let want: BTreeMap<String, Flags> = want.iter().map(|(a, f)| (a.to_string(), *f)).collect();
    let started = Instant::now();
    eventually(&format!("{service} showing {want:?}"), WAIT, || async {
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
    let ns = Netns::create();
    let mut servers: Vec<Server> = (1..=5)
        .map(|i| Server::start(&scope, &ns, &ns.address(i)))
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
    let ips: Vec<String> = servers.iter().map(|s| s.ip.clone()).collect();
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
    let scope = Scope::new("health-panic");
    let ns = Netns::create();
    let servers: Vec<Server> = (1..=4)
        .map(|i| Server::start(&scope, &ns, &ns.address(i)))
        .collect();
    let mut etcd = scope.etcd().await;
    for s in &servers {
        register(
            &mut etcd,
            &scope.prefix,
            "payments",
            "v1",
            &s.addr(),
            1,
            600,
        )
        .await;
    }
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
    let scope = Scope::new("health-restart");
    let ns = Netns::create();
    let servers: Vec<Server> = (1..=3)
        .map(|i| Server::start(&scope, &ns, &ns.address(i)))
        .collect();
    let mut etcd = scope.etcd().await;
    for s in &servers {
        register(&mut etcd, &scope.prefix, "orders", "v1", &s.addr(), 1, 600).await;
    }
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
