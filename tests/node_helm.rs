//! The chart on a real node (testbed/src/node.rs: containerd, kubelet, kube-proxy, CoreDNS), with
//! the image hack/image.sh builds around the binary under test: `helm install` gives two Ready
//! pods; the leader is elected with the pod's mounted ServiceAccount token; the containers run as
//! uid 65532 on a read-only root (read from the kernel's view of the container's process); import
//! and write-back work from inside the pods; losing the leader pod hands the Lease over within the
//! lease duration and the Deployment replaces the pod; `helm upgrade` rolls the pods without a
//! written-back key ever being deleted.
//!
//! The node starts once for this test binary (`Node::shared`); each test has its own namespace.

mod common;

use common::{eventually, register, unique};
use etcd_bridge_testbed::{Etcd, Node, TestBed};
use etcd_client::{EventType, GetOptions, WatchOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The chart in this checkout (found when the test runs: see `etcd_bridge_testbed::repo`).
fn chart() -> &'static str {
    static CHART: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHART.get_or_init(|| {
        etcd_bridge_testbed::repo::path("charts/etcd-bridge")
            .display()
            .to_string()
    })
}
const BINARY: &str = env!("CARGO_BIN_EXE_etcd-bridge");
/// The chart's default `leaderElection.leaseDuration`.
const LEASE_DURATION: Duration = Duration::from_secs(15);
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

// ---------------------------------------------------------------------------------------------
// helm, kubectl, pods
// ---------------------------------------------------------------------------------------------

/// The helm binary (hack/install-helm.sh: from its cache after the first run).
fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = etcd_bridge_testbed::repo::path("hack/install-helm.sh");
        let out = Command::new("bash")
            .arg(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run hack/install-helm.sh");
        assert!(out.status.success(), "hack/install-helm.sh failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// `helm args...` against the test bed as its admin, with private HELM_*_HOME directories.
fn helm(args: &[&str]) -> String {
    let home = TestBed::shared().dir.join("helm-home");
    let out = Command::new(helm_bin())
        .arg(format!(
            "--kubeconfig={}",
            TestBed::shared().cluster.kubeconfig.display()
        ))
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl args...` as admin: stdout, or panics with stderr.
fn kubectl(args: &[&str]) -> String {
    let out = TestBed::shared().cluster.kubectl(args);
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_apply(yaml: &str) {
    let out = TestBed::shared()
        .cluster
        .kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One pod of the release, as the apiserver sees it.
#[derive(Debug, Clone)]
struct Pod {
    name: String,
    ready: bool,
    terminating: bool,
}

fn pods(ns: &str, release: &str) -> Vec<Pod> {
    let selector = format!("app.kubernetes.io/instance={release}");
    let list: Value = serde_json::from_str(&kubectl(&[
        "get", "pods", "-n", ns, "-l", &selector, "-o", "json",
    ]))
    .expect("pod list JSON");
    let mut pods: Vec<Pod> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| Pod {
            name: p["metadata"]["name"].as_str().unwrap_or_default().into(),
            ready: p["status"]["phase"] == "Running"
                && p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            terminating: !p["metadata"]["deletionTimestamp"].is_null(),
        })
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    pods
}

/// The Ready, not terminating pods, once there are `n` of them.
async fn ready_pods(ns: &str, release: &str, n: usize, timeout: Duration) -> Vec<String> {
    let what = format!("{n} Ready pods of {release} in {ns}");
    let found = tokio::time::timeout(
        timeout,
        eventually(&what, timeout + Duration::from_secs(1), || async {
            let ready: Vec<String> = pods(ns, release)
                .into_iter()
                .filter(|p| p.ready && !p.terminating)
                .map(|p| p.name)
                .collect();
            (ready.len() == n).then_some(ready)
        }),
    )
    .await;
    match found {
        Ok(pods) => pods,
        Err(_) => panic!(
            "{what}: not after {timeout:?}\n{}\n{}",
            kubectl(&["describe", "pods", "-n", ns]),
            node().logs_tail(15)
        ),
    }
}

/// The Lease's holder, if any.
fn lease_holder(ns: &str, lease: &str) -> Option<String> {
    let out = TestBed::shared().cluster.kubectl(&[
        "get",
        "lease",
        lease,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    let holder = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !holder.is_empty()).then_some(holder)
}

/// A container's process, as the kernel sees it: `/proc/PID/status` and the mount of its `/`.
struct ContainerProcess {
    status: String,
    root_mount: String,
}

/// The bridge's process in `pod` (found on the host through the node), read from /proc.
fn bridge_process(pod: &str) -> ContainerProcess {
    let pids: Vec<u32> = node()
        .container_pids(pod)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"/usr/local/bin/etcd-bridge\0"))
        })
        .collect();
    assert_eq!(pids.len(), 1, "one bridge process in pod {pod}: {pids:?}");
    let pid = pids[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...; the container's / is its root.
    let root_mount = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_default()
        .to_string();
    ContainerProcess { status, root_mount }
}

fn status_field<'a>(status: &'a str, field: &str) -> Vec<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .map(|v| v.split_whitespace().collect())
        .unwrap_or_default()
}

/// The names of the pods that wrote the Lease `lease` in `ns` with the ServiceAccount token the
/// kubelet mounted in them: the audit log's user is the chart's ServiceAccount, and the token is
/// bound to the pod (`authentication.kubernetes.io/pod-name`), which only a projected token is.
fn lease_writers(ns: &str, lease: &str, service_account: &str) -> Vec<String> {
    let text = std::fs::read_to_string(TestBed::shared().cluster.audit_log()).unwrap_or_default();
    let user = format!("system:serviceaccount:{ns}:{service_account}");
    let mut pods: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| {
            e["objectRef"]["resource"] == "leases"
                && e["objectRef"]["namespace"] == ns
                && e["objectRef"]["name"] == lease
                && e["user"]["username"] == user.as_str()
                && e["responseStatus"]["code"]
                    .as_i64()
                    .is_some_and(|c| c < 300)
        })
        .filter_map(|e| {
            e["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()
                .map(String::from)
        })
        .collect();
    pods.sort();
    pods.dedup();
    pods
}

/// Watches `prefix` and records every DELETE (its key) until the test ends.
fn record_deletes(mut etcd: etcd_client::Client, prefix: String) -> Arc<Mutex<Vec<String>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut stream = etcd
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .expect("watch the write-back prefix");
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Delete {
                    let k = ev
                        .kv()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
                    out.lock().expect("deletes").push(k.unwrap_or_default());
                }
            }
        }
    });
    seen
}

// ---------------------------------------------------------------------------------------------
// the node itself
// ---------------------------------------------------------------------------------------------

#[test]
fn a_pod_resolves_cluster_names_through_coredns_and_reaches_the_apiserver_through_kube_proxy() {
    let node = node();
    let ns = unique("node-smoke");
    kubectl(&["create", "namespace", &ns]);
    // The apiserver answers through the `kubernetes` Service (kube-proxy's DNAT to the relay):
    // busybox's TLS cannot complete a handshake with it, but its alert proves who answered.
    let script = "nslookup kubernetes.default.svc.cluster.local; \
                  wget -q -O /dev/null --no-check-certificate https://kubernetes.default.svc/ 2>&1; \
                  nslookup example.com; echo done";
    kubectl_apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: probe, namespace: {ns}}}
spec:
  restartPolicy: Never
  containers:
  - name: probe
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", {script:?}]
"#,
        image = node.images.busybox.reference
    ));
    let t = Instant::now();
    let phase = loop {
        let phase = kubectl(&[
            "get",
            "pod",
            "probe",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.phase}",
        ]);
        if phase == "Succeeded" || phase == "Failed" {
            break phase;
        }
        assert!(
            t.elapsed() < WAIT,
            "the probe pod did not finish: {phase}\n{}",
            kubectl(&["describe", "pod", "probe", "-n", &ns])
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // kubectl logs: the apiserver reaches the kubelet at the node's InternalIP.
    let logs = kubectl(&["logs", "probe", "-n", &ns]);
    assert_eq!(phase, "Succeeded", "{logs}");
    assert!(
        logs.contains("Name:\tkubernetes.default.svc.cluster.local\nAddress: 10.0.0.1"),
        "CoreDNS answers with the Service's ClusterIP:\n{logs}"
    );
    assert!(
        logs.contains("TLS error from peer"),
        "the apiserver answered on 10.0.0.1:443:\n{logs}"
    );
    assert!(
        logs.contains("can't find example.com"),
        "a name outside the cluster is not resolved (nothing is forwarded):\n{logs}"
    );
    assert!(logs.trim_end().ends_with("done"), "{logs}");
    // The path was kube-proxy's: its rules for both Services, in the node's own netfilter tables.
    let rules = node
        .command("iptables-save")
        .args(["-t", "nat"])
        .output()
        .expect("iptables-save in the node");
    let rules = String::from_utf8_lossy(&rules.stdout);
    for service in ["default/kubernetes:https", "kube-system/kube-dns:dns"] {
        assert!(
            rules.contains(&format!("\"{service} cluster IP\"")),
            "no kube-proxy rule for {service}:\n{rules}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// the chart
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_on_the_node_leads_with_its_token_imports_writes_back_and_fails_over() {
    let node = tokio::task::spawn_blocking(node).await.expect("node");
    let bed = TestBed::shared();
    let ns = unique("node-chart");
    kubectl(&["create", "namespace", &ns]);
    // A registry etcd of this test's own, which the pods reach through the node's relay.
    let registry = Etcd::start(&bed.dir, &format!("registry-{ns}"), &[]).expect("registry etcd");
    let from_pods = node.expose(registry.client_port).expect("relay to etcd");
    let mut etcd = etcd_client::Client::connect([registry.endpoint()], None)
        .await
        .expect("connect to the registry");
    let (release, name) = ("bridge", "bridge-etcd-bridge");
    let lease = format!("etcd-bridge-{release}");
    let prefix = format!("/{ns}/");
    let wb_prefix = format!("/{ns}-wb/");
    let image = &node.images.bridge;
    let values = [
        format!("image.repository={}", image.repository()),
        format!("image.tag={}", image.tag()),
        "image.pullPolicy=Never".into(),
        format!("etcd.endpoints[0]=http://{from_pods}"),
        format!("etcd.prefixes[0]={prefix}"),
        format!("writeback.prefix={wb_prefix}"),
        format!("writeback.namespace={ns}"),
    ];
    let sets: Vec<&str> = values.iter().flat_map(|v| ["--set", v.as_str()]).collect();

    // --- install: two pods Ready through the chart's probes ---------------------------------
    let t = Instant::now();
    helm(&[&["install", release, chart(), "-n", &ns][..], &sets].concat());
    let first = ready_pods(&ns, release, 2, Duration::from_secs(120)).await;
    eprintln!("helm install -> 2 pods Ready: {:?}", t.elapsed());

    // --- a leader, elected with the token the kubelet mounted --------------------------------
    let leader = eventually("a Lease holder", WAIT, || async {
        lease_holder(&ns, &lease).filter(|h| first.contains(h))
    })
    .await;
    // The audit log's line for a write is complete shortly after the write.
    let writers = eventually(
        "the leader's Lease writes in the audit log",
        WAIT,
        || async {
            let w = lease_writers(&ns, &lease, name);
            w.contains(&leader).then_some(w)
        },
    )
    .await;
    assert!(
        writers.iter().all(|w| first.contains(w)),
        "only the chart's pods wrote the Lease: {writers:?}"
    );

    // --- the security context, from the kernel's view of each container's process ----------
    for pod in &first {
        let p = bridge_process(pod);
        assert_eq!(status_field(&p.status, "Uid"), ["65532"; 4], "{pod}");
        assert_eq!(status_field(&p.status, "Gid"), ["65532"; 4], "{pod}");
        assert_eq!(status_field(&p.status, "NoNewPrivs"), ["1"], "{pod}");
        assert_eq!(
            status_field(&p.status, "CapEff"),
            ["0000000000000000"],
            "{pod}: every capability dropped"
        );
        assert_eq!(
            status_field(&p.status, "Seccomp"),
            ["2"],
            "{pod}: RuntimeDefault seccomp"
        );
        let options = p.root_mount.split_whitespace().nth(5).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{pod}: the root filesystem is read-only: {}",
            p.root_mount
        );
    }

    // --- import: a registration becomes a Service and an EndpointSlice ----------------------
    let t = Instant::now();
    register(
        &mut etcd,
        &prefix,
        "greeter",
        "v1",
        "10.70.0.1:50051",
        3,
        600,
    )
    .await;
    let addresses = eventually("greeter-v1's EndpointSlice", WAIT, || async {
        let out = TestBed::shared().cluster.kubectl(&[
            "get",
            "endpointslices",
            "-n",
            &ns,
            "-l",
            "kubernetes.io/service-name=greeter-v1",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ]);
        let a = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!a.is_empty()).then_some(a)
    })
    .await;
    assert_eq!(addresses, "10.70.0.1");
    eprintln!(
        "etcd PUT -> EndpointSlice, from the pods: {:?}",
        t.elapsed()
    );

    // --- write-back: an EtcdRegistration becomes a key in etcd ------------------------------
    kubectl_apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\n\
         metadata: {{name: billing, namespace: {ns}}}\n\
         spec: {{service: billing, version: v2, weight: 4, addresses: [\"10.73.0.1:9000\"]}}\n"
    ));
    let key = format!("{wb_prefix}billing/v2/10.73.0.1:9000");
    let value = eventually("the written-back key", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move {
            let r = etcd.get(key, None).await.ok()?;
            r.kvs()
                .first()
                .map(|kv| kv.value_str().unwrap_or_default().to_string())
        }
    })
    .await;
    assert!(value.contains(r#""weight":4"#), "{value}");
    // From now on, through the failover and the upgrade, no written-back key may be deleted.
    let deletes = record_deletes(etcd.clone(), wb_prefix.clone());

    // --- the leader pod is deleted: the standby leads within the lease duration -------------
    let standby = first
        .iter()
        .find(|p| **p != leader)
        .expect("a standby")
        .clone();
    let t = Instant::now();
    kubectl(&["delete", "pod", &leader, "-n", &ns, "--wait=false"]);
    let new_leader = eventually("a new Lease holder", LEASE_DURATION * 2, || async {
        lease_holder(&ns, &lease).filter(|h| *h != leader)
    })
    .await;
    let failover = t.elapsed();
    let who = if new_leader == standby {
        "the standby"
    } else {
        "the replacement pod"
    };
    eprintln!("leader pod deleted -> {new_leader} ({who}) leads: {failover:?}");
    assert!(
        failover < LEASE_DURATION,
        "the standby led after {failover:?}, more than the lease duration {LEASE_DURATION:?}"
    );
    let second = ready_pods(&ns, release, 2, Duration::from_secs(90)).await;
    eprintln!(
        "leader pod deleted -> replaced, 2 pods Ready: {:?}",
        t.elapsed()
    );
    assert!(second.contains(&standby), "{second:?}");
    // SIGTERM released the Lease: whichever live replica read it first took it (the standby
    // re-reads every 500 ms; the replacement reads it as it starts).
    assert!(
        second.contains(&new_leader),
        "{new_leader} leads: {second:?}"
    );
    assert!(
        !second.contains(&leader),
        "the Deployment replaced the deleted pod: {second:?}"
    );
    // The new leader keeps importing and keeps the written-back key.
    register(
        &mut etcd,
        &prefix,
        "greeter",
        "v1",
        "10.70.0.2:50051",
        3,
        600,
    )
    .await;
    eventually("the new leader imports", WAIT, || async {
        let out = TestBed::shared().cluster.kubectl(&[
            "get",
            "endpointslices",
            "-n",
            &ns,
            "-l",
            "kubernetes.io/service-name=greeter-v1",
            "-o",
            "jsonpath={.items[*].endpoints[*].addresses[*]}",
        ]);
        let a = String::from_utf8_lossy(&out.stdout).to_string();
        (a.contains("10.70.0.1") && a.contains("10.70.0.2")).then_some(())
    })
    .await;

    // --- helm upgrade rolls the pods; no written-back key is deleted meanwhile --------------
    let t = Instant::now();
    let upgraded = [&sets[..], &["--set", "logLevel=info"]].concat();
    helm(&[&["upgrade", release, chart(), "-n", &ns][..], &upgraded].concat());
    let rolled = eventually(
        "the rollout: 2 new pods Ready, the old ones gone",
        Duration::from_secs(180),
        || async {
            let all = pods(&ns, release);
            let fresh: Vec<String> = all
                .iter()
                .filter(|p| p.ready && !p.terminating && !second.contains(&p.name))
                .map(|p| p.name.clone())
                .collect();
            (fresh.len() == 2 && all.len() == 2).then_some(fresh)
        },
    )
    .await;
    eprintln!("helm upgrade -> rolled to {rolled:?}: {:?}", t.elapsed());
    eventually("a new pod leads", WAIT, || async {
        lease_holder(&ns, &lease).filter(|h| rolled.contains(h))
    })
    .await;
    // Give a late DELETE time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deletes = deletes.lock().expect("deletes").clone();
    assert!(
        deletes.is_empty(),
        "written-back keys deleted while pods were replaced: {deletes:?}"
    );
    let still = etcd
        .get(wb_prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .expect("get");
    assert_eq!(still.kvs().len(), 1, "the written-back key is still there");
}
