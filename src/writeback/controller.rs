//! The EtcdRegistration controller. Every replica runs it; only the leader acts. A new leader
//! gets a pass over every object, which re-attaches each key to its own leases before the old
//! leader's can expire (no DELETE for watchers during a failover). A lost lease gets a pass over
//! the objects whose keys were on it.
//!
//! A pass writes etcd first and the object (finalizer, status, Events) after, waiting for a
//! permit to write to the apiserver: 10,000 objects reach etcd in seconds while the apiserver
//! takes their writes N at a time. A key is briefly in etcd before its object has the finalizer;
//! if adding the finalizer fails, or the object is already gone, the pass deletes the object's
//! keys again, so no key outlives its object.

use crate::config::{EtcdArgs, WritebackArgs};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::writeback::crd::EtcdRegistration;
use crate::writeback::desired::{self, DesiredKey};
use crate::writeback::freed;
use crate::writeback::lease::{Leases, Owner};
use crate::writeback::object::{FINALIZER, Finalizer, Objects};
use crate::writeback::policy::Policy;
use crate::writeback::status::{self, Lookup, Source, Written};
use crate::writeback::store::{self, Put};
use crate::writeback::triggers;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Changes that matter are watched (the object, a followed Service and its slices, keys leaving
/// etcd, the leases); a pass this long after the last one is a backstop for anything missed.
const BACKSTOP: Duration = Duration::from_secs(300);

struct Ctx {
    client: Client,
    objects: Objects,
    etcd: etcd_client::Client,
    leases: Arc<Leases>,
    leader: watch::Receiver<bool>,
    prefix: String,
    instance: String,
    policy: Policy,
    metrics: Arc<Metrics>,
}

/// Runs the controller until `shutdown`.
pub async fn run(
    client: Client,
    etcd_args: EtcdArgs,
    args: WritebackArgs,
    instance: String,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let policy = Policy::parse(&args.policy)?;
    let etcd = connect_until_up(&etcd_args, &shutdown).await?;
    let (leases, lost) = Leases::new(
        etcd.clone(),
        args.lease_ttl,
        args.keys_per_lease as usize,
        metrics.clone(),
        shutdown.clone(),
    );
    forget_when_not_leading(leases.clone(), leader.clone(), shutdown.clone());
    let ctx = Arc::new(Ctx {
        objects: Objects::new(client.clone(), args.concurrency.into()),
        client: client.clone(),
        etcd,
        leases,
        leader: leader.clone(),
        prefix: args.prefix.clone(),
        instance,
        policy,
        metrics,
    });
    tracing::info!(policy = %ctx.policy.describe(), prefix = %ctx.prefix, "write-back controller starting");

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
    // Unbounded: a pass waits for etcd, then for a permit to write to the apiserver (see
    // `object`), so that etcd's part of every pass goes ahead.
    let controller = Controller::new(regs, config);
    // Keys that leave etcd: the registrations that want them get a pass at once (a foreign key
    // that blocked one is gone); a broken watch, once back, means everything gets one.
    let (freed_keys, missed) = freed::watch(ctx.etcd.clone(), ctx.prefix.clone(), shutdown.clone());
    // Everything again when this replica becomes leader, or deletions in etcd may have been
    // missed.
    let again = futures::stream::select(became_true(leader), missed);
    let (by_slice, by_service, by_key) =
        (controller.store(), controller.store(), controller.store());
    let prefix = ctx.prefix.clone();
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
        .reconcile_on(freed_keys.flat_map(move |key| {
            futures::stream::iter(triggers::wanting_key(&by_key.state(), &prefix, &key))
        }))
        // The objects whose keys were on a lease that is gone.
        .reconcile_on(lost.map(|(ns, name)| ObjectRef::new(&name).within(&ns)))
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
    args: &EtcdArgs,
    shutdown: &CancellationToken,
) -> Result<etcd_client::Client> {
    let mut backoff =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match crate::etcd::connect(args).await {
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

/// A replica that stops leading stops writing: its leases keep no keys (the new leader moves
/// them to its own), so their slots are free when it leads again. Ends with `shutdown`: a task
/// still holding a leadership receiver would keep the Lease from being released on SIGTERM.
fn forget_when_not_leading(
    leases: Arc<Leases>,
    mut leader: watch::Receiver<bool>,
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
                    if !*leader.borrow_and_update() {
                        leases.forget_all().await;
                    }
                }
            }
        }
    });
}

fn became_true(rx: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(rx, |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    })
}

fn error_policy(obj: Arc<EtcdRegistration>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(registration = %format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()), error = %err, "write-back failed; retrying in 5s");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(obj: Arc<EtcdRegistration>, ctx: Arc<Ctx>) -> Result<Action> {
    if !*ctx.leader.borrow() {
        // The leader acts; becoming leader reconciles everything.
        return Ok(Action::await_change());
    }
    // Every line logged while reconciling this object names it.
    let span = tracing::info_span!("writeback_reconcile", namespace = %obj.namespace().unwrap_or_default(), name = %obj.name_any());
    async {
        let has_finalizer = obj.finalizers().iter().any(|f| f == FINALIZER);
        if obj.metadata.deletion_timestamp.is_some() {
            if has_finalizer {
                cleanup(&obj, &ctx).await?;
                let _permit = ctx.objects.permit().await;
                ctx.objects.remove_finalizer(&obj).await?;
            }
            return Ok(Action::await_change());
        }
        apply(&obj, &ctx, has_finalizer).await
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
    // Reads too, a few at a time: every pass of a new leader starts at once.
    let _permit = ctx.objects.permit().await;
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

async fn apply(obj: &EtcdRegistration, ctx: &Ctx, has_finalizer: bool) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    let owner = desired::owner(&ctx.instance, &ns, &obj.name_any());
    let me: Owner = (ns.clone(), obj.name_any());
    let prev = obj.status.clone().unwrap_or_default();
    let source = addresses(obj, ctx).await?;
    let want: Vec<DesiredKey> = match &source {
        Source::Addresses(a) => desired::keys(&ctx.prefix, &owner, &obj.spec, a),
        _ => Vec::new(),
    };
    let mut etcd = ctx.etcd.clone();
    let mut written = Written {
        wanted: want.len(),
        ..Written::default()
    };
    let keys: Vec<String> = want.iter().map(|d| d.key.clone()).collect();
    let placed = ctx.leases.place(&me, &keys).await?;
    let items: Vec<store::Item> = want
        .iter()
        .zip(&placed)
        .map(|(d, (_, lease))| store::Item {
            key: &d.key,
            value: &d.value,
            lease: *lease,
        })
        .collect();
    let results = store::put_all(&mut etcd, &items, &owner, &ctx.metrics).await?;
    let mut leases = BTreeSet::new();
    let mut put = 0;
    for (i, result) in items.iter().zip(results) {
        match result {
            Put::LeaseGone => {
                // Dropping the lease names this object (and the others on it) for a pass,
                // which places its keys on a live lease.
                ctx.leases.lost(i.lease, "etcd refused a Put with it").await;
                return Err(Error::WriteBack {
                    key: i.key.to_string(),
                    reason: format!(
                        "etcd no longer has lease {:x}; put again under another",
                        i.lease
                    ),
                });
            }
            Put::Conflict(who) => {
                ctx.leases.release(&me, i.key).await;
                written.conflicts.push(format!("{} (held by {who})", i.key))
            }
            Put::Written => {
                ctx.metrics.etcd_write("put");
                put += 1;
                leases.insert(i.lease);
                written.registered.push(i.key.to_string());
            }
            Put::Unchanged => {
                leases.insert(i.lease);
                written.registered.push(i.key.to_string())
            }
        }
    }
    written.leases = leases.into_iter().collect();
    let wanted: BTreeSet<&str> = want.iter().map(|d| d.key.as_str()).collect();
    let mut deleted = 0;
    for stale in prev.keys.iter().filter(|k| !wanted.contains(k.as_str())) {
        if store::delete(&mut etcd, stale, &owner).await? {
            ctx.metrics.etcd_write("delete");
            deleted += 1;
        }
    }
    if put > 0 || deleted > 0 {
        tracing::info!(
            put,
            deleted,
            conflicts = written.conflicts.len(),
            "etcd keys updated"
        );
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let next = status::status(&source, &written, &prev, obj.metadata.generation, now);
    let notes = status::changes(&prev, &next);
    if has_finalizer && notes.is_none() {
        return Ok(Action::requeue(BACKSTOP));
    }
    let _permit = ctx.objects.permit().await;
    if !has_finalizer {
        // The keys are in etcd before the finalizer is on the object: take them back unless it
        // is, so that none outlives a deleted object.
        let added = ctx.objects.add_finalizer(obj).await;
        if !matches!(added, Ok(Finalizer::Added)) {
            remove_keys(obj, ctx, &written.registered).await?;
            return match added {
                Ok(_) => Ok(Action::await_change()), // gone
                Err(e) => Err(e),
            };
        }
    }
    if let Some(notes) = notes {
        ctx.objects.publish_status(obj, &next, &notes).await?;
    }
    Ok(Action::requeue(BACKSTOP))
}

/// The object is being deleted: remove exactly the keys it owns.
async fn cleanup(obj: &EtcdRegistration, ctx: &Ctx) -> Result<Action> {
    let ns = obj.namespace().unwrap_or_default();
    let owner = desired::owner(&ctx.instance, &ns, &obj.name_any());
    let mut keys: BTreeSet<String> = obj.status.iter().flat_map(|s| s.keys.clone()).collect();
    if let Some(a) = &obj.spec.addresses {
        let addrs: Vec<String> = a.iter().map(|a| a.0.clone()).collect();
        keys.extend(
            desired::keys(&ctx.prefix, &owner, &obj.spec, &addrs)
                .into_iter()
                .map(|d| d.key),
        );
    }
    let keys: Vec<String> = keys.into_iter().collect();
    remove_keys(obj, ctx, &keys).await?;
    let _permit = ctx.objects.permit().await;
    ctx.objects
        .event(
            obj,
            EventType::Normal,
            "Unregistered",
            &format!("removed {} keys from etcd", keys.len()),
        )
        .await;
    Ok(Action::await_change())
}

/// Deletes the object's `keys` that it owns, and frees their lease slots.
async fn remove_keys(obj: &EtcdRegistration, ctx: &Ctx, keys: &[String]) -> Result<()> {
    let ns = obj.namespace().unwrap_or_default();
    let owner = desired::owner(&ctx.instance, &ns, &obj.name_any());
    let mut etcd = ctx.etcd.clone();
    for k in keys {
        if store::delete(&mut etcd, k, &owner).await? {
            ctx.metrics.etcd_write("delete");
        }
    }
    ctx.leases.forget(&(ns, obj.name_any())).await;
    Ok(())
}
