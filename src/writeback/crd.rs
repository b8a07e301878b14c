//! The `EtcdRegistration` custom resource. Its CRD YAML in `crds/` (and in the chart) is
//! generated from these types by `etcd-bridge crd`; a test fails when the committed file drifts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A weighted registration that the bridge keeps in etcd, in the seed's format, under an etcd
/// lease it owns: `{prefix}{service}/{version}/{addr}` → `{"name","addr","version","weight"}`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etcd-bridge.io",
    version = "v1alpha1",
    kind = "EtcdRegistration",
    namespaced,
    shortname = "etcdreg",
    status = "EtcdRegistrationStatus",
    printcolumn = r#"{"name":"Service","type":"string","jsonPath":".spec.service"}"#,
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.version"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".spec.weight"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Source","type":"string","priority":1,"jsonPath":".status.source"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("has(self.addresses) != has(self.serviceRef)").message("give exactly one of addresses and serviceRef"))]
#[serde(rename_all = "camelCase")]
pub struct EtcdRegistrationSpec {
    /// The service name in etcd (the seed's `Server.Name`): no `/`, whitespace or control
    /// characters.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^/\s\x00-\x1f\x7f]+$"))]
    pub service: String,
    /// The version (the seed's `Server.Version`); empty or absent registers `{prefix}{service}/{addr}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^[^/\s\x00-\x1f\x7f]*$"))]
    pub version: Option<String>,
    /// The weight clients read from the value.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 0))]
    pub weight: i64,
    /// Static `host:port` addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub addresses: Option<Vec<Address>>,
    /// The ready endpoints of a Service in this namespace, followed as its pods come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_ref: Option<ServiceRef>,
    /// Extra string fields carried in the value (Go's encoding/json ignores unknown fields); in
    /// the etcd-naming format, the endpoint's Metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// How the keys are written: `seed` (the default) or `etcd-naming`, for clients of etcd's own
    /// gRPC resolver (`go.etcd.io/etcd/client/v3/naming`), which dial
    /// `etcd:///{prefix}{service}[/{version}]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<WriteFormat>,
    /// The registry to write to: an EtcdSource in the bridge's namespace, whose etcd and
    /// `writebackPrefix` the keys go to. Absent: the bridge's own etcd, under
    /// `--writeback-prefix`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
    )]
    pub source: Option<String>,
}

/// The registry formats write-back writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WriteFormat {
    /// `{prefix}{service}[/{version}]/{addr}` → `{"name","addr","version","weight"}`.
    #[default]
    #[serde(rename = "seed")]
    Seed,
    /// The same key → `{"Op":0,"Addr":"ip:port","Metadata":{..,"weight":N}}`.
    #[serde(rename = "etcd-naming")]
    EtcdNaming,
}

/// `host:port` (IPv6 as `[addr]:port`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(transparent)]
pub struct Address(
    #[schemars(
        length(min = 3, max = 261),
        regex(pattern = r"^[^/\s\x00-\x1f\x7f]+:[0-9]{1,5}$")
    )]
    pub String,
);

fn default_weight() -> i64 {
    1
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRef {
    /// A Service in the same namespace.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// The port, by name (as in the Service's EndpointSlices) or number.
    pub port: IntOrString,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdRegistrationStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Conflict and Denied.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The etcd keys registered for this object.
    #[serde(default)]
    pub keys: Vec<String>,
    /// How many addresses are registered.
    #[serde(default)]
    pub endpoints: i64,
    /// The etcd leases the keys are attached to, in hex as etcdctl prints them, comma-separated
    /// (a lease holds at most --writeback-keys-per-lease keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<String>,
    /// The registry that holds the keys: `default` (the bridge's own etcd) or an EtcdSource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The CRD as YAML, exactly as committed in `crds/` and in the chart.
pub fn crd_yaml() -> String {
    crate::k8s::crd::yaml::<EtcdRegistration>("etcd-bridge crd", "src/writeback/crd.rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_types() {
        crate::k8s::crd::assert_committed(&crd_yaml(), "etcdregistrations.etcd-bridge.io.yaml");
    }

    #[test]
    fn weight_defaults_to_one_and_the_schema_has_the_rules() {
        let spec: EtcdRegistrationSpec = serde_json::from_value(
            serde_json::json!({"service": "greeter", "addresses": ["10.0.0.1:80"]}),
        )
        .unwrap();
        assert_eq!(spec.weight, 1);
        let yaml = crd_yaml();
        assert!(
            yaml.contains("has(self.addresses) != has(self.serviceRef)"),
            "{yaml}"
        );
        assert!(yaml.contains("etcdreg"));
        assert!(yaml.contains("pattern"));
    }
}
