//! Rendering: `helm lint` and `helm template` of every documented combination of values, each
//! validated by the API server; bad values refused with a message that names the field; and the
//! RBAC as rendered.

use crate::support::*;
use serde_json::{Value, json};

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

fn check_defaults(docs: &[Value]) {
    let d = one(docs, "Deployment");
    let args = args_of(d);
    assert_eq!(args[0], "run");
    assert_eq!(d["spec"]["replicas"], 2);
    for (f, v) in [
        ("--etcd-endpoints", "http://etcd:2379"),
        ("--prefix", "/"),
        ("--namespace", "chart-render"),
        ("--instance", "rel"),
        ("--leader-election", "true"),
        ("--lease-name", "etcd-bridge-rel"),
        ("--lease-duration", "15s"),
        ("--leader-buckets", "1"),
        ("--listen", "0.0.0.0:8080"),
        ("--max-endpoints-per-slice", "100"),
        ("--max-delete-ratio", "0.5"),
        ("--writeback", "true"),
        ("--writeback-policy", "*:*"),
        ("--writeback-prefix", "/"),
        ("--writeback-lease-ttl", "30s"),
        ("--writeback-keys-per-lease", "1000"),
        ("--writeback-concurrency", "32"),
        ("--import-own-registrations", "false"),
        ("--log-format", "text"),
    ] {
        let got = flag(&args, f);
        if f == "--namespace" {
            assert!(got.is_some_and(|n| n.starts_with(v)), "{f}: {got:?}");
        } else {
            assert_eq!(got, Some(v), "{f}");
        }
    }
    assert_eq!(
        flag(&args, "--writeback-namespace"),
        None,
        "every namespace"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--probe")),
        "health checks are off by default: {args:?}"
    );
    let c = container(d);
    let image = format!("etcd-bridge:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(c["image"], image.as_str());
    let pod_name =
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}});
    assert_eq!(c["env"][0], pod_name);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(
        c["ports"][0],
        json!({"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"})
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert!(c["resources"]["requests"]["memory"].is_string());
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() >= 10);
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(
        anti[0]["podAffinityTerm"]["topologyKey"],
        "kubernetes.io/hostname"
    );
    assert_eq!(one(docs, "PodDisruptionBudget")["spec"]["minAvailable"], 1);
    let svc = one(docs, "Service");
    assert_eq!(svc["spec"]["ports"][0]["name"], "http-metrics");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(rules(one(docs, "Role")), import_rules("etcd-bridge-rel"));
    assert_eq!(rules(one(docs, "ClusterRole")), writeback_rules());
    assert_eq!(of_kind(docs, "ClusterRoleBinding").len(), 1);
    assert!(of_kind(docs, "ServiceMonitor").is_empty());
    assert!(of_kind(docs, "NetworkPolicy").is_empty());
    named(
        docs,
        "CustomResourceDefinition",
        "etcdregistrations.etcd-bridge.io",
    );
    named(
        docs,
        "CustomResourceDefinition",
        "etcdsources.etcd-bridge.io",
    );
    // The recommended labels on every object of the chart (the CRD is generated from the types).
    for doc in docs
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        let l = &doc["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/component",
            "helm.sh/chart",
        ] {
            let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
            assert!(l[key].is_string(), "{what} has no label {key}");
        }
        assert_eq!(l["app.kubernetes.io/managed-by"], "Helm");
    }
}

fn check_tls(docs: &[Value]) {
    let d = one(docs, "Deployment");
    let args = args_of(d);
    let endpoints = "https://etcd-0.etcd:2379,https://etcd-1.etcd:2379";
    assert_eq!(flag(&args, "--etcd-endpoints"), Some(endpoints));
    for (f, file) in [
        ("--etcd-ca-file", "ca.crt"),
        ("--etcd-cert-file", "tls.crt"),
        ("--etcd-key-file", "tls.key"),
    ] {
        assert_eq!(flag(&args, f), Some(format!("{TLS_DIR}/{file}").as_str()));
    }
    let m = &container(d)["volumeMounts"][0];
    assert_eq!(m["mountPath"], TLS_DIR);
    assert_eq!(m["readOnly"], true);
    let v = &d["spec"]["template"]["spec"]["volumes"][0]["secret"];
    assert_eq!(v["secretName"], "etcd-client-tls");
    let items = json!([
        {"key": "ca.pem", "path": "ca.crt"},
        {"key": "tls.crt", "path": "tls.crt"},
        {"key": "tls.key", "path": "tls.key"},
    ]);
    assert_eq!(v["items"], items);
}

fn check_tls_server_only(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert!(flag(&args, "--etcd-ca-file").is_some());
    assert_eq!(flag(&args, "--etcd-cert-file"), None);
    assert_eq!(flag(&args, "--etcd-key-file"), None);
}

fn check_auth(docs: &[Value]) {
    let d = one(docs, "Deployment");
    let env = &container(d)["env"];
    let user = strings_find(env, "ETCD_BRIDGE_ETCD_USERNAME");
    let password = strings_find(env, "ETCD_BRIDGE_ETCD_PASSWORD");
    let r = |k: &str| json!({"name": "etcd-credentials", "key": k});
    assert_eq!(user["valueFrom"]["secretKeyRef"], r("user"));
    assert_eq!(password["valueFrom"]["secretKeyRef"], r("password"));
    let args = args_of(d);
    let leak = args
        .iter()
        .any(|a| a.contains("password") || a.contains("username"));
    assert!(!leak, "credentials are never in args: {args:?}");
}

fn check_writeback_off(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert_eq!(flag(&args, "--writeback"), Some("false"));
    for f in &WRITEBACK_FLAGS[1..] {
        assert_eq!(flag(&args, f), None, "{f} without write-back");
    }
    assert!(
        of_kind(docs, "ClusterRole").is_empty(),
        "nothing cluster-wide"
    );
    assert!(of_kind(docs, "ClusterRoleBinding").is_empty());
    assert_eq!(of_kind(docs, "Role").len(), 1, "the import Role only");
}

fn check_writeback_policy(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    let policy = "team-*:*,payments:pay-?";
    assert_eq!(flag(&args, "--writeback-policy"), Some(policy));
    assert_eq!(flag(&args, "--writeback-prefix"), Some("/k8s/"));
    assert_eq!(flag(&args, "--writeback-lease-ttl"), Some("1m"));
    assert_eq!(flag(&args, "--import-own-registrations"), Some("true"));
}

fn check_single_namespace(docs: &[Value]) {
    for doc in docs
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
    {
        let what = format!("{} {}", doc["kind"], doc["metadata"]["name"]);
        assert!(
            doc["metadata"]["namespace"].is_string(),
            "{what} is cluster-scoped"
        );
    }
    let d = one(docs, "Deployment");
    let ns = d["metadata"]["namespace"].as_str();
    assert_eq!(flag(&args_of(d), "--writeback-namespace"), ns);
    let wb = named(docs, "Role", "rel-etcd-bridge-writeback");
    assert_eq!(wb["metadata"]["namespace"].as_str(), ns);
    assert_eq!(rules(wb), writeback_rules());
    let binding = named(docs, "RoleBinding", "rel-etcd-bridge-writeback");
    assert_eq!(binding["roleRef"]["kind"], "Role");
}

fn check_writeback_elsewhere(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    let selector = "etcd-bridge.io/instance=payments";
    assert_eq!(flag(&args, "--writeback-selector"), Some(selector));
    let ns = flag(&args, "--writeback-namespace").expect("--writeback-namespace");
    let wb = named(docs, "Role", "rel-etcd-bridge-writeback");
    assert_eq!(wb["metadata"]["namespace"].as_str(), Some(ns));
    let binding = named(docs, "RoleBinding", "rel-etcd-bridge-writeback");
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some(ns));
    let release_ns = &one(docs, "Deployment")["metadata"]["namespace"];
    assert_eq!(&binding["subjects"][0]["namespace"], release_ns);
    assert!(of_kind(docs, "ClusterRole").is_empty());
}

fn check_target_namespace(docs: &[Value]) {
    let d = one(docs, "Deployment");
    let args = args_of(d);
    let target = flag(&args, "--namespace").unwrap();
    assert_ne!(d["metadata"]["namespace"].as_str(), Some(target));
    let role = one(docs, "Role");
    let binding = one(docs, "RoleBinding");
    assert_eq!(role["metadata"]["namespace"].as_str(), Some(target));
    assert_eq!(binding["metadata"]["namespace"].as_str(), Some(target));
    assert_eq!(
        binding["subjects"][0]["namespace"],
        d["metadata"]["namespace"]
    );
}

fn check_servicemonitor(docs: &[Value]) {
    let sm = one(docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(sm["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "http-metrics");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    let svc = one(docs, "Service");
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(
            &svc["metadata"]["labels"][k], v,
            "selects the metrics Service"
        );
    }
}

fn check_networkpolicy(docs: &[Value]) {
    let np = one(docs, "NetworkPolicy");
    assert_eq!(strings(&np["spec"]["policyTypes"]), ["Ingress", "Egress"]);
    let ingress = np["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    let metrics = json!([{"port": "http-metrics", "protocol": "TCP"}]);
    assert_eq!(ingress[0]["ports"], metrics);
    assert!(
        ingress[0]["from"].is_array(),
        "only from the configured peers"
    );
    let egress = np["spec"]["egress"].as_array().unwrap();
    let ports = |r: &Value| -> Vec<i64> {
        let p = r["ports"].as_array().unwrap();
        p.iter().map(|p| p["port"].as_i64().unwrap()).collect()
    };
    assert_eq!(egress.len(), 3);
    assert_eq!(
        ports(&egress[0]),
        [2379, 12379],
        "etcd's ports, from the endpoints"
    );
    assert_eq!(ports(&egress[1]), [443, 6443], "the API server");
    assert_eq!(ports(&egress[2]), [53, 53], "DNS");
    let pod_labels = &one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(&pod_labels[k], v);
    }
}

fn check_tuning(docs: &[Value]) {
    let d = one(docs, "Deployment");
    let args = args_of(d);
    for (f, v) in [
        ("--log-format", "json"),
        ("--instance", "registry-a"),
        ("--lease-name", "etcd-bridge-registry-a"),
        ("--aggregate", "false"),
        ("--headless", "false"),
        ("--max-endpoints-per-slice", "1000"),
        ("--coalesce", "50ms"),
        ("--resync-interval", "1h"),
        ("--max-delete-ratio", "0.25"),
        ("--mass-delete-min", "1000000"),
        ("--delete-confirm-delay", "2m"),
        ("--lease-duration", "30s"),
        ("--writeback-lease-ttl", "45s"),
        ("--writeback-keys-per-lease", "250"),
        ("--writeback-concurrency", "8"),
        ("--prefix", "/services/,/grpc/"),
        ("--etcd-timeout", "10s"),
    ] {
        assert_eq!(flag(&args, f), Some(v), "{f}");
    }
    assert_eq!(
        args.last().map(String::as_str),
        Some("--resync-interval=2h"),
        "extraArgs last"
    );
    let c = container(d);
    assert_eq!(c["image"], "registry.example.com/etcd-bridge:0.1.0-rc1");
    assert_eq!(c["imagePullPolicy"], "Always");
    let rust_log = json!({"name": "RUST_LOG", "value": "info,etcd_bridge=debug"});
    assert_eq!(c["env"][1], rust_log);
    assert_eq!(c["resources"]["limits"]["cpu"], 1);
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(pod["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["whenUnsatisfiable"], "DoNotSchedule");
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["example.com/team"], "platform");
    assert_eq!(one(docs, "PodDisruptionBudget")["spec"]["minAvailable"], 2);
}

fn check_probe(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    for (f, v) in [
        ("--probe", "/services/,pay*"),
        ("--probe-mode", "tcp"),
        ("--probe-service", "payments.v1.Pay"),
        ("--probe-interval", "10s"),
        ("--probe-timeout", "2s"),
        ("--probe-failure-threshold", "5"),
        ("--probe-success-threshold", "2"),
        ("--probe-jitter", "0.2"),
        ("--probe-panic-threshold", "0.75"),
    ] {
        assert_eq!(flag(&args, f), Some(v), "{f}");
    }
    assert_eq!(
        flag(&args, "--probe-watch"),
        Some("false"),
        "off by default"
    );
    // The NetworkPolicy lets the health checks out, only where and on the ports said.
    let np = one(docs, "NetworkPolicy");
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 4, "etcd, API server, DNS, health checks");
    let probes = json!({
        "to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
        "ports": [{"port": 50051, "protocol": "TCP"}],
    });
    assert_eq!(egress[3], probes);
}

fn check_probe_everything(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert_eq!(flag(&args, "--probe"), Some("*"));
    assert_eq!(flag(&args, "--probe-mode"), Some("grpc"));
    assert_eq!(flag(&args, "--probe-service"), Some(""));
    assert_eq!(flag(&args, "--probe-panic-threshold"), Some("0.5"));
    assert_eq!(flag(&args, "--probe-watch"), Some("true"));
    let np = one(docs, "NetworkPolicy");
    let egress = np["spec"]["egress"].as_array().unwrap();
    assert_eq!(egress[3], json!({}), "not narrowed: any address and port");
}

fn check_one_replica(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert_eq!(flag(&args, "--leader-election"), Some("false"));
    assert_eq!(flag(&args, "--lease-name"), None);
    assert!(
        of_kind(docs, "PodDisruptionBudget").is_empty(),
        "no PDB on one replica"
    );
    let role = rules(one(docs, "Role"));
    assert!(
        !role.iter().any(|r| r.1 == "leases"),
        "no Lease rights: {role:?}"
    );
}

fn check_buckets(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert_eq!(flag(&args, "--leader-buckets"), Some("6"));
    let leases: Vec<Rule> = (rules(one(docs, "Role")).into_iter())
        .filter(|r| r.1 == "leases")
        .collect();
    // Membership Leases are named after pods: no resourceNames can cover them.
    assert_eq!(
        leases,
        [
            rule("coordination.k8s.io", "leases", &[], &["create"]),
            rule(
                "coordination.k8s.io",
                "leases",
                &[],
                &["get", "list", "patch", "update", "delete"]
            ),
        ],
        "{leases:?}"
    );
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
