//! `make demo`: the main job on a local test bed.
//!
//! Starts a registry etcd and a Kubernetes control plane on loopback, runs the bridge, registers
//! a few gRPC services the way the seed's Go `Register` does (a lease kept alive, one key each),
//! and prints `kubectl get services,endpointslices`. Then the other way: it installs the
//! EtcdRegistration CRD, creates one, and prints the key and value the bridge wrote to etcd.
//! Last, on a real node (`dataplane`), a pod calls a service registered in etcd by its DNS name.
//! `--no-node` leaves that act out. `--once` exits after printing (the tests run it so; a part
//! that fails fails it); otherwise it keeps running until Ctrl-C.

mod dataplane;

use etcd_bridge_testbed::TestBed;
use etcd_bridge_testbed::bridge::BridgeTarget;
use etcd_bridge_testbed::grpc_tools;
use etcd_bridge_testbed::process::{Proc, free_port};
use etcd_bridge_testbed::seed::{seed_key, seed_value};
use etcd_client::{Client, PutOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SERVICES: &[(&str, &str, &str, i64)] = &[
    ("greeter", "v1", "10.10.0.1:50051", 10),
    ("greeter", "v1", "10.10.0.2:50051", 10),
    ("greeter", "v2", "10.10.0.3:50051", 1),
    ("payments", "", "10.20.0.1:7000", 5),
    ("Inventory_Service", "2024.1", "[fd00::5]:9090", 1),
];

fn step(msg: &str) {
    println!("\n\x1b[1m==> {msg}\x1b[0m");
}

#[tokio::main]
async fn main() {
    let once = std::env::args().any(|a| a == "--once");
    let with_node = !std::env::args().any(|a| a == "--no-node");
    let bridge_bin = std::env::args()
        .skip_while(|a| a != "--bridge")
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/debug/etcd-bridge"));

    step(
        "starting the test bed: a registry etcd, and etcd + kube-apiserver + kube-controller-manager",
    );
    let started = Instant::now();
    let bed = TestBed::start("demo").unwrap_or_else(|e| panic!("the test bed did not start:\n{e}"));
    println!(
        "    up in {:.1}s: registry etcd at {}, kube-apiserver at {}",
        started.elapsed().as_secs_f64(),
        bed.registry.endpoint(),
        bed.cluster.server_url()
    );

    step("installing the EtcdRegistration CRD (generated from the Rust types)");
    let crd = std::fs::read_to_string(etcd_bridge_testbed::repo::path(
        "crds/etcdregistrations.etcd-bridge.io.yaml",
    ))
    .expect("read crds/etcdregistrations.etcd-bridge.io.yaml");
    bed.cluster
        .install_crd(&crd, "etcdregistrations.etcd-bridge.io")
        .unwrap_or_else(|e| panic!("{e}"));

    step("starting etcd-bridge run");
    let http = free_port();
    let endpoint = bed.registry.endpoint();
    let target = BridgeTarget {
        dir: &bed.dir,
        etcd_endpoint: &endpoint,
        prefix: "/",
        namespace: "default",
        kubeconfig: &bed.cluster.kubeconfig,
    };
    let mut args = target.run_args();
    args.push(format!("--listen=127.0.0.1:{http}"));
    let log = bed.dir.join("etcd-bridge.log");
    let mut bridge = Proc::spawn("etcd-bridge", &bridge_bin, &args, &log)
        .unwrap_or_else(|e| panic!("{e} (build it first: cargo build --bin etcd-bridge)"));
    println!("    {} {}", bridge_bin.display(), args.join(" "));

    step(
        "registering services the way the seed's Go Register does (a lease kept alive, one key each)",
    );
    let mut etcd = Client::connect([bed.registry.endpoint()], None)
        .await
        .expect("connect to the registry etcd");
    let lease = etcd.lease_grant(10, None).await.expect("grant lease").id();
    for (name, version, addr, weight) in SERVICES {
        let key = seed_key("/", name, version, addr);
        let value = seed_value(name, version, addr, *weight);
        etcd.put(
            key.clone(),
            value.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
        println!("    PUT {key} {value}");
    }
    let (mut keeper, mut responses) = etcd.lease_keep_alive(lease).await.expect("keep alive");
    tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() || responses.message().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    });

    // Wait for the last Service to show up.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = bed
            .cluster
            .kubectl(&["get", "endpointslices", "-n", "default", "-o", "name"]);
        let text = String::from_utf8_lossy(&out.stdout);
        if text.matches("endpointslice").count() >= 6 {
            break;
        }
        if !bridge.is_running() || Instant::now() > deadline {
            panic!(
                "the bridge did not project the registrations\n{}",
                bridge.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    step("kubectl get services,endpointslices -l app.kubernetes.io/managed-by=etcd-bridge");
    let out = bed.cluster.kubectl(&[
        "get",
        "services,endpointslices",
        "-n",
        "default",
        "-l",
        "app.kubernetes.io/managed-by=etcd-bridge",
        "-o",
        "wide",
    ]);
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    step("the weights, one per EndpointSlice");
    let out = bed.cluster.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "default",
        "-o",
        "custom-columns=SLICE:.metadata.name,SERVICE:.metadata.labels.kubernetes\\.io/service-name,WEIGHT:.metadata.annotations.etcd-bridge\\.io/weight,ADDRESSES:.endpoints[*].addresses[0]",
    ]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    step("write-back: an EtcdRegistration becomes a key in etcd, in the seed's format");
    let registration = "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\nmetadata: {name: checkout, namespace: default}\nspec: {service: checkout, version: v1, weight: 2, addresses: [\"10.30.0.1:8443\"]}\n";
    print!("{registration}");
    let out = bed
        .cluster
        .kubectl_stdin(&["apply", "-f", "-"], registration);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = seed_key("/", "checkout", "v1", "10.30.0.1:8443");
    let deadline = Instant::now() + Duration::from_secs(60);
    let value = loop {
        let got = etcd.get(key.as_str(), None).await.expect("etcd get");
        if let Some(kv) = got.kvs().first() {
            break String::from_utf8_lossy(kv.value()).into_owned();
        }
        if !bridge.is_running() || Instant::now() > deadline {
            panic!(
                "the bridge did not write the registration back\n{}",
                bridge.log_tail(40)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("    etcd has {key}\n    = {value}");
    let out = bed
        .cluster
        .kubectl(&["get", "etcdregistrations", "-n", "default"]);
    print!("{}", String::from_utf8_lossy(&out.stdout));

    let data_plane = match with_node {
        false => None,
        true => match tokio::task::block_in_place(|| {
            dataplane::show(&bed, &bridge_bin, "default", "/", step)
        }) {
            Ok(shown) => Some(shown),
            // The rest of the demo stands without the node; `--once` (the tests) fails.
            Err(e) if !once => {
                println!(
                    "    the node part did not run: {e}\n    (the rest of the demo keeps running; --no-node skips this part)"
                );
                None
            }
            Err(e) => panic!("the data-plane part failed:\n{e}"),
        },
    };

    if once {
        step("done (--once)");
        drop(data_plane);
        return;
    }
    step("the demo keeps running; try it");
    println!(
        "    export KUBECONFIG={}\n    {} get services,endpointslices\n    ETCDCTL_API=3 etcdctl --endpoints={} put /greeter/v1/10.10.0.9:50051 '{{\"name\":\"greeter\",\"addr\":\"10.10.0.9:50051\",\"version\":\"v1\",\"weight\":3}}'\n    bridge log: {}\n    metrics:    curl -s http://127.0.0.1:{http}/metrics\n\n    Stop with Ctrl-C: every process of the test bed stops with it.",
        bed.cluster.kubeconfig.display(),
        bed.cluster.kubectl_path().display(),
        bed.registry.endpoint(),
        log.display()
    );
    if let Some(dp) = &data_plane {
        println!(
            "    from the pod: {} exec -n {} {} -- {} -target {}",
            bed.cluster.kubectl_path().display(),
            dp.pod.namespace,
            dp.pod.name,
            grpc_tools::CLIENT,
            dp.target
        );
    }
    let _ = tokio::signal::ctrl_c().await;
    drop(data_plane);
    step("stopping");
}
