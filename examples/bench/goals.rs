//! The goals of docs/benchmarks.md, checked against what the sections measured.

use crate::import::Import;
use crate::memory::Big;
use crate::stats::{ms, secs};

pub struct Goal {
    pub name: &'static str,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// 10000 → "10k", 500 → "500".
pub fn count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

pub fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

pub fn goals(i: &Import, big: &Big) -> Vec<Goal> {
    let floor = i
        .floor_etcd
        .p50()
        .zip(i.floor_apply.p50())
        .map(|(a, b)| a + b);
    let p50 = i.prop.p50();
    let p99 = i.prop.p99();
    let prop_ok = i.prop.missed == 0;
    let rss_100k = match (big.rss, big.rss_restart) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    vec![
        Goal {
            name: "propagation p50",
            target: "≤ 1.5 × floor, and ≤ the mirroring controller's p50".into(),
            measured: format!(
                "{} (floor {} = etcd {} + apply {}; 1.5 × floor {}; peer {})",
                ms(p50),
                ms(floor),
                ms(i.floor_etcd.p50()),
                ms(i.floor_apply.p50()),
                ms(floor.map(|f| 1.5 * f)),
                ms(i.peer_p50)
            ),
            met: match (p50, floor, i.peer_p50) {
                (Some(p), Some(f), Some(peer)) => Some(prop_ok && p <= 1.5 * f && p <= peer),
                _ => None,
            },
        },
        Goal {
            name: "propagation p99",
            target: "≤ 50 ms".into(),
            measured: format!(
                "{} (max {}{})",
                ms(p99),
                ms(i.prop.max()),
                if i.prop.missed > 0 {
                    format!(", {} missed", i.prop.missed)
                } else {
                    String::new()
                }
            ),
            met: p99.map(|p| prop_ok && p <= 50.0),
        },
        Goal {
            name: "writes per isolated change",
            target: "1".into(),
            measured: format!(
                "{:.2} ({} writes / {} changes{})",
                i.isolated_writes as f64 / i.isolated_changes as f64,
                i.isolated_writes,
                i.isolated_changes,
                if i.isolated_missed > 0 {
                    format!(", {} missed", i.isolated_missed)
                } else {
                    String::new()
                }
            ),
            met: Some(i.isolated_writes == i.isolated_changes && i.isolated_missed == 0),
        },
        Goal {
            name: "burst",
            target: "converged ≤ 3 s, writes ≤ 2 × slices touched".into(),
            measured: format!(
                "converged in {}, {} writes for {} slices touched ({:.2} per slice)",
                secs(i.burst_converged),
                i.burst_writes,
                i.burst_slices,
                i.burst_writes as f64 / i.burst_slices.max(1) as f64
            ),
            met: Some(
                i.burst_converged.is_some_and(|d| d.as_secs_f64() <= 3.0)
                    && i.burst_writes <= 2 * i.burst_slices,
            ),
        },
        Goal {
            name: "cold start from empty",
            target: "≤ 10 s".into(),
            measured: secs(i.cold),
            met: Some(i.cold.is_some_and(|d| d.as_secs_f64() <= 10.0)),
        },
        Goal {
            name: "restart, every object right",
            target: "0 writes, ready ≤ 2 s".into(),
            measured: format!(
                "{} writes, ready in {}",
                i.restart_writes,
                secs(i.restart_ready)
            ),
            met: Some(
                i.restart_writes == 0 && i.restart_ready.is_some_and(|d| d.as_secs_f64() <= 2.0),
            ),
        },
        Goal {
            name: "RSS",
            target: "≤ 40 MB at 10k, ≤ 200 MB at 100k".into(),
            measured: format!(
                "{:.1} MiB at {}, {} at {}{}",
                i.rss_10k.unwrap_or(f64::NAN),
                count(i.registrations),
                rss_100k.map_or("-".into(), |v| format!("{v:.1} MiB")),
                count(big.registrations),
                if big.rss_restart.is_none() {
                    " (restart not ready: peak of the incremental load only)"
                } else {
                    ""
                }
            ),
            met: match (i.rss_10k, rss_100k) {
                // VmHWM is in KiB; the goal's MB read as MiB is the stricter reading.
                (Some(a), Some(b)) => Some(a <= 40.0 && b <= 200.0),
                _ => None,
            },
        },
    ]
}
