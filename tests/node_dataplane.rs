//! The data plane, on the real node (testbed/src/node.rs): a seed-style Go gRPC server outside
//! Kubernetes registers itself in etcd; the bridge imports it; a pod calls it the way a user's
//! gRPC client would, by its cluster DNS name (`dns:///NAME.NS.svc.cluster.local:PORT`, grpc-go's
//! own resolver, through CoreDNS) or through the Service's ClusterIP (kube-proxy); and when the
//! registration goes, the name and kube-proxy's rules go with it; and with `--probe`, a server
//! that says NOT_SERVING leaves the headless name's answer until it serves again (CoreDNS answers
//! with ready endpoints only).
//!
//! - The servers run in network namespaces of their own beside the node
//!   (`testbed/src/outside.rs`), on addresses the test assigns there; pods reach them through the
//!   node, the servers reach etcd through a relay on the host, and the bridge's prober on the host
//!   reaches them through the host link (`Outside::route_from_host`). Nothing is sent to an
//!   address this machine does not own.
//! - The bridge runs as a host process with a ServiceAccount token, as the other integration tests
//!   run it: the chart's pods are proven on this node by tests/node_helm.rs, and what is under test
//!   here is what CoreDNS and kube-proxy do with the objects the bridge writes, wherever it runs.
//! - The client is `tests/go/cmd/healthclient`, static, in an image built here (`hack/image.sh
//!   --layer`), run in a pod with `kubectl exec`.
//!
//! The node starts once for this test binary (`Node::shared`); each test has its own namespace,
//! etcd prefix and outside namespaces.

mod common;

use common::*;
use etcd_bridge_testbed::grpc_tools::{self, Call, GrpcTools, ToolsPod};
use etcd_bridge_testbed::netns::healthserver;
use etcd_bridge_testbed::node_network::GUARD_COMMENT;
use etcd_bridge_testbed::outside::Outside;
use etcd_bridge_testbed::{Node, TestBed};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

const BINARY: &str = env!("CARGO_BIN_EXE_etcd-bridge");
const WAIT: Duration = Duration::from_secs(60);

fn node() -> &'static Node {
    let t = Instant::now();
    let node = Node::shared(Path::new(BINARY));
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "test bed + images + node: {:?} (the node itself: {:?})",
            t.elapsed(),
            node.started_in
        );
    }
    node
}

/// The client and server, built static, and their image in the node's containerd.
fn tools() -> &'static GrpcTools {
    static TOOLS: OnceLock<Result<GrpcTools, String>> = OnceLock::new();
    let tools = TOOLS.get_or_init(|| {
        let node = node();
        let tools = grpc_tools::build()?;
        grpc_tools::import(node, &tools.image)?;
        Ok(tools)
    });
    match tools {
        Ok(t) => t,
        Err(e) => panic!("the grpc-tools image could not be built or imported (no skipping):\n{e}"),
    }
}

/// Blocking work (processes, kubectl) from an async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A machine outside the cluster, and the registry etcd as its servers dial it.
struct Machine {
    outside: Outside,
    etcd: String,
}

impl Machine {
    fn start(scope: &Scope, label: &str) -> Machine {
        let dir = scope.bed.dir.join(format!("{label}-{}", scope.namespace));
        let mut outside =
            Outside::start(node(), &dir).unwrap_or_else(|e| panic!("the outside namespace: {e}"));
        let relay = outside
            .expose(scope.bed.registry.client_port)
            .expect("relay to the registry etcd");
        Machine {
            outside,
            etcd: format!("http://{relay}"),
        }
    }

    /// Starts `tests/go/cmd/healthserver` on this machine's address, port `port` (SIGUSR1: NOT_SERVING,
    /// SIGUSR2: SERVING); it does not register itself. The host gets a route to the address, so
    /// the bridge's prober reaches it through the host link.
    fn health_server(&self, port: u16) -> (Proc, String) {
        let addr = format!("{}:{port}", self.outside.plan.ip());
        let bin = healthserver().unwrap_or_else(|e| panic!("build the health server: {e}"));
        self.outside
            .route_from_host()
            .unwrap_or_else(|e| panic!("route the outside's address from the host: {e}"));
        let mut proc = self
            .outside
            .spawn(
                &format!("healthserver-{port}"),
                bin,
                &[format!("-listen={addr}")],
            )
            .unwrap_or_else(|e| panic!("start the health server: {e}"));
        let deadline = Instant::now() + WAIT;
        while !proc.full_log().contains("serving on") {
            assert!(
                proc.is_running() && Instant::now() < deadline,
                "the health server on {addr} did not start\n{}",
                proc.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        (proc, addr)
    }

    /// Starts the seed-style server on this machine's address, port `port`, registering itself
    /// under the scope's prefix as `name`/`version` with a lease of `ttl` seconds; returns once its
    /// key is in etcd, with the address it registered.
    fn server(
        &self,
        scope: &Scope,
        name: &str,
        version: &str,
        port: u16,
        ttl: u32,
    ) -> (Proc, String) {
        let addr = format!("{}:{port}", self.outside.plan.ip());
        let args = [
            format!("-listen={addr}"),
            format!("-endpoints={}", self.etcd),
            format!("-root={}", scope.prefix),
            format!("-name={name}"),
            format!("-version={version}"),
            format!("-ttl={ttl}"),
        ];
        let label = format!("server-{name}-{port}");
        let mut proc = self
            .outside
            .spawn(&label, &tools().server, &args)
            .unwrap_or_else(|e| panic!("start the server: {e}"));
        let deadline = Instant::now() + WAIT;
        while !proc.full_log().contains("registered ") {
            assert!(
                proc.is_running(),
                "the server exited\n{}",
                proc.log_tail(30)
            );
            assert!(
                Instant::now() < deadline,
                "the server did not register\n{}",
                proc.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        (proc, addr)
    }
}

/// A client pod in the scope's namespace.
fn client_pod(scope: &Scope, tools: &GrpcTools) -> ToolsPod {
    ToolsPod::start(
        &TestBed::shared().cluster,
        &scope.namespace,
        "client",
        &tools.image,
        "app: client",
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", node().logs_tail(15)))
}

/// A test's namespace and prefix, its bridge, and a client pod.
async fn setup(base: &str, bridge_flags: &[&str]) -> (Scope, Bridge, ToolsPod) {
    let tools = blocking(tools);
    let scope = Scope::new(base);
    let pod = blocking(|| client_pod(&scope, tools));
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, bridge_flags);
    bridge.ready(WAIT).await;
    (scope, bridge, pod)
}

/// `dns:///{service}.{ns}.svc.cluster.local:{port}`: what a user's gRPC client dials.
fn dns_target(scope: &Scope, service: &str, port: u16) -> String {
    format!(
        "dns:///{service}.{}.svc.cluster.local:{port}",
        scope.namespace
    )
}

/// The client's call in the pod, retried until `done` says it is what the test waits for.
fn call_until(pod: &ToolsPod, target: &str, what: &str, done: impl Fn(&Call) -> bool) -> Call {
    let deadline = Instant::now() + WAIT;
    loop {
        let call = pod.call(target);
        if done(&call) {
            return call;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not after {WAIT:?}; the last call said:\n{}",
            call.output
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// kube-proxy's NAT rules, as the node's netfilter has them.
fn nat_rules() -> String {
    let out = node()
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save in the node");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The packets the node's guard refused (see `node_network::create_link`).
fn guard_count() -> u64 {
    let out = node()
        .command("iptables")
        .args(["-w", "-v", "-x", "-n", "-L", "FORWARD"])
        .output()
        .expect("iptables in the node");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(GUARD_COMMENT))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no guard rule in the node's FORWARD chain:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_outside_the_cluster_are_called_by_their_dns_name_from_a_pod_until_they_go() {
    let (scope, bridge, pod) = setup("dp-dns", &[]).await;
    let one = blocking(|| Machine::start(&scope, "outside-1"));
    let two = blocking(|| Machine::start(&scope, "outside-2"));

    // Two servers register greeter v1 themselves, each on its own machine.
    let registered = SystemTime::now();
    let (mut first, first_addr) = blocking(|| one.server(&scope, "greeter", "v1", 50051, 3));
    let (mut second, second_addr) = blocking(|| two.server(&scope, "greeter", "v1", 50051, 3));
    let ips = [
        one.outside.plan.ip().to_string(),
        two.outside.plan.ip().to_string(),
    ];

    // The pod's client dials the Service's DNS name with grpc-go's dns resolver: CoreDNS answers
    // with both registered addresses (headless: one A record per endpoint), and the health call
    // goes straight to one of them.
    let target = dns_target(&scope, "greeter-v1", 50051);
    let call = blocking(|| {
        call_until(&pod, &target, "both servers in DNS", |c| {
            c.serving && c.resolved.len() == 2
        })
    });
    eprintln!(
        "registered -> {target} resolves to both and is SERVING, seen by the pod: {:?}",
        SystemTime::now()
            .duration_since(registered)
            .unwrap_or_default()
    );
    let mut resolved = call.resolved.clone();
    resolved.sort();
    let mut want = ips.to_vec();
    want.sort();
    assert_eq!(resolved, want, "{}", call.output);
    let peer = call.peer.clone().unwrap_or_default();
    assert!(
        peer == first_addr || peer == second_addr,
        "the call went to a registered address itself: {}",
        call.output
    );
    // The aggregate name, too.
    let aggregate = blocking(|| pod.call(&dns_target(&scope, "greeter", 50051)));
    assert!(aggregate.serving, "{}", aggregate.output);
    assert_eq!(aggregate.resolved.len(), 2, "{}", aggregate.output);

    // The first server is killed: it cannot unregister, its lease (3 s) expires, and DNS stops
    // returning it.
    let killed = SystemTime::now();
    first.kill();
    let call = blocking(|| {
        call_until(&pod, &target, "the killed server gone from DNS", |c| {
            c.resolved == [ips[1].clone()]
        })
    });
    let gone = SystemTime::now().duration_since(killed).unwrap_or_default();
    eprintln!("server killed -> its address gone from DNS (lease of 3 s): {gone:?}");
    assert!(
        gone >= Duration::from_secs(1),
        "gone {gone:?} after the kill: before its lease could have expired"
    );
    let mut etcd = scope.etcd().await;
    let first_key = seed_key(&scope.prefix, "greeter", "v1", &first_addr);
    let left = etcd.get(first_key, None).await.expect("etcd get");
    assert!(
        left.kvs().is_empty(),
        "the killed server's key expired with its lease"
    );
    assert!(
        call.serving,
        "the other server still answers: {}",
        call.output
    );
    assert_eq!(call.peer.as_deref(), Some(second_addr.as_str()));

    // The second one's key is deleted (the server keeps running): the name goes from DNS.
    let key = seed_key(&scope.prefix, "greeter", "v1", &second_addr);
    let mut watch =
        blocking(|| pod.watch(&target, "unresolved", None)).unwrap_or_else(|e| panic!("{e}"));
    let deleted = SystemTime::now();
    etcd.delete(key, None).await.expect("delete the key");
    let seen = blocking(|| watch.next("unresolved", WAIT))
        .unwrap_or_else(|e| panic!("{e}\nbridge:\n{}", bridge.log()));
    eprintln!(
        "etcd DELETE -> the name gone from DNS, seen by the pod: {:?} ({} lookups)",
        seen.after(deleted),
        seen.attempts
    );
    let call = blocking(|| pod.call(&target));
    assert!(!call.serving, "{}", call.output);
    assert!(call.output.contains("no such host"), "{}", call.output);
    assert!(second.is_running(), "{}", second.log_tail(20));
    second.stop(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_headless_false_a_pod_reaches_the_server_through_the_cluster_ip_until_the_key_goes() {
    let (scope, bridge, pod) = setup("dp-clusterip", &["--headless=false"]).await;
    let machine = blocking(|| Machine::start(&scope, "outside"));
    let (mut server, addr) = blocking(|| machine.server(&scope, "inventory", "", 7000, 10));

    // The name resolves to the Service's ClusterIP; the connection goes to the ClusterIP, and
    // kube-proxy's DNAT takes it to the registered server.
    let target = dns_target(&scope, "inventory", 7000);
    let call = blocking(|| {
        call_until(&pod, &target, "SERVING through the ClusterIP", |c| {
            c.serving
        })
    });
    let cluster_ip = scope
        .kubectl(&[
            "get",
            "service",
            "inventory",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .trim()
        .to_string();
    assert!(
        cluster_ip.starts_with("10.0.0."),
        "a ClusterIP: {cluster_ip:?}"
    );
    assert_eq!(
        call.resolved,
        std::slice::from_ref(&cluster_ip),
        "{}",
        call.output
    );
    let via_cluster_ip = format!("{cluster_ip}:7000");
    assert_eq!(
        call.peer.as_deref(),
        Some(via_cluster_ip.as_str()),
        "{}",
        call.output
    );
    // The ClusterIP itself, without DNS.
    let call = blocking(|| pod.call(&via_cluster_ip));
    assert!(call.serving, "{}", call.output);
    // The path is kube-proxy's: its rule for the Service, and its DNAT to the server.
    let service_rule = format!("\"{}/inventory:grpc-7000 cluster IP\"", scope.namespace);
    let dnat = format!("--to-destination {addr}");
    let rules = blocking(nat_rules);
    assert!(rules.contains(&service_rule), "{service_rule} in:\n{rules}");
    assert!(rules.contains(&dnat), "{dnat} in:\n{rules}");

    // The key is deleted; the server keeps running. The Service goes, and with it kube-proxy's
    // rules: the ClusterIP reaches nothing any more (the node refuses what kube-proxy no longer
    // translates), while the server itself still answers.
    let mut etcd = scope.etcd().await;
    let mut watch =
        blocking(|| pod.watch(&target, "unresolved", None)).unwrap_or_else(|e| panic!("{e}"));
    let deleted = SystemTime::now();
    let key = seed_key(&scope.prefix, "inventory", "", &addr);
    etcd.delete(key, None).await.expect("delete the key");
    let seen = blocking(|| watch.next("unresolved", WAIT))
        .unwrap_or_else(|e| panic!("{e}\nbridge:\n{}", bridge.log()));
    eprintln!(
        "etcd DELETE -> the name gone from DNS, seen by the pod: {:?}",
        seen.after(deleted)
    );
    let t = Instant::now();
    let rules = eventually(
        "kube-proxy drops the Service and its endpoint",
        WAIT,
        || async {
            let rules = blocking(nat_rules);
            (!rules.contains(&service_rule) && !rules.contains(&dnat)).then_some(rules)
        },
    )
    .await;
    eprintln!(
        "... and kube-proxy's rules for it are gone {:?} later",
        t.elapsed()
    );
    assert!(!rules.contains(&cluster_ip), "{cluster_ip} in:\n{rules}");
    let refused_before = blocking(guard_count);
    let call = blocking(|| pod.call(&via_cluster_ip));
    assert!(!call.serving, "{}", call.output);
    assert!(
        blocking(guard_count) > refused_before,
        "the node's guard refused the packet kube-proxy no longer translates"
    );
    assert!(
        call.output.contains("connection refused"),
        "refused at the node: {}",
        call.output
    );
    let direct = blocking(|| pod.call(&addr));
    assert!(
        direct.serving,
        "the server itself still answers: {}",
        direct.output
    );
    assert!(server.is_running(), "{}", server.log_tail(20));
    server.stop(Duration::from_secs(10));
}

/// (address, ready, serving) of each endpoint of Service `service`, with the API's defaults,
/// sorted by address.
async fn conditions(apis: &Apis, service: &str) -> Vec<(String, bool, bool)> {
    let mut all: Vec<_> = try_slices_of(&apis.slices, service)
        .await
        .unwrap_or_default()
        .iter()
        .flat_map(|s| &s.endpoints)
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            (e.addresses.join(","), ready, c.serving.unwrap_or(ready))
        })
        .collect();
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_services_dns_answer_drops_a_server_that_is_not_serving_until_it_serves() {
    let tools = blocking(tools);
    let scope = Scope::new("dp-probe");
    let pod = blocking(|| client_pod(&scope, tools));
    // Declared before the bridge, so dropped after it: nothing probes an address whose route
    // has gone (and the host blackholes the range then anyway).
    let one = blocking(|| Machine::start(&scope, "outside-1"));
    let two = blocking(|| Machine::start(&scope, "outside-2"));
    let (first, first_addr) = blocking(|| one.health_server(50051));
    let (mut second, second_addr) = blocking(|| two.health_server(50051));
    let ips = [
        one.outside.plan.ip().to_string(),
        two.outside.plan.ip().to_string(),
    ];
    let mut etcd = scope.etcd().await;
    for addr in [&first_addr, &second_addr] {
        register(&mut etcd, &scope.prefix, "catalog", "v1", addr, 1, 600).await;
    }
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(
        &kubeconfig,
        &[
            "--probe=catalog",
            "--probe-interval=500ms",
            "--probe-timeout=250ms",
            "--probe-failure-threshold=2",
        ],
    );
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    eventually("both endpoints probed serving", WAIT, || async {
        (bridge.metric(r#"etcd_bridge_probed_endpoints{state="serving"}"#) == Some(2.0))
            .then_some(())
    })
    .await;

    // Both addresses in the headless Service's answer.
    let target = dns_target(&scope, "catalog-v1", 50051);
    let mut both = ips.to_vec();
    both.sort();
    blocking(|| {
        call_until(&pod, &target, "both servers in DNS", |c| {
            let mut r = c.resolved.clone();
            r.sort();
            r == both
        })
    });

    // The first says NOT_SERVING: the bridge writes its endpoint not ready, and CoreDNS, which
    // answers a headless name with ready endpoints only, stops returning it.
    let slice_apis = Apis::new(scope.kube().await, &scope.namespace);
    let toggled = Instant::now();
    first.signal("USR1");
    let slice = tokio::spawn({
        let apis = slice_apis;
        let service = "catalog-v1".to_string();
        let mut want = vec![(ips[0].clone(), false, false), (ips[1].clone(), true, true)];
        want.sort();
        async move {
            eventually("the slice showing the first not ready", WAIT, || async {
                (conditions(&apis, &service).await == want).then_some(())
            })
            .await;
            toggled.elapsed()
        }
    });
    let call = blocking(|| {
        call_until(&pod, &target, "the NOT_SERVING server gone from DNS", |c| {
            c.resolved == [ips[1].clone()]
        })
    });
    let gone = toggled.elapsed();
    let in_slice = slice.await.expect("the slice poll");
    assert!(call.serving, "the other server answers: {}", call.output);
    assert_eq!(call.peer.as_deref(), Some(second_addr.as_str()));
    // It stays out while it says NOT_SERVING (a few lookups, over 4 probe intervals).
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let call = blocking(|| pod.call(&target));
        assert_eq!(call.resolved, [ips[1].clone()], "{}", call.output);
    }

    // SERVING again: back in the answer.
    let restored = Instant::now();
    first.signal("USR2");
    blocking(|| {
        call_until(&pod, &target, "the server back in DNS", |c| {
            let mut r = c.resolved.clone();
            r.sort();
            r == both
        })
    });
    let back = restored.elapsed();
    eprintln!(
        "probe interval 500 ms, failure threshold 2: NOT_SERVING -> slice not ready in {} ms, \
         -> gone from the pod's DNS answer in {} ms; SERVING -> back in DNS in {} ms \
         (DNS figures include one kubectl exec per lookup)",
        in_slice.as_millis(),
        gone.as_millis(),
        back.as_millis()
    );
    let ready: Vec<_> = both.iter().map(|ip| (ip.clone(), true, true)).collect();
    assert_eq!(conditions(&apis, "catalog-v1").await, ready);
    assert!(second.is_running(), "{}", second.log_tail(20));
    // The bridge first: nothing probes the outsides' addresses once they go.
    drop(bridge);
    second.stop(Duration::from_secs(5));
}
