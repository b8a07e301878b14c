//! List a prefix at one revision, then watch it from the next one, for ever.
//!
//! - A broken stream resumes from the last revision seen, after a backoff.
//! - A compacted revision (the watch fell too far behind) means events were lost: list again;
//!   the snapshot diffs the new list against the cache, which recovers the missed deletes.
//! - Connection state is reported, so readiness can say "etcd unreachable" while the last known
//!   state stays in place.

use crate::backoff::Backoff;
use crate::config::EtcdArgs;
use crate::metrics::Metrics;
use etcd_client::{EventType, WatchOptions};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub enum KvEvent {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

#[derive(Debug)]
pub enum Update {
    /// Everything under `prefix`, at one revision.
    Listed {
        prefix: String,
        kvs: Vec<(Vec<u8>, Vec<u8>)>,
        revision: i64,
    },
    /// Changes in revision order, with the time they were received (for the sync-latency metric).
    Events {
        events: Vec<KvEvent>,
        received: Instant,
    },
    /// The watch of `prefix` is established (true) or broken (false).
    Connected { prefix: String, up: bool },
}

/// Watches `prefix` until `shutdown`, sending updates to `tx`. Never returns an error: every
/// failure is logged, counted and retried with backoff.
pub async fn watch_prefix(
    args: EtcdArgs,
    prefix: String,
    tx: mpsc::Sender<Update>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::default();
    // The revision the cache is at; None means a list is needed.
    let mut revision: Option<i64> = None;
    loop {
        let session = async {
            let mut client = crate::etcd::connect(&args)
                .await
                .map_err(|e| e.to_string())?;
            let rev = match revision {
                Some(r) => r,
                None => {
                    let (kvs, rev) = crate::etcd::read_prefix(&mut client, &args, &prefix)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::info!(%prefix, keys = kvs.len(), revision = rev, "listed etcd prefix");
                    let _ = tx
                        .send(Update::Listed {
                            prefix: prefix.clone(),
                            kvs,
                            revision: rev,
                        })
                        .await;
                    revision = Some(rev);
                    rev
                }
            };
            let mut stream = client
                .watch(
                    prefix.as_bytes(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1)
                            .with_prev_key()
                            .with_progress_notify(),
                    ),
                )
                .await
                .map_err(|e| etcd_err(&args, e))?;
            let _ = tx
                .send(Update::Connected {
                    prefix: prefix.clone(),
                    up: true,
                })
                .await;
            metrics.etcd_connected.set(1);
            backoff.reset();
            while let Some(resp) = stream.message().await.map_err(|e| etcd_err(&args, e))? {
                if resp.canceled() {
                    if resp.compact_revision() > 0 {
                        tracing::warn!(%prefix, compacted = resp.compact_revision(), "watch revision compacted; listing again to recover missed changes");
                        metrics.compaction_relists.inc();
                        revision = None;
                        return Ok(());
                    }
                    return Err(format!(
                        "etcd cancelled the watch of {prefix}: {}",
                        resp.cancel_reason()
                    ));
                }
                let received = Instant::now();
                let mut events = Vec::with_capacity(resp.events().len());
                let mut last = None;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    last = Some(kv.mod_revision());
                    events.push(match ev.event_type() {
                        EventType::Put => KvEvent::Put {
                            key: kv.key().to_vec(),
                            value: kv.value().to_vec(),
                        },
                        EventType::Delete => KvEvent::Delete {
                            key: kv.key().to_vec(),
                        },
                    });
                }
                // A progress notification (no events) also moves the resume point forward.
                let seen = last.or_else(|| resp.header().map(|h| h.revision()));
                if let Some(r) = seen {
                    revision = Some(revision.map_or(r, |cur| cur.max(r)));
                }
                if !events.is_empty() && tx.send(Update::Events { events, received }).await.is_err()
                {
                    return Ok(());
                }
            }
            Err(format!("the watch stream of {prefix} ended"))
        };
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = session => r,
        };
        match outcome {
            Ok(()) => continue, // relist at once after compaction
            Err(e) => {
                metrics.watch_restarts.inc();
                metrics.etcd_connected.set(0);
                let _ = tx
                    .send(Update::Connected {
                        prefix: prefix.clone(),
                        up: false,
                    })
                    .await;
                let wait = backoff.next_delay();
                tracing::warn!(%prefix, error = %e, retry_in = ?wait, "etcd watch failed; keeping the last known state and retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

fn etcd_err(args: &EtcdArgs, e: etcd_client::Error) -> String {
    crate::Error::Etcd {
        endpoints: args.endpoints.join(","),
        source: e,
    }
    .to_string()
}
