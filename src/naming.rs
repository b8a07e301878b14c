//! Kubernetes names for targets and slices: deterministic, valid DNS-1035 labels, and unique.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use crate::projection::GroupKey;
use crate::target::Target;

/// Longest DNS label (and Service name).
pub const MAX_LABEL: usize = 63;

/// The DNS-1035 label for `raw`. A name that already is one is kept as it is; any other gets a
/// hash of `raw` appended, so that two raw names that sanitise alike still differ.
pub fn dns_label(raw: &str) -> String {
    let base = sanitize(raw);
    if base == raw && base.len() <= MAX_LABEL {
        base
    } else {
        with_hash(&base, &hash8(raw.as_bytes()))
    }
}

/// Lowercases, turns every run of other characters into one `-`, trims `-`, and makes sure the
/// label starts with a letter. Never empty; may be longer than 63.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_end_matches('-');
    match trimmed.chars().next() {
        None => "svc".to_owned(),
        Some(c) if c.is_ascii_lowercase() => trimmed.to_owned(),
        Some(_) => format!("s-{trimmed}"),
    }
}

/// `{base cut}-{hash}`, at most 63 characters, never with a doubled or dangling `-`.
fn with_hash(base: &str, hash: &str) -> String {
    format!("{}-{hash}", cut(base, MAX_LABEL - 1 - hash.len()))
}

/// The longest prefix of `s` of at most `max` bytes, without a trailing `-`.
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].trim_end_matches('-')
}

/// The first 8 hex characters of the SHA-256 of `data`.
fn hash8(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(8);
    for byte in &digest[..4] {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Targets that wanted the same name: `winner` has it, each of `losers` got another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collision {
    pub name: String,
    pub winner: Target,
    pub losers: Vec<Target>,
}

/// The `attempt`-th name `target` tries: first its plain label, then labels made unique with
/// hashes of its full identity (and, should even those collide, of the attempt number).
fn candidate(target: &Target, attempt: u32) -> String {
    if attempt == 0 {
        return dns_label(&target.raw_name());
    }
    let mut identity = format!(
        "{}{}\0{}",
        target.prefix,
        target.name,
        target.version.as_deref().unwrap_or("")
    );
    if attempt > 1 {
        let _ = write!(identity, "\0{attempt}");
    }
    with_hash(&sanitize(&target.raw_name()), &hash8(identity.as_bytes()))
}

/// Names every target, uniquely. Targets compete for names in rounds: in each round every
/// unnamed target asks for its next candidate; a name already given stays with its holder, and
/// among new claimants the smallest target wins. The result depends only on the set of targets,
/// not on their order. Every contested name is reported.
pub fn assign<'a>(
    targets: impl IntoIterator<Item = &'a Target>,
) -> (BTreeMap<Target, String>, Vec<Collision>) {
    let mut pending: BTreeSet<&Target> = targets.into_iter().collect();
    let mut holders: BTreeMap<String, &Target> = BTreeMap::new();
    let mut collisions = Vec::new();
    let mut attempt = 0;
    while !pending.is_empty() {
        let mut claims: BTreeMap<String, Vec<&Target>> = BTreeMap::new();
        // `pending` is ordered, so each claimant list is too.
        for &target in &pending {
            claims
                .entry(candidate(target, attempt))
                .or_default()
                .push(target);
        }
        let mut unnamed = BTreeSet::new();
        for (name, claimants) in claims {
            let (winner, losers) = match holders.get(&name) {
                Some(&holder) => (holder, &claimants[..]),
                None => {
                    holders.insert(name.clone(), claimants[0]);
                    (claimants[0], &claimants[1..])
                }
            };
            if !losers.is_empty() {
                unnamed.extend(losers.iter().copied());
                collisions.push(Collision {
                    name,
                    winner: winner.clone(),
                    losers: losers.iter().map(|&t| t.clone()).collect(),
                });
            }
        }
        pending = unnamed;
        attempt += 1;
    }
    let names = holders
        .into_iter()
        .map(|(name, target)| (target.clone(), name))
        .collect();
    (names, collisions)
}

/// The stable name of the `index`-th slice of one (service, group). The hash covers the service
/// too, so two long service names cut to the same prefix still get distinct slice names.
pub fn slice_name(service: &str, group: &GroupKey, index: u32) -> String {
    let identity = format!(
        "{service}\0{}\0{}\0{}",
        group.address_type.as_str(),
        group.port,
        group.weight
    );
    let suffix = format!("-{}-{index}", hash8(identity.as_bytes()));
    format!("{}{suffix}", cut(service, MAX_LABEL - suffix.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::AddressType;
    use proptest::prelude::*;

    /// Whether `s` is a DNS-1035 label: what a Service name must be.
    fn is_dns1035_label(s: &str) -> bool {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= MAX_LABEL
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    }

    fn t(prefix: &str, name: &str, version: Option<&str>) -> Target {
        Target {
            prefix: prefix.into(),
            name: name.into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn valid_names_stay_as_they_are() {
        for raw in ["greeter", "a", "greeter-v1", "a1-b2", &"a".repeat(63)] {
            assert_eq!(dns_label(raw), raw);
        }
    }

    #[test]
    fn changed_names_get_a_hash_of_the_raw_name() {
        let h = |raw: &str| hash8(raw.as_bytes());
        assert_eq!(dns_label("Greeter"), format!("greeter-{}", h("Greeter")));
        assert_eq!(
            dns_label("my_svc.v1"),
            format!("my-svc-v1-{}", h("my_svc.v1"))
        );
        assert_eq!(dns_label("__a__b__"), format!("a-b-{}", h("__a__b__")));
        assert_eq!(dns_label("1abc"), format!("s-1abc-{}", h("1abc")));
        assert_eq!(dns_label("-1"), format!("s-1-{}", h("-1")));
        assert_eq!(dns_label(""), format!("svc-{}", h("")));
        assert_eq!(dns_label("---"), format!("svc-{}", h("---")));
        assert_eq!(dns_label("日本"), format!("svc-{}", h("日本")));
        assert_eq!(dns_label("greeter-"), format!("greeter-{}", h("greeter-")));
        assert_ne!(dns_label("a.b"), dns_label("a_b"));
    }

    #[test]
    fn long_names_are_cut_to_63() {
        let long = "a".repeat(64);
        let label = dns_label(&long);
        assert_eq!(
            label,
            format!("{}-{}", "a".repeat(54), hash8(long.as_bytes()))
        );
        assert_eq!(label.len(), 63);
        // A cut that lands on a `-` drops it rather than doubling it before the hash.
        let dashed = format!("{}-b{}", "a".repeat(53), "c".repeat(20));
        let label = dns_label(&dashed);
        assert_eq!(
            label,
            format!("{}-{}", "a".repeat(53), hash8(dashed.as_bytes()))
        );
    }

    #[test]
    fn version_and_dashed_aggregate_collide_deterministically() {
        let version = t("/", "a", Some("b"));
        let aggregate = t("/", "a-b", None);
        let (names, collisions) = assign([&aggregate, &version]);
        // ("a", Some("b")) < ("a-b", None): the versioned target keeps the plain name.
        assert_eq!(names[&version], "a-b");
        assert_ne!(names[&aggregate], "a-b");
        assert!(names[&aggregate].starts_with("a-b-"));
        assert_eq!(
            collisions,
            vec![Collision {
                name: "a-b".into(),
                winner: version.clone(),
                losers: vec![aggregate.clone()],
            }]
        );
    }

    #[test]
    fn same_name_under_two_prefixes() {
        let a = t("/", "greeter", None);
        let b = t("/other/", "greeter", None);
        let (names, collisions) = assign([&b, &a]);
        assert_eq!(names[&a], "greeter");
        assert_ne!(names[&b], "greeter");
        assert_eq!(collisions.len(), 1);
    }

    #[test]
    fn hashed_candidate_taken_by_a_plain_name_keeps_resolving() {
        // Someone registered the exact name another target's first fallback would take.
        let winner = t("/", "x", None);
        let loser = t("/other/", "x", None);
        let squatter = t("/other/", &candidate(&loser, 1), None);
        let (names, collisions) = assign([&winner, &loser, &squatter]);
        assert_eq!(names[&winner], "x");
        assert_eq!(names[&squatter], candidate(&loser, 1));
        assert_eq!(names[&loser], candidate(&loser, 2));
        assert_eq!(collisions.len(), 2);
        assert_eq!(collisions[1].winner, squatter);
    }

    #[test]
    fn slice_names() {
        let g = GroupKey {
            address_type: AddressType::IPv4,
            port: 8080,
            weight: 1,
        };
        let name = slice_name("greeter", &g, 0);
        assert!(name.starts_with("greeter-") && name.ends_with("-0"));
        assert_eq!(name.len(), "greeter".len() + 1 + 8 + 2);
        assert_ne!(name, slice_name("greeter", &g, 1));
        assert_ne!(name, slice_name("greeter", &GroupKey { weight: 2, ..g }, 0));
        let long = "a".repeat(63);
        let longer = format!("{}b", "a".repeat(62));
        for index in [0, 7, u32::MAX] {
            let n = slice_name(&long, &g, index);
            assert!(is_dns1035_label(&n), "{n}");
            assert_ne!(n, slice_name(&longer, &g, index));
        }
    }

    fn target_strategy() -> impl Strategy<Value = Target> {
        // Small alphabets make collisions likely; long names exercise the cut.
        let part = prop_oneof![
            4 => "[aAb1._-]{0,4}",
            1 => "[a-c]{58,66}",
        ];
        (
            prop_oneof![Just("/"), Just("/p/"), Just("/P/")],
            part.clone(),
            proptest::option::of(part),
        )
            .prop_map(|(prefix, name, version)| Target {
                prefix: prefix.to_owned(),
                name,
                version,
            })
    }

    proptest! {
        #[test]
        fn dns_label_is_valid_and_idempotent(raw in "\\PC{0,80}") {
            let label = dns_label(&raw);
            prop_assert!(is_dns1035_label(&label), "{label:?}");
            prop_assert_eq!(dns_label(&label), label.clone());
        }

        #[test]
        fn assign_is_injective_valid_and_order_independent(
            targets in proptest::collection::vec(target_strategy(), 0..24)
                .prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle())),
        ) {
            let (first, second) = targets;
            let (names, collisions) = assign(&first);
            let distinct: BTreeSet<&Target> = first.iter().collect();
            prop_assert_eq!(names.len(), distinct.len());
            let unique: BTreeSet<&String> = names.values().collect();
            prop_assert_eq!(unique.len(), names.len());
            for name in names.values() {
                prop_assert!(is_dns1035_label(name), "{name:?}");
            }
            for c in &collisions {
                prop_assert_eq!(&names[&c.winner], &c.name);
                for loser in &c.losers {
                    prop_assert_ne!(&names[loser], &c.name);
                }
            }
            prop_assert_eq!(assign(&second), (names, collisions));
        }
    }
}
