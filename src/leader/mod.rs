//! Leader election. Every replica watches etcd and the cluster; a replica writes only the objects
//! of the buckets it holds ([`Holding`]). With one bucket (the default) that is one
//! coordination.k8s.io Lease (kube-lease-manager): the leader writes everything. With more, each
//! bucket has a Lease of its own and the live replicas share them ([`shards`]).

pub mod buckets;
pub mod holding;
pub mod observe;
pub mod shards;

pub use holding::Holding;

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::time::Duration;
use tokio::sync::watch;

/// What this replica may write, as a watch channel. [`Leadership::release`] gives the Lease(s) up
/// (graceful shutdown: the others take over at once instead of waiting out the Lease).
pub struct Leadership {
    pub holding: watch::Receiver<Holding>,
    /// Holds the channel open when there is no election.
    _always: Option<watch::Sender<Holding>>,
    task: Option<tokio::task::JoinHandle<()>>,
    shards: Option<shards::Shards>,
}

impl Leadership {
    /// Holds every bucket: for a single replica run with `--leader-election=false`.
    pub fn always(buckets: u32) -> Self {
        let (tx, rx) = watch::channel(Holding::all(buckets));
        Leadership {
            holding: rx,
            _always: Some(tx),
            task: None,
            shards: None,
        }
    }

    /// Joins the bucket Leases described by `spec` (more than one bucket): the buckets this
    /// replica holds are published as they change.
    pub fn shard(client: Client, spec: shards::ShardSpec) -> Self {
        let joined = shards::Shards::join(client, spec);
        Leadership {
            holding: joined.held.clone(),
            _always: None,
            task: None,
            shards: Some(joined),
        }
    }

    /// Joins the election for the Lease `namespace/name` as `identity`.
    pub async fn elect(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Result<Self> {
        let secs = duration.as_secs().max(2);
        let manager = LeaseManagerBuilder::new(client, name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(secs)
            // Renew a third of the way before expiry, so one slow request does not lose the lease.
            .with_grace((secs / 3).max(1))
            .with_field_manager(crate::labels::FIELD_MANAGER)
            .build()
            .await
            .map_err(|e| {
                Error::Config(format!(
                    "leader election on Lease {namespace}/{name}: {e}; the bridge's ServiceAccount needs get, create and patch on coordination.k8s.io leases in {namespace}"
                ))
            })?;
        let (tx, holding) = watch::channel(Holding::none(1));
        // A standby re-reads the Lease this often: kube-lease-manager alone would wait until the
        // expiry it last saw, so a Lease released on SIGTERM would still cost a whole duration.
        let poll = Duration::from_millis(500).min(duration / 4);
        let task = tokio::spawn(campaign(manager, tx, poll));
        Ok(Leadership {
            holding,
            _always: None,
            task: Some(task),
            shards: None,
        })
    }

    /// Gives the Lease(s) up (if held) and waits until that is written. The writers have stopped.
    pub async fn release(self) {
        let Leadership {
            holding,
            task,
            shards,
            ..
        } = self;
        drop(holding);
        if let Some(shards) = shards {
            shards.release().await;
        }
        if let Some(task) = task
            && tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
        {
            tracing::warn!("releasing the Lease timed out; the standby takes over when it expires");
        }
    }
}

/// Holds or waits for the Lease until every receiver is gone, then releases it.
async fn campaign(manager: LeaseManager, tx: watch::Sender<Holding>, poll: Duration) {
    let mut leader = false;
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        tokio::select! {
            biased;
            _ = tx.closed() => {
                match manager.release().await {
                    Ok(()) => tracing::info!("leadership released"),
                    Err(e) => tracing::warn!(error = %e, "releasing the Lease failed; the standby takes over when it expires"),
                }
                return;
            }
            r = manager.changed() => match r {
                Ok(state) => {
                    leader = state;
                    backoff.reset();
                    let now = match state {
                        true => Holding::all(1),
                        false => Holding::none(1),
                    };
                    if tx.send(now).is_err() {
                        continue;
                    }
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "leader election: cannot reach the Lease");
                    tokio::time::sleep(wait).await;
                }
            },
            // For a non-holder, release() writes nothing and re-reads the Lease; the next
            // changed() then sees a released Lease at once.
            _ = tokio::time::sleep(poll), if !leader => {
                let _ = manager.release().await;
            }
        }
    }
}
