//! The registries write-back writes to, connected (a shell over [`destination`]): for each, an
//! etcd client, its own leases and a watch of keys freed under its prefix. The flags' registry is
//! connected at start; another on its first use. A registry that changes (another etcd, a new
//! Secret, another prefix) or goes is dropped: its keepalives stop, so the keys on its leases
//! leave etcd within the lease TTL unless a pass writes them again.

use crate::error::Result;
use crate::metrics::Metrics;
use crate::source::spec::SourceName;
use crate::writeback::destination::{Destination, Registries};
use crate::writeback::freed;
use crate::writeback::keys::Keys;
use crate::writeback::lease::{Leases, Owner};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A key that left the etcd of a registry: (source, its write-back prefix, key).
pub type Freed = (SourceName, String, String);

/// One connected registry.
pub struct Live {
    pub destination: Destination,
    pub keys: Keys,
    /// Cancelled when dropped: ends its keepalives and its watch.
    token: CancellationToken,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Where the connected registries' news goes: the controller's triggers.
#[derive(Clone)]
pub struct Outlets {
    pub freed: mpsc::Sender<Freed>,
    /// A freed-key watch came back after a break: deletions went unseen.
    pub missed: mpsc::Sender<()>,
    /// The objects whose keys were on a lease found lost.
    pub lost: mpsc::UnboundedSender<Owner>,
}

pub struct Targets {
    live: Mutex<BTreeMap<SourceName, Arc<Live>>>,
    ttl: Duration,
    per_lease: usize,
    instance: String,
    metrics: Arc<Metrics>,
    outlets: Outlets,
    shutdown: CancellationToken,
}

impl Targets {
    pub fn new(
        ttl: Duration,
        per_lease: usize,
        instance: String,
        metrics: Arc<Metrics>,
        outlets: Outlets,
        shutdown: CancellationToken,
    ) -> Self {
        Targets {
            live: Mutex::new(BTreeMap::new()),
            ttl,
            per_lease,
            instance,
            metrics,
            outlets,
            shutdown,
        }
    }

    /// The connected registry for `d`, connecting it first if it is not (or was, differently).
    pub async fn get(&self, d: &Destination) -> Result<Arc<Live>> {
        if let Some(l) = self.current(d) {
            return Ok(l);
        }
        let etcd = crate::etcd::connect(&d.connection).await?;
        Ok(self.insert(d, etcd))
    }

    /// Registers `d` with an etcd client already connected (the flags' registry, at start).
    pub fn insert(&self, d: &Destination, etcd: etcd_client::Client) -> Arc<Live> {
        let mut live = self.live.lock().expect("targets lock");
        // Another pass may have connected meanwhile: one registry, one set of leases.
        if let Some(l) = live.get(&d.source).filter(|l| &l.destination == d) {
            return l.clone();
        }
        let l = Arc::new(self.start(d, etcd));
        tracing::info!(source = %d.source, prefix = %d.prefix, endpoints = ?d.connection.endpoints, "write-back: connected to a registry");
        live.insert(d.source.clone(), l.clone());
        l
    }

    fn current(&self, d: &Destination) -> Option<Arc<Live>> {
        let live = self.live.lock().expect("targets lock");
        live.get(&d.source).filter(|l| &l.destination == d).cloned()
    }

    /// Every connected registry.
    pub fn all(&self) -> Vec<Arc<Live>> {
        let live = self.live.lock().expect("targets lock");
        live.values().cloned().collect()
    }

    /// Drops the registries that are gone from `r`, or changed. Returns whether any was.
    pub fn retain(&self, r: &Registries) -> bool {
        let mut live = self.live.lock().expect("targets lock");
        let before = live.len();
        live.retain(|name, l| {
            let keep = r.writable.get(name) == Some(&l.destination);
            if !keep {
                tracing::info!(source = %name, "write-back: this registry changed or is gone; its leases are no longer kept alive here");
            }
            keep
        });
        live.len() != before
    }

    fn start(&self, d: &Destination, etcd: etcd_client::Client) -> Live {
        let token = self.shutdown.child_token();
        let (leases, lost) = Leases::new(
            etcd.clone(),
            self.ttl,
            self.per_lease,
            self.metrics.clone(),
            token.clone(),
        );
        let (freed_keys, missed) = freed::watch(etcd.clone(), d.prefix.clone(), token.clone());
        let (source, prefix, outlets) = (d.source.clone(), d.prefix.clone(), self.outlets.clone());
        tokio::spawn(forward(token.clone(), async move {
            let freed_keys = freed_keys.map(News::Freed);
            let missed = missed.map(|()| News::Missed);
            let lost = lost.map(News::Lost);
            let mut all = std::pin::pin!(futures::stream::select(
                freed_keys,
                futures::stream::select(missed, lost)
            ));
            while let Some(e) = all.next().await {
                let sent = match e {
                    News::Freed(k) => outlets
                        .freed
                        .send((source.clone(), prefix.clone(), k))
                        .await
                        .is_ok(),
                    // One pending "missed" is as good as many.
                    News::Missed => !matches!(
                        outlets.missed.try_send(()),
                        Err(mpsc::error::TrySendError::Closed(_))
                    ),
                    News::Lost(o) => outlets.lost.send(o).is_ok(),
                };
                if !sent {
                    return; // the controller is gone: the bridge is stopping
                }
            }
        }));
        Live {
            destination: d.clone(),
            keys: Keys {
                etcd,
                leases,
                metrics: self.metrics.clone(),
                instance: self.instance.clone(),
            },
            token,
        }
    }
}

/// What a registry's watch and leases report, for the controller.
enum News {
    Freed(String),
    Missed,
    Lost(Owner),
}

/// Runs `f` until `token` is cancelled.
async fn forward(token: CancellationToken, f: impl std::future::Future<Output = ()>) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = f => {}
    }
}
