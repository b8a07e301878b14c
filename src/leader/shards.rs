//! Sharded leadership, carried out: one coordination Lease per bucket (`{lease-name}-{bucket}`),
//! and one membership Lease per replica (`{lease-name}-member-{hash of identity}`) so that every
//! replica knows how many share the buckets. The decisions are in `buckets` (who should hold what,
//! and what to do about a Lease) and `observe` (when a Lease counts as expired); this task only
//! reads and writes Leases, and publishes the buckets this replica may write.
//!
//! Safety, in order of the steps of a round:
//! - a held bucket stays published only until `observe::valid_until` its last renewal: a replica
//!   cut off from the apiserver stops writing before any other may take the Lease;
//! - a Lease is taken only when free or expired as this replica observed it, by a write with the
//!   version read (create, or replace with resourceVersion): of two takers one fails;
//! - a bucket this replica should give up is unpublished first and released `DRAIN` later, so the
//!   writers have finished with its objects before another replica can take it.

use crate::error::{Error, Result};
use crate::labels;
use crate::leader::Holding;
use crate::leader::buckets::{self, Act, Seen};
use crate::leader::observe::{Observer, Record, valid_until};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// The label that tells bucket Leases from membership Leases.
pub const ROLE: &str = "etcd-bridge.io/lease-role";
/// How long a bucket given up stays unpublished before its Lease is released.
pub const DRAIN: Duration = Duration::from_secs(1);
/// How long a replica that joins waits, once it is a member, before it takes buckets.
pub const JOIN: Duration = Duration::from_secs(1);

/// What a replica joins.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub namespace: String,
    /// The Lease name the buckets' names start with (`--lease-name`).
    pub name: String,
    /// `--instance`: the Leases are listed by this label.
    pub instance: String,
    pub identity: String,
    pub buckets: u32,
    pub duration: Duration,
}

pub fn bucket_lease(base: &str, bucket: u32) -> String {
    format!("{base}-{bucket}")
}

pub fn member_lease(base: &str, identity: &str) -> String {
    format!("{base}-member-{:08x}", buckets::fnv1a(identity.as_bytes()))
}

/// The buckets this replica may write, as a watch channel; [`Shards::release`] leaves.
pub struct Shards {
    pub held: watch::Receiver<Holding>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Shards {
    pub fn join(client: Client, spec: ShardSpec) -> Shards {
        let (tx, held) = watch::channel(Holding::none(spec.buckets));
        let (stop, stopped) = oneshot::channel();
        let keeper = Keeper {
            api: Api::namespaced(client, &spec.namespace),
            spec,
            observer: Observer::default(),
            held: BTreeMap::new(),
            draining: BTreeMap::new(),
            tx,
        };
        let task = tokio::spawn(keeper.run(stopped));
        Shards {
            held,
            stop: Some(stop),
            task,
        }
    }

    /// Stops at once without releasing anything, as a crashed process would: the others take its
    /// buckets when its Leases expire. For tests of failover.
    #[doc(hidden)]
    pub fn abandon(self) {
        self.task.abort();
    }

    /// Unpublishes every bucket, releases their Leases and removes this replica's membership, so
    /// the others take over at once. The caller has stopped its writers first.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "releasing the bucket Leases timed out; the others take over when they expire"
            );
        }
    }
}

struct Keeper {
    api: Api<Lease>,
    spec: ShardSpec,
    observer: Observer,
    /// Held buckets, each published until the instant its last renewal allows.
    held: BTreeMap<u32, Instant>,
    /// Buckets given up, unpublished since the instant noted; released after DRAIN.
    draining: BTreeMap<u32, Instant>,
    tx: watch::Sender<Holding>,
}

impl Keeper {
    async fn run(mut self, mut stopped: oneshot::Receiver<()>) {
        let tick =
            (self.spec.duration / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
        // Replicas of a rollout start within moments of each other: join, then wait a little to
        // see them, so that the first does not take every bucket only to hand most of them over.
        if let Err(e) = self.renew_membership().await {
            tracing::warn!(error = %e, "renewing this replica's membership Lease");
        }
        tokio::select! {
            _ = &mut stopped => return self.leave().await,
            _ = tokio::time::sleep(JOIN.min(tick)) => {}
        }
        loop {
            self.round().await;
            tokio::select! {
                _ = &mut stopped => break,
                _ = tokio::time::sleep(tick) => {}
            }
        }
        self.leave().await;
    }

    fn margin(&self) -> Duration {
        self.spec.duration / 3
    }

    fn publish(&mut self) {
        let now = Instant::now();
        self.held.retain(|bucket, until| {
            let valid = *until > now;
            if !valid {
                tracing::warn!(
                    bucket,
                    "bucket Lease not renewed in time: its objects are no longer written here"
                );
            }
            valid
        });
        let set = Holding::of(self.spec.buckets, self.held.keys().copied());
        self.tx.send_if_modified(|old| {
            let changed = *old != set;
            if changed {
                tracing::info!(buckets = ?set.held(), "buckets held");
                *old = set.clone();
            }
            changed
        });
    }

    async fn round(&mut self) {
        self.publish();
        if let Err(e) = self.renew_membership().await {
            tracing::warn!(error = %e, "renewing this replica's membership Lease");
        }
        let selector = format!("{}={},{ROLE}", labels::INSTANCE, self.spec.instance);
        let leases = match self
            .api
            .list(&ListParams::default().labels(&selector))
            .await
        {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "listing the bucket Leases; the buckets held stay held until their renewals run out");
                return self.publish();
            }
        };
        let now = Instant::now();
        let by_name: HashMap<String, Lease> = leases
            .into_iter()
            .filter_map(|l| Some((l.metadata.name.clone()?, l)))
            .collect();
        for (name, lease) in &by_name {
            self.observer
                .observe(name, record(lease, self.spec.duration), now);
        }
        let members: Vec<String> = by_name
            .iter()
            .filter(|(_, l)| role(l) == Some("member"))
            .filter_map(|(name, _)| self.observer.live_holder(name, now).map(String::from))
            .chain([self.spec.identity.clone()])
            .collect();
        let mine = buckets::share(&self.spec.identity, &members, self.spec.buckets);

        let drained: Vec<u32> = self
            .draining
            .iter()
            .filter(|(_, since)| since.elapsed() >= DRAIN)
            .map(|(b, _)| *b)
            .collect();
        for bucket in drained {
            self.draining.remove(&bucket);
            let name = bucket_lease(&self.spec.name, bucket);
            if let Some(lease) = by_name.get(&name) {
                self.write_release(lease).await;
            }
        }

        for bucket in 0..self.spec.buckets {
            if self.draining.contains_key(&bucket) {
                continue;
            }
            let name = bucket_lease(&self.spec.name, bucket);
            let lease = by_name.get(&name);
            let holder = self.observer.holder(&name).map(String::from);
            let seen = match holder {
                None => Seen::Free,
                Some(h) => Seen::Held {
                    expired: self.observer.live_holder(&name, now).is_none(),
                    holder: h,
                },
            };
            let ours = matches!(&seen, Seen::Held { holder, .. } if *holder == self.spec.identity);
            match buckets::act(&self.spec.identity, bucket, &mine, &seen) {
                Act::Acquire => self.take(bucket, lease).await,
                Act::Release => {
                    self.held.remove(&bucket);
                    self.draining.insert(bucket, Instant::now());
                }
                Act::Nothing if ours => self.take(bucket, lease).await,
                Act::Nothing => {
                    if self.held.remove(&bucket).is_some() {
                        tracing::warn!(bucket, holder = ?self.observer.holder(&name), "bucket Lease taken by another replica");
                    }
                }
            }
        }
        self.publish();
    }

    /// Takes or renews a bucket's Lease with the version read: a concurrent writer makes it fail.
    async fn take(&mut self, bucket: u32, current: Option<&Lease>) {
        let name = bucket_lease(&self.spec.name, bucket);
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let renewing = current
            .and_then(|l| l.spec.as_ref()?.holder_identity.as_deref())
            .is_some_and(|h| h == self.spec.identity);
        let mut lease = current.cloned().unwrap_or_else(|| Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.spec.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: None,
        });
        lease.metadata.labels = Some(self.labels("bucket"));
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if !renewing {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.spec.identity.clone());
        spec.lease_duration_seconds = Some(self.spec.duration.as_secs().max(1) as i32);
        spec.renew_time = Some(now);
        let sent = Instant::now();
        let pp = PostParams {
            field_manager: Some(labels::FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        let written = match current {
            None => self.api.create(&pp, &lease).await,
            Some(_) => self.api.replace(&name, &pp, &lease).await,
        };
        match written {
            Ok(_) => {
                if !renewing {
                    tracing::info!(bucket, "bucket Lease taken");
                }
                self.held
                    .insert(bucket, valid_until(sent, self.spec.duration, self.margin()));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // Another replica wrote it between our read and our write: it is theirs.
                self.held.remove(&bucket);
                tracing::debug!(bucket, "bucket Lease changed under us");
            }
            Err(e) => tracing::warn!(bucket, error = %e, "writing the bucket Lease"),
        }
    }

    async fn write_release(&mut self, lease: &Lease) {
        let Some(name) = lease.metadata.name.clone() else {
            return;
        };
        let mut lease = lease.clone();
        if let Some(spec) = lease.spec.as_mut() {
            if spec.holder_identity.as_deref() != Some(self.spec.identity.as_str()) {
                return;
            }
            spec.holder_identity = None;
        }
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(lease = %name, "bucket Lease released"),
            Err(e) => {
                tracing::debug!(lease = %name, error = %e, "releasing a bucket Lease (it expires instead)")
            }
        }
    }

    async fn renew_membership(&self) -> Result<()> {
        let name = member_lease(&self.spec.name, &self.spec.identity);
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(self.labels("member")),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.spec.identity.clone()),
                lease_duration_seconds: Some(self.spec.duration.as_secs().max(1) as i32),
                renew_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
                ..LeaseSpec::default()
            }),
        };
        self.api
            .patch(
                &name,
                &PatchParams::apply(labels::FIELD_MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
            .map_err(|source| Error::Kube {
                context: format!(
                    "membership Lease {}/{name} (needs get, list, create, update and patch on coordination.k8s.io leases)",
                    self.spec.namespace
                ),
                source,
            })
    }

    /// Unpublishes everything, releases the held Leases and deletes the membership.
    async fn leave(mut self) {
        let buckets: Vec<u32> = self
            .held
            .keys()
            .chain(self.draining.keys())
            .copied()
            .collect();
        self.held.clear();
        self.draining.clear();
        self.publish();
        for bucket in buckets {
            let name = bucket_lease(&self.spec.name, bucket);
            if let Ok(lease) = self.api.get(&name).await {
                self.write_release(&lease).await;
            }
        }
        let member = member_lease(&self.spec.name, &self.spec.identity);
        if let Err(e) = self.api.delete(&member, &Default::default()).await {
            tracing::debug!(error = %e, "deleting the membership Lease (it expires instead)");
        }
    }

    fn labels(&self, role: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                labels::MANAGED_BY.to_string(),
                labels::MANAGED_BY_VALUE.to_string(),
            ),
            (labels::INSTANCE.to_string(), self.spec.instance.clone()),
            (ROLE.to_string(), role.to_string()),
        ])
    }
}

fn role(lease: &Lease) -> Option<&str> {
    lease
        .metadata
        .labels
        .as_ref()?
        .get(ROLE)
        .map(String::as_str)
}

fn record(lease: &Lease, default: Duration) -> Record {
    let spec = lease.spec.as_ref();
    Record {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        // The resourceVersion changes with every write, renewals included.
        renewed: lease.metadata.resource_version.clone().unwrap_or_default(),
        duration: spec
            .and_then(|s| s.lease_duration_seconds)
            .map(|s| Duration::from_secs(s.max(1) as u64))
            .unwrap_or(default),
    }
}
