//! Shared helpers of the integration tests: the test bed, a bridge process, seed-style
//! registrations, and waiting for the cluster to show something.
#![allow(dead_code)] // each test binary uses its own subset

pub mod objects;

pub use etcd_bridge_testbed::{Etcd as EtcdServer, TestBed, process::Proc, scratch_dir, unique};
use etcd_client::{Client as Etcd, PutOptions};
#[allow(unused_imports)] // not every test binary reads objects back
pub use objects::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What importing into a namespace needs there: its Services, EndpointSlices and Events (the
/// chart's `etcd-bridge.importRules`).
const IMPORT_RULES: &str = r#"
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
"#;

/// The Role the bridge needs in its target namespace, and nothing more: importing, and Leases.
pub fn bridge_role() -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: etcd-bridge}}
rules:{IMPORT_RULES}- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, create, patch, update, delete]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: etcd-bridge}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: etcd-bridge}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge}}
subjects:
- {{kind: ServiceAccount, name: etcd-bridge}}
"#
    )
}

/// What importing into another namespace (`--target-namespaces`) needs there, bound to the
/// bridge's ServiceAccount of `home` (the chart renders the same for `sources.targetNamespaces`).
pub fn import_role(home: &str) -> String {
    format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: etcd-bridge-import}}
rules:{IMPORT_RULES}---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: etcd-bridge-import}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge-import}}
subjects:
- {{kind: ServiceAccount, name: etcd-bridge, namespace: {home}}}
"#
    )
}

/// The cluster-wide rights write-back adds to [`bridge_role`], bound to the ServiceAccount
/// `etcd-bridge` of `{namespace}`. `{namespace}` is replaced by the caller.
pub const WRITEBACK_CLUSTER_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "etcd-bridge-writeback-{namespace}"}
rules:
- apiGroups: [etcd-bridge.io]
  resources: [etcdregistrations]
  verbs: [get, list, watch, patch, update]
- apiGroups: [etcd-bridge.io]
  resources: [etcdregistrations/status]
  verbs: [get, patch, update]
- apiGroups: [etcd-bridge.io]
  resources: [etcdregistrations/finalizers]
  verbs: [update]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "etcd-bridge-writeback-{namespace}"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "etcd-bridge-writeback-{namespace}"}
subjects:
- {kind: ServiceAccount, name: etcd-bridge, namespace: "{namespace}"}
"#;

/// One test's corner of the shared test bed: its own namespace and etcd prefix.
pub struct Scope {
    pub bed: &'static TestBed,
    pub namespace: String,
    pub prefix: String,
    /// The registry etcd this scope's bridge reads and its [`Scope::etcd`] client writes: the
    /// shared one, or a private one given to [`Scope::with_registry`].
    pub registry_endpoint: String,
}

impl Scope {
    /// Creates a namespace and picks a key prefix, both unique to this test.
    pub fn new(base: &str) -> Scope {
        let bed = TestBed::shared();
        let namespace = unique(base);
        bed.cluster
            .create_namespace(&namespace)
            .unwrap_or_else(|e| panic!("{e}"));
        Scope {
            bed,
            prefix: format!("/{namespace}/"),
            registry_endpoint: bed.registry.endpoint(),
            namespace,
        }
    }

    /// Like [`Scope::new`] (a namespace of the shared control plane), but with a private
    /// registry etcd at `endpoint`, e.g. one the test stops or restarts.
    pub fn with_registry(base: &str, endpoint: &str) -> Scope {
        Scope {
            registry_endpoint: endpoint.to_string(),
            ..Scope::new(base)
        }
    }

    /// Applies YAML into this scope's namespace as admin.
    pub fn apply(&self, yaml: &str) {
        let out = self
            .bed
            .cluster
            .kubectl_stdin(&["apply", "-n", &self.namespace, "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A kubeconfig for the bridge's ServiceAccount, bound to [`bridge_role`] only.
    pub fn bridge_kubeconfig(&self) -> PathBuf {
        self.apply(&bridge_role());
        let path = self.bed.dir.join(format!("{}.kubeconfig", self.namespace));
        self.bed
            .cluster
            .service_account_kubeconfig(&self.namespace, "etcd-bridge", &path)
            .expect("TokenRequest for the bridge's ServiceAccount")
    }

    /// Installs the EtcdRegistration CRD (idempotent) and returns a kubeconfig for the bridge's
    /// ServiceAccount with [`bridge_role`] plus [`WRITEBACK_CLUSTER_ROLE`].
    pub fn writeback_kubeconfig(&self) -> PathBuf {
        install_crd(self.bed);
        self.apply(&bridge_role());
        self.apply(&WRITEBACK_CLUSTER_ROLE.replace("{namespace}", &self.namespace));
        let path = self
            .bed
            .dir
            .join(format!("{}-wb.kubeconfig", self.namespace));
        self.bed
            .cluster
            .service_account_kubeconfig(&self.namespace, "etcd-bridge", &path)
            .expect("TokenRequest for the bridge's ServiceAccount")
    }

    pub async fn etcd(&self) -> Etcd {
        Etcd::connect([self.registry_endpoint.as_str()], None)
            .await
            .expect("connect to the registry etcd")
    }

    pub async fn kube(&self) -> kube::Client {
        self.bed.cluster.client().await
    }

    /// `kubectl` in this namespace; returns stdout, panics with stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.namespace.as_str()];
        all.extend_from_slice(args);
        let out = self.bed.cluster.kubectl(&all);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the bridge on this scope's namespace and prefix.
    pub fn bridge(&self, kubeconfig: &Path, extra: &[&str]) -> Bridge {
        Bridge::start(self, kubeconfig, extra)
    }
}

/// Applies the generated CRD from `crds/` and waits until it is served.
pub fn install_crd(bed: &TestBed) {
    let crd = etcd_bridge_testbed::repo::path("crds/etcdregistrations.etcd-bridge.io.yaml");
    let yaml = std::fs::read_to_string(&crd).expect("read the generated CRD");
    bed.cluster
        .install_crd(&yaml, "etcdregistrations.etcd-bridge.io")
        .unwrap_or_else(|e| panic!("{e}"));
}

pub use etcd_bridge_testbed::seed::{seed_key, seed_value};

/// Registers like the seed's `Register.register()`: a lease of `ttl` seconds and one key under it.
/// Returns the lease id (not kept alive: keep it alive or let it expire as the test needs).
pub async fn register(
    etcd: &mut Etcd,
    prefix: &str,
    name: &str,
    version: &str,
    addr: &str,
    weight: i64,
    ttl: i64,
) -> i64 {
    let lease = etcd.lease_grant(ttl, None).await.expect("grant lease").id();
    etcd.put(
        seed_key(prefix, name, version, addr),
        seed_value(name, version, addr, weight),
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put registration");
    lease
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `etcd-bridge run`.
pub struct Bridge {
    pub proc: Proc,
    pub http_port: u16,
}

/// A test bed of one test's own (for a test that stops its apiserver), a namespace and prefix on
/// it, and a ready bridge running as the admin.
pub struct PrivateBed {
    pub bed: TestBed,
    pub namespace: String,
    pub prefix: String,
    pub bridge: Bridge,
}

impl PrivateBed {
    pub async fn start(label: &str, base: &str, timeout: Duration) -> PrivateBed {
        let bed = TestBed::start(label)
            .unwrap_or_else(|e| panic!("the private test bed did not start (no skipping):\n{e}"));
        let namespace = unique(base);
        bed.cluster
            .create_namespace(&namespace)
            .unwrap_or_else(|e| panic!("{e}"));
        let prefix = format!("/{namespace}/");
        let endpoint = bed.registry.endpoint();
        let mut bridge = Bridge::start_with(
            &BridgeTarget {
                dir: &bed.dir,
                etcd_endpoint: &endpoint,
                prefix: &prefix,
                namespace: &namespace,
                kubeconfig: &bed.cluster.kubeconfig,
            },
            &[],
        );
        bridge.ready(timeout).await;
        PrivateBed {
            bed,
            namespace,
            prefix,
            bridge,
        }
    }
}

/// The `etcd-bridge` binary the tests run: this build's, or `ETCD_BRIDGE_TEST_BIN` (e.g. a build
/// of an older commit, to see a new test fail before its fix).
pub fn bridge_binary() -> PathBuf {
    std::env::var_os("ETCD_BRIDGE_TEST_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_etcd-bridge")))
}

impl Bridge {
    pub fn start(scope: &Scope, kubeconfig: &Path, extra: &[&str]) -> Bridge {
        Bridge::start_with(
            &BridgeTarget {
                dir: &scope.bed.dir,
                etcd_endpoint: &scope.registry_endpoint,
                prefix: &scope.prefix,
                namespace: &scope.namespace,
                kubeconfig,
            },
            extra,
        )
    }

    /// Starts `etcd-bridge run` on any etcd and cluster (e.g. a private test bed). Leases last
    /// 4 s unless `extra` sets `--lease-duration`.
    pub fn start_with(target: &BridgeTarget, extra: &[&str]) -> Bridge {
        let http_port = etcd_bridge_testbed::process::free_port();
        let log = target
            .dir
            .join(format!("bridge-{}-{http_port}.log", target.namespace));
        let mut args = vec![
            "run".to_string(),
            format!("--etcd-endpoints={}", target.etcd_endpoint),
            format!("--namespace={}", target.namespace),
            format!("--kubeconfig={}", target.kubeconfig.display()),
        ];
        // The scope's prefix, unless the test gives its own (e.g. with a format).
        if !extra.iter().any(|a| a.starts_with("--prefix")) {
            args.push(format!("--prefix={}", target.prefix));
        }
        if !extra.iter().any(|a| a.starts_with("--listen")) {
            args.push(format!("--listen=127.0.0.1:{http_port}"));
        }
        if !extra.iter().any(|a| a.starts_with("--lease-duration")) {
            args.push("--lease-duration=4s".into());
        }
        // Import tests run without write-back unless they ask for it (its CRD and ClusterRole
        // are the write-back tests' business).
        if !extra.iter().any(|a| a.starts_with("--writeback=")) {
            args.push("--writeback=false".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc =
            Proc::spawn("etcd-bridge", &bridge_binary(), &args, &log).expect("start etcd-bridge");
        Bridge { proc, http_port }
    }

    /// GET a path of the bridge's HTTP server: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        etcd_bridge_testbed::process::http_get(self.http_port, path)
    }

    /// The value of one metric line (exact series, e.g. `etcd_bridge_leader`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        etcd_bridge_testbed::metrics::value(&body, series)
    }

    /// Waits for `/readyz` to answer 200; panics with the bridge's log otherwise.
    pub async fn ready(&mut self, timeout: Duration) {
        self.wait_for("ready", timeout, |b| {
            matches!(b.get("/readyz"), Some((200, _)))
        })
        .await
    }

    /// Polls `check` every 50 ms while the bridge runs; panics with its log if the bridge exits
    /// or `timeout` passes first.
    async fn wait_for(&mut self, what: &str, timeout: Duration, check: impl Fn(&Bridge) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return;
            }
            assert!(
                self.proc.is_running(),
                "etcd-bridge exited\n{}",
                self.proc.log_tail(60)
            );
            assert!(
                Instant::now() < deadline,
                "etcd-bridge not {what} after {timeout:?}\n{}",
                self.proc.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.proc.log_tail(80)
    }
}

/// Where [`Bridge::start_with`] points a bridge: any registry etcd, prefix, namespace and
/// kubeconfig, with its log under `dir`.
pub use etcd_bridge_testbed::bridge::BridgeTarget;

/// The ServiceAccount user a bridge run with [`Scope::bridge_kubeconfig`] has in the audit log.
pub fn bridge_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:etcd-bridge")
}

#[allow(unused_imports)] // not every test binary counts writes
pub use etcd_bridge_testbed::audit::{
    AuditWrite, mark as audit_mark, service_of_slice, single_writer as audit_single_writer,
    writes as audit_writes,
};

/// The writes among `writes` that change Services or EndpointSlices (not Leases, not Events).
pub fn object_writes(writes: &[AuditWrite]) -> Vec<AuditWrite> {
    writes
        .iter()
        .filter(|w| w.changes_an_object())
        .cloned()
        .collect()
}

/// Runs `etcd-bridge preview` on `etcd_endpoint` and `prefix`; returns (success, stdout, stderr).
pub fn preview(etcd_endpoint: &str, prefix: &str, extra: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(bridge_binary())
        .arg("preview")
        .arg(format!("--etcd-endpoints={etcd_endpoint}"))
        .arg(format!("--prefix={prefix}"))
        .args(extra)
        .output()
        .expect("run etcd-bridge preview");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Bridge {
    /// Waits until this bridge reports itself the leader (`etcd_bridge_leader 1`).
    pub async fn leading(&mut self, timeout: Duration) {
        self.wait_for("the leader", timeout, |b| {
            b.metric("etcd_bridge_leader") == Some(1.0)
        })
        .await
    }

    /// Stops the bridge with SIGTERM (SIGKILL after 10 s) and waits for it to exit.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(10));
    }

    /// The whole log of this bridge.
    pub fn full_log(&self) -> String {
        self.proc.full_log()
    }
}

/// What `--sources` adds to [`bridge_role`]: reading EtcdSources and the one Secret a source
/// names (the chart renders the same, from `sources.secretNames`).
pub const SOURCES_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: etcd-bridge-sources}
rules:
- apiGroups: [etcd-bridge.io]
  resources: [etcdsources]
  verbs: [get, list, watch]
- apiGroups: [etcd-bridge.io]
  resources: [etcdsources/status]
  verbs: [get, patch, update]
- apiGroups: [""]
  resources: [secrets]
  resourceNames: [etcd-b]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: etcd-bridge-sources}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge-sources}
subjects:
- {kind: ServiceAccount, name: etcd-bridge}
"#;

/// A private registry etcd, for a test that stops or restarts it, or needs a second registry.
pub fn private_etcd(label: &str) -> EtcdServer {
    EtcdServer::start(&scratch_dir(label), "registry", &[])
        .unwrap_or_else(|e| panic!("a private registry etcd did not start (no skipping):\n{e}"))
}

/// The EtcdSource CRD, as generated.
pub fn install_sources_crd(scope: &Scope) {
    let crd = etcd_bridge_testbed::repo::path("crds/etcdsources.etcd-bridge.io.yaml");
    let yaml = std::fs::read_to_string(&crd).expect("read the generated CRD");
    (scope.bed.cluster)
        .install_crd(&yaml, "etcdsources.etcd-bridge.io")
        .unwrap_or_else(|e| panic!("{e}"));
}
