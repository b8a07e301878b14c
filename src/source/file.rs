//! An EtcdSource and its Secret read from YAML files, as `kubectl apply` would take them, for
//! `preview --source-file`. Pure: the caller reads the files.

use super::crd::EtcdSource;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// The object's name and spec, or why the text is not one EtcdSource.
pub fn source(yaml: &str) -> Result<EtcdSource, String> {
    let obj: EtcdSource = serde_yaml::from_str(yaml)
        .map_err(|e| format!("not an EtcdSource (apiVersion etcd-bridge.io/v1alpha1): {e}"))?;
    if obj.name_any().is_empty() {
        return Err("the EtcdSource has no metadata.name".into());
    }
    Ok(obj)
}

/// A Secret's keys: `data` (base64, as the API keeps it) and `stringData` (plain), the latter
/// winning as the apiserver would merge them.
pub fn secret_data(yaml: &str) -> Result<BTreeMap<String, Vec<u8>>, String> {
    let s: Secret = serde_yaml::from_str(yaml).map_err(|e| format!("not a Secret: {e}"))?;
    let mut data: BTreeMap<String, Vec<u8>> = (s.data.unwrap_or_default().into_iter())
        .map(|(k, v)| (k, v.0))
        .collect();
    for (k, v) in s.string_data.unwrap_or_default() {
        data.insert(k, v.into_bytes());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_and_its_secret_read_from_yaml() {
        let src = source(
            "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {name: region-b}\nspec:\n  endpoints: [https://e:2379]\n  secretRef: {name: s}\n  prefixes: [{prefix: /services/}]\n",
        )
        .unwrap();
        assert_eq!(src.name_any(), "region-b");
        assert_eq!(src.spec.prefixes[0].format, "seed");
        let d = secret_data(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {ca.crt: Q0E=}\nstringData: {username: u, password: p}\n",
        )
        .unwrap();
        assert_eq!(d["ca.crt"], b"CA");
        assert_eq!(d["username"], b"u");
        assert!(source("kind: Service").is_err());
        assert!(secret_data(": :").is_err());
    }
}
