//! Decides which writes are needed by comparing only what the bridge sets: the apiserver adds
//! and defaults fields (uid, clusterIP, ipFamilies, managedFields, condition defaults, ...) that
//! must not make an unchanged object look changed, or every resync would rewrite everything.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The protocol the apiserver defaults a port to.
const DEFAULT_PROTOCOL: &str = "TCP";

/// Whether every label and annotation of `desired` is on `actual` with the same value. Others'
/// labels and annotations are theirs to keep.
fn meta_covers(desired: &ObjectMeta, actual: &ObjectMeta) -> bool {
    let covers = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    covers(&desired.labels, &actual.labels) && covers(&desired.annotations, &actual.annotations)
}

fn is_headless(service: &Service) -> bool {
    service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum TargetPort {
    Number(i32),
    Name(String),
}

/// (name, port, targetPort, protocol) of every port, sorted, with the apiserver's defaults filled
/// in: targetPort is the port, protocol TCP.
fn service_ports(service: &Service) -> Vec<(String, i32, TargetPort, String)> {
    let mut ports: Vec<_> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .map(|p| {
            let target = match &p.target_port {
                None => TargetPort::Number(p.port),
                Some(IntOrString::Int(n)) => TargetPort::Number(*n),
                Some(IntOrString::String(s)) => TargetPort::Name(s.clone()),
            };
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                target,
                p.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL).to_owned(),
            )
        })
        .collect();
    ports.sort();
    ports
}

/// Whether `actual` differs from `desired` in what the bridge owns: its labels and annotations,
/// its ports, and being headless when `desired` is.
pub fn service_needs_write(desired: &Service, actual: &Service) -> bool {
    !meta_covers(&desired.metadata, &actual.metadata)
        || service_ports(desired) != service_ports(actual)
        || (is_headless(desired) && !is_headless(actual))
}

/// Whether `actual` can only be fixed by deleting and recreating it: clusterIP is immutable, so a
/// Service cannot become headless, or stop being, by a write.
pub fn service_needs_recreate(desired: &Service, actual: &Service) -> bool {
    is_headless(desired) != is_headless(actual)
}

/// (name, port, protocol) of every port, sorted, protocol defaulted to TCP.
fn slice_ports(slice: &EndpointSlice) -> Vec<(String, Option<i32>, String)> {
    let mut ports: Vec<_> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.as_deref().unwrap_or(DEFAULT_PROTOCOL).to_owned(),
            )
        })
        .collect();
    ports.sort();
    ports
}

/// (addresses, ready, serving, terminating) of every endpoint, sorted, with the API's meaning of
/// unset conditions: ready unless said otherwise, serving as ready, not terminating. Sorted lists
/// rather than sets, so a duplicated endpoint is seen and written away.
fn slice_endpoints(slice: &EndpointSlice) -> Vec<(&[String], bool, bool, bool)> {
    let mut endpoints: Vec<_> = slice
        .endpoints
        .iter()
        .map(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            let ready = c.ready.unwrap_or(true);
            (
                e.addresses.as_slice(),
                ready,
                c.serving.unwrap_or(ready),
                c.terminating.unwrap_or(false),
            )
        })
        .collect();
    endpoints.sort();
    endpoints
}

/// Whether every owner uid of `desired` is among `actual`'s.
fn owners_cover(desired: &ObjectMeta, actual: &ObjectMeta) -> bool {
    let have: BTreeSet<&str> = actual
        .owner_references
        .iter()
        .flatten()
        .map(|o| o.uid.as_str())
        .collect();
    desired
        .owner_references
        .iter()
        .flatten()
        .all(|o| have.contains(o.uid.as_str()))
}

/// Whether `actual` differs from `desired` in what the bridge owns: address type, ports,
/// endpoints and their conditions, labels, annotations and owner uids.
pub fn slice_needs_write(desired: &EndpointSlice, actual: &EndpointSlice) -> bool {
    desired.address_type != actual.address_type
        || !meta_covers(&desired.metadata, &actual.metadata)
        || !owners_cover(&desired.metadata, &actual.metadata)
        || slice_ports(desired) != slice_ports(actual)
        || slice_endpoints(desired) != slice_endpoints(actual)
}

// Changes live only as long as one reconcile pass; boxing the slice would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum SliceChange {
    /// Create or update this slice.
    Apply(EndpointSlice),
    /// Delete the slice of this name.
    Delete(String),
}

/// The writes that turn `actual` (the service's slices in the cluster) into `desired`. All
/// applies come before all deletes, so an endpoint moving between slices is never missing.
pub fn diff_slices(desired: Vec<EndpointSlice>, actual: &[EndpointSlice]) -> Vec<SliceChange> {
    let actual: BTreeMap<&str, &EndpointSlice> = actual
        .iter()
        .filter_map(|s| Some((s.metadata.name.as_deref()?, s)))
        .collect();
    let wanted: BTreeSet<String> = desired
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    let mut changes: Vec<SliceChange> = desired
        .into_iter()
        .filter(|d| {
            d.metadata
                .name
                .as_deref()
                .and_then(|name| actual.get(name))
                .is_none_or(|a| slice_needs_write(d, a))
        })
        .map(SliceChange::Apply)
        .collect();
    changes.extend(
        actual
            .keys()
            .filter(|name| !wanted.contains(**name))
            .map(|name| SliceChange::Delete((*name).to_owned())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Registration;
    use crate::projection::{self, AddressType, GroupKey, ProjectionConfig};
    use crate::target::Target;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;
    use std::net::IpAddr;

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

    fn desired_service(headless: bool, ports: &[u16]) -> Service {
        let regs: Vec<Registration> = ports
            .iter()
            .map(|p| Registration {
                name: "greeter".into(),
                version: "v1".into(),
                addr: format!("10.0.0.1:{p}").parse().unwrap(),
                weight: 1,
            })
            .collect();
        let target = Target {
            source: "default".into(),
            prefix: "/".into(),
            name: "greeter".into(),
            version: Some("v1".into()),
        };
        projection::service(
            "greeter-v1",
            &target,
            &projection::group(&regs),
            &cfg(headless),
        )
    }

    const GROUP: GroupKey = GroupKey {
        address_type: AddressType::IPv4,
        port: 50051,
        weight: 3,
    };

    fn addrs(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn desired_slice(name: &str, group: &GroupKey, ips: &[&str]) -> EndpointSlice {
        let mut s = projection::slice(
            "default",
            "greeter-v1",
            name,
            group,
            &addrs(ips),
            &Default::default(),
            &cfg(false),
        );
        s.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: "greeter-v1".into(),
            uid: "svc-uid".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
        s
    }

    /// `object` as the apiserver returns it: JSON, with server-populated fields added.
    fn as_returned<T: serde::Serialize + serde::de::DeserializeOwned>(
        object: &T,
        extra: serde_json::Value,
    ) -> T {
        let mut value = serde_json::to_value(object).unwrap();
        merge(&mut value, extra);
        serde_json::from_value(value).unwrap()
    }

    fn merge(into: &mut serde_json::Value, from: serde_json::Value) {
        match (into, from) {
            (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    fn server_metadata() -> serde_json::Value {
        json!({
            "uid": "0b7f1c9e-1111-2222-3333-444455556666",
            "resourceVersion": "12345",
            "generation": 1,
            "creationTimestamp": "2025-01-01T00:00:00Z",
            "managedFields": [{"manager": "etcd-bridge", "operation": "Apply", "apiVersion": "v1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}],
            "labels": {"someone-else": "x"},
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
        })
    }

    #[test]
    fn service_round_tripped_by_the_apiserver_needs_no_write() {
        let desired = desired_service(false, &[8080, 80]);
        let mut actual = as_returned(
            &desired,
            json!({
                "metadata": server_metadata(),
                "spec": {
                    "clusterIP": "10.96.12.34",
                    "clusterIPs": ["10.96.12.34"],
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                    "sessionAffinity": "None",
                    "type": "ClusterIP",
                },
                "status": {"loadBalancer": {}},
            }),
        );
        // Port order and defaults are the apiserver's business.
        let spec = actual.spec.as_mut().unwrap();
        let ports = spec.ports.as_mut().unwrap();
        ports.reverse();
        ports[0].protocol = None;
        ports[1].target_port = None;
        assert!(!service_needs_write(&desired, &actual));
        assert!(!service_needs_recreate(&desired, &actual));

        let headless = desired_service(true, &[80]);
        let actual = as_returned(
            &headless,
            json!({"metadata": server_metadata(), "spec": {"clusterIPs": ["None"]}}),
        );
        assert!(!service_needs_write(&headless, &actual));
    }

    #[test]
    fn service_changes_need_a_write() {
        let desired = desired_service(false, &[80]);
        let returned = as_returned(&desired, json!({"metadata": server_metadata()}));
        assert!(service_needs_write(
            &desired_service(false, &[80, 81]),
            &returned
        ));
        assert!(service_needs_write(
            &desired_service(false, &[81]),
            &returned
        ));

        let mut relabelled = returned.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(crate::labels::INSTANCE.into(), "other".into());
        assert!(service_needs_write(&desired, &relabelled));

        let mut unannotated = returned.clone();
        unannotated.metadata.annotations = None;
        assert!(service_needs_write(&desired, &unannotated));

        let mut renamed_port = returned;
        renamed_port.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("http".into());
        assert!(service_needs_write(&desired, &renamed_port));
    }

    #[test]
    fn headlessness_changes_need_a_recreate() {
        let headless = desired_service(true, &[80]);
        let normal = as_returned(
            &desired_service(false, &[80]),
            json!({"spec": {"clusterIP": "10.96.0.1"}}),
        );
        assert!(service_needs_write(&headless, &normal));
        assert!(service_needs_recreate(&headless, &normal));
        let headless_actual = as_returned(&headless, json!({}));
        assert!(service_needs_recreate(
            &desired_service(false, &[80]),
            &headless_actual
        ));
    }

    fn returned_slice(desired: &EndpointSlice) -> EndpointSlice {
        let mut actual = as_returned(desired, json!({"metadata": server_metadata()}));
        // Others' owners, endpoint order and fields we never set do not matter.
        actual
            .metadata
            .owner_references
            .as_mut()
            .unwrap()
            .push(OwnerReference {
                uid: "other".into(),
                ..Default::default()
            });
        actual.endpoints.reverse();
        actual.endpoints[0].node_name = Some("node-1".into());
        actual.endpoints[0].conditions.as_mut().unwrap().serving = None;
        if let [_, .., last] = actual.endpoints.as_mut_slice() {
            last.conditions = None;
        }
        actual.ports.as_mut().unwrap()[0].protocol = None;
        actual
    }

    #[test]
    fn slice_round_tripped_by_the_apiserver_needs_no_write() {
        let desired = desired_slice("s-0", &GROUP, &["10.0.0.1", "10.0.0.2"]);
        let actual = returned_slice(&desired);
        assert!(!slice_needs_write(&desired, &actual));
        assert_eq!(diff_slices(vec![desired], &[actual]), vec![]);
    }

    #[test]
    fn slice_changes_need_a_write() {
        let desired = desired_slice("s-0", &GROUP, &["10.0.0.1", "10.0.0.2"]);
        let actual = returned_slice(&desired);
        let reweighted = desired_slice(
            "s-0",
            &GroupKey { weight: 4, ..GROUP },
            &["10.0.0.1", "10.0.0.2"],
        );
        assert!(slice_needs_write(&reweighted, &actual));
        let moved = desired_slice("s-0", &GROUP, &["10.0.0.1", "10.0.0.3"]);
        assert!(slice_needs_write(&moved, &actual));
        let grown = desired_slice("s-0", &GROUP, &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        assert!(slice_needs_write(&grown, &actual));
        let other_port = desired_slice(
            "s-0",
            &GroupKey {
                port: 50052,
                ..GROUP
            },
            &["10.0.0.1", "10.0.0.2"],
        );
        assert!(slice_needs_write(&other_port, &actual));

        let mut not_ready = actual.clone();
        not_ready.endpoints[0].conditions.as_mut().unwrap().ready = Some(false);
        assert!(slice_needs_write(&desired, &not_ready));
        // Health and drain change serving and terminating alone, too.
        let full = as_returned(&desired, json!({"metadata": server_metadata()}));
        assert!(!slice_needs_write(&desired, &full));
        let mut not_serving = full.clone();
        not_serving.endpoints[1]
            .conditions
            .as_mut()
            .unwrap()
            .serving = Some(false);
        assert!(slice_needs_write(&desired, &not_serving));
        let mut terminating = full;
        terminating.endpoints[1]
            .conditions
            .as_mut()
            .unwrap()
            .terminating = Some(true);
        assert!(slice_needs_write(&desired, &terminating));
        let mut orphaned = actual.clone();
        orphaned.metadata.owner_references = None;
        assert!(slice_needs_write(&desired, &orphaned));
        let mut doubled = actual.clone();
        doubled.endpoints.push(doubled.endpoints[0].clone());
        assert!(slice_needs_write(&desired, &doubled));
        let mut retyped = actual;
        retyped.address_type = "IPv6".into();
        assert!(slice_needs_write(&desired, &retyped));
    }

    #[test]
    fn diff_applies_before_it_deletes() {
        let keep = desired_slice("a", &GROUP, &["10.0.0.1"]);
        let changed = desired_slice("b", &GROUP, &["10.0.0.2", "10.0.0.3"]);
        let created = desired_slice("c", &GROUP, &["10.0.0.4"]);
        let actual = vec![
            returned_slice(&desired_slice("z", &GROUP, &["10.0.0.9"])),
            returned_slice(&keep),
            returned_slice(&desired_slice("b", &GROUP, &["10.0.0.2"])),
            returned_slice(&desired_slice("d", &GROUP, &["10.0.0.3"])),
        ];
        let changes = diff_slices(vec![keep, changed.clone(), created.clone()], &actual);
        assert_eq!(
            changes,
            vec![
                SliceChange::Apply(changed),
                SliceChange::Apply(created),
                SliceChange::Delete("d".into()),
                SliceChange::Delete("z".into()),
            ]
        );
    }
}
