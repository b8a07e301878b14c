//! List a prefix at one revision, then watch it from the next one, for ever.
//!
//! - A broken stream resumes from the last revision seen, after a backoff. While etcd is
//!   unreachable, the wait is cut short as soon as it listens again, so a backoff grown during a
//!   long outage does not delay the recovery.
//! - A compacted revision (the watch fell too far behind) means events were lost: list again;
//!   the snapshot diffs the new list against the cache, which recovers the missed deletes.
//! - An etcd that went back in time (another cluster, a fresh data dir, an older snapshot) is
//!   listed again at once: see [`super::rewind`]. Until then the watcher reports itself down, so
//!   /readyz says not ready; the mass-deletion guard judges what the new list removes.
//! - Connection state is reported, so readiness can say "etcd unreachable" while the last known
//!   state stays in place.

use super::cause::Cause;
use super::rewind::{self, AtRevision, Fingerprint, Header, Source};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::source::spec::Connection;
use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
pub enum KvEvent {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

/// What the import reconciler takes in: from a watcher, about its source's keys; from the
/// source supervisor, about the sources themselves.
#[derive(Debug)]
pub enum Update {
    /// Everything under `prefix`, at one revision.
    Listed {
        source: String,
        prefix: String,
        kvs: Vec<(Vec<u8>, Vec<u8>)>,
        revision: i64,
    },
    /// Changes in revision order, with the time they were received (for the sync-latency metric).
    Events {
        source: String,
        /// The revision of the last event.
        revision: i64,
        events: Vec<KvEvent>,
        received: Instant,
    },
    /// The watch of `prefix` is established (true) or broken (false). Also false, while
    /// connected, just before a relist caused by a rewound etcd: not ready until `Listed`.
    Connected {
        source: String,
        prefix: String,
        up: bool,
        /// Why it broke.
        error: Option<String>,
    },
    /// A source to import from, new or changed (a changed one starts empty: its watchers list
    /// it again). Sent before its watchers start.
    Source(Box<crate::source::SourceConfig>),
    /// A source gone: its Services go. Sent after its watchers stopped.
    SourceGone(String),
    /// Every EtcdSource object has been seen once: a source not known now is gone.
    SourcesListed,
}

/// How often an unreachable etcd is probed (a TCP connect) while the watcher waits to retry.
const PROBE_EVERY: Duration = Duration::from_millis(250);

/// Watches `prefix` until `shutdown`, sending updates to `tx`. Never returns an error: every
/// failure is logged, counted and retried with backoff.
pub async fn watch_prefix(
    args: Connection,
    source: String,
    prefix: String,
    tx: mpsc::Sender<Update>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut w = Watcher {
        args,
        source,
        prefix,
        tx,
        metrics,
        backoff: Backoff::default(),
        revision: None,
        seen: None,
        fingerprint: Fingerprint::default(),
    };
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = w.session() => r,
        };
        let err = match outcome {
            Ok(Ended::Relist) => continue,
            Ok(Ended::Closed) => return,
            Err(e) => e,
        };
        let cause = match &err {
            Error::Etcd { cause, .. } => Some(cause),
            _ => None,
        };
        let early = match after_failure(cause, w.revision.is_some()) {
            Next::Relist => {
                w.relist(&err.to_string()).await;
                continue;
            }
            Next::ListAgain => {
                tracing::warn!(prefix = %w.prefix, "watch revision compacted; listing again to recover missed changes");
                w.metrics.compaction_relists.inc();
                w.revision = None;
                continue;
            }
            Next::Retry { early } => early,
        };
        w.metrics.watch_restarts.inc();
        w.set_connected_metric(0);
        w.send(Update::Connected {
            source: w.source.clone(),
            prefix: w.prefix.clone(),
            up: false,
            error: Some(err.to_string()),
        })
        .await;
        let wait = w.backoff.next_delay();
        let prefix = &w.prefix;
        tracing::warn!(%prefix, error = %err, retry_in = ?wait, retry_once_reachable = early, "etcd watch failed; keeping the last known state and retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = w.wait(wait, early) => {}
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    /// etcd never had the cache's revision: it went back in time; list again, now.
    Relist,
    /// etcd compacted the cache's revision away: the events since are lost; list again, now.
    ListAgain,
    /// Retry after the backoff; `early`: as soon as an endpoint accepts connections again.
    Retry { early: bool },
}

/// Decides once per failed attempt. `resuming`: the cache has a revision the attempt read or
/// watched at (a list that fails this way goes through the backoff, so that an etcd compacting
/// or restoring in a loop cannot make the watcher list in a hot loop).
fn after_failure(cause: Option<&Cause>, resuming: bool) -> Next {
    match cause {
        Some(Cause::FutureRevision) if resuming => Next::Relist,
        Some(Cause::Compacted) if resuming => Next::ListAgain,
        c => Next::Retry {
            early: c.is_some_and(Cause::retry_when_reachable),
        },
    }
}

/// How a session ended without an error.
enum Ended {
    /// The cache must be listed again at once (compaction, rewind).
    Relist,
    /// The receiver is gone: the bridge is stopping.
    Closed,
}

impl Watcher {
    /// `etcd_bridge_etcd_connected` is the flags' registry's, as `/readyz` is; another source's
    /// connection is in its EtcdSource status.
    fn set_connected_metric(&self, v: i64) {
        if self.source == crate::source::spec::DEFAULT_SOURCE {
            self.metrics.etcd_connected.set(v);
        }
    }
}

struct Watcher {
    args: Connection,
    source: String,
    prefix: String,
    tx: mpsc::Sender<Update>,
    metrics: Arc<Metrics>,
    backoff: Backoff,
    /// The revision the cache is at; `None` means a list is needed.
    revision: Option<i64>,
    /// The last response header seen (identity and highest revision), to notice a rewind.
    seen: Option<Header>,
    /// The cache's keys at `revision`, in brief, to check a resumed etcd against.
    fingerprint: Fingerprint,
}

impl Watcher {
    /// One connection: list if needed, then watch until something breaks.
    async fn session(&mut self) -> Result<Ended, Error> {
        let mut client = super::connect(&self.args).await?;
        if let Some(rev) = self.revision {
            self.check_rewound(&mut client, rev).await?;
        }
        let rev = match self.revision {
            Some(r) => r,
            None => {
                let listing = super::list_prefix(&mut client, &self.args, &self.prefix).await?;
                let rev = listing.header.revision;
                tracing::info!(prefix = %self.prefix, keys = listing.kvs.len(), revision = rev, "listed etcd prefix");
                self.seen = Some(listing.header);
                self.fingerprint = listing.fingerprint;
                let listed = Update::Listed {
                    source: self.source.clone(),
                    prefix: self.prefix.clone(),
                    kvs: listing.kvs,
                    revision: rev,
                };
                if !self.send(listed).await {
                    return Ok(Ended::Closed);
                }
                self.revision = Some(rev);
                rev
            }
        };
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(rev + 1)
            .with_prev_key()
            .with_progress_notify();
        let watched = client.watch(self.prefix.as_bytes(), Some(opts)).await;
        let mut stream = self.etcd(watched).await?;
        let up = Update::Connected {
            source: self.source.clone(),
            prefix: self.prefix.clone(),
            up: true,
            error: None,
        };
        if !self.send(up).await {
            return Ok(Ended::Closed);
        }
        self.set_connected_metric(1);
        self.backoff.reset();
        loop {
            let message = stream.message().await;
            let Some(resp) = self.etcd(message).await? else {
                break;
            };
            if let Some(h) = resp.header() {
                let now = Header::from(h);
                if let Some(why) = rewind::judge(self.seen.as_ref(), &now, Source::Watch) {
                    self.relist(&why.to_string()).await;
                    return Ok(Ended::Relist);
                }
                self.seen = Some(rewind::remember(self.seen.as_ref(), &now));
            }
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    tracing::warn!(prefix = %self.prefix, compacted = resp.compact_revision(), "watch revision compacted; listing again to recover missed changes");
                    self.metrics.compaction_relists.inc();
                    self.revision = None;
                    return Ok(Ended::Relist);
                }
                let reason = format!(
                    "etcd cancelled the watch of {}: {}",
                    self.prefix,
                    resp.cancel_reason()
                );
                return Err(self
                    .etcd_error(etcd_client::Error::WatchError(reason))
                    .await);
            }
            let received = Instant::now();
            let mut events = Vec::with_capacity(resp.events().len());
            let mut last = None;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                last = Some(kv.mod_revision());
                events.push(match ev.event_type() {
                    EventType::Put => {
                        let created = kv.version() == 1;
                        self.fingerprint.put(kv.key(), kv.mod_revision(), created);
                        KvEvent::Put {
                            key: kv.key().to_vec(),
                            value: kv.value().to_vec(),
                        }
                    }
                    EventType::Delete => {
                        self.fingerprint.delete(kv.key());
                        KvEvent::Delete {
                            key: kv.key().to_vec(),
                        }
                    }
                });
            }
            // A progress notification (no events) also moves the resume point forward.
            let seen = last.or_else(|| resp.header().map(|h| h.revision()));
            if let Some(r) = seen {
                self.revision = Some(self.revision.map_or(r, |cur| cur.max(r)));
                rewind::seen_revision(&mut self.seen, r);
            }
            if !events.is_empty() {
                let source = self.source.clone();
                let update = Update::Events {
                    source,
                    revision: self.revision.unwrap_or_default(),
                    events,
                    received,
                };
                if !self.send(update).await {
                    return Ok(Ended::Closed);
                }
            }
        }
        let ended = format!("the watch stream of {} ended", self.prefix);
        Err(self.etcd_error(etcd_client::Error::WatchError(ended)).await)
    }

    /// Before resuming a watch from `rev`: two small reads at that revision (the number of keys
    /// under the prefix, and the key changed last) say whether etcd still has the history the
    /// cache was built from. An etcd behind `rev` refuses them ("future revision"), which the
    /// caller turns into a relist too. If the history differs, the cache is listed again in
    /// this session.
    async fn check_rewound(&mut self, client: &mut Client, rev: i64) -> Result<(), Error> {
        let end = super::client::prefix_end(self.prefix.as_bytes());
        let opts = GetOptions::new()
            .with_range(end)
            .with_revision(rev)
            .with_count_only();
        let read = client.get(self.prefix.as_bytes(), Some(opts)).await;
        let counted = self.etcd(read).await?;
        let Some(h) = counted.header() else {
            return Ok(());
        };
        let mut last = None;
        if let Some(key) = self.fingerprint.last_key() {
            let opts = GetOptions::new().with_revision(rev);
            let read = client.get(key, Some(opts)).await;
            let got = self.etcd(read).await?;
            last = got.kvs().first().map(|kv| kv.mod_revision());
        }
        let now = AtRevision {
            header: Header::from(h),
            count: counted.count(),
            last,
        };
        match rewind::judge_resume(self.seen.as_ref(), rev, &self.fingerprint, &now) {
            Some(why) => self.relist(&why.to_string()).await,
            None => self.seen = Some(rewind::remember(self.seen.as_ref(), &now.header)),
        }
        Ok(())
    }

    /// Forgets the revision, so the next session lists, and reports the watch down meanwhile:
    /// not ready until the cache matches this etcd again.
    async fn relist(&mut self, why: &str) {
        tracing::warn!(prefix = %self.prefix, reason = %why, "etcd went back in time; listing again at once (not ready until listed; the mass-deletion guard judges what the new list removes)");
        self.metrics.rewind_relists.inc();
        self.revision = None;
        self.seen = None;
        self.fingerprint = Fingerprint::default();
        self.send(Update::Connected {
            source: self.source.clone(),
            prefix: self.prefix.clone(),
            up: false,
            error: Some(format!("etcd went back in time ({why}); listing again")),
        })
        .await;
    }

    /// Sends to the reconciler; false if it is gone.
    async fn send(&self, update: Update) -> bool {
        self.tx.send(update).await.is_ok()
    }

    /// An etcd client result, with its error classified.
    async fn etcd<T>(&self, r: Result<T, etcd_client::Error>) -> Result<T, Error> {
        match r {
            Ok(v) => Ok(v),
            Err(e) => Err(self.etcd_error(e).await),
        }
    }

    async fn etcd_error(&self, e: etcd_client::Error) -> Error {
        super::explained(&self.args, e).await
    }

    /// Waits `wait` before the next attempt, or less: when the attempt failed for want of
    /// anything listening, retries as soon as an endpoint accepts connections again, with the
    /// backoff reset (etcd answers again, the outage's backoff no longer applies).
    async fn wait(&mut self, wait: Duration, early: bool) {
        if !early {
            tokio::time::sleep(wait).await;
            return;
        }
        let deadline = tokio::time::Instant::now() + wait;
        let connect_within = self.args.timeout.min(Duration::from_secs(1));
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(PROBE_EVERY.min(deadline - now)).await;
            if super::probe::reachable(&self.args.endpoints, connect_within).await {
                self.backoff.reset();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure() {
        let refused = Cause::Unreachable {
            detail: "refused".into(),
        };
        let tls = Cause::ClientCertRefused {
            alert: "BadCertificate".into(),
        };
        assert_eq!(
            after_failure(Some(&Cause::FutureRevision), true),
            Next::Relist
        );
        assert_eq!(
            after_failure(Some(&Cause::Compacted), true),
            Next::ListAgain
        );
        // While listing: through the backoff.
        assert_eq!(
            after_failure(Some(&Cause::FutureRevision), false),
            Next::Retry { early: false }
        );
        assert_eq!(
            after_failure(Some(&refused), true),
            Next::Retry { early: true }
        );
        // An etcd that refuses the bridge is not retried faster because it listens.
        assert_eq!(
            after_failure(Some(&tls), true),
            Next::Retry { early: false }
        );
        assert_eq!(after_failure(None, true), Next::Retry { early: false });
    }
}
