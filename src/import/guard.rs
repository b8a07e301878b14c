//! The mass-deletion guard: when one flush would remove a large share of every projected
//! endpoint (an etcd wiped or restored from an old snapshot, a prefix typo in a rollout), the
//! removals are held until a second, consistent read of etcd confirms them.
//!
//! Only removals are held. Additions and weight changes of the same Services go out at once: a
//! redeploy that replaces every instance must not leave the Service showing only the dead ones
//! until the confirmation.

use crate::projection::Groups;
use crate::slicing::SlicePlan;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// When the guard trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The share of all projected endpoints one flush may remove ...
    pub max_ratio: f64,
    /// ... unless it removes fewer endpoints than this.
    pub min: usize,
}

/// (ip, port) of every endpoint `groups` wants.
fn wanted_endpoints(groups: Option<&Groups>) -> BTreeSet<(IpAddr, u16)> {
    groups
        .into_iter()
        .flatten()
        .flat_map(|(g, addrs)| addrs.iter().map(move |a| (*a, g.port)))
        .collect()
}

/// How many endpoints of `current` (a Service's slices as the cluster has them) `wanted` no
/// longer has. An endpoint whose weight changed is not removed: it only moves.
pub fn removals(wanted: Option<&Groups>, current: &[SlicePlan]) -> usize {
    let wanted = wanted_endpoints(wanted);
    current
        .iter()
        .flat_map(|p| p.addrs.iter().map(move |a| (*a, p.group.port)))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|e| !wanted.contains(e))
        .count()
}

/// Whether removing `removed` of `total` endpoints in one flush trips the guard. `total` is only
/// asked for when `removed` is large enough to matter: counting is a scan of every slice.
pub fn trips(limits: Limits, removed: usize, total: impl FnOnce() -> usize) -> bool {
    removed >= limits.min.max(1) && removed as f64 > limits.max_ratio * total() as f64
}

/// Whether this flush holds its removals. Once holding, the guard holds until the confirming read
/// (or until nothing would be removed any more): additions that go out meanwhile grow the total,
/// and must not dilute the ratio into releasing unconfirmed deletions.
pub fn holds(limits: Limits, removed: usize, total: impl FnOnce() -> usize, holding: bool) -> bool {
    removed > 0 && (holding || trips(limits, removed, total))
}

/// What a Service whose removals are held shows meanwhile: everything `wanted` has, plus each
/// endpoint `current` has that `wanted` dropped, with the weight it has now.
pub fn keep_removed(wanted: Option<&Groups>, current: &[SlicePlan]) -> Groups {
    let wanted_eps = wanted_endpoints(wanted);
    let mut groups = wanted.cloned().unwrap_or_default();
    for p in current {
        for a in &p.addrs {
            if !wanted_eps.contains(&(*a, p.group.port)) {
                groups.entry(p.group).or_default().insert(*a);
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{AddressType, GroupKey};
    use proptest::prelude::*;

    fn key(port: u16, weight: i64) -> GroupKey {
        GroupKey {
            address_type: AddressType::IPv4,
            port,
            weight,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn groups(entries: &[(GroupKey, &[u8])]) -> Groups {
        entries
            .iter()
            .map(|(k, ips)| (*k, ips.iter().map(|n| ip(*n)).collect()))
            .collect()
    }

    fn slice(name: &str, group: GroupKey, ips: &[u8]) -> SlicePlan {
        SlicePlan {
            name: name.into(),
            group,
            addrs: ips.iter().map(|n| ip(*n)).collect(),
        }
    }

    #[test]
    fn a_weight_change_is_not_a_removal() {
        let current = [slice("s1", key(80, 1), &[1, 2])];
        let wanted = groups(&[(key(80, 5), &[1]), (key(80, 1), &[2])]);
        assert_eq!(removals(Some(&wanted), &current), 0);
        assert_eq!(removals(None, &current), 2);
        // Same ip on another port is another endpoint.
        let moved = groups(&[(key(81, 1), &[1, 2])]);
        assert_eq!(removals(Some(&moved), &current), 2);
    }

    #[test]
    fn trips_only_past_both_limits_and_counts_only_when_needed() {
        let limits = Limits {
            max_ratio: 0.5,
            min: 10,
        };
        assert!(!trips(limits, 9, || panic!(
            "not counted below the minimum"
        )));
        assert!(trips(limits, 10, || 19));
        assert!(!trips(limits, 10, || 20));
        // A minimum of 0 still needs something removed.
        let zero = Limits {
            max_ratio: 0.0,
            min: 0,
        };
        assert!(!trips(zero, 0, || 0));
        assert!(trips(zero, 1, || 100));
    }

    #[test]
    fn once_holding_additions_do_not_dilute_the_guard_into_releasing() {
        // A replaced etcd: 4 of 4 endpoints would go (trips); then the new registrations are
        // written (allowed while holding), and the total doubles. 4 of 8 no longer trips on
        // its own, but the deletions are still unconfirmed: they stay held.
        let limits = Limits {
            max_ratio: 0.5,
            min: 1,
        };
        assert!(holds(limits, 4, || 4, false));
        assert!(!trips(limits, 4, || 8));
        assert!(holds(limits, 4, || 8, true));
        // The keys came back: nothing to hold.
        assert!(!holds(limits, 0, || 8, true));
    }

    #[test]
    fn a_redeploy_holds_the_old_instances_and_shows_the_new_ones_at_once() {
        // Issue 10, hole 2: every instance replaced at once. Before, the whole Service was held,
        // new instances included, until the confirmation (30 s by default).
        let current = [slice("s1", key(80, 1), &[1, 2, 3])];
        let wanted = groups(&[(key(80, 1), &[4, 5, 6])]);
        let shown = keep_removed(Some(&wanted), &current);
        assert_eq!(shown, groups(&[(key(80, 1), &[1, 2, 3, 4, 5, 6])]));
        // A kept endpoint keeps its old weight; a re-weighted one shows only the new weight.
        let current = [slice("s1", key(80, 1), &[1, 2])];
        let wanted = groups(&[(key(80, 3), &[2])]);
        let shown = keep_removed(Some(&wanted), &current);
        assert_eq!(shown, groups(&[(key(80, 1), &[1]), (key(80, 3), &[2])]));
        // Nothing wanted at all: the Service keeps what it has.
        assert_eq!(
            keep_removed(None, &current),
            groups(&[(key(80, 1), &[1, 2])])
        );
    }

    fn groups_strategy() -> impl Strategy<Value = Groups> {
        proptest::collection::btree_map(
            (78u16..82, 0i64..3).prop_map(|(p, w)| key(p, w)),
            proptest::collection::btree_set((1u8..12).prop_map(ip), 1..5),
            0..4,
        )
    }

    proptest! {
        #[test]
        fn holding_removes_nothing_and_adds_everything_wanted(
            wanted in proptest::option::of(groups_strategy()),
            current in groups_strategy(),
        ) {
            let current: Vec<SlicePlan> = current
                .into_iter()
                .enumerate()
                .map(|(i, (g, a))| SlicePlan { name: format!("s{i}"), group: g, addrs: a.into_iter().collect() })
                .collect();
            let shown = keep_removed(wanted.as_ref(), &current);
            // Nothing the cluster has is removed, and everything wanted is there.
            prop_assert_eq!(removals(Some(&shown), &current), 0);
            for (g, addrs) in wanted.iter().flatten() {
                for a in addrs {
                    prop_assert!(shown.get(g).is_some_and(|s| s.contains(a)));
                }
            }
            // Nothing else is invented: the endpoints shown are those wanted and those held.
            let mut both = wanted_endpoints(wanted.as_ref());
            both.extend(current.iter().flat_map(|p| p.addrs.iter().map(|a| (*a, p.group.port))));
            prop_assert_eq!(wanted_endpoints(Some(&shown)), both);
        }
    }
}
