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
    if is_dns1035_label(raw) {
        raw.to_owned()
    } else {
        with_hash(&sanitize(raw), &hash8(raw.as_bytes()))
    }
}

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

/// Lowercases ASCII letters, turns every run of other characters into one `-`, trims `-`, and
/// makes sure the label starts with a letter. A word with non-ASCII letters or digits (`服务`,
/// `café`) becomes its IDNA A-label (`xn--zfr188b`, `xn--caf-dma`): the form DNS itself gives
/// such names, so the service stays recognisable instead of vanishing. Never empty; may be
/// longer than 63.
fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for word in raw.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('-');
        }
        let word = word.to_ascii_lowercase();
        match word.is_ascii() {
            true => out.push_str(&word),
            // Only fails on overflow, for words far longer than any label: drop such a word.
            false => match punycode(&word) {
                Some(encoded) => {
                    out.push_str("xn--");
                    out.push_str(&encoded);
                }
                None => {
                    out.pop();
                }
            },
        }
    }
    match out.chars().next() {
        None => "svc".to_owned(),
        Some(c) if c.is_ascii_lowercase() => out,
        Some(_) => format!("s-{out}"),
    }
}

/// RFC 3492 Punycode of `input` (without the `xn--`), as IDNA uses it for one DNS label.
/// `None` on arithmetic overflow, which only inputs of many kilobytes reach.
fn punycode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    const TMIN: u32 = 1;
    const TMAX: u32 = 26;
    const INITIAL_N: u32 = 128;
    const INITIAL_BIAS: u32 = 72;
    fn adapt(delta: u32, points: u32, first: bool) -> u32 {
        const SKEW: u32 = 38;
        const DAMP: u32 = 700;
        let mut delta = if first { delta / DAMP } else { delta / 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - TMIN) * TMAX) / 2 {
            delta /= BASE - TMIN;
            k += BASE;
        }
        k + (BASE - TMIN + 1) * delta / (delta + SKEW)
    }
    fn digit(d: u32) -> char {
        // d < 36: a-z then 0-9.
        char::from(if d < 26 {
            b'a' + d as u8
        } else {
            b'0' + (d - 26) as u8
        })
    }
    let code_points: Vec<u32> = input.chars().map(u32::from).collect();
    let mut out: String = input.chars().filter(char::is_ascii).collect();
    let basic = out.len() as u32;
    if basic > 0 {
        out.push('-');
    }
    let (mut n, mut delta, mut bias, mut handled) = (INITIAL_N, 0u32, INITIAL_BIAS, basic);
    while (handled as usize) < code_points.len() {
        let m = code_points.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
        n = m;
        for &c in &code_points {
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        TMIN
                    } else if k >= bias + TMAX {
                        TMAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    out.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit(q));
                bias = adapt(delta, handled + 1, handled == basic);
                delta = 0;
                handled += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n += 1;
    }
    Some(out)
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
fn candidate(target: &Target, attempt: u32, name_prefix: &str) -> String {
    let raw = format!("{name_prefix}{}", target.raw_name());
    if attempt == 0 {
        return dns_label(&raw);
    }
    // The flags' source keeps the hashes it always had; another source's differ from it.
    let mut identity = match target.source.as_str() {
        crate::source::spec::DEFAULT_SOURCE => String::new(),
        source => format!("{source}\0"),
    };
    let _ = write!(
        identity,
        "{}{}\0{}",
        target.prefix,
        target.name,
        target.version.as_deref().unwrap_or("")
    );
    if attempt > 1 {
        let _ = write!(identity, "\0{attempt}");
    }
    with_hash(&sanitize(&raw), &hash8(identity.as_bytes()))
}

/// Names every target, uniquely and stably.
///
/// `in_use` maps names that already serve someone (read back from the annotations of the
/// Services that exist, plus the last assignment) to the target they serve. A name in use keeps
/// its owner for as long as the owner is registered: clients of that name must never be moved to
/// another service behind their back. A name in use whose owner is gone stays reserved (its
/// Service is about to be deleted) and is free once that Service is gone.
///
/// Everyone else competes for names in rounds: in each round every unnamed target asks for its
/// next candidate; a name already given or reserved stays as it is, and among new claimants the
/// smallest target wins. The result depends only on `in_use` and the set of targets, not on their
/// order. Every contested name is reported.
pub fn assign<'a>(
    targets: impl IntoIterator<Item = &'a Target>,
    in_use: &BTreeMap<String, Target>,
) -> (BTreeMap<Target, String>, Vec<Collision>) {
    assign_prefixed(targets, in_use, &BTreeMap::new())
}

/// [`assign`], each source's names starting with its `namePrefix` (by source name). A name in
/// use keeps its owner all the same: a prefix given later applies to new names only.
pub fn assign_prefixed<'a>(
    targets: impl IntoIterator<Item = &'a Target>,
    in_use: &BTreeMap<String, Target>,
    name_prefixes: &BTreeMap<String, String>,
) -> (BTreeMap<Target, String>, Vec<Collision>) {
    let prefix = |t: &Target| name_prefixes.get(&t.source).map_or("", String::as_str);
    let mut pending: BTreeSet<&Target> = targets.into_iter().collect();
    // Name -> who has it: a target being named now, or the gone owner it stays reserved for.
    let mut holders: BTreeMap<String, &Target> = BTreeMap::new();
    let mut names = BTreeMap::new();
    // Owners keep their names. A target with two (left by an older bridge) keeps its first
    // choice, else the smallest, and the other stays reserved until its Service is deleted.
    let mut owned: BTreeMap<&Target, Vec<&String>> = BTreeMap::new();
    for (name, owner) in in_use {
        owned.entry(owner).or_default().push(name);
    }
    for (owner, owned_names) in owned {
        let Some(&target) = pending.get(owner) else {
            for name in owned_names {
                holders.insert(name.clone(), owner);
            }
            continue;
        };
        let first = candidate(target, 0, prefix(target));
        let keep = owned_names
            .iter()
            .find(|n| ***n == first)
            .unwrap_or(&owned_names[0]);
        for name in &owned_names {
            holders.insert((*name).clone(), owner);
        }
        names.insert(target.clone(), (*keep).clone());
        pending.remove(target);
    }
    let mut collisions = Vec::new();
    let mut attempt = 0;
    while !pending.is_empty() {
        let mut claims: BTreeMap<String, Vec<&Target>> = BTreeMap::new();
        // `pending` is ordered, so each claimant list is too.
        for &target in &pending {
            claims
                .entry(candidate(target, attempt, prefix(target)))
                .or_default()
                .push(target);
        }
        let mut unnamed = BTreeSet::new();
        for (name, claimants) in claims {
            let (winner, losers) = match holders.get(&name) {
                Some(&holder) => (holder, &claimants[..]),
                None => {
                    holders.insert(name.clone(), claimants[0]);
                    names.insert(claimants[0].clone(), name.clone());
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

    fn t(prefix: &str, name: &str, version: Option<&str>) -> Target {
        Target {
            source: "default".into(),
            prefix: prefix.into(),
            name: name.into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn two_sources_wanting_one_name_follow_the_stable_name_rule() {
        let of = |source: &str| Target {
            source: source.into(),
            ..t("/services/", "greeter", None)
        };
        let (a, b) = (of("region-a"), of("region-b"));
        // New to both: the first in sort order has it.
        let (names, collisions) = assign([&a, &b], &BTreeMap::new());
        assert_eq!(names[&a], "greeter");
        assert!(names[&b].starts_with("greeter-") && names[&b] != names[&a]);
        assert_eq!(collisions[0].winner, a);
        // In use by region-b: it keeps the name, whatever the order.
        let in_use = BTreeMap::from([("greeter".to_owned(), b.clone())]);
        let (names, _) = assign([&a, &b], &in_use);
        assert_eq!(names[&b], "greeter");
        assert!(names[&a].starts_with("greeter-"));
        // A source's namePrefix comes first, for new names; a name in use keeps its owner.
        let eu = BTreeMap::from([("region-b".to_owned(), "eu-".to_owned())]);
        let (names, _) = assign_prefixed([&a, &b], &BTreeMap::new(), &eu);
        assert_eq!(
            (names[&a].as_str(), names[&b].as_str()),
            ("greeter", "eu-greeter")
        );
        let (names, _) = assign_prefixed([&a, &b], &in_use, &eu);
        assert_eq!(names[&b], "greeter");
        // Each source's hashed name is its own; the flags' source keeps the hash it had.
        assert_ne!(candidate(&a, 1, ""), candidate(&b, 1, ""));
        assert_eq!(
            candidate(&of("default"), 1, ""),
            with_hash("greeter", &hash8(b"/services/greeter\0"))
        );
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
        assert_eq!(dns_label("日本"), format!("xn--wgv71a-{}", h("日本")));
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

    fn none() -> BTreeMap<String, Target> {
        BTreeMap::new()
    }

    #[test]
    fn punycode_matches_rfc_3492() {
        // RFC 3492 section 7.1 samples, and the IDNA labels of well-known domains.
        for (unicode, ascii) in [
            ("bücher", "bcher-kva"),
            ("münchen", "mnchen-3ya"),
            ("中国", "fiqs8s"),
            ("ليهمابتكلموشعربي؟", "egbpdaj6bu4bxfgehfvwxn"),
            ("他们为什么不说中文", "ihqwcrb4cv8a8dqg056pqjye"),
            ("3年B組金八先生", "3B-ww4c5e180e575a65lsy2b"),
            ("abc", "abc-"),
        ] {
            assert_eq!(punycode(unicode).as_deref(), Some(ascii), "{unicode}");
        }
    }

    #[test]
    fn non_ascii_names_keep_a_recognisable_form() {
        // Before, 服务 (version v1) became `v1-<hash>`: nothing of the service was left.
        let t = t("/", "服务", Some("v1"));
        let label = dns_label(&t.raw_name());
        assert_eq!(
            label,
            format!("xn--zfr188b-v1-{}", hash8("服务-v1".as_bytes()))
        );
        assert!(is_dns1035_label(&label));
        assert_eq!(
            dns_label("café.v2"),
            format!("xn--caf-dma-v2-{}", hash8("café.v2".as_bytes()))
        );
    }

    #[test]
    fn a_name_in_use_keeps_its_owner_and_the_newcomer_gets_a_suffix() {
        // Issue 10, hole 4: Service `c-d` serves the target `c-d`; then `c` with version `d`
        // registers. Sorted alone, (`c`, `d`) < (`c-d`) would win the name.
        let old = t("/", "c-d", None);
        let newcomer = t("/", "c", Some("d"));
        let fresh = assign([&old, &newcomer], &none()).0;
        assert_eq!(
            fresh[&newcomer], "c-d",
            "the sort-order rule, without names in use"
        );
        let in_use = BTreeMap::from([("c-d".to_string(), old.clone())]);
        let (names, collisions) = assign([&old, &newcomer], &in_use);
        assert_eq!(names[&old], "c-d");
        assert_eq!(names[&newcomer], candidate(&newcomer, 1, ""));
        assert_eq!(
            collisions,
            vec![Collision {
                name: "c-d".into(),
                winner: old.clone(),
                losers: vec![newcomer.clone()],
            }]
        );
        // And it stays so once the newcomer's own name is in use (restart, new leader).
        let mut in_use = in_use;
        in_use.insert(names[&newcomer].clone(), newcomer.clone());
        assert_eq!(assign([&newcomer, &old], &in_use).0, names);
    }

    #[test]
    fn a_gone_owners_name_stays_reserved_until_its_service_is_deleted() {
        let gone = t("/", "x", Some("1"));
        let newcomer = t("/", "x-1", None);
        let in_use = BTreeMap::from([("x-1".to_string(), gone.clone())]);
        let (names, collisions) = assign([&newcomer], &in_use);
        assert_ne!(names[&newcomer], "x-1");
        assert!(!names.contains_key(&gone));
        assert_eq!(collisions[0].winner, gone);
        // Deleted: the name is free.
        assert_eq!(assign([&newcomer], &none()).0[&newcomer], "x-1");
    }

    #[test]
    fn a_target_holding_two_names_keeps_its_first_choice() {
        let a = t("/", "a", None);
        let in_use = BTreeMap::from([
            ("a".to_string(), a.clone()),
            ("a-12345678".to_string(), a.clone()),
        ]);
        let b = t("/", "a-12345678", None);
        let (names, _) = assign([&a, &b], &in_use);
        assert_eq!(names[&a], "a");
        // The other name stays reserved while its (orphaned) Service exists.
        assert_ne!(names[&b], "a-12345678");
    }

    #[test]
    fn version_and_dashed_aggregate_collide_deterministically() {
        let version = t("/", "a", Some("b"));
        let aggregate = t("/", "a-b", None);
        let (names, collisions) = assign([&aggregate, &version], &none());
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
        let (names, collisions) = assign([&b, &a], &none());
        assert_eq!(names[&a], "greeter");
        assert_ne!(names[&b], "greeter");
        assert_eq!(collisions.len(), 1);
    }

    #[test]
    fn hashed_candidate_taken_by_a_plain_name_keeps_resolving() {
        // Someone registered the exact name another target's first fallback would take.
        let winner = t("/", "x", None);
        let loser = t("/other/", "x", None);
        let squatter = t("/other/", &candidate(&loser, 1, ""), None);
        let (names, collisions) = assign([&winner, &loser, &squatter], &none());
        assert_eq!(names[&winner], "x");
        assert_eq!(names[&squatter], candidate(&loser, 1, ""));
        assert_eq!(names[&loser], candidate(&loser, 2, ""));
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
                source: "default".into(),
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
            let (names, collisions) = assign(&first, &none());
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
            prop_assert_eq!(assign(&second, &none()), (names, collisions));
        }

        #[test]
        fn names_in_use_never_move(
            before in proptest::collection::vec(target_strategy(), 0..16),
            after in proptest::collection::vec(target_strategy(), 0..16),
        ) {
            // Whatever registers or goes, a target that keeps registering keeps its name, and
            // names stay unique and never go to a target other than their owner.
            let (first, _) = assign(&before, &none());
            let in_use: BTreeMap<String, Target> =
                first.iter().map(|(t, n)| (n.clone(), t.clone())).collect();
            let both: Vec<Target> = after.iter().chain(before.iter().take(8)).cloned().collect();
            let (second, _) = assign(&both, &in_use);
            for (t, n) in &second {
                if let Some(old) = first.get(t) {
                    prop_assert_eq!(old, n);
                }
                if let Some(owner) = in_use.get(n) {
                    prop_assert_eq!(owner, t);
                }
            }
            let unique: BTreeSet<&String> = second.values().collect();
            prop_assert_eq!(unique.len(), second.len());
        }
    }
}
