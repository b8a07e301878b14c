//! The EtcdRegistration controller. Every replica runs it; only the leader acts. A new leader,
//! and a new etcd lease, trigger a pass over every object, which re-attaches each key to the
//! current lease before the old one can expire (no DELETE for watchers during a failover).

use crate::config::{EtcdArgs, WritebackArgs};
use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use crate::writeback::crd::{EtcdRegistration, EtcdRegistrationStatus};
use crate::writeback::desired::{self, DesiredKey};
use crate::writeback::policy::Policy;
use crate::writeback::store::{self, Put};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

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

    let (regs, slices): (Api<EtcdRegistration>, Api<PartialObjectMeta<EndpointSlice>>) =
        match &args.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
    let mut config = watcher::Config::default();
    if let Some(selector) = &args.selector {
        config = config.labels(selector);
    }
    let controller = Controller::new(regs, config);
    let store = controller.store();
    // serviceRef: a change to any EndpointSlice re-checks the registrations that follow its
    // Service. Metadata only: the endpoints are read when reconciling.
    // Everything again when this replica becomes leader or its etcd lease changes.
    let again = futures::stream::select(became_true(leader), changed(lease));
    controller
        .watches(
            slices,
            watcher::Config::default(),
            move |s| following(&store, &s),
        )
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

/// The registrations whose serviceRef names the Service of this EndpointSlice.
fn following(
    store: &Store<EtcdRegistration>,
    slice: &PartialObjectMeta<EndpointSlice>,
) -> Vec<ObjectRef<EtcdRegistration>> {
    let Some(service) = slice.labels().get("kubernetes.io/service-name") else {
        return Vec::new();
    };
    let ns = slice.namespace();
    store
        .state()
        .iter()
        .filter(|r| r.namespace() == ns)
        .filter(|r| {
            r.spec
                .service_ref
                .as_ref()
                .is_some_and(|s| &s.name == service)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
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
    let api: Api<EtcdRegistration> = Api::namespaced(ctx.client.clone(), &ns);
    let name = obj.name_any();
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            finalizer::Event::Apply(o) => apply(&o, &ctx).await,
            finalizer::Event::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::WriteBack {
        key: format!("{ns}/{name}"),
        reason: e.to_string(),
    })
}

/// Where the addresses come from, or why there are none.
enum Source {
    Addresses(Vec<String>),
    Denied(&'static str, String),
    NotReady(&'static str, String),
}

async fn addresses(obj: &EtcdRegistration, ctx: &Ctx) -> Result<Source> {
    let ns = obj.namespace().unwrap_or_default();
    if !ctx.policy.allows(&ns, &obj.spec.service) {
        return Ok(Source::Denied(
            "PolicyDenied",
            format!(
                "namespace {ns} may not publish service {:?}: the write-back policy is {}",
                obj.spec.service,
                ctx.policy.describe()
            ),
        ));
    }
    if let Some(a) = &obj.spec.addresses {
        return Ok(Source::Addresses(a.iter().map(|a| a.0.clone()).collect()));
    }
    let Some(r) = &obj.spec.service_ref else {
        return Ok(Source::NotReady(
            "NoSource",
            "give addresses or serviceRef".into(),
        ));
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
    let Some(svc) = svc else {
        return Ok(Source::NotReady(
            "ServiceNotFound",
            format!("Service {ns}/{} does not exist (yet)", r.name),
        ));
    };
    if svc
        .labels()
        .get(crate::labels::MANAGED_BY)
        .map(String::as_str)
        == Some(crate::labels::MANAGED_BY_VALUE)
    {
        return Ok(Source::Denied(
            "FeedbackLoop",
            format!(
                "Service {ns}/{} is projected from etcd by etcd-bridge; writing it back would loop",
                r.name
            ),
        ));
    }
    let slices = Api::<EndpointSlice>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={}", r.name)))
        .await
        .map_err(kube_err(format!("list EndpointSlices of {ns}/{}", r.name)))?;
    let addrs = desired::ready_addresses(&slices.items, &r.port);
    if addrs.is_empty() {
        return Ok(Source::NotReady(
            "NoReadyEndpoints",
            format!(
                "Service {ns}/{} has no ready endpoint on port {:?}",
                r.name, r.port
            ),
        ));
    }
    Ok(Source::Addresses(addrs))
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
    let mut registered = Vec::new();
    let mut conflicts = Vec::new();
    for d in &want {
        match store::put(&mut etcd, &d.key, &d.value, lease, &owner).await? {
            Put::Conflict(who) => conflicts.push(format!("{} (held by {who})", d.key)),
            Put::Written => {
                ctx.metrics.write("put", "etcd");
                registered.push(d.key.clone());
            }
            Put::Unchanged => registered.push(d.key.clone()),
        }
    }
    let wanted: BTreeSet<&str> = want.iter().map(|d| d.key.as_str()).collect();
    for stale in prev.keys.iter().filter(|k| !wanted.contains(k.as_str())) {
        if store::delete(&mut etcd, stale, &owner).await? {
            ctx.metrics.write("delete", "etcd");
        }
    }

    let generation = obj.metadata.generation;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let c = |t: &str, s: bool, r: &str, m: String| {
        desired::condition(&prev.conditions, t, s, r, m, generation, now.clone())
    };
    let (denied, ready, conflict) = match &source {
        Source::Denied(reason, msg) => (
            c("Denied", true, reason, msg.clone()),
            c("Ready", false, reason, "denied: nothing is written".into()),
            c("Conflict", false, "NoConflict", String::new()),
        ),
        Source::NotReady(reason, msg) => (
            c("Denied", false, "Allowed", String::new()),
            c("Ready", false, reason, msg.clone()),
            c("Conflict", false, "NoConflict", String::new()),
        ),
        Source::Addresses(_) if !conflicts.is_empty() => (
            c("Denied", false, "Allowed", String::new()),
            c(
                "Ready",
                false,
                "Conflict",
                format!(
                    "{} of {} keys are held by another registrant",
                    conflicts.len(),
                    want.len()
                ),
            ),
            c(
                "Conflict",
                true,
                "ForeignKey",
                format!("not overwritten: {}", conflicts.join(", ")),
            ),
        ),
        Source::Addresses(_) => (
            c("Denied", false, "Allowed", String::new()),
            c(
                "Ready",
                true,
                "Registered",
                format!("{} keys registered under lease {lease:x}", registered.len()),
            ),
            c("Conflict", false, "NoConflict", String::new()),
        ),
    };
    let status = EtcdRegistrationStatus {
        observed_generation: generation,
        conditions: vec![ready, conflict, denied],
        endpoints: registered.len() as i64,
        keys: registered,
        lease_id: Some(format!("{lease:x}")),
    };
    publish_status(obj, ctx, &prev, status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// Writes the status if it says something new, with an Event for each condition that changed.
async fn publish_status(
    obj: &EtcdRegistration,
    ctx: &Ctx,
    prev: &EtcdRegistrationStatus,
    status: EtcdRegistrationStatus,
) -> Result<()> {
    let unchanged = desired::same_conditions(&prev.conditions, &status.conditions)
        && prev.keys == status.keys
        && prev.lease_id == status.lease_id
        && prev.observed_generation == status.observed_generation;
    if unchanged {
        return Ok(());
    }
    for c in &status.conditions {
        let before = prev.conditions.iter().find(|p| p.type_ == c.type_);
        if before.map(|b| (&b.status, &b.reason)) != Some((&c.status, &c.reason)) && event_worthy(c)
        {
            let warning = (c.type_ == "Ready") != (c.status == "True");
            ctx.event(
                obj,
                if warning {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                &c.reason,
                &c.message,
            )
            .await;
        }
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

/// `False` conditions that only say "nothing wrong" are not worth an Event.
fn event_worthy(c: &Condition) -> bool {
    !(c.status == "False" && matches!(c.reason.as_str(), "Allowed" | "NoConflict"))
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
            ctx.metrics.write("delete", "etcd");
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
