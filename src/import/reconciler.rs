//! The import shell: etcd updates go into the snapshot; at each flush the Services whose targets
//! changed are planned ([`plan`], [`guard`]) and the plan is carried out against the cluster.
//! When to flush is the [`Schedule`]'s decision. This file decides nothing of its own.
//!
//! Writes are coalesced: a flush handles each Service once, however many of its registrations
//! changed, and an unchanged Service costs no write.

use crate::diff::SliceChange;
use crate::error::Result;
use crate::etcd::Update;
use crate::http::Health;
use crate::import::guard::{self, Limits};
use crate::import::panic_guard::Panic;
use crate::import::plan::{self, Decision, ServiceStep, Wanted};
use crate::import::registries::Registries;
use crate::import::schedule::{self, Schedule};
use crate::k8s::{ObjectEvent, Writer};
use crate::leader::Holding;
use crate::metrics::{KindLabels, Metrics, Share};
use crate::naming;
use crate::probe::link::PanicChange;
use crate::probe::{Link, Verdict};
use crate::projection::{self, ProjectionConfig};
use crate::slicing::{self, SlicePlan};
use crate::source::SourceConfig;
use crate::target::Target;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod intake;
mod reread;
mod sources;

/// How many Services are synced at once; each one's own writes stay in order.
const CONCURRENCY: usize = 16;
/// Services per chunk of a large flush.
const CHUNK: usize = 256;
/// How often a failing reconciler asks the apiserver whether it answers again.
const API_PROBE: Duration = Duration::from_millis(250);

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
    registries: Registries,
    cfg: ProjectionConfig,
    names: BTreeMap<Target, String>,
    by_name: HashMap<String, Target>,
    /// Contested names already reported.
    collisions: BTreeSet<String>,
    /// Targets whose registrations changed since the last flush.
    dirty_targets: BTreeSet<Target>,
    /// Service names to check at the next flush (renamed, touched in the cluster, failed).
    dirty_names: BTreeSet<String>,
    targets_changed: bool,
    /// When the oldest unflushed etcd event arrived, for the sync-latency metric.
    oldest_event: Option<Instant>,
    schedule: Schedule,
    /// (source, prefix) pairs listed, and whether their watch is up.
    listed: BTreeSet<(String, String)>,
    etcd_up: BTreeMap<(String, String), bool>,
    /// Since when each unreachable source has been down; those past their staleAfter.
    down_since: BTreeMap<String, Instant>,
    expired: BTreeSet<String>,
    /// The EtcdSource objects are listed (always true without them): an unknown source is gone.
    sources_known: bool,
    /// Per source: the last revision read and the last error, for its status.
    revisions: BTreeMap<String, i64>,
    errors: BTreeMap<String, String>,
    reports: Option<watch::Sender<crate::source::status::ReportsByNamespace>>,
    reports_dirty: bool,
    cluster_ready: bool,
    /// The leader buckets this replica holds: it writes only their Services.
    holding: Holding,
    /// The same, as published now: a flush in progress checks it before each Service, so a
    /// bucket given up mid-flush is not written past its hand-over.
    live: Option<watch::Receiver<Holding>>,
    /// The first complete sync of the buckets held is done: deletions are allowed from then on,
    /// and `/readyz` says ready.
    synced: bool,
    tuning: Tuning,
    /// Services whose removals the mass-deletion guard holds, and when etcd is read to confirm.
    held: BTreeSet<String>,
    confirm_at: Option<Instant>,
    /// A confirming read agreed with the cache: the next flush may remove what was held.
    deletions_confirmed: bool,
    /// A confirming read, or a drift repair, is asked for (a read in flight serves the first).
    confirming: bool,
    resync_wanted: bool,
    metrics: Arc<Metrics>,
    /// This namespace's share of the gauges every namespace's reconciler sets.
    gauges: Gauges,
    health: Arc<Health>,
    /// Services already reported for a weight clamped in Cilium's annotation.
    clamped: std::sync::Mutex<BTreeSet<String>>,
    /// Health checks, when `--probe` names anything.
    probes: Option<Link>,
}

/// The gauges a reconciler sets for its namespace; `/metrics` shows their sum.
struct Gauges {
    services: Share,
    slices: Share,
    held_deletions: Share,
    services_in_panic: Share,
    stale_sources: Share,
}

impl Gauges {
    fn of(m: &Metrics) -> Self {
        Gauges {
            services: Share::of(&m.services),
            slices: Share::of(&m.slices),
            held_deletions: Share::of(&m.held_deletions),
            services_in_panic: Share::of(&m.services_in_panic),
            stale_sources: Share::of(&m.stale_sources),
        }
    }
}

impl Reconciler {
    /// `sources`: those known at start (the flags' own); more come as [`Update::Source`].
    /// `skip_own`: the bridge instance whose written-back keys are not imported (no loop).
    pub fn new(
        sources: Vec<SourceConfig>,
        aggregate: bool,
        skip_own: Option<&str>,
        cfg: ProjectionConfig,
        tuning: Tuning,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Self {
        let mut registries = Registries::new(aggregate, skip_own);
        for s in sources {
            registries.set(s);
        }
        Reconciler {
            registries,
            cfg,
            names: BTreeMap::new(),
            by_name: HashMap::new(),
            collisions: BTreeSet::new(),
            dirty_targets: BTreeSet::new(),
            dirty_names: BTreeSet::new(),
            targets_changed: false,
            oldest_event: None,
            schedule: Schedule::new(tuning.coalesce, tuning.coalesce_max),
            listed: BTreeSet::new(),
            etcd_up: BTreeMap::new(),
            down_since: BTreeMap::new(),
            expired: BTreeSet::new(),
            sources_known: true,
            revisions: BTreeMap::new(),
            errors: BTreeMap::new(),
            reports: None,
            reports_dirty: false,
            cluster_ready: false,
            holding: Holding::none(1),
            live: None,
            synced: false,
            tuning,
            held: BTreeSet::new(),
            confirm_at: None,
            deletions_confirmed: false,
            confirming: false,
            resync_wanted: false,
            gauges: Gauges::of(&metrics),
            metrics,
            health,
            clamped: Default::default(),
            probes: None,
        }
    }

    /// Sources also come from EtcdSource objects: until [`Update::SourcesListed`], Services of
    /// a source not known yet are kept as they are.
    pub fn with_source_objects(mut self) -> Self {
        self.sources_known = false;
        self
    }

    /// Endpoints' health, from a prober at the other end of `link`, shapes their conditions.
    pub fn with_probes(mut self, link: Link) -> Self {
        self.probes = Some(link);
        self
    }

    /// Takes in a change of an endpoint's health verdict: its Services are checked again.
    pub fn on_verdict(&mut self, verdict: Verdict) {
        let Some(link) = self.probes.as_mut() else {
            return;
        };
        let targets = link.on_verdict(verdict);
        if !targets.is_empty() {
            self.schedule.changed(Instant::now());
            self.dirty_targets.extend(targets);
        }
    }

    /// Brings the probed endpoints up to this flush's targets; a new leader first takes what its
    /// slices show as not serving, so a change of leader does not flap them.
    fn refresh_probes(&mut self, writer: &Writer, initial: bool) {
        let Some(link) = self.probes.as_mut() else {
            return;
        };
        let snapshot = &self.registries;
        let all = initial.then(|| snapshot.targets()).into_iter().flatten();
        // Only the endpoints of the buckets held are probed here; each bucket's holder probes its
        // own.
        let (names, holding) = (&self.names, &self.holding);
        let changed = (self.dirty_targets.iter().chain(all))
            .filter(|t| names.get(*t).is_none_or(|n| holding.service(&t.source, n)))
            .map(|t| (t, projection::group(snapshot.registrations(t))));
        let view = writer.view();
        link.refresh(changed, || {
            let slices = view.owned_services().into_iter();
            let slices = slices.flat_map(|n| view.slices_of(&n));
            slices
                .flat_map(|s| crate::probe::seed::not_serving(&s))
                .collect()
        });
    }

    /// Reports a Service entering or leaving the panic guard's hold: log, metrics, and a Warning
    /// Event on entering.
    async fn note_panic(
        &self,
        writer: &Writer,
        svc: &k8s_openapi::api::core::v1::Service,
        panic: Option<Panic>,
    ) {
        let Some(link) = &self.probes else { return };
        let (change, held) = link.note_panic(&svc.name_any(), panic);
        self.gauges.services_in_panic.set(held as i64);
        match change {
            Some(PanicChange::Began(p)) => {
                self.metrics.panic_activations.inc();
                tracing::warn!(
                    failing = p.failing,
                    total = p.total,
                    "panic guard: too many endpoints fail their health checks at once; keeping them all ready"
                );
                writer.warn(svc, "PanicGuard", p.note()).await;
            }
            Some(PanicChange::Ended) => {
                tracing::info!("panic guard: released; endpoints show their own health again")
            }
            None => {}
        }
    }

    /// Takes in a change seen in the cluster.
    pub fn on_object_event(&mut self, event: ObjectEvent) {
        match event {
            ObjectEvent::Ready => self.cluster_ready = true,
            // Someone (often us) changed one of the objects: check it; the diff makes this free
            // when nothing needs doing, and repairs drift when something does. A Service of ours
            // deleted by someone may also free a name.
            ObjectEvent::Touched(name) => {
                if self.synced {
                    self.schedule.touched(Instant::now());
                    self.dirty_names.insert(name);
                    self.targets_changed = true;
                }
            }
        }
    }

    /// This replica now holds `holding`. A bucket gained gets every one of its Services checked
    /// (the last holder may have left work undone); a bucket lost is simply no longer written.
    pub fn set_holding(&mut self, holding: Holding) {
        if holding == self.holding {
            return;
        }
        let gained = holding.gained(&self.holding);
        self.holding = holding;
        self.metrics.leader.set(self.holding.any() as i64);
        self.metrics
            .buckets_held
            .set(self.holding.held().len() as i64);
        if gained {
            self.synced = false;
        }
        // The prober starts a new term for the endpoints of the buckets now held, and the
        // flush that follows fills it with them.
        if let Some(link) = self.probes.as_mut() {
            link.set_leader(self.holding.any());
            self.gauges.services_in_panic.set(0);
            self.synced = false;
        }
    }

    /// The source the Service `name` is written for: its target's, else (a Service to delete)
    /// the label of the object.
    fn source_of(&self, writer: &Writer, name: &str) -> String {
        if let Some(t) = self.by_name.get(name) {
            return t.source.clone();
        }
        let svc = writer.view().service(name);
        let label = svc
            .as_ref()
            .and_then(|s| s.labels().get(crate::labels::SOURCE));
        label
            .map_or(crate::source::spec::DEFAULT_SOURCE, String::as_str)
            .to_owned()
    }

    /// Whether this replica writes the Service `name` (its bucket is held).
    fn writes(&self, writer: &Writer, name: &str) -> bool {
        self.holding.service(&self.source_of(writer, name), name)
    }

    /// Whether the cache is complete and the cluster view is listed.
    fn can_sync(&self) -> bool {
        self.settled() && self.cluster_ready
    }

    /// When the next flush is due, if one is.
    pub fn next_flush(&self) -> Option<Instant> {
        (self.can_sync() && self.holding.any())
            .then(|| self.schedule.due(!self.synced, Instant::now()))?
    }

    fn update_readiness(&self) {
        if schedule::ready(self.can_sync(), self.holding.any(), self.synced) {
            self.health.set_synced(&self.cfg.namespace);
        }
    }

    /// Names every target, keeping each name in use with the target it serves (read back from
    /// our Services, so it survives restarts and leader changes).
    /// Returns the name collisions not reported before.
    fn refresh_names(&mut self, writer: &Writer) -> Vec<naming::Collision> {
        if !self.targets_changed {
            return Vec::new();
        }
        self.targets_changed = false;
        let mut in_use: BTreeMap<String, Target> = self
            .names
            .iter()
            .map(|(t, n)| (n.clone(), t.clone()))
            .collect();
        for name in writer.view().owned_services() {
            match writer
                .view()
                .service(&name)
                .as_deref()
                .and_then(plan::target_of)
            {
                Some(t) => in_use.insert(name, t),
                None => in_use.remove(&name),
            };
        }
        let prefixes = self.registries.name_prefixes();
        let (names, collisions) =
            naming::assign_prefixed(self.registries.targets(), &in_use, &prefixes);
        let new: Vec<naming::Collision> = collisions
            .into_iter()
            .filter(|c| self.collisions.insert(c.name.clone()))
            .collect();
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
        new
    }

    /// Logs, counts and records an Event on the Service that keeps the name.
    async fn report_collision(&self, writer: &Writer, c: naming::Collision) {
        tracing::warn!(service = %c.name, keeps = ?c.winner, renamed = ?c.losers, "name collision: the name in use (or the first in sort order, for new names) keeps it; the others get a hashed suffix");
        self.metrics
            .conflicts
            .get_or_create(&KindLabels {
                kind: "name_collision",
            })
            .inc();
        if let Some(svc) = writer.view().service(&c.name) {
            let losers: Vec<String> = c.losers.iter().map(|t| t.key_prefix()).collect();
            let note = format!(
                "{} keeps this name; the etcd target(s) {} wanted it too and get a name with a hashed suffix (see the etcd-bridge.io/name annotations)",
                c.winner.key_prefix(),
                losers.join(", ")
            );
            writer.warn(svc.as_ref(), "NameCollision", note).await;
        }
    }

    /// Writes what changed. On the first flush as leader, checks every wanted and every owned
    /// Service.
    pub async fn flush(&mut self, writer: &Writer) {
        let initial = !self.synced;
        self.targets_changed |= initial;
        for c in self.refresh_names(writer) {
            self.report_collision(writer, c).await;
        }
        self.refresh_probes(writer, initial);
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
        // Only the Services of the buckets held: the others are another replica's to write.
        names.retain(|n| self.writes(writer, n));
        let theirs: Vec<String> = (self.held.iter())
            .filter(|n| !self.writes(writer, n))
            .cloned()
            .collect();
        for n in theirs {
            self.held.remove(&n);
        }
        // Each source on its own: removals held while its source is not listed; a stale
        // source's removal is no mass deletion to hold.
        let (by_source, expiring) = self.by_treatment(writer, &names);
        let mut hold = self.guard_removals(writer, &mut names, &expiring);
        hold.extend(by_source);
        let oldest = self.oldest_event.take();
        self.schedule.flushing();
        let this = &*self;
        let hold = &hold;
        // In chunks, forgetting between them the writes the stores have caught up with: a first
        // sync writes every object, and keeping every response until the end is its memory peak.
        let names: Vec<String> = names.into_iter().collect();
        let mut results: Vec<(String, Result<bool>)> = Vec::with_capacity(names.len());
        for chunk in names.chunks(CHUNK) {
            let done: Vec<(String, Result<bool>)> = futures::stream::iter(chunk.iter().cloned())
                .map(|name| async move {
                    let span = tracing::info_span!("sync", service = %name);
                    let r = this
                        .sync_service(writer, &name, hold.contains(&name))
                        .instrument(span)
                        .await;
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
        let mut wrote = false;
        for (name, r) in results {
            match r {
                Ok(w) => wrote |= w,
                Err(e) => {
                    failed += 1;
                    tracing::warn!(service = %name, error = %e, "sync failed; will retry");
                    self.dirty_names.insert(name);
                }
            }
        }
        // One observation per flush: every Service it wrote waited for the same oldest event.
        if let (Some(t), true, false) = (oldest, wrote, initial) {
            self.metrics.sync_latency.observe(t.elapsed().as_secs_f64());
        }
        match self.schedule.flushed(Instant::now(), failed > 0) {
            Some(wait) => {
                tracing::warn!(failed, retry_in = ?wait, "some Services could not be synced; nothing was deleted for them; retrying sooner if the apiserver answers again")
            }
            None => {
                if initial {
                    tracing::info!(services = self.names.len(), "first complete sync done");
                }
                self.synced = true;
            }
        }
        self.update_readiness();
    }

    /// Now and then: the gauges that need a scan of the cluster view, and pruning of the view's
    /// record of our own writes. Kept out of flushes, which should cost only what changed.
    fn housekeeping(&self, writer: &Writer) {
        let (services, slices) = writer.view().counts();
        self.gauges.services.set(services as i64);
        self.gauges.slices.set(slices as i64);
        writer.view().prune();
    }

    /// What the registry wants for the Service `name`, if it has any endpoint.
    fn wanted(&self, name: &str) -> Option<Wanted> {
        let target = self.by_name.get(name)?;
        if self.expired.contains(&target.source) {
            return None;
        }
        let groups = projection::group(self.registries.registrations(target));
        if groups.is_empty() {
            return None;
        }
        let mut wanted = Wanted::new(target.clone(), groups);
        if let Some(link) = &self.probes {
            wanted.health = link.verdict(target, &wanted.groups);
        }
        Some(wanted)
    }

    fn current_slices(writer: &Writer, name: &str) -> Vec<SlicePlan> {
        writer
            .view()
            .slices_of(name)
            .iter()
            .filter_map(|s| slicing::from_object(s))
            .collect()
    }

    /// The mass-deletion guard, for the Services of this flush (plus those already held).
    /// Returns the Services whose removals are held: they are synced without removals.
    fn guard_removals(
        &mut self,
        writer: &Writer,
        names: &mut BTreeSet<String>,
        exempt: &BTreeSet<String>,
    ) -> BTreeSet<String> {
        if self.deletions_confirmed {
            self.deletions_confirmed = false;
            names.append(&mut self.held);
            self.gauges.held_deletions.set(0);
            return BTreeSet::new();
        }
        names.extend(self.held.iter().cloned());
        let losing: Vec<(String, usize)> = names
            .iter()
            .map(|n| {
                let wanted = self.wanted(n);
                let r = guard::removals(
                    wanted.as_ref().map(|w| &w.groups),
                    &Self::current_slices(writer, n),
                );
                (n.clone(), r)
            })
            .filter(|(n, r)| *r > 0 && !exempt.contains(n))
            .collect();
        let removed: usize = losing.iter().map(|(_, r)| r).sum();
        let limits = Limits {
            max_ratio: self.tuning.max_delete_ratio,
            min: self.tuning.mass_delete_min,
        };
        let holding = self.confirm_at.is_some();
        if !guard::holds(limits, removed, || writer.view().total_endpoints(), holding) {
            self.held.clear();
            self.confirm_at = None;
            self.gauges.held_deletions.set(0);
            return BTreeSet::new();
        }
        self.held = losing.iter().map(|(n, _)| n.clone()).collect();
        self.gauges.held_deletions.set(removed as i64);
        if self.confirm_at.is_none() {
            self.confirm_at = Some(Instant::now() + self.tuning.delete_confirm_delay);
            tracing::warn!(
                endpoints = removed,
                services = losing.len(),
                confirm_in = ?self.tuning.delete_confirm_delay,
                "mass-deletion guard: holding removals until a second read of etcd confirms them; additions and weight changes go out now"
            );
        }
        self.held.clone()
    }

    /// Logs and counts, once per Service, a weight above what Cilium's annotation takes.
    fn note_clamped(&self, name: &str, groups: &projection::Groups) {
        let Some(max) = groups.keys().map(|g| g.weight).max() else {
            return;
        };
        if !self.cfg.cilium_weight || max <= projection::CILIUM_MAX_WEIGHT {
            return;
        }
        if self
            .clamped
            .lock()
            .expect("clamped lock")
            .insert(name.to_owned())
        {
            self.metrics.weights_clamped.inc();
            tracing::warn!(
                weight = max,
                written = projection::CILIUM_MAX_WEIGHT,
                "a weight above 65535 is written to service.cilium.io/weight as 65535; etcd-bridge.io/weight keeps the registered value"
            );
        }
    }

    /// Brings one Service and its slices to what [`plan::decide`] says. Returns whether anything
    /// was written.
    async fn sync_service(&self, writer: &Writer, name: &str, hold_removals: bool) -> Result<bool> {
        let source = self.source_of(writer, name);
        if (self.live.as_ref()).is_some_and(|l| !l.borrow().service(&source, name)) {
            return Ok(false); // its bucket was given up during this flush
        }
        let view = writer.view();
        let wanted = self.wanted(name);
        let current = view.service(name);
        let actual: Vec<EndpointSlice> = view
            .slices_of(name)
            .into_iter()
            .map(|s| (*s).clone())
            .collect();
        let existing: Vec<SlicePlan> = actual.iter().filter_map(slicing::from_object).collect();
        let decision = plan::decide(
            name,
            wanted.as_ref(),
            current.as_ref(),
            &existing,
            hold_removals,
            &self.cfg,
        );
        match decision {
            Decision::Nothing => Ok(false),
            Decision::Delete(svc) => {
                writer.delete_service(&svc).await?;
                self.note_panic(writer, &svc, None).await;
                tracing::info!("deleted: no registration left");
                Ok(true)
            }
            Decision::Conflict { service, target } => {
                self.metrics
                    .conflicts
                    .get_or_create(&KindLabels { kind: "Service" })
                    .inc();
                tracing::warn!(target = ?target, "a Service of this name exists and is not this bridge's; leaving it untouched");
                writer
                    .warn(
                        service.as_ref(),
                        "NameConflict",
                        format!(
                            "etcd-bridge would project the etcd target {} (prefix {}) here, but this Service is not managed by it; it is left untouched. Rename or delete this Service, or run the bridge in another namespace.",
                            target.raw_name(),
                            target.prefix
                        ),
                    )
                    .await;
                Ok(false)
            }
            Decision::Converge {
                recreate,
                service,
                groups,
                health,
            } => {
                let mut wrote = false;
                if let Some(old) = recreate {
                    writer.delete_service(&old).await?;
                    tracing::info!("recreating: headless changed");
                    wrote = true;
                }
                let svc = match service {
                    ServiceStep::Keep(c) => c,
                    ServiceStep::Apply(desired) => {
                        wrote = true;
                        Arc::new(writer.apply_service(&desired).await?)
                    }
                };
                self.note_clamped(name, &groups);
                self.note_panic(writer, &svc, health.panic).await;
                let owner = plan::owner_reference(&svc);
                // Converge comes only from a wanted Service.
                let source = wanted.as_ref().map_or("", |w| w.target.source.as_str());
                for change in plan::slice_changes(
                    source,
                    name,
                    &groups,
                    &health.unhealthy,
                    &actual,
                    Some(&owner),
                    &self.cfg,
                ) {
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
    }
}

/// Runs the import loop until `shutdown`.
pub async fn run(
    mut reconciler: Reconciler,
    writer: Writer,
    mut etcd_rx: mpsc::Receiver<Update>,
    mut cluster_rx: mpsc::UnboundedReceiver<ObjectEvent>,
    mut holding: watch::Receiver<Holding>,
    shutdown: CancellationToken,
) {
    reconciler.set_holding(holding.borrow_and_update().clone());
    reconciler.live = Some(holding.clone());
    let mut verdicts = reconciler.probes.as_mut().and_then(Link::take_verdicts);
    // The read of every source in flight, if any (it runs off the loop).
    let mut reread = None;
    let mut resync_tick = tokio::time::interval(reconciler.tuning.resync);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(5));
    let mut api_probe = tokio::time::interval(API_PROBE);
    api_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let confirm =
            (reconciler.confirm_at).filter(|_| reconciler.holding.any() && !reconciler.confirming);
        let stale = reconciler.next_stale();
        let failing = reconciler.schedule.failing();
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(u) = etcd_rx.recv() => {
                reconciler.on_update(u);
                // Take everything already queued: one flush for the whole burst.
                while let Ok(u) = etcd_rx.try_recv() {
                    reconciler.on_update(u);
                }
                reconciler.publish_reports(false);
            }
            Some(e) = cluster_rx.recv() => reconciler.on_object_event(e),
            Some(v) = crate::probe::link::next_verdict(&mut verdicts) => {
                reconciler.on_verdict(v);
                while let Some(v) = verdicts.as_mut().and_then(|r| r.try_recv().ok()) {
                    reconciler.on_verdict(v);
                }
            }
            Ok(()) = holding.changed() => {
                let now = holding.borrow_and_update().clone();
                tracing::info!(buckets = ?now.held(), of = now.buckets(), "leadership changed");
                reconciler.set_holding(now);
            }
            _ = housekeeping.tick() => {
                reconciler.housekeeping(&writer);
                reconciler.publish_reports(true);
            }
            // While syncs fail, ask the apiserver often and cheaply whether it is back.
            _ = api_probe.tick(), if failing => {
                if writer.api_answers().await && reconciler.schedule.api_answered(Instant::now()) {
                    tracing::info!("the apiserver answers again; retrying now");
                }
            }
            _ = resync_tick.tick() => reconciler.want_reread(&mut reread, false),
            Some(results) = reread::Reread::done(&mut reread) => {
                reconciler.finish_reread(&mut reread, results);
            }
            _ = sleep_until(stale), if stale.is_some() => reconciler.check_stale(),
            _ = sleep_until(confirm), if confirm.is_some() => reconciler.want_reread(&mut reread, true),
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
