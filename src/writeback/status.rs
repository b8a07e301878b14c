//! What an EtcdRegistration's status reports, decided from where its addresses come from and
//! what the writes to etcd did, and which Events tell of a change. Pure: the controller looks
//! things up and writes, these functions decide.

use crate::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use crate::writeback::crd::{EtcdRegistrationSpec, EtcdRegistrationStatus, ServiceRef};
use crate::writeback::desired;
use crate::writeback::policy::Policy;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Where an object's addresses come from, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Addresses(Vec<String>),
    /// Not allowed to publish: nothing is written. (reason, message)
    Denied(&'static str, String),
    /// Allowed, but there is nothing to publish (yet). (reason, message)
    NotReady(&'static str, String),
}

/// The first step of finding the addresses: decided from the spec alone, or follow a Service.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<'a> {
    Decided(Source),
    /// Read this Service, then (see [`followed_service`]) maybe its EndpointSlices.
    Follow(&'a ServiceRef),
}

/// The policy, then the static addresses; a serviceRef needs the cluster.
pub fn from_spec<'a>(
    namespace: &str,
    spec: &'a EtcdRegistrationSpec,
    policy: &Policy,
) -> Lookup<'a> {
    if !policy.allows(namespace, &spec.service) {
        return Lookup::Decided(Source::Denied(
            "PolicyDenied",
            format!(
                "namespace {namespace} may not publish service {:?}: the write-back policy is {}",
                spec.service,
                policy.describe()
            ),
        ));
    }
    if let Some(a) = &spec.addresses {
        return Lookup::Decided(Source::Addresses(a.iter().map(|a| a.0.clone()).collect()));
    }
    match &spec.service_ref {
        Some(r) => Lookup::Follow(r),
        None => Lookup::Decided(Source::NotReady(
            "NoSource",
            "give addresses or serviceRef".into(),
        )),
    }
}

/// The verdict on the followed Service itself: `None` to go on and read its slices. A missing
/// Service publishes nothing (its keys go); one the bridge projects from etcd would loop.
pub fn followed_service(namespace: &str, r: &ServiceRef, svc: Option<&Service>) -> Option<Source> {
    let Some(svc) = svc else {
        return Some(Source::NotReady(
            "ServiceNotFound",
            format!("Service {namespace}/{} does not exist (yet)", r.name),
        ));
    };
    let labels = svc.metadata.labels.as_ref();
    if labels.and_then(|l| l.get(MANAGED_BY)).map(String::as_str) == Some(MANAGED_BY_VALUE) {
        return Some(Source::Denied(
            "FeedbackLoop",
            format!(
                "Service {namespace}/{} is projected from etcd by etcd-bridge; writing it back would loop",
                r.name
            ),
        ));
    }
    None
}

/// The ready endpoints of the followed Service's slices.
pub fn from_slices(namespace: &str, r: &ServiceRef, slices: &[EndpointSlice]) -> Source {
    let addrs = desired::ready_addresses(slices, &r.port);
    if addrs.is_empty() {
        return Source::NotReady(
            "NoReadyEndpoints",
            format!(
                "Service {namespace}/{} has no ready endpoint on port {:?}",
                r.name, r.port
            ),
        );
    }
    Source::Addresses(addrs)
}

/// What one pass's writes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    /// How many keys the object asks for.
    pub wanted: usize,
    /// The keys now in etcd under one of this process's leases, in order.
    pub registered: Vec<String>,
    /// The leases those keys are on, in order.
    pub leases: Vec<i64>,
    /// `key (held by OWNER)` for each key another registrant holds.
    pub conflicts: Vec<String>,
}

/// The status to report: conditions Ready, Conflict and Denied (keeping each one's transition
/// time while its status holds), the registered keys, their leases and the registry holding them
/// (`registry`: `None` when nothing could be written anywhere).
pub fn status(
    source: &Source,
    registry: Option<&str>,
    written: &Written,
    prev: &EtcdRegistrationStatus,
    generation: Option<i64>,
    now: Time,
) -> EtcdRegistrationStatus {
    let leases = lease_ids(&written.leases);
    let c = |t: &str, s: bool, r: &str, m: String| {
        condition(&prev.conditions, t, s, r, m, generation, now.clone())
    };
    let allowed = || c("Denied", false, "Allowed", String::new());
    let no_conflict = || c("Conflict", false, "NoConflict", String::new());
    let (denied, ready, conflict) = match source {
        Source::Denied(reason, msg) => (
            c("Denied", true, reason, msg.clone()),
            c("Ready", false, reason, "denied: nothing is written".into()),
            no_conflict(),
        ),
        Source::NotReady(reason, msg) => (
            allowed(),
            c("Ready", false, reason, msg.clone()),
            no_conflict(),
        ),
        Source::Addresses(_) if !written.conflicts.is_empty() => (
            allowed(),
            c(
                "Ready",
                false,
                "Conflict",
                format!(
                    "{} of {} keys are held by another registrant",
                    written.conflicts.len(),
                    written.wanted
                ),
            ),
            c(
                "Conflict",
                true,
                "ForeignKey",
                format!("not overwritten: {}", written.conflicts.join(", ")),
            ),
        ),
        Source::Addresses(_) => (
            allowed(),
            c(
                "Ready",
                true,
                "Registered",
                format!(
                    "{} keys registered under lease{} {}",
                    written.registered.len(),
                    if written.leases.len() > 1 { "s" } else { "" },
                    leases.as_deref().unwrap_or("-")
                ),
            ),
            no_conflict(),
        ),
    };
    EtcdRegistrationStatus {
        observed_generation: generation,
        conditions: vec![ready, conflict, denied],
        endpoints: written.registered.len() as i64,
        keys: written.registered.clone(),
        lease_id: leases,
        source: registry.map(str::to_owned),
    }
}

/// The status when the registry could not be written (its etcd did not answer): Ready=False,
/// saying which registry and why. Nothing was learnt about the keys, so the keys, leases and
/// registry of `prev` stay, as do the other conditions; the write is retried.
pub fn unwritten(
    prev: &EtcdRegistrationStatus,
    registry: &str,
    why: &str,
    generation: Option<i64>,
    now: Time,
) -> EtcdRegistrationStatus {
    let ready = condition(
        &prev.conditions,
        "Ready",
        false,
        "RegistryUnavailable",
        format!(
            "registry `{registry}` could not be written: {why}; the keys stay as they were and the write is retried"
        ),
        generation,
        now,
    );
    let others = (prev.conditions.iter())
        .filter(|c| c.type_ != "Ready")
        .cloned();
    EtcdRegistrationStatus {
        observed_generation: generation,
        conditions: std::iter::once(ready).chain(others).collect(),
        ..prev.clone()
    }
}

/// The leases in hex as etcdctl prints them, comma-separated; `None` for none.
fn lease_ids(leases: &[i64]) -> Option<String> {
    (!leases.is_empty()).then(|| {
        leases
            .iter()
            .map(|l| format!("{l:x}"))
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// An Event to record on the object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

/// `None` when `next` says nothing new (no write at all); otherwise an Event for each condition
/// whose status or reason changed, a Warning when it is bad news.
pub fn changes(prev: &EtcdRegistrationStatus, next: &EtcdRegistrationStatus) -> Option<Vec<Note>> {
    let unchanged = same_conditions(&prev.conditions, &next.conditions)
        && prev.keys == next.keys
        && prev.lease_id == next.lease_id
        && prev.source == next.source
        && prev.observed_generation == next.observed_generation;
    if unchanged {
        return None;
    }
    let notes = next
        .conditions
        .iter()
        .filter(|c| {
            let before = prev.conditions.iter().find(|p| p.type_ == c.type_);
            before.map(|b| (&b.status, &b.reason)) != Some((&c.status, &c.reason))
        })
        .filter(|c| event_worthy(c))
        .map(|c| Note {
            warning: (c.type_ == "Ready") != (c.status == "True"),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    Some(notes)
}

/// What a status says, without the times: equal digests, nothing new to write.
pub fn digest(s: &EtcdRegistrationStatus) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut conditions: Vec<_> = s
        .conditions
        .iter()
        .map(|c| {
            (
                &c.type_,
                &c.status,
                &c.reason,
                &c.message,
                c.observed_generation,
            )
        })
        .collect();
    conditions.sort();
    conditions.hash(&mut h);
    (
        &s.keys,
        s.endpoints,
        &s.lease_id,
        &s.source,
        s.observed_generation,
    )
        .hash(&mut h);
    h.finish()
}

/// `False` conditions that only say "nothing wrong" are not worth an Event.
fn event_worthy(c: &Condition) -> bool {
    !(c.status == "False" && matches!(c.reason.as_str(), "Allowed" | "NoConflict"))
}

/// A condition, keeping `lastTransitionTime` from `previous` when the status did not change (the
/// API convention).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if status { "True" } else { "False" }.to_string();
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(now);
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

/// Whether two condition lists say the same thing (ignoring times).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    let mut x: Vec<_> = a.iter().map(key).collect();
    let mut y: Vec<_> = b.iter().map(key).collect();
    x.sort();
    y.sort();
    x == y
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::crd::Address;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use std::collections::BTreeMap;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn spec(addresses: Option<&[&str]>, service_ref: Option<&str>) -> EtcdRegistrationSpec {
        EtcdRegistrationSpec {
            service: "greeter".into(),
            version: None,
            weight: 1,
            addresses: addresses.map(|a| a.iter().map(|s| Address(s.to_string())).collect()),
            service_ref: service_ref.map(|n| ServiceRef {
                name: n.into(),
                port: IntOrString::String("grpc".into()),
            }),
            metadata: None,
            format: None,
            source: None,
        }
    }

    /// (type, status, reason) of each condition, in order.
    fn said(s: &EtcdRegistrationStatus) -> Vec<(String, String, String)> {
        s.conditions
            .iter()
            .map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone()))
            .collect()
    }

    fn triple(t: &str, s: &str, r: &str) -> (String, String, String) {
        (t.into(), s.into(), r.into())
    }

    #[test]
    fn the_policy_comes_before_any_source() {
        let deny = Policy::parse(&["team-*:*".into()]).unwrap();
        let s = spec(Some(&["10.0.0.1:80"]), None);
        assert!(matches!(
            from_spec("other", &s, &deny),
            Lookup::Decided(Source::Denied("PolicyDenied", _))
        ));
        assert_eq!(
            from_spec("team-a", &s, &deny),
            Lookup::Decided(Source::Addresses(vec!["10.0.0.1:80".into()]))
        );
        let r = spec(None, Some("api"));
        assert!(matches!(from_spec("team-a", &r, &deny), Lookup::Follow(f) if f.name == "api"));
        assert!(matches!(
            from_spec("team-a", &spec(None, None), &deny),
            Lookup::Decided(Source::NotReady("NoSource", _))
        ));
    }

    #[test]
    fn a_missing_or_projected_service_decides_before_its_slices() {
        let r = ServiceRef {
            name: "api".into(),
            port: IntOrString::Int(80),
        };
        assert!(matches!(
            followed_service("ns", &r, None),
            Some(Source::NotReady("ServiceNotFound", m)) if m.contains("ns/api")
        ));
        let projected = Service {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(
                    MANAGED_BY.to_string(),
                    MANAGED_BY_VALUE.to_string(),
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            followed_service("ns", &r, Some(&projected)),
            Some(Source::Denied("FeedbackLoop", _))
        ));
        assert_eq!(followed_service("ns", &r, Some(&Service::default())), None);
        assert!(matches!(
            from_slices("ns", &r, &[]),
            Source::NotReady("NoReadyEndpoints", _)
        ));
    }

    #[test]
    fn conflicts_make_it_not_ready_and_name_the_keys() {
        let written = Written {
            wanted: 2,
            registered: vec!["/a/10.0.0.2:1".into()],
            leases: vec![0xab],
            conflicts: vec!["/a/10.0.0.1:1 (held by x)".into()],
        };
        let s = status(
            &Source::Addresses(vec![]),
            Some("default"),
            &written,
            &Default::default(),
            Some(3),
            at(1),
        );
        assert_eq!(
            said(&s),
            [
                triple("Ready", "False", "Conflict"),
                triple("Conflict", "True", "ForeignKey"),
                triple("Denied", "False", "Allowed"),
            ]
        );
        assert_eq!(
            s.conditions[0].message,
            "1 of 2 keys are held by another registrant"
        );
        assert!(
            s.conditions[1]
                .message
                .contains("/a/10.0.0.1:1 (held by x)")
        );
        assert_eq!(s.keys, ["/a/10.0.0.2:1"]);
        assert_eq!(s.endpoints, 1);
        assert_eq!(s.lease_id.as_deref(), Some("ab"));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn a_service_gone_reports_not_found_and_registers_nothing() {
        let prev = status(
            &Source::Addresses(vec!["10.0.0.1:1".into()]),
            Some("default"),
            &one_key(),
            &Default::default(),
            Some(1),
            at(1),
        );
        assert_eq!(said(&prev)[0], triple("Ready", "True", "Registered"));
        let gone = Source::NotReady(
            "ServiceNotFound",
            "Service ns/api does not exist (yet)".into(),
        );
        let next = status(
            &gone,
            Some("default"),
            &Written::default(),
            &prev,
            Some(1),
            at(2),
        );
        assert_eq!(
            said(&next),
            [
                triple("Ready", "False", "ServiceNotFound"),
                triple("Conflict", "False", "NoConflict"),
                triple("Denied", "False", "Allowed"),
            ]
        );
        assert!(next.keys.is_empty());
        assert_eq!(next.endpoints, 0);
        // Ready flipped: a new transition time; the others held theirs.
        assert_eq!(next.conditions[0].last_transition_time, at(2));
        assert_eq!(next.conditions[1].last_transition_time, at(1));
        let notes = changes(&prev, &next).expect("a change to publish");
        assert_eq!(
            notes,
            [Note {
                warning: true,
                reason: "ServiceNotFound".into(),
                message: "Service ns/api does not exist (yet)".into(),
            }]
        );
    }

    #[test]
    fn denied_says_so_on_ready_too() {
        let s = status(
            &Source::Denied("FeedbackLoop", "loops".into()),
            Some("default"),
            &Written::default(),
            &Default::default(),
            None,
            at(1),
        );
        assert_eq!(
            said(&s),
            [
                triple("Ready", "False", "FeedbackLoop"),
                triple("Conflict", "False", "NoConflict"),
                triple("Denied", "True", "FeedbackLoop"),
            ]
        );
        // First status: Ready=False and Denied=True are news, the all-clear Conflict is not.
        let notes = changes(&Default::default(), &s).unwrap();
        assert_eq!(
            notes
                .iter()
                .map(|n| (n.warning, n.reason.as_str()))
                .collect::<Vec<_>>(),
            [(true, "FeedbackLoop"), (true, "FeedbackLoop")]
        );
    }

    /// One key registered, on lease 1.
    fn one_key() -> Written {
        Written {
            wanted: 1,
            registered: vec!["/a/10.0.0.1:1".into()],
            leases: vec![1],
            conflicts: vec![],
        }
    }

    #[test]
    fn the_same_status_again_is_not_written() {
        let src = Source::Addresses(vec!["10.0.0.1:1".into()]);
        let written = one_key();
        let first = status(
            &src,
            Some("default"),
            &written,
            &Default::default(),
            Some(1),
            at(1),
        );
        let again = status(&src, Some("default"), &written, &first, Some(1), at(9));
        assert_eq!(changes(&first, &again), None);
        // A new lease, or a new generation, is written; with no Event when no condition changed.
        let relet = Written {
            leases: vec![2],
            ..written.clone()
        };
        let relet = status(&src, Some("default"), &relet, &first, Some(1), at(9));
        assert_eq!(
            changes(&first, &relet),
            Some(vec![]),
            "Ready's message names the lease"
        );
        let next_gen = status(&src, Some("default"), &written, &first, Some(2), at(9));
        assert_eq!(changes(&first, &next_gen), Some(vec![]));
        // Keys now in another registry: written, so that the next pass knows where they are.
        let moved = status(&src, Some("east"), &written, &first, Some(1), at(9));
        assert_eq!(changes(&first, &moved), Some(vec![]));
        assert_eq!(moved.source.as_deref(), Some("east"));
    }

    #[test]
    fn the_digest_ignores_the_times_only() {
        let src = Source::Addresses(vec!["10.0.0.1:1".into()]);
        let written = one_key();
        let first = status(
            &src,
            Some("default"),
            &written,
            &Default::default(),
            Some(1),
            at(1),
        );
        // Computed again from a stale copy: a new transition time, the same news.
        let again = status(
            &src,
            Some("default"),
            &written,
            &Default::default(),
            Some(1),
            at(9),
        );
        assert_ne!(first, again);
        assert_eq!(digest(&first), digest(&again));
        let relet = Written {
            leases: vec![2],
            ..written.clone()
        };
        assert_ne!(
            digest(&first),
            digest(&status(
                &src,
                Some("default"),
                &relet,
                &first,
                Some(1),
                at(9)
            ))
        );
        assert_ne!(
            digest(&first),
            digest(&status(
                &src,
                Some("default"),
                &written,
                &first,
                Some(2),
                at(9)
            ))
        );
    }

    #[test]
    fn a_registry_that_cannot_be_written_is_said_and_the_keys_stay_as_they_were() {
        let src = Source::Addresses(vec!["10.0.0.1:1".into()]);
        let before = status(
            &src,
            Some("east"),
            &one_key(),
            &Default::default(),
            Some(1),
            at(1),
        );
        let why = "write-back of /a/10.0.0.1:1: etcd did not answer; the object is retried";
        let down = unwritten(&before, "east", why, Some(2), at(5));
        assert_eq!(
            said(&down),
            [
                triple("Ready", "False", "RegistryUnavailable"),
                triple("Conflict", "False", "NoConflict"),
                triple("Denied", "False", "Allowed"),
            ]
        );
        assert!(down.conditions[0].message.contains("registry `east`"));
        assert!(down.conditions[0].message.contains("etcd did not answer"));
        assert_eq!(down.conditions[0].last_transition_time, at(5));
        assert_eq!(
            (&down.keys, down.endpoints, &down.lease_id, &down.source),
            (&before.keys, 1, &before.lease_id, &before.source)
        );
        assert_eq!(down.observed_generation, Some(2));
        // News once (a Warning), then the same failure again is not written.
        let notes = changes(&before, &down).expect("written");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].warning && notes[0].reason == "RegistryUnavailable");
        let again = unwritten(&down, "east", why, Some(2), at(9));
        assert_eq!(changes(&down, &again), None);
        // Back: Ready again, a new transition.
        let back = status(&src, Some("east"), &one_key(), &again, Some(2), at(12));
        assert_eq!(said(&back)[0], triple("Ready", "True", "Registered"));
        assert_eq!(back.conditions[0].last_transition_time, at(12));
    }

    #[test]
    fn keys_on_several_leases_name_them_all() {
        let written = Written {
            wanted: 3,
            registered: vec!["/a/1:1".into(), "/a/2:1".into(), "/a/3:1".into()],
            leases: vec![0x1a, 0x2b],
            conflicts: vec![],
        };
        let s = status(
            &Source::Addresses(vec![]),
            Some("default"),
            &written,
            &Default::default(),
            Some(1),
            at(1),
        );
        assert_eq!(s.lease_id.as_deref(), Some("1a,2b"));
        assert_eq!(
            s.conditions[0].message,
            "3 keys registered under leases 1a,2b"
        );
        let none = status(
            &Source::NotReady("NoSource", "none".into()),
            Some("default"),
            &Written::default(),
            &s,
            Some(1),
            at(2),
        );
        assert_eq!(none.lease_id, None, "no key, no lease");
    }

    #[test]
    fn condition_keeps_its_transition_time_while_the_status_holds() {
        let c = condition(
            &[],
            "Ready",
            true,
            "Registered",
            "ok".into(),
            Some(1),
            at(1),
        );
        let again = condition(
            std::slice::from_ref(&c),
            "Ready",
            true,
            "Registered",
            "ok".into(),
            Some(2),
            at(2),
        );
        assert_eq!(again.last_transition_time, at(1));
        let flipped = condition(
            &[c],
            "Ready",
            false,
            "Conflict",
            "no".into(),
            Some(2),
            at(2),
        );
        assert_eq!(flipped.last_transition_time, at(2));
    }
}
