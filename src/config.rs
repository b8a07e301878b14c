//! Command-line flags, each with an environment-variable equivalent, and their validation.

use crate::error::{Error, Result};
use crate::format::Format;
use crate::snapshot::Source;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "etcd-bridge",
    version,
    about = "Projects an etcd gRPC service registry into Kubernetes Services and EndpointSlices."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch etcd and keep Services and EndpointSlices in the target namespace in step with it.
    Run(Box<RunArgs>),
    /// Print, from etcd alone and with no cluster, what `run` would write, and every key it would
    /// skip with the reason.
    Preview(Box<PreviewArgs>),
    /// Print a CRD (YAML), generated from the Rust types: EtcdRegistration (the default) or
    /// EtcdSource.
    Crd {
        #[arg(value_enum, default_value = "etcdregistrations")]
        kind: CrdKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrdKind {
    Etcdregistrations,
    Etcdsources,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where the registry is and how it is read.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long = "etcd-endpoints",
        env = "ETCD_BRIDGE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Key prefixes to watch, comma-separated, each with its registry format:
    /// `PREFIX` (seed) or `PREFIX=FORMAT`, FORMAT one of seed, etcd-naming, go-zero, kratos,
    /// go-micro, kitex, auto. Each must end with `/` (and start with `/` for seed); none may
    /// contain another.
    #[arg(
        long = "prefix",
        env = "ETCD_BRIDGE_PREFIXES",
        value_delimiter = ',',
        default_value = "/",
        value_parser = source
    )]
    pub prefixes: Vec<Source>,
    /// etcd username (with --etcd-password).
    #[arg(long = "etcd-username", env = "ETCD_BRIDGE_ETCD_USERNAME")]
    pub username: Option<String>,
    /// etcd password.
    #[arg(
        long = "etcd-password",
        env = "ETCD_BRIDGE_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub password: Option<String>,
    /// CA certificate (PEM) that signed etcd's serving certificate.
    #[arg(long = "etcd-ca-file", env = "ETCD_BRIDGE_ETCD_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for etcd client-certificate authentication.
    #[arg(long = "etcd-cert-file", env = "ETCD_BRIDGE_ETCD_CERT_FILE")]
    pub cert_file: Option<std::path::PathBuf>,
    /// Client key (PEM) for --etcd-cert-file.
    #[arg(long = "etcd-key-file", env = "ETCD_BRIDGE_ETCD_KEY_FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Remove this registry's endpoints once it has been unreachable this long (e.g. 10m).
    /// Without it, the last state is kept however long etcd is away.
    #[arg(long = "stale-after", env = "ETCD_BRIDGE_STALE_AFTER", value_parser = humantime)]
    pub stale_after: Option<Duration>,
    /// Timeout of one etcd request, and of connecting.
    #[arg(long = "etcd-timeout", env = "ETCD_BRIDGE_ETCD_TIMEOUT", value_parser = humantime, default_value = "5s")]
    pub timeout: Duration,
}

/// How registrations become objects.
#[derive(Debug, Clone, Args)]
pub struct ProjectionArgs {
    /// Also project the `{name}` Service that holds every version (what a Resolver with an empty
    /// version sees). `--aggregate=false` projects only `{name}-{version}`.
    #[arg(long, env = "ETCD_BRIDGE_AGGREGATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub aggregate: bool,
    /// Make Services headless (gRPC clients balance for themselves). `--headless=false` gives
    /// them a ClusterIP.
    #[arg(long, env = "ETCD_BRIDGE_HEADLESS", default_value_t = true, action = clap::ArgAction::Set)]
    pub headless: bool,
    /// Most endpoints in one EndpointSlice (1 to 1000).
    #[arg(long, env = "ETCD_BRIDGE_MAX_ENDPOINTS_PER_SLICE", default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_endpoints_per_slice: u16,
    /// Also annotate each EndpointSlice with `service.cilium.io/weight` (the registered weight,
    /// clamped to 65535), which Cilium reads per slice; 0 drains.
    #[arg(long, env = "ETCD_BRIDGE_CILIUM_WEIGHT", default_value_t = true, action = clap::ArgAction::Set)]
    pub cilium_weight: bool,
    /// Namespace the Services and EndpointSlices are written to.
    #[arg(long, env = "ETCD_BRIDGE_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Identity of this bridge, kept in a label on everything it writes, so that two bridges (two
    /// registries) can share a namespace without touching each other's objects.
    #[arg(long, env = "ETCD_BRIDGE_INSTANCE", default_value = "default")]
    pub instance: String,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// kubeconfig file; without it, the in-cluster service account (or the default kubeconfig).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Address of the HTTP server for /healthz, /readyz and /metrics.
    #[arg(long, env = "ETCD_BRIDGE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Elect one writer among replicas with a coordination.k8s.io Lease. Without it, this process
    /// writes as soon as it has synced: run only one.
    #[arg(long, env = "ETCD_BRIDGE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the Lease; defaults to `etcd-bridge-{instance}`.
    #[arg(long, env = "ETCD_BRIDGE_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long a leader holds the Lease without renewing it; a standby takes over after this.
    #[arg(long, env = "ETCD_BRIDGE_LEASE_DURATION", value_parser = humantime, default_value = "15s")]
    pub lease_duration: Duration,
    /// Buckets the writing is sharded into, 1–64. With 1, one Lease and one leader write
    /// everything. With more, each bucket has a Lease (`{lease-name}-{bucket}`), the live replicas
    /// share them fairly, and each writes only its buckets' objects: an imported Service belongs
    /// to bucket FNV-1a(source/name) mod N, an EtcdRegistration to FNV-1a(namespace/name) mod N.
    #[arg(long, env = "ETCD_BRIDGE_LEADER_BUCKETS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=crate::leader::buckets::MAX_BUCKETS as i64))]
    pub leader_buckets: u32,
    /// This replica's identity in the Lease; defaults to the pod name (POD_NAME) or host name and pid.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Coalescing of writes: a change after this much quiet is written at once; changes closer
    /// together are a burst, written when it pauses this long (or after --coalesce-max), so a
    /// burst to one Service costs one write per object, not one per change.
    #[arg(long, env = "ETCD_BRIDGE_COALESCE", value_parser = humantime, default_value = "10ms")]
    pub coalesce: Duration,
    /// The longest a burst holds its writes back.
    #[arg(long, env = "ETCD_BRIDGE_COALESCE_MAX", value_parser = humantime, default_value = "1s")]
    pub coalesce_max: Duration,
    /// How often every Service is checked against the cluster, repairing drift (someone deleted a
    /// slice by hand).
    #[arg(long, env = "ETCD_BRIDGE_RESYNC_INTERVAL", value_parser = humantime, default_value = "5m")]
    pub resync_interval: Duration,
    /// Mass-deletion guard: a sync that would remove more than this share of all projected
    /// endpoints at once holds those deletions until a second consistent read of etcd, after
    /// --delete-confirm-delay, confirms them (a wiped prefix, a restored backup, a wrong etcd).
    #[arg(long, env = "ETCD_BRIDGE_MAX_DELETE_RATIO", default_value_t = 0.5, value_parser = ratio)]
    pub max_delete_ratio: f64,
    /// The guard ignores syncs that remove fewer endpoints than this (small estates churn by
    /// whole services).
    #[arg(long, env = "ETCD_BRIDGE_MASS_DELETE_MIN", default_value_t = 10)]
    pub mass_delete_min: usize,
    /// How long held deletions wait before etcd is read again to confirm them.
    #[arg(long, env = "ETCD_BRIDGE_DELETE_CONFIRM_DELAY", value_parser = humantime, default_value = "30s")]
    pub delete_confirm_delay: Duration,
    /// Also import from the registries that EtcdSource objects in --namespace describe (the
    /// CRD must be installed, and the bridge allowed to read them and the Secrets they name).
    /// The flags' registry stays the source named `default`.
    #[arg(long, env = "ETCD_BRIDGE_SOURCES", default_value_t = false, action = clap::ArgAction::Set)]
    pub sources: bool,
    /// Namespaces besides --namespace that an EtcdSource's `targetNamespace` may name (comma
    /// separated). The bridge keeps a cluster view and a reconciler per namespace, and needs
    /// a Role in each (the chart's `targetNamespaces`).
    #[arg(long, env = "ETCD_BRIDGE_TARGET_NAMESPACES", value_delimiter = ',')]
    pub target_namespaces: Vec<String>,
    #[command(flatten)]
    pub writeback: WritebackArgs,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Log format.
    #[arg(
        long,
        env = "ETCD_BRIDGE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Write-back: EtcdRegistration objects become keys in etcd.
#[derive(Debug, Clone, Args)]
pub struct WritebackArgs {
    /// Run the EtcdRegistration controller. `--writeback=false` turns write-back off entirely
    /// (the CRD need not be installed then).
    #[arg(long = "writeback", env = "ETCD_BRIDGE_WRITEBACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,
    /// The key prefix registrations are written under (the seed's root is `/`).
    #[arg(
        long = "writeback-prefix",
        env = "ETCD_BRIDGE_WRITEBACK_PREFIX",
        default_value = "/"
    )]
    pub prefix: String,
    /// TTL of this process's etcd lease: without a successor, written keys vanish this long after
    /// the bridge is gone. Must exceed --lease-duration, so a new leader re-puts them in time.
    #[arg(long = "writeback-lease-ttl", env = "ETCD_BRIDGE_WRITEBACK_LEASE_TTL", value_parser = humantime, default_value = "30s")]
    pub lease_ttl: Duration,
    /// At most this many written-back keys per etcd lease; more keys take more leases. etcd
    /// before 3.4.27 (and any etcd for clients with auth on and no root role) spends time linear
    /// in the keys on a lease for every Put with it (etcd issue 15993).
    #[arg(long = "writeback-keys-per-lease", env = "ETCD_BRIDGE_WRITEBACK_KEYS_PER_LEASE", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub keys_per_lease: u32,
    /// How many EtcdRegistration objects are written at once (finalizer, status, Events). Their
    /// keys reach etcd without waiting for these writes.
    #[arg(long = "writeback-concurrency", env = "ETCD_BRIDGE_WRITEBACK_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Which namespaces may publish which service names: comma-separated NS_GLOB:SERVICE_GLOB
    /// rules (`*`, `?`). The default allows every namespace to publish every name.
    #[arg(
        long = "writeback-policy",
        env = "ETCD_BRIDGE_WRITEBACK_POLICY",
        value_delimiter = ',',
        default_value = "*:*"
    )]
    pub policy: Vec<String>,
    /// Watch EtcdRegistrations in this namespace only (default: every namespace).
    #[arg(
        id = "writeback_namespace",
        long = "writeback-namespace",
        env = "ETCD_BRIDGE_WRITEBACK_NAMESPACE"
    )]
    pub namespace: Option<String>,
    /// Handle only the EtcdRegistrations that match this label selector, so that two bridges (two
    /// registries) can share a cluster, e.g. `etcd-bridge.io/instance=payments`.
    #[arg(long = "writeback-selector", env = "ETCD_BRIDGE_WRITEBACK_SELECTOR")]
    pub selector: Option<String>,
    /// Also import the keys this bridge wrote back (off by default: that would be a loop).
    #[arg(long = "import-own-registrations", env = "ETCD_BRIDGE_IMPORT_OWN_REGISTRATIONS", default_value_t = false, action = clap::ArgAction::Set)]
    pub import_own: bool,
}

/// Active health checks of imported endpoints. Off unless `--probe` names something.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Probe the endpoints of these registrations: a watched `--prefix` (ends with `/`) probes
    /// every service under it; `source:NAME` every service of the EtcdSource NAME (`default`: the
    /// flags' registry); anything else is a glob (`*`, `?`) on the registered service name.
    /// Repeat, or comma-separate. `--probe` alone probes every service.
    #[arg(
        id = "probe", value_name = "PREFIX_OR_GLOB", long = "probe",
        env = "ETCD_BRIDGE_PROBE",
        value_delimiter = ',',
        num_args = 0..=1,
        default_missing_value = "*"
    )]
    pub select: Vec<String>,
    /// `grpc`: `grpc.health.v1.Health/Check`; `tcp`: a TCP connect (for servers without the
    /// health service; it cannot tell a wedged server).
    #[arg(
        id = "probe_mode",
        long = "probe-mode",
        env = "ETCD_BRIDGE_PROBE_MODE",
        value_enum,
        default_value = "grpc"
    )]
    pub mode: ProbeMode,
    /// The service name asked about in the health check; empty: the whole server.
    #[arg(
        id = "probe_service",
        long = "probe-service",
        env = "ETCD_BRIDGE_PROBE_SERVICE",
        default_value = ""
    )]
    pub service: String,
    /// How often each endpoint is probed.
    #[arg(id = "probe_interval", value_name = "DURATION", long = "probe-interval", env = "ETCD_BRIDGE_PROBE_INTERVAL", value_parser = humantime, default_value = "5s")]
    pub interval: Duration,
    /// How long one probe may take (at most the interval).
    #[arg(id = "probe_timeout", value_name = "DURATION", long = "probe-timeout", env = "ETCD_BRIDGE_PROBE_TIMEOUT", value_parser = humantime, default_value = "1s")]
    pub timeout: Duration,
    /// Consecutive failed probes (unreachable, timed out, an RPC error) before an endpoint is
    /// not ready. An answer of NOT_SERVING counts at once.
    #[arg(id = "probe_failure_threshold", value_name = "N", long = "probe-failure-threshold", env = "ETCD_BRIDGE_PROBE_FAILURE_THRESHOLD", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub failure_threshold: u32,
    /// Consecutive SERVING answers before a failed endpoint is ready again.
    #[arg(id = "probe_success_threshold", value_name = "N", long = "probe-success-threshold", env = "ETCD_BRIDGE_PROBE_SUCCESS_THRESHOLD", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub success_threshold: u32,
    /// Each endpoint's period varies by up to this share of the interval, and endpoints start at
    /// phases spread over one interval, so probes do not fire in step.
    #[arg(id = "probe_jitter", value_name = "SHARE", long = "probe-jitter", env = "ETCD_BRIDGE_PROBE_JITTER", default_value_t = 0.1, value_parser = ratio)]
    pub jitter: f64,
    /// Panic guard: when more than this share of a Service's endpoints fail their checks at
    /// once, all of them are kept ready (and it is reported). 1 turns the guard off.
    #[arg(id = "probe_panic_threshold", value_name = "SHARE", long = "probe-panic-threshold", env = "ETCD_BRIDGE_PROBE_PANIC_THRESHOLD", default_value_t = 0.5, value_parser = ratio)]
    pub panic_threshold: f64,
    /// With `--probe-mode=grpc`: follow each endpoint with a `grpc.health.v1.Health/Watch`
    /// stream, so a change of status shows at once, not at the next interval. Holds one HTTP/2
    /// connection open per probed endpoint (Check opens one per probe); servers answering
    /// UNIMPLEMENTED are checked as without it.
    #[arg(id = "probe_watch", value_name = "BOOL", long = "probe-watch", env = "ETCD_BRIDGE_PROBE_WATCH", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub watch: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProbeMode {
    Grpc,
    Tcp,
}

impl ProbeArgs {
    /// Which registrations are probed; checks what clap cannot.
    pub fn selector(&self, etcd: &EtcdArgs) -> Result<crate::probe::selector::Selector> {
        let sources: Vec<&str> = etcd.prefixes.iter().map(|s| s.prefix.as_str()).collect();
        self.selector_for(&sources)
    }

    /// [`Self::selector`] for a source's own prefixes (`preview --source-file`).
    pub fn selector_for(&self, prefixes: &[&str]) -> Result<crate::probe::selector::Selector> {
        if self.interval.is_zero() || self.timeout.is_zero() || self.timeout > self.interval {
            return Err(Error::Config(format!(
                "--probe-timeout ({:?}) must be above 0 and at most --probe-interval ({:?})",
                self.timeout, self.interval
            )));
        }
        if self.watch && self.mode != ProbeMode::Grpc {
            return Err(Error::Config(
                "--probe-watch follows the gRPC health service's Watch stream: it needs --probe-mode=grpc, not tcp".into(),
            ));
        }
        crate::probe::selector::Selector::parse(&self.select, prefixes)
    }

    pub fn settings(&self) -> crate::probe::Settings {
        crate::probe::Settings {
            mode: match self.mode {
                ProbeMode::Grpc => crate::probe::check::Mode::Grpc {
                    service: self.service.clone(),
                },
                ProbeMode::Tcp => crate::probe::check::Mode::Tcp,
            },
            timeout: self.timeout,
            timing: crate::probe::timing::Timing {
                interval: self.interval,
                jitter: self.jitter,
            },
            thresholds: crate::probe::state::Thresholds {
                failure: self.failure_threshold,
                success: self.success_threshold,
            },
            watch: self.watch,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PreviewArgs {
    #[command(flatten)]
    pub etcd: EtcdArgs,
    #[command(flatten)]
    pub projection: ProjectionArgs,
    /// With `--probe`: one round of health checks, and the conditions it would write.
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Preview the registry of an EtcdSource (a YAML file, as `kubectl apply` takes) instead of
    /// the flags' one.
    #[arg(long = "source-file")]
    pub source_file: Option<std::path::PathBuf>,
    /// The Secret (YAML) the EtcdSource names in `secretRef`, for its credentials.
    #[arg(long = "secret-file", requires = "source_file")]
    pub secret_file: Option<std::path::PathBuf>,
    /// Print the objects as YAML-compatible JSON instead of a table.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    pub output: PreviewOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreviewOutput {
    Table,
    Json,
}

fn ratio(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a share between 0 and 1 (e.g. 0.5)")),
    }
}

/// `10ms`, `5s`, `2m`, `1h`: the few duration forms the flags need.
/// `PREFIX` or `PREFIX=FORMAT`.
fn source(s: &str) -> std::result::Result<Source, String> {
    let (prefix, format) = match s.rsplit_once('=') {
        Some((p, f)) => (p, f.parse::<Format>()?),
        None => (s, Format::Seed),
    };
    Ok(Source {
        prefix: prefix.to_owned(),
        format,
    })
}

pub(crate) fn humantime(s: &str) -> std::result::Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; write e.g. 10ms, 5s, 2m or 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use ms, s, m or h")),
    })
}

impl EtcdArgs {
    /// How to reach etcd, as the flags say (the `default` source's connection).
    pub fn connection(&self) -> crate::source::spec::Connection {
        use crate::source::spec::{Connection, Credentials, Pem};
        let file = |p: &Option<std::path::PathBuf>| p.clone().map(Pem::File);
        Connection {
            endpoints: self.endpoints.clone(),
            credentials: match (&self.username, &self.password) {
                (Some(u), Some(p)) => Some(Credentials {
                    username: u.clone(),
                    password: p.clone(),
                }),
                _ => None,
            },
            ca: file(&self.ca_file),
            identity: file(&self.cert_file).zip(file(&self.key_file)),
            timeout: self.timeout,
        }
    }

    /// Checks what clap cannot: prefix shape, and credentials that come in pairs.
    pub fn validate(&self) -> Result<()> {
        for Source { prefix: p, format } in &self.prefixes {
            if !p.ends_with('/') || (*format == Format::Seed && !p.starts_with('/')) {
                return Err(Error::Config(format!(
                    "--prefix `{p}` must end with `/`, and a seed prefix must start with `/` (the seed's root is `/`; kitex writes under `kitex/registry-etcd/`)"
                )));
            }
        }
        for (i, Source { prefix: a, .. }) in self.prefixes.iter().enumerate() {
            for (j, Source { prefix: b, .. }) in self.prefixes.iter().enumerate() {
                // The same prefix twice (say in two formats) is refused too.
                if i != j && b.starts_with(a.as_str()) {
                    return Err(Error::Config(format!(
                        "--prefix `{a}` contains `{b}`: a key under `{b}` would be read twice, differently; watch only one of them"
                    )));
                }
            }
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(Error::Config(
                "--etcd-username and --etcd-password go together; give both or neither".into(),
            ));
        }
        let tls = self.ca_file.is_some() || self.cert_file.is_some();
        if let Some(plain) = self
            .endpoints
            .iter()
            .find(|e| e.starts_with("http://"))
            .filter(|_| tls)
        {
            return Err(Error::Config(format!(
                "--etcd-ca-file/--etcd-cert-file are given, but the endpoint {plain} is http://: the etcd client would refuse every attempt; write it as https://, or drop the TLS flags"
            )));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(Error::Config(
                "--etcd-cert-file and --etcd-key-file go together; give both or neither".into(),
            ));
        }
        Ok(())
    }
}

/// A namespace name is a DNS label.
fn namespace_name(flag: &str, n: &str) -> Result<()> {
    if n.is_empty()
        || n.len() > 63
        || !n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || n.starts_with('-')
        || n.ends_with('-')
    {
        return Err(Error::Config(format!(
            "{flag} `{n}` is not a valid namespace name (lowercase letters, digits and `-`)"
        )));
    }
    Ok(())
}

impl RunArgs {
    /// Every namespace the bridge projects into: --namespace first, then --target-namespaces
    /// (each once).
    pub fn namespaces(&self) -> Result<Vec<String>> {
        let mut out = vec![self.projection.namespace.clone()];
        for n in &self.target_namespaces {
            namespace_name("--target-namespaces", n)?;
            if !self.sources {
                return Err(Error::Config(
                    "--target-namespaces is for EtcdSource objects' targetNamespace: add --sources=true".into(),
                ));
            }
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        Ok(out)
    }
}

impl ProjectionArgs {
    /// The instance goes into a label value, and the namespace must be a DNS label.
    pub fn validate(&self) -> Result<()> {
        let i = &self.instance;
        let ok = !i.is_empty()
            && i.len() <= 63
            && i.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && i.starts_with(|c: char| c.is_ascii_alphanumeric())
            && i.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            return Err(Error::Config(format!(
                "--instance `{i}` must be a Kubernetes label value: at most 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
            )));
        }
        namespace_name("--namespace", &self.namespace)
    }

    pub fn projection_config(&self) -> crate::projection::ProjectionConfig {
        crate::projection::ProjectionConfig {
            namespace: self.namespace.clone(),
            instance: self.instance.clone(),
            headless: self.headless,
            max_endpoints_per_slice: self.max_endpoints_per_slice as usize,
            cilium_weight: self.cilium_weight,
            buckets: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(prefixes: &[&str]) -> EtcdArgs {
        let mut args = vec!["etcd-bridge", "run"];
        for p in prefixes {
            args.push("--prefix");
            args.push(p);
        }
        match Cli::parse_from(args).command {
            Command::Run(r) => r.etcd.clone(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn prefixes_must_be_slash_delimited_and_disjoint() {
        assert!(etcd(&["/"]).validate().is_ok());
        assert!(etcd(&["/a/", "/b/"]).validate().is_ok());
        let e = etcd(&["/", "/services/"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains"), "{e}");
        assert!(etcd(&["services/"]).validate().is_err());
        assert!(etcd(&["/services"]).validate().is_err());
    }

    #[test]
    fn tls_flags_with_an_http_endpoint_are_refused_at_start() {
        let args = |endpoint: &str| {
            let cli = Cli::parse_from([
                "etcd-bridge",
                "run",
                &format!("--etcd-endpoints={endpoint}"),
                "--etcd-ca-file=/ca.pem",
            ]);
            match cli.command {
                Command::Run(r) => r.etcd.clone(),
                _ => unreachable!(),
            }
        };
        let e = args("http://etcd:2379").validate().unwrap_err().to_string();
        assert!(e.contains("https://"), "{e}");
        assert!(args("https://etcd:2379").validate().is_ok());
    }

    #[test]
    fn each_prefix_has_a_format() {
        let e = etcd(&["/services/,/microservices/=kratos,kitex/registry-etcd/=kitex"]);
        assert!(e.validate().is_ok());
        let formats: Vec<(&str, Format)> = e
            .prefixes
            .iter()
            .map(|s| (s.prefix.as_str(), s.format))
            .collect();
        assert_eq!(
            formats,
            [
                ("/services/", Format::Seed),
                ("/microservices/", Format::Kratos),
                ("kitex/registry-etcd/", Format::Kitex)
            ]
        );
        assert!(etcd(&["services/=seed"]).validate().is_err());
        assert!(
            etcd(&["/a/,/a/=kratos"]).validate().is_err(),
            "one prefix, two formats"
        );
        let bad = Cli::try_parse_from(["etcd-bridge", "run", "--prefix=/a/=consul"]);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("unknown registry format")
        );
    }

    fn run(args: &[&str]) -> RunArgs {
        let mut all = vec!["etcd-bridge", "run"];
        all.extend_from_slice(args);
        match Cli::parse_from(all).command {
            Command::Run(r) => *r,
            _ => unreachable!(),
        }
    }

    #[test]
    fn target_namespaces_add_to_the_bridges_own_and_need_sources() {
        let ns = |args: &[&str]| run(args).namespaces();
        assert_eq!(ns(&[]).unwrap(), ["default"]);
        assert_eq!(
            ns(&[
                "--namespace=grpc",
                "--sources=true",
                "--target-namespaces=eu,us,grpc,eu"
            ])
            .unwrap(),
            ["grpc", "eu", "us"],
            "--namespace first, each once"
        );
        let e = ns(&["--target-namespaces=eu"]).unwrap_err().to_string();
        assert!(e.contains("--sources=true"), "{e}");
        let e = ns(&["--sources=true", "--target-namespaces=EU"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--target-namespaces `EU`"), "{e}");
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    fn probe(args: &[&str]) -> (ProbeArgs, EtcdArgs) {
        let mut all = vec!["etcd-bridge", "run", "--prefix=/a/,/b/"];
        all.extend_from_slice(args);
        match Cli::parse_from(all).command {
            Command::Run(r) => (r.probe.clone(), r.etcd.clone()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn probing_is_off_by_default_and_named_by_prefix_or_glob() {
        let (p, e) = probe(&[]);
        assert!(p.selector(&e).unwrap().is_empty());
        assert_eq!(p.settings().timing.interval, Duration::from_secs(5));
        assert_eq!(p.settings().timeout, Duration::from_secs(1));
        assert_eq!(p.panic_threshold, 0.5);
        let (p, e) = probe(&["--probe=/b/", "--probe", "pay*,greeter"]);
        assert_eq!(p.select, ["/b/", "pay*", "greeter"]);
        assert!(p.selector(&e).is_ok());
        let (p, e) = probe(&["--probe"]);
        assert_eq!(p.select, ["*"], "--probe alone probes everything");
        assert!(!p.selector(&e).unwrap().is_empty());
        let (p, e) = probe(&["--probe=/c/"]);
        assert!(p.selector(&e).is_err(), "not a watched prefix");
        let (p, e) = probe(&["--probe=*", "--probe-timeout=6s"]);
        assert!(p.selector(&e).is_err(), "timeout past the interval");
        assert!(
            Cli::try_parse_from(["etcd-bridge", "run", "--probe-failure-threshold=0"]).is_err()
        );
        let (p, _) = probe(&["--probe-mode=tcp"]);
        assert_eq!(p.settings().mode, crate::probe::check::Mode::Tcp);
    }

    #[test]
    fn watch_is_opt_in_and_only_with_grpc() {
        let (p, e) = probe(&["--probe=*"]);
        assert!(!p.settings().watch, "off by default");
        let (p, e2) = probe(&["--probe=*", "--probe-watch"]);
        assert!(p.settings().watch);
        assert!(probe(&["--probe-watch=true"]).0.watch);
        assert!(!probe(&["--probe-watch=false"]).0.watch);
        assert!(p.selector(&e2).is_ok());
        let (p, e3) = probe(&["--probe=*", "--probe-watch", "--probe-mode=tcp"]);
        let err = p.selector(&e3).unwrap_err().to_string();
        assert!(
            err.contains("--probe-watch") && err.contains("--probe-mode=grpc"),
            "{err}"
        );
        assert!(
            probe(&["--probe=*", "--probe-mode=tcp"])
                .0
                .selector(&e)
                .is_ok()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(humantime("10ms").unwrap(), Duration::from_millis(10));
        assert_eq!(humantime("2m").unwrap(), Duration::from_secs(120));
        assert!(humantime("fast").is_err());
        assert!(humantime("3d").is_err());
    }
}
