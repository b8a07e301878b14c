//! The node's place on the machine: namespaces of its own, one link to the host, and relays.
//!
//! The node (containerd, kubelet, kube-proxy, CoreDNS and every pod) runs in a network, PID and
//! mount namespace created for it, under one `unshare` process. Nothing it does reaches the
//! machine's own network set-up (kube-proxy's iptables rules, the pod bridge, sysctls), two nodes
//! (two test binaries, two checkouts) never collide, and when the test process exits the kernel
//! ends every process of the PID namespace (containers included) and frees the network namespace
//! with its link: nothing to clean up, even after a crash.
//!
//! The node reaches the host over one veth pair on a /30 of 10.250.0.0/16: the host side is
//! `10.250.I.1`, the node side `10.250.I.2` (the node's InternalIP). The apiserver and etcd listen
//! on the host's loopback only, which a pod cannot reach; a [`Relay`] on the host side of the link
//! forwards a port to them, byte for byte.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The node's link to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Link {
    /// The third octet: the link is 10.250.`index`.0/30.
    pub index: u8,
}

impl Link {
    /// The host side: what the node and its pods dial to reach the host (through relays).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.index, 1)
    }

    /// The node side: the node's InternalIP.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 250, self.index, 2)
    }

    /// The host side's interface name.
    pub fn host_interface(&self) -> String {
        format!("ebn-{}", self.index)
    }
}

/// The comment on the node's guard rule (see [`create_link`]).
pub const GUARD_COMMENT: &str = "etcd-bridge-testbed: nothing forwarded leaves the machine";

/// Creates the link between the host and the network namespace of process `pid`, under a lock so
/// that two nodes starting together pick different /30s. Inside, the node side is `eth0` with the
/// default route through the host, and IP forwarding is on (the node routes its pods).
///
/// The guard: what the node forwards to the host must be for the host's side of the link (the
/// relays). A pod's packet for anything else would take the default route, e.g. one for a
/// ClusterIP kube-proxy has no rule for (a Service just deleted, or not yet programmed: kube-proxy's
/// iptables mode does not reject those), and leave the machine if the host forwarded it. The node
/// refuses it instead, so the pod sees "connection refused" at once.
///
/// The node's ICMP errors are not rate-limited (this namespace's `icmp_ratelimit`): the kernel's
/// default lets 6 through to a pod, then one a second, so a client retrying a Service that
/// kube-proxy still rejects (no endpoints yet) would see its connections hang instead of refused,
/// and the data-plane benchmark would measure its retry timeout.
pub fn create_link(pid: u32) -> Result<Link, String> {
    // The pick and the creation in one shell under flock(1): no two nodes get the same index.
    let script = format!(
        r#"set -e
for i in $(seq 0 255); do
  ip -4 -o addr show | grep -q " 10\.250\.$i\." && continue
  ip link add ebn-$i type veth peer name eth0 netns {pid}
  ip addr add 10.250.$i.1/30 dev ebn-$i
  ip link set ebn-$i up
  echo $i
  exit 0
done
echo "no free /30 in 10.250.0.0/16" >&2
exit 1"#
    );
    let lock = std::env::temp_dir().join("etcd-bridge-node-link.lock");
    let index: u8 = run(Command::new("flock").arg(&lock).args(["sh", "-c", &script]))?
        .trim()
        .parse()
        .map_err(|e| format!("link index: {e}"))?;
    let link = Link { index };
    let inside = format!(
        "set -e
ip link set lo up
ip addr add {node}/30 dev eth0
ip link set eth0 up
ip route add default via {host}
echo 1 > /proc/sys/net/ipv4/ip_forward
echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables
echo 0 > /proc/sys/net/ipv4/icmp_ratelimit
iptables -A FORWARD -o eth0 ! -d {host} -m comment --comment '{guard}' -j REJECT",
        node = link.node_ip(),
        host = link.host_ip(),
        guard = GUARD_COMMENT,
    );
    run(Command::new("nsenter")
        .arg(format!("--target={pid}"))
        .args(["--net", "--", "sh", "-c", &inside]))?;
    Ok(link)
}

/// Runs a command; its stdout, or an error with its stderr.
pub fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("run {:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A TCP relay: connections to `listen` are carried byte for byte to `target`. The apiserver and
/// etcd keep listening on loopback only; the node and its pods reach them on the host side of the
/// node's link. TLS passes through untouched. Dropping it stops accepting.
pub struct Relay {
    pub listen: SocketAddrV4,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn start(listen: SocketAddrV4, target: SocketAddrV4) -> Result<Relay, String> {
        let listener = TcpListener::bind(listen).map_err(|e| format!("relay on {listen}: {e}"))?;
        let listen = match listener.local_addr() {
            Ok(std::net::SocketAddr::V4(a)) => a,
            _ => listen,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("relay {listen}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(client) = conn else { continue };
                    let Ok(server) =
                        TcpStream::connect_timeout(&target.into(), Duration::from_secs(5))
                    else {
                        // The target is down (e.g. a test stopped it): the client sees a reset,
                        // as it would dialling the target itself.
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    pipe(&client, &server);
                    pipe(&server, &client);
                }
            })
            .map_err(|e| format!("relay thread: {e}"))?;
        Ok(Relay { listen, stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.listen.into(), Duration::from_millis(200));
    }
}

/// Copies `from` to `to` on a thread of its own, then half-closes `to`.
fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let _ = std::thread::Builder::new()
        .name("relay pipe".into())
        .spawn(move || {
            let mut buf = [0u8; 16 * 1024];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = to.shutdown(Shutdown::Write);
            let _ = from.shutdown(Shutdown::Read);
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_is_a_30_with_the_host_first_and_the_node_second() {
        let l = Link { index: 7 };
        assert_eq!(l.host_ip(), Ipv4Addr::new(10, 250, 7, 1));
        assert_eq!(l.node_ip(), Ipv4Addr::new(10, 250, 7, 2));
        assert_eq!(l.host_interface(), "ebn-7");
    }

    #[test]
    fn a_relay_carries_bytes_both_ways() {
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = match echo.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        std::thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf.map(|b| b.to_ascii_uppercase())).unwrap();
        });
        let relay = Relay::start(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), target).unwrap();
        let mut c = TcpStream::connect(relay.listen).unwrap();
        c.write_all(b"hello").unwrap();
        let mut got = String::new();
        c.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HELLO");
    }
}
