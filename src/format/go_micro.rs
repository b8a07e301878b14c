//! `go-micro`: go-micro's etcd registry. The key is `/micro/registry/{service}/{node id}`, the
//! value the JSON of `registry.Service` holding that one node:
//! `{"name","version","metadata","endpoints":[..],"nodes":[{"id","address":"host:port","metadata":{..}}]}`.
//! The node's address is projected, if the node serves gRPC (`metadata.protocol`, when given, is
//! `grpc`); a `weight` in its metadata is used, else weight 1.

use crate::format::addr::parse_addr;
use crate::format::{DEFAULT_WEIGHT, Registration, SkipReason, json};
use serde_json::Value;

/// `(service, node_id)`: the key's segments.
pub fn parse((service, node_id): (&str, &str), value: &str) -> Result<Registration, SkipReason> {
    let obj = json::object(value).ok_or(SkipReason::InvalidJson)?;
    let version = json::string(&obj, "version").map_err(|_| SkipReason::InvalidJson)?;
    let nodes = match json::field(&obj, "nodes") {
        Some(Value::Array(list)) => list,
        _ => return Err(SkipReason::InvalidJson),
    };
    let nodes: Vec<&serde_json::Map<String, Value>> =
        nodes.iter().filter_map(Value::as_object).collect();
    // The key names its node; a value with one node is that node whatever its id says.
    let node = match nodes.as_slice() {
        [one] => *one,
        many => many
            .iter()
            .find(|n| json::string(n, "id").ok().flatten() == Some(node_id))
            .copied()
            .ok_or(SkipReason::MissingAddr)?,
    };
    // A gRPC server marks its node `protocol: grpc`; go-micro's default server writes `mucp`,
    // which gRPC clients cannot call.
    let metadata = json::field(node, "metadata").and_then(Value::as_object);
    match metadata.map(|m| json::string(m, "protocol")) {
        None | Some(Ok(None)) | Some(Ok(Some("grpc"))) => {}
        Some(_) => return Err(SkipReason::NoGrpcEndpoint),
    }
    let address = json::string(node, "address").map_err(|_| SkipReason::InvalidJson)?;
    let address = address.unwrap_or_default();
    let weight = json::metadata_weight(json::field(node, "metadata"))
        .map_err(|_| SkipReason::InvalidWeight)?
        .unwrap_or(DEFAULT_WEIGHT);
    Ok(Registration {
        name: service.to_owned(),
        version: version.unwrap_or_default().to_owned(),
        addr: parse_addr(address)?,
        weight,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    /// An entry under the prefix `/p/`, parsed as the snapshot parses it.
    fn entry(rest: &str, value: &str) -> Result<Registration, SkipReason> {
        let key = format!("/p/{rest}");
        crate::format::parse(Format::GoMicro, "/p/", key.as_bytes(), value.as_bytes())
            .map(|(r, _)| r)
    }

    #[test]
    fn reads_the_node_of_the_key() {
        let value = r#"{"name":"greeter","version":"latest","metadata":null,"endpoints":[],"nodes":[{"id":"greeter-1","address":"10.0.0.9:35000","metadata":{"protocol":"grpc","weight":"3"}}]}"#;
        let r = entry("greeter/greeter-1", value).unwrap();
        assert_eq!(
            (r.name.as_str(), r.version.as_str(), r.weight),
            ("greeter", "latest", 3)
        );
        assert_eq!(r.addr.to_string(), "10.0.0.9:35000");
        let two = r#"{"name":"g","nodes":[{"id":"a","address":"10.0.0.1:1"},{"id":"b","address":"10.0.0.2:2"}]}"#;
        assert_eq!(entry("g/b", two).unwrap().addr.to_string(), "10.0.0.2:2");
        assert_eq!(entry("g/c", two), Err(SkipReason::MissingAddr));
    }

    #[test]
    fn bad_values_are_skipped() {
        for (value, want) in [
            (
                r#"{"name":"g","nodes":[{"id":"a","address":"g.local:80"}]}"#,
                SkipReason::Hostname,
            ),
            (
                r#"{"name":"g","nodes":[{"id":"a","address":"10.0.0.1"}]}"#,
                SkipReason::MissingPort,
            ),
            (r#"{"name":"g","nodes":{}}"#, SkipReason::InvalidJson),
            (r#"{"name":"g","nod"#, SkipReason::InvalidJson),
        ] {
            assert_eq!(entry("g/a", value), Err(want), "{value}");
        }
    }
}
