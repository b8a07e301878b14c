//! The command line, and how big each section is.

use std::path::PathBuf;
use std::time::Duration;

pub struct Opts {
    pub smoke: bool,
    pub bridge: PathBuf,
    pub out: PathBuf,
    pub bridge_args: Vec<String>,
    pub peer_rate: Option<f64>,
    pub services: Option<usize>,
    pub replot: Option<PathBuf>,
    /// Run one section only (one of [`ONLY`]), and report it alone.
    pub only: Option<String>,
}

impl Opts {
    pub fn parse() -> Opts {
        let mut opts = Opts {
            smoke: false,
            bridge: PathBuf::from("target/release/etcd-bridge"),
            out: PathBuf::from("target/bench"),
            bridge_args: Vec::new(),
            peer_rate: None,
            services: None,
            replot: None,
            only: None,
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
                "--only" => {
                    let v = value("--only");
                    if !ONLY.contains(&v.as_str()) {
                        usage(&format!("--only takes one of {}", ONLY.join(", ")));
                    }
                    opts.only = Some(v)
                }
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

/// The sections `--only` runs alone.
pub const ONLY: [&str; 7] = [
    "shards",
    "sources",
    "writeback-scale",
    "format-parse",
    "formats",
    "health",
    "health-scale",
];

pub fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("bench: {err}");
    }
    eprintln!(
        "usage: bench [--smoke] [--bridge PATH] [--out DIR] [--bridge-arg ARG]... [--peer-rate N] [--services N] [--only SECTION] [--replot results.json]"
    );
    std::process::exit(2)
}

/// How big each section is: the numbers, or a tiny smoke version of them.
pub struct Sizes {
    pub services: usize,
    pub endpoints: usize,
    pub rate: f64,
    pub changes: usize,
    pub floor_changes: usize,
    pub peer_services: usize,
    pub peer_endpoints: usize,
    pub peer_changes: usize,
    pub peer_rate: f64,
    pub isolated: usize,
    pub isolated_gap: Duration,
    pub burst: usize,
    pub big_services: usize,
    pub big_endpoints: usize,
    pub writeback_objects: usize,
    pub writeback_changes: usize,
    /// EtcdRegistrations per variant of the write-back scale section.
    pub wb_scale_objects: usize,
    /// Keys per lease of the lease pool variant.
    pub wb_keys_per_lease: usize,
    /// Puts of the probe of etcd's Put latency with a lease.
    pub wb_probe_puts: usize,
    pub wb_scale_timeout: Duration,
    /// Registrations per format of the parse benchmark, and its rounds.
    pub parse_registrations: usize,
    pub parse_rounds: usize,
    /// Registrations per format of the mixed estates: the small one (compared with the seed
    /// estate of the import sections) and the big one (six formats at once).
    pub formats_small: usize,
    pub formats_big: usize,
    /// Health detection: Services (one server flipped in each), rounds of flips each way, and
    /// the probe interval.
    pub health_services: usize,
    pub health_rounds: usize,
    pub health_interval: Duration,
    /// Health at scale: endpoints probed, the interval, and the measuring window.
    pub probe_endpoints: usize,
    pub probe_interval: Duration,
    pub probe_window: Duration,
    /// Two registries, one frozen: PUTs per phase.
    pub sources_changes: usize,
    pub settle: Duration,
    pub drain: Duration,
    pub converge_timeout: Duration,
    pub big_timeout: Duration,
    pub restart_timeout: Duration,
    /// Data plane (a real node): repetitions of each path, and the most time they may take.
    pub dataplane_reps: usize,
    pub dataplane_budget: Duration,
}

impl Sizes {
    pub fn new(opts: &Opts) -> Sizes {
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
                // Small leases, so that the smoke run has several.
                wb_scale_objects: 20,
                wb_keys_per_lease: 8,
                wb_probe_puts: 20,
                wb_scale_timeout: Duration::from_secs(60),
                parse_registrations: 600,
                parse_rounds: 2,
                formats_small: 20,
                formats_big: 50,
                health_services: 3,
                health_rounds: 1,
                health_interval: Duration::from_millis(500),
                probe_endpoints: 60,
                probe_interval: Duration::from_millis(500),
                probe_window: Duration::from_secs(1),
                sources_changes: 5,
                settle: Duration::from_secs(1),
                drain: Duration::from_secs(15),
                converge_timeout: Duration::from_secs(60),
                big_timeout: Duration::from_secs(60),
                restart_timeout: Duration::from_secs(30),
                dataplane_reps: 1,
                dataplane_budget: Duration::from_secs(60),
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
                wb_scale_objects: 10_000,
                wb_keys_per_lease: 1_000,
                wb_probe_puts: 500,
                wb_scale_timeout: Duration::from_secs(240),
                parse_registrations: 20_000,
                parse_rounds: 7,
                // 6 × 1,667 ≈ 10k, the size of the seed estate; 6 × 10,000 = 60k.
                formats_small: 1_667,
                formats_big: 10_000,
                health_services: 10,
                health_rounds: 2,
                health_interval: Duration::from_secs(5),
                probe_endpoints: 10_000,
                probe_interval: Duration::from_secs(5),
                probe_window: Duration::from_secs(20),
                sources_changes: 100,
                settle: Duration::from_secs(3),
                drain: Duration::from_secs(20),
                converge_timeout: Duration::from_secs(180),
                big_timeout: Duration::from_secs(420),
                restart_timeout: Duration::from_secs(60),
                dataplane_reps: 15,
                dataplane_budget: Duration::from_secs(300),
            }
        }
    }
}
