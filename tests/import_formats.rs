//! Every registry format, registered by its framework's own code (tests/go/frameworks: go-zero,
//! kratos, go-micro, kitex, etcd's resolver) next to the seed's, read by one bridge with a format
//! per prefix: each service appears in Kubernetes with its addresses and weights.
//!
//! The registrars listen on loopback and register other (10.79.x.y) addresses, which nothing
//! here dials: the bridge only projects them.

mod common;

use common::*;
use etcd_bridge_testbed::go::build_registrars;
use etcd_bridge_testbed::process::Proc;
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn registrar(scope: &Scope, label: &str, bin: &Path, args: &[String]) -> Proc {
    let log = scope
        .bed
        .dir
        .join(format!("{}-{label}.log", scope.namespace));
    let mut all = vec![format!("--endpoints={}", scope.registry_endpoint)];
    all.extend(args.iter().cloned());
    Proc::spawn(label, bin, &all, &log)
        .unwrap_or_else(|e| panic!("start the {label} registrar (no skipping): {e}"))
}

/// The Service whose name starts with `prefix` (names changed by sanitising carry a hash).
async fn service_named(scope: &Scope, prefix: &str) -> String {
    eventually(&format!("a Service named {prefix}*"), WAIT, || async {
        scope
            .kubectl(&["get", "svc", "-o", "name"])
            .lines()
            .filter_map(|l| l.strip_prefix("service/"))
            .find(|n| n.starts_with(prefix))
            .map(str::to_owned)
    })
    .await
}

#[tokio::test]
async fn services_of_every_framework_registered_by_their_own_code_appear_in_kubernetes() {
    let bins = build_registrars();
    let scope = Scope::new("formats");
    let p = scope.prefix.clone();
    // go-micro's root is fixed: a service name unique to this run keeps it apart.
    let gm = format!("gm{}", scope.namespace.rsplit('-').next().unwrap_or("0"));
    let prefixes = [
        format!("{p}seed/"),
        format!("{p}naming/=etcd-naming"),
        format!("{p}zero/=go-zero"),
        format!("{p}kratos/=kratos"),
        "/micro/registry/=go-micro".to_string(),
        format!("{p}kitex/=kitex"),
    ];
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[&format!("--prefix={}", prefixes.join(","))]);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);

    let mut etcd = scope.etcd().await;
    register(
        &mut etcd,
        &format!("{p}seed/"),
        "sd",
        "v1",
        "10.79.0.1:50051",
        2,
        120,
    )
    .await;
    let s = |v: &str| v.to_string();
    let _procs = [
        registrar(
            &scope,
            "etcdnaming",
            &bins.etcd_naming,
            &[
                s("--name=nm"),
                format!("--target={p}naming/nm"),
                s("--advertise=10.79.1.1:50051"),
            ],
        ),
        registrar(
            &scope,
            "gozero",
            &bins.go_zero,
            &[
                s("--name=zr.rpc"),
                format!("--key={p}zero/zr.rpc"),
                s("--advertise=10.79.2.1:8080"),
            ],
        ),
        registrar(
            &scope,
            "kratos",
            &bins.kratos,
            &[
                s("--name=kr"),
                s("--version=v1"),
                s("--weight=5"),
                format!("--namespace={p}kratos"),
                s("--advertise=10.79.3.1:9000"),
            ],
        ),
        registrar(
            &scope,
            "gomicro",
            &bins.go_micro,
            &[
                format!("--name={gm}"),
                s("--version=v1"),
                s("--advertise=10.79.4.1:50051"),
            ],
        ),
        registrar(
            &scope,
            "kitex",
            &bins.kitex,
            &[
                s("--name=kx"),
                format!("--prefix={p}kitex"),
                s("--advertise=10.79.5.1:8888"),
            ],
        ),
    ];

    // (Service name prefix, address, weight), one per format; versioned formats also get the
    // aggregate Service.
    let zero = service_named(&scope, "zr-rpc-").await;
    let cases = [
        (s("sd-v1"), "10.79.0.1", "2"),
        (s("sd"), "10.79.0.1", "2"),
        (s("nm"), "10.79.1.1", "1"),
        (zero, "10.79.2.1", "1"),
        (s("kr-v1"), "10.79.3.1", "5"),
        (s("kr"), "10.79.3.1", "5"),
        (format!("{gm}-v1"), "10.79.4.1", "1"),
        (gm.clone(), "10.79.4.1", "1"),
        (s("kx"), "10.79.5.1", "10"),
    ];
    for (svc, ip, weight) in &cases {
        let slices = converged(&apis, svc, &[ip], WAIT).await;
        assert_eq!(&weight_of(&slices[0]), weight, "{svc}");
    }
    // preview says what each prefix was read as.
    let (ok, table, err) = preview(&scope.registry_endpoint, &prefixes.join(","), &[]);
    assert!(ok, "{err}");
    for format in ["etcd-naming", "go-zero", "kratos", "go-micro", "kitex"] {
        assert!(table.contains(format), "{format} in\n{table}");
    }
    assert_eq!(
        bridge.metric("etcd_bridge_skipped_registrations_total{reason=\"unknown_format\"}"),
        None
    );
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}
