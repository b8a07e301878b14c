//! The `etcd-bridge` binary: `run` (the controller) and `preview` (what `run` would write).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use etcd_bridge::config::{
    Cli, Command, CrdKind, LogFormat, PreviewArgs, PreviewOutput, ProjectionArgs, RunArgs,
};
use etcd_bridge::http::{self, Health};
use etcd_bridge::import::{self, Reconciler, Tuning};
use etcd_bridge::k8s::{ClusterView, Writer};
use etcd_bridge::leader::Leadership;
use etcd_bridge::leader::shards::ShardSpec;
use etcd_bridge::metrics::Metrics;
use etcd_bridge::preview;
use etcd_bridge::probe::{self, Link};
use etcd_bridge::projection::ProjectionConfig;
use etcd_bridge::source::spec::DEFAULT_SOURCE;
use etcd_bridge::writeback::destination::Registries;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            init_tracing(args.log_format);
            run(*args).await
        }
        Command::Preview(args) => {
            init_tracing(LogFormat::Text);
            preview_cmd(*args).await
        }
        Command::Crd { kind } => {
            print!(
                "{}",
                match kind {
                    CrdKind::Etcdregistrations => etcd_bridge::writeback::crd::crd_yaml(),
                    CrdKind::Etcdsources => etcd_bridge::source::crd::crd_yaml(),
                }
            );
            Ok(())
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,kube_lease_manager=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn kube_client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("read kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("use kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes credentials: run in a pod with a ServiceAccount, or pass --kubeconfig",
        )?,
    };
    Ok(kube::Client::try_from(config)?)
}

fn identity(args: &RunArgs) -> String {
    args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
            .unwrap_or_else(|| "etcd-bridge".into());
        format!("{}-{}", host.trim(), std::process::id())
    })
}

/// Cancels `token` on SIGTERM or SIGINT. The handlers are installed here, before anything
/// starts: a bridge that could not be stopped gracefully must not start at all.
fn on_signal(token: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
        token.cancel();
    });
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    args.etcd.validate()?;
    args.projection.validate()?;
    let probed = args.probe.selector(&args.etcd)?;
    let namespaces = args.namespaces()?;
    if args.writeback.enabled {
        etcd_bridge::writeback::policy::Policy::parse(&args.writeback.policy)?;
        anyhow::ensure!(
            args.writeback.lease_ttl > args.lease_duration,
            "--writeback-lease-ttl ({:?}) must exceed --lease-duration ({:?}): a new leader must re-put the keys before the old leader's etcd lease expires",
            args.writeback.lease_ttl,
            args.lease_duration
        );
    }
    let shutdown = CancellationToken::new();
    on_signal(shutdown.clone())?;
    // Bound before anything else starts: a bridge without /healthz, /readyz and /metrics would
    // be restarted by its probes with nothing in its log to say why.
    let listener = http::bind(args.listen).await?;
    let client = kube_client(&args).await?;
    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health::new(namespaces.clone()));

    let server = {
        let (health, metrics, shutdown) = (health.clone(), metrics.clone(), shutdown.clone());
        tokio::spawn(async move {
            let r = http::serve(listener, health, metrics, shutdown.clone()).await;
            if let Err(e) = &r {
                tracing::error!(error = %e, "the HTTP server stopped; shutting down");
                shutdown.cancel();
            }
            r
        })
    };

    let ns = &args.projection.namespace;
    let default_source =
        etcd_bridge::source::spec::from_flags(&args.etcd, &args.projection, &args.writeback);
    let (tx, etcd_rx) = tokio::sync::mpsc::channel(1024);
    for source in &args.etcd.prefixes {
        tokio::spawn(etcd_bridge::etcd::watch_prefix(
            default_source.connection.clone(),
            default_source.name.clone(),
            source.prefix.clone(),
            tx.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    // What the import reports of each source, for the EtcdSource status.
    let (reports_tx, reports) = tokio::sync::watch::channel(Default::default());

    let leadership = if args.leader_election {
        let name = args
            .lease_name
            .clone()
            .unwrap_or_else(|| format!("etcd-bridge-{}", args.projection.instance));
        let id = identity(&args);
        if args.leader_buckets > 1 {
            tracing::info!(buckets = args.leader_buckets, lease = %name, "joining the bucket Leases: this replica writes the objects of the buckets it holds");
            Leadership::shard(
                client.clone(),
                ShardSpec {
                    namespace: ns.to_string(),
                    name,
                    instance: args.projection.instance.clone(),
                    identity: id,
                    buckets: args.leader_buckets,
                    duration: args.lease_duration,
                },
            )
        } else {
            // The apiserver may be down at start: keep trying rather than crash-loop.
            let mut backoff =
                etcd_bridge::backoff::Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
            loop {
                match Leadership::elect(client.clone(), ns, &name, &id, args.lease_duration).await {
                    Ok(l) => break l,
                    Err(e) => {
                        let wait = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = ?wait, "cannot join the leader election yet");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
        }
    } else {
        Leadership::always(args.leader_buckets)
    };

    // Where write-back may write: the flags' registry, and the EtcdSources' once listed.
    let (registries_tx, registries) = tokio::sync::watch::channel(Arc::new(match args.sources {
        true => Registries::awaiting_sources(&default_source),
        false => Registries::flags_only(&default_source),
    }));
    if args.sources {
        let supervisor = etcd_bridge::source::supervisor::Supervisor::new(
            client.clone(),
            default_source.clone(),
            args.etcd.timeout,
            tx.clone(),
            metrics.clone(),
            reports,
            leadership.holding.clone(),
        )
        .with_namespaces(namespaces.clone())
        .with_registries(registries_tx);
        tokio::spawn(supervisor.run(shutdown.clone()));
    }
    drop(tx);
    let writeback = args.writeback.enabled.then(|| {
        let default = (registries.borrow().writable.get(DEFAULT_SOURCE).cloned())
            .expect("with --writeback, the flags' registry takes write-back");
        tokio::spawn(etcd_bridge::writeback::controller::run(
            client.clone(),
            etcd_bridge::writeback::controller::Where {
                default,
                registries: registries.clone(),
                namespace: ns.clone(),
            },
            args.writeback.clone(),
            args.projection.instance.clone(),
            leadership.holding.clone(),
            metrics.clone(),
            shutdown.clone(),
        ))
    });
    // One reconciler per projected namespace, each with its own view of the cluster; the
    // router sends each source's updates to the one its targetNamespace names.
    let mut routes = std::collections::BTreeMap::new();
    let mut projections = Vec::new();
    for (i, target) in namespaces.iter().enumerate() {
        let (route_tx, route_rx) = tokio::sync::mpsc::channel(1024);
        routes.insert(target.clone(), route_tx);
        let (view, cluster_rx) =
            ClusterView::start(client.clone(), target, &args.projection.instance);
        let writer = Writer::new(client.clone(), view, metrics.clone());
        // The flags' registry projects into --namespace, the first.
        let start = (i == 0).then(|| default_source.clone());
        let reconciler = Reconciler::new(
            start.into_iter().collect(),
            args.projection.aggregate,
            (!args.writeback.import_own).then_some(args.projection.instance.as_str()),
            ProjectionConfig {
                buckets: args.leader_buckets,
                namespace: target.clone(),
                ..args.projection.projection_config()
            },
            Tuning {
                coalesce: args.coalesce,
                coalesce_max: args.coalesce_max,
                resync: args.resync_interval,
                max_delete_ratio: args.max_delete_ratio,
                mass_delete_min: args.mass_delete_min,
                delete_confirm_delay: args.delete_confirm_delay,
            },
            metrics.clone(),
            health.clone(),
        );
        let reconciler = match args.sources {
            true => reconciler
                .with_source_objects()
                .with_reports(reports_tx.clone()),
            false => reconciler,
        };
        // Health checks, when --probe names anything: the prober probes what the leader's
        // reconciler plans, and sends back each change of verdict.
        let reconciler = if probed.is_empty() {
            reconciler
        } else {
            let (link, ends) = Link::new(probed.clone(), args.probe.panic_threshold);
            tokio::spawn(probe::prober::run(
                args.probe.settings(),
                ends.plans,
                ends.verdicts,
                metrics.clone(),
                shutdown.clone(),
            ));
            reconciler.with_probes(link)
        };
        projections.push(import::run(
            reconciler,
            writer,
            route_rx,
            cluster_rx,
            leadership.holding.clone(),
            shutdown.clone(),
        ));
    }
    let router = import::route::Router::new(
        namespaces.clone(),
        [(default_source.name.clone(), ns.clone())],
    );
    tokio::spawn(import::route::fan_out(router, etcd_rx, routes));
    futures::future::join_all(projections).await;
    shutdown.cancel();
    if let Some(mut w) = writeback {
        // kube-runtime's Controller may not wind down while its watch keeps failing (no CRD):
        // never let that hold the Lease, and the pod, past a few seconds.
        match tokio::time::timeout(Duration::from_secs(3), &mut w).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "write-back stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "write-back task failed"),
            Ok(Ok(Ok(()))) => {}
            Err(_) => {
                tracing::warn!("write-back did not stop in 3s; stopping it");
                w.abort();
            }
        }
    }
    leadership.release().await;
    server.await.context("the HTTP server task")??;
    tracing::info!("stopped");
    Ok(())
}

async fn preview_cmd(args: PreviewArgs) -> anyhow::Result<()> {
    args.etcd.validate()?;
    args.projection.validate()?;
    let source = match &args.source_file {
        None => etcd_bridge::source::spec::from_etcd_flags(&args.etcd, &args.projection),
        Some(path) => source_from_files(&args, path)?,
    };
    // Objects go where the source projects: --namespace, or an EtcdSource's targetNamespace.
    let projection = ProjectionArgs {
        namespace: source.target_namespace.clone(),
        ..args.projection.clone()
    };
    let report = preview::preview(&source, &projection, &args.probe).await?;
    match args.output {
        PreviewOutput::Table => print!("{}", report.table()),
        PreviewOutput::Json => println!("{}", serde_json::to_string_pretty(&report.objects())?),
    }
    Ok(())
}

/// The registry of an EtcdSource file (and its Secret's), resolved as `run` resolves objects.
fn source_from_files(
    args: &PreviewArgs,
    path: &std::path::Path,
) -> anyhow::Result<etcd_bridge::source::SourceConfig> {
    use etcd_bridge::source::{file, spec};
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
    };
    let obj = file::source(&read(path)?).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let data = match &args.secret_file {
        Some(p) => Some(
            file::secret_data(&read(p)?).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let secret = match (&data, &obj.spec.secret_ref) {
        (Some(d), _) => spec::Secret::Data(d),
        (None, Some(_)) => spec::Secret::Unreadable("give it with --secret-file"),
        (None, None) => spec::Secret::NotNamed,
    };
    // Preview writes nothing: whatever namespace the file names is one it may show.
    let ctx = spec::Context {
        namespace: &args.projection.namespace,
        namespaces: obj.spec.target_namespace.as_slice(),
        timeout: args.etcd.timeout,
        reserved: &[],
    };
    let name = kube::ResourceExt::name_any(&obj);
    spec::resolve(&name, &obj.spec, secret, &ctx).map_err(|p| {
        anyhow::anyhow!(
            "EtcdSource {name} in {}: {}",
            path.display(),
            spec::describe(&p)
        )
    })
}
