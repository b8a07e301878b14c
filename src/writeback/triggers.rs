//! Which EtcdRegistrations a change outside them concerns: a followed Service or EndpointSlice
//! changed (or went), or a key under the write-back prefix left etcd (deleted, or expired with
//! its lease), which may be a foreign key that blocked a registration, or one of ours. Pure,
//! over the controller's store; the controller reconciles what these return.
//!
//! Reconciling an object it did not need to costs a few etcd reads and writes nothing, so the
//! matching errs towards too many, never too few.

use crate::source::spec::DEFAULT_SOURCE;
use crate::writeback::crd::EtcdRegistration;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use std::collections::BTreeSet;
use std::sync::Arc;

/// The label by which an EndpointSlice names its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The registrations of `namespace` whose serviceRef names the Service `service`.
pub fn following_service(
    regs: &[Arc<EtcdRegistration>],
    namespace: Option<&str>,
    service: &str,
) -> Vec<ObjectRef<EtcdRegistration>> {
    regs.iter()
        .filter(|r| r.namespace().as_deref() == namespace)
        .filter(|r| {
            r.spec
                .service_ref
                .as_ref()
                .is_some_and(|s| s.name == service)
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The registrations that follow the Service of an EndpointSlice with these labels.
pub fn following_slice(
    regs: &[Arc<EtcdRegistration>],
    namespace: Option<&str>,
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<ObjectRef<EtcdRegistration>> {
    match labels.get(SERVICE_NAME_LABEL) {
        Some(service) => following_service(regs, namespace, service),
        None => Vec::new(),
    }
}

/// The registrations that would write `key` (written back under `prefix` in the registry
/// `source`): they name that registry, have the same service and version, and the address among
/// their static addresses; any address for a serviceRef, whose addresses the store does not hold.
pub fn wanting_key(
    regs: &[Arc<EtcdRegistration>],
    source: &str,
    prefix: &str,
    key: &str,
) -> Vec<ObjectRef<EtcdRegistration>> {
    let Some((service, version, addr)) = split_key(prefix, key) else {
        return Vec::new();
    };
    regs.iter()
        .filter(|r| r.spec.source.as_deref().unwrap_or(DEFAULT_SOURCE) == source)
        .filter(|r| r.spec.service == service && r.spec.version.as_deref().unwrap_or("") == version)
        .filter(|r| match &r.spec.addresses {
            Some(a) => a.iter().any(|a| a.0 == addr),
            None => r.spec.service_ref.is_some(),
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// The registrations that name one of `sources` (none named: `default`), or whose status says
/// their keys are in one.
pub fn in_registries(
    regs: &[Arc<EtcdRegistration>],
    sources: &BTreeSet<String>,
) -> Vec<ObjectRef<EtcdRegistration>> {
    regs.iter()
        .filter(|r| {
            let named = r.spec.source.as_deref().unwrap_or(DEFAULT_SOURCE);
            let holding = (r.status.as_ref()).and_then(|s| s.source.as_deref());
            sources.contains(named) || holding.is_some_and(|h| sources.contains(h))
        })
        .map(|r| ObjectRef::from_obj(r.as_ref()))
        .collect()
}

/// `{prefix}{service}/{version}/{addr}` or `{prefix}{service}/{addr}` (what `format::seed::reg_key`
/// writes) as (service, version, addr). None of the three may contain `/` (the CRD's schema
/// refuses it), so the split is unambiguous.
fn split_key<'k>(prefix: &str, key: &'k str) -> Option<(&'k str, &'k str, &'k str)> {
    let rest = key.strip_prefix(prefix)?;
    let mut parts = rest.split('/');
    let (first, second, third) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() {
        return None;
    }
    let (service, version, addr) = match third {
        Some(addr) => (first, second, addr),
        None => (first, "", second),
    };
    (!service.is_empty() && !addr.is_empty()).then_some((service, version, addr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::crd::{
        Address, EtcdRegistrationSpec, EtcdRegistrationStatus, ServiceRef,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn reg(
        ns: &str,
        name: &str,
        service: &str,
        version: Option<&str>,
        addrs: Option<&[&str]>,
        follows: Option<&str>,
    ) -> Arc<EtcdRegistration> {
        let mut r = EtcdRegistration::new(
            name,
            EtcdRegistrationSpec {
                service: service.into(),
                version: version.map(Into::into),
                weight: 1,
                addresses: addrs.map(|a| a.iter().map(|s| Address(s.to_string())).collect()),
                service_ref: follows.map(|n| ServiceRef {
                    name: n.into(),
                    port: IntOrString::Int(80),
                }),
                metadata: None,
                format: None,
                source: None,
            },
        );
        r.metadata.namespace = Some(ns.into());
        Arc::new(r)
    }

    fn names(refs: Vec<ObjectRef<EtcdRegistration>>) -> Vec<String> {
        let mut v: Vec<String> = refs
            .into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect();
        v.sort();
        v
    }

    fn estate() -> Vec<Arc<EtcdRegistration>> {
        vec![
            reg(
                "a",
                "static-v2",
                "billing",
                Some("v2"),
                Some(&["10.0.0.1:9000", "[fd00::1]:9000"]),
                None,
            ),
            reg(
                "a",
                "static-nov",
                "billing",
                None,
                Some(&["10.0.0.1:9000"]),
                None,
            ),
            reg("b", "ref-v2", "billing", Some("v2"), None, Some("api")),
            reg("b", "ref-other", "payments", None, None, Some("api")),
            reg("a", "ref-api", "api", None, None, Some("api")),
        ]
    }

    #[test]
    fn a_freed_key_concerns_the_registrations_that_want_it() {
        let regs = estate();
        assert_eq!(
            names(wanting_key(
                &regs,
                "default",
                "/p/",
                "/p/billing/v2/10.0.0.1:9000"
            )),
            ["a/static-v2", "b/ref-v2"]
        );
        assert_eq!(
            names(wanting_key(
                &regs,
                "default",
                "/p/",
                "/p/billing/v2/[fd00::1]:9000"
            )),
            ["a/static-v2", "b/ref-v2"]
        );
        assert_eq!(
            names(wanting_key(
                &regs,
                "default",
                "/p/",
                "/p/billing/10.0.0.1:9000"
            )),
            ["a/static-nov"]
        );
        // An address nobody lists, another version, another prefix: nobody.
        assert_eq!(
            names(wanting_key(
                &regs,
                "default",
                "/p/",
                "/p/billing/10.0.0.9:9000"
            )),
            Vec::<String>::new()
        );
        assert!(wanting_key(&regs, "default", "/p/", "/p/billing/v3/10.0.0.1:9000").is_empty());
        assert!(wanting_key(&regs, "default", "/p/", "/q/billing/v2/10.0.0.1:9000").is_empty());
        // Not a registration key at all.
        assert!(wanting_key(&regs, "default", "/p/", "/p/billing").is_empty());
        assert!(wanting_key(&regs, "default", "/p/", "/p/billing/v2/x/10.0.0.1:9000").is_empty());
    }

    #[test]
    fn a_freed_key_concerns_only_the_registrations_naming_its_registry() {
        let mut east = (*reg("a", "east", "billing", None, Some(&["10.0.0.1:9000"]), None)).clone();
        east.spec.source = Some("east".into());
        let regs = [estate(), vec![Arc::new(east)]].concat();
        let key = "/p/billing/10.0.0.1:9000";
        assert_eq!(names(wanting_key(&regs, "east", "/p/", key)), ["a/east"]);
        assert_eq!(
            names(wanting_key(&regs, "default", "/p/", key)),
            ["a/static-nov"]
        );
        assert!(wanting_key(&regs, "west", "/p/", key).is_empty());
    }

    #[test]
    fn a_registry_change_concerns_those_naming_it_or_holding_keys_in_it() {
        let mut east = (*reg("a", "east", "billing", None, Some(&["10.0.0.1:9000"]), None)).clone();
        east.spec.source = Some("east".into());
        // Named west now, keys still in east: both registries concern it.
        let mut moving = east.clone();
        moving.metadata.name = Some("moving".into());
        moving.spec.source = Some("west".into());
        moving.status = Some(EtcdRegistrationStatus {
            source: Some("east".into()),
            ..Default::default()
        });
        let regs = [estate(), vec![Arc::new(east), Arc::new(moving)]].concat();
        let set = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            names(in_registries(&regs, &set(&["east"]))),
            ["a/east", "a/moving"]
        );
        assert_eq!(names(in_registries(&regs, &set(&["west"]))), ["a/moving"]);
        assert_eq!(
            in_registries(&regs, &set(&["default"])).len(),
            estate().len()
        );
        assert!(in_registries(&regs, &set(&["north"])).is_empty());
    }

    #[test]
    fn a_service_or_its_slice_concerns_the_registrations_following_it_in_its_namespace() {
        let regs = estate();
        assert_eq!(
            names(following_service(&regs, Some("b"), "api")),
            ["b/ref-other", "b/ref-v2"]
        );
        assert_eq!(
            names(following_service(&regs, Some("a"), "api")),
            ["a/ref-api"]
        );
        assert!(following_service(&regs, Some("c"), "api").is_empty());
        assert!(following_service(&regs, Some("a"), "billing").is_empty());
        let labels = BTreeMap::from([(SERVICE_NAME_LABEL.to_string(), "api".to_string())]);
        assert_eq!(
            names(following_slice(&regs, Some("a"), &labels)),
            ["a/ref-api"]
        );
        assert!(following_slice(&regs, Some("a"), &BTreeMap::new()).is_empty());
    }

    proptest! {
        /// Whatever the names, a key the bridge would write for an address concerns the
        /// registration that lists that address.
        #[test]
        fn every_written_key_maps_back_to_its_registration(
            service in "[a-zA-Z0-9_.:-]{1,20}",
            version in proptest::option::of("[a-zA-Z0-9_.:-]{0,10}"),
            addr in "(10\\.[0-9]{1,3}\\.0\\.1|\\[fd00::[0-9a-f]{1,4}\\]):[0-9]{1,5}",
            prefix in "/([a-z0-9-]{1,8}/){0,2}",
        ) {
            let r = reg("ns", "r", &service, version.as_deref(), Some(&[addr.as_str()]), None);
            let key = crate::format::seed::reg_key(&prefix, &service, version.as_deref().unwrap_or(""), &addr);
            prop_assert_eq!(names(wanting_key(&[r], "default", &prefix, &key)), vec!["ns/r".to_string()]);
        }
    }
}
