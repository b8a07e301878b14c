//! The etcd lease of this process. Every replica holds one, kept alive, so that a new leader
//! can re-attach every key to its own lease at once, before the old leader's lease runs out.
//! If the lease is lost (etcd restarted without its data, keepalive failed past the TTL), a new
//! one is granted and published: the controller then puts every owned key again.

use crate::backoff::Backoff;
use crate::config::EtcdArgs;
use crate::etcd::cause::describe;
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
            let mut kept_alive = false;
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = keep(&args, ttl_secs, &mut lease, &tx, &mut kept_alive) => e,
            };
            let Err(error) = ended;
            let wait = retry_after(&mut backoff, kept_alive);
            tracing::warn!(%error, retry_in = ?wait, "etcd lease keepalive failed; registrations stay until the lease's TTL runs out");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    rx
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

/// One session: reuse the lease if etcd still has it, else grant a new one; then keep it alive
/// until something fails (the only way it ends), setting `kept_alive` once etcd has renewed it.
async fn keep(
    args: &EtcdArgs,
    ttl: i64,
    lease: &mut Option<i64>,
    tx: &watch::Sender<Option<i64>>,
    kept_alive: &mut bool,
) -> Result<std::convert::Infallible, String> {
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
            .map_err(|e| format!("grant an etcd lease: {}", describe(&e)))?
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
        .map_err(|e| format!("keep the etcd lease alive: {}", describe(&e)))?;
    let period = Duration::from_secs((ttl as u64 / 3).max(1));
    loop {
        keeper
            .keep_alive()
            .await
            .map_err(|e| format!("keep the etcd lease alive: {}", describe(&e)))?;
        match responses.message().await {
            Ok(Some(r)) if r.ttl() > 0 => *kept_alive = true,
            Ok(_) => {
                *lease = None;
                return Err(format!(
                    "etcd lease {id:x} is gone (expired or etcd lost it); granting a new one"
                ));
            }
            Err(e) => return Err(format!("keep the etcd lease alive: {}", describe(&e))),
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
