//! A real node for the test bed's control plane: containerd and runc (Debian), the CNI plugins
//! (Debian's containernetworking-plugins), kubelet and kube-proxy (built from the same
//! k8s.io/kubernetes as kube-apiserver), CoreDNS (built from its Go module) serving cluster.local,
//! and kube-scheduler plus the controllers pods need (Deployments, ReplicaSets, the root CA
//! ConfigMap, pod GC), which the control plane alone does not run.
//!
//! Everything of the node runs in namespaces of its own (see `node_network.rs`); the images come
//! from `hack/image.sh` and are imported into containerd, never pulled.
//!
//! How pods find the control plane, as in a real cluster:
//! - the apiserver: the `kubernetes` Service (10.0.0.1:443), whose EndpointSlice the node writes
//!   (the apiserver runs with `--endpoint-reconciler-type=none`), pointing at a relay on the host
//!   side of the node's link; kube-proxy DNATs to it;
//! - DNS: the kubelet gives pods `nameserver 10.0.0.10`, the ClusterIP of `kube-system/kube-dns`,
//!   whose EndpointSlice points at CoreDNS on the node's own address. CoreDNS runs as a node
//!   process, not a pod: it starts in a second, needs no image, and the path a pod's query takes
//!   (Service, kube-proxy, CoreDNS, the apiserver's Services and EndpointSlices) is the real one.

use crate::control_plane::ControlPlane;
use crate::node_config::{self as config, DNS_SERVICE_IP, NODE_NAME};
use crate::node_images::{self, Images};
use crate::node_network::{self as network, Link, Relay, run};
use crate::process::{Proc, free_port, wait_until, write_file};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Port of CoreDNS's `ready` plugin on the node's address.
const COREDNS_READY_PORT: u16 = 8181;
/// Port of kube-proxy's /healthz on the node's address.
const KUBE_PROXY_HEALTHZ_PORT: u16 = 10256;
/// What the node's own kube-controller-manager runs; the control plane's runs the rest. The node
/// lifecycle controller lifts the `not-ready` taint the kubelet registers with.
const NODE_CONTROLLERS: &str = "node-lifecycle-controller,deployment-controller,replicaset-controller,root-ca-certificate-publisher-controller,pod-garbage-collector-controller,disruption-controller";

pub struct Node {
    pub dir: PathBuf,
    pub link: Link,
    pub images: Images,
    pub containerd_socket: PathBuf,
    /// How long [`Node::start`] took.
    pub started_in: Duration,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    init_pid: u32,
    relays: Mutex<Vec<Relay>>,
    components: Vec<Proc>,
    /// The namespaces' first process: dropped last, and with it goes every process of the node.
    init: Proc,
}

impl Node {
    /// The node of this test binary's [`TestBed::shared`](crate::TestBed::shared), started on
    /// first use with the bridge image built around `bridge_binary`. Panics (fails the test) when
    /// it cannot start, with the reason and the failing component's log.
    pub fn shared(bridge_binary: &Path) -> &'static Node {
        static NODE: OnceLock<Result<Node, String>> = OnceLock::new();
        let node = NODE.get_or_init(|| {
            let bed = crate::TestBed::shared();
            let images = node_images::build(bridge_binary)?;
            Node::start(&bed.cluster, &bed.dir.join("node"), images)
        });
        match node {
            Ok(n) => n,
            Err(e) => panic!("the node did not start (this test needs it and does not skip):\n{e}"),
        }
    }

    /// Starts a node joined to `cluster`, with its files under `dir`; returns once the Node is
    /// Ready, kube-proxy has synced and CoreDNS answers.
    pub fn start(cluster: &ControlPlane, dir: &Path, images: Images) -> Result<Node, String> {
        let started = Instant::now();
        let bins = crate::kube_bins()?;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut init = start_namespaces(dir)?;
        let init_pid = namespace_pid(&mut init)?;
        let link = network::create_link(init_pid)?;
        let (host, node_ip) = (link.host_ip(), link.node_ip());

        // The apiserver, for the node's components and (through the `kubernetes` Service) pods.
        let api = Relay::start(
            SocketAddrV4::new(host, cluster.port),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, cluster.port),
        )?;
        let kubeconfig = dir.join("node.kubeconfig");
        write_file(
            &kubeconfig,
            config::node_kubeconfig(
                &format!("https://{}", api.listen),
                &cluster.pki.ca_cert,
                &cluster.pki.admin_cert,
                &cluster.pki.admin_key,
            )
            .as_bytes(),
        )?;

        let mut node = Node {
            dir: dir.to_path_buf(),
            link,
            images,
            containerd_socket: dir.join("containerd.sock"),
            started_in: Duration::ZERO,
            kubectl: bins.join("kubectl"),
            kubeconfig: cluster.kubeconfig.clone(),
            init_pid,
            relays: Mutex::new(vec![api]),
            components: Vec::new(),
            init,
        };
        node.cluster_objects(host, cluster.port, node_ip)?;
        node.start_containerd()?;
        node.import_images()?;
        node.start_controllers(&bins, cluster)?;
        node.start_kubelet(&bins, &kubeconfig)?;
        node.start_kube_proxy(&bins, &kubeconfig)?;
        node.start_coredns(&bins, &kubeconfig)?;
        node.wait_ready()?;
        node.started_in = started.elapsed();
        Ok(node)
    }

    /// A relay from the host side of the node's link to `127.0.0.1:port` (e.g. a test's etcd), so
    /// pods can reach it; returns the address pods dial.
    pub fn expose(&self, port: u16) -> Result<SocketAddrV4, String> {
        let target = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let relay = Relay::start(SocketAddrV4::new(self.link.host_ip(), port), target)
            .or_else(|_| Relay::start(SocketAddrV4::new(self.link.host_ip(), 0), target))?;
        let addr = relay.listen;
        self.relays.lock().expect("relays").push(relay);
        Ok(addr)
    }

    /// The host PID of the first process of the node's namespaces: what `nsenter --target` and
    /// `ip link ... netns` take to reach the node's network namespace.
    pub fn pid(&self) -> u32 {
        self.init_pid
    }

    /// A command run inside the node's namespaces (network, mount and PID), e.g. `iptables-save`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--target={}", self.init_pid))
            .args(["--net", "--mount", "--pid", "--", program]);
        c
    }

    /// `ctr` against the node's containerd, in the CRI's namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new("ctr")
            .arg(format!("--address={}", self.containerd_socket.display()))
            .args(["--namespace=k8s.io"])
            .args(args))
    }

    /// The log of a node component: `containerd`, `kubelet`, `kube-proxy`, `coredns`,
    /// `kube-scheduler` or `kube-controller-manager`.
    pub fn log(&self, component: &str) -> PathBuf {
        self.dir.join(format!("{component}.log"))
    }

    /// The last lines of every component's log, for a failing test's message.
    pub fn logs_tail(&self, lines: usize) -> String {
        self.components
            .iter()
            .map(|p| p.log_tail(lines))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The host PIDs of the processes of the containers of `pod` (its pause process excluded):
    /// the containers' own view of uid, capabilities and mounts is in `/proc/PID/*`. The runtime
    /// sets `HOSTNAME` to the pod's name in every container's environment.
    pub fn container_pids(&self, pod: &str) -> Vec<u32> {
        let want = format!("HOSTNAME={pod}");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let mut pids: Vec<u32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == want.as_bytes()))
            })
            .filter(|pid| self.in_node(*pid))
            .collect();
        pids.sort();
        pids
    }

    /// Whether host process `pid` runs under this node (its PID namespace or one nested in it).
    fn in_node(&self, pid: u32) -> bool {
        // NSpid lists the PID in each namespace from the host's down; under the node, the second
        // entry is its PID in the node's namespace, whose init is this node's.
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/pid")).ok();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let depth = status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .map_or(0, |l| l.split_whitespace().count());
        if depth < 3 {
            return false;
        }
        // Walk up the parents until one shares the node's PID namespace.
        let node_ns = ns(self.init_pid);
        let mut p = pid;
        for _ in 0..64 {
            if ns(p) == node_ns {
                return true;
            }
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            match stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|pp| pp.parse().ok())
            {
                Some(pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    }

    // --- start-up steps -------------------------------------------------------------------------

    fn spawn_inside(&mut self, name: &str, program: &Path, args: &[String]) -> Result<(), String> {
        let mut all = vec![
            format!("--target={}", self.init_pid),
            "--net".into(),
            "--mount".into(),
            "--pid".into(),
            "--".into(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        let proc = Proc::spawn(name, Path::new("/usr/bin/nsenter"), &all, &self.log(name))?;
        self.components.push(proc);
        Ok(())
    }

    fn last(&mut self) -> &mut Proc {
        self.components.last_mut().expect("a component")
    }

    /// The API objects a cluster's installer would create: the `kubernetes` Service's endpoint
    /// (the relay) and the `kube-dns` Service with CoreDNS as its endpoint.
    fn cluster_objects(
        &self,
        host: Ipv4Addr,
        api_port: u16,
        node_ip: Ipv4Addr,
    ) -> Result<(), String> {
        let yaml = format!(
            r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-testbed
  namespace: default
  labels:
    kubernetes.io/service-name: kubernetes
    endpointslice.kubernetes.io/managed-by: testbed.etcd-bridge.io
addressType: IPv4
endpoints:
- addresses: ["{host}"]
  conditions: {{ready: true}}
ports:
- {{name: https, port: {api_port}, protocol: TCP}}
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  clusterIP: {DNS_SERVICE_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kube-dns-testbed
  namespace: kube-system
  labels:
    kubernetes.io/service-name: kube-dns
    endpointslice.kubernetes.io/managed-by: testbed.etcd-bridge.io
addressType: IPv4
endpoints:
- addresses: ["{node_ip}"]
  conditions: {{ready: true}}
ports:
- {{name: dns, port: 53, protocol: UDP}}
- {{name: dns-tcp, port: 53, protocol: TCP}}
"#
        );
        self.kubectl_stdin(&["apply", "-f", "-"], &yaml).map(|_| ())
    }

    fn start_containerd(&mut self) -> Result<(), String> {
        let cni_dir = self.dir.join("cni");
        write_file(
            &cni_dir.join("10-testbed.conflist"),
            config::cni_conflist(&self.dir.join("cni-ipam")).as_bytes(),
        )?;
        let toml = self.dir.join("containerd.toml");
        write_file(
            &toml,
            config::containerd_toml(
                &self.dir.join("containerd"),
                &self.containerd_socket,
                &cni_dir,
                &self.images.pause.reference,
            )
            .as_bytes(),
        )?;
        self.spawn_inside(
            "containerd",
            Path::new("/usr/bin/containerd"),
            &[format!("--config={}", toml.display())],
        )?;
        let socket = self.containerd_socket.clone();
        wait_until("containerd", Duration::from_secs(30), self.last(), || {
            Command::new("ctr")
                .arg(format!("--address={}", socket.display()))
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    }

    /// Imports each image under its one normalised name (extra unnormalised tags confuse the
    /// CRI's image lookup).
    fn import_images(&self) -> Result<(), String> {
        for image in self.images.all() {
            self.ctr(&["images", "import", &image.archive.display().to_string()])?;
            let names = self.ctr(&["images", "ls", "-q"])?;
            if !names.lines().any(|n| n == image.reference) {
                return Err(format!(
                    "imported {} but containerd lists:\n{names}",
                    image.archive.display()
                ));
            }
        }
        Ok(())
    }

    /// kube-scheduler (the chart's pods name no node) and the node's kube-controller-manager, on
    /// the host, next to the control plane.
    fn start_controllers(&mut self, bins: &Path, cluster: &ControlPlane) -> Result<(), String> {
        let kc = cluster.kubeconfig.display().to_string();
        let scheduler = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            "--v=1".into(),
        ];
        let log = self.log("kube-scheduler");
        self.components.push(Proc::spawn(
            "kube-scheduler",
            &bins.join("kube-scheduler"),
            &scheduler,
            &log,
        )?);
        let kcm = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            format!("--controllers={NODE_CONTROLLERS}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()),
            format!("--root-ca-file={}", cluster.pki.ca_cert.display()),
            "--use-service-account-credentials=false".into(),
            "--v=1".into(),
        ];
        let log = self.log("kube-controller-manager");
        self.components.push(Proc::spawn(
            "kube-controller-manager (node)",
            &bins.join("kube-controller-manager"),
            &kcm,
            &log,
        )?);
        Ok(())
    }

    fn start_kubelet(&mut self, bins: &Path, kubeconfig: &Path) -> Result<(), String> {
        let resolv = self.dir.join("resolv.conf");
        write_file(&resolv, b"")?;
        let pod_logs = self.dir.join("pod-logs");
        std::fs::create_dir_all(&pod_logs).map_err(|e| format!("{}: {e}", pod_logs.display()))?;
        crate::node_cgroups::remove_stale();
        let scratch = self.dir.parent().unwrap_or(&self.dir);
        let cgroup_root = crate::node_cgroups::root_for(scratch);
        crate::node_cgroups::create(&cgroup_root)?;
        let conf = self.dir.join("kubelet.yaml");
        write_file(
            &conf,
            config::kubelet_config(&config::KubeletPaths {
                containerd_socket: &self.containerd_socket,
                pod_logs: &pod_logs,
                resolv_conf: &resolv,
                node_ip: self.link.node_ip(),
                cgroup_root: &cgroup_root,
            })
            .as_bytes(),
        )?;
        let args = vec![
            format!("--config={}", conf.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--root-dir={}", self.dir.join("kubelet").display()),
            format!("--node-ip={}", self.link.node_ip()),
            format!("--hostname-override={NODE_NAME}"),
            "--v=1".into(),
        ];
        self.spawn_inside("kubelet", &bins.join("kubelet"), &args)
    }

    fn start_kube_proxy(&mut self, bins: &Path, kubeconfig: &Path) -> Result<(), String> {
        let conf = self.dir.join("kube-proxy.yaml");
        write_file(
            &conf,
            config::kube_proxy_config(
                kubeconfig,
                SocketAddrV4::new(self.link.node_ip(), KUBE_PROXY_HEALTHZ_PORT),
            )
            .as_bytes(),
        )?;
        let args = vec![format!("--config={}", conf.display()), "--v=1".into()];
        self.spawn_inside("kube-proxy", &bins.join("kube-proxy"), &args)
    }

    fn start_coredns(&mut self, bins: &Path, kubeconfig: &Path) -> Result<(), String> {
        let conf = self.dir.join("Corefile");
        write_file(
            &conf,
            config::corefile(self.link.node_ip(), kubeconfig, COREDNS_READY_PORT).as_bytes(),
        )?;
        let args = vec![format!("-conf={}", conf.display())];
        self.spawn_inside("coredns", &bins.join("coredns"), &args)
    }

    /// Node Ready, kube-proxy synced, CoreDNS ready; and every component still running.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let node_ip = self.link.node_ip();
        loop {
            if !self.init.is_running() {
                return Err(format!(
                    "the node's namespaces ended\n{}",
                    self.init.log_tail(20)
                ));
            }
            for p in self.components.iter_mut() {
                if !p.is_running() {
                    return Err(format!("{} exited\n{}", p.name, p.log_tail(40)));
                }
            }
            // Ready, and schedulable: no taint left (the kubelet registers with `not-ready`).
            let ready = self
                .kubectl(&[
                    "get",
                    "node",
                    NODE_NAME,
                    "-o",
                    r#"jsonpath={.status.conditions[?(@.type=="Ready")].status} {.spec.taints}"#,
                ])
                .is_ok_and(|s| s.trim() == "True");
            let proxy = http_status(
                SocketAddrV4::new(node_ip, KUBE_PROXY_HEALTHZ_PORT),
                "/healthz",
            ) == Some(200);
            let dns =
                http_status(SocketAddrV4::new(node_ip, COREDNS_READY_PORT), "/ready") == Some(200);
            if ready && proxy && dns {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the node is not ready after 90 s (node Ready: {ready}, kube-proxy synced: \
                     {proxy}, CoreDNS ready: {dns})\n{}",
                    self.logs_tail(30)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        run(Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args))
    }

    fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Result<String, String> {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("run kubectl: {e}"))?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .map_err(|e| format!("kubectl stdin: {e}"))?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "kubectl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

/// The namespaces: `unshare` makes a network, PID and mount namespace and runs a shell as PID 1
/// in them. The shell hides the machine's /run/containerd (containerd's shims put their sockets
/// there whatever the config says), /var/run/netns (the pods' pinned network namespaces) and
/// /var/log/containers (the kubelet's log links) under empty tmpfs mounts seen by the node only,
/// then reaps orphans until it is killed. `--kill-child`: when the watchdog kills `unshare`, the
/// kernel kills PID 1 and with it every process in the namespace.
fn start_namespaces(dir: &Path) -> Result<Proc, String> {
    let script = "set -e
for d in /run/containerd /var/run/netns /var/log/containers; do
  mkdir -p $d
  mount -t tmpfs -o mode=0755 tmpfs $d
done
echo 'node namespaces ready'
set +e
while :; do sleep 3600 & wait; done";
    let args: Vec<String> = [
        "--net",
        "--pid",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
        "--",
        "bash",
        "-c",
        script,
    ]
    .map(String::from)
    .to_vec();
    let log = dir.join("namespaces.log");
    let mut init = Proc::spawn(
        "node namespaces",
        Path::new("/usr/bin/unshare"),
        &args,
        &log,
    )?;
    let log2 = log.clone();
    wait_until(
        "the node's namespaces",
        Duration::from_secs(10),
        &mut init,
        || std::fs::read_to_string(&log2).is_ok_and(|t| t.contains("node namespaces ready")),
    )?;
    Ok(init)
}

/// The host PID of PID 1 in the namespaces: `unshare`'s child.
fn namespace_pid(init: &mut Proc) -> Result<u32, String> {
    let up = init.pid();
    std::fs::read_to_string(format!("/proc/{up}/task/{up}/children"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("unshare ({up}) has no child\n{}", init.log_tail(20)))
}

/// The status code of `GET path` on `addr`, or None.
fn http_status(addr: SocketAddrV4, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_whitespace().nth(1)?.parse().ok()
}
