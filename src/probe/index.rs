//! Which endpoints are probed, and which Services each one is in: probe results come back per
//! endpoint, and each Service holding the endpoint is checked again.
//!
//! Sized for 10,000 endpoints and more: an endpoint is in one or two Services (a version and its
//! aggregate), so each holds a small sorted `Vec` of one shared copy of each Target. A
//! `BTreeSet<Target>` of one element is a whole B-tree leaf (eleven 96-byte slots), and a clone
//! of the Target per endpoint repeated its strings: about 1 KB per endpoint, 10 MB at 10,000
//! (tests/probe_index_memory.rs).

use crate::projection::{EndpointId, Groups};
use crate::target::Target;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct ProbeIndex {
    by_target: HashMap<Arc<Target>, BTreeSet<EndpointId>>,
    /// Sorted, without duplicates.
    by_endpoint: HashMap<EndpointId, Vec<Arc<Target>>>,
    /// The set of probed endpoints changed since [`ProbeIndex::take_changed`].
    changed: bool,
}

/// Every (ip, port) of `groups`.
pub fn endpoints_of(groups: &Groups) -> BTreeSet<EndpointId> {
    groups
        .iter()
        .flat_map(|(g, addrs)| addrs.iter().map(move |a| (*a, g.port)))
        .collect()
}

impl ProbeIndex {
    /// `target` is probed and has `endpoints` (empty: it is gone or not probed).
    pub fn set(&mut self, target: &Target, endpoints: BTreeSet<EndpointId>) {
        // The one copy of `target` every endpoint of it points to.
        let shared = match self.by_target.get_key_value(target) {
            Some((k, _)) => k.clone(),
            None => Arc::new(target.clone()),
        };
        let old = match endpoints.is_empty() {
            true => self.by_target.remove(target).unwrap_or_default(),
            false => self
                .by_target
                .insert(shared.clone(), endpoints.clone())
                .unwrap_or_default(),
        };
        let find = |targets: &[Arc<Target>]| targets.binary_search_by(|t| (**t).cmp(target));
        for e in old.difference(&endpoints) {
            if let Some(targets) = self.by_endpoint.get_mut(e) {
                if let Ok(i) = find(targets) {
                    targets.remove(i);
                }
                if targets.is_empty() {
                    self.by_endpoint.remove(e);
                    self.changed = true;
                }
            }
        }
        for e in endpoints.difference(&old) {
            let targets = self
                .by_endpoint
                .entry(*e)
                .or_insert_with(|| Vec::with_capacity(1));
            self.changed |= targets.is_empty();
            if let Err(i) = find(targets) {
                targets.insert(i, shared.clone());
            }
        }
    }

    /// The probed targets that hold `endpoint`, in order.
    pub fn targets_of(&self, endpoint: &EndpointId) -> impl Iterator<Item = &Target> {
        self.by_endpoint
            .get(endpoint)
            .into_iter()
            .flatten()
            .map(|t| &**t)
    }

    pub fn contains(&self, endpoint: &EndpointId) -> bool {
        self.by_endpoint.contains_key(endpoint)
    }

    /// Every probed endpoint, once.
    pub fn endpoints(&self) -> impl Iterator<Item = &EndpointId> {
        self.by_endpoint.keys()
    }

    /// Whether the set of probed endpoints changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    pub fn clear(&mut self) {
        self.changed |= !self.by_endpoint.is_empty();
        self.by_target.clear();
        self.by_endpoint.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::IpAddr;

    fn target(name: &str) -> Target {
        Target {
            source: "default".into(),
            prefix: "/".into(),
            name: name.into(),
            version: None,
        }
    }

    fn ep(n: u8) -> EndpointId {
        (IpAddr::from([10, 0, 0, n]), 80)
    }

    fn eps(list: &[u8]) -> BTreeSet<EndpointId> {
        list.iter().map(|n| ep(*n)).collect()
    }

    #[test]
    fn an_endpoint_shared_by_two_services_is_probed_once_and_maps_to_both() {
        let mut i = ProbeIndex::default();
        i.set(&target("a"), eps(&[1, 2]));
        i.set(&target("b"), eps(&[2]));
        assert!(i.take_changed());
        assert_eq!(i.endpoints().count(), 2);
        let of2: Vec<&Target> = {
            let mut v: Vec<&Target> = i.targets_of(&ep(2)).collect();
            v.sort();
            v
        };
        assert_eq!(of2, [&target("a"), &target("b")]);
        // b no longer has it: still probed for a, and the probed set is unchanged.
        i.set(&target("b"), eps(&[]));
        assert!(!i.take_changed());
        assert_eq!(i.targets_of(&ep(2)).collect::<Vec<_>>(), [&target("a")]);
        i.set(&target("a"), eps(&[1]));
        assert!(i.take_changed());
        assert!(!i.contains(&ep(2)));
        i.clear();
        assert!(i.take_changed());
        assert_eq!(i.endpoints().count(), 0);
    }

    proptest! {
        /// Whatever the order of updates, the index is exactly the union of the last sets.
        #[test]
        fn the_index_is_the_union_of_the_last_sets(
            updates in proptest::collection::vec(
                (0u8..4, proptest::collection::btree_set(0u8..8, 0..5)), 0..30),
        ) {
            let mut i = ProbeIndex::default();
            let mut last: HashMap<u8, BTreeSet<u8>> = HashMap::new();
            for (t, set) in updates {
                i.set(&target(&t.to_string()), set.iter().map(|n| ep(*n)).collect());
                last.insert(t, set);
            }
            let union: BTreeSet<EndpointId> = last.values().flatten().map(|n| ep(*n)).collect();
            let got: BTreeSet<EndpointId> = i.endpoints().copied().collect();
            prop_assert_eq!(&got, &union);
            for e in &union {
                let want: BTreeSet<Target> = last
                    .iter()
                    .filter(|(_, s)| s.iter().any(|n| ep(*n) == *e))
                    .map(|(t, _)| target(&t.to_string()))
                    .collect();
                let have: BTreeSet<Target> = i.targets_of(e).cloned().collect();
                prop_assert_eq!(have, want);
            }
        }
    }
}
