//! The registry as the bridge last read it: every key under the watched prefixes, parsed once in
//! its prefix's format.
//!
//! Each target keeps the keys of its registrations, so a Service's endpoints are found without a
//! scan, whatever the format's key layout (for `seed` they are exactly the keys under the
//! Resolver's prefix; for formats that keep the version in the value they are not a key range).

use crate::format::{self, Format, Registration, SkipReason};
use crate::target::{self, Target};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// Read, in this format (the sniffed one under an `auto` prefix).
    Valid(Registration, Format),
    Skipped(SkipReason),
}

/// What one change did, for the reconciler (which targets to re-project) and for reporting.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub targets: BTreeSet<Target>,
    /// A key newly skipped (or skipped for a new reason): reported once, not at every resync.
    pub newly_skipped: Vec<(String, SkipReason)>,
}

impl Change {
    fn merge(&mut self, other: Change) {
        self.targets.extend(other.targets);
        self.newly_skipped.extend(other.newly_skipped);
    }
}

/// A watched prefix and the format of the keys under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub prefix: String,
    pub format: Format,
}

/// A source's keys in brief, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub keys: usize,
    /// Distinct registered addresses.
    pub endpoints: usize,
    pub skipped: BTreeMap<&'static str, usize>,
}

pub struct Snapshot {
    /// The registry these keys are read from; its targets carry its name.
    source: String,
    sources: Vec<Source>,
    aggregate: bool,
    /// `{instance}/`: values whose owner marker starts with it were written back by this bridge
    /// and are not imported (no feedback loop). `None` imports them too.
    skip_owner: Option<String>,
    entries: BTreeMap<Arc<str>, Entry>,
    /// How many entries are skipped, kept as they change (counting is per update).
    skipped: usize,
    /// The keys of each target's valid registrations: a target exists while it has one.
    targets: BTreeMap<Target, BTreeSet<Arc<str>>>,
}

impl Snapshot {
    pub fn new(sources: Vec<Source>, aggregate: bool) -> Self {
        Snapshot {
            source: crate::source::spec::DEFAULT_SOURCE.to_owned(),
            sources,
            aggregate,
            skip_owner: None,
            skipped: 0,
            entries: BTreeMap::new(),
            targets: BTreeMap::new(),
        }
    }

    /// The keys of the source `name` (the flags' `default` unless said).
    pub fn of_source(mut self, name: &str) -> Self {
        self.source = name.to_owned();
        self
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Skips the values this bridge instance wrote back.
    pub fn skip_own(mut self, instance: &str) -> Self {
        self.skip_owner = Some(format!("{instance}/"));
        self
    }

    fn source_of(&self, key: &str) -> Option<&Source> {
        self.sources
            .iter()
            .find(|s| key.starts_with(s.prefix.as_str()))
    }

    fn targets_of(&self, key: &str, entry: &Entry) -> Vec<Target> {
        match (entry, self.source_of(key)) {
            (Entry::Valid(reg, _), Some(source)) => {
                target::targets_of(&self.source, &source.prefix, reg, self.aggregate).collect()
            }
            _ => Vec::new(),
        }
    }

    fn index(&mut self, key: &Arc<str>, targets: &[Target], add: bool) {
        for t in targets {
            if add {
                self.targets
                    .entry(t.clone())
                    .or_default()
                    .insert(key.clone());
            } else if let Some(keys) = self.targets.get_mut(t) {
                keys.remove(key);
                if keys.is_empty() {
                    self.targets.remove(t);
                }
            }
        }
    }

    /// A PUT of `key` with `value`.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Change {
        let Ok(key_str) = std::str::from_utf8(key) else {
            // Not even a key we can name: count it, but it belongs to no target.
            return Change {
                targets: BTreeSet::new(),
                newly_skipped: vec![(
                    String::from_utf8_lossy(key).into_owned(),
                    SkipReason::NotUtf8,
                )],
            };
        };
        let Some(source) = self.source_of(key_str) else {
            return Change::default();
        };
        let own = self
            .skip_owner
            .as_deref()
            .is_some_and(|mine| format::seed::owner_of(value).is_some_and(|o| o.starts_with(mine)));
        // Ownership first: our own write-backs may hold addresses import refuses (loopback for
        // in-cluster clients), and they are not faults to warn about.
        let entry = match format::parse(source.format, &source.prefix, key, value) {
            _ if own => Entry::Skipped(SkipReason::OwnRegistration),
            Ok((reg, format)) => Entry::Valid(reg, format),
            Err(reason) => Entry::Skipped(reason),
        };
        let mut change = Change::default();
        if let Entry::Skipped(reason) = entry {
            let before = self.entries.get(key_str);
            if before != Some(&Entry::Skipped(reason)) {
                change.newly_skipped.push((key_str.to_string(), reason));
            }
        }
        let new_targets = self.targets_of(key_str, &entry);
        let key: Arc<str> = match self.entries.get_key_value(key_str) {
            Some((k, _)) => k.clone(),
            None => Arc::from(key_str),
        };
        let old = self.entries.insert(key.clone(), entry.clone());
        self.skipped += matches!(entry, Entry::Skipped(_)) as usize;
        self.skipped -= matches!(old, Some(Entry::Skipped(_))) as usize;
        if old.as_ref() == Some(&entry) {
            return change;
        }
        let old_targets = old
            .as_ref()
            .map(|o| self.targets_of(key_str, o))
            .unwrap_or_default();
        self.index(&key, &old_targets, false);
        self.index(&key, &new_targets, true);
        change.targets.extend(old_targets);
        change.targets.extend(new_targets);
        change
    }

    /// A DELETE of `key` (removed, or its lease expired).
    pub fn delete(&mut self, key: &[u8]) -> Change {
        let Ok(key_str) = std::str::from_utf8(key) else {
            return Change::default();
        };
        let Some((key, old)) = self.entries.remove_entry(key_str) else {
            return Change::default();
        };
        self.skipped -= matches!(old, Entry::Skipped(_)) as usize;
        let targets = self.targets_of(key_str, &old);
        self.index(&key, &targets, false);
        Change {
            targets: targets.into_iter().collect(),
            newly_skipped: Vec::new(),
        }
    }

    /// Replaces everything under `prefix` with a fresh list (after a relist): keys that are gone
    /// are deletes, so deletes missed while the watch was down (compaction) are recovered.
    pub fn reset_prefix<'a>(
        &mut self,
        prefix: &str,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
    ) -> Change {
        let mut stale: BTreeSet<Arc<str>> = self
            .entries
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut change = Change::default();
        for (k, v) in kvs {
            if let Ok(ks) = std::str::from_utf8(k) {
                stale.remove(ks);
            }
            change.merge(self.put(k, v));
        }
        for k in stale {
            change.merge(self.delete(k.as_bytes()));
        }
        change
    }

    /// The valid registrations of `target`: what a resolver for it would see.
    pub fn registrations<'a>(
        &'a self,
        target: &Target,
    ) -> impl Iterator<Item = &'a Registration> + 'a {
        self.targets
            .get(target)
            .into_iter()
            .flatten()
            .filter_map(|k| match self.entries.get(k) {
                Some(Entry::Valid(r, _)) => Some(r),
                _ => None,
            })
    }

    /// Every target with at least one valid registration.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.keys()
    }

    pub fn has_target(&self, target: &Target) -> bool {
        self.targets.contains_key(target)
    }

    /// Every skipped key with its reason.
    pub fn skipped(&self) -> impl Iterator<Item = (&str, SkipReason)> {
        self.entries.iter().filter_map(|(k, e)| match e {
            Entry::Skipped(r) => Some((k.as_ref(), *r)),
            Entry::Valid(..) => None,
        })
    }

    /// How many valid keys of each prefix were read as each format (what `auto` detected).
    pub fn formats(&self) -> BTreeMap<(String, Format), usize> {
        let mut out = BTreeMap::new();
        for (k, e) in &self.entries {
            if let (Entry::Valid(_, f), Some(s)) = (e, self.source_of(k)) {
                *out.entry((s.prefix.clone(), *f)).or_default() += 1;
            }
        }
        out
    }

    /// (valid, skipped) counts.
    pub fn counts(&self) -> (usize, usize) {
        (self.entries.len() - self.skipped, self.skipped)
    }

    /// What a source's status shows: keys read, distinct endpoints, skipped keys by reason.
    pub fn summary(&self) -> Summary {
        let mut endpoints = std::collections::HashSet::new();
        let mut skipped = BTreeMap::new();
        for e in self.entries.values() {
            match e {
                Entry::Valid(r, _) => {
                    endpoints.insert(r.addr);
                }
                Entry::Skipped(why) => *skipped.entry(why.label()).or_default() += 1,
            }
        }
        Summary {
            keys: self.entries.len(),
            endpoints: endpoints.len(),
            skipped,
        }
    }

    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &str> {
        self.sources.iter().map(|s| s.prefix.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_keys_distinct_endpoints_and_skips_by_reason() {
        let mut s = Snapshot::new(
            vec![Source {
                prefix: "/".into(),
                format: Format::Seed,
            }],
            true,
        );
        s.put(b"/a/v1/10.0.0.1:80", &value("a", "v1", "10.0.0.1:80", 1));
        s.put(b"/b/v1/10.0.0.1:80", &value("b", "v1", "10.0.0.1:80", 1));
        s.put(b"/b/v1/10.0.0.2:80", &value("b", "v1", "10.0.0.2:80", 1));
        s.put(b"/c/v1/x", b"not json");
        let sum = s.summary();
        assert_eq!((sum.keys, sum.endpoints), (4, 2));
        assert_eq!(sum.skipped.values().sum::<usize>(), 1);
    }

    fn value(name: &str, version: &str, addr: &str, weight: i64) -> Vec<u8> {
        format!(r#"{{"name":"{name}","addr":"{addr}","version":"{version}","weight":{weight}}}"#)
            .into_bytes()
    }

    fn seed(prefix: &str) -> Vec<Source> {
        vec![Source {
            prefix: prefix.into(),
            format: Format::Seed,
        }]
    }

    fn target(name: &str, version: Option<&str>) -> Target {
        Target {
            source: "default".into(),
            prefix: "/".into(),
            name: name.into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn versioned_key_belongs_to_its_version_and_the_aggregate() {
        let mut s = Snapshot::new(seed("/"), true);
        let c = s.put(
            b"/greeter/v1/10.0.0.1:50051",
            &value("greeter", "v1", "10.0.0.1:50051", 1),
        );
        assert_eq!(
            c.targets,
            [target("greeter", None), target("greeter", Some("v1"))].into()
        );
        s.put(
            b"/greeter/10.0.0.2:50051",
            &value("greeter", "", "10.0.0.2:50051", 1),
        );
        assert_eq!(s.registrations(&target("greeter", None)).count(), 2);
        assert_eq!(s.registrations(&target("greeter", Some("v1"))).count(), 1);
        // A name that merely starts with the same letters is another service.
        s.put(
            b"/greeterx/10.0.0.3:50051",
            &value("greeterx", "", "10.0.0.3:50051", 1),
        );
        assert_eq!(s.registrations(&target("greeter", None)).count(), 2);
    }

    #[test]
    fn delete_removes_the_target_with_its_last_registration() {
        let mut s = Snapshot::new(seed("/"), false);
        s.put(b"/a/v1/10.0.0.1:1", &value("a", "v1", "10.0.0.1:1", 0));
        assert!(s.has_target(&target("a", Some("v1"))));
        let c = s.delete(b"/a/v1/10.0.0.1:1");
        assert_eq!(c.targets, [target("a", Some("v1"))].into());
        assert_eq!(s.targets().count(), 0);
        assert_eq!(s.delete(b"/a/v1/10.0.0.1:1"), Change::default());
    }

    #[test]
    fn unchanged_put_affects_nothing_and_a_skip_is_reported_once() {
        let mut s = Snapshot::new(seed("/"), true);
        let v = value("a", "", "10.0.0.1:1", 0);
        assert!(!s.put(b"/a/10.0.0.1:1", &v).targets.is_empty());
        assert!(s.put(b"/a/10.0.0.1:1", &v).targets.is_empty());
        let bad = s.put(b"/a/10.0.0.2", b"{not json");
        assert_eq!(bad.newly_skipped.len(), 1);
        assert!(s.put(b"/a/10.0.0.2", b"{not json").newly_skipped.is_empty());
        assert_eq!(s.counts(), (1, 1));
        assert_eq!(s.skipped().count(), 1);
        s.delete(b"/a/10.0.0.2");
        assert_eq!(s.counts(), (1, 0));
    }

    #[test]
    fn own_write_backs_are_not_imported() {
        let mut s = Snapshot::new(seed("/"), false).skip_own("default");
        let own = br#"{"name":"a","addr":"10.0.0.1:1","version":"v1","weight":1,"etcd-bridge.io/owner":"default/ns/reg"}"#;
        let c = s.put(b"/a/v1/10.0.0.1:1", own);
        assert_eq!(c.newly_skipped[0].1, SkipReason::OwnRegistration);
        let loopback = br#"{"name":"a","addr":"127.0.0.1:1","version":"v1","weight":1,"etcd-bridge.io/owner":"default/ns/reg"}"#;
        let c = s.put(b"/a/v1/127.0.0.1:1", loopback);
        assert_eq!(c.newly_skipped[0].1, SkipReason::OwnRegistration);
        let other = br#"{"name":"a","addr":"10.0.0.2:1","version":"v1","weight":1,"etcd-bridge.io/owner":"other/ns/reg"}"#;
        assert!(!s.put(b"/a/v1/10.0.0.2:1", other).targets.is_empty());
    }

    #[test]
    fn a_value_changing_only_in_fields_the_projection_ignores_changes_nothing() {
        // Keepalive re-puts and metadata rewrites must cost no API write: no target changes.
        let mut s = Snapshot::new(
            vec![Source {
                prefix: "/microservices/".into(),
                format: Format::Kratos,
            }],
            true,
        );
        let v = |zone: &str| {
            format!(
                r#"{{"id":"1","name":"h","version":"v1","metadata":{{"zone":"{zone}"}},"endpoints":["grpc://10.0.0.5:9000"]}}"#
            )
        };
        let key = b"/microservices/h/1";
        assert!(!s.put(key, v("a").as_bytes()).targets.is_empty());
        assert!(s.put(key, v("b").as_bytes()).targets.is_empty());
        assert!(s.put(key, v("b").as_bytes()).targets.is_empty());
        // The version lives in the value: the versioned target finds the key without a key range.
        let versioned = Target {
            source: "default".into(),
            prefix: "/microservices/".into(),
            name: "h".into(),
            version: Some("v1".into()),
        };
        assert_eq!(s.registrations(&versioned).count(), 1);
    }

    #[test]
    fn reset_recovers_missed_deletes() {
        let mut s = Snapshot::new(seed("/"), false);
        s.put(b"/a/v1/10.0.0.1:1", &value("a", "v1", "10.0.0.1:1", 0));
        s.put(b"/a/v1/10.0.0.2:1", &value("a", "v1", "10.0.0.2:1", 0));
        let keep = value("a", "v1", "10.0.0.2:1", 0);
        let c = s.reset_prefix("/", [(&b"/a/v1/10.0.0.2:1"[..], &keep[..])]);
        assert_eq!(c.targets, [target("a", Some("v1"))].into());
        assert_eq!(s.registrations(&target("a", Some("v1"))).count(), 1);
    }
}
