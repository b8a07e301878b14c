//! The Helm chart, on the real test bed: `helm lint` and `helm template` for every documented
//! combination of values, each rendering validated by the test bed's kube-apiserver
//! (`kubectl apply --dry-run=server`); bad values refused with a message that names the field; and
//! `helm install` / `upgrade` / `uninstall` end to end, with the bridge run outside the cluster
//! (the test bed has no kubelet) exactly as the chart's Deployment would run it: its args, its env,
//! its mounted Secrets, and a token of the chart's ServiceAccount, so it has the chart's RBAC and
//! nothing more.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/etcd-bridge");
const WAIT: Duration = Duration::from_secs(30);
/// Where the chart mounts the etcd TLS Secret in the pod.
const TLS_DIR: &str = "/etc/etcd-bridge/etcd-tls";

/// The write-back flags; all but `--writeback` itself are rendered only with write-back on.
const WRITEBACK_FLAGS: [&str; 7] = [
    "--writeback",
    "--writeback-prefix",
    "--writeback-lease-ttl",
    "--writeback-policy",
    "--writeback-namespace",
    "--writeback-selector",
    "--import-own-registrations",
];

// ---------------------------------------------------------------------------------------------
// helm, kubectl and the rendered chart
// ---------------------------------------------------------------------------------------------

/// The helm binary (hack/install-helm.sh installs it once, from its cache afterwards). A test that
/// cannot get helm fails.
fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/install-helm.sh");
        let out = Command::new("bash")
            .arg(script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run hack/install-helm.sh");
        assert!(
            out.status.success(),
            "hack/install-helm.sh failed: these tests need helm and do not skip"
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// A private HELM_*_HOME, so the tests neither read nor write the user's helm settings.
fn helm_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| etcd_bridge_testbed::scratch_dir("helm-home"))
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("run a command");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm args...`, with no cluster (lint, template).
fn helm(args: &[&str]) -> Out {
    let home = helm_home();
    run(Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG"))
}

/// `helm args...` against the test bed, as its admin.
fn helm_on(bed: &TestBed, args: &[&str]) -> Out {
    let kubeconfig = format!("--kubeconfig={}", bed.cluster.kubeconfig.display());
    let mut all = vec![kubeconfig.as_str()];
    all.extend_from_slice(args);
    helm(&all)
}

fn must(what: &str, out: Out) -> String {
    assert!(out.ok, "{what} failed:\n{}\n{}", out.stderr, out.stdout);
    out.stdout
}

/// `--set` arguments from `key=value` pairs.
fn sets<S: AsRef<str>>(values: &[S]) -> Vec<&str> {
    values.iter().flat_map(|v| ["--set", v.as_ref()]).collect()
}

/// `helm template` of the chart as release `release` in `namespace`, CRDs included.
fn template<S: AsRef<str>>(release: &str, namespace: &str, values: &[S]) -> Result<String, String> {
    let mut args = vec![
        "template",
        release,
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
    ];
    args.extend(sets(values));
    let out = helm(&args);
    if out.ok {
        Ok(out.stdout)
    } else {
        Err(out.stderr)
    }
}

/// The documents of a YAML stream, as JSON values (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("helm rendered valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind} in the rendering");
    found[0]
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge container of a Deployment.
fn container(deployment: &Value) -> &Value {
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "etcd-bridge");
    c
}

fn args_of(deployment: &Value) -> Vec<String> {
    strings(&container(deployment)["args"])
}

/// The value of `--flag=value` in `args`.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let p = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(p.as_str()))
}

fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

type Rule = (String, String, Vec<String>, Vec<String>);

/// Every rule of a Role or ClusterRole as (apiGroup, resource, resourceNames, sorted verbs), one
/// per group and resource.
fn rules(role: &Value) -> BTreeSet<Rule> {
    let mut all = BTreeSet::new();
    for r in role["rules"].as_array().expect("rules") {
        let mut verbs = strings(&r["verbs"]);
        verbs.sort();
        let names = strings(&r["resourceNames"]);
        for g in strings(&r["apiGroups"]) {
            for res in strings(&r["resources"]) {
                all.insert((g.clone(), res, names.clone(), verbs.clone()));
            }
        }
    }
    all
}

fn rule(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> Rule {
    let mut v: Vec<String> = verbs.iter().map(|s| s.to_string()).collect();
    v.sort();
    let names = names.iter().map(|s| s.to_string()).collect();
    (group.into(), resource.into(), names, v)
}

/// The import Role of release `rel` (lease `etcd-bridge-{instance}`).
fn import_rules(lease: &str) -> BTreeSet<Rule> {
    let rw = ["get", "list", "watch", "create", "patch", "delete"];
    [
        rule("", "services", &[], &rw),
        rule("discovery.k8s.io", "endpointslices", &[], &rw),
        rule("events.k8s.io", "events", &[], &["create", "patch"]),
        rule("coordination.k8s.io", "leases", &[], &["create"]),
        rule(
            "coordination.k8s.io",
            "leases",
            &[lease],
            &["get", "patch", "update"],
        ),
    ]
    .into_iter()
    .collect()
}

/// What the write-back controller does: watch EtcdRegistrations, add/remove its finalizer, write
/// their status, follow serviceRef Services and EndpointSlices, report Events.
fn writeback_rules() -> BTreeSet<Rule> {
    [
        rule(
            "etcd-bridge.io",
            "etcdregistrations",
            &[],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(
            "etcd-bridge.io",
            "etcdregistrations/status",
            &[],
            &["get", "patch", "update"],
        ),
        rule(
            "etcd-bridge.io",
            "etcdregistrations/finalizers",
            &[],
            &["update"],
        ),
        rule(
            "discovery.k8s.io",
            "endpointslices",
            &[],
            &["get", "list", "watch"],
        ),
        rule("", "services", &[], &["get", "list", "watch"]),
        rule("events.k8s.io", "events", &[], &["create", "patch"]),
    ]
    .into_iter()
    .collect()
}

fn kubectl(bed: &TestBed, args: &[&str]) -> Out {
    let out = bed.cluster.kubectl(args);
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn kubectl_json(bed: &TestBed, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&must(&format!("kubectl {args:?}"), kubectl(bed, &all)))
        .expect("kubectl printed JSON")
}

fn exists(bed: &TestBed, args: &[&str]) -> bool {
    kubectl(bed, &[&["get"], args].concat()).ok
}

fn create_namespace(bed: &TestBed, name: &str) {
    must(
        "create namespace",
        kubectl(bed, &["create", "namespace", name]),
    );
}

/// `kubectl apply --dry-run=server`: the API server validates every object (schemas, strict
/// field validation, RBAC escalation checks, admission) without storing anything.
fn server_validates(bed: &TestBed, what: &str, yaml: &str) {
    let out = bed.cluster.kubectl_stdin(
        &["apply", "--dry-run=server", "--validate=strict", "-f", "-"],
        yaml,
    );
    assert!(
        out.status.success(),
        "{what}: the API server rejects the rendering:\n{}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A minimal ServiceMonitor CRD (monitoring.coreos.com/v1), installed once per test bed, so the
/// chart's ServiceMonitor is validated too. Its schema types the fields the chart writes as the
/// Prometheus Operator's CRD does, and (no preserve-unknown-fields) strict field validation
/// rejects a misspelt field.
fn servicemonitor_crd(bed: &TestBed) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = bed
            .cluster
            .kubectl_stdin(&["apply", "-f", "-"], SERVICEMONITOR_CRD);
        assert!(
            out.status.success(),
            "install the ServiceMonitor CRD: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let crd = "crd/servicemonitors.monitoring.coreos.com";
        must(
            "wait for the ServiceMonitor CRD",
            kubectl(
                bed,
                &["wait", "--for=condition=Established", crd, "--timeout=30s"],
            ),
        );
    });
}

const SERVICEMONITOR_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor, shortNames: [smon]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec:
            type: object
            required: [selector]
            properties:
              jobLabel: {type: string}
              namespaceSelector:
                type: object
                properties:
                  any: {type: boolean}
                  matchNames: {type: array, items: {type: string}}
              selector:
                type: object
                x-kubernetes-map-type: atomic
                properties:
                  matchLabels: {type: object, additionalProperties: {type: string}}
                  matchExpressions:
                    type: array
                    items:
                      type: object
                      required: [key, operator]
                      properties:
                        key: {type: string}
                        operator: {type: string}
                        values: {type: array, items: {type: string}}
              endpoints:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: string}
                    path: {type: string}
                    scheme: {type: string, enum: [http, https, HTTP, HTTPS]}
                    interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                    honorLabels: {type: boolean}
                    relabelings: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
                    metricRelabelings: {type: array, items: {type: object, x-kubernetes-preserve-unknown-fields: true}}
"#;

// ---------------------------------------------------------------------------------------------
// Running the bridge the way the chart's Deployment runs it
// ---------------------------------------------------------------------------------------------

fn bridge_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_etcd-bridge"))
            .args(["run", "--help"])
            .output()
            .expect("etcd-bridge run --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Whether `etcd-bridge run` has the flag `name` (e.g. `--writeback`).
fn bridge_has_flag(name: &str) -> bool {
    bridge_help().contains(&format!("{name} <"))
}

/// One Secret key's content, decoded.
fn secret_key(bed: &TestBed, namespace: &str, secret: &str, key: &str) -> String {
    let tpl = format!("--template={{{{index .data \"{key}\" | base64decode}}}}");
    let args = [
        "get",
        "secret",
        secret,
        "-n",
        namespace,
        "-o",
        "go-template",
        &tpl,
    ];
    must(
        &format!("read Secret {namespace}/{secret} key {key}"),
        kubectl(bed, &args),
    )
}

/// The bridge as a replica of the chart's Deployment would run it, as pod `pod`: the container's
/// args and env and its Secret volumes. Only what must differ outside a pod differs: `--listen` (a
/// free port on 127.0.0.1), `--kubeconfig` (instead of the in-cluster token; the token is one of
/// the chart's ServiceAccount), POD_NAME (the downward API), and Secret volumes (written out as the
/// kubelet would, their mount paths in the args pointed there).
fn start_as_pod(bed: &TestBed, deployment: &Value, kubeconfig: &Path, pod: &str) -> Bridge {
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let c = container(deployment);
    let root = bed.dir.join(format!("pods/{namespace}/{pod}"));

    // Secret volumes, as the kubelet mounts them (items: key -> path).
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().unwrap();
        let volume = strings_find(&spec["volumes"], name);
        let secret = volume["secret"]["secretName"]
            .as_str()
            .expect("the chart mounts only Secrets");
        assert_eq!(m["readOnly"], true, "Secret mounts are read-only");
        let dir = root.join(name);
        for item in volume["secret"]["items"].as_array().expect("items") {
            let key = item["key"].as_str().unwrap();
            let path = item["path"].as_str().unwrap();
            let content = secret_key(bed, namespace, secret, key);
            etcd_bridge_testbed::process::write_file(&dir.join(path), content.as_bytes()).unwrap();
        }
        mounts.push((m["mountPath"].as_str().unwrap().to_string(), dir));
    }

    let http_port = etcd_bridge_testbed::process::free_port();
    let mut args = Vec::new();
    for a in args_of(deployment) {
        if flag_name(&a) == "--listen" {
            args.push(format!("--listen=127.0.0.1:{http_port}"));
        } else {
            let mut a = a.clone();
            for (path, dir) in &mounts {
                a = a.replace(path.as_str(), &dir.display().to_string());
            }
            args.push(a);
        }
    }
    args.push(format!("--kubeconfig={}", kubeconfig.display()));

    // The container's env, resolved as the kubelet would.
    let mut env = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_string()
        } else if let Some(r) = e["valueFrom"]["secretKeyRef"].as_object() {
            let (secret, key) = (r["name"].as_str().unwrap(), r["key"].as_str().unwrap());
            secret_key(bed, namespace, secret, key)
        } else {
            panic!("env {name}: a source this test does not resolve: {e}");
        };
        env.push(format!("{name}={value}"));
    }

    let mut argv = env;
    argv.push(env!("CARGO_BIN_EXE_etcd-bridge").to_string());
    argv.extend(args);
    let log = bed.dir.join(format!("bridge-{namespace}-{pod}.log"));
    let proc = Proc::spawn("etcd-bridge", Path::new("/usr/bin/env"), &argv, &log)
        .expect("start etcd-bridge");
    Bridge { proc, http_port }
}

/// The element of a JSON array whose `name` is `name`.
fn strings_find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The Deployment as installed in the cluster.
fn installed_deployment(bed: &TestBed, namespace: &str, name: &str) -> Value {
    kubectl_json(bed, &["get", "deployment", name, "-n", namespace])
}

/// A kubeconfig with a TokenRequest token of the chart's ServiceAccount.
fn chart_sa_kubeconfig(bed: &TestBed, namespace: &str, sa: &str) -> PathBuf {
    let path = bed.dir.join(format!("{namespace}-{sa}.kubeconfig"));
    bed.cluster
        .service_account_kubeconfig(namespace, sa, &path)
        .expect("TokenRequest for the chart's ServiceAccount")
}

/// `kubectl auth can-i` as `user`.
fn can(bed: &TestBed, user: &str, args: &[&str]) -> bool {
    let as_user = format!("--as={user}");
    let all = [&["auth", "can-i"], args, &[as_user.as_str()]].concat();
    kubectl(bed, &all).stdout.trim() == "yes"
}

async fn slices_of(api: &Api<EndpointSlice>, service: &str) -> Vec<EndpointSlice> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    api.list(&lp).await.expect("list EndpointSlices").items
}

fn addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut a: Vec<String> = slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flat_map(|e| e.addresses.clone()))
        .collect();
    a.sort();
    a
}

/// Waits until `service`'s slices hold exactly `want`; returns them.
async fn converged(api: &Api<EndpointSlice>, service: &str, want: &[&str]) -> Vec<EndpointSlice> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(&format!("{service} has {want:?}"), WAIT, || async {
        let s = slices_of(api, service).await;
        (addresses(&s) == want).then_some(s)
    })
    .await
}

/// The value at `key` in etcd.
async fn etcd_value(etcd: &mut etcd_client::Client, key: &str) -> Option<String> {
    let r = etcd.get(key, None).await.expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

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
        ("--listen", "0.0.0.0:8080"),
        ("--max-endpoints-per-slice", "100"),
        ("--max-delete-ratio", "0.5"),
        ("--writeback", "true"),
        ("--writeback-policy", "*:*"),
        ("--writeback-prefix", "/"),
        ("--writeback-lease-ttl", "30s"),
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
    let crd = one(docs, "CustomResourceDefinition");
    assert_eq!(crd["metadata"]["name"], "etcdregistrations.etcd-bridge.io");
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
            "one replica, no leader election",
            &["replicas=1", "leaderElection.enabled=false"],
            check_one_replica,
        ),
    ];

    for c in &combos {
        let mut lint = vec!["lint", CHART, "--strict"];
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
    let chart = std::fs::read_to_string(format!("{CHART}/Chart.yaml")).unwrap();
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
    let out = helm(&["template", "rel", CHART, "--set-json", "etcd.endpoints=[]"]);
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
        CHART,
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
/// end-to-end test below runs both under the chart's ServiceAccount.
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

// ---------------------------------------------------------------------------------------------
// 4. install, import and write-back with the chart's permissions, upgrade, uninstall
// ---------------------------------------------------------------------------------------------

fn registration(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// `status/reason` of an EtcdRegistration's condition `type_`.
fn condition(bed: &TestBed, namespace: &str, name: &str, type_: &str) -> String {
    let c = format!(".status.conditions[?(@.type==\"{type_}\")]");
    let path = format!("jsonpath={{{c}.status}}/{{{c}.reason}}");
    kubectl(bed, &["get", "etcdreg", name, "-n", namespace, "-o", &path]).stdout
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_with_the_bridge_working_under_the_charts_rbac() {
    let scope = Scope::new("chart-e2e");
    let bed = scope.bed;
    let ns = scope.namespace.as_str();
    // EtcdRegistrations live elsewhere: write-back watches every namespace.
    let apps = unique("chart-apps");
    create_namespace(bed, &apps);
    let (release, name) = ("bridge", "bridge-etcd-bridge");
    let values = [
        format!("etcd.endpoints[0]={}", scope.registry_endpoint),
        format!("etcd.prefixes[0]={}", scope.prefix),
        // Written back under the imported prefix: --import-own-registrations=false skips them.
        format!("writeback.prefix={}", scope.prefix),
        "writeback.policy[0].namespaces=chart-apps-*".into(),
        "writeback.policy[0].services=billing*".into(),
    ];
    let install = [&["install", release, CHART, "-n", ns][..], &sets(&values)].concat();
    let notes = must("helm install", helm_on(bed, &install));
    let see = format!(
        "kubectl get services,endpointslices -n {ns} -l app.kubernetes.io/managed-by=etcd-bridge"
    );
    assert!(
        notes.contains(&see),
        "NOTES show how to see the endpoints:\n{notes}"
    );
    assert!(notes.contains("etcd-bridge\\.io/weight"), "{notes}");
    assert!(notes.contains("kubectl get etcdreg -A"), "{notes}");
    assert!(notes.contains("kubectl port-forward"), "{notes}");

    // What Helm created.
    let cluster_rbac = format!("{ns}-{name}-writeback");
    let metrics = format!("{name}-metrics");
    let helms_objects: Vec<Vec<&str>> = vec![
        vec!["deployment", name, "-n", ns],
        vec!["serviceaccount", name, "-n", ns],
        vec!["role", name, "-n", ns],
        vec!["rolebinding", name, "-n", ns],
        vec!["service", &metrics, "-n", ns],
        vec!["poddisruptionbudget", name, "-n", ns],
        vec!["clusterrole", &cluster_rbac],
        vec!["clusterrolebinding", &cluster_rbac],
    ];
    for obj in &helms_objects {
        assert!(exists(bed, obj), "helm install created no {obj:?}");
    }
    assert!(
        exists(bed, &["crd", "etcdregistrations.etcd-bridge.io"]),
        "CRD from crds/"
    );

    // Least privilege, as the API server's authorizer sees the chart's ServiceAccount.
    let sa = format!("system:serviceaccount:{ns}:{name}");
    let lease = format!("leases/etcd-bridge-{release}");
    let checks: [(&[&str], bool); 16] = [
        (&["create", "services", "-n", ns], true),
        (
            &["delete", "endpointslices.discovery.k8s.io", "-n", ns],
            true,
        ),
        (&["create", "events.events.k8s.io", "-n", ns], true),
        (&["create", "leases.coordination.k8s.io", "-n", ns], true),
        (&["update", &lease, "-n", ns], true),
        (&["patch", "leases/someone-elses-lease", "-n", ns], false),
        (&["delete", &lease, "-n", ns], false),
        (&["create", "services", "-n", &apps], false),
        (
            &["delete", "endpointslices.discovery.k8s.io", "-n", &apps],
            false,
        ),
        // serviceRef: write-back watches Services everywhere; it may read them, never write.
        (&["watch", "services", "-n", &apps], true),
        (&["get", "secrets", "-n", ns], false),
        (&["list", "pods", "-n", ns], false),
        (
            &["create", "etcdregistrations.etcd-bridge.io", "-n", &apps],
            false,
        ),
        (&["watch", "etcdregistrations.etcd-bridge.io", "-A"], true),
        (
            &[
                "patch",
                "etcdregistrations.etcd-bridge.io",
                "--subresource=status",
                "-n",
                &apps,
            ],
            true,
        ),
        (&["watch", "endpointslices.discovery.k8s.io", "-A"], true),
    ];
    for (args, allowed) in checks {
        assert_eq!(can(bed, &sa, args), allowed, "can-i {args:?}");
    }

    // The bridge, as the chart runs it, imports with exactly these rights.
    let kubeconfig = chart_sa_kubeconfig(bed, ns, name);
    let deployment = installed_deployment(bed, ns, name);
    assert_eq!(
        flag(&args_of(&deployment), "--max-endpoints-per-slice"),
        Some("100")
    );
    let audit = bed.cluster.audit_log();
    let mark = audit_mark(&audit);
    let mut bridge = start_as_pod(bed, &deployment, &kubeconfig, &format!("{name}-7d9f-a"));
    bridge.leading(WAIT).await;
    let mut etcd = scope.etcd().await;
    let p = &scope.prefix;
    register(&mut etcd, p, "greeter", "v1", "10.70.0.1:50051", 7, 300).await;
    register(&mut etcd, p, "greeter", "v1", "10.70.0.2:50051", 7, 300).await;
    let kube = scope.kube().await;
    let services: Api<Service> = Api::namespaced(kube.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(kube, ns);
    let s = converged(&slices, "greeter-v1", &["10.70.0.1", "10.70.0.2"]).await;
    assert_eq!(s.len(), 1, "one slice of up to 100");
    assert_eq!(s[0].annotations()["etcd-bridge.io/weight"], "7");
    converged(&slices, "greeter", &["10.70.0.1", "10.70.0.2"]).await;
    let svc = services.get("greeter-v1").await.unwrap();
    assert_eq!(
        svc.labels()["etcd-bridge.io/instance"],
        release,
        "instance = release"
    );

    // ... and writes back EtcdRegistrations of another namespace, as the policy allows.
    let apply = |yaml: String| {
        let out = bed.cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let spec = r#"{service: billing, version: v2, weight: 4, addresses: ["10.73.0.1:9000"]}"#;
    apply(registration(&apps, "billing", spec));
    let spec = r#"{service: ledger, addresses: ["10.73.0.2:9000"]}"#;
    apply(registration(&apps, "ledger", spec));
    let key = format!("{p}billing/v2/10.73.0.1:9000");
    let value = eventually("the written-back key in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { etcd_value(&mut etcd, &key).await }
    })
    .await;
    let owner = format!(r#""etcd-bridge.io/owner":"{release}/{apps}/billing""#);
    assert!(
        value.contains(r#""weight":4"#) && value.contains(&owner),
        "{value}"
    );
    eventually("billing Ready", WAIT, || async {
        (condition(bed, &apps, "billing", "Ready") == "True/Registered").then_some(())
    })
    .await;
    eventually("ledger denied by the chart's policy", WAIT, || async {
        (condition(bed, &apps, "ledger", "Denied").starts_with("True/")).then_some(())
    })
    .await;
    let ledger = etcd_value(&mut etcd, &format!("{p}ledger/10.73.0.2:9000")).await;
    assert_eq!(ledger, None, "a denied registration is not written");
    // Every write was the chart's ServiceAccount's, and none was refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = [
        audit_writes(&audit, mark, ns),
        audit_writes(&audit, mark, &apps),
    ]
    .concat();
    let mine: Vec<_> = writes.iter().filter(|w| w.user == sa).collect();
    for (resource, namespace) in [
        ("services", ns),
        ("endpointslices", ns),
        ("leases", ns),
        ("etcdregistrations", apps.as_str()),
        ("events", apps.as_str()),
    ] {
        let done = mine
            .iter()
            .any(|w| w.resource == resource && w.namespace == namespace && w.code < 300);
        assert!(
            done,
            "no successful write of {resource} in {namespace}: {writes:?}"
        );
    }
    let refused: Vec<_> = mine.iter().filter(|w| w.code == 403).collect();
    assert!(refused.is_empty(), "forbidden writes: {refused:?}");
    assert!(!bridge.full_log().contains("forbidden"), "{}", bridge.log());
    assert!(
        services.get_opt("billing-v2").await.unwrap().is_none(),
        "the bridge's own keys are not imported (writeback.importOwn=false)"
    );

    // Upgrade: one value changes, the Deployment's args follow; the bridge, restarted with them,
    // splits the slice.
    let upgrade_values = [&values[..], &["projection.maxEndpointsPerSlice=1".into()]].concat();
    let upgrade = [
        &["upgrade", release, CHART, "-n", ns][..],
        &sets(&upgrade_values),
    ]
    .concat();
    must("helm upgrade", helm_on(bed, &upgrade));
    let history = helm_on(bed, &["history", release, "-n", ns, "-o", "json"]);
    let history: Value = serde_json::from_str(&must("helm history", history)).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    let upgraded = installed_deployment(bed, ns, name);
    assert_eq!(
        flag(&args_of(&upgraded), "--max-endpoints-per-slice"),
        Some("1")
    );
    assert_eq!(
        upgraded["metadata"]["generation"], 2,
        "a new pod template: a rollout"
    );
    bridge.stop();
    let mut bridge = start_as_pod(bed, &upgraded, &kubeconfig, &format!("{name}-5c4b-a"));
    bridge.leading(WAIT).await;
    let s = eventually("two slices of one endpoint", WAIT, || async {
        let s = slices_of(&slices, "greeter-v1").await;
        (s.len() == 2 && s.iter().all(|x| x.endpoints.len() == 1)).then_some(s)
    })
    .await;
    assert_eq!(addresses(&s), ["10.70.0.1", "10.70.0.2"]);
    bridge.stop();

    // Uninstall: Helm's objects go; the CRD (crds/) and what the bridge wrote stay.
    let uninstall = ["uninstall", release, "-n", ns, "--wait"];
    must("helm uninstall", helm_on(bed, &uninstall));
    for obj in &helms_objects {
        assert!(!exists(bed, obj), "helm uninstall left {obj:?}");
    }
    let crd = ["crd", "etcdregistrations.etcd-bridge.io"];
    assert!(
        exists(bed, &crd),
        "Helm keeps the CRDs of crds/ on uninstall"
    );
    for svc in ["greeter-v1", "greeter"] {
        let kept = services.get_opt(svc).await.unwrap().is_some();
        assert!(kept, "the projected Service {svc} stays");
    }
    assert_eq!(
        slices_of(&slices, "greeter-v1").await.len(),
        2,
        "its EndpointSlices stay"
    );
    let lease_obj = format!("etcd-bridge-{release}");
    assert!(
        exists(bed, &["lease", &lease_obj, "-n", ns]),
        "the bridge's Lease stays"
    );
    // EtcdRegistrations stay, with the bridge's finalizer (nobody will remove it now) ...
    let finalizers = kubectl(
        bed,
        &[
            "get",
            "etcdreg",
            "billing",
            "-n",
            &apps,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
    );
    assert!(
        finalizers.stdout.contains("etcd-bridge.io/registration"),
        "{}",
        finalizers.stdout
    );
    // ... and their keys stay in etcd only until the stopped bridge's etcd lease runs out.
    let kv = etcd.get(key.as_str(), None).await.unwrap();
    let lease_id = kv.kvs().first().expect("the key, for now").lease();
    let ttl = etcd.lease_time_to_live(lease_id, None).await.unwrap().ttl();
    assert!(
        (0..=30).contains(&ttl),
        "expires within writeback.leaseTTL (30s): {ttl}"
    );
}

/// The etcd TLS Secret and the credentials Secret reach a secured etcd exactly as the chart wires
/// them: Secret keys mounted under the chart's paths and passed as --etcd-*-file, the username and
/// password as env from secretKeyRef (resolved from the cluster's Secrets, as the kubelet would).
#[tokio::test]
async fn the_charts_tls_and_auth_values_reach_an_etcd_with_client_certificates_and_a_password() {
    use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
    let bed = TestBed::shared();
    let dir = etcd_bridge_testbed::scratch_dir("chart-tls");
    let pki = etcd_bridge_testbed::pki::Pki::generate(&dir.join("pki")).unwrap();
    let flags: Vec<String> = vec![
        format!("--cert-file={}", pki.serving_cert.display()),
        format!("--key-file={}", pki.serving_key.display()),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.ca_cert.display()),
    ];
    let registry = etcd_bridge_testbed::Etcd::start(&dir, "secured", &flags).unwrap();
    let scope = Scope::with_registry("chart-tls", &registry.endpoint());
    let ns = scope.namespace.as_str();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca_cert)))
        .identity(Identity::from_pem(
            read(&pki.admin_cert),
            read(&pki.admin_key),
        ));

    // Users: root (to administer) and a bridge user that may only read the prefix.
    let opts = ConnectOptions::new().with_tls(tls.clone());
    let mut admin = etcd_client::Client::connect([registry.endpoint()], Some(opts))
        .await
        .expect("connect to the secured etcd");
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.role_add("root").await.ok();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("bridge-reader").await.unwrap();
    let read_prefix = Permission::read(scope.prefix.as_str()).with_prefix();
    admin
        .role_grant_permission("bridge-reader", read_prefix)
        .await
        .unwrap();
    admin.user_add("bridge", "s3cret-pw", None).await.unwrap();
    admin
        .user_grant_role("bridge", "bridge-reader")
        .await
        .unwrap();
    admin.auth_enable().await.unwrap();
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_user("root", "root-pw");
    let mut etcd = etcd_client::Client::connect([registry.endpoint()], Some(opts))
        .await
        .expect("connect as root");

    // The Secrets, the way an operator would create them.
    let file = |key: &str, p: &Path| format!("--from-file={key}={}", p.display());
    let (ca, crt, key) = (
        file("ca.crt", &pki.ca_cert),
        file("tls.crt", &pki.admin_cert),
        file("tls.key", &pki.admin_key),
    );
    let create = [
        "create",
        "secret",
        "generic",
        "etcd-client",
        "-n",
        ns,
        &ca,
        &crt,
        &key,
    ];
    must("create the TLS Secret", kubectl(bed, &create));
    let create = [
        "create",
        "secret",
        "generic",
        "etcd-credentials",
        "-n",
        ns,
        "--from-literal=username=bridge",
        "--from-literal=password=s3cret-pw",
    ];
    must("create the credentials Secret", kubectl(bed, &create));
    let values = [
        format!("etcd.endpoints[0]={}", registry.endpoint()),
        format!("etcd.prefixes[0]={}", scope.prefix),
        "etcd.tls.enabled=true".into(),
        "etcd.tls.secretName=etcd-client".into(),
        "etcd.auth.secretName=etcd-credentials".into(),
        "writeback.enabled=false".into(),
    ];
    let install = [&["install", "sec", CHART, "-n", ns][..], &sets(&values)].concat();
    must("helm install", helm_on(bed, &install));
    let deployment = installed_deployment(bed, ns, "sec-etcd-bridge");
    let ca_file = format!("{TLS_DIR}/ca.crt");
    assert_eq!(
        flag(&args_of(&deployment), "--etcd-ca-file"),
        Some(ca_file.as_str())
    );
    let kubeconfig = chart_sa_kubeconfig(bed, ns, "sec-etcd-bridge");
    let mut bridge = start_as_pod(bed, &deployment, &kubeconfig, "sec-etcd-bridge-1");
    bridge.ready(WAIT).await;
    bridge.leading(WAIT).await;
    register(
        &mut etcd,
        &scope.prefix,
        "vault",
        "",
        "10.71.0.1:8200",
        2,
        300,
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(scope.kube().await, ns);
    let s = converged(&slices, "vault", &["10.71.0.1"]).await;
    assert_eq!(s[0].annotations()["etcd-bridge.io/weight"], "2");
    assert!(
        !bridge.full_log().contains("s3cret-pw"),
        "the password is never logged"
    );
    bridge.stop();
    must(
        "helm uninstall",
        helm_on(bed, &["uninstall", "sec", "-n", ns]),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM hands leadership over at once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_the_charts_args_a_sigtermed_leader_hands_over_to_the_standby_within_2s() {
    let scope = Scope::new("chart-sigterm");
    let bed = scope.bed;
    let ns = scope.namespace.as_str();
    let values = [
        format!("etcd.endpoints[0]={}", scope.registry_endpoint),
        format!("etcd.prefixes[0]={}", scope.prefix),
        // Write-back of this namespace only (a Role, not the ClusterRole).
        format!("writeback.namespace={ns}"),
        format!("writeback.prefix={}wb/", scope.prefix),
    ];
    let install = [&["install", "ha", CHART, "-n", ns][..], &sets(&values)].concat();
    must("helm install", helm_on(bed, &install));
    let deployment = installed_deployment(bed, ns, "ha-etcd-bridge");
    let lease_duration = flag(&args_of(&deployment), "--lease-duration")
        .unwrap()
        .to_string();
    assert_eq!(lease_duration, "15s", "the chart's default");
    let kubeconfig = chart_sa_kubeconfig(bed, ns, "ha-etcd-bridge");

    let mut a = start_as_pod(bed, &deployment, &kubeconfig, "ha-etcd-bridge-6f8-a");
    a.leading(WAIT).await;
    let mut b = start_as_pod(bed, &deployment, &kubeconfig, "ha-etcd-bridge-6f8-b");
    b.ready(WAIT).await;
    assert_eq!(b.metric("etcd_bridge_leader"), Some(0.0), "b stands by");
    let lease = [
        "get",
        "lease",
        "etcd-bridge-ha",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ];
    let holder = must("read the Lease", kubectl(bed, &lease));
    assert_eq!(
        holder, "ha-etcd-bridge-6f8-a",
        "POD_NAME is the Lease identity"
    );

    let mut etcd = scope.etcd().await;
    register(&mut etcd, &scope.prefix, "ha", "v1", "10.72.0.1:80", 1, 300).await;
    let slices: Api<EndpointSlice> = Api::namespaced(scope.kube().await, ns);
    converged(&slices, "ha-v1", &["10.72.0.1"]).await;

    let t0 = Instant::now();
    a.proc.stop(Duration::from_secs(10));
    let stopped = t0.elapsed();
    let log = a.full_log();
    assert!(
        log.contains("leadership released"),
        "SIGTERM releases the Lease\n{}",
        a.log()
    );
    assert!(!log.contains("panicked"), "{}", a.log());
    // A change right after the SIGTERM, for the new leader to write.
    register(&mut etcd, &scope.prefix, "ha", "v1", "10.72.0.2:80", 1, 300).await;
    let deadline = t0 + Duration::from_secs(2);
    while b.metric("etcd_bridge_leader") != Some(1.0) && Instant::now() < deadline {
        assert!(b.proc.is_running(), "{}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let spec = [
        "get",
        "lease",
        "etcd-bridge-ha",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec}",
    ];
    let now = kubectl(bed, &spec).stdout;
    assert_eq!(
        b.metric("etcd_bridge_leader"),
        Some(1.0),
        "the standby did not lead within 2 s of the SIGTERM (the old leader exited after \
         {stopped:?} and released the Lease, now {now}): it waits for the {lease_duration} \
         lease it last saw to run out instead of noticing the release\n{}",
        b.log()
    );
    eprintln!("the standby led {took:?} after the SIGTERM (the leader exited after {stopped:?})");
    converged(&slices, "ha-v1", &["10.72.0.1", "10.72.0.2"]).await;
    b.stop();
}
