//! Every source's snapshot, side by side. Two registries may hold the same key (`/greeter/v1/...`
//! in two regions), so each source keeps its own [`Snapshot`]; their targets carry the source's
//! name, so they never mix. A source that goes (its EtcdSource deleted or refused) takes its
//! targets with it: the planner sees them empty, as for a prefix that empties, and removes their
//! Services through the same guarded path.

use crate::format::Registration;
use crate::snapshot::{Change, Snapshot};
use crate::source::SourceConfig;
use crate::target::Target;
use std::collections::BTreeMap;

pub struct Registries {
    aggregate: bool,
    /// The bridge instance whose written-back keys are not imported.
    skip_own: Option<String>,
    sources: BTreeMap<String, (SourceConfig, Snapshot)>,
}

impl Registries {
    pub fn new(aggregate: bool, skip_own: Option<&str>) -> Self {
        Registries {
            aggregate,
            skip_own: skip_own.map(str::to_owned),
            sources: BTreeMap::new(),
        }
    }

    /// Adds `config`, or replaces the source of its name. A replaced source starts empty (its
    /// watchers list it again); the targets it had are in the change, to be checked.
    pub fn set(&mut self, config: SourceConfig) -> Change {
        let change = self.remove(&config.name);
        let snapshot =
            Snapshot::new(config.prefixes.clone(), self.aggregate).of_source(&config.name);
        let snapshot = match &self.skip_own {
            Some(instance) => snapshot.skip_own(instance),
            None => snapshot,
        };
        self.sources.insert(config.name.clone(), (config, snapshot));
        change
    }

    /// Forgets the source `name`: every target it had is in the change (now without endpoints).
    pub fn remove(&mut self, name: &str) -> Change {
        let Some((_, old)) = self.sources.remove(name) else {
            return Change::default();
        };
        Change {
            targets: old.targets().cloned().collect(),
            newly_skipped: Vec::new(),
        }
    }

    pub fn config(&self, name: &str) -> Option<&SourceConfig> {
        self.sources.get(name).map(|(c, _)| c)
    }

    /// The namePrefix of each source that has one.
    pub fn name_prefixes(&self) -> BTreeMap<String, String> {
        (self.configs())
            .filter(|c| !c.name_prefix.is_empty())
            .map(|c| (c.name.clone(), c.name_prefix.clone()))
            .collect()
    }

    pub fn configs(&self) -> impl Iterator<Item = &SourceConfig> {
        self.sources.values().map(|(c, _)| c)
    }

    /// The snapshot of `source`, if it is known (updates of a source just removed are dropped).
    pub fn snapshot_mut(&mut self, source: &str) -> Option<&mut Snapshot> {
        self.sources.get_mut(source).map(|(_, s)| s)
    }

    pub fn snapshot(&self, source: &str) -> Option<&Snapshot> {
        self.sources.get(source).map(|(_, s)| s)
    }

    /// Every (source, prefix) watched.
    pub fn prefixes(&self) -> impl Iterator<Item = (&str, &str)> {
        self.sources
            .iter()
            .flat_map(|(n, (_, s))| s.prefixes().map(move |p| (n.as_str(), p)))
    }

    /// Every target with a valid registration, in every source.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.sources.values().flat_map(|(_, s)| s.targets())
    }

    pub fn registrations<'a>(
        &'a self,
        target: &'a Target,
    ) -> impl Iterator<Item = &'a Registration> + 'a {
        self.snapshot(&target.source)
            .into_iter()
            .flat_map(move |s| s.registrations(target))
    }

    pub fn has_target(&self, target: &Target) -> bool {
        self.snapshot(&target.source)
            .is_some_and(|s| s.has_target(target))
    }

    /// (valid, skipped) keys over every source.
    pub fn counts(&self) -> (usize, usize) {
        self.sources.values().fold((0, 0), |(v, k), (_, s)| {
            let (sv, sk) = s.counts();
            (v + sv, k + sk)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(name: &str, prefix: &str) -> SourceConfig {
        crate::source::spec::for_tests(name, prefix, "ns")
    }

    fn put(r: &mut Registries, source: &str, key: &str, addr: &str) -> Change {
        let value = format!(r#"{{"name":"greeter","addr":"{addr}","version":"v1","weight":1}}"#);
        r.snapshot_mut(source)
            .unwrap()
            .put(key.as_bytes(), value.as_bytes())
    }

    #[test]
    fn the_same_key_in_two_sources_is_two_targets() {
        let mut r = Registries::new(false, None);
        r.set(config("a", "/"));
        r.set(config("b", "/"));
        let ca = put(&mut r, "a", "/greeter/v1/10.0.0.1:80", "10.0.0.1:80");
        let cb = put(&mut r, "b", "/greeter/v1/10.0.0.2:80", "10.0.0.2:80");
        let (ta, tb) = (ca.targets.first().unwrap(), cb.targets.first().unwrap());
        assert_eq!((ta.source.as_str(), tb.source.as_str()), ("a", "b"));
        assert_eq!(ta.raw_name(), tb.raw_name());
        let addrs = |t: &Target| -> Vec<String> {
            r.registrations(t).map(|g| g.addr.to_string()).collect()
        };
        assert_eq!(addrs(ta), ["10.0.0.1:80"]);
        assert_eq!(addrs(tb), ["10.0.0.2:80"]);
        assert_eq!(r.targets().count(), 2);
        assert_eq!(r.counts(), (2, 0));
        let prefixes: Vec<_> = r.prefixes().collect();
        assert_eq!(prefixes, [("a", "/"), ("b", "/")]);
    }

    #[test]
    fn a_removed_source_takes_its_targets_and_later_updates_are_dropped() {
        let mut r = Registries::new(false, None);
        r.set(config("a", "/"));
        r.set(config("b", "/"));
        let t = put(&mut r, "a", "/greeter/v1/10.0.0.1:80", "10.0.0.1:80").targets;
        put(&mut r, "b", "/greeter/v1/10.0.0.2:80", "10.0.0.2:80");
        let gone = r.remove("a");
        assert_eq!(
            gone.targets, t,
            "its targets are checked, now without endpoints"
        );
        assert!(!r.has_target(t.first().unwrap()));
        assert!(r.snapshot_mut("a").is_none());
        assert_eq!(r.targets().count(), 1, "the other source is untouched");
        // Replacing a source (its spec changed) empties it until it is listed again.
        let again = r.set(config("b", "/other/"));
        assert_eq!(again.targets.len(), 1);
        assert_eq!(r.targets().count(), 0);
    }
}
