//! What each documented combination of values must render (beyond `helm lint --strict` and the
//! API server's validation): one check per combination of `super`'s table.

use crate::support::*;
use serde_json::{Value, json};

pub(super) fn check_defaults(docs: &[Value]) {
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

pub(super) fn check_tls(docs: &[Value]) {
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

pub(super) fn check_tls_server_only(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    assert!(flag(&args, "--etcd-ca-file").is_some());
    assert_eq!(flag(&args, "--etcd-cert-file"), None);
    assert_eq!(flag(&args, "--etcd-key-file"), None);
}

pub(super) fn check_auth(docs: &[Value]) {
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

pub(super) fn check_writeback_off(docs: &[Value]) {
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

pub(super) fn check_writeback_policy(docs: &[Value]) {
    let args = args_of(one(docs, "Deployment"));
    let policy = "team-*:*,payments:pay-?";
    assert_eq!(flag(&args, "--writeback-policy"), Some(policy));
    assert_eq!(flag(&args, "--writeback-prefix"), Some("/k8s/"));
    assert_eq!(flag(&args, "--writeback-lease-ttl"), Some("1m"));
    assert_eq!(flag(&args, "--import-own-registrations"), Some("true"));
}

pub(super) fn check_single_namespace(docs: &[Value]) {
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

pub(super) fn check_writeback_elsewhere(docs: &[Value]) {
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

pub(super) fn check_target_namespace(docs: &[Value]) {
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

pub(super) fn check_servicemonitor(docs: &[Value]) {
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

pub(super) fn check_networkpolicy(docs: &[Value]) {
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

pub(super) fn check_tuning(docs: &[Value]) {
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

pub(super) fn check_probe(docs: &[Value]) {
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

pub(super) fn check_probe_everything(docs: &[Value]) {
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

pub(super) fn check_one_replica(docs: &[Value]) {
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

pub(super) fn check_buckets(docs: &[Value]) {
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
