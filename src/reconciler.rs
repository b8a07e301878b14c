//! The import flow: etcd updates go into the snapshot; changed targets are re-projected
//! (naming → projection → slicing → diff) and only the differences are written.
//!
//! Writes are coalesced: changes gather for `coalesce` before a flush, and a flush handles each
//! Service once, however many of its registrations changed. An unchanged Service costs no write.

use crate::backoff::Backoff;
use crate::diff::{self, SliceChange};
use crate::error::Result;
use crate::etcd::{KvEvent, Update};
use crate::http::Health;
use crate::k8s::view::is_owned;
use crate::k8s::{ObjectEvent, Writer};
use crate::metrics::{KindLabels, Metrics, ReasonLabels, StateLabels};
use crate::naming;
use crate::projection::{self, ProjectionConfig};
use crate::slicing;
use crate::snapshot::{Change, Snapshot};
use crate::target::Target;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How many Services are synced at once; each one's own writes stay in order.
const CONCURRENCY: usize = 16;

/// How often the reconciler writes.
pub struct Timing {
    /// How long changes gather before a flush.
    pub coalesce: Duration,
    /// How often every Service is checked against the cluster (drift repair).
    pub resync: Duration,
}

pub struct Reconciler {
    snapshot: Snapshot,
    cfg: ProjectionConfig,
    names: BTreeMap<Target, String>,
    by_name: HashMap<String, Target>,
    collisions: BTreeSet<String>,
    /// Targets whose registrations changed since the last flush.
    dirty_targets: BTreeSet<Target>,
    /// Service names to check at the next flush (renamed, touched in the cluster, failed).
    dirty_names: BTreeSet<String>,
    targets_changed: bool,
    /// When the oldest unflushed etcd event arrived, for the sync-latency metric.
    oldest_event: Option<Instant>,
    dirty_since: Option<Instant>,
    listed: BTreeSet<String>,
    etcd_up: BTreeMap<String, bool>,
    cluster_ready: bool,
    leader: bool,
    /// The first complete sync as leader is done: deletions are allowed from then on, and
    /// `/readyz` says ready.
    synced: bool,
    retry: Backoff,
    retry_at: Option<Instant>,
    coalesce: Duration,
    resync: Duration,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Reconciler {
    pub fn new(
        prefixes: Vec<String>,
        aggregate: bool,
        cfg: ProjectionConfig,
        timing: Timing,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Reconciler {
            snapshot: Snapshot::new(prefixes, aggregate),
            cfg,
            names: BTreeMap::new(),
            by_name: HashMap::new(),
            collisions: BTreeSet::new(),
            dirty_targets: BTreeSet::new(),
            dirty_names: BTreeSet::new(),
            targets_changed: false,
            oldest_event: None,
            dirty_since: None,
            listed: BTreeSet::new(),
            etcd_up: BTreeMap::new(),
            cluster_ready: false,
            leader: false,
            synced: false,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retry_at: None,
            coalesce: timing.coalesce,
            resync: timing.resync,
            metrics,
            health,
        }
    }

    fn all_listed(&self) -> bool {
        self.snapshot
            .prefixes()
            .iter()
            .all(|p| self.listed.contains(p))
    }

    /// Takes in one update from an etcd watcher.
    pub fn on_update(&mut self, update: Update) {
        let change = match update {
            Update::Listed { prefix, kvs, .. } => {
                self.listed.insert(prefix.clone());
                self.etcd_up.insert(prefix.clone(), true);
                self.snapshot
                    .reset_prefix(&prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])))
            }
            Update::Events { events, received } => {
                if self.synced {
                    self.oldest_event.get_or_insert(received);
                }
                let mut change = Change::default();
                for ev in events {
                    let c = match ev {
                        KvEvent::Put { key, value } => self.snapshot.put(&key, &value),
                        KvEvent::Delete { key } => self.snapshot.delete(&key),
                    };
                    change.targets.extend(c.targets);
                    change.newly_skipped.extend(c.newly_skipped);
                }
                change
            }
            Update::Connected { prefix, up } => {
                self.etcd_up.insert(prefix, up);
                let all_up = self.etcd_up.values().all(|u| *u);
                self.health.set_etcd(all_up);
                return;
            }
        };
        for (key, reason) in &change.newly_skipped {
            tracing::warn!(key = %key.escape_debug(), reason = reason.label(), "skipping registration: {reason}");
            self.metrics
                .skipped
                .get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        let (valid, skipped) = self.snapshot.counts();
        self.metrics
            .registrations
            .get_or_create(&StateLabels { state: "projected" })
            .set(valid as i64);
        self.metrics
            .registrations
            .get_or_create(&StateLabels { state: "skipped" })
            .set(skipped as i64);
        if change
            .targets
            .iter()
            .any(|t| self.snapshot.has_target(t) != self.names.contains_key(t))
        {
            self.targets_changed = true;
        }
        if !change.targets.is_empty() {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
        self.dirty_targets.extend(change.targets);
    }

    /// Takes in a change seen in the cluster.
    pub fn on_object_event(&mut self, event: ObjectEvent) {
        match event {
            ObjectEvent::Ready => self.cluster_ready = true,
            // Someone (often us) changed one of the objects: check it; the diff makes this free
            // when nothing needs doing, and repairs drift when something does.
            ObjectEvent::Touched(name) => {
                if self.synced {
                    self.dirty_since.get_or_insert_with(Instant::now);
                    self.dirty_names.insert(name);
                }
            }
        }
    }

    pub fn set_leader(&mut self, leader: bool) {
        self.leader = leader;
        self.metrics.leader.set(leader as i64);
        // A new leader checks everything: the old one may have left work undone.
        self.synced = false;
    }

    /// Whether the cache is complete and the cluster view is listed.
    fn can_sync(&self) -> bool {
        self.all_listed() && self.cluster_ready
    }

    /// When the next flush is due, if one is.
    pub fn next_flush(&self, coalesce: Duration) -> Option<Instant> {
        if !self.can_sync() || !self.leader {
            return None;
        }
        if !self.synced {
            return Some(Instant::now());
        }
        let due = self.dirty_since.map(|t| t + coalesce);
        match (due, self.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// Standby replicas are ready once their cache is warm; the leader after its first sync.
    fn update_readiness(&self) {
        if self.can_sync() && (self.synced || !self.leader) {
            self.health.set_synced();
        }
    }

    fn refresh_names(&mut self) {
        if !self.targets_changed {
            return;
        }
        self.targets_changed = false;
        let (names, collisions) = naming::assign(self.snapshot.targets());
        for c in collisions {
            if self.collisions.insert(c.name.clone()) {
                tracing::warn!(service = %c.name, winner = ?c.winner, losers = ?c.losers, "name collision: the first target keeps the name, the others get a hashed suffix");
                self.metrics
                    .conflicts
                    .get_or_create(&KindLabels {
                        kind: "name_collision",
                    })
                    .inc();
            }
        }
        for (t, n) in &self.names {
            if names.get(t) != Some(n) {
                self.dirty_names.insert(n.clone());
            }
        }
        for (t, n) in &names {
            if self.names.get(t) != Some(n) {
                self.dirty_names.insert(n.clone());
            }
        }
        self.by_name = names.iter().map(|(t, n)| (n.clone(), t.clone())).collect();
        self.names = names;
    }

    /// Writes what changed. On the first flush as leader, checks every wanted and every owned
    /// Service.
    pub async fn flush(&mut self, writer: &Writer) {
        self.targets_changed |= !self.synced;
        self.refresh_names();
        let initial = !self.synced;
        if initial {
            self.dirty_names.extend(self.names.values().cloned());
            self.dirty_names.extend(writer.view().owned_services());
            self.dirty_targets.clear();
        }
        for t in std::mem::take(&mut self.dirty_targets) {
            if let Some(n) = self.names.get(&t) {
                self.dirty_names.insert(n.clone());
            }
        }
        let names = std::mem::take(&mut self.dirty_names);
        let oldest = self.oldest_event.take();
        self.dirty_since = None;
        let this = &*self;
        let results: Vec<(String, Result<bool>)> = futures::stream::iter(names)
            .map(|name| async move {
                let r = this.sync_service(writer, &name).await;
                (name, r)
            })
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut failed = 0;
        for (name, r) in results {
            match r {
                Ok(true) => {
                    if let (Some(t), false) = (oldest, initial) {
                        self.metrics.sync_latency.observe(t.elapsed().as_secs_f64());
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    failed += 1;
                    tracing::warn!(service = %name, error = %e, "sync failed; will retry");
                    self.dirty_names.insert(name);
                }
            }
        }
        if failed > 0 {
            let wait = self.retry.next_delay();
            self.retry_at = Some(Instant::now() + wait);
            self.dirty_since.get_or_insert_with(Instant::now);
            tracing::warn!(failed, retry_in = ?wait, "some Services could not be synced; nothing was deleted for them");
        } else {
            self.retry.reset();
            self.retry_at = None;
            if initial {
                tracing::info!(services = self.names.len(), "first complete sync done");
            }
            self.synced = true;
        }
        let (services, slices) = writer.view().counts();
        self.metrics.services.set(services as i64);
        self.metrics.slices.set(slices as i64);
        self.update_readiness();
    }

    /// Brings one Service and its slices to what the registry says. Returns whether anything
    /// was written.
    async fn sync_service(&self, writer: &Writer, name: &str) -> Result<bool> {
        let view = writer.view();
        let want = self.by_name.get(name).and_then(|t| {
            let groups = projection::group(self.snapshot.registrations(t));
            (!groups.is_empty()).then_some((t, groups))
        });
        let current = view.service(name);
        let Some((target, groups)) = want else {
            return match current {
                Some(svc) if is_owned(svc.as_ref(), &self.cfg.instance) => {
                    // Its EndpointSlices go with it: kube-controller-manager's garbage
                    // collector follows their ownerReference.
                    writer.delete_service(&svc).await?;
                    tracing::info!(service = %name, "deleted: no registration left");
                    Ok(true)
                }
                _ => Ok(false),
            };
        };
        if let Some(svc) = &current
            && !is_owned(svc.as_ref(), &self.cfg.instance)
        {
            self.metrics
                .conflicts
                .get_or_create(&KindLabels { kind: "Service" })
                .inc();
            tracing::warn!(service = %name, target = ?target, "a Service of this name exists and is not this bridge's; leaving it untouched");
            return Ok(false);
        }
        let mut wrote = false;
        let desired = projection::service(name, target, &groups, &self.cfg);
        let svc = match current {
            Some(c) if !diff::service_needs_write(&desired, &c) => c,
            _ => {
                wrote = true;
                Arc::new(writer.apply_service(&desired).await?)
            }
        };
        let actual: Vec<EndpointSlice> = view
            .slices_of(name)
            .into_iter()
            .map(|s| (*s).clone())
            .collect();
        let existing: Vec<slicing::SlicePlan> =
            actual.iter().filter_map(slicing::from_object).collect();
        let owner = owner_reference(&svc);
        let desired_slices: Vec<EndpointSlice> =
            slicing::plan(name, &groups, &existing, self.cfg.max_endpoints_per_slice)
                .iter()
                .map(|p| {
                    let mut s = projection::slice(name, &p.name, &p.group, &p.addrs, &self.cfg);
                    s.metadata.owner_references = Some(vec![owner.clone()]);
                    s
                })
                .collect();
        for change in diff::diff_slices(desired_slices, &actual) {
            wrote = true;
            match change {
                SliceChange::Apply(s) => writer.apply_slice(&s).await?,
                SliceChange::Delete(n) => {
                    if let Some(cur) = actual.iter().find(|a| a.name_any() == n) {
                        writer.delete_slice(cur).await?;
                    }
                }
            }
        }
        Ok(wrote)
    }
}

fn owner_reference(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Runs the import loop until `shutdown`.
pub async fn run(
    mut reconciler: Reconciler,
    writer: Writer,
    mut etcd_rx: mpsc::Receiver<Update>,
    mut cluster_rx: mpsc::UnboundedReceiver<ObjectEvent>,
    mut leader: watch::Receiver<bool>,
    shutdown: CancellationToken,
) {
    reconciler.set_leader(*leader.borrow_and_update());
    let mut resync_tick = tokio::time::interval(reconciler.resync);
    resync_tick.tick().await;
    loop {
        reconciler.update_readiness();
        let due = reconciler.next_flush(reconciler.coalesce);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(u) = etcd_rx.recv() => {
                reconciler.on_update(u);
                // Take everything already queued: one flush for the whole burst.
                while let Ok(u) = etcd_rx.try_recv() {
                    reconciler.on_update(u);
                }
            }
            Some(e) = cluster_rx.recv() => reconciler.on_object_event(e),
            Ok(()) = leader.changed() => {
                let is = *leader.borrow_and_update();
                tracing::info!(leader = is, "leadership changed");
                reconciler.set_leader(is);
            }
            _ = resync_tick.tick() => {
                // Drift repair: check every Service against the cluster, as after a restart.
                reconciler.synced = false;
            }
            _ = sleep_until(due), if due.is_some() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = reconciler.flush(&writer) => {}
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
