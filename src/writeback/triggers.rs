//! Which EtcdRegistrations a change outside them concerns: a followed Service or EndpointSlice
//! changed (or went). Pure, over the controller's store; the controller reconciles what these
//! return.
//!
//! Reconciling an object it did not need to costs a few etcd reads and writes nothing, so the
//! matching errs towards too many, never too few.

use crate::writeback::crd::EtcdRegistration;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writeback::crd::{Address, EtcdRegistrationSpec, ServiceRef};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
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
}
