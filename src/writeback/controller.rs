//! The EtcdRegistration controller. Every replica runs it; only the leader acts. A new leader,
//! and a new etcd lease, trigger a pass over every object, which re-attaches each key to the
//! current lease before the old one can expire (no DELETE for watchers during a failover).

use crate::config::{EtcdArgs, WritebackArgs};
use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::writeback::crd::{EtcdRegistration, EtcdRegistrationStatus};
use crate::writeback::desired::{self, DesiredKey};
use crate::writeback::freed;
use crate::writeback::policy::Policy;
use crate::writeback::status::{self, Lookup, Note, Source, Written};
use crate::writeback::store::{self, Put};
use crate::writeback::triggers;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub const FINALIZER: &str = "etcd-bridge.io/registration";

struct Ctx {
    client: Client,
    etcd: etcd_client::Client,
    lease: watch::Receiver<Option<i64>>,
    leader: watch::Receiver<bool>,
    prefix: String,
    instance: String,
    policy: Policy,
    recorder: Recorder,
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
    let lease = crate::writeback::lease::spawn(etcd_args, args.lease_ttl, shutdown.clone());
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        etcd,
        lease: lease.clone(),
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
    let controller = Controller::new(regs, config);
    // Keys that leave etcd: the registrations that want them get a pass at once (a foreign key
    // that blocked one is gone); a broken watch, once back, means everything gets one.
    let (freed_keys, missed) = freed::watch(ctx.etcd.clone(), ctx.prefix.clone(), shutdown.clone());
    // Everything again when this replica becomes leader, its etcd lease changes, or deletions
    // in etcd may have been missed.
    let again = futures::stream::select(
        futures::stream::select(became_true(leader), changed(lease)),
        missed,
    );
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

/// A `()` each time the watched value changes.
fn changed<T: Clone + Send + Sync + 'static>(
    rx: watch::Receiver<T>,
) -> impl futures::Stream<Item = ()> {
    futures::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok().map(|_| ((), rx))
    })
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
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    // Every line logged while reconciling this object names it.
    let span = tracing::info_span!("writeback_reconcile", namespace = %ns, name = %name);
    let api: Api<EtcdRegistration> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(&o, &ctx).await,
            finalizer::Event::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::WriteBack {
        key: format!("{ns}/{name}"),
        reason: e.to_string(),
    })
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

async fn apply(obj: &EtcdRegistration, ctx: &Ctx) -> Result<Action> {
    let Some(lease) = *ctx.lease.borrow() else {
        return Ok(Action::requeue(Duration::from_secs(1)));
    };
    let ns = obj.namespace().unwrap_or_default();
    let owner = desired::owner(&ctx.instance, &ns, &obj.name_any());
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
    let mut put = 0;
    for d in &want {
        match store::put(&mut etcd, &d.key, &d.value, lease, &owner).await? {
            Put::Conflict(who) => written.conflicts.push(format!("{} (held by {who})", d.key)),
            Put::Written => {
                ctx.metrics.etcd_write("put");
                put += 1;
                written.registered.push(d.key.clone());
            }
            Put::Unchanged => written.registered.push(d.key.clone()),
        }
    }
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
    let next = status::status(
        &source,
        &written,
        &prev,
        obj.metadata.generation,
        lease,
        now,
    );
    if let Some(notes) = status::changes(&prev, &next) {
        publish_status(obj, ctx, &next, &notes).await?;
    }
    // Changes that matter are watched (the object, a followed Service and its slices, keys
    // leaving etcd, the lease); this pass is a backstop for anything missed.
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Records `notes` as Events and writes `status`.
async fn publish_status(
    obj: &EtcdRegistration,
    ctx: &Ctx,
    status: &EtcdRegistrationStatus,
    notes: &[Note],
) -> Result<()> {
    for n in notes {
        let type_ = if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.event(obj, type_, &n.reason, &n.message).await;
    }
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<EtcdRegistration> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = serde_json::json!({
        "apiVersion": "etcd-bridge.io/v1alpha1",
        "kind": "EtcdRegistration",
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        context: format!(
            "update the status of EtcdRegistration {ns}/{}",
            obj.name_any()
        ),
        source,
    })?;
    Ok(())
}

impl Ctx {
    async fn event(&self, obj: &EtcdRegistration, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Register".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
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
    let mut etcd = ctx.etcd.clone();
    for k in &keys {
        if store::delete(&mut etcd, k, &owner).await? {
            ctx.metrics.etcd_write("delete");
        }
    }
    ctx.event(
        obj,
        EventType::Normal,
        "Unregistered",
        &format!("removed {} keys from etcd", keys.len()),
    )
    .await;
    Ok(Action::await_change())
}
