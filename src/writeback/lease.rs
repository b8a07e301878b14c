//! The etcd leases of this process: as many as the lease pool asks for (at most N keys each, see
//! `lease_pool`), each kept alive on one long-lived keepalive stream. Every replica grants its
//! own, so a new leader re-attaches every key to its own leases at once, before the old leader's
//! run out. A lease found gone (expired, or etcd restarted without its data) leaves the pool, and
//! the objects whose keys were on it are named, so that only those are put again.

use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::etcd::cause::describe;
use crate::metrics::Metrics;
use crate::writeback::lease_pool::{LeasePool, NeedLeases, Placed};
use etcd_client::Client;
use futures::Stream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// An object that wants keys: (namespace, name).
pub type Owner = (String, String);

pub struct Leases {
    etcd: Client,
    ttl: i64,
    pool: Mutex<LeasePool<Owner>>,
    lost: mpsc::UnboundedSender<Owner>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
}

impl Drop for Leases {
    /// A registry dropped (changed or gone) takes its leases out of the gauge.
    fn drop(&mut self) {
        let held = self.pool.get_mut().usage().len();
        self.metrics.writeback_leases.dec_by(held as i64);
    }
}

impl Leases {
    /// Leases of `ttl` holding at most `per_lease` keys each, kept alive until `shutdown`; and the
    /// owners of the keys on each lease found lost. On shutdown no lease is revoked: a successor
    /// re-puts the keys under its own, and without one they vanish within the TTL.
    pub fn new(
        etcd: Client,
        ttl: Duration,
        per_lease: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> (Arc<Leases>, impl Stream<Item = Owner> + Send + 'static) {
        let (tx, rx) = mpsc::unbounded_channel();
        let leases = Arc::new(Leases {
            etcd,
            ttl: ttl.as_secs().max(2) as i64,
            pool: Mutex::new(LeasePool::new(per_lease)),
            lost: tx,
            metrics,
            shutdown,
        });
        let lost =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|o| (o, rx)) });
        (leases, lost)
    }

    /// `owner` now wants exactly `keys`: the lease each goes on, granting leases when every one
    /// is full. The keys the owner no longer wants free their slots, and are named.
    pub async fn place(self: &Arc<Self>, owner: &Owner, keys: &[String]) -> Result<Placed> {
        // One placement at a time: two reconciles short of room grant one lease, not two.
        let mut pool = self.pool.lock().await;
        loop {
            match pool.place(owner, keys) {
                Ok(placed) => return Ok(placed),
                Err(NeedLeases(n)) => {
                    for _ in 0..n {
                        let id = self.grant(owner).await?;
                        pool.add_lease(id);
                        // Added to, not set: each registry has its own leases.
                        self.metrics.writeback_leases.inc();
                        tokio::spawn(self.clone().keep(id));
                    }
                }
            }
        }
    }

    /// `owner` does not hold `key` (another registrant does): its slot is free.
    pub async fn release(&self, owner: &Owner, key: &str) {
        self.pool.lock().await.release(owner, key);
    }

    /// The keys `owner` wants, by the pool.
    pub async fn keys_of(&self, owner: &Owner) -> Vec<String> {
        self.pool.lock().await.keys_of(owner).into_keys().collect()
    }

    /// `owner` is gone: every slot it held is free.
    pub async fn forget(&self, owner: &Owner) {
        self.pool.lock().await.forget(owner);
    }

    /// This replica no longer writes the objects that `keep` refuses (their bucket went to another
    /// replica, or it leads no more): the new writer moves their keys to its own leases, so their
    /// slots here are free; the leases stay alive for when it writes again.
    pub async fn forget_unless(&self, keep: impl Fn(&Owner) -> bool) {
        self.pool.lock().await.forget_unless(keep);
    }

    /// etcd does not have lease `id` (a Put with it was refused): as when its keepalive finds it
    /// gone, the objects whose keys were on it get a pass, and their keys a new lease.
    pub async fn lost(&self, id: i64, why: &'static str) {
        let owners = {
            let mut pool = self.pool.lock().await;
            if !pool.usage().iter().any(|(l, _)| *l == id) {
                return; // already handled
            }
            let owners = pool.lose(id);
            self.metrics.writeback_leases.dec();
            owners
        };
        self.metrics.writeback_leases_lost.inc();
        tracing::warn!(lease = %format!("{id:x}"), objects = owners.len(), "etcd lease {id:x} is gone ({why}); its keys are put again under another");
        for o in owners {
            // The controller is gone only at shutdown.
            let _ = self.lost.send(o);
        }
    }

    async fn grant(&self, owner: &Owner) -> Result<i64> {
        let id = self
            .etcd
            .clone()
            .lease_grant(self.ttl, None)
            .await
            .map_err(|e| Error::RegistryUnavailable {
                key: format!("{}/{}", owner.0, owner.1),
                reason: format!("grant an etcd lease: {}", describe(&e)),
            })?
            .id();
        tracing::info!(lease = %format!("{id:x}"), ttl = self.ttl, "granted an etcd lease for written-back registrations");
        Ok(id)
    }

    /// Keeps lease `id` alive until shutdown or until it is found lost, in sessions of one
    /// keepalive stream each; a session ends only when that stream fails.
    async fn keep(self: Arc<Self>, id: i64) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut after_break = false;
        loop {
            let mut kept_alive = false;
            let ended = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                e = session(self.etcd.clone(), id, self.ttl, after_break, &mut kept_alive) => e,
            };
            after_break = true;
            match ended {
                Ended::Lost(why) => return self.lost(id, why).await,
                Ended::Failed(error) => {
                    let wait = retry_after(&mut backoff, kept_alive);
                    tracing::warn!(lease = %format!("{id:x}"), %error, retry_in = ?wait, "etcd lease keepalive failed; registrations stay until the lease's TTL runs out");
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// How a keepalive session ended.
enum Ended {
    /// etcd no longer has the lease; why.
    Lost(&'static str),
    /// The stream broke; the lease may still be there.
    Failed(String),
}

/// The wait before the next session. A session that kept the lease alive proves etcd answered,
/// so the backoff starts over: a failure hours later is retried at once, not after the longest
/// wait that earlier outages built up.
fn retry_after(backoff: &mut Backoff, kept_alive: bool) -> Duration {
    if kept_alive {
        backoff.reset();
    }
    backoff.next_delay()
}

/// One session: after a break, whether etcd still has the lease; then one keepalive stream,
/// renewed every third of the TTL until it fails, setting `kept_alive` once etcd renewed it.
async fn session(
    mut etcd: Client,
    id: i64,
    ttl: i64,
    after_break: bool,
    kept_alive: &mut bool,
) -> Ended {
    let failed =
        |what: &str, e: etcd_client::Error| Ended::Failed(format!("{what}: {}", describe(&e)));
    if after_break {
        // etcd answers TTL -1 for a lease it does not have.
        match etcd.lease_time_to_live(id, None).await {
            Ok(r) if r.ttl() <= 0 => {
                return Ended::Lost("etcd no longer has it: expired, or etcd lost its data");
            }
            Ok(_) => {}
            Err(e) => return failed("read the etcd lease", e),
        }
    }
    let (mut keeper, mut responses) = match etcd.lease_keep_alive(id).await {
        Ok(pair) => pair,
        Err(e) => return failed("keep the etcd lease alive", e),
    };
    let period = Duration::from_secs((ttl as u64 / 3).max(1));
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return failed("keep the etcd lease alive", e);
        }
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => *kept_alive = true,
            // etcd answers a keepalive of a lease it does not have with TTL 0.
            Ok(Some(_)) => {
                return Ended::Lost("etcd renewed it with TTL 0: expired, or etcd lost its data");
            }
            Ok(None) => return Ended::Failed("etcd closed the keepalive stream".into()),
            Err(e) => return failed("keep the etcd lease alive", e),
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_that_kept_the_lease_alive_starts_the_backoff_over() {
        let mut b = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let first = retry_after(&mut b, false);
        assert!(first < Duration::from_millis(251), "{first:?}");
        for _ in 0..6 {
            retry_after(&mut b, false);
        }
        let grown = retry_after(&mut b, false);
        assert!(
            grown >= Duration::from_secs(5),
            "failing sessions back off: {grown:?}"
        );
        let after_success = retry_after(&mut b, true);
        assert!(
            after_success < Duration::from_millis(251),
            "reset after keeping the lease alive: {after_success:?}"
        );
        let next = retry_after(&mut b, false);
        assert!(
            next >= Duration::from_millis(400) && next < Duration::from_millis(501),
            "then it grows again: {next:?}"
        );
    }
}
