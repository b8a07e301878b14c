//! Spreads each group's endpoints over EndpointSlices with little churn, the way Kubernetes'
//! EndpointSlice controller does: endpoints stay in the slice they are in, slices already being
//! rewritten take new endpoints first, and an untouched slice is only written to when it can take
//! all that is left. Every write is a watch event for every proxy in the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::labels;
use crate::naming::slice_name;
use crate::projection::{AddressType, GroupKey, Groups};

/// One slice: its name, its group, and its addresses (sorted, distinct).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlicePlan {
    pub name: String,
    pub group: GroupKey,
    pub addrs: Vec<IpAddr>,
}

/// Reads back what [`crate::projection::slice`] wrote; `None` for a slice it could not have
/// written (no name, FQDN, not exactly one port, no weight, an address that is not an IP).
pub fn from_object(slice: &EndpointSlice) -> Option<SlicePlan> {
    let name = slice.metadata.name.clone()?;
    let address_type = AddressType::parse(&slice.address_type)?;
    let [port] = slice.ports.as_deref()? else {
        return None;
    };
    let port = u16::try_from(port.port?).ok().filter(|&p| p != 0)?;
    let weight = slice
        .metadata
        .annotations
        .as_ref()?
        .get(labels::ANNOTATION_WEIGHT)?
        .parse()
        .ok()?;
    let mut addrs = slice
        .endpoints
        .iter()
        .flat_map(|endpoint| &endpoint.addresses)
        .map(|address| address.parse().ok())
        .collect::<Option<Vec<IpAddr>>>()?;
    addrs.sort_unstable();
    addrs.dedup();
    Some(SlicePlan {
        name,
        group: GroupKey {
            address_type,
            port,
            weight,
        },
        addrs,
    })
}

/// A slice being planned; `changed` once it differs from what the cluster holds.
struct Draft {
    name: String,
    addrs: Vec<IpAddr>,
    changed: bool,
}

/// The slices that should exist for `service`, given the `existing` ones (in any order). Only the
/// slices to keep are returned, sorted by name; slices left out are to be deleted.
pub fn plan(
    service: &str,
    groups: &Groups,
    existing: &[SlicePlan],
    max_per_slice: usize,
) -> Vec<SlicePlan> {
    // A zero limit would never place anything.
    let max = max_per_slice.max(1);
    let mut by_group: BTreeMap<GroupKey, Vec<&SlicePlan>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut sorted: Vec<&SlicePlan> = existing.iter().collect();
    sorted.sort_by(|a, b| (&a.name, &a.group, &a.addrs).cmp(&(&b.name, &b.group, &b.addrs)));
    for slice in sorted {
        // Names are unique in a namespace; tolerate a caller that repeats one.
        if seen.insert(slice.name.as_str()) {
            by_group.entry(slice.group).or_default().push(slice);
        }
    }
    // New slices never take the name of an existing one, even one about to be deleted.
    let mut taken: BTreeSet<String> = seen.into_iter().map(str::to_owned).collect();

    let mut out = Vec::new();
    for (group, wanted) in groups {
        let current = by_group.get(group).map_or(&[][..], Vec::as_slice);
        for draft in plan_group(service, group, wanted, current, max, &mut taken) {
            if !draft.addrs.is_empty() {
                out.push(SlicePlan {
                    name: draft.name,
                    group: *group,
                    addrs: draft.addrs,
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn plan_group(
    service: &str,
    group: &GroupKey,
    wanted: &BTreeSet<IpAddr>,
    current: &[&SlicePlan],
    max: usize,
    taken: &mut BTreeSet<String>,
) -> Vec<Draft> {
    // Keep every wanted endpoint where it is, once, up to the limit; the rest is to be placed.
    let mut placed = BTreeSet::new();
    let mut drafts: Vec<Draft> = current
        .iter()
        .map(|slice| {
            // In address order, so which endpoints overflow does not depend on the input's order.
            let mut own = slice.addrs.clone();
            own.sort_unstable();
            own.dedup();
            let mut addrs = Vec::new();
            for ip in own {
                if addrs.len() < max && wanted.contains(&ip) && placed.insert(ip) {
                    addrs.push(ip);
                }
            }
            let changed = addrs != slice.addrs;
            Draft {
                name: slice.name.clone(),
                addrs,
                changed,
            }
        })
        .collect();
    let mut rest: Vec<IpAddr> = wanted.difference(&placed).copied().collect();

    // Slices that are rewritten anyway take new endpoints first, fullest first.
    let mut order: Vec<usize> = (0..drafts.len()).filter(|&i| drafts[i].changed).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(drafts[i].addrs.len()));
    for i in order {
        let room = max - drafts[i].addrs.len();
        let take = room.min(rest.len());
        drafts[i].addrs.extend(rest.drain(..take));
    }

    // Whole new slices for what fills them.
    let mut index = 0;
    let mut new_slice = |addrs: Vec<IpAddr>| {
        let name = loop {
            let name = slice_name(service, group, index);
            index += 1;
            if taken.insert(name.clone()) {
                break name;
            }
        };
        Draft {
            name,
            addrs,
            changed: true,
        }
    };
    while rest.len() >= max {
        let chunk: Vec<IpAddr> = rest.drain(..max).collect();
        drafts.push(new_slice(chunk));
    }

    // The remainder goes whole into the fullest untouched slice with room for it, else a new one.
    if !rest.is_empty() {
        let fits = drafts
            .iter_mut()
            .filter(|d| !d.changed && d.addrs.len() + rest.len() <= max)
            .min_by_key(|d| std::cmp::Reverse(d.addrs.len()));
        match fits {
            Some(draft) => draft.addrs.append(&mut rest),
            None => drafts.push(new_slice(rest)),
        }
    }

    for draft in &mut drafts {
        draft.addrs.sort_unstable();
    }
    drafts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{ProjectionConfig, slice};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const G1: GroupKey = GroupKey {
        address_type: AddressType::IPv4,
        port: 80,
        weight: 1,
    };

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn groups_of(group: GroupKey, range: std::ops::Range<u32>) -> Groups {
        Groups::from([(group, range.map(ip).collect())])
    }

    fn sizes(plans: &[SlicePlan]) -> Vec<usize> {
        plans.iter().map(|p| p.addrs.len()).collect()
    }

    /// Every endpoint once, in a slice of its group, no slice empty or over the limit.
    fn check_invariants(groups: &Groups, plans: &[SlicePlan], max: usize) {
        let mut seen: BTreeSet<(GroupKey, IpAddr)> = BTreeSet::new();
        for p in plans {
            assert!(!p.addrs.is_empty() && p.addrs.len() <= max.max(1), "{p:?}");
            assert!(p.addrs.windows(2).all(|w| w[0] < w[1]), "{p:?}");
            for &a in &p.addrs {
                assert!(groups[&p.group].contains(&a));
                assert!(seen.insert((p.group, a)), "{a} twice");
            }
        }
        let total: usize = groups.values().map(BTreeSet::len).sum();
        assert_eq!(seen.len(), total);
        let names: BTreeSet<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names.len(), plans.len());
        assert!(plans.windows(2).all(|w| w[0].name < w[1].name));
    }

    #[test]
    fn two_hundred_fifty_endpoints_make_three_slices() {
        let groups = groups_of(G1, 0..250);
        let plans = plan("greeter", &groups, &[], 100);
        check_invariants(&groups, &plans, 100);
        let mut s = sizes(&plans);
        s.sort_unstable();
        assert_eq!(s, vec![50, 100, 100]);
        let names: BTreeSet<String> = (0..3).map(|i| slice_name("greeter", &G1, i)).collect();
        assert_eq!(
            plans
                .iter()
                .map(|p| p.name.clone())
                .collect::<BTreeSet<_>>(),
            names
        );
    }

    #[test]
    fn removed_endpoints_leave_and_empty_slices_go() {
        let plans = plan("s", &groups_of(G1, 0..150), &[], 100);
        let smaller = groups_of(G1, 0..100);
        let next = plan("s", &smaller, &plans, 100);
        check_invariants(&smaller, &next, 100);
        assert_eq!(next, vec![plans[0].clone()]);
        assert!(plan("s", &Groups::new(), &plans, 100).is_empty());
    }

    #[test]
    fn new_endpoints_fill_a_slice_being_rewritten_first() {
        let existing = vec![
            SlicePlan {
                name: "a".into(),
                group: G1,
                addrs: vec![ip(0), ip(1), ip(2)],
            },
            SlicePlan {
                name: "b".into(),
                group: G1,
                addrs: vec![ip(3), ip(4)],
            },
        ];
        // ip(4) leaves b, so b takes ip(9) rather than fuller, untouched a.
        let groups = Groups::from([(G1, [0, 1, 2, 3, 9].map(ip).into())]);
        let next = plan("s", &groups, &existing, 4);
        assert_eq!(next[0], existing[0]);
        assert_eq!(next[1].addrs, vec![ip(3), ip(9)]);
    }

    #[test]
    fn lowered_limit_moves_overflow_out() {
        let plans = plan("s", &groups_of(G1, 0..10), &[], 10);
        let next = plan("s", &groups_of(G1, 0..10), &plans, 4);
        check_invariants(&groups_of(G1, 0..10), &next, 4);
        assert_eq!(sizes(&next).iter().sum::<usize>(), 10);
        assert!(next.iter().any(|p| p.name == plans[0].name));
    }

    #[test]
    fn vanished_group_is_dropped_and_duplicates_kept_once() {
        let other = GroupKey { weight: 9, ..G1 };
        let existing = vec![
            SlicePlan {
                name: "x".into(),
                group: other,
                addrs: vec![ip(1)],
            },
            SlicePlan {
                name: "b".into(),
                group: G1,
                addrs: vec![ip(1), ip(2)],
            },
            SlicePlan {
                name: "a".into(),
                group: G1,
                addrs: vec![ip(1)],
            },
        ];
        let groups = groups_of(G1, 1..3);
        let next = plan("s", &groups, &existing, 10);
        check_invariants(&groups, &next, 10);
        assert_eq!(
            next,
            vec![
                SlicePlan {
                    name: "a".into(),
                    group: G1,
                    addrs: vec![ip(1)],
                },
                SlicePlan {
                    name: "b".into(),
                    group: G1,
                    addrs: vec![ip(2)],
                },
            ]
        );
    }

    #[test]
    fn new_slices_skip_existing_names() {
        let name0 = slice_name("s", &G1, 0);
        let other = GroupKey { weight: 2, ..G1 };
        // A slice of a vanished group holds the name; it is deleted, not reused.
        let existing = vec![SlicePlan {
            name: name0.clone(),
            group: other,
            addrs: vec![ip(1)],
        }];
        let next = plan("s", &groups_of(G1, 0..1), &existing, 10);
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].name, slice_name("s", &G1, 1));
    }

    #[test]
    fn from_object_reads_back_a_projected_slice() {
        let cfg = ProjectionConfig {
            namespace: "ns".into(),
            instance: "i".into(),
            headless: false,
            max_endpoints_per_slice: 100,
            cilium_weight: true,
            buckets: 1,
        };
        let group = GroupKey {
            address_type: AddressType::IPv6,
            port: 50051,
            weight: -3,
        };
        let addrs: Vec<IpAddr> = vec!["fd00::1".parse().unwrap(), "fd00::2".parse().unwrap()];
        let object = slice(
            "default",
            "svc",
            "svc-x-0",
            &group,
            &addrs,
            &Default::default(),
            &cfg,
        );
        let want = SlicePlan {
            name: "svc-x-0".into(),
            group,
            addrs,
        };
        assert_eq!(from_object(&object), Some(want));

        let mut fqdn = object.clone();
        fqdn.address_type = "FQDN".into();
        assert_eq!(from_object(&fqdn), None);
        let mut no_weight = object.clone();
        no_weight.metadata.annotations = None;
        assert_eq!(from_object(&no_weight), None);
        let mut two_ports = object.clone();
        two_ports.ports.as_mut().unwrap().push(Default::default());
        assert_eq!(from_object(&two_ports), None);
        let mut bad_addr = object;
        bad_addr.endpoints[0].addresses[0] = "host.example".into();
        assert_eq!(from_object(&bad_addr), None);
    }

    fn groups_strategy() -> impl Strategy<Value = Groups> {
        proptest::collection::btree_map(
            (0u16..2, 0i64..2).prop_map(|(port, weight)| GroupKey {
                address_type: AddressType::IPv4,
                port: 80 + port,
                weight,
            }),
            proptest::collection::btree_set((0u32..60).prop_map(ip), 1..40),
            0..3,
        )
    }

    fn existing_strategy() -> impl Strategy<Value = Vec<SlicePlan>> {
        proptest::collection::vec(
            (
                "[ab][0-3]",
                0u16..2,
                0i64..3,
                proptest::collection::vec((0u32..60).prop_map(ip), 0..12),
            )
                .prop_map(|(name, port, weight, addrs)| SlicePlan {
                    name,
                    group: GroupKey {
                        address_type: AddressType::IPv4,
                        port: 80 + port,
                        weight,
                    },
                    addrs,
                }),
            0..6,
        )
    }

    /// How many slices differ between two plans (added, removed or rewritten).
    fn churn(before: &[SlicePlan], after: &[SlicePlan]) -> usize {
        let index = |plans: &[SlicePlan]| -> BTreeMap<String, SlicePlan> {
            plans.iter().map(|p| (p.name.clone(), p.clone())).collect()
        };
        let (before, after) = (index(before), index(after));
        let names: BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        names
            .into_iter()
            .filter(|name| before.get(*name) != after.get(*name))
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn plans_are_complete_bounded_and_idempotent(
            groups in groups_strategy(),
            existing in existing_strategy(),
            max in 1usize..8,
        ) {
            let first = plan("svc", &groups, &existing, max);
            check_invariants(&groups, &first, max);
            prop_assert_eq!(plan("svc", &groups, &first, max), first.clone());
            let mut reversed = existing.clone();
            reversed.reverse();
            prop_assert_eq!(plan("svc", &groups, &reversed, max), first);
        }

        #[test]
        fn one_endpoint_more_or_less_changes_at_most_one_slice(
            groups in groups_strategy(),
            existing in existing_strategy(),
            max in 1usize..8,
            extra in (0u32..70).prop_map(ip),
            pick in any::<proptest::sample::Index>(),
            add in any::<bool>(),
        ) {
            let stable = plan("svc", &groups, &existing, max);
            let mut changed = groups.clone();
            if add {
                changed.entry(G1).or_default().insert(extra);
            } else if !groups.is_empty() {
                let all: Vec<(GroupKey, IpAddr)> = groups
                    .iter()
                    .flat_map(|(g, ips)| ips.iter().map(move |&a| (*g, a)))
                    .collect();
                let (g, a) = all[pick.index(all.len())];
                let set = changed.get_mut(&g).unwrap();
                set.remove(&a);
                if set.is_empty() {
                    changed.remove(&g);
                }
            }
            let next = plan("svc", &changed, &stable, max);
            check_invariants(&changed, &next, max);
            prop_assert!(churn(&stable, &next) <= 1, "{stable:?} -> {next:?}");
        }

        #[test]
        fn plans_from_scratch_are_deterministic(groups in groups_strategy(), max in 1usize..8) {
            let first = plan("svc", &groups, &[], max);
            check_invariants(&groups, &first, max);
            prop_assert_eq!(plan("svc", &groups, &[], max), first);
        }
    }
}
