//! The bridge under test, as its own process: start, readiness, metrics, memory, stop, log.

use crate::Ctx;
use crate::harness::{block, progress};
use etcd_bridge_testbed::TestBed;
use etcd_bridge_testbed::bridge::BridgeTarget;
use etcd_bridge_testbed::metrics;
use etcd_bridge_testbed::process::{Proc, free_port, http_get};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The label of everything the bridge writes.
pub const BRIDGE_OWNED: &str = "app.kubernetes.io/managed-by=etcd-bridge";

pub struct Bridge {
    pub proc: Proc,
    pub port: u16,
    pub spawned: Instant,
}

pub struct BridgeSpec<'a> {
    pub bin: &'a Path,
    pub bed: &'a TestBed,
    pub namespace: &'a str,
    pub prefix: &'a str,
    pub label: &'a str,
    pub extra: &'a [String],
}

impl Bridge {
    pub fn spawn(spec: &BridgeSpec) -> Bridge {
        let port = free_port();
        let log = spec.bed.dir.join(format!("bridge-{}.log", spec.label));
        let endpoint = spec.bed.registry.endpoint();
        let target = BridgeTarget {
            dir: &spec.bed.dir,
            etcd_endpoint: &endpoint,
            prefix: spec.prefix,
            namespace: spec.namespace,
            kubeconfig: &spec.bed.cluster.kubeconfig,
        };
        let mut args = target.run_args();
        args.push(format!("--listen=127.0.0.1:{port}"));
        args.push("--leader-election=false".into());
        // A flag in `extra` replaces the default of the same name (clap refuses a flag twice).
        let flag = |a: &str| a.split('=').next().unwrap_or_default().to_string();
        let given: Vec<String> = spec.extra.iter().map(|a| flag(a)).collect();
        args.retain(|a| !given.contains(&flag(a)));
        args.extend(spec.extra.iter().cloned());
        let spawned = Instant::now();
        let proc = block(|| Proc::spawn("etcd-bridge", spec.bin, &args, &log)).unwrap_or_else(
            |e| {
                panic!(
                    "{e} (build it first: cargo build --release --bin etcd-bridge, or pass --bridge)"
                )
            },
        );
        progress(&format!(
            "etcd-bridge {} (pid {}, log {})",
            args.join(" "),
            proc.pid(),
            log.display()
        ));
        Bridge {
            proc,
            port,
            spawned,
        }
    }

    /// GET a path of the bridge's HTTP server: (status, body).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let (port, path) = (self.port, path.to_string());
        tokio::task::spawn_blocking(move || http_get(port, &path))
            .await
            .ok()
            .flatten()
    }

    pub async fn is_ready(&self) -> bool {
        matches!(self.get("/readyz").await, Some((200, _)))
    }

    /// Waits for `/readyz` to say 200; returns the time from spawn.
    pub async fn ready(&mut self, timeout: Duration) -> Option<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_ready().await {
                return Some(self.spawned.elapsed());
            }
            self.check_alive();
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn check_alive(&mut self) {
        assert!(
            self.proc.is_running(),
            "etcd-bridge exited unexpectedly\n{}",
            self.proc.log_tail(60)
        );
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The sum of `etcd_bridge_api_writes_total` over every verb and kind.
    pub async fn api_writes(&self) -> Option<f64> {
        let text = self.metrics().await;
        (!text.is_empty()).then(|| metrics::sum(&text, "etcd_bridge_api_writes_total"))
    }

    /// Peak and current resident set size, in MiB (VmHWM, VmRSS of /proc/PID/status).
    pub fn rss_mib(&self) -> (Option<f64>, Option<f64>) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.proc.pid()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGTERM, SIGKILL after 10 s; returns how long the exit took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        block(|| self.proc.stop(Duration::from_secs(10)));
        t.elapsed()
    }

    pub fn log(&self) -> String {
        self.proc.full_log()
    }
}

/// Stops a bridge; one that ignores SIGTERM for 10 s is worth reporting.
pub fn stop_bridge(anomalies: &mut Vec<String>, bridge: &mut Bridge, what: &str) {
    let took = bridge.stop();
    if took >= Duration::from_millis(9_900) {
        anomalies.push(format!(
            "{what}: the bridge did not exit within 10 s of SIGTERM and was killed (log: {})",
            bridge.proc.log.display()
        ));
    } else {
        progress(&format!("{what}: stopped in {:.2} s", took.as_secs_f64()));
    }
}

pub fn note_log_warnings(ctx: &mut Ctx, what: &str, log: &str) {
    // Distinct messages (the text after the level and target, without the changing fields).
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for l in log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
    {
        let msg = l
            .split_once(": ")
            .map_or(l, |(_, m)| m)
            .split(" error=")
            .next()
            .unwrap_or_default();
        let msg: String = msg.chars().take(160).collect();
        *kinds.entry(msg).or_default() += 1;
    }
    for (msg, n) in kinds {
        ctx.anomalies
            .push(format!("{what}: {n}× in the bridge's log: {msg}"));
    }
}

/// Whether `help` lists the flag `name` (a whole word, not a prefix of a longer flag).
pub fn has_flag(help: &str, name: &str) -> bool {
    help.split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .any(|w| w == name)
}
