//! The goals of docs/benchmarks.md, checked against what the sections measured.

use crate::import::Import;
use crate::memory::Big;
use crate::stats::{ms, secs};
use serde_json::Value;

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

/// The goals of issues 11 and 12, from what their sections wrote into the report; a section that
/// did not run gives no row.
pub fn section_goals(report: &serde_json::Map<String, Value>) -> Vec<Goal> {
    let mut out = Vec::new();
    if let Some(f) = report.get("formats").filter(|f| f["measured"] == true) {
        let (seed, mixed, big) = crate::formats::rss(f);
        let n = |k: &str| count(f[k]["registrations"].as_u64().unwrap_or(0) as usize);
        out.push(Goal {
            name: "RSS, six formats at once",
            target: "≤ 40 MB at 10k, per endpoint not above the seed estate's (+5%)".into(),
            measured: format!(
                "{} at {} in six formats, {} at {} seed only (same run, same shape; under six prefixes {}), {} at {} in six formats; {} KiB per added endpoint",
                mib(mixed),
                n("mixed"),
                mib(seed),
                n("seed"),
                mib(f["summary"]["seed_six_prefixes_vm_hwm_mib"].as_f64()),
                mib(big),
                n("mixed_big"),
                f["summary"]["kib_per_added_endpoint_mixed_to_big"]
            ),
            met: match (seed, mixed) {
                (Some(s), Some(m)) => Some(m <= 40.0 && m <= s * 1.05),
                _ => None,
            },
        });
    }
    if let Some(h) = report.get("health").filter(|h| h["measured"] == true) {
        let goal = h["goal_ms"].as_f64().unwrap_or(0.0);
        let p99 = |k: &str| h[k]["p99_ms"].as_f64();
        let missed = h["missed"].as_u64().unwrap_or(0);
        out.push(Goal {
            name: "health: detection",
            target: "p99 ≤ 2 × interval + 1 s, both ways".into(),
            measured: format!(
                "NOT_SERVING → not ready p50 {} p99 {}; SERVING → ready p50 {} p99 {} (interval {} ms, goal {goal} ms{})",
                ms(h["not_serving_to_not_ready"]["p50_ms"].as_f64()),
                ms(p99("not_serving_to_not_ready")),
                ms(h["serving_to_ready"]["p50_ms"].as_f64()),
                ms(p99("serving_to_ready")),
                h["interval_ms"],
                if missed > 0 { format!(", {missed} missed") } else { String::new() }
            ),
            met: match (p99("not_serving_to_not_ready"), p99("serving_to_ready")) {
                (Some(a), Some(b)) => Some(missed == 0 && a <= goal && b <= goal),
                _ => None,
            },
        });
        let writes = h["slice_writes_audit"].as_u64().unwrap_or(0);
        let changes = h["state_changes"].as_u64().unwrap_or(0);
        out.push(Goal {
            name: "health: writes per change of state",
            target: "1.0 (and none while states hold)".into(),
            measured: format!(
                "{:.2} ({writes} EndpointSlice writes in the audit log / {changes} changes; the bridge's metric: {})",
                writes as f64 / changes.max(1) as f64,
                h["slice_writes_metric"]
            ),
            met: (changes > 0).then_some(writes == changes),
        });
    }
    if let Some(s) = report.get("sources").filter(|s| s["measured"] == true) {
        let p = |k: &str, q: &str| s[k][q].as_f64();
        // Within noise: at most 1.5 × the figure with both answering, plus 2 ms.
        let within = |q: &str| match (
            p("both_answering", q),
            p("other_frozen", q),
            p("other_seen_down", q),
        ) {
            (Some(b), Some(f), Some(d)) => Some(f <= b * 1.5 + 2.0 && d <= b * 1.5 + 2.0),
            _ => None,
        };
        out.push(Goal {
            name: "two registries, one frozen",
            target: "the other's propagation p50/p99 unchanged (≤ 1.5× + 2 ms)".into(),
            measured: format!(
                "PUT → Service p50/p99: {}/{} ms both answering, {}/{} ms the other frozen, {}/{} ms the other seen down",
                s["both_answering"]["p50_ms"],
                s["both_answering"]["p99_ms"],
                s["other_frozen"]["p50_ms"],
                s["other_frozen"]["p99_ms"],
                s["other_seen_down"]["p50_ms"],
                s["other_seen_down"]["p99_ms"]
            ),
            met: match (within("p50_ms"), within("p99_ms")) {
                (Some(a), Some(b)) => Some(a && b),
                _ => None,
            },
        });
    }
    if let Some(s) = report.get("shards").filter(|s| s["measured"] == true) {
        let ratio = s["ratio"].as_f64();
        out.push(Goal {
            name: "sharded: every object in place",
            target: "3 replicas, 3 buckets ≤ 0.5 × 1 replica".into(),
            measured: format!(
                "{} registrations: {} s with 1 replica, {} s with 3 ({}×); the apiserver's floor, the same objects applied {} at a time by the harness: {} s ({}× one replica)",
                count(s["registrations"].as_u64().unwrap_or(0) as usize),
                s["one_replica_in_place_s"],
                s["three_replicas_in_place_s"],
                s["ratio"],
                s["apiserver_floor"]["in_flight"],
                s["apiserver_floor"]["in_place_s"],
                match (
                    s["apiserver_floor"]["in_place_s"].as_f64(),
                    s["one_replica_in_place_s"].as_f64()
                ) {
                    (Some(f), Some(o)) if o > 0.0 => format!("{:.2}", f / o),
                    _ => "-".into(),
                }
            ),
            met: ratio.map(|r| r <= 0.5),
        });
        let h = &s["handoff"];
        let p99 = h["handoff_ms"]["p99_ms"].as_f64();
        let lease_ms = h["lease_duration_s"].as_f64().unwrap_or(0.0) * 1e3;
        let bad = h["writes_without_the_bucket"].as_u64();
        out.push(Goal {
            name: "sharded: handoff after kill -9",
            target: "p99 ≤ Lease duration + 1 s, 0 objects written by two replicas".into(),
            measured: format!(
                "{} kills, Lease {} s: p50 {} ms, p99 {} ms; {} of {} object writes by a replica not holding the bucket",
                h["kills"],
                h["lease_duration_s"],
                h["handoff_ms"]["p50_ms"],
                h["handoff_ms"]["p99_ms"],
                h["writes_without_the_bucket"],
                h["object_writes_checked"]
            ),
            met: match (p99, bad) {
                (Some(p), Some(b)) => Some(p <= lease_ms + 1000.0 && b == 0 && h["converged"] == true),
                _ => None,
            },
        });
    }
    if let Some(s) = report.get("health_scale").filter(|s| s["measured"] == true) {
        let cpu = s["bridge_cpu_per_s_on"].as_f64();
        let added = s["vm_hwm_mib_added"].as_f64();
        out.push(Goal {
            name: "health: prober at scale",
            target: "≤ 0.5 CPU, ≤ 20 MB more RSS than the prober off".into(),
            measured: format!(
                "{} endpoints every {} ms: {} CPU (prober off: {}), VmHWM {} MiB ({} MiB more); health server {} CPU",
                count(s["endpoints"].as_u64().unwrap_or(0) as usize),
                s["interval_ms"],
                s["bridge_cpu_per_s_on"],
                s["bridge_cpu_per_s_off"],
                s["prober_on"]["vm_hwm_mib"],
                s["vm_hwm_mib_added"],
                s["server_cpu_per_s"]
            ),
            met: match (cpu, added) {
                (Some(c), Some(a)) => Some(c <= 0.5 && a <= 20.0),
                _ => None,
            },
        });
    }
    out
}

fn mib(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} MiB"))
}
