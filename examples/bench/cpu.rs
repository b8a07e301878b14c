//! CPU time per component, per phase (profile evidence on a shared 2-core machine).

use crate::bridge::Bridge;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Instant;

pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

pub fn cpu_secs(pid: u32, tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / tck)
}

/// The test bed's processes, found by their command lines (they all mention its directory).
pub fn components(dir: &Path) -> Vec<(String, u32)> {
    let dir = dir.to_string_lossy().to_string();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).to_string())
            .collect();
        if !args.iter().any(|a| a.contains(&dir)) {
            continue;
        }
        let exe = Path::new(&args[0])
            .file_name()
            .map(|f| f.to_string_lossy().to_string())
            .unwrap_or_default();
        let name = match exe.as_str() {
            "etcd" if args.iter().any(|a| a == "--name=registry") => "registry-etcd",
            "etcd" => "cluster-etcd",
            "kube-apiserver" => "kube-apiserver",
            "kube-controller-manager" => "kube-controller-manager",
            _ => continue,
        };
        found.push((name.to_string(), pid));
    }
    found.sort();
    found
}

/// CPU seconds of each component at one moment.
pub struct CpuMark {
    pub at: Instant,
    pub cpu: Vec<(String, Option<f64>)>,
}

pub struct Cpu {
    pub tck: f64,
    pub pids: Vec<(String, u32)>,
}

impl Cpu {
    pub fn mark(&self, bridge: Option<&Bridge>) -> CpuMark {
        let mut pids = self.pids.clone();
        pids.push(("bench".into(), std::process::id()));
        if let Some(b) = bridge {
            pids.push(("etcd-bridge".into(), b.proc.pid()));
        }
        CpuMark {
            at: Instant::now(),
            cpu: pids
                .into_iter()
                .map(|(n, p)| (n, cpu_secs(p, self.tck)))
                .collect(),
        }
    }

    pub fn since(&self, m: &CpuMark, bridge: Option<&Bridge>) -> Value {
        let now = self.mark(bridge);
        let wall = now.at.duration_since(m.at).as_secs_f64();
        let mut per = serde_json::Map::new();
        let mut total = 0.0;
        for (name, v) in &now.cpu {
            let before = m.cpu.iter().find(|(n, _)| n == name).and_then(|(_, v)| *v);
            // A bridge started during the phase counts from zero.
            if let Some(v) = v {
                let d = v - before.unwrap_or(0.0);
                total += d;
                per.insert(name.clone(), json!((d * 100.0).round() / 100.0));
            }
        }
        json!({
            "wall_s": (wall * 100.0).round() / 100.0,
            "cpu_s": per,
            "cpu_total_s": (total * 100.0).round() / 100.0,
            "cores_busy": if wall > 0.0 { json!((total / wall * 100.0).round() / 100.0) } else { Value::Null },
        })
    }
}
