//! Each source fails on its own: the facts the reconciler keeps about each source's etcd, and
//! carrying out [`crate::import::sources::treatment`] (hold, import or expire its Services).

use super::Reconciler;
use crate::import::sources::{self, Facts, Treatment};
use crate::k8s::Writer;
use crate::source::status::{Reports, ReportsByNamespace, SourceReport};
use std::collections::BTreeSet;
use std::time::Instant;
use tokio::sync::watch;

impl Reconciler {
    fn facts(&self, source: &str) -> Facts {
        let config = self.registries.config(source);
        Facts {
            known: config.is_some(),
            listed: config.is_some()
                && (self.registries.prefixes())
                    .filter(|(s, _)| *s == source)
                    .all(|(s, p)| self.listed.contains(&(s.into(), p.into()))),
            down_since: self.down_since.get(source).copied(),
            stale_after: config.and_then(|c| c.stale_after),
        }
    }

    pub(super) fn treatment(&self, source: &str) -> Treatment {
        sources::treatment(self.facts(source), self.sources_known, Instant::now())
    }

    /// The source of the Service `name`: its wanted target's, else the label of our Service.
    fn source_of_name(&self, writer: &Writer, name: &str) -> Option<String> {
        if let Some(t) = self.by_name.get(name) {
            return Some(t.source.clone());
        }
        let svc = writer.view().service(name)?;
        crate::import::plan::target_of(&svc).map(|t| t.source)
    }

    /// Of `names`, those whose removals are held because their source is not listed (or not
    /// known) yet, and those of stale sources, whose removal no guard holds.
    pub(super) fn by_treatment(
        &self,
        writer: &Writer,
        names: &BTreeSet<String>,
    ) -> (BTreeSet<String>, BTreeSet<String>) {
        let (mut hold, mut expire) = (BTreeSet::new(), BTreeSet::new());
        for name in names {
            let Some(source) = self.source_of_name(writer, name) else {
                continue;
            };
            match self.treatment(&source) {
                Treatment::Hold => hold.insert(name.clone()),
                Treatment::Expire => expire.insert(name.clone()),
                Treatment::Import => false,
            };
        }
        (hold, expire)
    }

    /// Notes the source `source` going down or coming back (every prefix up).
    pub(super) fn note_connected(&mut self, source: &str) {
        let down = (self.etcd_up.iter()).any(|((s, _), up)| s == source && !up);
        match down {
            true => {
                self.down_since
                    .entry(source.to_owned())
                    .or_insert_with(Instant::now);
            }
            false => {
                self.down_since.remove(source);
            }
        }
        self.check_stale();
    }

    /// When the next source becomes stale, for the loop's timer.
    pub fn next_stale(&self) -> Option<Instant> {
        (self.down_since.keys())
            .filter(|s| !self.expired.contains(*s))
            .filter_map(|s| sources::stale_at(self.facts(s)))
            .min()
    }

    /// Sources that became stale, or came back: every Service is checked again.
    pub fn check_stale(&mut self) {
        let names: Vec<String> = (self.registries.configs())
            .map(|c| c.name.clone())
            .chain(self.expired.iter().cloned())
            .collect();
        for source in names {
            let stale = self.treatment(&source) == Treatment::Expire;
            if stale && self.expired.insert(source.clone()) {
                tracing::warn!(%source, stale_after = ?self.registries.config(&source).and_then(|c| c.stale_after), "source unreachable past its staleAfter: removing its endpoints");
            } else if !stale && self.expired.remove(&source) {
                tracing::info!(%source, "stale source answers again: restoring its endpoints");
            } else {
                continue;
            }
            self.gauges.stale_sources.set(self.expired.len() as i64);
            self.reports_dirty = true;
            self.synced = false;
            self.schedule.changed(Instant::now());
        }
    }

    /// Each source's state goes to `tx`, for the EtcdSource status writer.
    pub fn with_reports(mut self, tx: watch::Sender<ReportsByNamespace>) -> Self {
        self.reports = Some(tx);
        self
    }

    /// Sends the state of every source of this namespace, if something changed (`always`:
    /// counts may have changed).
    pub fn publish_reports(&mut self, always: bool) {
        let Some(tx) = &self.reports else { return };
        if !always && !self.reports_dirty {
            return;
        }
        self.reports_dirty = false;
        let reports: Reports = (self.registries.configs())
            .map(|c| {
                let n = c.name.as_str();
                let facts = self.facts(n);
                let up = |p: &crate::snapshot::Source| {
                    self.etcd_up.get(&(n.to_owned(), p.prefix.clone())) == Some(&true)
                };
                let report = SourceReport {
                    connected: !c.prefixes.is_empty() && c.prefixes.iter().all(up),
                    listed: facts.listed,
                    stale: self.expired.contains(n),
                    revision: self.revisions.get(n).copied(),
                    summary: (self.registries.snapshot(n))
                        .map(|s| s.summary())
                        .unwrap_or_default(),
                    last_error: self.errors.get(n).cloned(),
                };
                (c.name.clone(), report)
            })
            .collect();
        let ns = &self.cfg.namespace;
        tx.send_if_modified(|all| {
            let changed = all.get(ns) != Some(&reports);
            all.insert(ns.clone(), reports);
            changed
        });
    }
}
