//! Shared helpers of the integration tests: the test bed, a bridge process, seed-style
//! registrations, and waiting for the cluster to show something.
#![allow(dead_code)] // each test binary uses its own subset

pub use etcd_bridge_testbed::{TestBed, process::Proc, unique};
use etcd_client::{Client as Etcd, PutOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The Role the bridge needs in its target namespace, and nothing more.
pub const BRIDGE_ROLE: &str = r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: etcd-bridge}
rules:
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, patch, update]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: etcd-bridge}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: etcd-bridge}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge}
subjects:
- {kind: ServiceAccount, name: etcd-bridge}
"#;

/// One test's corner of the shared test bed: its own namespace and etcd prefix.
pub struct Scope {
    pub bed: &'static TestBed,
    pub namespace: String,
    pub prefix: String,
}

impl Scope {
    /// Creates a namespace and picks a key prefix, both unique to this test.
    pub fn new(base: &str) -> Scope {
        let bed = TestBed::shared();
        let namespace = unique(base);
        let out = bed.cluster.kubectl(&["create", "namespace", &namespace]);
        assert!(
            out.status.success(),
            "create namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Scope {
            bed,
            prefix: format!("/{namespace}/"),
            namespace,
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

    /// A kubeconfig for the bridge's ServiceAccount, bound to [`BRIDGE_ROLE`] only.
    pub fn bridge_kubeconfig(&self) -> PathBuf {
        self.apply(BRIDGE_ROLE);
        let path = self.bed.dir.join(format!("{}.kubeconfig", self.namespace));
        self.bed
            .cluster
            .service_account_kubeconfig(&self.namespace, "etcd-bridge", &path)
            .expect("TokenRequest for the bridge's ServiceAccount")
    }

    pub async fn etcd(&self) -> Etcd {
        Etcd::connect([self.bed.registry.endpoint()], None)
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

/// The value the seed's Go `Register` writes: `json.Marshal(Server{...})`.
pub fn seed_value(name: &str, version: &str, addr: &str, weight: i64) -> String {
    format!(r#"{{"name":"{name}","addr":"{addr}","version":"{version}","weight":{weight}}}"#)
}

/// The key the seed's `BuildRegPath` makes, under `prefix`.
pub fn seed_key(prefix: &str, name: &str, version: &str, addr: &str) -> String {
    if version.is_empty() {
        format!("{prefix}{name}/{addr}")
    } else {
        format!("{prefix}{name}/{version}/{addr}")
    }
}

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

impl Bridge {
    pub fn start(scope: &Scope, kubeconfig: &Path, extra: &[&str]) -> Bridge {
        let http_port = etcd_bridge_testbed::process::free_port();
        let log = scope
            .bed
            .dir
            .join(format!("bridge-{}-{http_port}.log", scope.namespace));
        let mut args = vec![
            "run".to_string(),
            format!("--etcd-endpoints={}", scope.bed.registry.endpoint()),
            format!("--prefix={}", scope.prefix),
            format!("--namespace={}", scope.namespace),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--listen=127.0.0.1:{http_port}"),
            "--lease-duration=4s".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn(
            "etcd-bridge",
            Path::new(env!("CARGO_BIN_EXE_etcd-bridge")),
            &args,
            &log,
        )
        .expect("start etcd-bridge");
        Bridge { proc, http_port }
    }

    /// GET a path of the bridge's HTTP server: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    }

    /// The value of one metric line (exact series, e.g. `etcd_bridge_leader`).
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics")?;
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits for `/readyz` to answer 200; panics with the bridge's log otherwise.
    pub async fn ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if matches!(self.get("/readyz"), Some((200, _))) {
                return;
            }
            assert!(
                self.proc.is_running(),
                "etcd-bridge exited\n{}",
                self.proc.log_tail(60)
            );
            assert!(
                Instant::now() < deadline,
                "etcd-bridge not ready after {timeout:?}\n{}",
                self.proc.log_tail(60)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        self.proc.log_tail(80)
    }
}
