//! The report: the machine, the table printed at the end, results.json (smoke.json), the plot and
//! the bridges' logs.

use crate::Ctx;
use crate::goals::{Goal, goals, mark, section_goals};
use crate::harness::{DONE, elapsed, step};
use crate::import::Import;
use crate::memory::Big;
use crate::plot::plot;
use crate::stats::ms;
use crate::writeback::WB_NOT_BUILT;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;

pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "free_h": run("free", &["-h"]),
        "kernel": run("uname", &["-r"]),
        "etcd": run("etcd", &["--version"]).lines().next().unwrap_or_default().to_string(),
        "kubernetes": "v1.37.2 (kube-apiserver, kube-controller-manager)",
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_string(),
    })
}

pub fn git_describe() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            &etcd_bridge_testbed::repo::root().display().to_string(),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

pub fn finish(mut ctx: Ctx, import: Import, big: Big, wb: Value, wbs: Value) {
    let mut goals = goals(&import, &big);
    goals.push(writeback_scale_goal(&wbs, ctx.sz.wb_scale_objects));
    goals.extend(section_goals(&ctx.report));
    let name = if ctx.opts.smoke { "smoke" } else { "results" };
    let svg_path = ctx.opts.out.join(if ctx.opts.smoke {
        "smoke-latency.svg"
    } else {
        "latency.svg"
    });
    let svg = plot(
        &import.floor_etcd,
        &import.floor_apply,
        &import.peer,
        &import.prop,
    );
    std::fs::write(&svg_path, svg).unwrap_or_else(|e| panic!("write {}: {e}", svg_path.display()));

    ctx.report.insert("writeback".into(), wb.clone());
    ctx.report.insert("writeback_scale".into(), wbs.clone());
    ctx.report.insert(
        "goals".into(),
        goals
            .iter()
            .map(|g| json!({"goal": g.name, "target": g.target, "measured": g.measured, "met": g.met, "status": mark(g.met)}))
            .collect(),
    );
    ctx.report.insert("anomalies".into(), json!(ctx.anomalies));
    ctx.report
        .insert("total_s".into(), json!((elapsed() * 10.0).round() / 10.0));
    let path = ctx.opts.out.join(format!("{name}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(ctx.report.clone())).unwrap(),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));

    step("results");
    println!("\nlatency (from the write sent to the watch event), in one run:\n");
    let sz = &ctx.sz;
    let rows = [
        (
            format!("etcd put → etcd watch (floor, {}/s)", sz.rate),
            &import.floor_etcd,
        ),
        (
            format!("SSA EndpointSlice → kube watch (floor, {}/s)", sz.rate),
            &import.floor_apply,
        ),
        (
            format!("peer: Endpoints → mirrored slice ({}/s)", sz.peer_rate),
            &import.peer,
        ),
        (
            format!("etcd-bridge: etcd → EndpointSlice ({}/s)", sz.rate),
            &import.prop,
        ),
    ];
    println!(
        "| {:<48} | {:>9} | {:>9} | {:>9} | {:>6} |",
        "", "p50", "p99", "max", "n"
    );
    println!(
        "|{:-<50}|{:->11}|{:->11}|{:->11}|{:->8}|",
        "", "", "", "", ""
    );
    for (what, s) in rows {
        println!(
            "| {:<48} | {:>9} | {:>9} | {:>9} | {:>6} |",
            what,
            ms(s.p50()),
            ms(s.p99()),
            ms(s.max()),
            format!("{}{}", s.samples.len(), if s.missed > 0 { "*" } else { "" })
        );
    }
    if ctx.opts.smoke {
        println!("\ngoals (smoke sizes: the goals are meant for the full run):\n");
    } else {
        println!("\ngoals:\n");
    }
    let w0 = goals.iter().map(|g| g.name.len()).max().unwrap_or(0);
    let w1 = goals
        .iter()
        .map(|g| g.target.chars().count())
        .max()
        .unwrap_or(0);
    println!(
        "| {:<w0$} | {:<w1$} | {:<12} | measured |",
        "goal",
        "target",
        "status",
        w1 = w1
    );
    for g in &goals {
        println!(
            "| {:<w0$} | {:<w1$} | {:<12} | {} |",
            g.name,
            g.target,
            mark(g.met),
            g.measured,
            w1 = w1
        );
    }
    let wb_line = if wb["measured"] == true {
        format!(
            "write-back: {} objects → keys in etcd after {} s; CR change → key: {}",
            wb["objects"],
            wb["all_keys_in_etcd_s"],
            wb["stats"].as_str().unwrap_or_default()
        )
    } else {
        wb["note"].as_str().unwrap_or(WB_NOT_BUILT).to_string()
    };
    println!(
        "| {:<w0$} | {:<w1$} | {:<12} | {} |",
        "write-back",
        "-",
        "-",
        wb_line,
        w1 = w1
    );
    println!("\nfigures without a goal of their own:");
    if let Some(v) = ctx.report.get("format_parse") {
        println!("  - parse: {}", crate::format_parse::brief(v));
    }
    if let Some(v) = ctx.report.get("formats") {
        println!("  - formats: {}", crate::formats::brief(v));
    }
    if let Some(v) = ctx.report.get("health") {
        println!("  - health: {}", crate::health::brief(v));
    }
    if let Some(v) = ctx.report.get("health_scale") {
        println!("  - health at scale: {}", crate::health_scale::brief(v));
    }
    if !ctx.anomalies.is_empty() {
        println!("\nthings in the bridge that looked wrong:");
        for a in &ctx.anomalies {
            println!("  - {a}");
        }
    }
    let logs = keep_logs(&ctx, name);
    DONE.store(true, Ordering::Relaxed);
    println!(
        "\nwrote {}, {} and the bridges' logs in {} in {:.0} s",
        path.display(),
        svg_path.display(),
        logs.display(),
        elapsed()
    );
}

/// Issue 13's goal for write-back: 10,000 EtcdRegistrations reach etcd in at most 20 s, with the
/// lease pool (the last variant). Judged only at that size.
fn writeback_scale_goal(wbs: &Value, n: usize) -> Goal {
    let last = wbs["variants"].as_array().and_then(|v| v.last());
    let took = last.and_then(|v| v["result"]["all_keys_in_etcd_s"].as_f64());
    Goal {
        name: "write-back at scale",
        target: "10k EtcdRegistrations in etcd ≤ 20 s (lease pool)".into(),
        measured: crate::writeback_scale::brief(wbs),
        met: (n == 10_000).then_some(took.is_some_and(|t| t <= 20.0)),
    }
}

/// `--only`: the one section's result, printed and written to `{name}.json`.
pub fn finish_only(mut ctx: Ctx, name: &str, result: Value) {
    let key = name.replace('-', "_");
    ctx.report.insert(key.clone(), result.clone());
    ctx.report.insert("anomalies".into(), json!(ctx.anomalies));
    ctx.report
        .insert("total_s".into(), json!((elapsed() * 10.0).round() / 10.0));
    let path = ctx.opts.out.join(format!("{name}.json"));
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(ctx.report.clone())).unwrap(),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    step("results");
    let brief = match name {
        "writeback-scale" => crate::writeback_scale::brief(&result),
        "format-parse" => crate::format_parse::brief(&result),
        "formats" => crate::formats::brief(&result),
        "health" => crate::health::brief(&result),
        "shards" => crate::shards::brief(&result),
        "sources" => crate::sources::brief(&result),
        _ => crate::health_scale::brief(&result),
    };
    println!("{brief}");
    for g in section_goals(&ctx.report) {
        println!(
            "| {} | {} | {} | {} |",
            g.name,
            g.target,
            mark(g.met),
            g.measured
        );
    }
    for a in &ctx.anomalies {
        println!("  - {a}");
    }
    let logs = keep_logs(&ctx, name);
    DONE.store(true, Ordering::Relaxed);
    println!(
        "\nwrote {} and the bridges' logs in {} in {:.0} s",
        path.display(),
        logs.display(),
        elapsed()
    );
}

/// Copies the bridges' logs to `{out}/{name}-logs`: the test bed's directory goes when the next
/// test bed starts.
fn keep_logs(ctx: &Ctx, name: &str) -> std::path::PathBuf {
    let logs = ctx.opts.out.join(format!("{name}-logs"));
    let _ = std::fs::remove_dir_all(&logs);
    let _ = std::fs::create_dir_all(&logs);
    for e in std::fs::read_dir(&ctx.bed.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let f = e.file_name().to_string_lossy().to_string();
        if f.starts_with("bridge-") && f.ends_with(".log") {
            let _ = std::fs::copy(e.path(), logs.join(&f));
        }
    }
    logs
}
