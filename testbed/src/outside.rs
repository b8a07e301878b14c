//! A machine outside the cluster, next to the node: where a seed-style gRPC server runs, as a
//! service registered in etcd by its own code would, not managed by Kubernetes.
//!
//! It is a network namespace of its own (one `unshare` process holds it) with two links and no
//! default route, so it can send to nothing but its two neighbours:
//!
//! ```text
//!   host (etcd relay on 10.252.I.1) ──ebo-I── host0 10.252.I.2 ┐
//!                                                               ├ outside (servers on 10.253.I.2)
//!   node (10.253.I.1, routes its pods) ──out-I── node0 10.253.I.2 ┘
//! ```
//!
//! - the node link is the data plane: a pod's packet for 10.253.I.2 leaves the pod network through
//!   the node (its pod CIDR is masqueraded to 10.253.I.1, and routed back by the outside's route
//!   to the pod CIDR otherwise), directly or after kube-proxy's DNAT of a ClusterIP;
//! - the host link carries the server's own traffic to etcd, through a [`Relay`] on the host's side
//!   (etcd listens on the host's loopback only), and, once [`Outside::route_from_host`] is called,
//!   a host process's traffic to the servers (the bridge's health probes).
//!
//! Nothing is changed on the host but one veth pair (its IP forwarding stays as it is; with
//! [`Outside::route_from_host`], a route over it and a blackhole for [`SERVERS_RANGE`]) and in the
//! node but the other. Dropping an [`Outside`] deletes both links; when the test process dies
//! instead, the watchdogs end the processes in the namespace and the kernel frees it with its links.

use crate::node::Node;
use crate::node_config::POD_CIDR;
use crate::node_network::{Relay, run};
use crate::process::{Proc, wait_until};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Every outside's server address ([`OutsidePlan::ip`]) is in this range: nothing on the host
/// routes it but [`Outside::route_from_host`].
pub const SERVERS_RANGE: &str = "10.253.0.0/16";

/// The addresses of the outside machine number `index`: two /30s, one per link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsidePlan {
    pub index: u8,
}

impl OutsidePlan {
    /// The host's side of the host link: where the relays listen.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 252, self.index, 1)
    }
    /// The outside's address on the host link.
    pub fn host_link_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 252, self.index, 2)
    }
    /// The node's address on the node link: the outside's way back to the pods.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 253, self.index, 1)
    }
    /// The outside's address on the node link: where its servers listen, and what they register.
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 253, self.index, 2)
    }
    /// The host link's interface on the host.
    pub fn host_interface(&self) -> String {
        format!("ebo-{}", self.index)
    }
    /// The node link's interface in the node.
    pub fn node_interface(&self) -> String {
        format!("out-{}", self.index)
    }

    /// The host's route to the servers' address, through the host link: `ip route replace
    /// ARGS...` on the host.
    pub fn host_route(&self) -> [String; 5] {
        [
            format!("{}/32", self.ip()),
            "via".into(),
            self.host_link_ip().to_string(),
            "dev".into(),
            self.host_interface(),
        ]
    }

    /// The set-up inside the outside's namespace: both links up, a route to the pods through the
    /// node, and no default route.
    pub fn inside_script(&self) -> String {
        format!(
            "set -e
ip link set lo up
ip addr add {host_link}/30 dev host0
ip link set host0 up
ip addr add {ip}/30 dev node0
ip link set node0 up
ip route add {POD_CIDR} via {node}",
            host_link = self.host_link_ip(),
            ip = self.ip(),
            node = self.node_ip(),
        )
    }

    /// The set-up of the node's end of the node link, inside the node's network namespace.
    pub fn node_script(&self) -> String {
        format!(
            "set -e
ip addr add {node}/30 dev {dev}
ip link set {dev} up",
            node = self.node_ip(),
            dev = self.node_interface(),
        )
    }
}

/// A running outside machine. Dropping it removes its links and ends its namespace.
pub struct Outside {
    pub plan: OutsidePlan,
    pub dir: PathBuf,
    node_pid: u32,
    relays: Vec<Relay>,
    /// Holds the namespace; dropped last.
    holder: Proc,
}

impl Outside {
    /// Creates the namespace and both links, beside `node`; logs go under `dir`.
    pub fn start(node: &Node, dir: &Path) -> Result<Outside, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let log = dir.join("outside.log");
        // `unshare --net` execs `sleep` in the new namespace: the holder's pid is the namespace's.
        let mut holder = Proc::spawn(
            "outside namespace",
            Path::new("/usr/bin/unshare"),
            &["--net", "--", "sleep", "infinity"].map(String::from),
            &log,
        )?;
        let pid = holder.pid();
        let own_ns = std::fs::read_link("/proc/self/ns/net").ok();
        wait_until(
            "the outside's network namespace",
            Duration::from_secs(5),
            &mut holder,
            || {
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
                ns.is_some() && ns != own_ns
            },
        )?;
        let plan = create_host_link(pid)?;
        let node_pid = node.pid();
        let outside = Outside {
            plan,
            dir: dir.to_path_buf(),
            node_pid,
            relays: Vec::new(),
            holder,
        };
        // The node link, both ends created straight into their namespaces.
        run(Command::new("ip").args([
            "link",
            "add",
            &plan.node_interface(),
            "netns",
            &node_pid.to_string(),
            "type",
            "veth",
            "peer",
            "name",
            "node0",
            "netns",
            &pid.to_string(),
        ]))?;
        run(nsenter(node_pid).args(["sh", "-c", &plan.node_script()]))?;
        run(nsenter(pid).args(["sh", "-c", &plan.inside_script()]))?;
        Ok(outside)
    }

    /// A relay from the host's side of the host link to `127.0.0.1:port` (e.g. etcd); returns the
    /// address the outside's processes dial.
    pub fn expose(&mut self, port: u16) -> Result<SocketAddrV4, String> {
        let relay = Relay::start(
            SocketAddrV4::new(self.plan.host_ip(), 0),
            SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
        )?;
        let addr = relay.listen;
        self.relays.push(relay);
        Ok(addr)
    }

    /// Starts `program args...` in the outside's network namespace (the rest of its view, files
    /// and processes, is the host's), logging to `{dir}/{name}.log`.
    pub fn spawn(&self, name: &str, program: &Path, args: &[String]) -> Result<Proc, String> {
        // nsenter execs the program: the Proc's pid is the program's own, so signals reach it.
        let mut all = vec![
            format!("--target={}", self.holder.pid()),
            "--net".into(),
            "--".into(),
            program.display().to_string(),
        ];
        all.extend_from_slice(args);
        Proc::spawn(
            name,
            Path::new("/usr/bin/nsenter"),
            &all,
            &self.dir.join(format!("{name}.log")),
        )
    }

    /// Routes the servers' address from the host, through the host link: for a process on the
    /// host that dials what the servers registered (the bridge's prober). The route goes with the
    /// link when the outside is dropped; [`SERVERS_RANGE`] is blackholed on the host first, so a
    /// process that outlives the outside (a bridge still probing) never sends there through the
    /// default route.
    pub fn route_from_host(&self) -> Result<(), String> {
        crate::netns::ip(&["route", "replace", "blackhole", SERVERS_RANGE])
            .map_err(|e| format!("blackholing {SERVERS_RANGE} on the host: {e}"))?;
        let route = self.plan.host_route();
        let mut args = vec!["route", "replace"];
        args.extend(route.iter().map(String::as_str));
        crate::netns::ip(&args)
    }

    /// A command run in the outside's network namespace, e.g. `ip route`.
    pub fn command(&self, program: &str) -> Command {
        let mut c = nsenter(self.holder.pid());
        c.arg(program);
        c
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.relays.clear();
        // Deleting one end of a veth pair deletes the other. Errors are the links already gone
        // (with the node, or with the namespace).
        let _ = run(Command::new("ip").args(["link", "del", &self.plan.host_interface()]));
        let _ =
            run(nsenter(self.node_pid).args(["ip", "link", "del", &self.plan.node_interface()]));
        self.holder.kill();
    }
}

fn nsenter(pid: u32) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={pid}")).args(["--net", "--"]);
    c
}

/// Creates the host link into the namespace of `pid`, picking a free 10.252.I.0/30 under a lock so
/// that two tests (or two checkouts) starting together get different ones.
fn create_host_link(pid: u32) -> Result<OutsidePlan, String> {
    let script = format!(
        r#"set -e
for i in $(seq 0 255); do
  ip -4 -o addr show | grep -q " 10\.252\.$i\." && continue
  ip link show ebo-$i >/dev/null 2>&1 && continue
  ip link add ebo-$i type veth peer name host0 netns {pid}
  ip addr add 10.252.$i.1/30 dev ebo-$i
  ip link set ebo-$i up
  echo $i
  exit 0
done
echo "no free /30 in 10.252.0.0/16" >&2
exit 1"#
    );
    let lock = std::env::temp_dir().join("etcd-bridge-outside-link.lock");
    let index: u8 = run(Command::new("flock").arg(&lock).args(["sh", "-c", &script]))?
        .trim()
        .parse()
        .map_err(|e| format!("outside link index: {e}"))?;
    Ok(OutsidePlan { index })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_links_are_30s_with_the_neighbour_first() {
        let p = OutsidePlan { index: 3 };
        assert_eq!(p.host_ip(), Ipv4Addr::new(10, 252, 3, 1));
        assert_eq!(p.host_link_ip(), Ipv4Addr::new(10, 252, 3, 2));
        assert_eq!(p.node_ip(), Ipv4Addr::new(10, 253, 3, 1));
        assert_eq!(p.ip(), Ipv4Addr::new(10, 253, 3, 2));
        assert_eq!(p.host_interface(), "ebo-3");
        assert_eq!(p.node_interface(), "out-3");
    }

    #[test]
    fn the_outside_routes_only_to_its_neighbours_and_the_pods() {
        let s = OutsidePlan { index: 3 }.inside_script();
        assert!(s.contains("ip addr add 10.252.3.2/30 dev host0"));
        assert!(s.contains("ip addr add 10.253.3.2/30 dev node0"));
        assert!(s.contains(&format!("ip route add {POD_CIDR} via 10.253.3.1")));
        assert!(!s.contains("default"), "no default route: {s}");
    }

    #[test]
    fn the_host_reaches_the_servers_only_through_the_host_link() {
        let r = OutsidePlan { index: 3 }.host_route().join(" ");
        assert_eq!(r, "10.253.3.2/32 via 10.252.3.2 dev ebo-3");
        for index in [0, 255] {
            let ip = OutsidePlan { index }.ip().to_string();
            assert!(ip.starts_with("10.253."), "{ip} outside {SERVERS_RANGE}");
        }
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let p = OutsidePlan { index: 255 };
        assert!(p.host_interface().len() < 16 && p.node_interface().len() < 16);
    }
}
