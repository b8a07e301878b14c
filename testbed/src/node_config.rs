//! The node's configuration files, as pure functions of where things are: containerd's config,
//! the CNI conflist, the KubeletConfiguration, the KubeProxyConfiguration, CoreDNS's Corefile and
//! the kubeconfig the node's components use. The I/O (writing them, starting the processes) is in
//! `node.rs`; what each setting is for is said here, beside it.

use std::net::Ipv4Addr;
use std::path::Path;

/// The node's name (one node per control plane, so it needs no uniqueness).
pub const NODE_NAME: &str = "testbed-node";
/// The pod network, on a bridge inside the node's network namespace.
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The ClusterIP of `kube-system/kube-dns`: inside the apiserver's service range (10.0.0.0/24).
pub const DNS_SERVICE_IP: &str = "10.0.0.10";
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Where Debian's containernetworking-plugins puts the plugins.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Debian's runc.
pub const RUNC: &str = "/usr/sbin/runc";

/// containerd 1.6's config (version 2): everything under `dir`, so the machine's containerd
/// defaults (/var/lib/containerd, /run/containerd/containerd.sock, /etc/containerd) are never
/// read or written.
pub fn containerd_toml(
    dir: &Path,
    socket: &Path,
    cni_conf_dir: &Path,
    pause_image: &str,
) -> String {
    let d = dir.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
# Only the snapshotter the node uses; the others probe the machine and log noise.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{d}/containerd-ttrpc.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Imported here from hack/image.sh's archive; there is no registry to pull it from.
  sandbox_image = "{pause_image}"
  # Required here: without it every sandbox fails with "runc create failed: ... can't get final
  # child's PID from pipe: EOF", as the sandbox cannot lower its oom_score_adj below the node's.
  restrict_oom_score_adj = true
  enable_selinux = false
  # The kubelet and the apiserver reach the stream server only inside the node's namespace.
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{d}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{cni}"
    max_conf_num = 1
"#,
        socket = socket.display(),
        cni = cni_conf_dir.display(),
    )
}

/// The pod network: a bridge with host-local IPAM on [`POD_CIDR`], the node as the pods'
/// gateway, masquerade for traffic leaving the pod network (pods reach the apiserver and etcd
/// relays on the host side of the node's link), portmap for hostPorts.
pub fn cni_conflist(ipam_dir: &Path) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "testbed",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": ipam_dir.display().to_string()
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

/// Paths and addresses the kubelet needs.
pub struct KubeletPaths<'a> {
    pub containerd_socket: &'a Path,
    pub pod_logs: &'a Path,
    pub resolv_conf: &'a Path,
    pub node_ip: Ipv4Addr,
    /// The cgroup every pod's cgroups go under (`node_cgroups.rs`).
    pub cgroup_root: &'a str,
}

/// The KubeletConfiguration. The settings beyond the defaults are what this machine needs
/// (cgroup v1 controllers, no swap accounting, no systemd) or what a single-node test bed wants
/// (no evictions or image GC that could remove the imported images, anonymous auth for the
/// apiserver's logs/exec requests on the node's own link).
pub fn kubelet_config(p: &KubeletPaths) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# The machine has cgroup v1 controllers (and an empty cgroup2 mount): kubelet v1.35+ refuses v1
# unless told not to.
failCgroupV1: false
cgroupDriver: cgroupfs
# The QoS cgroup tree under the node's own cgroup, so that a dead node's leftovers can be found
# and removed (without it, containerd puts containers in the machine's /k8s.io); no node
# allocatable enforcement.
cgroupsPerQOS: true
cgroupRoot: {cgroup_root}
enforceNodeAllocatable: []
failSwapOn: false
localStorageCapacityIsolation: false
containerRuntimeEndpoint: unix://{socket}
address: {ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
clusterDNS: [{DNS_SERVICE_IP}]
clusterDomain: {CLUSTER_DOMAIN}
# Pods with dnsPolicy Default get this (empty) file: nothing outside the machine is ever asked.
resolvConf: {resolv}
podLogsDir: {logs}
# Nothing evicted, no image garbage-collected: the imported images cannot be pulled again.
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
rotateCertificates: false
serverTLSBootstrap: false
# Quicker status: the tests wait on Ready.
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
shutdownGracePeriod: 0s
"#,
        socket = p.containerd_socket.display(),
        ip = p.node_ip,
        resolv = p.resolv_conf.display(),
        logs = p.pod_logs.display(),
        cgroup_root = p.cgroup_root,
    )
}

/// The port of kube-proxy's `/metrics`, on the node's address.
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;

/// kube-proxy in iptables mode, in the node's network namespace. The conntrack settings are zero
/// so that it writes no sysctl shared with the machine. `/healthz` on `healthz` (the node's
/// address, so the test bed can ask from outside the node) says when its rules are synced;
/// `/metrics` is on the same address (the data-plane benchmark counts its syncs).
pub fn kube_proxy_config(kubeconfig: &Path, healthz: std::net::SocketAddrV4) -> String {
    format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kc}
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
# NodePorts on the node's own address only.
nodePortAddresses: [primary]
bindAddress: 0.0.0.0
healthzBindAddress: {healthz}
metricsBindAddress: {metrics}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
# kube-proxy's default, said aloud (a zero minSyncPeriod is read as unset and becomes 1s): at
# least a second from the end of one sync to the start of the next. A new Service's first sync
# comes at once; the one for its endpoints, a second later: so does its ClusterIP, as on a default
# node.
iptables:
  syncPeriod: 30s
  minSyncPeriod: 1s
"#,
        kc = kubeconfig.display(),
        metrics = std::net::SocketAddrV4::new(*healthz.ip(), KUBE_PROXY_METRICS_PORT),
    )
}

/// CoreDNS serving [`CLUSTER_DOMAIN`] (and reverse lookups) from the apiserver; no `forward`, so
/// a name outside the cluster is never sent anywhere. `ready` answers on `listen:ready_port` (the
/// node's address, so the test bed can ask from outside the node) once the kubernetes plugin has
/// synced.
pub fn corefile(listen: Ipv4Addr, kubeconfig: &Path, ready_port: u16) -> String {
    format!(
        r#".:53 {{
    bind {listen}
    errors
    ready {listen}:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kc} testbed
        pods insecure
        ttl 5
    }}
}}
"#,
        kc = kubeconfig.display()
    )
}

/// A kubeconfig for the node's components (kubelet, kube-proxy, CoreDNS): the admin certificate,
/// through the relay at `server`. The apiserver's certificate names `localhost`, not the relay's
/// address, so TLS checks that name.
pub fn node_kubeconfig(server: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"apiVersion: v1
kind: Config
clusters:
- name: testbed
  cluster:
    server: {server}
    certificate-authority: {ca}
    tls-server-name: localhost
users:
- name: node
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: testbed
  context:
    cluster: testbed
    user: node
current-context: testbed
"#,
        ca = ca.display(),
        cert = cert.display(),
        key = key.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn containerd_keeps_everything_under_its_own_directory() {
        let t = containerd_toml(
            Path::new("/tmp/n/containerd"),
            Path::new("/tmp/n/containerd.sock"),
            Path::new("/tmp/n/cni"),
            "docker.io/local/pause:1",
        );
        assert!(t.contains("restrict_oom_score_adj = true"));
        assert!(t.contains(r#"sandbox_image = "docker.io/local/pause:1""#));
        for line in t.lines().filter(|l| l.contains('"') && l.contains('/')) {
            let paths: Vec<&str> = line
                .split('"')
                .filter(|s| s.starts_with('/'))
                .collect::<Vec<_>>();
            for p in paths {
                assert!(
                    p.starts_with("/tmp/n/") || p == RUNC || p == CNI_BIN_DIR,
                    "{p} is outside the node's directory"
                );
            }
        }
        assert!(!t.contains("/var/lib/containerd") && !t.contains("/run/containerd"));
    }

    #[test]
    fn the_conflist_is_a_bridge_on_the_pod_cidr_with_its_own_ipam_store() {
        let v: serde_json::Value =
            serde_json::from_str(&cni_conflist(Path::new("/tmp/n/ipam"))).unwrap();
        let bridge = &v["plugins"][0];
        assert_eq!(bridge["type"], "bridge");
        assert_eq!(bridge["ipam"]["ranges"][0][0]["subnet"], POD_CIDR);
        assert_eq!(bridge["ipam"]["dataDir"], "/tmp/n/ipam");
        assert_eq!(v["plugins"][1]["type"], "portmap");
    }

    #[test]
    fn the_kubelet_listens_on_the_node_ip_and_points_pods_at_cluster_dns() {
        let sock = PathBuf::from("/tmp/n/containerd.sock");
        let c = kubelet_config(&KubeletPaths {
            containerd_socket: &sock,
            pod_logs: Path::new("/tmp/n/pods"),
            resolv_conf: Path::new("/tmp/n/resolv.conf"),
            node_ip: Ipv4Addr::new(10, 250, 0, 2),
            cgroup_root: "/etcd-bridge-testbed/1-shared-0",
        });
        assert!(c.contains("address: 10.250.0.2\n"));
        assert!(c.contains("containerRuntimeEndpoint: unix:///tmp/n/containerd.sock\n"));
        assert!(c.contains(&format!("clusterDNS: [{DNS_SERVICE_IP}]")));
        assert!(c.contains("failCgroupV1: false"));
        assert!(c.contains("cgroupRoot: /etcd-bridge-testbed/1-shared-0\n"));
    }

    #[test]
    fn coredns_serves_the_cluster_domain_and_forwards_nothing() {
        let c = corefile(Ipv4Addr::new(10, 250, 0, 2), Path::new("/k"), 8181);
        assert!(c.contains("kubernetes cluster.local"));
        assert!(c.contains("kubeconfig /k testbed"));
        assert!(!c.contains("forward"), "no name leaves the machine");
    }
}
