//! What an EtcdRegistration asks for in etcd: its keys and values, and the ready addresses of a
//! followed Service. Pure.

use crate::format::etcd_naming;
use crate::format::seed::{self, OWNER_FIELD};
use crate::writeback::crd::{EtcdRegistrationSpec, WriteFormat};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// One key the bridge keeps in etcd for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredKey {
    pub key: String,
    pub value: String,
}

/// The owner marker of the object `namespace/name` of bridge `instance`.
pub fn owner(instance: &str, namespace: &str, name: &str) -> String {
    format!("{instance}/{namespace}/{name}")
}

/// The keys and values, exactly as the seed's `Register` (or etcd's endpoints `Manager`, for
/// the etcd-naming format) writes them, plus the owner marker and the spec's metadata.
pub fn keys(
    prefix: &str,
    owner: &str,
    spec: &EtcdRegistrationSpec,
    addrs: &[String],
) -> Vec<DesiredKey> {
    let version = spec.version.as_deref().unwrap_or("");
    let metadata: BTreeMap<String, String> = spec.metadata.clone().unwrap_or_default();
    let mut extra = metadata.clone();
    extra.insert(OWNER_FIELD.into(), owner.into());
    let value = |addr: &str| match spec.format.unwrap_or_default() {
        WriteFormat::Seed => seed::encode_value(&spec.service, version, addr, spec.weight, &extra),
        WriteFormat::EtcdNaming => {
            etcd_naming::encode_value(addr, spec.weight, &metadata, &[(OWNER_FIELD, owner)])
        }
    };
    let mut out: Vec<DesiredKey> = addrs
        .iter()
        .map(|addr| DesiredKey {
            // Both formats share the key: `{target}/{addr}` with the target the service (and
            // version), which is what an etcd-naming client dials.
            key: seed::reg_key(prefix, &spec.service, version, addr),
            value: value(addr),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out.dedup_by(|a, b| a.key == b.key);
    out
}

/// The ready endpoints of a Service's EndpointSlices on `port` (by name, or by number), as
/// `ip:port` / `[ipv6]:port`. Terminating and not-ready endpoints are left out.
pub fn ready_addresses(slices: &[EndpointSlice], port: &IntOrString) -> Vec<String> {
    let mut out = Vec::new();
    for s in slices {
        if s.address_type != "IPv4" && s.address_type != "IPv6" {
            continue;
        }
        let Some(number) = s.ports.iter().flatten().find_map(|p| {
            let matches = match port {
                IntOrString::String(name) => p.name.as_deref() == Some(name.as_str()),
                IntOrString::Int(n) => p.port == Some(*n),
            };
            if matches { p.port } else { None }
        }) else {
            continue;
        };
        for e in &s.endpoints {
            let c = e.conditions.clone().unwrap_or_default();
            if !c.ready.unwrap_or(true) || c.terminating.unwrap_or(false) {
                continue;
            }
            if let Some(ip) = e.addresses.first() {
                out.push(if s.address_type == "IPv6" {
                    format!("[{ip}]:{number}")
                } else {
                    format!("{ip}:{number}")
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    fn spec(version: Option<&str>) -> EtcdRegistrationSpec {
        EtcdRegistrationSpec {
            service: "greeter".into(),
            version: version.map(Into::into),
            weight: 5,
            addresses: None,
            service_ref: None,
            metadata: Some(BTreeMap::from([("zone".into(), "a".into())])),
            format: None,
            source: None,
        }
    }

    #[test]
    fn etcd_naming_keys_share_the_layout_and_carry_endpoint_values() {
        let mut s = spec(Some("v1"));
        s.format = Some(WriteFormat::EtcdNaming);
        let k = keys("/", "default/ns/reg", &s, &["10.0.0.1:50051".into()]);
        assert_eq!(k[0].key, "/greeter/v1/10.0.0.1:50051");
        assert_eq!(
            k[0].value,
            r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"weight":5,"zone":"a"},"etcd-bridge.io/owner":"default/ns/reg"}"#
        );
        assert_eq!(
            seed::owner_of(k[0].value.as_bytes()).as_deref(),
            Some("default/ns/reg")
        );
    }

    #[test]
    fn keys_are_the_seed_format_with_the_owner_marker() {
        let k = keys(
            "/",
            "default/ns/reg",
            &spec(Some("v1")),
            &["10.0.0.1:50051".into()],
        );
        assert_eq!(k[0].key, "/greeter/v1/10.0.0.1:50051");
        assert_eq!(
            k[0].value,
            r#"{"name":"greeter","addr":"10.0.0.1:50051","version":"v1","weight":5,"etcd-bridge.io/owner":"default/ns/reg","zone":"a"}"#
        );
        assert_eq!(
            seed::owner_of(k[0].value.as_bytes()).as_deref(),
            Some("default/ns/reg")
        );
        let k = keys(
            "/svc/",
            "o",
            &spec(None),
            &["10.0.0.1:1".into(), "10.0.0.1:1".into()],
        );
        assert_eq!(k.len(), 1);
        assert_eq!(k[0].key, "/svc/greeter/10.0.0.1:1");
    }

    fn slice(
        kind: &str,
        port_name: &str,
        port: i32,
        eps: &[(&str, Option<bool>)],
    ) -> EndpointSlice {
        EndpointSlice {
            address_type: kind.into(),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.into()),
                port: Some(port),
                ..Default::default()
            }]),
            endpoints: eps
                .iter()
                .map(|(ip, ready)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: *ready,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn ready_addresses_follow_the_port_and_readiness() {
        let slices = vec![
            slice(
                "IPv4",
                "grpc",
                8080,
                &[
                    ("10.0.0.1", Some(true)),
                    ("10.0.0.2", Some(false)),
                    ("10.0.0.3", None),
                ],
            ),
            slice("IPv6", "grpc", 8080, &[("fd00::1", Some(true))]),
            slice("IPv4", "metrics", 9090, &[("10.0.0.9", Some(true))]),
            slice("FQDN", "grpc", 8080, &[("example.com", Some(true))]),
        ];
        assert_eq!(
            ready_addresses(&slices, &IntOrString::String("grpc".into())),
            ["10.0.0.1:8080", "10.0.0.3:8080", "[fd00::1]:8080"]
        );
        assert_eq!(
            ready_addresses(&slices, &IntOrString::Int(9090)),
            ["10.0.0.9:9090"]
        );
        assert!(ready_addresses(&slices, &IntOrString::Int(1)).is_empty());
    }
}
