//! `make bench`: the benchmarks of etcd-bridge, on a private test bed (a registry etcd, and etcd +
//! kube-apiserver + kube-controller-manager v1.37.2 on loopback), in one run so that the ratios
//! hold on a shared, noisy machine. See docs/benchmarks.md for what each number means.
//!
//! ```text
//! bench [--smoke] [--bridge PATH] [--out DIR] [--bridge-arg ARG]... [--peer-rate N] [--services N]
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
//! - `--replot`: draws `latency.svg` again from a `results.json`, and does nothing else.
//!
//! The bridge runs as its own process with the admin kubeconfig and `--leader-election=false`,
//! one namespace and one etcd prefix per section. Latencies are taken in this process: the time
//! a write is sent, and the time a watch (etcd-client's, or kube's watcher) shows its effect.

use etcd_bridge_testbed::TestBed;
use etcd_bridge_testbed::audit::{self, AuditWrite};
use etcd_bridge_testbed::process::{Proc, free_port, http_get};
use etcd_client::{Client as Etcd, EventType, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// etcd 3.4's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
/// The port of every registration.
const PORT: u16 = 8080;
/// The label of the EndpointSlices kube-controller-manager mirrors from Endpoints.
const MIRRORED: &str =
    "endpointslice.kubernetes.io/managed-by=endpointslicemirroring-controller.k8s.io";
/// The label of everything the bridge writes.
const BRIDGE_OWNED: &str = "app.kubernetes.io/managed-by=etcd-bridge";
const CRD_NAME: &str = "etcdregistrations.etcd-bridge.io";

// ---------------------------------------------------------------------------------------------
// Options and sizes
// ---------------------------------------------------------------------------------------------

struct Opts {
    smoke: bool,
    bridge: PathBuf,
    out: PathBuf,
    bridge_args: Vec<String>,
    peer_rate: Option<f64>,
    services: Option<usize>,
    replot: Option<PathBuf>,
}

impl Opts {
    fn parse() -> Opts {
        let mut opts = Opts {
            smoke: false,
            bridge: PathBuf::from("target/release/etcd-bridge"),
            out: PathBuf::from("target/bench"),
            bridge_args: Vec::new(),
            peer_rate: None,
            services: None,
            replot: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .unwrap_or_else(|| usage(&format!("{name} needs a value")))
            };
            match flag.as_str() {
                "--smoke" => opts.smoke = true,
                "--bridge" => opts.bridge = PathBuf::from(value("--bridge")),
                "--out" => opts.out = PathBuf::from(value("--out")),
                "--bridge-arg" => opts.bridge_args.push(value("--bridge-arg")),
                "--peer-rate" => {
                    opts.peer_rate = Some(
                        value("--peer-rate")
                            .parse()
                            .unwrap_or_else(|_| usage("--peer-rate takes a number")),
                    )
                }
                "--replot" => opts.replot = Some(PathBuf::from(value("--replot"))),
                "--services" => {
                    opts.services = Some(
                        value("--services")
                            .parse()
                            .unwrap_or_else(|_| usage("--services takes a number")),
                    )
                }
                "-h" | "--help" => usage(""),
                other => usage(&format!("unknown argument {other}")),
            }
        }
        opts
    }
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("bench: {err}");
    }
    eprintln!(
        "usage: bench [--smoke] [--bridge PATH] [--out DIR] [--bridge-arg ARG]... [--peer-rate N] [--services N] [--replot results.json]"
    );
    std::process::exit(2)
}

/// How big each section is: the issue's numbers, or a tiny smoke version of them.
struct Sizes {
    services: usize,
    endpoints: usize,
    rate: f64,
    changes: usize,
    floor_changes: usize,
    peer_services: usize,
    peer_endpoints: usize,
    peer_changes: usize,
    peer_rate: f64,
    isolated: usize,
    isolated_gap: Duration,
    burst: usize,
    big_services: usize,
    big_endpoints: usize,
    writeback_objects: usize,
    writeback_changes: usize,
    settle: Duration,
    drain: Duration,
    converge_timeout: Duration,
    big_timeout: Duration,
    restart_timeout: Duration,
}

impl Sizes {
    fn new(opts: &Opts) -> Sizes {
        if opts.smoke {
            Sizes {
                services: 10,
                endpoints: 3,
                rate: 50.0,
                changes: 20,
                floor_changes: 20,
                peer_services: 5,
                peer_endpoints: 3,
                peer_changes: 10,
                peer_rate: opts.peer_rate.unwrap_or(10.0),
                isolated: 4,
                isolated_gap: Duration::from_millis(200),
                burst: 300,
                big_services: 50,
                big_endpoints: 10,
                writeback_objects: 10,
                writeback_changes: 5,
                settle: Duration::from_secs(1),
                drain: Duration::from_secs(15),
                converge_timeout: Duration::from_secs(60),
                big_timeout: Duration::from_secs(60),
                restart_timeout: Duration::from_secs(30),
            }
        } else {
            Sizes {
                services: opts.services.unwrap_or(1_000),
                endpoints: 10,
                rate: 50.0,
                changes: 1_000,
                floor_changes: 250,
                peer_services: 100,
                peer_endpoints: 10,
                peer_changes: 200,
                peer_rate: opts.peer_rate.unwrap_or(10.0),
                isolated: 20,
                isolated_gap: Duration::from_millis(300),
                burst: 10_000,
                big_services: 10_000,
                big_endpoints: 10,
                writeback_objects: 1_000,
                writeback_changes: 50,
                settle: Duration::from_secs(3),
                drain: Duration::from_secs(20),
                converge_timeout: Duration::from_secs(180),
                big_timeout: Duration::from_secs(420),
                restart_timeout: Duration::from_secs(60),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers: progress, randomness, statistics, blocking calls
// ---------------------------------------------------------------------------------------------

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
/// Set when the test bed goes away, so the watch tasks stop complaining.
static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

fn step(msg: &str) {
    println!("\n[{:6.1}s] ==> {msg}", elapsed());
}

fn progress(msg: &str) {
    println!("[{:6.1}s]     {msg}", elapsed());
}

/// Runs blocking work (process start and stop, kubectl) without stalling the watch tasks.
fn block<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// splitmix64: deterministic, so two runs make the same changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Latency statistics in milliseconds (nearest-rank percentiles).
#[derive(Clone, Default)]
struct Stats {
    samples: Vec<f64>,
    missed: usize,
}

impl Stats {
    fn new(mut samples: Vec<f64>, missed: usize) -> Stats {
        samples.sort_by(|a, b| a.total_cmp(b));
        Stats { samples, missed }
    }
    fn pct(&self, p: f64) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * self.samples.len() as f64).ceil() as usize;
        Some(self.samples[rank.clamp(1, self.samples.len()) - 1])
    }
    fn p50(&self) -> Option<f64> {
        self.pct(50.0)
    }
    fn p99(&self) -> Option<f64> {
        self.pct(99.0)
    }
    fn max(&self) -> Option<f64> {
        self.samples.last().copied()
    }
    fn json(&self) -> Value {
        let mean = (!self.samples.is_empty())
            .then(|| self.samples.iter().sum::<f64>() / self.samples.len() as f64);
        json!({
            "n": self.samples.len(),
            "missed": self.missed,
            "p50_ms": r3(self.p50()),
            "p90_ms": r3(self.pct(90.0)),
            "p99_ms": r3(self.p99()),
            "max_ms": r3(self.max()),
            "mean_ms": r3(mean),
            "samples_ms": self.samples.iter().map(|v| (v * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        })
    }
    fn brief(&self) -> String {
        format!(
            "p50 {} p99 {} max {} (n={}{})",
            ms(self.p50()),
            ms(self.p99()),
            ms(self.max()),
            self.samples.len(),
            if self.missed > 0 {
                format!(", {} missed", self.missed)
            } else {
                String::new()
            }
        )
    }
}

fn r3(v: Option<f64>) -> Value {
    v.map_or(Value::Null, |v| json!((v * 1000.0).round() / 1000.0))
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) => format!("{v:.1} ms"),
        None => "-".into(),
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("did not finish".into(), |d| {
        format!("{:.2} s", d.as_secs_f64())
    })
}

fn dur_json(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, |d| {
        json!((d.as_secs_f64() * 1000.0).round() / 1000.0)
    })
}

// ---------------------------------------------------------------------------------------------
// The registry model: what each service should hold, and the changes made to it
// ---------------------------------------------------------------------------------------------

/// A fresh IPv4 address, unique within this run: changes are matched by address.
fn fresh_ip() -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// Services and their endpoint addresses, as they should be.
struct Model {
    names: Vec<String>,
    want: HashMap<String, BTreeSet<String>>,
}

struct Change {
    service: String,
    ip: String,
    add: bool,
}

impl Model {
    fn new(base: &str, services: usize, endpoints: usize) -> Model {
        let names: Vec<String> = (0..services).map(|i| format!("{base}-{i:05}")).collect();
        let want = names
            .iter()
            .map(|n| (n.clone(), (0..endpoints).map(|_| fresh_ip()).collect()))
            .collect();
        Model { names, want }
    }

    fn registrations(&self) -> usize {
        self.want.values().map(|s| s.len()).sum()
    }

    /// Adds a fresh address to a random service, or deletes a random address (one whose last
    /// change is not still pending) from a random service that keeps at least one.
    fn change(&mut self, rng: &mut Rng, add: bool, tracker: &Tracker) -> Change {
        if !add {
            for _ in 0..100 {
                let service = self.names[rng.below(self.names.len())].clone();
                let ips = &self.want[&service];
                if ips.len() < 2 {
                    continue;
                }
                let ip = ips.iter().nth(rng.below(ips.len())).unwrap().clone();
                if tracker.is_pending(&service, &ip) {
                    continue;
                }
                self.want.get_mut(&service).unwrap().remove(&ip);
                return Change {
                    service,
                    ip,
                    add: false,
                };
            }
        }
        let service = self.names[rng.below(self.names.len())].clone();
        let ip = fresh_ip();
        self.want.get_mut(&service).unwrap().insert(ip.clone());
        Change {
            service,
            ip,
            add: true,
        }
    }
}

fn reg_key(prefix: &str, service: &str, ip: &str) -> String {
    format!("{prefix}{service}/{ip}:{PORT}")
}

/// The value the seed's Go `Register` writes (no version: one Service per name).
fn reg_value(service: &str, ip: &str) -> String {
    format!(r#"{{"name":"{service}","addr":"{ip}:{PORT}","version":"","weight":10}}"#)
}

/// Puts `regs` in txns of at most [`TXN_OPS`] puts, one after another, as fast as etcd takes
/// them. Returns how long it took.
async fn put_all(etcd: &mut Etcd, prefix: &str, regs: &[(String, String)], what: &str) -> Duration {
    let started = Instant::now();
    let mut last_report = Instant::now();
    for (i, chunk) in regs.chunks(TXN_OPS).enumerate() {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(s, ip)| TxnOp::put(reg_key(prefix, s, ip), reg_value(s, ip), None))
            .collect();
        etcd.txn(Txn::new().and_then(ops))
            .await
            .unwrap_or_else(|e| panic!("etcd txn ({what}): {e}"));
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {} puts",
                (i + 1) * TXN_OPS,
                regs.len()
            ));
        }
    }
    started.elapsed()
}

fn all_regs(model: &Model) -> Vec<(String, String)> {
    let mut regs = Vec::with_capacity(model.registrations());
    for name in &model.names {
        for ip in &model.want[name] {
            regs.push((name.clone(), ip.clone()));
        }
    }
    regs
}

// ---------------------------------------------------------------------------------------------
// Tracker: a kube watch of EndpointSlices, which addresses each service has, and when
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct TrackState {
    /// slice name → (service, addresses)
    slices: HashMap<String, (String, Vec<String>)>,
    /// service → address → in how many slices
    present: HashMap<String, HashMap<String, u32>>,
    /// (service, address) → (expected to appear?, when the write was sent)
    pending: HashMap<(String, String), (bool, Instant)>,
    samples: Vec<f64>,
    /// Slices added, changed or deleted since the last reset.
    touched: HashSet<String>,
    /// When an address last appeared or disappeared.
    last_change: Option<Instant>,
    events: u64,
    synced: bool,
    init_seen: Option<HashSet<String>>,
    errors: u64,
}

impl TrackState {
    fn resolve(&mut self, service: &str, ip: &str, appeared: bool, t: Instant) {
        let key = (service.to_string(), ip.to_string());
        if let Some((add, start)) = self.pending.get(&key)
            && *add == appeared
        {
            self.samples
                .push(t.saturating_duration_since(*start).as_secs_f64() * 1000.0);
            self.pending.remove(&key);
        }
    }

    fn inc(&mut self, service: &str, ip: &str, t: Instant) {
        let c = self
            .present
            .entry(service.to_string())
            .or_default()
            .entry(ip.to_string())
            .or_insert(0);
        *c += 1;
        if *c == 1 {
            self.last_change = Some(t);
            self.resolve(service, ip, true, t);
        }
    }

    fn dec(&mut self, service: &str, ip: &str, t: Instant) {
        let Some(ips) = self.present.get_mut(service) else {
            return;
        };
        let Some(c) = ips.get_mut(ip) else { return };
        *c -= 1;
        if *c == 0 {
            ips.remove(ip);
            if ips.is_empty() {
                self.present.remove(service);
            }
            self.last_change = Some(t);
            self.resolve(service, ip, false, t);
        }
    }

    /// `listed`: from a (re)list, not a change: not counted as touched.
    fn apply(&mut self, s: &EndpointSlice, t: Instant, listed: bool) {
        let name = s.metadata.name.clone().unwrap_or_default();
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let ips: Vec<String> = s
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        if let Some(seen) = &mut self.init_seen {
            seen.insert(name.clone());
        }
        let (old_service, old_ips) = self
            .slices
            .insert(name.clone(), (service.clone(), ips.clone()))
            .unwrap_or_else(|| (service.clone(), Vec::new()));
        let moved = old_service != service;
        for ip in &old_ips {
            if moved || !ips.contains(ip) {
                self.dec(&old_service, ip, t);
            }
        }
        for ip in &ips {
            if moved || !old_ips.contains(ip) {
                self.inc(&service, ip, t);
            }
        }
        if !listed {
            self.touched.insert(name);
            self.events += 1;
        }
    }

    fn delete(&mut self, name: &str, t: Instant) {
        if let Some((service, ips)) = self.slices.remove(name) {
            for ip in &ips {
                self.dec(&service, ip, t);
            }
        }
        self.touched.insert(name.to_string());
        self.events += 1;
    }
}

#[derive(Clone)]
struct Tracker(Arc<Mutex<TrackState>>);

impl Tracker {
    /// Watches the EndpointSlices of `namespace` that match `selector`.
    fn start(client: kube::Client, namespace: &str, selector: &str) -> Tracker {
        let state = Arc::new(Mutex::new(TrackState::default()));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(selector);
        let st = state.clone();
        let what = format!("{namespace}/{selector}");
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let t = Instant::now();
                let mut s = st.lock().unwrap();
                match ev {
                    Ok(watcher::Event::Apply(o)) => s.apply(&o, t, false),
                    Ok(watcher::Event::InitApply(o)) => s.apply(&o, t, true),
                    Ok(watcher::Event::Delete(o)) => {
                        s.delete(&o.metadata.name.unwrap_or_default(), t)
                    }
                    Ok(watcher::Event::Init) => s.init_seen = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = s.init_seen.take() {
                            let gone: Vec<String> = s
                                .slices
                                .keys()
                                .filter(|n| !seen.contains(*n))
                                .cloned()
                                .collect();
                            for n in gone {
                                s.delete(&n, t);
                            }
                        }
                        s.synced = true;
                    }
                    Err(e) => {
                        s.errors += 1;
                        if !DONE.load(Ordering::Relaxed) {
                            eprintln!("bench: watch of {what}: {e} (retrying)");
                        }
                    }
                }
            }
        });
        Tracker(state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.0.lock().unwrap()
    }

    async fn synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.lock().synced {
            assert!(
                Instant::now() < deadline,
                "the bench's EndpointSlice watch did not sync in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn expect(&self, service: &str, ip: &str, add: bool, start: Instant) {
        self.lock()
            .pending
            .insert((service.to_string(), ip.to_string()), (add, start));
    }

    fn is_pending(&self, service: &str, ip: &str) -> bool {
        self.lock()
            .pending
            .contains_key(&(service.to_string(), ip.to_string()))
    }

    fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Forgets what is still pending; returns it (the misses).
    fn drop_pending(&self) -> Vec<(String, String, bool)> {
        self.lock()
            .pending
            .drain()
            .map(|((s, ip), (add, _))| (s, ip, add))
            .collect()
    }

    fn take_samples(&self) -> Vec<f64> {
        std::mem::take(&mut self.lock().samples)
    }

    /// How many services differ from `want` (wrong addresses, missing, or extra).
    fn mismatched(&self, want: &HashMap<String, BTreeSet<String>>) -> usize {
        let s = self.lock();
        let mut bad = 0;
        for (service, ips) in want {
            let ok = s
                .present
                .get(service)
                .is_some_and(|p| p.len() == ips.len() && ips.iter().all(|ip| p.contains_key(ip)));
            bad += usize::from(!ok);
        }
        bad + s.present.keys().filter(|k| !want.contains_key(*k)).count()
    }

    fn reset_touched(&self) {
        self.lock().touched.clear();
    }

    fn touched(&self) -> usize {
        self.lock().touched.len()
    }

    fn last_change(&self) -> Option<Instant> {
        self.lock().last_change
    }

    fn events(&self) -> u64 {
        self.lock().events
    }

    fn slices(&self) -> usize {
        self.lock().slices.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The bridge process
// ---------------------------------------------------------------------------------------------

struct Bridge {
    proc: Proc,
    port: u16,
    spawned: Instant,
}

struct BridgeSpec<'a> {
    bin: &'a Path,
    bed: &'a TestBed,
    namespace: &'a str,
    prefix: &'a str,
    label: &'a str,
    extra: &'a [String],
}

impl Bridge {
    fn spawn(spec: &BridgeSpec) -> Bridge {
        let port = free_port();
        let log = spec.bed.dir.join(format!("bridge-{}.log", spec.label));
        let mut args = vec![
            "run".to_string(),
            format!("--etcd-endpoints={}", spec.bed.registry.endpoint()),
            format!("--prefix={}", spec.prefix),
            format!("--namespace={}", spec.namespace),
            format!("--kubeconfig={}", spec.bed.cluster.kubeconfig.display()),
            format!("--listen=127.0.0.1:{port}"),
            "--leader-election=false".into(),
        ];
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
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let (port, path) = (self.port, path.to_string());
        tokio::task::spawn_blocking(move || http_get(port, &path))
            .await
            .ok()
            .flatten()
    }

    async fn is_ready(&self) -> bool {
        matches!(self.get("/readyz").await, Some((200, _)))
    }

    /// Waits for `/readyz` to say 200; returns the time from spawn.
    async fn ready(&mut self, timeout: Duration) -> Option<Duration> {
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

    fn check_alive(&mut self) {
        assert!(
            self.proc.is_running(),
            "etcd-bridge exited unexpectedly\n{}",
            self.proc.log_tail(60)
        );
    }

    async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// The sum of `etcd_bridge_api_writes_total` over every verb and kind.
    async fn api_writes(&self) -> Option<f64> {
        let text = self.metrics().await;
        (!text.is_empty()).then(|| metric_sum(&text, "etcd_bridge_api_writes_total"))
    }

    /// Peak and current resident set size, in MiB (VmHWM, VmRSS of /proc/PID/status).
    fn rss_mib(&self) -> (Option<f64>, Option<f64>) {
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
    fn stop(&mut self) -> Duration {
        let t = Instant::now();
        block(|| self.proc.stop(Duration::from_secs(10)));
        t.elapsed()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.proc.log).unwrap_or_default()
    }
}

/// Stops a bridge; one that ignores SIGTERM for 10 s is worth reporting.
fn stop_bridge(anomalies: &mut Vec<String>, bridge: &mut Bridge, what: &str) {
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

/// Sums every series of a metric family (lines `name{...} value` or `name value`).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// The bridge's `sync_latency_seconds` histogram: (upper bound, cumulative count) per bucket,
/// and the sum and count.
fn sync_histogram(text: &str) -> (Vec<(String, f64)>, f64, f64) {
    let name = "etcd_bridge_sync_latency_seconds";
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for l in text.lines() {
        let Some(rest) = l.strip_prefix(name) else {
            continue;
        };
        let value = l
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if let Some(b) = rest.strip_prefix("_bucket{le=\"") {
            buckets.push((b.split('"').next().unwrap_or_default().to_string(), value));
        } else if rest.starts_with("_sum") {
            sum = value;
        } else if rest.starts_with("_count") {
            count = value;
        }
    }
    (buckets, sum, count)
}

fn histogram_delta(before: &str, after: &str) -> Value {
    let (b0, s0, c0) = sync_histogram(before);
    let (b1, s1, c1) = sync_histogram(after);
    let base: HashMap<String, f64> = b0.into_iter().collect();
    let buckets: Vec<Value> = b1
        .iter()
        .map(|(le, v)| json!({"le": le, "count": v - base.get(le).copied().unwrap_or(0.0)}))
        .collect();
    let n = c1 - c0;
    json!({
        "count": n,
        "mean_ms": if n > 0.0 { json!(((s1 - s0) / n * 1e6).round() / 1e3) } else { Value::Null },
        "cumulative_buckets": buckets,
    })
}

// ---------------------------------------------------------------------------------------------
// The audit log: every write the apiserver served
// ---------------------------------------------------------------------------------------------

struct Audit(PathBuf);

impl Audit {
    fn mark(&self) -> u64 {
        audit::mark(&self.0)
    }

    /// The writes to Services and EndpointSlices in `namespace` since `from` (a [`mark`]) by
    /// anyone but kube-controller-manager (whose garbage collector deletes slices of deleted
    /// Services). The bench itself never writes there, so these are the bridge's.
    fn bridge_writes(&self, from: u64, namespace: &str) -> Vec<AuditWrite> {
        audit::writes(&self.0, from, namespace)
            .into_iter()
            .filter(|w| {
                w.changes_an_object() && !w.user_agent.starts_with("kube-controller-manager")
            })
            .collect()
    }
}

fn writes_json(w: &[AuditWrite]) -> Value {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for x in w {
        *by.entry(format!("{} {}", x.verb, x.resource)).or_default() += 1;
    }
    let users: BTreeSet<&str> = w.iter().map(|x| x.user.as_str()).collect();
    json!({
        "total": w.len(),
        "failed": w.iter().filter(|x| x.code >= 400).count(),
        "by_verb_resource": by,
        "users": users,
    })
}

// ---------------------------------------------------------------------------------------------
// CPU time per component, per phase (profile evidence on a shared 2-core machine)
// ---------------------------------------------------------------------------------------------

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

fn cpu_secs(pid: u32, tck: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / tck)
}

/// The test bed's processes, found by their command lines (they all mention its directory).
fn components(dir: &Path) -> Vec<(String, u32)> {
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
struct CpuMark {
    at: Instant,
    cpu: Vec<(String, Option<f64>)>,
}

struct Cpu {
    tck: f64,
    pids: Vec<(String, u32)>,
}

impl Cpu {
    fn mark(&self, bridge: Option<&Bridge>) -> CpuMark {
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

    fn since(&self, m: &CpuMark, bridge: Option<&Bridge>) -> Value {
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

// ---------------------------------------------------------------------------------------------
// Writing changes: to etcd (the bridge), an EndpointSlice (the floor), Endpoints (the peer)
// ---------------------------------------------------------------------------------------------

enum Sink<'a> {
    Etcd(&'a mut Etcd, String),
    Slice(Api<EndpointSlice>),
    Endpoints(Api<Endpoints>),
}

fn ssa() -> PatchParams {
    PatchParams::apply("etcd-bridge-bench").force()
}

fn slice_json(name: &str, service: &str, ips: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "labels": {
                "bench": "floor",
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "bench.etcd-bridge.io",
            },
            "annotations": {"etcd-bridge.io/weight": "10"},
        },
        "addressType": "IPv4",
        "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        "endpoints": ips.iter().map(|ip| json!({
            "addresses": [ip],
            "conditions": {"ready": true, "serving": true, "terminating": false},
        })).collect::<Vec<_>>(),
    })
}

fn service_json(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",
            "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        },
    })
}

fn endpoints_json(name: &str, ips: &BTreeSet<String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": name},
        "subsets": [{
            "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "ports": [{"name": format!("grpc-{PORT}"), "port": PORT, "protocol": "TCP"}],
        }],
    })
}

impl Sink<'_> {
    async fn write(&mut self, model: &Model, c: &Change) {
        match self {
            Sink::Etcd(etcd, prefix) => {
                let key = reg_key(prefix, &c.service, &c.ip);
                let r = if c.add {
                    etcd.put(key, reg_value(&c.service, &c.ip), None)
                        .await
                        .map(|_| ())
                } else {
                    etcd.delete(key, None).await.map(|_| ())
                };
                r.unwrap_or_else(|e| panic!("etcd write: {e}"));
            }
            Sink::Slice(api) => {
                let body = slice_json("floor", &c.service, &model.want[&c.service]);
                api.patch("floor", &ssa(), &Patch::Apply(&body))
                    .await
                    .unwrap_or_else(|e| panic!("apply the floor EndpointSlice: {e}"));
            }
            Sink::Endpoints(api) => {
                let body = endpoints_json(&c.service, &model.want[&c.service]);
                api.patch(&c.service, &ssa(), &Patch::Apply(&body))
                    .await
                    .unwrap_or_else(|e| panic!("apply Endpoints {}: {e}", c.service));
            }
        }
    }
}

struct Run {
    stats: Stats,
    rate: f64,
    missed: Vec<(String, String, bool)>,
}

/// Makes `n` changes, alternately an add and a delete, one every `gap`, each timed from the
/// moment its write is sent until `tracker` sees it. Waits up to `drain` for the last ones.
async fn run_changes(
    sink: &mut Sink<'_>,
    tracker: &Tracker,
    model: &mut Model,
    rng: &mut Rng,
    (n, gap, drain): (usize, Duration, Duration),
    what: &str,
) -> Run {
    tracker.take_samples();
    tracker.drop_pending();
    let start = Instant::now();
    let mut last_report = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let c = model.change(rng, i % 2 == 0, tracker);
        tracker.expect(&c.service, &c.ip, c.add, Instant::now());
        sink.write(model, &c).await;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {n} changes sent, {} awaited",
                i + 1,
                tracker.pending()
            ));
        }
    }
    let sent = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + drain;
    while tracker.pending() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missed = tracker.drop_pending();
    let stats = Stats::new(tracker.take_samples(), missed.len());
    let rate = if n > 1 { (n - 1) as f64 / sent } else { 0.0 };
    progress(&format!("{what}: {} at {rate:.1} changes/s", stats.brief()));
    Run {
        stats,
        rate,
        missed,
    }
}

/// Waits until `tracker` shows every service of `want` and nothing else. Returns the time from
/// `since` to the last change the watch saw (None on timeout), and when `/readyz` first said 200
/// if a bridge is given.
async fn converge(
    tracker: &Tracker,
    want: &HashMap<String, BTreeSet<String>>,
    since: Instant,
    timeout: Duration,
    mut bridge: Option<&mut Bridge>,
    what: &str,
) -> (Option<Duration>, Option<Duration>) {
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    let mut ready = None;
    loop {
        if let Some(b) = bridge.as_deref_mut() {
            if ready.is_none() && b.is_ready().await {
                ready = Some(b.spawned.elapsed());
            }
            b.check_alive();
        }
        let bad = tracker.mismatched(want);
        if bad == 0 {
            let at = tracker
                .last_change()
                .map_or(Duration::ZERO, |t| t.saturating_duration_since(since));
            return (Some(at), ready);
        }
        if Instant::now() > deadline {
            progress(&format!(
                "{what}: NOT converged after {timeout:?}: {bad} services differ"
            ));
            return (None, ready);
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {} services in place, {} slices seen",
                want.len().saturating_sub(bad),
                want.len(),
                tracker.slices()
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

/// etcd put → etcd-client watch event, at `rate`.
async fn floor_etcd(etcd: &mut Etcd, n: usize, rate: f64) -> Stats {
    let prefix = "/bench-floor/";
    let mut watch = etcd
        .watch(prefix, Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch the floor prefix");
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            let t = Instant::now();
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    s.lock()
                        .unwrap()
                        .insert(String::from_utf8_lossy(kv.key()).into_owned(), t);
                }
            }
        }
    });
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + gap * i as u32).into()).await;
        let key = format!("{prefix}{i}");
        let t = Instant::now();
        etcd.put(key.clone(), reg_value("floor", "10.0.0.1"), None)
            .await
            .expect("etcd put (floor)");
        sent.push((key, t));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let seen = seen.lock().unwrap();
    let mut samples = Vec::new();
    let mut missed = 0;
    for (k, t) in sent {
        match seen.get(&k) {
            Some(s) => samples.push(s.saturating_duration_since(t).as_secs_f64() * 1000.0),
            None => missed += 1,
        }
    }
    Stats::new(samples, missed)
}

struct Ctx {
    opts: Opts,
    /// `etcd-bridge run --help`: which flags this build has.
    help: String,
    /// The flags of every import bridge: `--bridge-arg`s, and write-back off when it can be.
    import_args: Vec<String>,
    sz: Sizes,
    bed: TestBed,
    client: kube::Client,
    etcd: Etcd,
    audit: Audit,
    cpu: Cpu,
    rng: Rng,
    report: serde_json::Map<String, Value>,
    anomalies: Vec<String>,
}

impl Ctx {
    fn spec<'a>(&'a self, namespace: &'a str, prefix: &'a str, label: &'a str) -> BridgeSpec<'a> {
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

/// The floor's EndpointSlice: one service, one slice of 10 endpoints, like one of the bridge's.
struct FloorSlice {
    tracker: Tracker,
    model: Model,
    api: Api<EndpointSlice>,
}

impl FloorSlice {
    async fn create(ctx: &mut Ctx) -> FloorSlice {
        let ns = "bench-floor";
        create_namespace(&ctx.client, ns).await;
        let tracker = Tracker::start(ctx.client.clone(), ns, "bench=floor");
        tracker.synced().await;
        let model = Model::new("floor", 1, 10);
        let service = &model.names[0];
        let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), ns);
        // The first apply creates the slice; it is not timed.
        let first = slice_json("floor", service, &model.want[service]);
        api.patch("floor", &ssa(), &Patch::Apply(&first))
            .await
            .expect("create the floor EndpointSlice");
        converge(
            &tracker,
            &model.want,
            Instant::now(),
            Duration::from_secs(30),
            None,
            "floor slice",
        )
        .await;
        FloorSlice {
            tracker,
            model,
            api,
        }
    }

    /// `n` server-side applies, one every `gap`, each timed until the watch shows it.
    async fn run(&mut self, rng: &mut Rng, (n, gap, drain): (usize, Duration, Duration)) -> Stats {
        let run = run_changes(
            &mut Sink::Slice(self.api.clone()),
            &self.tracker,
            &mut self.model,
            rng,
            (n, gap, drain),
            "floor: apply → watch",
        )
        .await;
        run.stats
    }
}

/// The peer: kube-controller-manager mirrors Endpoints into EndpointSlices.
async fn peer(ctx: &mut Ctx) -> (Value, Stats) {
    let ns = "bench-peer";
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, MIRRORED);
    tracker.synced().await;
    let mut model = Model::new("peer", ctx.sz.peer_services, ctx.sz.peer_endpoints);
    let svcs: Api<Service> = Api::namespaced(ctx.client.clone(), ns);
    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    let started = Instant::now();
    let jobs = model.names.iter().map(|name| {
        let (svcs, eps) = (svcs.clone(), eps.clone());
        let body = endpoints_json(name, &model.want[name]);
        async move {
            svcs.patch(name, &ssa(), &Patch::Apply(&service_json(name)))
                .await
                .unwrap_or_else(|e| panic!("create Service {name}: {e}"));
            eps.patch(name, &ssa(), &Patch::Apply(&body))
                .await
                .unwrap_or_else(|e| panic!("create Endpoints {name}: {e}"));
        }
    });
    futures::stream::iter(jobs)
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    let (mirrored, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.converge_timeout,
        None,
        "peer: initial mirroring",
    )
    .await;
    assert!(
        mirrored.is_some(),
        "kube-controller-manager did not mirror the peer's Endpoints (see {})",
        ctx.bed
            .dir
            .join("cluster/kube-controller-manager.log")
            .display()
    );
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.peer_rate);
    let run = run_changes(
        &mut Sink::Endpoints(eps),
        &tracker,
        &mut model,
        &mut ctx.rng,
        (ctx.sz.peer_changes, gap, ctx.sz.drain),
        "peer: Endpoints → mirrored slice",
    )
    .await;
    if !run.missed.is_empty() {
        let msg = format!(
            "peer: {} of {} Endpoints changes never showed in a mirrored slice",
            run.missed.len(),
            ctx.sz.peer_changes
        );
        assert!(!ctx.opts.smoke, "harness check failed: {msg}");
        ctx.anomalies.push(msg);
    }
    let v = json!({
        "what": "kube-controller-manager's EndpointSlice mirroring: SSA of a selector-less Service's Endpoints → the mirrored EndpointSlice seen by a watch",
        "services": ctx.sz.peer_services,
        "endpoints_per_service": ctx.sz.peer_endpoints,
        "target_rate_per_s": ctx.sz.peer_rate,
        "achieved_rate_per_s": (run.rate * 10.0).round() / 10.0,
        "initial_mirroring_s": dur_json(mirrored),
        "latency": run.stats.json(),
    });
    (v, run.stats)
}

fn describe_missed(missed: &[(String, String, bool)]) -> String {
    missed
        .iter()
        .take(5)
        .map(|(s, ip, add)| format!("{} {ip} in {s}", if *add { "add" } else { "delete" }))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

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
    let help = bridge_help(&opts.bridge);
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

    let import = import_sections(&mut ctx).await;
    let big = big_section(&mut ctx).await;
    let wb = writeback_section(&mut ctx).await;
    finish(ctx, import, big, wb);
}

/// What the import sections measured, for the goals.
struct Import {
    floor_etcd: Stats,
    floor_apply: Stats,
    peer_p50: Option<f64>,
    peer: Stats,
    prop: Stats,
    isolated_writes: usize,
    isolated_changes: usize,
    isolated_missed: usize,
    burst_converged: Option<Duration>,
    burst_writes: usize,
    burst_slices: usize,
    cold: Option<Duration>,
    restart_writes: usize,
    restart_ready: Option<Duration>,
    rss_10k: Option<f64>,
    registrations: usize,
}

async fn import_sections(ctx: &mut Ctx) -> Import {
    let sz = &ctx.sz;
    let (ns, prefix) = ("bench-import", "/bench-import/");
    let mut model = Model::new("svc", sz.services, sz.endpoints);
    let regs = model.registrations();

    // ---- cold start ----
    step(&format!(
        "cold start: {regs} registrations over {} services in etcd, then the bridge starts on an empty namespace",
        sz.services
    ));
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let load = put_all(&mut ctx.etcd, prefix, &all_regs(&model), "load").await;
    progress(&format!(
        "{regs} puts in {:.2} s (txns of {TXN_OPS})",
        load.as_secs_f64()
    ));
    let mark = ctx.audit.mark();
    let cpu = ctx.cpu.mark(None);
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "import"));
    let spawned = bridge.spawned;
    let (cold, mut cold_ready) = converge(
        &tracker,
        &model.want,
        spawned,
        ctx.sz.converge_timeout,
        Some(&mut bridge),
        "cold start",
    )
    .await;
    if cold_ready.is_none() {
        cold_ready = bridge.ready(ctx.sz.converge_timeout).await;
    }
    tokio::time::sleep(ctx.sz.settle).await;
    let cold_writes = ctx.audit.bridge_writes(mark, ns);
    let (hwm, rss) = bridge.rss_mib();
    progress(&format!(
        "every object in place after {}, /readyz 200 after {}, {} writes, VmHWM {:.1} MiB",
        secs(cold),
        secs(cold_ready),
        cold_writes.len(),
        hwm.unwrap_or(0.0)
    ));
    ctx.report.insert(
        "cold_start".into(),
        json!({
            "registrations": regs,
            "services": ctx.sz.services,
            "etcd_load_s": dur_json(Some(load)),
            "in_place_s": dur_json(cold),
            "ready_s": dur_json(cold_ready),
            "writes": writes_json(&cold_writes),
            "vm_hwm_mib": r3(hwm),
            "vm_rss_mib": r3(rss),
            "cpu": ctx.cpu.since(&cpu, Some(&bridge)),
        }),
    );

    // ---- floor and peer, back to back with the propagation ----
    step(&format!(
        "floor: etcd put → watch event ({} puts at {}/s)",
        ctx.sz.floor_changes, ctx.sz.rate
    ));
    let (n, rate) = (ctx.sz.floor_changes, ctx.sz.rate);
    let floor_etcd = floor_etcd(&mut ctx.etcd, n, rate).await;
    progress(&format!("etcd put → watch: {}", floor_etcd.brief()));
    assert!(
        floor_etcd.missed == 0 && !floor_etcd.samples.is_empty(),
        "harness check failed: etcd watch events missing in the floor"
    );
    step(&format!(
        "floor: server-side apply of an EndpointSlice (10 endpoints) → watch event ({} applies at {}/s)",
        ctx.sz.floor_changes, ctx.sz.rate
    ));
    let cpu_floor = ctx.cpu.mark(None);
    let mut floor_slice = FloorSlice::create(ctx).await;
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.rate);
    let (n, drain) = (ctx.sz.floor_changes, ctx.sz.drain);
    let floor_apply = floor_slice.run(&mut ctx.rng, (n, gap, drain)).await;
    assert!(
        floor_apply.missed == 0 && !floor_apply.samples.is_empty(),
        "harness check failed: the floor's EndpointSlice applies were not all seen by the watch"
    );
    let floor_cpu = ctx.cpu.since(&cpu_floor, None);
    let floor_sum = floor_etcd.p50().zip(floor_apply.p50()).map(|(a, b)| a + b);
    ctx.report.insert(
        "floor".into(),
        json!({
            "etcd_put_to_watch": floor_etcd.json(),
            "apply_to_watch": floor_apply.json(),
            "floor_p50_ms": r3(floor_sum),
            "apply_cpu": floor_cpu,
        }),
    );

    step(&format!(
        "peer: kube-controller-manager's EndpointSlice mirroring, {} services × {} endpoints, {} changes at {}/s",
        ctx.sz.peer_services, ctx.sz.peer_endpoints, ctx.sz.peer_changes, ctx.sz.peer_rate
    ));
    let cpu_peer = ctx.cpu.mark(None);
    let (mut peer, peer_stats) = peer(ctx).await;
    let peer_p50 = peer_stats.p50();
    peer.as_object_mut()
        .unwrap()
        .insert("cpu".into(), ctx.cpu.since(&cpu_peer, None));
    ctx.report.insert("peer".into(), peer);

    // ---- propagation ----
    step(&format!(
        "propagation: {} changes at {}/s (alternating add/delete on random services) over {regs} registrations",
        ctx.sz.changes, ctx.sz.rate
    ));
    let metrics_before = bridge.metrics().await;
    let mark = ctx.audit.mark();
    let cpu = ctx.cpu.mark(Some(&bridge));
    let gap = Duration::from_secs_f64(1.0 / ctx.sz.rate);
    let (n, drain) = (ctx.sz.changes, ctx.sz.drain);
    let prop = run_changes(
        &mut Sink::Etcd(&mut ctx.etcd, prefix.into()),
        &tracker,
        &mut model,
        &mut ctx.rng,
        (n, gap, drain),
        "propagation: etcd → EndpointSlice",
    )
    .await;
    bridge.check_alive();
    let prop_cpu = ctx.cpu.since(&cpu, Some(&bridge));
    tokio::time::sleep(ctx.sz.settle).await;
    let prop_writes = ctx.audit.bridge_writes(mark, ns);
    let metrics_after = bridge.metrics().await;
    if !prop.missed.is_empty() {
        ctx.anomalies.push(format!(
            "propagation: {} of {n} etcd changes never showed in the bridge's EndpointSlices within {drain:?} (e.g. {})",
            prop.missed.len(),
            describe_missed(&prop.missed)
        ));
    }
    let (still, _) = converge(
        &tracker,
        &model.want,
        Instant::now(),
        Duration::from_secs(10),
        Some(&mut bridge),
        "after propagation",
    )
    .await;
    if still.is_none() {
        ctx.anomalies.push(
            "propagation: after the changes the cluster does not match etcd (services differ)"
                .into(),
        );
    }
    ctx.report.insert(
        "propagation".into(),
        json!({
            "changes": n,
            "target_rate_per_s": ctx.sz.rate,
            "achieved_rate_per_s": (prop.rate * 10.0).round() / 10.0,
            "latency": prop.stats.json(),
            "writes": writes_json(&prop_writes),
            "writes_per_change": prop_writes.len() as f64 / n as f64,
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
            "cpu": prop_cpu,
        }),
    );

    // ---- writes per isolated change ----
    step(&format!(
        "isolated changes: {} changes {} ms apart, writes counted in the audit log",
        ctx.sz.isolated,
        ctx.sz.isolated_gap.as_millis()
    ));
    let (n, gap) = (ctx.sz.isolated, ctx.sz.isolated_gap);
    // The floor at the same spacing: an idle system wakes up slower than a busy one.
    let floor_isolated = floor_slice.run(&mut ctx.rng, (n, gap, drain)).await;
    progress(&format!(
        "floor (SSA → watch) at the same spacing: {}",
        floor_isolated.brief()
    ));
    let mark = ctx.audit.mark();
    let metric0 = bridge.api_writes().await;
    let metrics_before = bridge.metrics().await;
    let iso = run_changes(
        &mut Sink::Etcd(&mut ctx.etcd, prefix.into()),
        &tracker,
        &mut model,
        &mut ctx.rng,
        (n, gap, drain),
        "isolated",
    )
    .await;
    tokio::time::sleep(ctx.sz.settle).await;
    let iso_writes = ctx.audit.bridge_writes(mark, ns);
    let metric1 = bridge.api_writes().await;
    let metrics_after = bridge.metrics().await;
    progress(&format!(
        "{} writes for {n} changes ({} by the bridge's own counter)",
        iso_writes.len(),
        metric1
            .zip(metric0)
            .map_or("-".into(), |(a, b)| format!("{}", a - b))
    ));
    if iso_writes.len() > n {
        ctx.anomalies.push(format!(
            "isolated changes: {} API writes for {n} single-endpoint changes (expected {n}): {}",
            iso_writes.len(),
            writes_json(&iso_writes)
        ));
    }
    let (hwm_10k, rss_10k) = bridge.rss_mib();
    ctx.report.insert(
        "isolated".into(),
        json!({
            "changes": n,
            "gap_ms": gap.as_millis() as u64,
            "seen": iso.stats.samples.len(),
            "missed": iso.stats.missed,
            "writes": writes_json(&iso_writes),
            "writes_by_metric": metric1.zip(metric0).map(|(a, b)| a - b),
            "writes_per_change": iso_writes.len() as f64 / n as f64,
            "latency": iso.stats.json(),
            "floor_apply_at_same_spacing": floor_isolated.json(),
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
        }),
    );

    // ---- restart with every object right ----
    step("restart: the bridge stops (SIGTERM) and starts again, every object already right");
    let bridge_log_1 = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "import");
    let mark = ctx.audit.mark();
    let events0 = tracker.events();
    let cpu = ctx.cpu.mark(None);
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "import-restarted"));
    let ready = bridge.ready(ctx.sz.restart_timeout).await;
    tokio::time::sleep(ctx.sz.settle).await;
    let restart_writes = ctx.audit.bridge_writes(mark, ns);
    let restart_metric = bridge.api_writes().await;
    let restart_events = tracker.events() - events0;
    let (restart_hwm, _) = bridge.rss_mib();
    progress(&format!(
        "/readyz 200 after {}, {} writes in the audit log ({} by its counter), {} slice events in the {} s after",
        secs(ready),
        restart_writes.len(),
        restart_metric.map_or("-".into(), |v| v.to_string()),
        restart_events,
        ctx.sz.settle.as_secs()
    ));
    if !restart_writes.is_empty() {
        ctx.anomalies.push(format!(
            "restart with every object right: the bridge wrote {} times ({})",
            restart_writes.len(),
            writes_json(&restart_writes)
        ));
    }
    ctx.report.insert(
        "restart".into(),
        json!({
            "registrations": model.registrations(),
            "ready_s": dur_json(ready),
            "writes": writes_json(&restart_writes),
            "writes_by_metric": restart_metric,
            "slice_events_seen": restart_events,
            "vm_hwm_mib": r3(restart_hwm),
            "settle_s": ctx.sz.settle.as_secs(),
            "cpu": ctx.cpu.since(&cpu, Some(&bridge)),
        }),
    );

    // ---- burst ----
    let burst_n = ctx.sz.burst;
    step(&format!(
        "burst: {burst_n} new registrations on the {} existing services, in random order, txns of {TXN_OPS}, as fast as etcd takes them",
        ctx.sz.services
    ));
    let per = burst_n / ctx.sz.services;
    let mut burst: Vec<(String, String)> = Vec::with_capacity(burst_n);
    for name in model.names.clone() {
        for _ in 0..per {
            let ip = fresh_ip();
            model.want.get_mut(&name).unwrap().insert(ip.clone());
            burst.push((name.clone(), ip));
        }
    }
    ctx.rng.shuffle(&mut burst);
    tracker.reset_touched();
    let mark = ctx.audit.mark();
    let metrics_before = bridge.metrics().await;
    let cpu = ctx.cpu.mark(Some(&bridge));
    let started = Instant::now();
    let put_time = put_all(&mut ctx.etcd, prefix, &burst, "burst").await;
    let (converged, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.converge_timeout,
        Some(&mut bridge),
        "burst",
    )
    .await;
    let burst_cpu = ctx.cpu.since(&cpu, Some(&bridge));
    tokio::time::sleep(ctx.sz.settle).await;
    let burst_writes = ctx.audit.bridge_writes(mark, ns);
    let touched = tracker.touched();
    let metrics_after = bridge.metrics().await;
    progress(&format!(
        "{burst_n} puts in {:.2} s; converged after {}; {} writes for {touched} slices touched",
        put_time.as_secs_f64(),
        secs(converged),
        burst_writes.len()
    ));
    ctx.report.insert(
        "burst".into(),
        json!({
            "puts": burst.len(),
            "txn_ops": TXN_OPS,
            "puts_s": dur_json(Some(put_time)),
            "converged_s": dur_json(converged),
            "writes": writes_json(&burst_writes),
            "slices_touched": touched,
            "writes_per_slice": burst_writes.len() as f64 / touched.max(1) as f64,
            "bridge_sync_latency_histogram": histogram_delta(&metrics_before, &metrics_after),
            "cpu": burst_cpu,
        }),
    );
    let (hwm_after_burst, _) = bridge.rss_mib();
    ctx.report.insert(
        "memory_10k".into(),
        json!({
            "registrations": regs,
            "vm_hwm_mib": r3(hwm_10k),
            "vm_rss_mib": r3(rss_10k),
            "note": "the first bridge, after cold start, propagation and isolated changes",
            "restarted_bridge_vm_hwm_mib_after_burst": r3(hwm_after_burst),
            "registrations_after_burst": model.registrations(),
        }),
    );
    let log2 = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "import (restarted)");
    note_log_warnings(ctx, "import", &(bridge_log_1 + &log2));

    Import {
        floor_etcd,
        floor_apply,
        peer_p50,
        peer: peer_stats,
        prop: prop.stats,
        isolated_writes: iso_writes.len(),
        isolated_changes: n,
        isolated_missed: iso.stats.missed,
        burst_converged: converged,
        burst_writes: burst_writes.len(),
        burst_slices: touched,
        cold,
        restart_writes: restart_writes.len(),
        restart_ready: ready,
        rss_10k: hwm_10k,
        registrations: regs,
    }
}

/// Warnings and errors in a bridge's log are worth a look.
fn note_log_warnings(ctx: &mut Ctx, what: &str, log: &str) {
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

struct Big {
    rss: Option<f64>,
    rss_restart: Option<f64>,
    registrations: usize,
}

/// Memory at 100k registrations: 10,000 services × 10 endpoints.
async fn big_section(ctx: &mut Ctx) -> Big {
    let (ns, prefix) = ("bench-big", "/bench-big/");
    let model = Model::new("big", ctx.sz.big_services, ctx.sz.big_endpoints);
    let regs = model.registrations();
    step(&format!(
        "memory: {regs} registrations ({} services × {}), loaded in txns while the bridge runs",
        ctx.sz.big_services, ctx.sz.big_endpoints
    ));
    create_namespace(&ctx.client, ns).await;
    let tracker = Tracker::start(ctx.client.clone(), ns, BRIDGE_OWNED);
    tracker.synced().await;
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "big"));
    let ready = bridge.ready(ctx.sz.restart_timeout).await;
    assert!(
        ready.is_some(),
        "the big bridge never got ready on an empty prefix"
    );
    let cpu = ctx.cpu.mark(Some(&bridge));
    let started = Instant::now();
    let load = put_all(&mut ctx.etcd, prefix, &all_regs(&model), "load").await;
    progress(&format!("{regs} puts in {:.1} s", load.as_secs_f64()));
    let (converged, _) = converge(
        &tracker,
        &model.want,
        started,
        ctx.sz.big_timeout,
        Some(&mut bridge),
        "100k",
    )
    .await;
    let big_cpu = ctx.cpu.since(&cpu, Some(&bridge));
    let (hwm, rss) = bridge.rss_mib();
    let services = Api::<Service>::namespaced(ctx.client.clone(), ns)
        .list_metadata(&ListParams::default().labels(BRIDGE_OWNED))
        .await
        .map(|l| l.items.len())
        .ok();
    progress(&format!(
        "in place after {}: {} Services, {} EndpointSlices; VmHWM {:.1} MiB, VmRSS {:.1} MiB",
        secs(converged),
        services.map_or("-".into(), |n| n.to_string()),
        tracker.slices(),
        hwm.unwrap_or(0.0),
        rss.unwrap_or(0.0)
    ));
    if converged.is_none() {
        ctx.anomalies.push(format!(
            "100k: the bridge did not bring every object in place within {:?}",
            ctx.sz.big_timeout
        ));
    }
    let log1 = bridge.log();
    stop_bridge(&mut ctx.anomalies, &mut bridge, "100k");

    // A restart reads all of it at once: the cold start at this size.
    step(&format!(
        "memory: restart of the bridge over {regs} registrations (one etcd read of the whole prefix)"
    ));
    let mark = ctx.audit.mark();
    let mut bridge = Bridge::spawn(&ctx.spec(ns, prefix, "big-restarted"));
    let ready2 = bridge.ready(ctx.sz.restart_timeout).await;
    tokio::time::sleep(ctx.sz.settle).await;
    let writes2 = ctx.audit.bridge_writes(mark, ns);
    let (hwm2, _) = bridge.rss_mib();
    let log2 = bridge.log();
    progress(&format!(
        "/readyz 200 after {}, {} writes, VmHWM {:.1} MiB",
        secs(ready2),
        writes2.len(),
        hwm2.unwrap_or(0.0)
    ));
    if ready2.is_none() {
        let why = log2
            .lines()
            .rev()
            .find(|l| l.contains("WARN") || l.contains("ERROR"))
            .unwrap_or("(nothing in the log)")
            .to_string();
        ctx.anomalies.push(format!(
            "100k: after a restart over {regs} registrations the bridge was not ready within {:?}; its last warning: {why}",
            ctx.sz.restart_timeout
        ));
    }
    stop_bridge(&mut ctx.anomalies, &mut bridge, "100k (restarted)");
    note_log_warnings(ctx, "100k", &(log1 + &log2));
    ctx.report.insert(
        "memory_100k".into(),
        json!({
            "registrations": regs,
            "services": ctx.sz.big_services,
            "etcd_load_s": dur_json(Some(load)),
            "in_place_s": dur_json(converged),
            "services_listed": services,
            "slices_seen": tracker.slices(),
            "vm_hwm_mib": r3(hwm),
            "vm_rss_mib": r3(rss),
            "cpu": big_cpu,
            "restart": {
                "ready_s": dur_json(ready2),
                "writes": writes_json(&writes2),
                "vm_hwm_mib": r3(hwm2),
            },
        }),
    );
    Big {
        rss: hwm,
        rss_restart: ready2.and(hwm2),
        registrations: regs,
    }
}

// ---------------------------------------------------------------------------------------------
// Write-back (only when the bridge has it)
// ---------------------------------------------------------------------------------------------

fn bridge_help(bridge: &Path) -> String {
    std::process::Command::new(bridge)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether `help` lists the flag `name` (a whole word, not a prefix of a longer flag).
fn has_flag(help: &str, name: &str) -> bool {
    help.split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .any(|w| w == name)
}

const WB_NOT_BUILT: &str = "write-back: not measured (not built yet)";

async fn writeback_section(ctx: &mut Ctx) -> Value {
    let crd = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("crds/{CRD_NAME}.yaml"));
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

/// etcd keys seen by a watch of the whole keyspace: key → (first seen, last value, last seen).
type KeyLog = Arc<Mutex<HashMap<String, (Instant, String, Instant)>>>;

async fn writeback(ctx: &mut Ctx, crd: &Path) -> Result<Value, String> {
    let (ns, prefix) = ("bench-writeback", "/bench-writeback/");
    let crd_path = crd.display().to_string();
    let out = block(|| ctx.bed.cluster.kubectl(&["apply", "-f", &crd_path]));
    if !out.status.success() {
        return Err(format!(
            "kubectl apply -f {crd_path}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let crd_ref = format!("crd/{CRD_NAME}");
    block(|| {
        ctx.bed.cluster.kubectl(&[
            "wait",
            "--for=condition=Established",
            &crd_ref,
            "--timeout=60s",
        ])
    });
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
    create_namespace(&ctx.client, ns).await;
    let gvk = GroupVersionKind::gvk("etcd-bridge.io", &version, "EtcdRegistration");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "etcdregistrations");
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &ar);

    // Every key in etcd, wherever the bridge writes it: matched by `{service}/{version}/{addr}`.
    let keys: KeyLog = Arc::default();
    let mut watch = ctx
        .etcd
        .watch("", Some(WatchOptions::new().with_all_keys()))
        .await
        .map_err(|e| format!("watch etcd: {e}"))?;
    let k = keys.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            let t = Instant::now();
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    let mut k = k.lock().unwrap();
                    let first = k.get(&key).map_or(t, |e| e.0);
                    k.insert(key, (first, value, t));
                }
            }
        }
    });

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
        extra.push("--writeback-prefix=/bench-writeback-keys/".into());
    }
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

// ---------------------------------------------------------------------------------------------
// Report: the table, JSON, SVG
// ---------------------------------------------------------------------------------------------

fn machine() -> Value {
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

fn git_describe() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

struct Goal {
    name: &'static str,
    target: String,
    measured: String,
    met: Option<bool>,
}

/// 10000 → "10k", 500 → "500".
fn count(n: usize) -> String {
    if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

fn mark(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

fn goals(i: &Import, big: &Big) -> Vec<Goal> {
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

fn finish(mut ctx: Ctx, import: Import, big: Big, wb: Value) {
    let goals = goals(&import, &big);
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
    if !ctx.anomalies.is_empty() {
        println!("\nthings in the bridge that looked wrong:");
        for a in &ctx.anomalies {
            println!("  - {a}");
        }
    }
    // Keep the bridges' logs: the test bed's directory goes when the next test bed starts.
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
    DONE.store(true, Ordering::Relaxed);
    println!(
        "\nwrote {}, {} and the bridges' logs in {} in {:.0} s",
        path.display(),
        svg_path.display(),
        logs.display(),
        elapsed()
    );
}

/// The plot of the floor, the peer and the bridge.
fn plot(etcd: &Stats, apply: &Stats, peer: &Stats, bridge: &Stats) -> String {
    latency_svg(&[
        ("etcd put → watch (floor)", "#2ca02c", etcd),
        ("SSA EndpointSlice → watch (floor)", "#1f77b4", apply),
        ("mirroring controller (peer)", "#ff7f0e", peer),
        ("etcd-bridge: etcd → EndpointSlice", "#d62728", bridge),
    ])
}

/// `--replot FILE`: the plot again from a results.json, to `--out`/latency.svg.
fn replot(results: &Path, out: &Path) {
    let text = std::fs::read_to_string(results)
        .unwrap_or_else(|e| panic!("read {}: {e}", results.display()));
    let r: Value = serde_json::from_str(&text).expect("results JSON");
    let stats = |v: &Value| {
        Stats::new(
            v["samples_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_default(),
            v["missed"].as_u64().unwrap_or(0) as usize,
        )
    };
    let svg = plot(
        &stats(&r["floor"]["etcd_put_to_watch"]),
        &stats(&r["floor"]["apply_to_watch"]),
        &stats(&r["peer"]["latency"]),
        &stats(&r["propagation"]["latency"]),
    );
    let path = out.join("latency.svg");
    std::fs::create_dir_all(out).expect("create the output directory");
    std::fs::write(&path, svg).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    println!("wrote {}", path.display());
}

/// The latency distributions as CDFs on a log scale, written by hand.
fn latency_svg(series: &[(&str, &str, &Stats)]) -> String {
    let (w, h) = (760.0, 440.0);
    let (l, r, t, b) = (60.0, 20.0, 40.0, 150.0);
    let all: Vec<f64> = series
        .iter()
        .flat_map(|(_, _, s)| s.samples.iter().copied())
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min).max(0.01);
    let hi = all.iter().copied().fold(0.0, f64::max).max(lo * 10.0);
    let (d0, d1) = (lo.log10().floor(), hi.log10().ceil());
    let x = |v: f64| l + (v.max(10f64.powf(d0)).log10() - d0) / (d1 - d0) * (w - l - r);
    // The percentile axis stretches the tail: 0, 0.5, 0.9, 0.99, 0.999 are equally spaced.
    let y = |p: f64| {
        let q = (-(1.0 - p).max(1e-3).log10()).clamp(0.0, 3.0);
        t + (1.0 - q / 3.0) * (h - t - b)
    };
    let mut s = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="{w}" height="{h}" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="14">Latency from write to watch event: the share of changes seen within a time</text>
"#,
        w / 2.0
    );
    let mut d = d0;
    while d <= d1 {
        let v = 10f64.powf(d);
        let xv = x(v);
        s += &format!(
            r##"<line x1="{xv:.1}" y1="{t}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{}</text>
"##,
            h - b,
            h - b + 16.0,
            if v < 1.0 {
                format!("{v}")
            } else {
                format!("{v:.0}")
            }
        );
        d += 1.0;
    }
    for p in [0.0, 0.5, 0.9, 0.99, 0.999] {
        let yv = y(p);
        s += &format!(
            r##"<line x1="{l}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{p}</text>
"##,
            w - r,
            l - 6.0,
            yv + 4.0
        );
    }
    s += &format!(
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">milliseconds</text>
<text transform="translate(16,{:.1}) rotate(-90)" text-anchor="middle">share of changes seen</text>
"#,
        (l + w - r) / 2.0,
        h - b + 34.0,
        (t + h - b) / 2.0
    );
    for (i, (name, color, st)) in series.iter().enumerate() {
        let n = st.samples.len();
        if n > 0 {
            let mut pts = String::new();
            let mut prev_y = y(0.0);
            for (k, v) in st.samples.iter().enumerate() {
                let xv = x(*v);
                let yv = y((k + 1) as f64 / n as f64);
                pts += &format!("{xv:.1},{prev_y:.1} {xv:.1},{yv:.1} ");
                prev_y = yv;
            }
            s += &format!(
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{pts}"/>
"#
            );
        }
        let ly = h - b + 56.0 + i as f64 * 20.0;
        s += &format!(
            r#"<line x1="{l}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{name}: {}</text>
"#,
            ly - 4.0,
            l + 24.0,
            ly - 4.0,
            l + 32.0,
            ly,
            st.brief()
        );
    }
    s += "</svg>\n";
    s
}
