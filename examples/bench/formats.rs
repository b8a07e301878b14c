//! Issue 11: registrations in all six formats at once, in one bridge with six `--prefix=P=FORMAT`
//! prefixes. Three estates, each loaded into etcd before its bridge starts, each timed from the
//! bridge's spawn until the watch shows every Service and slice in place, with the bridge's peak
//! RSS after that:
//! - seed only, N × 6 registrations under one prefix: the baseline, in the same run and shape;
//! - seed only, N under each of six prefixes: what six prefixes cost, formats aside;
//! - the six formats, N each (the same total, about 10k): per-endpoint memory must not grow;
//! - the six formats, 10,000 each (60k).
//!
//! Every registration is unversioned (version `""` in kratos' and go-micro's values), so each
//! name is one Service and one slice in every format, as in the seed estate: the estates differ
//! only in the format layer.

use crate::Ctx;
use crate::audit::writes_json;
use crate::bridge::{BRIDGE_OWNED, Bridge, note_log_warnings, stop_bridge};
use crate::changes::{converge, create_namespace};
use crate::harness::{progress, step};
use crate::model::{fresh_ip, put_kvs};
use crate::shapes::{SIX, entry};
use crate::stats::{dur_json, r3, secs};
use crate::tracker::Tracker;
use etcd_bridge::format::Format;
use etcd_client::DeleteOptions;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};

/// Endpoints per Service, as in the import estate.
const PER_SERVICE: usize = 10;

struct Estate {
    label: &'static str,
    /// (prefix, format, registrations under it)
    prefixes: Vec<(String, Format, usize)>,
}

pub async fn section(ctx: &mut Ctx) -> Value {
    let (small, big) = (ctx.sz.formats_small, ctx.sz.formats_big);
    let six = |tag: &str, n: usize| -> Vec<(String, Format, usize)> {
        SIX.iter()
            .map(|f| (format!("/bench-fmt-{tag}/{}/", f.label()), *f, n))
            .collect()
    };
    let estates = [
        Estate {
            label: "seed",
            prefixes: vec![("/bench-fmt-seed/".into(), Format::Seed, small * SIX.len())],
        },
        // The control: the same six prefixes, all in the seed's format. What the formats add
        // is "mixed" over this; what six prefixes add is this over "seed".
        Estate {
            label: "seed-six",
            prefixes: (0..SIX.len())
                .map(|i| (format!("/bench-fmt-seed6/p{i}/"), Format::Seed, small))
                .collect(),
        },
        Estate {
            label: "mixed",
            prefixes: six("mixed", small),
        },
        Estate {
            label: "mixed-big",
            prefixes: six("big", big),
        },
    ];
    let mut results = serde_json::Map::new();
    for e in &estates {
        let r = estate(ctx, e).await;
        results.insert(e.label.replace('-', "_"), r);
    }
    let hwm = |k: &str| results[k]["vm_hwm_mib"].as_f64();
    let regs = |k: &str| results[k]["registrations"].as_f64().unwrap_or(0.0);
    let per_kib = |k: &str| hwm(k).map(|m| m * 1024.0 / regs(k));
    // What each endpoint beyond the small estate costs: the slope between the two mixed estates.
    let slope = match (hwm("mixed"), hwm("mixed_big")) {
        (Some(a), Some(b)) if regs("mixed_big") > regs("mixed") => {
            Some((b - a) * 1024.0 / (regs("mixed_big") - regs("mixed")))
        }
        _ => None,
    };
    let summary = json!({
        "seed_vm_hwm_mib": r3(hwm("seed")),
        "seed_six_prefixes_vm_hwm_mib": r3(hwm("seed_six")),
        "mixed_vm_hwm_mib": r3(hwm("mixed")),
        "mixed_big_vm_hwm_mib": r3(hwm("mixed_big")),
        "seed_kib_per_endpoint": r3(per_kib("seed")),
        "mixed_kib_per_endpoint": r3(per_kib("mixed")),
        "mixed_big_kib_per_endpoint": r3(per_kib("mixed_big")),
        "kib_per_added_endpoint_mixed_to_big": r3(slope),
    });
    progress(&format!("RSS summary: {summary}"));
    results.insert("summary".into(), summary);
    results.insert("measured".into(), json!(true));
    Value::Object(results)
}

async fn estate(ctx: &mut Ctx, e: &Estate) -> Value {
    let ns = format!("bench-fmt-{}", e.label);
    let total: usize = e.prefixes.iter().map(|p| p.2).sum();
    step(&format!(
        "formats: {total} registrations in {} ({}), then a bridge starts on them",
        e.label,
        e.prefixes
            .iter()
            .map(|(p, f, n)| format!("{p}={f}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    // What etcd holds, and what the watch should show: Service name → addresses.
    let mut kvs = Vec::with_capacity(total);
    let mut want: HashMap<String, BTreeSet<String>> = HashMap::new();
    for (k, (prefix, format, n)) in e.prefixes.iter().enumerate() {
        // Names of one length in every estate: they are in every object the bridge caches.
        for i in 0..*n {
            let service = format!("f{k}-{:05}", i / PER_SERVICE);
            let ip = fresh_ip();
            kvs.push(entry(*format, prefix, &service, "", &ip, i));
            want.entry(service).or_default().insert(ip);
        }
    }
    // The bridge keeps every key (a delete names only the key): longer keys cost memory.
    let key_bytes: usize = kvs.iter().map(|(k, _)| k.len()).sum();
    let value_bytes: usize = kvs.iter().map(|(_, v)| v.len()).sum();
    create_namespace(&ctx.client, &ns).await;
    let tracker = Tracker::start(ctx.client.clone(), &ns, BRIDGE_OWNED);
    tracker.synced().await;
    let load = put_kvs(&mut ctx.etcd, &kvs, &format!("formats, {}", e.label)).await;
    progress(&format!("{total} puts in {:.2} s", load.as_secs_f64()));
    let prefix_arg = e
        .prefixes
        .iter()
        .map(|(p, f, _)| format!("{p}={f}"))
        .collect::<Vec<_>>()
        .join(",");
    let mark = ctx.audit.mark();
    let cpu = ctx.cpu.mark(None);
    let label = format!("formats-{}", e.label);
    let mut bridge = Bridge::spawn(&ctx.spec(&ns, &prefix_arg, &label));
    let (in_place, mut ready) = converge(
        &tracker,
        &want,
        bridge.spawned,
        ctx.sz.big_timeout,
        Some(&mut bridge),
        &format!("formats, {}", e.label),
    )
    .await;
    if ready.is_none() {
        ready = bridge.ready(ctx.sz.restart_timeout).await;
    }
    tokio::time::sleep(ctx.sz.settle).await;
    let cpu = ctx.cpu.since(&cpu, Some(&bridge));
    let writes = ctx.audit.bridge_writes(mark, &ns);
    let (hwm, rss) = bridge.rss_mib();
    let skipped = skipped(&bridge.metrics().await);
    progress(&format!(
        "every object in place after {}, /readyz 200 after {}, {} writes, {} slices; VmHWM {:.1} MiB ({:.2} KiB per endpoint); skipped: {skipped}",
        secs(in_place),
        secs(ready),
        writes.len(),
        tracker.slices(),
        hwm.unwrap_or(0.0),
        hwm.unwrap_or(0.0) * 1024.0 / total as f64
    ));
    if in_place.is_none() {
        ctx.anomalies.push(format!(
            "formats, {}: not every object in place within {:?}",
            e.label, ctx.sz.big_timeout
        ));
    }
    let log = bridge.log();
    stop_bridge(
        &mut ctx.anomalies,
        &mut bridge,
        &format!("formats, {}", e.label),
    );
    note_log_warnings(ctx, &format!("formats, {}", e.label), &log);
    // Their keys go, so that the sections after this one find etcd as before it.
    for (prefix, _, _) in &e.prefixes {
        let _ = ctx
            .etcd
            .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
            .await;
    }
    json!({
        "registrations": total,
        "services": want.len(),
        "prefixes": prefix_arg,
        "mean_key_bytes": key_bytes / total.max(1),
        "mean_value_bytes": value_bytes / total.max(1),
        "etcd_load_s": dur_json(Some(load)),
        "in_place_s": dur_json(in_place),
        "ready_s": dur_json(ready),
        "writes": writes_json(&writes),
        "slices_seen": tracker.slices(),
        "skipped_registrations": skipped,
        "vm_hwm_mib": r3(hwm),
        "vm_rss_mib": r3(rss),
        "cpu": cpu,
    })
}

/// `etcd_bridge_skipped_registrations_total`, summed: every registration here is valid, so it
/// should be 0.
fn skipped(metrics: &str) -> f64 {
    etcd_bridge_testbed::metrics::sum(metrics, "etcd_bridge_skipped_registrations_total")
}

/// The line of the results table.
pub fn brief(v: &Value) -> String {
    let s = &v["summary"];
    let r = |k: &str, f: &str| v[k][f].clone();
    format!(
        "seed {} regs: in place {} s, {} MiB (six seed prefixes: {} MiB); six formats {} regs: {} s, {} MiB; six formats {} regs: {} s, {} MiB ({} KiB per added endpoint)",
        r("seed", "registrations"),
        r("seed", "in_place_s"),
        s["seed_vm_hwm_mib"],
        s["seed_six_prefixes_vm_hwm_mib"],
        r("mixed", "registrations"),
        r("mixed", "in_place_s"),
        s["mixed_vm_hwm_mib"],
        r("mixed_big", "registrations"),
        r("mixed_big", "in_place_s"),
        s["mixed_big_vm_hwm_mib"],
        s["kib_per_added_endpoint_mixed_to_big"],
    )
}

/// Kept for the goal: the estates' peak RSS.
pub fn rss(v: &Value) -> (Option<f64>, Option<f64>, Option<f64>) {
    let s = &v["summary"];
    (
        s["seed_vm_hwm_mib"].as_f64(),
        s["mixed_vm_hwm_mib"].as_f64(),
        s["mixed_big_vm_hwm_mib"].as_f64(),
    )
}
