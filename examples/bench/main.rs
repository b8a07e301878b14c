//! `make bench`: the benchmarks of etcd-bridge, on a private test bed (a registry etcd, and etcd +
//! kube-apiserver + kube-controller-manager v1.37.2 on loopback), in one run so that the ratios
//! hold on a shared, noisy machine. See docs/benchmarks.md for what each number means.
//!
//! ```text
//! bench [--smoke] [--bridge PATH] [--out DIR] [--bridge-arg ARG]... [--peer-rate N] [--services N]
//!       [--only SECTION]
//! bench --replot target/bench/results.json --out DIR
//! ```
//!
//! - `--smoke`: a tiny version of every section (about 30 s), for `make test`: it fails (exits
//!   non-zero) when the harness breaks, never because a goal is missed.
//! - `--bridge`: the `etcd-bridge` binary (default `target/release/etcd-bridge`).
//! - `--out`: where `results.json` (`smoke.json`) and `latency.svg` go (default `target/bench`).
//! - `--bridge-arg`: one more flag for every bridge started (e.g. `--bridge-arg=--coalesce=1ms`),
//!   to see what a setting changes.
//! - `--peer-rate`: changes per second for the peer (default 10: kube-controller-manager's client
//!   is limited to 20 requests/s, so at 50/s it would measure its rate limiter).
//! - `--services`: services of the import sections (default 1,000; 10 endpoints each), to see how
//!   the latency depends on the size of the estate.
//! - `--only SECTION`: one section alone (`writeback-scale`, `format-parse`, `formats`, `health`,
//!   `health-scale`), written to `SECTION.json`.
//! - `--replot`: draws `latency.svg` again from a `results.json`, and does nothing else.
//!
//! The bridge runs as its own process with the admin kubeconfig and `--leader-election=false`,
//! one namespace and one etcd prefix per section. Latencies are taken in this process: the time
//! a write is sent, and the time a watch (etcd-client's, or kube's watcher) shows its effect.

// Shared by the sections: the harness, the model of the registry, the watch, the bridge process,
// and the accounting (audit log, metrics, CPU).
mod audit;
mod bridge;
mod changes;
mod cpu;
mod etcd_watch;
mod harness;
mod metrics;
mod model;
mod options;
mod shapes;
mod stats;
mod tracker;
// The sections (import.rs runs the import ones in order, on one estate).
mod burst;
mod cold_start;
mod dataplane;
mod floor;
mod format_parse;
mod formats;
mod health;
mod health_scale;
mod import;
mod isolated;
mod memory;
mod peer;
mod propagation;
mod restart;
mod shards;
mod sources;
mod writeback;
mod writeback_scale;
// The results: goals, table, JSON, plot.
mod goals;
mod plot;
mod report;

use audit::Audit;
use bridge::BridgeSpec;
use cpu::{Cpu, clk_tck, components};
use etcd_bridge_testbed::TestBed;
use etcd_bridge_testbed::bridge::run_help;
use etcd_client::Client as Etcd;
use harness::{Rng, block, elapsed, progress, step};
use options::{Opts, Sizes};
use plot::replot;
use report::{finish, git_describe, machine};
use serde_json::{Value, json};

/// What every section reads and writes: the options, the test bed and clients, the accounting,
/// and the report being built.
pub struct Ctx {
    pub opts: Opts,
    /// `etcd-bridge run --help`: which flags this build has.
    pub help: String,
    /// The flags of every import bridge: `--bridge-arg`s, and write-back off when it can be.
    pub import_args: Vec<String>,
    pub sz: Sizes,
    pub bed: TestBed,
    pub client: kube::Client,
    pub etcd: Etcd,
    pub audit: Audit,
    pub cpu: Cpu,
    pub rng: Rng,
    pub report: serde_json::Map<String, Value>,
    pub anomalies: Vec<String>,
}

impl Ctx {
    pub fn spec<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        label: &'a str,
    ) -> BridgeSpec<'a> {
        BridgeSpec {
            bin: &self.opts.bridge,
            bed: &self.bed,
            namespace,
            prefix,
            label,
            extra: &self.import_args,
        }
    }
}

#[tokio::main]
async fn main() {
    elapsed();
    let opts = Opts::parse();
    if let Some(results) = &opts.replot {
        replot(results, &opts.out);
        return;
    }
    let sz = Sizes::new(&opts);
    let mode = if opts.smoke { "smoke" } else { "full" };
    assert!(
        opts.bridge.exists(),
        "{} not found: build it first (cargo build --release --bin etcd-bridge) or pass --bridge",
        opts.bridge.display()
    );
    std::fs::create_dir_all(&opts.out)
        .unwrap_or_else(|e| panic!("create {}: {e}", opts.out.display()));

    step(&format!(
        "etcd-bridge benchmarks ({mode}), bridge {}",
        opts.bridge.display()
    ));
    step(
        "starting the test bed: registry etcd, and etcd + kube-apiserver + kube-controller-manager",
    );
    let bed = block(|| TestBed::start("bench"))
        .unwrap_or_else(|e| panic!("the test bed did not start:\n{e}"));
    progress(&format!(
        "up: registry etcd {}, kube-apiserver {}, dir {}",
        bed.registry.endpoint(),
        bed.cluster.server_url(),
        bed.dir.display()
    ));
    let client = bed.cluster.client().await;
    let etcd = Etcd::connect([bed.registry.endpoint()], None)
        .await
        .expect("connect to the registry etcd");
    let cpu = Cpu {
        tck: clk_tck(),
        pids: components(&bed.dir),
    };
    progress(&format!("components: {:?}", cpu.pids));
    let help = run_help(&opts.bridge);
    let mut import_args = opts.bridge_args.clone();
    // Measure the import alone: a bridge that runs write-back by default has it turned off.
    if help.contains("--writeback <") && !import_args.iter().any(|a| a.starts_with("--writeback")) {
        import_args.push("--writeback=false".into());
    }
    let mut ctx = Ctx {
        help,
        import_args,
        audit: Audit(bed.cluster.audit_log()),
        opts,
        sz,
        bed,
        client,
        etcd,
        cpu,
        rng: Rng(0x5eed),
        report: serde_json::Map::new(),
        anomalies: Vec::new(),
    };
    ctx.report.insert("mode".into(), json!(mode));
    ctx.report.insert("machine".into(), machine());
    ctx.report.insert(
        "setup".into(),
        json!({
            "bridge": ctx.opts.bridge.display().to_string(),
            "bridge_flags": ["--leader-election=false", "(defaults otherwise: --coalesce=10ms, --max-endpoints-per-slice=100, headless, aggregate)"],
            "bridge_extra_flags": ctx.import_args,
            "kubeconfig": "admin (system:masters, exempt from API Priority and Fairness); kube-rs has no client-side rate limit",
            "registrations": "unversioned keys {prefix}{service}/{ip}:8080, weight 10: one Service and one EndpointSlice per service",
            "git": git_describe(),
        }),
    );

    if let Some(only) = ctx.opts.only.clone() {
        let result = match only.as_str() {
            "writeback-scale" => writeback_scale::section(&mut ctx).await,
            "format-parse" => format_parse::section(&mut ctx).await,
            "formats" => formats::section(&mut ctx).await,
            "health" => health::section(&mut ctx).await,
            "health-scale" => health_scale::section(&mut ctx).await,
            "shards" => shards::section(&mut ctx).await,
            "sources" => sources::section(&mut ctx).await,
            other => unreachable!("options.rs lets only known sections through: {other}"),
        };
        report::finish_only(ctx, &only, result);
        return;
    }
    let import = import::import_sections(&mut ctx).await;
    let big = memory::section(&mut ctx).await;
    let wb = writeback::section(&mut ctx).await;
    let wbs = writeback_scale::section(&mut ctx).await;
    // Issues 11 and 12 after the sections before them, whose figures stay comparable with runs
    // that had none of these (the objects they leave make the apiserver's estate bigger).
    let parse = format_parse::section(&mut ctx).await;
    ctx.report.insert("format_parse".into(), parse);
    let formats = formats::section(&mut ctx).await;
    ctx.report.insert("formats".into(), formats);
    let health = health::section(&mut ctx).await;
    ctx.report.insert("health".into(), health);
    let health_scale = health_scale::section(&mut ctx).await;
    ctx.report.insert("health_scale".into(), health_scale);
    let sources = sources::section(&mut ctx).await;
    ctx.report.insert("sources".into(), sources);
    let shards = shards::section(&mut ctx).await;
    ctx.report.insert("shards".into(), shards);
    let dp = dataplane::section(&mut ctx).await;
    ctx.report.insert("dataplane".into(), dp);
    finish(ctx, import, big, wb, wbs);
}
