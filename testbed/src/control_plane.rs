//! A real Kubernetes control plane on loopback: its own etcd, kube-apiserver (RBAC on) and
//! kube-controller-manager running the controllers the bridge relies on (garbage collection,
//! EndpointSlice and EndpointSlice mirroring). The way controller-runtime's envtest does it,
//! plus the controller-manager.

use crate::etcd::Etcd;
use crate::pki::Pki;
use crate::process::{Proc, free_port, wait_until, write_file};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The controllers the test bed runs; everything else (nodes, pods, ...) has no use without kubelets.
const CONTROLLERS: &str = "garbage-collector-controller,endpointslice-controller,endpointslice-mirroring-controller,serviceaccount-controller,namespace-controller";

pub struct ControlPlane {
    pub dir: PathBuf,
    pub etcd: Etcd,
    pub port: u16,
    pub pki: Pki,
    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    bins: PathBuf,
    apiserver: Option<Proc>,
    controller_manager: Option<Proc>,
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager under `dir`, and waits until the
    /// apiserver reports ready.
    pub fn start(dir: &Path) -> Result<ControlPlane, String> {
        let bins = crate::kube_bins()?;
        let etcd = Etcd::start(dir, "control-plane-etcd", &[])?;
        let pki = Pki::generate(&dir.join("pki"))?;
        let port = free_port();
        let kubeconfig = dir.join("admin.kubeconfig");
        write_file(
            &kubeconfig,
            admin_kubeconfig(port, &pki.ca_cert, &pki.admin_cert, &pki.admin_key).as_bytes(),
        )?;
        let mut cp = ControlPlane {
            dir: dir.to_path_buf(),
            etcd,
            port,
            pki,
            kubeconfig,
            bins,
            apiserver: None,
            controller_manager: None,
        };
        cp.start_apiserver()?;
        cp.start_controller_manager()?;
        Ok(cp)
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts kube-apiserver (again) on the same port and storage; waits for `/readyz`.
    pub fn start_apiserver(&mut self) -> Result<(), String> {
        let url = self.server_url();
        let p = &self.pki;
        let args: Vec<String> = vec![
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", p.serving_cert.display()),
            format!("--tls-private-key-file={}", p.serving_key.display()),
            format!("--client-ca-file={}", p.ca_cert.display()),
            format!("--etcd-servers={}", self.etcd.endpoint()),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-issuer={url}"),
            format!("--service-account-key-file={}", p.sa_pub.display()),
            format!("--service-account-signing-key-file={}", p.sa_key.display()),
            // A range for ClusterIP allocation only; no traffic is ever routed to it.
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--allow-privileged=true".into(),
            // The node (node.rs) is reached at its InternalIP: its name resolves nowhere.
            "--kubelet-preferred-address-types=InternalIP".into(),
            // One apiserver, no Endpoints to reconcile for `kubernetes`.
            "--endpoint-reconciler-type=none".into(),
            // An audit log of every write: tests count the bridge's writes with it.
            format!("--audit-log-path={}", self.audit_log().display()),
            format!("--audit-policy-file={}", self.audit_policy()?.display()),
            "--audit-log-mode=blocking".into(),
            // Never rotated while a test bed lives: a mark is a byte offset into this one file.
            // The default (100 MB) was reached in the middle of a full `make bench`.
            "--audit-log-maxsize=4096".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        let log = self.dir.join("kube-apiserver.log");
        let mut proc = Proc::spawn(
            "kube-apiserver",
            &self.bins.join("kube-apiserver"),
            &args,
            &log,
        )?;
        let (kubectl, kubeconfig) = (self.bins.join("kubectl"), self.kubeconfig.clone());
        wait_until(
            "kube-apiserver /readyz",
            Duration::from_secs(90),
            &mut proc,
            || {
                Command::new(&kubectl)
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .args(["get", "--raw=/readyz"])
                    .output()
                    .is_ok_and(|o| o.status.success())
            },
        )?;
        self.apiserver = Some(proc);
        Ok(())
    }

    /// Stops kube-apiserver (SIGTERM), e.g. to test an API outage.
    pub fn stop_apiserver(&mut self) {
        if let Some(mut p) = self.apiserver.take() {
            p.stop(Duration::from_secs(20));
        }
    }

    fn start_controller_manager(&mut self) -> Result<(), String> {
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", self.kubeconfig.display()),
            format!("--controllers={CONTROLLERS}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            format!("--authentication-kubeconfig={}", self.kubeconfig.display()),
            format!("--authorization-kubeconfig={}", self.kubeconfig.display()),
            format!(
                "--service-account-private-key-file={}",
                self.pki.sa_key.display()
            ),
            format!("--root-ca-file={}", self.pki.ca_cert.display()),
            "--use-service-account-credentials=false".into(),
            "--v=1".into(),
        ];
        let log = self.dir.join("kube-controller-manager.log");
        let mut proc = Proc::spawn(
            "kube-controller-manager",
            &self.bins.join("kube-controller-manager"),
            &args,
            &log,
        )?;
        // Give it a moment to fail on bad flags, so the error shows here and not as a
        // mysterious missing slice later.
        std::thread::sleep(Duration::from_millis(500));
        if !proc.is_running() {
            return Err(format!(
                "kube-controller-manager exited\n{}",
                proc.log_tail(40)
            ));
        }
        self.controller_manager = Some(proc);
        Ok(())
    }

    /// Runs the test bed's kubectl against this control plane as admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        Command::new(self.bins.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .output()
            .expect("run kubectl")
    }

    /// Like [`kubectl`](Self::kubectl), with text on stdin (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        use std::io::Write;
        let mut child = Command::new(self.bins.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write kubectl stdin");
        child.wait_with_output().expect("wait for kubectl")
    }

    /// Creates the namespace `name` (as admin).
    pub fn create_namespace(&self, name: &str) -> Result<(), String> {
        let out = self.kubectl(&["create", "namespace", name]);
        if !out.status.success() {
            return Err(format!(
                "create namespace {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    /// Applies a CustomResourceDefinition (`yaml`, server-side, so it is idempotent) and waits
    /// until `crd` (e.g. `etcdregistrations.etcd-bridge.io`) is Established, i.e. served.
    pub fn install_crd(&self, yaml: &str, crd: &str) -> Result<(), String> {
        let out = self.kubectl_stdin(&["apply", "--server-side", "-f", "-"], yaml);
        if !out.status.success() {
            return Err(format!(
                "apply the CRD {crd}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let name = format!("crd/{crd}");
        let out = self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            &name,
        ]);
        if !out.status.success() {
            return Err(format!(
                "the CRD {crd} is not established: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    pub fn kubectl_path(&self) -> PathBuf {
        self.bins.join("kubectl")
    }

    /// The apiserver's audit log: one JSON line per write request.
    pub fn audit_log(&self) -> PathBuf {
        self.dir.join("audit.log")
    }

    fn audit_policy(&self) -> Result<PathBuf, String> {
        let path = self.dir.join("audit-policy.yaml");
        // Only writes, at Metadata level: enough to count who changed what. Lease writes with
        // their request, so a test can tell who held a Lease when (a release has no holder).
        write_file(
            &path,
            br#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Request
  resources: [{group: coordination.k8s.io, resources: [leases]}]
  verbs: ["create", "update", "patch"]
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
"#,
        )?;
        Ok(path)
    }

    /// A kubeconfig for `namespace/service_account`, with a token from the TokenRequest API, so a
    /// process runs with exactly the rights that RBAC grants that account.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
        path: &Path,
    ) -> Result<PathBuf, String> {
        let out = self.kubectl(&[
            "create",
            "token",
            service_account,
            "-n",
            namespace,
            "--duration=2h",
        ]);
        if !out.status.success() {
            return Err(format!(
                "TokenRequest for {namespace}/{service_account}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        write_file(
            path,
            token_kubeconfig(self.port, &self.pki.ca_cert, &token, namespace).as_bytes(),
        )?;
        Ok(path.to_path_buf())
    }

    /// An admin `kube::Client`. Build one per Tokio runtime (per test): clients hold connections
    /// that belong to the runtime that made them.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }
}

/// A `kube::Client` from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Client {
    let kc = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("kubeconfig");
    kube::Client::try_from(config).expect("kube client")
}

fn admin_kubeconfig(port: u16, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: admin
current-context: testbed
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    )
}

fn token_kubeconfig(port: u16, ca: &Path, token: &str, namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {ca}
users:
- name: sa
  user:
    token: {token}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: sa
    namespace: {namespace}
current-context: testbed
"#,
        ca = ca.display()
    )
}
