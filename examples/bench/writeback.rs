//! Write-back (only when the bridge has it): EtcdRegistrations created in bulk → their keys in
//! etcd, then single `spec.weight` changes → the key's new value.

use crate::Ctx;
use crate::bridge::{Bridge, BridgeSpec, has_flag, note_log_warnings, stop_bridge};
use crate::changes::{create_namespace, ssa};
use crate::etcd_watch::{KeyLog, watch_puts};
use crate::harness::{block, progress, step};
use crate::model::fresh_ip;
use crate::stats::{Stats, dur_json, secs};
use etcd_client::WatchOptions;
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

const CRD_NAME: &str = "etcdregistrations.etcd-bridge.io";
pub const WB_NOT_BUILT: &str = "write-back: not measured (not built yet)";

pub async fn section(ctx: &mut Ctx) -> Value {
    let crd = etcd_bridge_testbed::repo::path(&format!("crds/{CRD_NAME}.yaml"));
    let flag = has_flag(&ctx.help, "--writeback");
    step("write-back");
    if !(crd.exists() && flag) {
        progress(&format!(
            "{WB_NOT_BUILT} (CRD file {}: {}, `etcd-bridge run --writeback`: {})",
            crd.display(),
            if crd.exists() { "present" } else { "absent" },
            if flag { "present" } else { "absent" }
        ));
        return json!({"measured": false, "note": WB_NOT_BUILT, "crd_file": crd.exists(), "writeback_flag": flag});
    }
    match writeback(ctx, &crd).await {
        Ok(v) => v,
        Err(e) => {
            ctx.anomalies.push(format!("write-back: {e}"));
            json!({"measured": false, "note": format!("write-back: failed: {e}")})
        }
    }
}

/// The CRD file, when this build has write-back (the file and the `--writeback` flag).
pub fn crd_file(ctx: &Ctx) -> Option<std::path::PathBuf> {
    let crd = etcd_bridge_testbed::repo::path(&format!("crds/{CRD_NAME}.yaml"));
    (crd.exists() && has_flag(&ctx.help, "--writeback")).then_some(crd)
}

/// Applies the CRD (idempotent) and returns its storage version.
pub fn install_crd(ctx: &Ctx, crd: &Path) -> Result<String, String> {
    let yaml = std::fs::read_to_string(crd).map_err(|e| format!("read {}: {e}", crd.display()))?;
    block(|| ctx.bed.cluster.install_crd(&yaml, CRD_NAME))?;
    let crd_ref = format!("crd/{CRD_NAME}");
    let out = block(|| {
        ctx.bed.cluster.kubectl(&[
            "get",
            &crd_ref,
            "-o",
            "jsonpath={.spec.versions[?(@.storage==true)].name}",
        ])
    });
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if version.is_empty() {
        return Err("cannot read the CRD's storage version".into());
    }
    Ok(version)
}

/// The EtcdRegistrations of `ns`, as dynamic objects of the CRD's `version`.
pub fn registrations(ctx: &Ctx, ns: &str, version: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("etcd-bridge.io", version, "EtcdRegistration");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "etcdregistrations");
    Api::namespaced_with(ctx.client.clone(), ns, &ar)
}

/// The bridge flags that turn write-back on, for the EtcdRegistrations of `ns`, written under
/// `keys` (the `--bridge-arg`s are kept, except their `--writeback`).
pub fn writeback_flags(ctx: &Ctx, ns: &str, keys: &str) -> Vec<String> {
    let mut extra: Vec<String> = ctx
        .opts
        .bridge_args
        .iter()
        .filter(|a| *a != "--writeback" && !a.starts_with("--writeback="))
        .cloned()
        .collect();
    // `--writeback` is a switch, or takes true/false.
    extra.push(if ctx.help.contains("--writeback <") {
        "--writeback=true".into()
    } else {
        "--writeback".into()
    });
    if has_flag(&ctx.help, "--writeback-namespace") {
        extra.push(format!("--writeback-namespace={ns}"));
    }
    if has_flag(&ctx.help, "--writeback-prefix") {
        extra.push(format!("--writeback-prefix={keys}"));
    }
    extra
}

async fn writeback(ctx: &mut Ctx, crd: &Path) -> Result<Value, String> {
    let (ns, prefix) = ("bench-writeback", "/bench-writeback/");
    let version = install_crd(ctx, crd)?;
    create_namespace(&ctx.client, ns).await;
    let api = registrations(ctx, ns, &version);

    // Every key in etcd, wherever the bridge writes it: matched by `{service}/{version}/{addr}`.
    let (keys, task) = watch_puts(&mut ctx.etcd, "", WatchOptions::new().with_all_keys())
        .await
        .map_err(|e| format!("watch etcd: {e}"))?;

    let extra = writeback_flags(ctx, ns, "/bench-writeback-keys/");
    let spec = BridgeSpec {
        extra: &extra,
        ..ctx.spec(ns, prefix, "writeback")
    };
    let mut bridge = Bridge::spawn(&spec);
    if bridge.ready(ctx.sz.restart_timeout).await.is_none() {
        task.abort();
        return Err(format!(
            "the bridge with --writeback never got ready\n{}",
            bridge.proc.log_tail(20)
        ));
    }
    let n = ctx.sz.writeback_objects;
    let objs: Vec<(String, String, String)> = (0..n)
        .map(|i| {
            (
                format!("wb-{i:05}"),
                "v1".to_string(),
                format!("{}:9000", fresh_ip()),
            )
        })
        .collect();
    let suffix = |o: &(String, String, String)| format!("{}/{}/{}", o.0, o.1, o.2);
    let find = |keys: &KeyLog, sfx: &str| -> Option<(String, Instant, String, Instant)> {
        keys.lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k.ends_with(sfx) && k[..k.len() - sfx.len()].ends_with('/'))
            .map(|(k, (f, v, l))| (k.clone(), *f, v.clone(), *l))
    };
    let body = |o: &(String, String, String), weight: i64| {
        json!({
            "apiVersion": format!("etcd-bridge.io/{version}"),
            "kind": "EtcdRegistration",
            "metadata": {"name": o.0},
            "spec": {"service": o.0, "version": o.1, "weight": weight, "addresses": [o.2]},
        })
    };

    step(&format!(
        "write-back: {n} EtcdRegistrations → their keys in etcd"
    ));
    let started = Instant::now();
    let jobs = objs.iter().map(|o| {
        let (api, b) = (api.clone(), body(o, 1));
        async move {
            api.patch(&o.0, &ssa(), &Patch::Apply(&b))
                .await
                .map(|_| ())
                .map_err(|e| format!("create EtcdRegistration {}: {e}", o.0))
        }
    });
    let created: Vec<Result<(), String>> = futures::stream::iter(jobs)
        .buffer_unordered(8)
        .collect()
        .await;
    if let Some(Err(e)) = created.into_iter().find(|r| r.is_err()) {
        task.abort();
        return Err(e);
    }
    let created_s = started.elapsed();
    let deadline = Instant::now() + ctx.sz.converge_timeout;
    let mut last_report = Instant::now();
    let all_in = loop {
        let seen: Vec<Instant> = {
            let k = keys.lock().unwrap();
            let sfx: HashSet<String> = objs.iter().map(suffix).collect();
            k.iter()
                .filter(|(key, _)| {
                    let parts: Vec<&str> = key.rsplitn(4, '/').collect();
                    parts.len() == 4
                        && sfx.contains(&format!("{}/{}/{}", parts[2], parts[1], parts[0]))
                })
                .map(|(_, (f, _, _))| *f)
                .collect()
        };
        if seen.len() >= n {
            break seen.into_iter().max().map(|t| t.duration_since(started));
        }
        bridge.check_alive();
        if Instant::now() > deadline {
            ctx.anomalies.push(format!(
                "write-back: only {} of {n} keys in etcd after {:?}",
                seen.len(),
                ctx.sz.converge_timeout
            ));
            break None;
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!("write-back: {} of {n} keys in etcd", seen.len()));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    progress(&format!("all {n} keys in etcd after {}", secs(all_in)));

    let m = ctx.sz.writeback_changes;
    step(&format!(
        "write-back: {m} single changes (spec.weight) → the key's new value"
    ));
    let mut samples = Vec::new();
    let mut missed = 0;
    for j in 0..m {
        let o = &objs[j % n];
        let weight = 2 + j as i64;
        let t = Instant::now();
        api.patch(&o.0, &ssa(), &Patch::Apply(&body(o, weight)))
            .await
            .map_err(|e| format!("change EtcdRegistration {}: {e}", o.0))?;
        let deadline = t + Duration::from_secs(10);
        let sfx = suffix(o);
        loop {
            let hit = find(&keys, &sfx).filter(|(_, _, v, _)| {
                serde_json::from_str::<Value>(v).is_ok_and(|v| v["weight"] == weight)
            });
            if let Some((_, _, _, at)) = hit {
                samples.push(at.saturating_duration_since(t).as_secs_f64() * 1000.0);
                break;
            }
            if Instant::now() > deadline {
                missed += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    task.abort();
    let stats = Stats::new(samples, missed);
    progress(&format!("CR change → key changed: {}", stats.brief()));
    let log = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "write-back");
    note_log_warnings(ctx, "write-back", &log);
    Ok(json!({
        "measured": true,
        "objects": n,
        "create_requests_s": dur_json(Some(created_s)),
        "all_keys_in_etcd_s": dur_json(all_in),
        "change_to_key": stats.json(),
        "stats": stats.brief(),
    }))
}
