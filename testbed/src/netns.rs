//! Addresses that belong to this machine, for servers the bridge may dial: a network namespace
//! joined to the host by a veth pair, with addresses the caller assigns inside it. The bridge
//! refuses loopback addresses in slices, and a registered address that nothing here owns would
//! send probes out of the machine: every address a health-check test or benchmark registers is
//! one of these.
//!
//! The namespace's name is the lock on its subnet (`ip netns add` fails if it exists), so
//! concurrent test binaries never share one. It is removed on drop: drop every process that may
//! dial its addresses (the bridge) before it, or they would route out through the default route.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// Runs `ip args...`; the error names the command and what it said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("run `ip {}`: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Every subnet [`Netns::create`] hands out. Each is blackholed on the host (`guard_reserved`):
/// while a namespace exists, its veth's route is more specific and wins; once it is gone, a
/// process that still dials its addresses (a bridge that outlived its test or benchmark) hits the
/// blackhole instead of the default route, so no probe ever leaves the machine.
pub const RESERVED: [&str; 2] = ["10.231.0.0/16", "10.232.0.0/13"];

/// Blackholes [`RESERVED`] on the host (idempotent; the routes stay, the ranges are the test
/// bed's).
pub fn guard_reserved() -> Result<(), String> {
    for net in RESERVED {
        ip(&["route", "replace", "blackhole", net])
            .map_err(|e| format!("blackholing the test bed's range {net}: {e}"))?;
    }
    Ok(())
}

/// A network namespace and its subnet: 10.231.N.0/24 for up to 240 servers, or 10.K.0.0/16
/// (K from 232 to 239) for up to 62,500.
pub struct Netns {
    pub name: String,
    host_if: String,
    peer_if: String,
    /// The subnet's first two or three octets.
    net: [u8; 3],
    wide: bool,
}

impl Netns {
    /// Creates a namespace with room for `servers` addresses.
    pub fn create(servers: u32) -> Result<Netns, String> {
        guard_reserved()?;
        let wide = servers > 240;
        if servers > 62_500 {
            return Err(format!("{servers} servers: at most 62,500 fit in a /16"));
        }
        let candidates: Vec<[u8; 3]> = match wide {
            false => (1..=250).map(|n| [10, 231, n]).collect(),
            true => (232..=239).map(|k| [10, k, 0]).collect(),
        };
        for net in candidates {
            let (subnet, id) = match wide {
                false => (format!("10.231.{}.0/24", net[2]), format!("{}", net[2])),
                true => (format!("10.{}.0.0/16", net[1]), format!("w{}", net[1])),
            };
            // Someone routes this subnet already (another run, or this machine's network).
            let routed = Command::new("ip")
                .args(["-4", "route", "show", "match", &subnet])
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .any(|l| !l.starts_with("default") && !l.starts_with("blackhole"))
                })
                .unwrap_or(true);
            if routed {
                continue;
            }
            let name = format!("ebh-{id}");
            match ip(&["netns", "add", &name]) {
                Ok(()) => {}
                Err(e) if e.contains("exists") => continue,
                Err(e) => return Err(format!("cannot create a network namespace: {e}")),
            }
            let ns = Netns {
                host_if: format!("ebh{id}h"),
                peer_if: format!("ebh{id}n"),
                name,
                net,
                wide,
            };
            ns.wire()
                .map_err(|e| format!("cannot wire network namespace {}: {e}", ns.name))?;
            return Ok(ns);
        }
        Err("no free subnet for a network namespace (10.231.1-250.0/24, 10.232-239.0.0/16)".into())
    }

    fn wire(&self) -> Result<(), String> {
        let (host, peer, ns) = (&self.host_if, &self.peer_if, &self.name);
        let cidr = format!("{}/{}", self.gateway(), if self.wide { 16 } else { 24 });
        ip(&["link", "add", host, "type", "veth", "peer", "name", peer])?;
        ip(&["link", "set", peer, "netns", ns])?;
        ip(&["addr", "add", &cidr, "dev", host])?;
        ip(&["link", "set", host, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
        ip(&["-n", ns, "link", "set", peer, "up"])
    }

    /// The host's address on the veth: the route the bridge's probes take.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.net;
        match self.wide {
            false => Ipv4Addr::new(a, b, c, 1),
            true => Ipv4Addr::new(a, b, 0, 1),
        }
    }

    /// The `i`th server address (assign it with [`Netns::assign`]).
    pub fn address(&self, i: u32) -> Ipv4Addr {
        let [a, b, c] = self.net;
        match self.wide {
            false => Ipv4Addr::new(a, b, c, 10 + i as u8),
            true => Ipv4Addr::new(a, b, 1 + (i / 250) as u8, 2 + (i % 250) as u8),
        }
    }

    /// Assigns server addresses `0..count` inside the namespace, in one `ip -batch`.
    pub fn assign(&self, count: u32) -> Result<Vec<Ipv4Addr>, String> {
        let limit = if self.wide { 62_500 } else { 240 };
        if count > limit {
            return Err(format!(
                "{count} addresses: this namespace has room for {limit}"
            ));
        }
        let len = if self.wide { 16 } else { 24 };
        let addrs: Vec<Ipv4Addr> = (0..count).map(|i| self.address(i)).collect();
        let mut batch = String::new();
        for a in &addrs {
            batch.push_str(&format!("addr add {a}/{len} dev {}\n", self.peer_if));
        }
        let mut child = Command::new("ip")
            .args(["-n", &self.name, "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run `ip -batch`: {e}"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(batch.as_bytes())
            .map_err(|e| format!("write to `ip -batch`: {e}"))?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "`ip -n {} -batch -` (addr add, {count} addresses) failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(addrs)
    }

    /// `ip` arguments that run `program args...` inside the namespace (for `Proc::spawn("ip",
    /// ..)`: `ip netns exec` execs the program, so the pid is the program's).
    pub fn exec_args(&self, program: &Path, args: &[String]) -> Vec<String> {
        let mut all = vec![
            "netns".to_string(),
            "exec".to_string(),
            self.name.clone(),
            program.display().to_string(),
        ];
        all.extend(args.iter().cloned());
        all
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting one end of the veth pair deletes both.
        for args in [
            vec!["link", "del", self.host_if.as_str()],
            vec!["netns", "del", self.name.as_str()],
        ] {
            if let Err(e) = ip(&args) {
                eprintln!("cleaning up: {e}");
            }
        }
    }
}

/// `tests/go/cmd/healthserver` (a gRPC server with the standard health service), built once per
/// source into `~/.cache/etcd-bridge/seedgo/health-{hash}/` (`ETCD_BRIDGE_CACHE` moves it).
pub fn healthserver() -> Result<&'static Path, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(build_healthserver)
        .as_deref()
        .map_err(Clone::clone)
}

fn build_healthserver() -> Result<PathBuf, String> {
    let src = crate::repo::path("tests/go");
    let mut h = std::hash::DefaultHasher::new();
    for f in ["cmd/healthserver/main.go", "go.mod", "go.sum"] {
        std::fs::read(src.join(f))
            .map_err(|e| format!("read tests/go/{f}: {e}"))?
            .hash(&mut h);
    }
    let cache = std::env::var_os("ETCD_BRIDGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/etcd-bridge")))
        .ok_or("neither ETCD_BRIDGE_CACHE nor HOME is set: nowhere to cache the Go binary")?;
    let out = cache
        .join("seedgo")
        .join(format!("health-{:016x}", h.finish()));
    let bin = out.join("healthserver");
    if bin.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    // A private name, renamed into place when complete: concurrent builds never see half a file.
    let tmp = bin.with_extension(format!("tmp{}", std::process::id()));
    let built = Command::new("go")
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(&tmp)
        .arg("./cmd/healthserver")
        .current_dir(&src)
        .output()
        .map_err(|e| format!("run `go build` (is Go installed and on PATH?): {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "go build ./cmd/healthserver in {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    std::fs::rename(&tmp, &bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route_to(addr: &str) -> String {
        let out = Command::new("ip")
            .args(["-4", "route", "get", addr])
            .output()
            .expect("run ip route get");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    #[test]
    fn an_address_of_a_namespace_that_is_gone_is_not_routed_off_the_machine() {
        let ns = Netns::create(10).expect("create a namespace");
        let addr = ns.address(0).to_string();
        ns.assign(1).expect("assign an address");
        let via_veth = route_to(&addr);
        assert!(via_veth.contains(&ns.host_if), "{via_veth}");
        drop(ns);
        let after = route_to(&addr);
        assert!(
            !after.contains(" via ")
                && (after.contains("unreachable")
                    || after.contains("blackhole")
                    || after.contains("Invalid")),
            "{addr} after its namespace went: {after}"
        );
        let wide = route_to("10.236.1.2");
        assert!(!wide.contains(" via "), "10.236.1.2: {wide}");
    }
}
