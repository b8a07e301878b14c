//! The import flow: etcd updates go into the snapshot; changed targets are re-projected
//! (naming → projection → slicing → diff) and only the differences are written.
//!
//! Writes are coalesced: changes gather for `coalesce` before a flush, and a flush handles each
//! Service once, however many of its registrations changed. An unchanged Service costs no write.

use crate::backoff::Backoff;
use crate::config::EtcdArgs;
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
/// Services per chunk of a large flush.
const CHUNK: usize = 256;

/// When and how much the reconciler writes.
pub struct Tuning {
    /// A change after this much quiet is written at once; changes closer together than this are
    /// a burst, gathered until it pauses for this long ...
    pub coalesce: Duration,
    /// ... or for at most this long.
    pub coalesce_max: Duration,
    /// How often etcd is read again and every Service checked against the cluster (drift repair).
    pub resync: Duration,
    /// Mass-deletion guard: the share of all projected endpoints one flush may remove.
    pub max_delete_ratio: f64,
    /// ... unless it removes fewer endpoints than this.
    pub mass_delete_min: usize,
    /// How long held deletions wait for a confirming read of etcd.
    pub delete_confirm_delay: Duration,
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
    /// When the last change arrived, and whether the pending ones started after a quiet spell
    /// (then they are written at once: an isolated change costs no waiting).
    last_change: Option<Instant>,
    leading: bool,
    listed: BTreeSet<String>,
    etcd_up: BTreeMap<String, bool>,
    cluster_ready: bool,
    leader: bool,
    /// The first complete sync as leader is done: deletions are allowed from then on, and
    /// `/readyz` says ready.
    synced: bool,
    retry: Backoff,
    retry_at: Option<Instant>,
    tuning: Tuning,
    /// Services whose deletions the mass-deletion guard holds, and when etcd is read to confirm.
    held: BTreeSet<String>,
    confirm_at: Option<Instant>,
    /// A confirming read agreed with the cache: the next flush may delete what was held.
    deletions_confirmed: bool,
    etcd: EtcdArgs,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

impl Reconciler {
    /// `skip_own`: the bridge instance whose written-back keys are not imported (no loop).
    pub fn new(
        etcd: EtcdArgs,
        aggregate: bool,
        skip_own: Option<&str>,
        cfg: ProjectionConfig,
        tuning: Tuning,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        Reconciler {
            snapshot: match skip_own {
                Some(instance) => {
                    Snapshot::new(etcd.prefixes.clone(), aggregate).skip_own(instance)
                }
                None => Snapshot::new(etcd.prefixes.clone(), aggregate),
            },
            cfg,
            names: BTreeMap::new(),
            by_name: HashMap::new(),
            collisions: BTreeSet::new(),
            dirty_targets: BTreeSet::new(),
            dirty_names: BTreeSet::new(),
            targets_changed: false,
            oldest_event: None,
            dirty_since: None,
            last_change: None,
            leading: false,
            listed: BTreeSet::new(),
            etcd_up: BTreeMap::new(),
            cluster_ready: false,
            leader: false,
            synced: false,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retry_at: None,
            tuning,
            held: BTreeSet::new(),
            confirm_at: None,
            deletions_confirmed: false,
            etcd,
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
        self.note_change(change);
    }

    fn note_change(&mut self, change: Change) {
        for (key, reason) in &change.newly_skipped {
            if *reason == crate::registry::SkipReason::OwnRegistration {
                // Expected, not a fault: no warning.
                tracing::debug!(key = %key.escape_debug(), "not importing a written-back registration");
            } else {
                tracing::warn!(key = %key.escape_debug(), reason = reason.label(), "skipping registration: {reason}");
            }
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
            self.mark_dirty();
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
                    self.mark_dirty_by(false);
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

    /// Notes that something needs writing, for the coalescing of [`next_flush`](Self::next_flush).
    fn mark_dirty(&mut self) {
        self.mark_dirty_by(true);
    }

    /// `change`: false for the cluster's echoes of our own writes, which must not make the next
    /// real change look like part of a burst.
    fn mark_dirty_by(&mut self, change: bool) {
        let now = Instant::now();
        if !change {
            self.dirty_since.get_or_insert(now);
            return;
        }
        let quiet = self
            .last_change
            .is_none_or(|t| now.duration_since(t) > self.tuning.coalesce);
        if self.dirty_since.is_none() {
            self.dirty_since = Some(now);
            self.leading = quiet;
        } else if quiet {
            self.leading = true;
        }
        self.last_change = Some(now);
    }

    /// Whether the cache is complete and the cluster view is listed.
    fn can_sync(&self) -> bool {
        self.all_listed() && self.cluster_ready
    }

    /// When the next flush is due, if one is.
    pub fn next_flush(&self) -> Option<Instant> {
        if !self.can_sync() || !self.leader {
            return None;
        }
        if !self.synced {
            // Retries of a failed first sync wait for their backoff.
            return Some(self.retry_at.unwrap_or_else(Instant::now));
        }
        let due = self.dirty_since.map(|since| {
            if self.leading {
                since
            } else {
                let quiet = self.last_change.unwrap_or(since) + self.tuning.coalesce;
                quiet.min(since + self.tuning.coalesce_max)
            }
        });
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
        let mut names = std::mem::take(&mut self.dirty_names);
        self.guard_deletions(writer, &mut names);
        let oldest = self.oldest_event.take();
        self.dirty_since = None;
        let this = &*self;
        // In chunks, forgetting between them the writes the stores have caught up with: a first
        // sync writes every object, and keeping every response until the end is its memory peak.
        let names: Vec<String> = names.into_iter().collect();
        let mut results: Vec<(String, Result<bool>)> = Vec::with_capacity(names.len());
        for chunk in names.chunks(CHUNK) {
            let done: Vec<(String, Result<bool>)> = futures::stream::iter(chunk.iter().cloned())
                .map(|name| async move {
                    let r = this.sync_service(writer, &name).await;
                    (name, r)
                })
                .buffer_unordered(CONCURRENCY)
                .collect()
                .await;
            results.extend(done);
            if names.len() > CHUNK {
                writer.view().prune();
            }
        }
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
            self.mark_dirty();
            tracing::warn!(failed, retry_in = ?wait, "some Services could not be synced; nothing was deleted for them");
        } else {
            self.retry.reset();
            self.retry_at = None;
            if initial {
                tracing::info!(services = self.names.len(), "first complete sync done");
            }
            self.synced = true;
        }
        self.update_readiness();
    }

    /// Now and then: the gauges that need a scan of the cluster view, and pruning of the view's
    /// record of our own writes. Kept out of flushes, which should cost only what changed.
    fn housekeeping(&self, writer: &Writer) {
        let (services, slices) = writer.view().counts();
        self.metrics.services.set(services as i64);
        self.metrics.slices.set(slices as i64);
        writer.view().prune();
    }

    /// The target the Service `name` projects and its endpoint groups, if it has any endpoint.
    fn wanted(&self, name: &str) -> Option<(&Target, projection::Groups)> {
        let t = self.by_name.get(name)?;
        let groups = projection::group(self.snapshot.registrations(t));
        (!groups.is_empty()).then_some((t, groups))
    }

    /// The endpoints (ip, port) of `name` in the cluster that the registry no longer has.
    fn removals(&self, writer: &Writer, name: &str) -> usize {
        let wanted: BTreeSet<(std::net::IpAddr, u16)> = self
            .wanted(name)
            .into_iter()
            .flat_map(|(_, groups)| groups)
            .flat_map(|(g, addrs)| addrs.into_iter().map(move |a| (a, g.port)))
            .collect();
        writer
            .view()
            .slices_of(name)
            .iter()
            .filter_map(|s| slicing::from_object(s))
            .flat_map(|p| {
                let port = p.group.port;
                p.addrs.into_iter().map(move |a| (a, port))
            })
            .filter(|e| !wanted.contains(e))
            .count()
    }

    /// The mass-deletion guard. When this flush would remove more than `max_delete_ratio` of all
    /// projected endpoints (and at least `mass_delete_min`), the Services losing endpoints are
    /// held out of it until a consistent read of etcd, `delete_confirm_delay` later, confirms.
    fn guard_deletions(&mut self, writer: &Writer, names: &mut BTreeSet<String>) {
        if self.deletions_confirmed {
            self.deletions_confirmed = false;
            self.held.clear();
            self.metrics.held_deletions.set(0);
            return;
        }
        names.extend(std::mem::take(&mut self.held));
        let losing: Vec<(String, usize)> = names
            .iter()
            .map(|n| (n.clone(), self.removals(writer, n)))
            .filter(|(_, r)| *r > 0)
            .collect();
        let removed: usize = losing.iter().map(|(_, r)| r).sum();
        // Counting every endpoint is a full scan: only when the removals could trip the guard.
        if removed < self.tuning.mass_delete_min {
            self.metrics.held_deletions.set(0);
            return;
        }
        let total = writer.view().total_endpoints();
        let trips = removed as f64 > self.tuning.max_delete_ratio * total as f64;
        if !trips {
            self.metrics.held_deletions.set(0);
            return;
        }
        for (n, _) in &losing {
            names.remove(n);
            self.held.insert(n.clone());
        }
        self.metrics.held_deletions.set(removed as i64);
        if self.confirm_at.is_none() {
            self.confirm_at = Some(Instant::now() + self.tuning.delete_confirm_delay);
            tracing::warn!(
                endpoints = removed,
                of = total,
                services = losing.len(),
                confirm_in = ?self.tuning.delete_confirm_delay,
                "mass-deletion guard: holding deletions until a second read of etcd confirms them"
            );
        }
    }

    /// Reads every prefix again (linearizable) and brings the cache to it: missed events are
    /// recovered, and deletions held by the guard are confirmed if the keys are really gone.
    async fn reread(&mut self) -> Result<()> {
        let mut client = crate::etcd::connect(&self.etcd).await?;
        let mut lists = Vec::new();
        for prefix in self.snapshot.prefixes().to_vec() {
            let (kvs, _) = crate::etcd::read_prefix(&mut client, &self.etcd, &prefix).await?;
            lists.push((prefix, kvs));
        }
        for (prefix, kvs) in lists {
            let change = self
                .snapshot
                .reset_prefix(&prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])));
            if !change.targets.is_empty() {
                tracing::warn!(%prefix, targets = change.targets.len(), "the consistent read found changes the watch had missed");
                self.note_change(change);
            }
        }
        Ok(())
    }

    /// Called when `confirm_at` passes.
    pub async fn confirm_deletions(&mut self) {
        match self.reread().await {
            Ok(()) => {
                tracing::warn!(
                    services = self.held.len(),
                    "mass-deletion guard: etcd confirms the deletions; applying them"
                );
                self.confirm_at = None;
                self.deletions_confirmed = true;
                self.dirty_names.extend(self.held.iter().cloned());
                self.mark_dirty();
            }
            Err(e) => {
                tracing::warn!(error = %e, "mass-deletion guard: cannot read etcd to confirm; still holding");
                self.confirm_at = Some(Instant::now() + self.tuning.delete_confirm_delay);
            }
        }
    }

    /// Drift repair: reread etcd, then check every Service against the cluster.
    pub async fn resync(&mut self) {
        if let Err(e) = self.reread().await {
            tracing::warn!(error = %e, "drift repair: cannot read etcd; checking the cluster against the cache");
        }
        self.synced = false;
    }

    /// Brings one Service and its slices to what the registry says. Returns whether anything
    /// was written.
    async fn sync_service(&self, writer: &Writer, name: &str) -> Result<bool> {
        let view = writer.view();
        let want = self.wanted(name);
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
            writer
                .warn(
                    svc.as_ref(),
                    "NameConflict",
                    format!(
                        "etcd-bridge would project the etcd target {} (prefix {}) here, but this Service is not managed by it; it is left untouched. Rename or delete this Service, or run the bridge in another namespace.",
                        target.raw_name(),
                        target.prefix
                    ),
                )
                .await;
            return Ok(false);
        }
        let mut wrote = false;
        let desired = projection::service(name, target, &groups, &self.cfg);
        let current = match current {
            // clusterIP is immutable: switching headless on or off needs a new Service.
            Some(c) if diff::service_needs_recreate(&desired, &c) => {
                writer.delete_service(&c).await?;
                tracing::info!(service = %name, "recreating: headless changed");
                None
            }
            c => c,
        };
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
    let mut resync_tick = tokio::time::interval(reconciler.tuning.resync);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    resync_tick.tick().await;
    loop {
        reconciler.update_readiness();
        let due = reconciler.next_flush();
        // Already due: flush now. A timer would round up to tokio's next 1 ms tick, which is a
        // large share of a ~2 ms propagation.
        if due.is_some_and(|d| d <= Instant::now()) {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = reconciler.flush(&writer) => {}
            }
            continue;
        }
        let confirm = reconciler.confirm_at.filter(|_| reconciler.leader);
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
            _ = housekeeping.tick() => reconciler.housekeeping(&writer),
            _ = resync_tick.tick() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = reconciler.resync() => {}
                }
            }
            _ = sleep_until(confirm), if confirm.is_some() => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = reconciler.confirm_deletions() => {}
                }
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
