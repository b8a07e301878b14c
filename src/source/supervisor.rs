//! The source supervisor (a shell): watches the EtcdSource objects of the bridge's namespace,
//! reads the Secrets they name, resolves them ([`spec::resolve`], [`spec::refuse_overlaps`]) and
//! starts and stops each source's watchers ([`spec::changes`]). It tells the import reconciler
//! through the same channel as the watchers, so a source's `Update::Source` always comes before
//! its keys, and its `Update::SourceGone` after the last of them.
//!
//! Secrets are watched one by one, by name (a watch with a `metadata.name` field selector, which
//! RBAC's resourceNames allows: the bridge may read only the Secrets sources name, never the
//! set), so a rotated credential is used at once. They are also read again every [`SECRET_POLL`]
//! and at every change of an object, in case a watch is refused or broken.

use super::crd::EtcdSource;
use super::publish::Publisher;
use super::spec::{self, Context, Secret, SourceConfig, SourceName};
use super::status::ReportsByNamespace;
use crate::etcd::Update;
use crate::metrics::Metrics;
use crate::writeback::destination::Registries;
use futures::StreamExt;
use futures::stream::{BoxStream, SelectAll};
use k8s_openapi::api::core::v1::Secret as KubeSecret;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// A status write that failed is tried again this long after.
const STATUS_RETRY: Duration = Duration::from_secs(2);

/// How often the Secrets of sources are read again.
pub const SECRET_POLL: Duration = Duration::from_secs(30);

/// A watch of each Secret the sources name, yielding its name at each change.
#[derive(Default)]
struct SecretWatches {
    names: BTreeSet<String>,
    streams: SelectAll<BoxStream<'static, String>>,
}

impl SecretWatches {
    /// Watches exactly `names` (rebuilt when the set changes: a new watch first lists its Secret,
    /// which costs one more read of them all).
    fn follow(&mut self, client: &Client, namespace: &str, names: BTreeSet<String>) {
        if names == self.names {
            return;
        }
        self.streams = SelectAll::new();
        for name in &names {
            let api: Api<KubeSecret> = Api::namespaced(client.clone(), namespace);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let name = name.clone();
            let stream = watcher(api, config)
                .default_backoff()
                .filter_map(move |ev| {
                    let name = name.clone();
                    async move {
                        match ev {
                            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(name),
                            Ok(_) => None,
                            Err(e) => {
                                tracing::debug!(secret = %name, error = %e, "cannot watch this Secret (the bridge may read it only with get and watch on its name); it is read again every 30 s");
                                None
                            }
                        }
                    }
                });
            self.streams.push(stream.boxed());
        }
        self.names = names;
    }
}

/// Why each EtcdSource object is not used, by name; its status says so.
pub type Refused = BTreeMap<SourceName, String>;

struct Running {
    config: SourceConfig,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

pub struct Supervisor {
    client: Client,
    namespace: String,
    /// Where a source may project: `--namespace` and `--target-namespaces`.
    namespaces: Vec<String>,
    /// When to write the statuses again after a write failed.
    status_retry: Option<Instant>,
    timeout: Duration,
    /// The flags' source: first in priority, never started or stopped here.
    default: SourceConfig,
    tx: mpsc::Sender<Update>,
    metrics: Arc<Metrics>,
    running: BTreeMap<SourceName, Running>,
    refused: Refused,
    /// Status: what the import reports of each source, and whether this replica leads.
    reports: watch::Receiver<ReportsByNamespace>,
    leader: watch::Receiver<crate::leader::Holding>,
    publisher: Publisher,
    /// Where write-back may write, for its controller (with `--writeback`).
    registries: Option<watch::Sender<Arc<Registries>>>,
}

impl Supervisor {
    /// `reports` come from the import reconciler; `leader`: only the leader writes status.
    pub fn new(
        client: Client,
        default: SourceConfig,
        timeout: Duration,
        tx: mpsc::Sender<Update>,
        metrics: Arc<Metrics>,
        reports: watch::Receiver<ReportsByNamespace>,
        leader: watch::Receiver<crate::leader::Holding>,
    ) -> Self {
        Supervisor {
            publisher: Publisher::new(client.clone()),
            reports,
            leader,
            client,
            namespace: default.target_namespace.clone(),
            namespaces: vec![default.target_namespace.clone()],
            status_retry: None,
            timeout,
            default,
            tx,
            metrics,
            running: BTreeMap::new(),
            refused: Refused::new(),
            registries: None,
        }
    }

    /// Tells write-back which registries it may write to, at each change.
    pub fn with_registries(mut self, tx: watch::Sender<Arc<Registries>>) -> Self {
        self.registries = Some(tx);
        self
    }

    /// Every namespace the bridge projects into (`--namespace` first): those a source's
    /// `targetNamespace` may name.
    pub fn with_namespaces(mut self, namespaces: Vec<String>) -> Self {
        self.namespaces = namespaces;
        self
    }

    /// Runs until `shutdown`, then stops every source it started.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let api: Api<EtcdSource> = Api::namespaced(self.client.clone(), &self.namespace);
        let (store, writer) = reflector::store();
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff();
        let mut stream = std::pin::pin!(stream);
        let mut poll = tokio::time::interval(SECRET_POLL);
        // Set at the end of the first list: until then, nothing is known of the objects.
        let mut ready = false;
        // The objects' names and generations at the last apply: a change of status only (our
        // own writes) needs no new resolution, nor another read of every Secret.
        let mut applied: Vec<(String, Option<i64>)> = Vec::new();
        let mut secrets = SecretWatches::default();
        loop {
            let mut poll_due = false;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(name) = secrets.streams.next() => {
                    tracing::debug!(secret = %name, "a Secret a source names changed");
                    poll_due = true;
                }
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                    Some(Ok(watcher::Event::InitDone)) => {
                        if !ready {
                            ready = true;
                            self.apply(&store).await;
                            if self.tx.send(Update::SourcesListed).await.is_err() {
                                break;
                            }
                            // A refused source is news now: nothing else may happen for a while.
                            self.write_status(&store).await;
                            continue;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "cannot watch EtcdSource objects (is the CRD installed and the bridge allowed to list them?); sources not known yet keep their Services");
                        continue;
                    }
                    None => break,
                },
                _ = poll.tick() => poll_due = true,
                Ok(()) = self.reports.changed() => {
                    self.write_status(&store).await;
                    continue;
                }
                Ok(()) = self.leader.changed() => {
                    self.publisher.forget();
                    self.write_status(&store).await;
                    continue;
                }
                _ = tokio::time::sleep_until(self.status_retry.unwrap_or_else(Instant::now)), if self.status_retry.is_some() => {
                    self.write_status(&store).await;
                    continue;
                }
            }
            if !ready {
                continue;
            }
            let mut now: Vec<(String, Option<i64>)> = (store.state().iter())
                .map(|o| (o.name_any(), o.metadata.generation))
                .collect();
            now.sort();
            if poll_due || now != applied {
                self.apply(&store).await;
                applied = now;
                let named = (store.state().iter())
                    .filter_map(|o| o.spec.secret_ref.as_ref().map(|r| r.name.clone()))
                    .collect();
                secrets.follow(&self.client, &self.namespace, named);
            }
            self.write_status(&store).await;
        }
        for (_, r) in std::mem::take(&mut self.running) {
            r.token.cancel();
        }
    }

    /// Brings the running sources to what the objects (and their Secrets) say.
    async fn apply(&mut self, store: &Store<EtcdSource>) {
        let mut objects = store.state();
        objects.sort_by(|a, b| {
            (a.creation_timestamp(), a.name_any()).cmp(&(b.creation_timestamp(), b.name_any()))
        });
        let ctx = Context {
            namespace: &self.namespace,
            namespaces: &self.namespaces,
            timeout: self.timeout,
            reserved: &[spec::DEFAULT_SOURCE],
        };
        let mut refused = Refused::new();
        let mut resolved = vec![self.default.clone()];
        for obj in &objects {
            let name = obj.name_any();
            let secret = match &obj.spec.secret_ref {
                None => Ok(None),
                Some(r) => self.secret(&r.name).await.map(Some),
            };
            let got = match &secret {
                Ok(None) => spec::resolve(&name, &obj.spec, Secret::NotNamed, &ctx),
                Ok(Some(d)) => spec::resolve(&name, &obj.spec, Secret::Data(d), &ctx),
                Err(why) => spec::resolve(&name, &obj.spec, Secret::Unreadable(why), &ctx),
            };
            match got {
                Ok(c) => resolved.push(c),
                Err(problems) => {
                    refused.insert(name, spec::describe(&problems));
                }
            }
        }
        let (kept, overlaps) = spec::refuse_overlaps(resolved);
        for o in overlaps {
            refused.insert(o.source.clone(), o.invalid().to_string());
        }
        if let Some(tx) = &self.registries {
            let now = Registries::from_sources(&kept, &refused);
            tx.send_if_modified(|r| {
                let changed = **r != now;
                if changed {
                    *r = Arc::new(now);
                }
                changed
            });
        }
        let desired: BTreeMap<SourceName, SourceConfig> = kept
            .into_iter()
            .filter(|c| c.name != spec::DEFAULT_SOURCE)
            .map(|c| (c.name.clone(), c))
            .collect();
        let running: BTreeMap<SourceName, SourceConfig> = (self.running.iter())
            .map(|(n, r)| (n.clone(), r.config.clone()))
            .collect();
        let changes = spec::changes(&running, &desired);
        for name in &changes.stop {
            if let Some(r) = self.running.remove(name) {
                r.token.cancel();
                // Every update it sent is queued before what follows.
                for t in r.tasks {
                    if let Err(e) = t.await {
                        tracing::error!(source = %name, error = %e, "a watcher of this source failed");
                    }
                }
            }
        }
        for name in changes.gone {
            tracing::info!(source = %name, "EtcdSource gone or no longer valid: its Services go");
            if self.tx.send(Update::SourceGone(name)).await.is_err() {
                return; // the reconciler is gone: the bridge is stopping
            }
        }
        for config in changes.start {
            self.start(config).await;
        }
        for (name, why) in &refused {
            if self.refused.get(name) != Some(why) {
                tracing::warn!(source = %name, "EtcdSource not used: {why}");
            }
        }
        self.refused = refused;
    }

    /// The holder of bucket 0 (the leader, with one bucket) writes each object's status (the
    /// others keep theirs for a new term).
    async fn write_status(&mut self, store: &Store<EtcdSource>) {
        if !self.leader.borrow_and_update().primary() {
            return;
        }
        let objects: Vec<EtcdSource> = store.state().iter().map(|o| (**o).clone()).collect();
        // Where each running source projects, as resolution decided it.
        let target = |name: &str| {
            let running = self.running.get(name)?;
            Some(running.config.target_namespace.clone())
        };
        let reports = super::status::by_source(&self.reports.borrow_and_update(), target);
        let all_written = (self.publisher)
            .publish(&objects, &reports, &self.refused)
            .await;
        // A failed write is tried again soon, not at the next change (which may be 30 s away).
        self.status_retry = (!all_written).then(|| Instant::now() + STATUS_RETRY);
    }

    /// The Secret's data, or why it cannot be read.
    async fn secret(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
        let api: Api<KubeSecret> = Api::namespaced(self.client.clone(), &self.namespace);
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok((s.data.unwrap_or_default().into_iter())
                .map(|(k, v)| (k, v.0))
                .collect()),
            Ok(None) => Err("not found in this namespace".into()),
            Err(e) => Err(format!(
                "cannot be read ({e}); the chart grants the bridge only the Secrets listed in sources.secretNames"
            )),
        }
    }

    async fn start(&mut self, config: SourceConfig) {
        tracing::info!(source = %config.name, endpoints = ?config.connection.endpoints, "starting source");
        if self
            .tx
            .send(Update::Source(Box::new(config.clone())))
            .await
            .is_err()
        {
            return;
        }
        let token = CancellationToken::new();
        let tasks = (config.prefixes.iter())
            .map(|p| {
                let span = tracing::info_span!("source", source = %config.name);
                tokio::spawn(
                    crate::etcd::watch_prefix(
                        config.connection.clone(),
                        config.name.clone(),
                        p.prefix.clone(),
                        self.tx.clone(),
                        self.metrics.clone(),
                        token.clone(),
                    )
                    .instrument(span),
                )
            })
            .collect();
        self.running.insert(
            config.name.clone(),
            Running {
                config,
                token,
                tasks,
            },
        );
    }
}
