//! Leader election over a coordination.k8s.io Lease (kube-lease-manager). Every replica watches
//! etcd and the cluster; only the holder of the Lease writes.

use crate::error::{Error, Result};
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use std::time::Duration;
use tokio::sync::watch;

/// Leadership as a watch channel. Dropping the receiver releases the Lease (graceful shutdown:
/// the standby takes over at once instead of waiting out the Lease).
pub struct Leadership {
    pub is_leader: watch::Receiver<bool>,
    /// Holds the channel open when there is no election.
    _always: Option<watch::Sender<bool>>,
    task: Option<
        tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    >,
}

impl Leadership {
    /// Always the leader: for a single replica run with `--leader-election=false`.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Leadership {
            is_leader: rx,
            _always: Some(tx),
            task: None,
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
        let (is_leader, task) = manager.watch().await;
        Ok(Leadership {
            is_leader,
            _always: None,
            task: Some(task),
        })
    }

    /// Gives the Lease up (if held) and waits until that is written.
    pub async fn release(self) {
        let Leadership {
            is_leader, task, ..
        } = self;
        drop(is_leader);
        if let Some(task) = task {
            match tokio::time::timeout(Duration::from_secs(5), task).await {
                Ok(Ok(Ok(_))) => tracing::info!("leadership released"),
                Ok(Ok(Err(e))) => {
                    tracing::warn!(error = %e, "releasing the Lease failed; the standby takes over when it expires")
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "leader election task failed"),
                Err(_) => tracing::warn!(
                    "releasing the Lease timed out; the standby takes over when it expires"
                ),
            }
        }
    }
}
