//! Write-back at scale (issue 13, part 4): N EtcdRegistrations are already in the cluster when a
//! bridge starts. Timed from its spawn until every key is in etcd, and until every object says
//! Ready; with the bridge's own etcd put latency, the writes it sent to the apiserver, and a
//! probe of etcd's Put latency with the bridge's busiest lease (etcd #15993: on etcd before
//! 3.4.27 a Put with a lease costs time linear in the keys already on that lease). Once with
//! every key on one lease (the baseline), once with the lease pool, each on its own objects.

use crate::Ctx;
use crate::bridge::{Bridge, BridgeSpec, has_flag, note_log_warnings, stop_bridge};
use crate::changes::create_namespace;
use crate::etcd_watch::watch_puts;
use crate::harness::{progress, step};
use crate::metrics::histogram;
use crate::stats::{Stats, dur_json, secs};
use crate::writeback::{WB_NOT_BUILT, crd_file, install_crd, registrations, writeback_flags};
use etcd_client::{DeleteOptions, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt;
use kube::api::{DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The flag of a bridge with the lease pool; without it the bridge has one lease.
const POOL_FLAG: &str = "--writeback-keys-per-lease";

pub async fn section(ctx: &mut Ctx) -> Value {
    step("write-back at scale");
    let Some(crd) = crd_file(ctx) else {
        progress(WB_NOT_BUILT);
        return json!({"measured": false, "note": WB_NOT_BUILT});
    };
    match scale(ctx, &crd).await {
        Ok(v) => v,
        Err(e) => {
            ctx.anomalies.push(format!("write-back at scale: {e}"));
            json!({"measured": false, "note": format!("write-back at scale: failed: {e}")})
        }
    }
}

/// One bridge configuration to measure.
struct Variant {
    label: String,
    flags: Vec<String>,
}

async fn scale(ctx: &mut Ctx, crd: &Path) -> Result<Value, String> {
    let version = install_crd(ctx, crd)?;
    let n = ctx.sz.wb_scale_objects;
    let variants = if has_flag(&ctx.help, POOL_FLAG) {
        vec![
            Variant {
                label: "one lease".into(),
                flags: vec![format!("{POOL_FLAG}={}", n + 1)],
            },
            Variant {
                label: format!("lease pool, {} keys per lease", ctx.sz.wb_keys_per_lease),
                flags: vec![format!("{POOL_FLAG}={}", ctx.sz.wb_keys_per_lease)],
            },
        ]
    } else {
        vec![Variant {
            label: "one lease (this build has no lease pool)".into(),
            flags: Vec::new(),
        }]
    };
    // Every variant's objects first, while no write-back bridge runs: the time measured is the
    // bridge's alone, not the apiserver creating objects.
    let mut created = Vec::new();
    for i in 0..variants.len() {
        let ns = namespace(i);
        create_namespace(&ctx.client, &ns).await;
        step(&format!(
            "write-back at scale: creating {n} EtcdRegistrations in {ns}"
        ));
        let t = Instant::now();
        create(ctx, &ns, &version, n).await?;
        progress(&format!("created in {}", secs(Some(t.elapsed()))));
        created.push(t.elapsed());
    }
    let mut results = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let r = measure(ctx, i, v, &version).await?;
        results.push(json!({"variant": v.label, "flags": v.flags, "create_s": dur_json(Some(created[i])), "result": r}));
    }
    Ok(json!({"measured": true, "objects": n, "variants": results}))
}

fn namespace(i: usize) -> String {
    format!("bench-wbscale-{i}")
}

/// Object `i`: service `s{i}`, version v1, one address unique within the variant.
fn address(i: usize) -> String {
    format!(
        "10.{}.{}.{}:9000",
        100 + i / 65536,
        (i / 256) % 256,
        i % 256
    )
}

async fn create(ctx: &Ctx, ns: &str, version: &str, n: usize) -> Result<(), String> {
    let api = registrations(ctx, ns, version);
    let jobs = (0..n).map(|i| {
        let api = api.clone();
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": format!("etcd-bridge.io/{version}"),
            "kind": "EtcdRegistration",
            "metadata": {"name": format!("s{i:05}")},
            "spec": {"service": format!("s{i:05}"), "version": "v1", "weight": 1, "addresses": [address(i)]},
        }))
        .expect("an EtcdRegistration");
        async move {
            api.create(&PostParams::default(), &obj)
                .await
                .map(|_| ())
                .map_err(|e| format!("create EtcdRegistration {ns}/s{i:05}: {e}"))
        }
    });
    let mut results = futures::stream::iter(jobs).buffer_unordered(16);
    while let Some(r) = results.next().await {
        r?;
    }
    Ok(())
}

async fn measure(ctx: &mut Ctx, i: usize, v: &Variant, version: &str) -> Result<Value, String> {
    let n = ctx.sz.wb_scale_objects;
    let ns = namespace(i);
    let keys = format!("/bench-wbscale-keys-{i}/");
    step(&format!(
        "write-back at scale, {}: a bridge starts with {n} EtcdRegistrations waiting",
        v.label
    ));
    // Every variant starts on a compacted, defragmented etcd: after many keys deleted at once
    // (the previous variant's, or the sections' before), etcd 3.4 spent up to three times the CPU
    // on the next 10,000 puts (13.5 s instead of 4.5 s to etcd, in a full run).
    reset_etcd(ctx).await;
    let (log, task) = watch_puts(&mut ctx.etcd, &keys, WatchOptions::new().with_prefix())
        .await
        .map_err(|e| format!("watch etcd: {e}"))?;
    let mut flags = writeback_flags(ctx, &ns, &keys);
    flags.extend(v.flags.iter().cloned());
    let import_prefix = format!("/bench-wbscale-import-{i}/");
    let label = format!("wbscale-{i}");
    let audit_from = ctx.audit.mark();
    let cpu_from = ctx.cpu.mark(None);
    let spec = BridgeSpec {
        extra: &flags,
        ..ctx.spec(&ns, &import_prefix, &label)
    };
    let mut bridge = Bridge::spawn(&spec);
    let deadline = Instant::now() + ctx.sz.wb_scale_timeout;
    let mut last_report = Instant::now();
    let (first, all_in) = loop {
        let (count, first, last) = {
            let k = log.lock().unwrap();
            let firsts = k.values().map(|(f, _, _)| *f);
            (k.len(), firsts.clone().min(), firsts.max())
        };
        if count >= n {
            break (first, last);
        }
        bridge.check_alive();
        if Instant::now() > deadline {
            ctx.anomalies.push(format!(
                "write-back at scale, {}: only {count} of {n} keys in etcd after {:?}",
                v.label, ctx.sz.wb_scale_timeout
            ));
            break (first, None);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!("{count} of {n} keys in etcd"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    task.abort();
    let since_spawn = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(bridge.spawned));
    let (first, all_in) = (since_spawn(first), since_spawn(all_in));
    progress(&format!(
        "all {n} keys in etcd {} after the spawn (first key after {})",
        secs(all_in),
        secs(first)
    ));
    let ready = all_ready(ctx, &ns, version, n, deadline).await;
    let ready = ready.map(|t| t.saturating_duration_since(bridge.spawned));
    progress(&format!(
        "every object Ready {} after the spawn",
        secs(ready)
    ));
    let cpu = ctx.cpu.since(&cpu_from, Some(&bridge));
    let metrics = bridge.metrics().await;
    let put_hist = histogram(&metrics, "etcd_bridge_writeback_put_seconds");
    let leases = leases_of(ctx, &keys).await?;
    let busiest = leases
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(l, c)| (*l, *c));
    progress(&format!(
        "{} leases; keys per lease: {:?}",
        leases.len(),
        leases.values().collect::<Vec<_>>()
    ));
    let probe = match busiest {
        Some((lease, count)) => Some(probe(ctx, lease, count).await?),
        None => None,
    };
    let writes = writes_by_kind(ctx, audit_from, &ns);
    let bridge_log = bridge.log();
    stop_bridge(
        &mut ctx.anomalies,
        &mut bridge,
        &format!("write-back at scale, {}", v.label),
    );
    note_log_warnings(
        ctx,
        &format!("write-back at scale, {}", v.label),
        &bridge_log,
    );
    // Its keys go at once, not at the TTL in the middle of the next variant.
    for lease in leases.keys() {
        let _ = ctx.etcd.lease_revoke(*lease).await;
    }
    Ok(json!({
        "first_key_s": dur_json(first),
        "all_keys_in_etcd_s": dur_json(all_in),
        "all_ready_s": dur_json(ready),
        "leases": leases.len(),
        "keys_per_lease": leases.values().collect::<Vec<_>>(),
        "bridge_put_txn_seconds": put_hist,
        "put_probe": probe,
        "apiserver_writes": writes,
        "cpu": cpu,
    }))
}

/// Compacts etcd's history and defragments its database.
async fn reset_etcd(ctx: &mut Ctx) {
    let rev = match ctx.etcd.get("/", None).await {
        Ok(r) => r.header().map_or(0, |h| h.revision()),
        Err(e) => return progress(&format!("etcd not reset: {e}")),
    };
    let compacted = ctx
        .etcd
        .compact(
            rev,
            Some(etcd_client::CompactionOptions::new().with_physical()),
        )
        .await;
    let defragmented = ctx.etcd.defragment().await;
    if let Some(e) = compacted.err().or(defragmented.err()) {
        progress(&format!("etcd not reset: {e}"));
    }
}

/// Waits until every EtcdRegistration of `ns` says Ready=True; returns when it saw that.
async fn all_ready(
    ctx: &Ctx,
    ns: &str,
    version: &str,
    n: usize,
    deadline: Instant,
) -> Option<Instant> {
    let api = registrations(ctx, ns, version);
    loop {
        let ready = match api.list(&ListParams::default()).await {
            Ok(list) => list
                .items
                .iter()
                .filter(|o| {
                    o.data["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count(),
            Err(e) => {
                progress(&format!("list EtcdRegistrations: {e}"));
                0
            }
        };
        if ready >= n {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            progress(&format!("only {ready} of {n} Ready"));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many keys under `prefix` each lease holds.
async fn leases_of(ctx: &mut Ctx, prefix: &str) -> Result<BTreeMap<i64, usize>, String> {
    let r = ctx
        .etcd
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("read {prefix}: {e}"))?;
    let mut by: BTreeMap<i64, usize> = BTreeMap::new();
    for kv in r.kvs() {
        *by.entry(kv.lease()).or_default() += 1;
    }
    Ok(by)
}

/// etcd's Put latency with `lease` (holding `keys` keys), alternated with Puts without a lease
/// so that both see the same moment of a noisy machine.
async fn probe(ctx: &mut Ctx, lease: i64, keys: usize) -> Result<Value, String> {
    let m = ctx.sz.wb_probe_puts;
    let (with_key, without_key) = ("/bench-wbscale-probe/leased", "/bench-wbscale-probe/plain");
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for j in 0..m {
        let value = format!("{j}");
        let t = Instant::now();
        ctx.etcd
            .put(
                with_key,
                value.as_str(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .map_err(|e| format!("probe put with a lease: {e}"))?;
        with.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        ctx.etcd
            .put(without_key, value.as_str(), None)
            .await
            .map_err(|e| format!("probe put: {e}"))?;
        without.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = ctx
        .etcd
        .delete(
            "/bench-wbscale-probe/",
            Some(DeleteOptions::new().with_prefix()),
        )
        .await;
    let (with, without) = (Stats::new(with, 0), Stats::new(without, 0));
    progress(&format!(
        "etcd Put with the busiest lease ({keys} keys): {}; without a lease: {}",
        with.brief(),
        without.brief()
    ));
    Ok(json!({
        "lease_keys": keys,
        "with_lease": with.json(),
        "without_lease": without.json(),
    }))
}

/// The bridge's writes to the apiserver in `ns`, by verb and resource (every write there is the
/// bridge's: the objects were created before the mark).
fn writes_by_kind(ctx: &Ctx, from: u64, ns: &str) -> Value {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for w in etcd_bridge_testbed::audit::writes(&ctx.audit.0, from, ns) {
        if matches!(w.verb.as_str(), "create" | "update" | "patch" | "delete") {
            *by.entry(format!("{} {}", w.verb, w.resource)).or_default() += 1;
        }
    }
    json!(by)
}

/// The line of the results table.
pub fn brief(wbs: &Value) -> String {
    if wbs["measured"] != true {
        return wbs["note"].as_str().unwrap_or(WB_NOT_BUILT).to_string();
    }
    let n = &wbs["objects"];
    wbs["variants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| {
            let r = &v["result"];
            format!(
                "{}: {n} keys in etcd after {} s, all Ready after {} s, {} leases, Put with the busiest lease p50 {} ms",
                v["variant"].as_str().unwrap_or_default(),
                r["all_keys_in_etcd_s"],
                r["all_ready_s"],
                r["leases"],
                r["put_probe"]["with_lease"]["p50_ms"],
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
