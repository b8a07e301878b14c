//! The etcd lease of this process. Every replica holds one, kept alive, so that a new leader
//! can re-attach every key to its own lease at once, before the old leader's lease runs out.
//! If the lease is lost (etcd restarted without its data, keepalive failed past the TTL), a new
//! one is granted and published: the controller then puts every owned key again.

use crate::backoff::Backoff;
use crate::config::EtcdArgs;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Grants and keeps alive a lease of `ttl` until `shutdown`; the receiver holds the current lease
/// id (`None` while there is none). On shutdown the lease is NOT revoked: a successor re-puts the
/// keys under its own lease, and without one they vanish within the TTL.
pub fn spawn(
    args: EtcdArgs,
    ttl: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<Option<i64>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let ttl_secs = ttl.as_secs().max(2) as i64;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut lease: Option<i64> = None;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = keep(&args, ttl_secs, &mut lease, &tx) => r,
            };
            let wait = backoff.next_delay();
            match outcome {
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?wait, "etcd lease keepalive failed; registrations stay until the lease's TTL runs out")
                }
                Ok(()) => backoff.reset(),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    rx
}

/// One session: reuse the lease if etcd still has it, else grant a new one; then keep it alive
/// until something fails.
async fn keep(
    args: &EtcdArgs,
    ttl: i64,
    lease: &mut Option<i64>,
    tx: &watch::Sender<Option<i64>>,
) -> Result<(), String> {
    let mut client = crate::etcd::connect(args)
        .await
        .map_err(|e| e.to_string())?;
    let alive = match *lease {
        Some(id) => client
            .lease_time_to_live(id, None)
            .await
            .map(|r| r.ttl() > 0)
            .unwrap_or(false),
        None => false,
    };
    if !alive {
        let id = client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| format!("grant an etcd lease: {e}"))?
            .id();
        tracing::info!(lease = %format!("{id:x}"), ttl, "granted the etcd lease for written-back registrations");
        *lease = Some(id);
        // A new lease: every owned key must be put again under it.
        let _ = tx.send(Some(id));
    }
    let id = lease.expect("set above");
    let (mut keeper, mut responses) = client
        .lease_keep_alive(id)
        .await
        .map_err(|e| format!("keep the etcd lease alive: {e}"))?;
    let period = Duration::from_secs((ttl as u64 / 3).max(1));
    loop {
        keeper
            .keep_alive()
            .await
            .map_err(|e| format!("keep the etcd lease alive: {e}"))?;
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => {}
            Ok(_) => {
                *lease = None;
                return Err(format!(
                    "etcd lease {id:x} is gone (expired or etcd lost it); granting a new one"
                ));
            }
            Err(e) => return Err(format!("keep the etcd lease alive: {e}")),
        }
        tokio::time::sleep(period).await;
    }
}
