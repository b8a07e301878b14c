//! What one Service needs, decided from what the registry wants and what the cluster has. Pure:
//! the reconciler carries the decision out, and `preview` shows it.

use crate::diff::{self, SliceChange};
use crate::import::guard;
use crate::import::panic_guard::Verdict;
use crate::k8s::view::is_owned;
use crate::labels;
use crate::projection::{self, Groups, ProjectionConfig, Unhealthy};
use crate::slicing::{self, SlicePlan};
use crate::source::spec::DEFAULT_SOURCE;
use crate::target::Target;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use std::sync::Arc;

/// What the registry wants for one Service name: its target and endpoint groups (never empty),
/// and what health checks say of those endpoints (nothing when they are not probed).
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub target: Target,
    pub groups: Groups,
    pub health: Verdict,
}

impl Wanted {
    /// Endpoints that are not probed: every one serves.
    pub fn new(target: Target, groups: Groups) -> Wanted {
        Wanted {
            target,
            groups,
            health: Verdict::default(),
        }
    }
}

/// The Service step of a [`Decision::Converge`].
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceStep {
    /// Server-side apply this Service (new, or differing in what the bridge owns).
    Apply(Box<Service>),
    /// The current Service is right as it is.
    Keep(Arc<Service>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing is wanted and no Service of ours has the name; or its removal is held.
    Nothing,
    /// No registration is left: delete our Service. Its EndpointSlices go with it
    /// (kube-controller-manager's garbage collector follows their ownerReference).
    Delete(Arc<Service>),
    /// A Service of this name exists and is not this bridge's: leave it, and say so.
    Conflict {
        service: Arc<Service>,
        target: Target,
    },
    /// Bring the Service and its slices to `groups`, with the conditions `health` gives.
    Converge {
        /// Delete this Service first: clusterIP is immutable, so only a new Service can switch
        /// headless on or off.
        recreate: Option<Arc<Service>>,
        service: ServiceStep,
        groups: Groups,
        health: Verdict,
    },
}

/// Decides for the Service `name`. `current` is the Service of that name in the cluster, ours or
/// not; `slices` are our EndpointSlices of it. `hold_removals`: the mass-deletion guard holds
/// this flush's removals, so endpoints the registry dropped stay until confirmed, while
/// additions and weight changes go out.
pub fn decide(
    name: &str,
    wanted: Option<&Wanted>,
    current: Option<&Arc<Service>>,
    slices: &[SlicePlan],
    hold_removals: bool,
    cfg: &ProjectionConfig,
) -> Decision {
    let ours = |s: &&Arc<Service>| is_owned(s.as_ref(), &cfg.instance);
    let Some(wanted) = wanted else {
        return match current.filter(ours) {
            Some(svc) if !hold_removals => Decision::Delete(svc.clone()),
            _ => Decision::Nothing,
        };
    };
    if let Some(svc) = current.filter(|s| !ours(s)) {
        return Decision::Conflict {
            service: svc.clone(),
            target: wanted.target.clone(),
        };
    }
    let groups = match hold_removals {
        true => guard::keep_removed(Some(&wanted.groups), slices),
        false => wanted.groups.clone(),
    };
    let desired = projection::service(name, &wanted.target, &groups, cfg);
    let (recreate, current) = match current {
        Some(c) if diff::service_needs_recreate(&desired, c) => (Some(c.clone()), None),
        c => (None, c),
    };
    let service = match current {
        Some(c) if !diff::service_needs_write(&desired, c) => ServiceStep::Keep(c.clone()),
        _ => ServiceStep::Apply(Box::new(desired)),
    };
    Decision::Converge {
        recreate,
        service,
        groups,
        health: wanted.health.clone(),
    }
}

/// The slice writes that bring `actual` (our slices of `service`) to `groups`, the endpoints in
/// `unhealthy` not serving, each slice owned by `owner` (the Service, once its uid is known).
/// Applies come before deletes, so an endpoint moving between slices is never missing. Where
/// endpoints go does not depend on their health: a change of health rewrites only the slice that
/// holds the endpoint.
pub fn slice_changes(
    source: &str,
    service: &str,
    groups: &Groups,
    unhealthy: &Unhealthy,
    actual: &[EndpointSlice],
    owner: Option<&OwnerReference>,
    cfg: &ProjectionConfig,
) -> Vec<SliceChange> {
    let existing: Vec<SlicePlan> = actual.iter().filter_map(slicing::from_object).collect();
    let desired = slicing::plan(service, groups, &existing, cfg.max_endpoints_per_slice)
        .iter()
        .map(|p| {
            let mut s =
                projection::slice(source, service, &p.name, &p.group, &p.addrs, unhealthy, cfg);
            s.metadata.owner_references = owner.map(|o| vec![o.clone()]);
            s
        })
        .collect();
    diff::diff_slices(desired, actual)
}

/// The ownerReference every slice of `svc` carries.
pub fn owner_reference(svc: &Service) -> OwnerReference {
    OwnerReference {
        api_version: "v1".into(),
        kind: "Service".into(),
        name: svc.name_any(),
        uid: svc.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// The target a Service of ours serves, read back from the annotations [`projection::service`]
/// wrote: what keeps names stable across restarts and leader changes.
pub fn target_of(svc: &Service) -> Option<Target> {
    let a = svc.metadata.annotations.as_ref()?;
    let kind = svc.metadata.labels.as_ref()?.get(labels::TARGET_KIND)?;
    let version = match kind.as_str() {
        "aggregate" => None,
        "version" => Some(a.get(labels::ANNOTATION_VERSION)?.clone()),
        _ => return None,
    };
    // Objects written before sources existed carry no source label: they are the flags' source.
    let source = svc.metadata.labels.as_ref()?.get(labels::SOURCE);
    Some(Target {
        source: source.map_or(DEFAULT_SOURCE, String::as_str).to_owned(),
        prefix: a.get(labels::ANNOTATION_PREFIX)?.clone(),
        name: a.get(labels::ANNOTATION_NAME)?.clone(),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Registration;
    use crate::projection::{AddressType, GroupKey};
    use kube::api::ObjectMeta;
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    fn cfg(headless: bool) -> ProjectionConfig {
        ProjectionConfig {
            namespace: "ns".into(),
            instance: "main".into(),
            headless,
            max_endpoints_per_slice: 2,
            cilium_weight: true,
            buckets: 1,
        }
    }

    fn target() -> Target {
        Target {
            source: "default".into(),
            prefix: "/".into(),
            name: "greeter".into(),
            version: Some("v1".into()),
        }
    }

    fn wanted(ips: &[u8], weight: i64) -> Wanted {
        let regs: Vec<Registration> = ips
            .iter()
            .map(|n| Registration {
                name: "greeter".into(),
                version: "v1".into(),
                addr: format!("10.0.0.{n}:50051").parse().unwrap(),
                weight,
            })
            .collect();
        Wanted::new(target(), projection::group(&regs))
    }

    /// `desired` as the apiserver gives it back: with a uid and, unless headless, a clusterIP.
    fn stored(desired: &Service) -> Arc<Service> {
        let mut s = desired.clone();
        s.metadata.uid = Some("uid-1".into());
        s.metadata.resource_version = Some("7".into());
        let spec = s.spec.get_or_insert_with(Default::default);
        spec.cluster_ip.get_or_insert_with(|| "10.96.0.10".into());
        Arc::new(s)
    }

    fn applied(d: &Decision) -> &Service {
        match d {
            Decision::Converge {
                service: ServiceStep::Apply(s),
                ..
            } => s,
            other => panic!("not an apply: {other:?}"),
        }
    }

    fn key(weight: i64) -> GroupKey {
        GroupKey {
            address_type: AddressType::IPv4,
            port: 50051,
            weight,
        }
    }

    fn none() -> Unhealthy {
        Unhealthy::new()
    }

    fn plans(groups: &Groups) -> Vec<SlicePlan> {
        slicing::plan("greeter-v1", groups, &[], 2)
    }

    #[test]
    fn a_new_service_is_applied_then_its_slices() {
        let w = wanted(&[1, 2, 3], 1);
        let d = decide("greeter-v1", Some(&w), None, &[], false, &cfg(true));
        let svc = applied(&d);
        assert_eq!(svc.metadata.name.as_deref(), Some("greeter-v1"));
        let owner = owner_reference(&stored(svc));
        let changes = slice_changes(
            "default",
            "greeter-v1",
            &w.groups,
            &none(),
            &[],
            Some(&owner),
            &cfg(true),
        );
        // Three endpoints, two per slice.
        assert_eq!(changes.len(), 2);
        for c in &changes {
            let SliceChange::Apply(s) = c else {
                panic!("{c:?}")
            };
            assert_eq!(
                s.metadata.owner_references.as_ref().unwrap()[0].uid,
                "uid-1"
            );
        }
    }

    #[test]
    fn an_unchanged_service_and_its_slices_cost_no_write() {
        let w = wanted(&[1, 2, 3], 1);
        let c = cfg(true);
        let svc = stored(applied(&decide(
            "greeter-v1",
            Some(&w),
            None,
            &[],
            false,
            &c,
        )));
        let owner = owner_reference(&svc);
        let slices: Vec<EndpointSlice> = slice_changes(
            "default",
            "greeter-v1",
            &w.groups,
            &none(),
            &[],
            Some(&owner),
            &c,
        )
        .into_iter()
        .map(|ch| match ch {
            SliceChange::Apply(s) => s,
            SliceChange::Delete(n) => panic!("nothing to delete yet: {n}"),
        })
        .collect();
        let d = decide(
            "greeter-v1",
            Some(&w),
            Some(&svc),
            &plans(&w.groups),
            false,
            &c,
        );
        assert!(matches!(
            &d,
            Decision::Converge {
                service: ServiceStep::Keep(_),
                recreate: None,
                ..
            }
        ));
        assert!(
            slice_changes(
                "default",
                "greeter-v1",
                &w.groups,
                &none(),
                &slices,
                Some(&owner),
                &c
            )
            .is_empty()
        );
    }

    #[test]
    fn no_registration_left_deletes_only_our_own_service_and_not_while_held() {
        let c = cfg(true);
        let ours = stored(applied(&decide(
            "greeter-v1",
            Some(&wanted(&[1], 1)),
            None,
            &[],
            false,
            &c,
        )));
        assert_eq!(
            decide("greeter-v1", None, Some(&ours), &[], false, &c),
            Decision::Delete(ours.clone())
        );
        assert_eq!(
            decide("greeter-v1", None, Some(&ours), &[], true, &c),
            Decision::Nothing
        );
        let users = Arc::new(Service {
            metadata: ObjectMeta {
                name: Some("greeter-v1".into()),
                ..Default::default()
            },
            ..Default::default()
        });
        assert_eq!(
            decide("greeter-v1", None, Some(&users), &[], false, &c),
            Decision::Nothing
        );
        let w = wanted(&[1], 1);
        assert!(matches!(
            decide("greeter-v1", Some(&w), Some(&users), &[], false, &c),
            Decision::Conflict { .. }
        ));
    }

    #[test]
    fn switching_headless_recreates_the_service() {
        let w = wanted(&[1], 1);
        let headless = stored(applied(&decide(
            "greeter-v1",
            Some(&w),
            None,
            &[],
            false,
            &cfg(true),
        )));
        let d = decide(
            "greeter-v1",
            Some(&w),
            Some(&headless),
            &[],
            false,
            &cfg(false),
        );
        let Decision::Converge {
            recreate, service, ..
        } = d
        else {
            panic!("{d:?}")
        };
        assert_eq!(recreate, Some(headless));
        assert!(matches!(service, ServiceStep::Apply(_)));
    }

    #[test]
    fn held_removals_keep_old_endpoints_while_new_ones_and_weights_go_out() {
        // Issue 10, hole 2, at the planner: 1 and 2 are replaced by 3 and 4 while the guard holds.
        let c = cfg(true);
        let before = wanted(&[1, 2], 1);
        let svc = stored(applied(&decide(
            "greeter-v1",
            Some(&before),
            None,
            &[],
            false,
            &c,
        )));
        let current = plans(&before.groups);
        let after = wanted(&[3, 4], 1);
        let d = decide("greeter-v1", Some(&after), Some(&svc), &current, true, &c);
        let Decision::Converge { groups, .. } = &d else {
            panic!("{d:?}")
        };
        let ips: Vec<IpAddr> = groups[&key(1)].iter().copied().collect();
        assert_eq!(ips.len(), 4, "old and new together: {ips:?}");
        // A weight change alone is not a removal: it goes out even while held.
        let reweighted = wanted(&[1, 2], 9);
        let d = decide(
            "greeter-v1",
            Some(&reweighted),
            Some(&svc),
            &current,
            true,
            &c,
        );
        let Decision::Converge { groups, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(groups.keys().copied().collect::<Vec<_>>(), vec![key(9)]);
        // Once confirmed, the removal goes too.
        let d = decide("greeter-v1", Some(&after), Some(&svc), &current, false, &c);
        let Decision::Converge { groups, .. } = &d else {
            panic!("{d:?}")
        };
        assert_eq!(groups, &after.groups);
    }

    /// The slices `changes` write, as the apiserver would then hold them.
    fn applied_slices(changes: Vec<SliceChange>) -> Vec<EndpointSlice> {
        changes
            .into_iter()
            .map(|ch| match ch {
                SliceChange::Apply(s) => s,
                SliceChange::Delete(n) => panic!("no delete expected: {n}"),
            })
            .collect()
    }

    #[test]
    fn a_change_of_health_rewrites_only_the_slice_that_holds_the_endpoint() {
        // Five endpoints, two per slice: three slices.
        let c = cfg(true);
        let w = wanted(&[1, 2, 3, 4, 5], 1);
        let first = applied_slices(slice_changes(
            "default",
            "s",
            &w.groups,
            &none(),
            &[],
            None,
            &c,
        ));
        assert_eq!(first.len(), 3);
        let sick: Unhealthy = [("10.0.0.3".parse().unwrap(), 50051)].into();
        let changes = slice_changes("default", "s", &w.groups, &sick, &first, None, &c);
        let [SliceChange::Apply(rewritten)] = changes.as_slice() else {
            panic!("one slice rewritten: {changes:?}")
        };
        let holder = first
            .iter()
            .find(|s| {
                crate::slicing::from_object(s)
                    .unwrap()
                    .addrs
                    .contains(&sick.first().unwrap().0)
            })
            .unwrap();
        assert_eq!(rewritten.metadata.name, holder.metadata.name);
        assert_eq!(
            slicing::from_object(rewritten),
            slicing::from_object(holder),
            "same layout"
        );
        let ep = rewritten
            .endpoints
            .iter()
            .find(|e| e.addresses == ["10.0.0.3"])
            .unwrap();
        assert_eq!(ep.conditions.as_ref().unwrap().ready, Some(false));
        // While states hold, nothing is written.
        let mut now = first.clone();
        for s in &mut now {
            if s.metadata.name == rewritten.metadata.name {
                *s = rewritten.clone();
            }
        }
        assert!(slice_changes("default", "s", &w.groups, &sick, &now, None, &c).is_empty());
        // Recovery rewrites the same slice back.
        let back = slice_changes("default", "s", &w.groups, &none(), &now, None, &c);
        assert_eq!(back.len(), 1);
    }

    #[test]
    fn decide_carries_the_health_verdict() {
        let c = cfg(true);
        let mut w = wanted(&[1, 2, 3], 1);
        w.health = crate::import::panic_guard::apply(
            &w.groups,
            |e| e.0 == "10.0.0.1".parse::<IpAddr>().unwrap(),
            0.5,
        );
        let Decision::Converge { health, .. } =
            decide("greeter-v1", Some(&w), None, &[], false, &c)
        else {
            panic!()
        };
        assert_eq!(health, w.health);
        assert_eq!(health.unhealthy.len(), 1);
    }

    #[test]
    fn a_service_of_ours_names_its_target() {
        let c = cfg(true);
        for t in [
            target(),
            Target {
                source: "default".into(),
                version: None,
                ..target()
            },
        ] {
            let svc = projection::service("x", &t, &BTreeMap::new(), &c);
            assert_eq!(target_of(&svc), Some(t));
        }
        assert_eq!(target_of(&Service::default()), None);
    }
}
