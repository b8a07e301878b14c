//! Turns the registrations of one target into the Service and EndpointSlices that describe them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::format::Registration;
use crate::labels;
use crate::target::Target;

/// An EndpointSlice's `addressType` (the bridge never projects FQDNs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn of(ip: IpAddr) -> AddressType {
        match ip {
            IpAddr::V4(_) => AddressType::IPv4,
            IpAddr::V6(_) => AddressType::IPv6,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
        }
    }

    /// The inverse of [`AddressType::as_str`]; `None` for FQDN or anything else.
    pub fn parse(s: &str) -> Option<AddressType> {
        match s {
            "IPv4" => Some(AddressType::IPv4),
            "IPv6" => Some(AddressType::IPv6),
            _ => None,
        }
    }
}

/// Endpoints that can share a slice: a slice has one address type and one port, and carries one
/// weight (as an annotation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub address_type: AddressType,
    pub port: u16,
    pub weight: i64,
}

pub type Groups = BTreeMap<GroupKey, BTreeSet<IpAddr>>;

/// One endpoint of a Service: its address and port.
pub type EndpointId = (IpAddr, u16);

/// The endpoints whose health checks failed (after the thresholds and the panic guard): what the
/// projection writes as not serving. Every other endpoint serves: one that is not probed, or has
/// no result yet, is ready as it always was.
pub type Unhealthy = BTreeSet<EndpointId>;

/// The conditions of one endpoint, following the EndpointSlice conventions (KEP-1672): a
/// registration of weight 0 (or below, which Cilium also reads as 0) is draining, so it is
/// terminating and not ready, but keeps serving while its health checks pass; proxies fall back to
/// serving, terminating endpoints only when no ready one is left (KEP-1669).
pub fn conditions(weight: i64, serving: bool) -> EndpointConditions {
    let draining = weight <= 0;
    EndpointConditions {
        ready: Some(serving && !draining),
        serving: Some(serving),
        terminating: Some(draining),
    }
}

/// Groups the registrations of one target by slice group, each ip:port once.
///
/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are projected as the IPv4 address they are:
/// the apiserver refuses them in IPv6 slices, and connections to them reach the IPv4 host.
///
/// The same ip:port can be registered twice in one target (under two versions, for the
/// aggregate). It is projected once, with the highest of its weights: a rule that does not depend
/// on the order events arrived in, and never starves an endpoint some registration weighs heavily.
pub fn group<'a>(regs: impl IntoIterator<Item = &'a Registration>) -> Groups {
    let mut weights: BTreeMap<(IpAddr, u16), i64> = BTreeMap::new();
    for reg in regs {
        let endpoint = (reg.addr.ip().to_canonical(), reg.addr.port());
        let weight = weights.entry(endpoint).or_insert(reg.weight);
        *weight = (*weight).max(reg.weight);
    }
    let mut groups = Groups::new();
    for ((ip, port), weight) in weights {
        let key = GroupKey {
            address_type: AddressType::of(ip),
            port,
            weight,
        };
        groups.entry(key).or_default().insert(ip);
    }
    groups
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionConfig {
    pub namespace: String,
    pub instance: String,
    pub headless: bool,
    pub max_endpoints_per_slice: usize,
    /// Also write the weight as Cilium's `service.cilium.io/weight`.
    pub cilium_weight: bool,
    /// `--leader-buckets`: with more than one, every object is labelled with its bucket.
    pub buckets: u32,
}

/// The largest weight Cilium's annotation takes.
pub const CILIUM_MAX_WEIGHT: i64 = 65535;

/// `weight` as Cilium's annotation can carry it: clamped to 0..=65535.
pub fn cilium_weight(weight: i64) -> i64 {
    weight.clamp(0, CILIUM_MAX_WEIGHT)
}

/// The name of a port in the Service and its slices. Istio infers the protocol from the `grpc`
/// prefix; one name per port number keeps Service and slice ports matched when ports differ.
pub fn port_name(port: u16) -> String {
    format!("grpc-{port}")
}

const TCP: &str = "TCP";

/// Labels on every object the bridge projects from the registry `source` for the Service
/// `service`. Its bucket only when writing is sharded: one bucket adds nothing, so objects
/// written before sharding existed need no write.
fn owner_labels(cfg: &ProjectionConfig, source: &str, service: &str) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = [
        (labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
        (labels::PART_OF, labels::PART_OF_VALUE),
        (labels::INSTANCE, cfg.instance.as_str()),
        (labels::SOURCE, source),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    if cfg.buckets > 1 {
        let bucket = crate::leader::buckets::of_service(source, service, cfg.buckets);
        labels.insert(labels::BUCKET.to_owned(), bucket.to_string());
    }
    labels
}

/// The selector-less Service `name` for `target`, with one port per distinct port in `groups`.
pub fn service(name: &str, target: &Target, groups: &Groups, cfg: &ProjectionConfig) -> Service {
    let mut labels = owner_labels(cfg, &target.source, name);
    labels.insert(labels::APP_NAME.to_owned(), name.to_owned());
    let kind = if target.version.is_some() {
        "version"
    } else {
        "aggregate"
    };
    labels.insert(labels::TARGET_KIND.to_owned(), kind.to_owned());

    let mut annotations = BTreeMap::new();
    annotations.insert(labels::ANNOTATION_NAME.to_owned(), target.name.clone());
    if let Some(version) = &target.version {
        annotations.insert(labels::ANNOTATION_VERSION.to_owned(), version.clone());
    }
    annotations.insert(labels::ANNOTATION_PREFIX.to_owned(), target.prefix.clone());

    let ports: BTreeSet<u16> = groups.keys().map(|g| g.port).collect();
    let ports = ports
        .into_iter()
        .map(|port| ServicePort {
            name: Some(port_name(port)),
            port: i32::from(port),
            target_port: Some(IntOrString::Int(i32::from(port))),
            protocol: Some(TCP.to_owned()),
            ..ServicePort::default()
        })
        .collect();

    Service {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: cfg.headless.then(|| "None".to_owned()),
            ports: Some(ports),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// The EndpointSlice `name` of Service `service` (of the registry `source`) holding `addrs` of
/// `group`, each endpoint with
/// the [`conditions`] of its weight and of whether it is in `unhealthy`. Endpoints are sorted so
/// the same input always gives the same object. Owner references are left to the caller, which
/// knows the Service's uid.
pub fn slice(
    source: &str,
    service: &str,
    name: &str,
    group: &GroupKey,
    addrs: &[IpAddr],
    unhealthy: &Unhealthy,
    cfg: &ProjectionConfig,
) -> EndpointSlice {
    let mut labels = owner_labels(cfg, source, service);
    labels.insert(labels::SERVICE_NAME.to_owned(), service.to_owned());
    labels.insert(
        labels::SLICE_MANAGED_BY.to_owned(),
        labels::SLICE_MANAGED_BY_VALUE.to_owned(),
    );
    if cfg.headless {
        labels.insert(labels::HEADLESS.to_owned(), String::new());
    }
    let mut annotations = BTreeMap::from([(
        labels::ANNOTATION_WEIGHT.to_owned(),
        group.weight.to_string(),
    )]);
    if cfg.cilium_weight {
        annotations.insert(
            labels::ANNOTATION_CILIUM_WEIGHT.to_owned(),
            cilium_weight(group.weight).to_string(),
        );
    }

    let addrs: BTreeSet<IpAddr> = addrs.iter().map(|ip| ip.to_canonical()).collect();
    let endpoints = addrs
        .into_iter()
        .map(|ip| Endpoint {
            addresses: vec![ip.to_string()],
            conditions: Some(conditions(
                group.weight,
                !unhealthy.contains(&(ip, group.port)),
            )),
            ..Endpoint::default()
        })
        .collect();

    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        address_type: group.address_type.as_str().to_owned(),
        endpoints,
        ports: Some(vec![EndpointPort {
            name: Some(port_name(group.port)),
            port: Some(i32::from(group.port)),
            protocol: Some(TCP.to_owned()),
            ..EndpointPort::default()
        }]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn reg(version: &str, addr: &str, weight: i64) -> Registration {
        Registration {
            name: "greeter".into(),
            version: version.into(),
            addr: addr.parse::<SocketAddr>().unwrap(),
            weight,
        }
    }

    fn cfg(headless: bool) -> ProjectionConfig {
        ProjectionConfig {
            namespace: "grpc".into(),
            instance: "main".into(),
            headless,
            max_endpoints_per_slice: 100,
            cilium_weight: true,
            buckets: 1,
        }
    }

    fn key(address_type: AddressType, port: u16, weight: i64) -> GroupKey {
        GroupKey {
            address_type,
            port,
            weight,
        }
    }

    fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn groups_by_family_port_and_weight() {
        let regs = [
            reg("v1", "10.0.0.2:80", 1),
            reg("v1", "10.0.0.1:80", 1),
            reg("v1", "10.0.0.3:81", 1),
            reg("v2", "10.0.0.4:80", 2),
            reg("v2", "[fd00::1]:80", 1),
            reg("", "[::ffff:10.0.0.5]:80", 1),
        ];
        let groups = group(&regs);
        let want: Groups = [
            (
                key(AddressType::IPv4, 80, 1),
                ips(&["10.0.0.1", "10.0.0.2", "10.0.0.5"]),
            ),
            (key(AddressType::IPv4, 80, 2), ips(&["10.0.0.4"])),
            (key(AddressType::IPv4, 81, 1), ips(&["10.0.0.3"])),
            (key(AddressType::IPv6, 80, 1), ips(&["fd00::1"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(groups, want);
    }

    #[test]
    fn same_endpoint_twice_is_projected_once_with_the_highest_weight() {
        let regs = [
            reg("v1", "10.0.0.1:80", 5),
            reg("v2", "10.0.0.1:80", 2),
            reg("", "10.0.0.1:80", 5),
        ];
        let want: Groups = [(key(AddressType::IPv4, 80, 5), ips(&["10.0.0.1"]))]
            .into_iter()
            .collect();
        assert_eq!(group(&regs), want);
        assert_eq!(group(regs.iter().rev()), want);
    }

    #[test]
    fn service_carries_identity_and_ports() {
        let target = Target {
            source: "default".into(),
            prefix: "/reg/".into(),
            name: "Greeter".into(),
            version: Some("v1".into()),
        };
        let groups = group(&[
            reg("v1", "10.0.0.1:8080", 1),
            reg("v1", "10.0.0.2:80", 1),
            reg("v1", "10.0.0.3:80", 2),
        ]);
        let svc = service("greeter-v1-1234abcd", &target, &groups, &cfg(false));
        let json = serde_json::to_value(&svc).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "greeter-v1-1234abcd",
                    "namespace": "grpc",
                    "labels": {
                        "app.kubernetes.io/managed-by": "etcd-bridge",
                        "app.kubernetes.io/part-of": "etcd-bridge",
                        "app.kubernetes.io/name": "greeter-v1-1234abcd",
                        "etcd-bridge.io/instance": "main",
                        "etcd-bridge.io/source": "default",
                        "etcd-bridge.io/target": "version",
                    },
                    "annotations": {
                        "etcd-bridge.io/name": "Greeter",
                        "etcd-bridge.io/version": "v1",
                        "etcd-bridge.io/prefix": "/reg/",
                    },
                },
                "spec": {
                    "ports": [
                        {"name": "grpc-80", "port": 80, "targetPort": 80, "protocol": "TCP"},
                        {"name": "grpc-8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
                    ],
                },
            })
        );
    }

    #[test]
    fn headless_aggregate_service() {
        let target = Target {
            source: "default".into(),
            prefix: "/".into(),
            name: "greeter".into(),
            version: None,
        };
        let svc = service("greeter", &target, &Groups::new(), &cfg(true));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.ports, Some(vec![]));
        assert!(spec.selector.is_none());
        let labels = svc.metadata.labels.unwrap();
        assert_eq!(labels[labels::TARGET_KIND], "aggregate");
        let annotations = svc.metadata.annotations.unwrap();
        assert!(!annotations.contains_key(labels::ANNOTATION_VERSION));
        assert_eq!(annotations[labels::ANNOTATION_NAME], "greeter");
    }

    #[test]
    fn slice_is_sorted_and_complete() {
        let g = key(AddressType::IPv6, 50051, 7);
        let addrs: Vec<IpAddr> = ["fd00::2", "fd00::1", "fd00::2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let s = slice(
            "default",
            "greeter",
            "greeter-abc-0",
            &g,
            &addrs,
            &Unhealthy::new(),
            &cfg(false),
        );
        let json = serde_json::to_value(&s).unwrap();
        let ready = serde_json::json!({"ready": true, "serving": true, "terminating": false});
        assert_eq!(
            json,
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": "greeter-abc-0",
                    "namespace": "grpc",
                    "labels": {
                        "kubernetes.io/service-name": "greeter",
                        "endpointslice.kubernetes.io/managed-by": "controller.etcd-bridge.io",
                        "app.kubernetes.io/managed-by": "etcd-bridge",
                        "app.kubernetes.io/part-of": "etcd-bridge",
                        "etcd-bridge.io/instance": "main",
                        "etcd-bridge.io/source": "default",
                    },
                    "annotations": {"etcd-bridge.io/weight": "7", "service.cilium.io/weight": "7"},
                },
                "addressType": "IPv6",
                "endpoints": [
                    {"addresses": ["fd00::1"], "conditions": ready},
                    {"addresses": ["fd00::2"], "conditions": ready},
                ],
                "ports": [{"name": "grpc-50051", "port": 50051, "protocol": "TCP"}],
            })
        );
    }

    #[test]
    fn slices_of_headless_services_say_so_for_kube_proxy() {
        let ip: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let g = key(AddressType::IPv4, 80, 1);
        let labels = |headless| {
            slice(
                "default",
                "s",
                "s-0",
                &g,
                &ip,
                &Unhealthy::new(),
                &cfg(headless),
            )
            .metadata
            .labels
            .unwrap()
        };
        assert_eq!(
            labels(true).get(labels::HEADLESS).map(String::as_str),
            Some("")
        );
        assert!(!labels(false).contains_key(labels::HEADLESS));
    }

    #[test]
    fn cilium_weight_is_clamped_and_can_be_turned_off() {
        let ip: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let annotation = |weight: i64, on: bool| {
            let c = ProjectionConfig {
                cilium_weight: on,
                ..cfg(true)
            };
            let g = key(AddressType::IPv4, 80, weight);
            slice("default", "s", "s-0", &g, &ip, &Unhealthy::new(), &c)
                .metadata
                .annotations
                .unwrap()
                .get(labels::ANNOTATION_CILIUM_WEIGHT)
                .cloned()
        };
        assert_eq!(annotation(0, true).as_deref(), Some("0"), "0 drains");
        assert_eq!(annotation(65535, true).as_deref(), Some("65535"));
        assert_eq!(annotation(70000, true).as_deref(), Some("65535"));
        assert_eq!(annotation(7, false), None);
    }

    #[test]
    fn conditions_follow_the_health_table() {
        let c = |weight, serving| flags(&conditions(weight, serving));
        // (ready, serving, terminating), as in the README's table.
        assert_eq!(c(1, true), (true, true, false), "serving");
        assert_eq!(c(1, false), (false, false, false), "failing its checks");
        assert_eq!(c(0, true), (false, true, true), "weight 0: draining");
        assert_eq!(
            c(-1, true),
            (false, true, true),
            "below 0 drains, as in Cilium"
        );
        assert_eq!(c(0, false), (false, false, true), "draining and failing");
    }

    /// (ready, serving, terminating), each of which the projection always sets.
    fn flags(c: &EndpointConditions) -> (bool, bool, bool) {
        (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap())
    }

    #[test]
    fn a_slice_writes_each_endpoints_conditions() {
        let g = key(AddressType::IPv4, 80, 3);
        let addrs: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        // 10.0.0.2 fails on port 80; 10.0.0.1 fails only on another port, which is not this one.
        let unhealthy = Unhealthy::from([(addrs[1], 80), (addrs[0], 81)]);
        let s = slice("default", "s", "s-0", &g, &addrs, &unhealthy, &cfg(true));
        let got: Vec<(String, (bool, bool, bool))> = s
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    flags(e.conditions.as_ref().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_owned(), (true, true, false)),
                ("10.0.0.2".to_owned(), (false, false, false)),
            ]
        );
        let drained = key(AddressType::IPv4, 80, 0);
        let s = slice(
            "default",
            "s",
            "s-0",
            &drained,
            &addrs[..1],
            &Unhealthy::new(),
            &cfg(true),
        );
        assert_eq!(
            flags(s.endpoints[0].conditions.as_ref().unwrap()),
            (false, true, true)
        );
    }

    #[test]
    fn address_type_round_trips() {
        for t in [AddressType::IPv4, AddressType::IPv6] {
            assert_eq!(AddressType::parse(t.as_str()), Some(t));
        }
        assert_eq!(AddressType::parse("FQDN"), None);
        assert_eq!(port_name(50051), "grpc-50051");
    }
}
