//! helm, kubectl and the rendered chart, and the bridge run the way the chart's Deployment runs
//! it: what the render and install tests share.

// The shared test helpers, re-exported so that `use crate::support::*` brings both; this module's
// own `converged` (slices only, no Service needed) shadows the shared one.
pub use crate::common::*;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// The chart in this checkout (found when the test runs: see `etcd_bridge_testbed::repo`).
pub fn chart() -> &'static str {
    static CHART: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CHART.get_or_init(|| {
        etcd_bridge_testbed::repo::path("charts/etcd-bridge")
            .display()
            .to_string()
    })
}
pub const WAIT: Duration = Duration::from_secs(30);
/// Where the chart mounts the etcd TLS Secret in the pod.
pub const TLS_DIR: &str = "/etc/etcd-bridge/etcd-tls";

/// The write-back flags; all but `--writeback` itself are rendered only with write-back on.
pub const WRITEBACK_FLAGS: [&str; 7] = [
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
pub fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = etcd_bridge_testbed::repo::path("hack/install-helm.sh");
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
pub fn helm_home() -> &'static Path {
    static HOME: OnceLock<PathBuf> = OnceLock::new();
    HOME.get_or_init(|| etcd_bridge_testbed::scratch_dir("helm-home"))
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().expect("run a command");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `helm args...`, with no cluster (lint, template).
pub fn helm(args: &[&str]) -> Out {
    let home = helm_home();
    run(Command::new(helm_bin())
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG"))
}

/// `helm args...` against the test bed, as its admin.
pub fn helm_on(bed: &TestBed, args: &[&str]) -> Out {
    let kubeconfig = format!("--kubeconfig={}", bed.cluster.kubeconfig.display());
    let mut all = vec![kubeconfig.as_str()];
    all.extend_from_slice(args);
    helm(&all)
}

pub fn must(what: &str, out: Out) -> String {
    assert!(out.ok, "{what} failed:\n{}\n{}", out.stderr, out.stdout);
    out.stdout
}

/// `--set` arguments from `key=value` pairs.
pub fn sets<S: AsRef<str>>(values: &[S]) -> Vec<&str> {
    values.iter().flat_map(|v| ["--set", v.as_ref()]).collect()
}

/// `helm template` of the chart as release `release` in `namespace`, CRDs included.
pub fn template<S: AsRef<str>>(
    release: &str,
    namespace: &str,
    values: &[S],
) -> Result<String, String> {
    let mut args = vec![
        "template",
        release,
        chart(),
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
pub fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| Value::deserialize(d).expect("helm rendered valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind} in the rendering");
    found[0]
}

pub fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    of_kind(docs, kind)
        .into_iter()
        .find(|d| d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the rendering"))
}

pub fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The bridge container of a Deployment.
pub fn container(deployment: &Value) -> &Value {
    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["name"], "etcd-bridge");
    c
}

pub fn args_of(deployment: &Value) -> Vec<String> {
    strings(&container(deployment)["args"])
}

/// The value of `--flag=value` in `args`.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let p = format!("{name}=");
    args.iter().find_map(|a| a.strip_prefix(p.as_str()))
}

pub fn flag_name(arg: &str) -> &str {
    arg.split_once('=').map_or(arg, |(n, _)| n)
}

pub type Rule = (String, String, Vec<String>, Vec<String>);

/// Every rule of a Role or ClusterRole as (apiGroup, resource, resourceNames, sorted verbs), one
/// per group and resource.
pub fn rules(role: &Value) -> BTreeSet<Rule> {
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

pub fn rule(group: &str, resource: &str, names: &[&str], verbs: &[&str]) -> Rule {
    let mut v: Vec<String> = verbs.iter().map(|s| s.to_string()).collect();
    v.sort();
    let names = names.iter().map(|s| s.to_string()).collect();
    (group.into(), resource.into(), names, v)
}

/// The import Role of release `rel` (lease `etcd-bridge-{instance}`).
pub fn import_rules(lease: &str) -> BTreeSet<Rule> {
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
pub fn writeback_rules() -> BTreeSet<Rule> {
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

pub fn kubectl(bed: &TestBed, args: &[&str]) -> Out {
    let out = bed.cluster.kubectl(args);
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn kubectl_json(bed: &TestBed, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&must(&format!("kubectl {args:?}"), kubectl(bed, &all)))
        .expect("kubectl printed JSON")
}

pub fn exists(bed: &TestBed, args: &[&str]) -> bool {
    kubectl(bed, &[&["get"], args].concat()).ok
}

pub fn create_namespace(bed: &TestBed, name: &str) {
    bed.cluster
        .create_namespace(name)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `kubectl apply --dry-run=server`: the API server validates every object (schemas, strict
/// field validation, RBAC escalation checks, admission) without storing anything.
pub fn server_validates(bed: &TestBed, what: &str, yaml: &str) {
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
pub fn servicemonitor_crd(bed: &TestBed) {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let crd = "servicemonitors.monitoring.coreos.com";
        bed.cluster
            .install_crd(SERVICEMONITOR_CRD, crd)
            .unwrap_or_else(|e| panic!("{e}"));
    });
}

pub const SERVICEMONITOR_CRD: &str = r#"
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

pub fn bridge_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let help =
            etcd_bridge_testbed::bridge::run_help(Path::new(env!("CARGO_BIN_EXE_etcd-bridge")));
        assert!(!help.is_empty(), "`etcd-bridge run --help` printed nothing");
        help
    })
}

/// Whether `etcd-bridge run` has the flag `name` (e.g. `--writeback`), with a value or an
/// optional one (`--probe [<PREFIX_OR_GLOB>]`).
pub fn bridge_has_flag(name: &str) -> bool {
    let help = bridge_help();
    help.contains(&format!("{name} <")) || help.contains(&format!("{name} [<"))
}

/// One Secret key's content, decoded.
pub fn secret_key(bed: &TestBed, namespace: &str, secret: &str, key: &str) -> String {
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
pub fn start_as_pod(bed: &TestBed, deployment: &Value, kubeconfig: &Path, pod: &str) -> Bridge {
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
pub fn strings_find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|v| v["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

/// The Deployment as installed in the cluster.
pub fn installed_deployment(bed: &TestBed, namespace: &str, name: &str) -> Value {
    kubectl_json(bed, &["get", "deployment", name, "-n", namespace])
}

/// A kubeconfig with a TokenRequest token of the chart's ServiceAccount.
pub fn chart_sa_kubeconfig(bed: &TestBed, namespace: &str, sa: &str) -> PathBuf {
    let path = bed.dir.join(format!("{namespace}-{sa}.kubeconfig"));
    bed.cluster
        .service_account_kubeconfig(namespace, sa, &path)
        .expect("TokenRequest for the chart's ServiceAccount")
}

/// `kubectl auth can-i` as `user`.
pub fn can(bed: &TestBed, user: &str, args: &[&str]) -> bool {
    let as_user = format!("--as={user}");
    let all = [&["auth", "can-i"], args, &[as_user.as_str()]].concat();
    kubectl(bed, &all).stdout.trim() == "yes"
}

/// Waits until `service`'s slices hold exactly `want`; returns them.
pub async fn converged(
    api: &Api<EndpointSlice>,
    service: &str,
    want: &[&str],
) -> Vec<EndpointSlice> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    eventually(&format!("{service} has {want:?}"), WAIT, || async {
        let s = slices_of(api, service).await;
        (addresses(&s) == want).then_some(s)
    })
    .await
}

/// The value at `key` in etcd.
pub async fn etcd_value(etcd: &mut etcd_client::Client, key: &str) -> Option<String> {
    let r = etcd.get(key, None).await.expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}
