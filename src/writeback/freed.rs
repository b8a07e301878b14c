//! Keys freed in etcd under the write-back prefix: deleted, or gone with their lease. A
//! registration kept from a key by another registrant is published as soon as that key goes,
//! rather than at its next periodic pass; and one of our own keys deleted behind our back is put
//! again. Every replica watches (so a new leader has no gap to cover); only the leader's
//! reconciles act on what the watch reports.

use crate::backoff::Backoff;
use etcd_client::{Client, WatchFilterType, WatchOptions};
use futures::Stream;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Watches DELETEs under `prefix` until `shutdown`, reconnecting with backoff. Yields the keys
/// that left etcd, and a `()` each time the watch is back after a break, during which
/// deletions went unseen (so every object is worth a pass).
pub fn watch(
    etcd: Client,
    prefix: String,
    shutdown: CancellationToken,
) -> (
    impl Stream<Item = String> + Send + 'static,
    impl Stream<Item = ()> + Send + 'static,
) {
    // Bounded: a burst of expiries waits in etcd's watch buffer rather than in our memory.
    let (tx, rx) = mpsc::channel(1024);
    let (missed_tx, missed_rx) = mpsc::channel(1);
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut broken = false;
        loop {
            let mut saw_events = false;
            let ended = tokio::select! {
                _ = shutdown.cancelled() => return,
                e = session(etcd.clone(), &prefix, &tx, &missed_tx, &mut broken, &mut saw_events) => e,
            };
            let Err(error) = ended else { return }; // the controller is gone
            broken = true;
            if saw_events {
                backoff.reset();
            }
            let wait = backoff.next_delay();
            tracing::warn!(%error, retry_in = ?wait, prefix = %prefix, "write-back: the watch for freed keys broke; once it is back, every registration gets a pass");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
    (stream_of(rx), stream_of(missed_rx))
}

fn stream_of<T: Send + 'static>(rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
}

/// One watch, from now on. `Ok` only when the receiving side is gone.
async fn session(
    mut etcd: Client,
    prefix: &str,
    tx: &mpsc::Sender<String>,
    missed: &mpsc::Sender<()>,
    broken: &mut bool,
    saw_events: &mut bool,
) -> Result<(), String> {
    let opts = WatchOptions::new()
        .with_prefix()
        .with_filters([WatchFilterType::NoPut]);
    let mut stream = etcd
        .watch(prefix, Some(opts))
        .await
        .map_err(|e| format!("watch {prefix}: {}", crate::etcd::cause::describe(&e)))?;
    // One pending "missed" is as good as many: never wait for the controller here.
    if std::mem::take(broken) {
        let _ = missed.try_send(());
    }
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("etcd closed the watch".into()),
            Err(e) => return Err(crate::etcd::cause::describe(&e)),
        };
        if resp.canceled() {
            return Err(format!(
                "etcd cancelled the watch: {}",
                resp.cancel_reason()
            ));
        }
        *saw_events = true;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if tx.send(key).await.is_err() {
                return Ok(());
            }
        }
    }
}
