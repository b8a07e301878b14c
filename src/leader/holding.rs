//! What this replica may write now: the buckets it holds, out of how many. Both ways of leading
//! (one Lease, or a Lease per bucket) publish this, and every writer asks it about each object
//! before writing it, so a bucket's objects have one writer at a time.

use crate::leader::buckets;
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holding {
    buckets: u32,
    held: BTreeSet<u32>,
}

impl Holding {
    /// Holds nothing: a standby, or a replica not yet elected.
    pub fn none(buckets: u32) -> Self {
        Holding {
            buckets: buckets.max(1),
            held: BTreeSet::new(),
        }
    }

    /// Holds every bucket: the single leader, or a run without leader election.
    pub fn all(buckets: u32) -> Self {
        let buckets = buckets.max(1);
        Holding {
            buckets,
            held: (0..buckets).collect(),
        }
    }

    /// Holds exactly `held` (buckets out of range are ignored).
    pub fn of(buckets: u32, held: impl IntoIterator<Item = u32>) -> Self {
        let buckets = buckets.max(1);
        Holding {
            buckets,
            held: held.into_iter().filter(|b| *b < buckets).collect(),
        }
    }

    pub fn buckets(&self) -> u32 {
        self.buckets
    }

    pub fn held(&self) -> &BTreeSet<u32> {
        &self.held
    }

    /// Whether this replica writes anything at all.
    pub fn any(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether this replica writes what has one writer for the whole deployment (the EtcdSource
    /// statuses): the holder of bucket 0.
    pub fn primary(&self) -> bool {
        self.held.contains(&0)
    }

    /// Whether this replica writes the imported Service `name` of `source` (and its slices).
    pub fn service(&self, source: &str, name: &str) -> bool {
        // One bucket (the default): no hash on every Service of every flush.
        self.buckets == 1 && self.any()
            || self
                .held
                .contains(&buckets::of_service(source, name, self.buckets))
    }

    /// Whether this replica writes the keys and status of the EtcdRegistration `namespace/name`.
    pub fn registration(&self, namespace: &str, name: &str) -> bool {
        self.buckets == 1 && self.any()
            || self
                .held
                .contains(&buckets::of_registration(namespace, name, self.buckets))
    }

    /// Whether `self` holds a bucket that `before` did not: the objects of those buckets need a
    /// look (the last holder may have left work undone).
    pub fn gained(&self, before: &Holding) -> bool {
        self.buckets != before.buckets || !self.held.is_subset(&before.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bucket_is_the_single_leader() {
        let leader = Holding::all(1);
        let standby = Holding::none(1);
        assert!(leader.any() && leader.primary());
        assert!(leader.service("default", "greeter-v1"));
        assert!(leader.registration("team-a", "greeter"));
        assert!(!standby.any() && !standby.primary());
        assert!(!standby.service("default", "greeter-v1"));
        assert!(!standby.registration("team-a", "greeter"));
    }

    #[test]
    fn every_object_has_exactly_one_holder_among_a_partition() {
        let n = 5;
        let parts = [
            Holding::of(n, [0, 3]),
            Holding::of(n, [1]),
            Holding::of(n, [2, 4]),
        ];
        for i in 0..200 {
            let name = format!("svc-{i}");
            let writers = parts.iter().filter(|h| h.service("eu", &name)).count();
            assert_eq!(writers, 1, "{name}");
            let writers = parts.iter().filter(|h| h.registration("ns", &name)).count();
            assert_eq!(writers, 1, "ns/{name}");
        }
        assert_eq!(parts.iter().filter(|h| h.primary()).count(), 1);
    }

    #[test]
    fn out_of_range_buckets_are_not_held_and_zero_buckets_means_one() {
        assert_eq!(Holding::of(2, [1, 7]).held(), &BTreeSet::from([1]));
        assert_eq!(Holding::all(0), Holding::all(1));
    }

    #[test]
    fn gaining_is_holding_a_bucket_not_held_before() {
        let a = Holding::of(4, [0, 1]);
        assert!(Holding::of(4, [0, 1, 2]).gained(&a));
        assert!(Holding::of(4, [2]).gained(&a));
        assert!(!Holding::of(4, [1]).gained(&a));
        assert!(!Holding::none(4).gained(&a));
        assert!(!a.gained(&a));
        assert!(
            Holding::none(1).gained(&Holding::none(4)),
            "a new bucket count is a new deal"
        );
    }
}
