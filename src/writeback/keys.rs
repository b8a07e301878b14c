//! An object's keys in etcd: put on the leases the pool gives them, the ones it no longer wants
//! deleted, each write checking ownership (`store`).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::writeback::desired::{self, DesiredKey};
use crate::writeback::lease::{Leases, Owner};
use crate::writeback::status::Written;
use crate::writeback::store::{self, Put};
use std::collections::BTreeSet;
use std::sync::Arc;

pub struct Keys {
    pub etcd: etcd_client::Client,
    pub leases: Arc<Leases>,
    pub metrics: Arc<Metrics>,
    /// This bridge's instance, in every owner marker it writes.
    pub instance: String,
}

/// What one pass did in etcd.
#[derive(Default)]
pub struct Outcome {
    pub written: Written,
    pub put: usize,
    pub deleted: usize,
}

impl Keys {
    /// The owner marker of the object `me`.
    pub fn owner(&self, me: &Owner) -> String {
        desired::owner(&self.instance, &me.0, &me.1)
    }

    /// Puts the keys `me` wants (each on its lease) and deletes those it wanted `before` (by its
    /// status, or by the pool) and no longer does.
    pub async fn write(
        &self,
        me: &Owner,
        want: &[DesiredKey],
        before: &[String],
    ) -> Result<Outcome> {
        let owner = self.owner(me);
        let mut etcd = self.etcd.clone();
        let mut written = Written {
            wanted: want.len(),
            ..Written::default()
        };
        let keys: Vec<String> = want.iter().map(|d| d.key.clone()).collect();
        let placed = self.leases.place(me, &keys).await?;
        let items: Vec<store::Item> = want
            .iter()
            .zip(&placed.leases)
            .map(|(d, (_, lease))| store::Item {
                key: &d.key,
                value: &d.value,
                lease: *lease,
            })
            .collect();
        let results = store::put_all(&mut etcd, &items, &owner, &self.metrics).await?;
        let mut leases = BTreeSet::new();
        let mut put = 0;
        for (i, result) in items.iter().zip(results) {
            match result {
                Put::LeaseGone => {
                    // Dropping the lease names this object (and the others on it) for a pass,
                    // which places its keys on a live lease.
                    self.leases
                        .lost(i.lease, "etcd refused a Put with it")
                        .await;
                    return Err(Error::WriteBack {
                        key: i.key.to_string(),
                        reason: format!(
                            "etcd no longer has lease {:x}; put again under another",
                            i.lease
                        ),
                    });
                }
                Put::Conflict(who) => {
                    self.leases.release(me, i.key).await;
                    written.conflicts.push(format!("{} (held by {who})", i.key))
                }
                Put::Written => {
                    self.metrics.etcd_write("put");
                    put += 1;
                    leases.insert(i.lease);
                    written.registered.push(i.key.to_string());
                }
                Put::Unchanged => {
                    leases.insert(i.lease);
                    written.registered.push(i.key.to_string())
                }
            }
        }
        written.leases = leases.into_iter().collect();
        let wanted: BTreeSet<&str> = want.iter().map(|d| d.key.as_str()).collect();
        let stale: BTreeSet<&String> = before
            .iter()
            .chain(&placed.dropped)
            .filter(|k| !wanted.contains(k.as_str()))
            .collect();
        let mut deleted = 0;
        for k in stale {
            if store::delete(&mut etcd, k, &owner).await? {
                self.metrics.etcd_write("delete");
                deleted += 1;
            }
        }
        Ok(Outcome {
            written,
            put,
            deleted,
        })
    }

    /// Deletes the `keys` that `me` holds (and any other it placed), and frees their slots.
    pub async fn remove(&self, me: &Owner, keys: &BTreeSet<String>) -> Result<()> {
        let owner = self.owner(me);
        let placed = self.leases.keys_of(me).await;
        let all: BTreeSet<&String> = keys.iter().chain(&placed).collect();
        let mut etcd = self.etcd.clone();
        for k in all {
            if store::delete(&mut etcd, k, &owner).await? {
                self.metrics.etcd_write("delete");
            }
        }
        self.leases.forget(me).await;
        Ok(())
    }
}
