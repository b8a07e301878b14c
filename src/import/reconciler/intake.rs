//! Taking in what etcd and the source supervisor say: updates go into the right source's
//! snapshot, and what they changed is noted for the next flush.

use super::Reconciler;
use crate::etcd::{KvEvent, Update};
use crate::metrics::{ReasonLabels, StateLabels};
use crate::snapshot::Change;
use std::time::Instant;

impl Reconciler {
    /// Every prefix of every source is listed, or its etcd has failed to answer: a flush need
    /// not wait for a source that is down (its Services are held or expire on their own).
    pub(super) fn settled(&self) -> bool {
        (self.registries.prefixes()).all(|(s, p)| {
            let key = (s.to_owned(), p.to_owned());
            self.listed.contains(&key) || self.etcd_up.get(&key) == Some(&false)
        })
    }

    /// /readyz follows the flags' registry only: another source down is its own status's news,
    /// and must not hold a rollout of the bridge (or fail every replica) with it. So only the
    /// reconciler of the flags' namespace, which imports it, says.
    fn set_health(&self) {
        let default = crate::source::spec::DEFAULT_SOURCE;
        if !self.registries.configs().any(|c| c.name == default) {
            return;
        }
        let mut ups = (self.etcd_up.iter()).filter(|((s, _), _)| s == default);
        self.health.set_etcd(ups.all(|(_, up)| *up));
    }

    fn set_etcd_up(&mut self, source: String, prefix: String, up: bool, error: Option<String>) {
        self.reports_dirty = true;
        match error {
            Some(e) => self.errors.insert(source.clone(), e),
            None if up => self.errors.remove(&source),
            None => None,
        };
        self.etcd_up.insert((source.clone(), prefix), up);
        self.set_health();
        self.note_connected(&source);
    }

    /// Takes in one update from an etcd watcher.
    pub fn on_update(&mut self, update: Update) {
        let change = match update {
            Update::Listed {
                source,
                prefix,
                kvs,
                revision,
            } => {
                let Some(snapshot) = self.registries.snapshot_mut(&source) else {
                    return; // from a source just removed
                };
                let c = snapshot.reset_prefix(&prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])));
                // A source listed in full for the first time since it (re)started: its Services
                // were held until now, so every one is checked.
                if self.listed.insert((source.clone(), prefix.clone()))
                    && self.treatment(&source) == crate::import::sources::Treatment::Import
                {
                    self.synced = false;
                }
                self.revisions.insert(source.clone(), revision);
                self.set_etcd_up(source, prefix, true, None);
                c
            }
            Update::Events {
                source,
                revision,
                events,
                received,
            } => {
                if self.synced {
                    self.oldest_event.get_or_insert(received);
                }
                let Some(snapshot) = self.registries.snapshot_mut(&source) else {
                    return;
                };
                self.revisions.insert(source.clone(), revision);
                let mut change = Change::default();
                for ev in events {
                    let c = match ev {
                        KvEvent::Put { key, value } => snapshot.put(&key, &value),
                        KvEvent::Delete { key } => snapshot.delete(&key),
                    };
                    change.targets.extend(c.targets);
                    change.newly_skipped.extend(c.newly_skipped);
                }
                change
            }
            Update::Connected {
                source,
                prefix,
                up,
                error,
            } => {
                if self.registries.config(&source).is_some() {
                    self.set_etcd_up(source, prefix, up, error);
                }
                return;
            }
            Update::Source(config) => {
                let name = config.name.clone();
                tracing::info!(source = %name, "importing from this source");
                self.forget_source(&name);
                self.registries.set(*config)
            }
            Update::SourceGone(name) => {
                tracing::info!(source = %name, "source gone: its Services go");
                self.forget_source(&name);
                self.registries.remove(&name)
            }
            Update::SourcesListed => {
                self.sources_known = true;
                self.synced = false;
                return;
            }
        };
        self.note_change(change);
    }

    /// Drops what was known of the watches of `source`: it starts again, or is gone.
    fn forget_source(&mut self, source: &str) {
        self.listed.retain(|(s, _)| s != source);
        self.etcd_up.retain(|(s, _), _| s != source);
        self.down_since.remove(source);
        self.expired.remove(source);
        self.revisions.remove(source);
        self.errors.remove(source);
        self.reports_dirty = true;
        self.set_health();
    }

    pub(super) fn note_change(&mut self, change: Change) {
        for (key, reason) in &change.newly_skipped {
            if *reason == crate::format::SkipReason::OwnRegistration {
                // Expected, not a fault: no warning.
                tracing::debug!(key = %key.escape_debug(), "not importing a written-back registration");
            } else {
                tracing::warn!(key = %key.escape_debug(), reason = reason.label(), "skipping registration: {reason}");
            }
            self.metrics
                .skipped
                .get_or_create(&ReasonLabels {
                    reason: reason.label(),
                })
                .inc();
        }
        let (valid, skipped) = self.registries.counts();
        self.metrics
            .registrations
            .get_or_create(&StateLabels { state: "projected" })
            .set(valid as i64);
        self.metrics
            .registrations
            .get_or_create(&StateLabels { state: "skipped" })
            .set(skipped as i64);
        if change
            .targets
            .iter()
            .any(|t| self.registries.has_target(t) != self.names.contains_key(t))
        {
            self.targets_changed = true;
        }
        if !change.targets.is_empty() {
            self.schedule.changed(Instant::now());
        }
        self.dirty_targets.extend(change.targets);
    }
}
