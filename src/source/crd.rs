//! The `EtcdSource` custom resource: one etcd registry the bridge imports from. Its CRD YAML in
//! `crds/` (and in the chart) is generated from these types by `etcd-bridge crd etcdsources`; a
//! test fails when the committed file drifts.
//!
//! Free-form strings (format, staleAfter) are `String`s here, constrained in the schema: an
//! object written under an older CRD still deserializes, and is reported in its status instead
//! of breaking the watch of every source.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A registry: where its etcd is, how to log in, which prefixes to read in which format, and
/// where its Services go.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "etcd-bridge.io",
    version = "v1alpha1",
    kind = "EtcdSource",
    namespaced,
    shortname = "etcdsrc",
    status = "EtcdSourceStatus",
    // The name is the value of the label `etcd-bridge.io/source` on every projected object.
    validation = Rule::new("size(self.metadata.name) <= 63").message("the name becomes a label value: at most 63 characters"),
    printcolumn = r#"{"name":"Connected","type":"string","jsonPath":".status.conditions[?(@.type==\"Connected\")].status"}"#,
    printcolumn = r#"{"name":"Synced","type":"string","jsonPath":".status.conditions[?(@.type==\"Synced\")].status"}"#,
    printcolumn = r#"{"name":"Stale","type":"string","jsonPath":".status.conditions[?(@.type==\"Stale\")].status"}"#,
    printcolumn = r#"{"name":"Keys","type":"integer","jsonPath":".status.keys"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpoints"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.revision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Error","type":"string","priority":1,"jsonPath":".status.lastError"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSourceSpec {
    /// etcd client URLs (`http://` or `https://`, host and port).
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.all(e, isURL(e) && url(e).getScheme() in ['http', 'https'] && url(e).getHost() != '')").message("each endpoint is an http:// or https:// URL with a host, e.g. https://etcd-0.etcd:2379"))]
    pub endpoints: Vec<Endpoint>,
    /// A Secret in this namespace with the credentials: `ca.crt` (CA of etcd's serving
    /// certificate), `tls.crt` and `tls.key` (client certificate), `username` and `password`.
    /// Each key is optional; the pairs go together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Key prefixes to read, each in its registry's format. None may contain another.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, self.exists_one(b, b.prefix.startsWith(a.prefix)))").message("no prefix may contain another (or appear twice): a key would be read twice"))]
    pub prefixes: Vec<PrefixSpec>,
    /// Where this source's Services and EndpointSlices go; default: the bridge's `--namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub target_namespace: Option<String>,
    /// Put before every projected Service name (before it is made a DNS label), e.g. `eu-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 30), regex(pattern = r"^[a-z]([-a-z0-9]*)?$"))]
    pub name_prefix: Option<String>,
    /// Where the EtcdRegistrations that name this source (`spec.source`) are written, in this
    /// source's etcd. Absent: none may name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && self.endsWith('/')").message("the write-back prefix starts and ends with `/`"))]
    pub writeback_prefix: Option<String>,
    /// Remove this source's endpoints once it has been unreachable this long (`90s`, `10m`,
    /// `1h`). Absent: never; the last state is kept however long etcd is away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,9}(ms|s|m|h)$"))]
    pub stale_after: Option<String>,
}

/// An etcd client URL.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transparent)]
pub struct Endpoint(#[schemars(length(min = 1, max = 256))] pub String);

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretRef {
    /// A Secret in the EtcdSource's namespace (the bridge may read only Secrets it is granted).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One watched prefix and the layout of the keys under it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(validation = Rule::new("self.format != 'seed' || self.prefix.startsWith('/')").message("a seed prefix starts with `/` (the seed's root is `/`)"))]
pub struct PrefixSpec {
    /// Ends with `/`; e.g. `/services/`, or `kitex/registry-etcd/`.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.endsWith('/')").message("a prefix ends with `/`"))]
    pub prefix: String,
    /// seed (default), etcd-naming, go-zero, kratos, go-micro, kitex or auto (docs/formats.md).
    #[serde(default = "seed")]
    #[schemars(extend("enum" = ["seed", "etcd-naming", "go-zero", "kratos", "go-micro", "kitex", "auto"]))]
    pub format: String,
}

fn seed() -> String {
    "seed".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSourceStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Connected (every prefix is watched), Synced (every prefix listed since the source
    /// started; its Services follow each change) and Stale (unreachable past staleAfter: its
    /// endpoints were removed).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The etcd revision last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Keys read under the prefixes, skipped ones included.
    #[serde(default)]
    pub keys: i64,
    /// Endpoints imported (distinct registered addresses).
    #[serde(default)]
    pub endpoints: i64,
    /// Keys skipped, by reason (`preview` lists them).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, i64>,
    /// The last error met reading this source, or why it is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The CRD as YAML, exactly as committed in `crds/` and in the chart.
pub fn crd_yaml() -> String {
    crate::k8s::crd::yaml::<EtcdSource>("etcd-bridge crd etcdsources", "src/source/crd.rs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_match_the_types() {
        crate::k8s::crd::assert_committed(&crd_yaml(), "etcdsources.etcd-bridge.io.yaml");
    }

    #[test]
    fn the_schema_carries_the_rules_and_columns() {
        let yaml = crd_yaml();
        for needle in [
            "isURL(e)",
            "exists_one(b, b.prefix.startsWith(a.prefix))",
            "self.endsWith('/')",
            "size(self.metadata.name) <= 63",
            "etcd-naming",
            "(ms|s|m|h)",
            "etcdsrc",
            "Connected",
            "lastError",
        ] {
            assert!(yaml.contains(needle), "{needle} missing from\n{yaml}");
        }
    }

    #[test]
    fn a_minimal_object_reads_with_defaults() {
        let spec: EtcdSourceSpec = serde_json::from_value(serde_json::json!({
            "endpoints": ["http://127.0.0.1:2379"],
            "prefixes": [{"prefix": "/services/"}]
        }))
        .unwrap();
        assert_eq!(spec.prefixes[0].format, "seed");
        assert_eq!(spec.stale_after, None);
        // An unknown format still reads (the schema refuses it at admission; resolution reports
        // it), so one bad object cannot break the watch of every source.
        let odd: EtcdSourceSpec = serde_json::from_value(serde_json::json!({
            "endpoints": ["http://127.0.0.1:2379"],
            "prefixes": [{"prefix": "/s/", "format": "consul"}]
        }))
        .unwrap();
        assert_eq!(odd.prefixes[0].format, "consul");
    }
}
