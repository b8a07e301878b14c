//! The EtcdRegistration controller. Every replica runs it; a replica acts only on the objects of
//! the leader buckets it holds (all of them with one bucket: the leader). A replica that gains a
//! bucket gets a pass over every object, which re-attaches each key of its buckets to its own
//! leases before the old holder's can expire (no DELETE for watchers during a failover). A lost
//! lease gets a pass over the objects whose keys were on it.
//!
//! Each object goes to one registry ([`destination::choose`]): the bridge's own etcd, or the
//! EtcdSource its `spec.source` names. Each registry has its own leases and freed-key watch
//! ([`Targets`]); an object that moves to another registry is taken out of the one before.
//!
//! A pass writes etcd, then queues what the object needs (finalizer, status, Events) for the
//! publishers (`object`, `publish`), which write to the apiserver a few at a time: 10,000 objects
//! reach etcd in seconds, their objects follow. A key is thus in etcd before its object has the
//! finalizer; if the finalizer cannot be added, or the object is already gone, the publisher
//! deletes the object's keys again, so that no key outlives its object.

use crate::config::WritebackArgs;
use crate::error::{Error, Result};
use crate::leader::Holding;
use crate::metrics::Metrics;
use crate::writeback::crd::{EtcdRegistration, EtcdRegistrationStatus};
use crate::writeback::desired::{self, DesiredKey};
use crate::writeback::destination::{self, Changed, Choice, Destination, Held, Registries};
use crate::writeback::keys::Outcome;
use crate::writeback::lease::Owner;
use crate::writeback::object::{FINALIZER, Finalizer, Objects};
use crate::writeback::policy::Policy;
use crate::writeback::publish::Publication;
use crate::writeback::status::{self, Lookup, Source};
use crate::writeback::targets::{Outlets, Targets};
use crate::writeback::triggers;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Changes that matter are watched (the object, a followed Service and its slices, keys leaving
/// etcd, the leases); a pass this long after the last one is a backstop for anything missed.
const BACKSTOP: Duration = Duration::from_secs(300);

/// Passes at once. Bounded: kube-runtime polls every running pass on each wake-up, so 10,000 at
/// once cost the bridge a minute of CPU; a pass waits for etcd only, so 64 keep etcd busy.
const PASSES_AT_ONCE: u16 = 64;

/// A failed write to an object is retried (by a new pass) after this long.
const RETRY: Duration = Duration::from_secs(5);

struct Ctx {
    client: Client,
    /// The registries, connected.
    targets: Arc<Targets>,
    /// Which registries exist, from the source supervisor (or the flags' alone).
    registries: watch::Receiver<Arc<Registries>>,
    /// The bridge's namespace, where EtcdSource objects live.
    namespace: String,
    objects: Objects,
    leader: watch::Receiver<Holding>,
    policy: Policy,
    /// Objects whose write failed, for a new pass.
    retry: mpsc::UnboundedSender<Owner>,
}

/// The registries the controller writes to: the flags' (`default`, connected at start) and
/// those the EtcdSource objects add, and the bridge's namespace, where those live.
pub struct Where {
    pub default: Destination,
    pub registries: watch::Receiver<Arc<Registries>>,
    pub namespace: String,
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    places: Where,
    args: WritebackArgs,
    instance: String,
    leader: watch::Receiver<Holding>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let policy = Policy::parse(&args.policy)?;
    let etcd = connect_until_up(&places.default, &shutdown).await?;
    let (retry, mut retries) = mpsc::unbounded_channel();
    // Bounded: a burst of expiries waits in etcd's watch buffers rather than in our memory.
    let (freed_tx, mut freed_keys) = mpsc::channel(1024);
    let (missed_tx, mut missed) = mpsc::channel(1);
    let targets = Arc::new(Targets::new(
        args.lease_ttl,
        args.keys_per_lease as usize,
        instance,
        metrics,
        Outlets {
            freed: freed_tx,
            missed: missed_tx,
            lost: retry.clone(),
        },
        shutdown.clone(),
    ));
    targets.insert(&places.default, etcd);
    forget_when_not_leading(targets.clone(), leader.clone(), shutdown.clone());
    let ctx = Arc::new(Ctx {
        objects: Objects::new(client.clone()),
        client: client.clone(),
        targets: targets.clone(),
        registries: places.registries.clone(),
        namespace: places.namespace,
        leader: leader.clone(),
        policy,
        retry,
    });
    for _ in 0..args.concurrency {
        tokio::spawn(publisher(ctx.clone(), shutdown.clone()));
    }
    tracing::info!(policy = %ctx.policy.describe(), prefix = %places.default.prefix, "write-back controller starting");

    let (regs, slices, services) = match &args.namespace {
        Some(ns) => (
            Api::<EtcdRegistration>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<EndpointSlice>>::namespaced(client.clone(), ns),
            Api::<PartialObjectMeta<Service>>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            Api::all(client.clone()),
        ),
    };
    let mut config = watcher::Config::default();
    if let Some(selector) = &args.selector {
        config = config.labels(selector);
    }
    let controller =
        Controller::new(regs, config).with_config(Config::default().concurrency(PASSES_AT_ONCE));
    // Keys that leave a registry's etcd: the registrations that want them get a pass at once (a
    // foreign key that blocked one is gone); a broken watch, once back, means everything gets
    // one, as does this replica gaining a bucket. A registry that comes, changes or goes: the
    // objects that name it or hold keys in it.
    let (all_tx, mut all_rx) = mpsc::channel(1);
    let (some_tx, mut some_rx) = mpsc::unbounded_channel();
    tokio::spawn(follow_registries(
        places.registries,
        targets,
        all_tx,
        some_tx,
    ));
    let again = futures::stream::select_all([
        gained(leader).boxed(),
        futures::stream::poll_fn(move |cx| missed.poll_recv(cx)).boxed(),
        futures::stream::poll_fn(move |cx| all_rx.poll_recv(cx)).boxed(),
    ]);
    let (by_slice, by_service, by_key, by_source) = (
        controller.store(),
        controller.store(),
        controller.store(),
        controller.store(),
    );
    let freed = futures::stream::poll_fn(move |cx| freed_keys.poll_recv(cx)).flat_map(
        move |(source, prefix, key)| {
            let regs = by_key.state();
            futures::stream::iter(triggers::wanting_key(&regs, &source, &prefix, &key))
        },
    );
    let moved =
        futures::stream::poll_fn(move |cx| some_rx.poll_recv(cx)).flat_map(move |sources| {
            futures::stream::iter(triggers::in_registries(&by_source.state(), &sources))
        });
    // The objects whose keys were on a lease that is gone, and those whose write failed.
    let retried = futures::stream::poll_fn(move |cx| retries.poll_recv(cx))
        .map(|(ns, name)| ObjectRef::new(&name).within(&ns));
    controller
        // serviceRef: a change to an EndpointSlice, or to the Service itself (it may be deleted
        // while its slices stay), re-checks the registrations that follow that Service.
        // Metadata only: the endpoints are read when reconciling.
        .watches(slices, watcher::Config::default(), move |s| {
            triggers::following_slice(&by_slice.state(), s.namespace().as_deref(), s.labels())
        })
        .watches(services, watcher::Config::default(), move |s| {
            triggers::following_service(&by_service.state(), s.namespace().as_deref(), &s.name_any())
        })
        .reconcile_on(freed)
        .reconcile_on(moved)
        .reconcile_on(retried)
        .reconcile_all_on(again)
        .graceful_shutdown_on(shutdown.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "write-back reconcile failed; retrying (is the EtcdRegistration CRD installed? `kubectl apply -f crds/` or run with --writeback=false)");
            }
        })
        .await;
    Ok(())
}

async fn connect_until_up(
    d: &Destination,
    shutdown: &CancellationToken,
) -> Result<etcd_client::Client> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match crate::etcd::connect(&d.connection).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "write-back: cannot connect to etcd yet");
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(e),
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// A replica that stops writing a bucket forgets its keys: the new holder moves them to its own
/// leases, so their slots are free here. Ends with `shutdown`: a task still holding a leadership
/// receiver would keep the Lease from being released on SIGTERM.
fn forget_when_not_leading(
    targets: Arc<Targets>,
    mut leader: watch::Receiver<Holding>,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Holding nothing forgets every key.
                    let now = leader.borrow_and_update().clone();
                    for live in targets.all() {
                        live.keys.leases.forget_unless(|(ns, name)| now.registration(ns, name)).await;
                    }
                }
            }
        }
    });
}

/// Follows the registries until the source supervisor is gone: drops the connected ones that
/// are gone or changed, then asks for a pass over the objects the change concerns
/// ([`destination::changed`]).
async fn follow_registries(
    mut rx: watch::Receiver<Arc<Registries>>,
    targets: Arc<Targets>,
    all: mpsc::Sender<()>,
    some: mpsc::UnboundedSender<BTreeSet<String>>,
) {
    let mut before = rx.borrow().clone();
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().clone();
        targets.retain(&now);
        let sent = match destination::changed(&before, &now) {
            None => true,
            // One pending "all" is as good as many.
            Some(Changed::All) => {
                !matches!(all.try_send(()), Err(mpsc::error::TrySendError::Closed(_)))
            }
            Some(Changed::Sources(names)) => some.send(names).is_ok(),
        };
        if !sent {
            return; // the controller is gone
        }
        before = now;
    }
}

/// Yields each time the replica gains a bucket.
fn gained(rx: watch::Receiver<Holding>) -> impl futures::Stream<Item = ()> {
    let before = rx.borrow().clone();
    futures::stream::unfold((rx, before), |(mut rx, mut before)| async move {
        loop {
            rx.changed().await.ok()?;
            let now = rx.borrow_and_update().clone();
            let gained = now.gained(&before);
            before = now;
            if gained {
                return Some(((), (rx, before)));
            }
        }
    })
}

fn error_policy(obj: Arc<EtcdRegistration>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(registration = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), error = %err, "write-back failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(obj: Arc<EtcdRegistration>, ctx: Arc<Ctx>) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    if !ctx.leader.borrow().registration(&ns, &obj.name_any()) {
        // Its bucket's holder acts; gaining a bucket reconciles everything.
        return Ok(Action::await_change());
    }
    // Every line logged while reconciling this object names it.
    let span = tracing::info_span!("writeback_reconcile", namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any());
    async {
        let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
        if obj.metadata.deletion_timestamp.is_some() {
            if has_finalizer {
                cleanup(&obj, &ctx).await?;
                ctx.objects.remove_finalizer(&obj).await?;
            }
            return Ok(Action::await_change());
        }
        apply(obj, &ctx, has_finalizer).await
    }
    .instrument(span)
    .await
}

/// Where the addresses come from: the spec, or the followed Service and its slices.
async fn addresses(obj: &EtcdRegistration, ctx: &Ctx) -> Result<Source> {
    let ns = obj.namespace().unwrap_or_default();
    let r = match status::from_spec(&ns, &obj.spec, &ctx.policy) {
        Lookup::Decided(source) => return Ok(source),
        Lookup::Follow(r) => r,
    };
    let kube_err = |what: String| {
        move |source| Error::Kube {
            context: what,
            source,
        }
    };
    let svc = Api::<Service>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&r.name)
        .await
        .map_err(kube_err(format!("get Service {ns}/{}", r.name)))?;
    if let Some(verdict) = status::followed_service(&ns, r, svc.as_ref()) {
        return Ok(verdict);
    }
    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            triggers::SERVICE_NAME_LABEL,
            r.name
        )))
        .await
        .map_err(kube_err(format!("list EndpointSlices of {ns}/{}", r.name)))?;
    Ok(status::from_slices(&ns, r, &slices.items))
}

async fn apply(obj: Arc<EtcdRegistration>, ctx: &Ctx, has_finalizer: bool) -> Result<Action> {
    let me: Owner = (obj.namespace().unwrap_or_default(), obj.name_any());
    let prev = obj.status.clone().unwrap_or_default();
    let mut source = addresses(&obj, ctx).await?;
    let registries = ctx.registries.borrow().clone();
    let before = destination::holding(prev.source.as_deref());
    let (registry, done) = match destination::choose(
        obj.spec.source.as_deref(),
        &registries,
        &ctx.namespace,
    ) {
        Choice::Wait(why) => {
            tracing::debug!("{why}: nothing written yet");
            return Ok(Action::requeue(BACKSTOP));
        }
        Choice::Refuse(reason, message) => {
            take_back(ctx, &registries, before, &me, &prev.keys).await?;
            if !matches!(source, Source::Denied(..)) {
                source = Source::NotReady(reason, message);
            }
            (None, Outcome::default())
        }
        Choice::Write(d) => {
            // Each failure names the registry it is in: the one before, for a move.
            let written = async {
                let here = |e| (d.source.as_str(), e);
                let live = ctx.targets.get(d).await.map_err(here)?;
                // Keys in another registry before: taken back from there, none to delete here.
                let mut prev_keys = &prev.keys[..];
                if before != d.source {
                    (take_back(ctx, &registries, before, &me, prev_keys).await)
                        .map_err(|e| (before, e))?;
                    prev_keys = &[];
                }
                let want: Vec<DesiredKey> = match &source {
                    Source::Addresses(a) => {
                        desired::keys(&d.prefix, &live.keys.owner(&me), &obj.spec, a)
                    }
                    _ => Vec::new(),
                };
                live.keys.write(&me, &want, prev_keys).await.map_err(here)
            };
            match written.await {
                Ok(done) => (Some(d.source.as_str()), done),
                // Its etcd did not answer: the object says so, and the pass is retried.
                Err((at, e @ (Error::RegistryUnavailable { .. } | Error::Etcd { .. }))) => {
                    tracing::warn!(registry = %at, error = %e, "write-back: the registry could not be written; retried in {RETRY:?}");
                    let now = Time(k8s_openapi::jiff::Timestamp::now());
                    let why = e.to_string();
                    let next = status::unwritten(&prev, at, &why, obj.metadata.generation, now);
                    publish_status(ctx, obj, me, &prev, next, has_finalizer, BTreeSet::new());
                    return Ok(Action::requeue(RETRY));
                }
                Err((_, e)) => return Err(e),
            }
        }
    };
    if done.put > 0 || done.deleted > 0 {
        tracing::info!(
            put = done.put,
            deleted = done.deleted,
            conflicts = done.written.conflicts.len(),
            "etcd keys updated"
        );
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = status::status(
        &source,
        registry,
        &done.written,
        &prev,
        obj.metadata.generation,
        now,
    );
    let keys = done.written.registered.into_iter().collect();
    publish_status(ctx, obj, me, &prev, next, has_finalizer, keys);
    Ok(Action::requeue(BACKSTOP))
}

/// Queues what the object needs: the finalizer if it has none, and `next` if it says something
/// new. `keys`: those the pass left in etcd, taken back if the finalizer cannot be added.
fn publish_status(
    ctx: &Ctx,
    obj: Arc<EtcdRegistration>,
    me: Owner,
    prev: &EtcdRegistrationStatus,
    next: EtcdRegistrationStatus,
    has_finalizer: bool,
    keys: BTreeSet<String>,
) {
    let status = status::changes(prev, &next)
        .filter(|_| !ctx.objects.already_written(&me, prev, &next))
        .map(|notes| (next, notes));
    if has_finalizer && status.is_none() {
        return;
    }
    ctx.objects.push(
        me,
        Publication {
            object: obj,
            finalizer: !has_finalizer,
            status,
            keys,
        },
    );
}

/// Writes what passes queued for their objects, until `shutdown`; a failed write gets its object
/// a new pass a little later.
async fn publisher(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        let (me, p) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = ctx.objects.next() => next,
        };
        // A write cut short by shutdown is the next leader's to do; until it ends, this task
        // holds the leadership receiver (in `ctx`) that must go for the Lease to be released.
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = publish(&ctx, &me, &p) => r,
        };
        if result.is_err() {
            ctx.objects.failed(&me);
        }
        ctx.objects.done(&me);
        if let Err(e) = result {
            tracing::warn!(registration = %format!("{}/{}", me.0, me.1), error = %e, "write-back: could not write the object; a new pass in {RETRY:?}");
            let retry = ctx.retry.clone();
            tokio::spawn(async move {
                tokio::time::sleep(RETRY).await;
                let _ = retry.send(me);
            });
        }
    }
}

async fn publish(ctx: &Ctx, me: &Owner, p: &Publication<Arc<EtcdRegistration>>) -> Result<()> {
    if !ctx.leader.borrow().registration(&me.0, &me.1) {
        return Ok(()); // its bucket went to another replica, whose pass writes the object
    }
    let obj = &p.object;
    if p.finalizer {
        // Its keys are in etcd: take them back unless the object keeps the finalizer.
        let added = ctx.objects.add_finalizer(obj).await;
        if !matches!(added, Ok(Finalizer::Added)) {
            // From whichever registry holds them (a delete checks the owner).
            for live in ctx.targets.all() {
                live.keys.remove(me, &p.keys).await?;
            }
            return added.map(|_| ()); // gone: nothing more to do
        }
    }
    if let Some((status, notes)) = &p.status {
        ctx.objects.publish_status(obj, status, notes).await?;
    }
    Ok(())
}

/// `me`'s keys in the registry `name`, where they were before: deleted (each checking the
/// owner). A registry that is gone or changed cannot be written: the keys on its leases leave
/// etcd within the lease TTL, its keepalives having stopped.
async fn take_back(
    ctx: &Ctx,
    registries: &Registries,
    name: &str,
    me: &Owner,
    keys: &[String],
) -> Result<()> {
    let d = match destination::held(registries, name) {
        Held::In(d) => d,
        Held::Lapsing => return Ok(()),
        Held::Unknown if keys.is_empty() => return Ok(()),
        Held::Unknown => return Err(not_listed(me, name)),
    };
    let live = ctx.targets.get(d).await?;
    live.keys.remove(me, &keys.iter().cloned().collect()).await
}

/// Keys in a registry not known yet: kept where they are (with the finalizer) until it is.
fn not_listed(me: &Owner, name: &str) -> Error {
    Error::WriteBack {
        key: format!("{}/{}", me.0, me.1),
        reason: format!(
            "its keys are in registry `{name}`, and the EtcdSource objects are not listed yet; retried"
        ),
    }
}

/// The object is being deleted: remove exactly the keys it owns, from the registry its status
/// names and the one its spec names (they differ if it moved and the move was not written yet).
async fn cleanup(obj: &EtcdRegistration, ctx: &Ctx) -> Result<()> {
    let me: Owner = (obj.namespace().unwrap_or_default(), obj.name_any());
    ctx.objects.forget(&me);
    let registries = ctx.registries.borrow().clone();
    let status = obj.status.clone().unwrap_or_default();
    let names = BTreeSet::from([
        destination::holding(status.source.as_deref()),
        destination::holding(obj.spec.source.as_deref()),
    ]);
    let mut keys: BTreeSet<String> = status.keys.iter().cloned().collect();
    for name in names {
        let d = match destination::held(&registries, name) {
            Held::In(d) => d,
            Held::Lapsing => continue,
            Held::Unknown => return Err(not_listed(&me, name)),
        };
        let live = ctx.targets.get(d).await?;
        if let Some(a) = &obj.spec.addresses {
            let addrs: Vec<String> = a.iter().map(|a| a.0.clone()).collect();
            keys.extend(
                desired::keys(&d.prefix, &live.keys.owner(&me), &obj.spec, &addrs)
                    .into_iter()
                    .map(|d| d.key),
            );
        }
        live.keys.remove(&me, &keys).await?;
    }
    ctx.objects
        .event(
            obj,
            EventType::Normal,
            "Unregistered",
            &format!("removed {} keys from etcd", keys.len()),
        )
        .await;
    Ok(())
}
