//! Reading every source again (drift repair every --resync-interval, and the read that confirms
//! deletions held by the mass-deletion guard), in a task of its own: the loop goes on importing
//! meanwhile, so a hung source (its reads wait out --etcd-timeout) stalls nobody.

use super::Reconciler;
use crate::error::{Error, Result};
use crate::source::SourceConfig;
use std::time::Instant;
use tokio::sync::oneshot;

/// Per prefix: the keys and the revision they were read at.
type Listing = Vec<(String, Vec<(Vec<u8>, Vec<u8>)>, i64)>;

/// A read in flight: its results by source, and what it was for.
pub struct Reread {
    rx: oneshot::Receiver<Vec<(String, Result<Listing>)>>,
    resync: bool,
    confirm: bool,
}

impl Reread {
    /// Its results, once every source has answered or failed.
    pub async fn done(slot: &mut Option<Reread>) -> Option<Vec<(String, Result<Listing>)>> {
        match slot {
            Some(r) => (&mut r.rx).await.ok(),
            None => std::future::pending().await,
        }
    }
}

impl Reconciler {
    /// Asks for a drift repair (`confirm`: false) or a confirming read; starts a read unless one
    /// is in flight (the request is then served by the next one).
    pub fn want_reread(&mut self, slot: &mut Option<Reread>, confirm: bool) {
        match confirm {
            true => self.confirming = true,
            false => self.resync_wanted = true,
        }
        if slot.is_some() {
            return;
        }
        // A source known to be down is not read: it would answer nothing.
        let sources: Vec<(SourceConfig, bool)> = (self.registries.configs())
            .map(|c| {
                let down = (self.etcd_up.iter()).any(|((s, _), up)| *s == c.name && !up);
                (c.clone(), down)
            })
            .collect();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let reads = sources.into_iter().map(|(c, down)| async move {
                let r = match down {
                    true => Err(Error::SourceDown {
                        source_name: c.name.clone(),
                    }),
                    false => read_source(&c).await,
                };
                (c.name, r)
            });
            // The loop dropped the receiver only when it stopped: nothing to tell then.
            let _ = tx.send(futures::future::join_all(reads).await);
        });
        *slot = Some(Reread {
            rx,
            resync: std::mem::take(&mut self.resync_wanted),
            confirm: self.confirming,
        });
    }

    /// Takes in a read: each source's keys where they are not older than what the watch has
    /// already brought; then the drift repair, or the confirmation, it was for. Any source not
    /// read keeps held deletions held (never delete on uncertainty).
    pub fn finish_reread(
        &mut self,
        slot: &mut Option<Reread>,
        results: Vec<(String, Result<Listing>)>,
    ) {
        let Some(done) = slot.take() else { return };
        let mut incomplete = None;
        for (source, r) in results {
            let lists = match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(%source, error = %e, "cannot read this source again");
                    incomplete.get_or_insert(e);
                    continue;
                }
            };
            for (prefix, kvs, revision) in lists {
                let seen = self.revisions.get(&source).copied().unwrap_or(0);
                let Some(snapshot) = self.registries.snapshot_mut(&source) else {
                    continue;
                };
                // Events newer than this read were applied meanwhile: it would turn them back.
                if revision < seen {
                    continue;
                }
                let change =
                    snapshot.reset_prefix(&prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])));
                if !change.targets.is_empty() {
                    tracing::warn!(%source, %prefix, targets = change.targets.len(), "the consistent read found changes the watch had missed");
                    self.note_change(change);
                }
            }
        }
        if done.resync {
            if let Some(e) = &incomplete {
                tracing::warn!(error = %e, "drift repair: not every source could be read; checking the cluster against the cache");
            }
            self.synced = false;
        }
        if done.confirm {
            self.confirming = false;
        }
        if done.confirm && self.confirm_at.is_some() {
            match incomplete {
                None => {
                    tracing::warn!(
                        services = self.held.len(),
                        "mass-deletion guard: etcd confirms the deletions; applying them"
                    );
                    self.confirm_at = None;
                    self.deletions_confirmed = true;
                    self.dirty_names.extend(self.held.iter().cloned());
                    self.schedule.changed(Instant::now());
                }
                Some(e) => {
                    tracing::warn!(error = %e, "mass-deletion guard: cannot read etcd to confirm; still holding");
                    self.confirm_at = Some(Instant::now() + self.tuning.delete_confirm_delay);
                }
            }
        }
        // Requests that came while this read was in flight.
        if self.resync_wanted || (self.confirming && !done.confirm) {
            let confirm = self.confirming && !done.confirm;
            self.want_reread(slot, confirm);
        }
    }
}

/// Every prefix of one source, read now.
async fn read_source(config: &SourceConfig) -> Result<Listing> {
    let connection = &config.connection;
    let mut client = crate::etcd::connect(connection).await?;
    let mut lists = Vec::new();
    for p in &config.prefixes {
        let (kvs, revision) = crate::etcd::read_prefix(&mut client, connection, &p.prefix).await?;
        lists.push((p.prefix.clone(), kvs, revision));
    }
    Ok(lists)
}
