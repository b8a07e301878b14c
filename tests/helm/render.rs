//! Rendering: `helm lint` and `helm template` of every documented combination of values, each
//! validated by the API server; bad values refused with a message that names the field; and the
//! RBAC as rendered.

use crate::support::*;
use serde_json::Value;

mod checks;
use checks::*;

// ---------------------------------------------------------------------------------------------
// 1. lint, template and server-side validation of every documented combination
// ---------------------------------------------------------------------------------------------

/// One documented combination of values and what it must render, beyond passing `helm lint
/// --strict` and the API server's validation.
struct Combo {
    name: &'static str,
    values: Vec<String>,
    check: fn(&[Value]),
}

fn combo(name: &'static str, values: &[&str], check: fn(&[Value])) -> Combo {
    let values = values.iter().map(|s| s.to_string()).collect();
    Combo {
        name,
        values,
        check,
    }
}

#[tokio::test]
async fn every_documented_combination_lints_renders_and_passes_the_api_servers_validation() {
    let bed = TestBed::shared();
    servicemonitor_crd(bed);
    let ns = unique("chart-render");
    let other = format!("{ns}-x");
    create_namespace(bed, &ns);
    create_namespace(bed, &other);
    let target = format!("targetNamespace={other}");
    let wb_here = format!("writeback.namespace={ns}");
    let wb_there = format!("writeback.namespace={other}");

    let combos = [
        combo("defaults", &[], check_defaults),
        combo(
            "etcd TLS with a client certificate",
            &[
                "etcd.endpoints[0]=https://etcd-0.etcd:2379",
                "etcd.endpoints[1]=https://etcd-1.etcd:2379",
                "etcd.tls.enabled=true",
                "etcd.tls.secretName=etcd-client-tls",
                "etcd.tls.caKey=ca.pem",
            ],
            check_tls,
        ),
        combo(
            "etcd TLS, server certificate only",
            &[
                "etcd.endpoints[0]=https://etcd:2379",
                "etcd.tls.enabled=true",
                "etcd.tls.secretName=etcd-ca",
                "etcd.tls.certKey=",
                "etcd.tls.keyKey=",
            ],
            check_tls_server_only,
        ),
        combo(
            "etcd username and password",
            &[
                "etcd.auth.secretName=etcd-credentials",
                "etcd.auth.usernameKey=user",
            ],
            check_auth,
        ),
        combo(
            "write-back off",
            &["writeback.enabled=false"],
            check_writeback_off,
        ),
        combo(
            "write-back policy, prefix, lease TTL, importing its own keys",
            &[
                "writeback.prefix=/k8s/",
                "writeback.leaseTTL=1m",
                "writeback.importOwn=true",
                "writeback.policy[0].namespaces=team-*",
                "writeback.policy[0].services=*",
                "writeback.policy[1].namespaces=payments",
                "writeback.policy[1].services=pay-?",
            ],
            check_writeback_policy,
        ),
        combo(
            "single namespace: write-back of the release namespace only",
            &[wb_here.as_str()],
            check_single_namespace,
        ),
        combo(
            "write-back of one other namespace, by label selector",
            &[
                wb_there.as_str(),
                "writeback.selector=etcd-bridge.io/instance=payments",
            ],
            check_writeback_elsewhere,
        ),
        combo(
            "a separate target namespace",
            &[target.as_str()],
            check_target_namespace,
        ),
        combo(
            "ServiceMonitor on",
            &[
                "serviceMonitor.enabled=true",
                "serviceMonitor.labels.release=kube-prometheus-stack",
                "serviceMonitor.interval=15s",
            ],
            check_servicemonitor,
        ),
        combo(
            "NetworkPolicy on",
            &[
                "networkPolicy.enabled=true",
                "etcd.endpoints[0]=http://etcd-a:2379",
                "etcd.endpoints[1]=http://etcd-b:12379",
                "etcd.endpoints[2]=http://etcd-c",
            ],
            check_networkpolicy,
        ),
        combo(
            "json logs, tuning, projection and scheduling options",
            &[
                "logFormat=json",
                "logLevel=info\\,etcd_bridge=debug",
                "replicas=3",
                "instance=registry-a",
                "projection.aggregate=false",
                "projection.headless=false",
                "projection.maxEndpointsPerSlice=1000",
                "import.coalesce=50ms",
                "import.resyncInterval=1h",
                "import.maxDeleteRatio=0.25",
                "import.massDeleteMin=1000000",
                "import.deleteConfirmDelay=2m",
                "leaderElection.leaseDuration=30s",
                "writeback.leaseTTL=45s",
                "writeback.keysPerLease=250",
                "writeback.concurrency=8",
                "etcd.prefixes[0]=/services/",
                "etcd.prefixes[1]=/grpc/",
                "etcd.timeout=10s",
                "extraArgs[0]=--resync-interval=2h",
                "nodeSelector.kubernetes\\.io/os=linux",
                "tolerations[0].key=dedicated",
                "tolerations[0].operator=Exists",
                "podAnnotations.example\\.com/team=platform",
                "topologySpread.whenUnsatisfiable=DoNotSchedule",
                "podDisruptionBudget.minAvailable=2",
                "resources.limits.cpu=1",
                "image.repository=registry.example.com/etcd-bridge",
                "image.tag=0.1.0-rc1",
                "image.pullPolicy=Always",
            ],
            check_tuning,
        ),
        combo(
            "health checks of some services, narrowed by the NetworkPolicy",
            &[
                "etcd.prefixes[0]=/services/",
                "probe.select[0]=/services/",
                "probe.select[1]=pay*",
                "probe.mode=tcp",
                "probe.service=payments.v1.Pay",
                "probe.interval=10s",
                "probe.timeout=2s",
                "probe.failureThreshold=5",
                "probe.successThreshold=2",
                "probe.jitter=0.2",
                "probe.panicThreshold=0.75",
                "networkPolicy.enabled=true",
                "networkPolicy.probeTo[0].ipBlock.cidr=10.0.0.0/8",
                "networkPolicy.probePorts[0]=50051",
            ],
            check_probe,
        ),
        combo(
            "health checks of every service, NetworkPolicy on",
            &[
                "probe.select[0]=*",
                "probe.watch=true",
                "networkPolicy.enabled=true",
            ],
            check_probe_everything,
        ),
        combo(
            "one replica, no leader election",
            &["replicas=1", "leaderElection.enabled=false"],
            check_one_replica,
        ),
        combo(
            "sharded leadership: three replicas, six buckets",
            &["replicas=3", "leaderElection.buckets=6"],
            check_buckets,
        ),
    ];

    for c in &combos {
        let mut lint = vec!["lint", chart(), "--strict"];
        lint.extend(sets(&c.values));
        must(&format!("helm lint ({})", c.name), helm(&lint));
        let yaml = template("rel", &ns, &c.values)
            .unwrap_or_else(|e| panic!("helm template ({}): {e}", c.name));
        (c.check)(&documents(&yaml));
        server_validates(bed, c.name, &yaml);
    }
}

#[test]
fn every_flag_and_env_the_chart_renders_is_one_the_bridge_reads() {
    let values = [
        "etcd.endpoints[0]=https://etcd:2379",
        "etcd.tls.enabled=true",
        "etcd.tls.secretName=tls",
        "etcd.auth.secretName=auth",
        "writeback.namespace=apps",
        "writeback.selector=team=a",
        "extraArgs[0]=--etcd-timeout=9s",
        "probe.select[0]=*",
        "probe.watch=true",
        "sources.enabled=true",
    ];
    let yaml = template("rel", "default", &values).unwrap();
    let d = documents(&yaml);
    let d = one(&d, "Deployment");
    let args = args_of(d);
    assert_eq!(args[0], "run");
    for a in &args[1..] {
        let name = flag_name(a);
        assert!(
            bridge_has_flag(name),
            "the chart renders {a}, but `etcd-bridge run` has no {name}"
        );
    }
    for e in container(d)["env"].as_array().unwrap() {
        let env = e["name"].as_str().unwrap();
        assert!(
            bridge_help().contains(&format!("[env: {env}")),
            "the chart sets {env}, which `etcd-bridge run` does not read"
        );
    }
    // Chart.yaml's appVersion is the crate's version (the default image tag).
    let chart = std::fs::read_to_string(format!("{}/Chart.yaml", chart())).unwrap();
    let app_version = format!("appVersion: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        chart.contains(&app_version),
        "Chart.yaml appVersion is not Cargo.toml's version"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. bad values
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_values_fail_with_a_message_that_names_the_field() {
    // (values, what the message must contain)
    let cases: &[(&[&str], &[&str])] = &[
        (&["replicas=two"], &["replicas", "integer"]),
        (&["replicas=0"], &["replicas", "greater than or equal to 1"]),
        (
            &["import.maxDeleteRatio=2"],
            &["import.maxDeleteRatio", "less than or equal to 1"],
        ),
        (
            &["import.maxDeleteRatio=1.5"],
            &["import.maxDeleteRatio", "pattern"],
        ),
        (&["colour=blue"], &["colour", "not allowed"]),
        (&["etcd.tsl.enabled=true"], &["tsl", "not allowed"]),
        (&["etcd.endpoints=null"], &["endpoints", "required"]),
        (
            &["etcd.endpoints[0]=etcd:2379"],
            &["etcd.endpoints.0", "pattern"],
        ),
        (
            &["projection.maxEndpointsPerSlice=1001"],
            &["projection.maxEndpointsPerSlice", "1000"],
        ),
        (
            &["projection.maxEndpointsPerSlice=0"],
            &["projection.maxEndpointsPerSlice"],
        ),
        (&["logFormat=xml"], &["logFormat", "text", "json"]),
        (&["import.coalesce=fast"], &["import.coalesce", "pattern"]),
        (
            &["etcd.prefixes[0]=services"],
            &["etcd.prefixes.0", "pattern"],
        ),
        (
            &[
                "writeback.policy[0].namespaces=a:b",
                "writeback.policy[0].services=*",
            ],
            &["writeback.policy.0.namespaces"],
        ),
        (&["writeback.namespace=Apps"], &["writeback.namespace"]),
        (&["etcd.tls.enabled=true"], &["etcd.tls.secretName"]),
        (
            &["etcd.tls.enabled=true", "etcd.tls.secretName=tls"],
            &["etcd.endpoints", "http://", "https://"],
        ),
        (
            &["etcd.endpoints[0]=https://etcd:2379"],
            &["etcd.tls.enabled"],
        ),
        (
            &["etcd.prefixes[0]=/", "etcd.prefixes[1]=/services/"],
            &["etcd.prefixes", "contains"],
        ),
        (
            &["leaderElection.enabled=false"],
            &["leaderElection.enabled", "replicas=1"],
        ),
        (
            &["leaderElection.leaseDuration=1s"],
            &["leaderElection.leaseDuration", "2s"],
        ),
        (
            &["writeback.leaseTTL=15s"],
            &[
                "writeback.leaseTTL",
                "must exceed leaderElection.leaseDuration",
            ],
        ),
        (&["image.pullPolicy=Sometimes"], &["image.pullPolicy"]),
        (&["probe.mode=udp"], &["probe.mode", "grpc", "tcp"]),
        (&["probe.failureThreshold=0"], &["probe.failureThreshold"]),
        (&["probe.interval=often"], &["probe.interval", "pattern"]),
        (&["probe.panicThreshold=2"], &["probe.panicThreshold"]),
        (
            &["probe.watch=true", "probe.mode=tcp"],
            &["probe.mode", "grpc"],
        ),
        (&["targetNamespace=Not_A_Namespace"], &["targetNamespace"]),
    ];
    for (values, want) in cases {
        let err = match template("rel", "default", values) {
            Ok(_) => panic!("helm template accepted {values:?}"),
            Err(e) => e,
        };
        for w in *want {
            assert!(
                err.contains(w),
                "helm template {values:?}: the message does not mention `{w}`:\n{err}"
            );
        }
    }
    // The empty list needs JSON to be said.
    let out = helm(&[
        "template",
        "rel",
        chart(),
        "--set-json",
        "etcd.endpoints=[]",
    ]);
    assert!(!out.ok);
    let named = out.stderr.contains("etcd.endpoints") && out.stderr.contains("at least 1");
    assert!(named, "{}", out.stderr);
}

#[tokio::test]
async fn helm_install_with_bad_values_fails_and_creates_nothing() {
    let bed = TestBed::shared();
    let ns = unique("chart-bad");
    create_namespace(bed, &ns);
    let install = [
        "install",
        "bad",
        chart(),
        "-n",
        &ns,
        "--set",
        "import.maxDeleteRatio=2",
    ];
    let out = helm_on(bed, &install);
    assert!(!out.ok, "install accepted maxDeleteRatio=2");
    assert!(
        out.stderr.contains("import.maxDeleteRatio"),
        "{}",
        out.stderr
    );
    let list = must("helm list", helm_on(bed, &["list", "-n", &ns, "-a", "-q"]));
    assert!(list.trim().is_empty(), "no release recorded: {list}");
    assert!(!exists(bed, &["deployment", "bad-etcd-bridge", "-n", &ns]));
}

// ---------------------------------------------------------------------------------------------
// 3. RBAC as rendered
// ---------------------------------------------------------------------------------------------

/// The write-back ClusterRole holds exactly what the write-back controller does (watch
/// EtcdRegistrations everywhere, add/remove its finalizer, write their status, follow serviceRef
/// Services and EndpointSlices, report Events), and the import Role exactly what import does. The
/// end-to-end test in install.rs runs both under the chart's ServiceAccount.
#[test]
fn the_writeback_cluster_role_has_every_rule_write_back_needs_and_no_more() {
    let docs = documents(&template::<&str>("rel", "ops", &[]).unwrap());
    let cr = one(&docs, "ClusterRole");
    assert_eq!(rules(cr), writeback_rules());
    let crb = one(&docs, "ClusterRoleBinding");
    assert_eq!(crb["roleRef"]["name"], cr["metadata"]["name"]);
    assert_eq!(crb["subjects"][0]["name"], "rel-etcd-bridge");
    assert_eq!(crb["subjects"][0]["namespace"], "ops");
    assert_eq!(rules(one(&docs, "Role")), import_rules("etcd-bridge-rel"));

    let off = documents(&template("rel", "ops", &["writeback.enabled=false"]).unwrap());
    assert!(of_kind(&off, "ClusterRole").is_empty());
    assert!(of_kind(&off, "ClusterRoleBinding").is_empty());
}
