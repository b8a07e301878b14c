//! `kratos`: kratos' `contrib/registry/etcd`. The key is `{namespace}/{name}/{id}` (namespace
//! `/microservices` by default), the value the JSON of `registry.ServiceInstance`:
//! `{"id","name","version","metadata":{..},"endpoints":["grpc://host:port","http://host:port"]}`.
//! The gRPC endpoint is the one projected; a `weight` in metadata is used, else weight 1.

use crate::format::addr::parse_addr;
use crate::format::{DEFAULT_WEIGHT, Registration, SkipReason, json};
use serde_json::Value;

/// The endpoint kratos clients dial for gRPC: the first `grpc://` (or TLS `grpcs://`) one.
pub fn grpc_endpoint(endpoints: &[Value]) -> Option<&str> {
    endpoints
        .iter()
        .filter_map(Value::as_str)
        .find_map(|e| {
            e.strip_prefix("grpc://")
                .or_else(|| e.strip_prefix("grpcs://"))
        })
        // Query (`?isSecure=false`) and path are not part of the address.
        .map(|rest| rest.split(['?', '/']).next().unwrap_or_default())
}

/// `name`: the key without its last segment (the instance id).
pub fn parse(name: &str, value: &str) -> Result<Registration, SkipReason> {
    let obj = json::object(value).ok_or(SkipReason::InvalidJson)?;
    // kratos' reader skips an instance whose name is not the service it watches.
    match json::string(&obj, "name").map_err(|_| SkipReason::InvalidJson)? {
        Some(n) if n != name => return Err(SkipReason::KeyValueMismatch),
        _ => {}
    }
    let version = json::string(&obj, "version").map_err(|_| SkipReason::InvalidJson)?;
    let endpoints = match json::field(&obj, "endpoints") {
        Some(Value::Array(list)) => list.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(SkipReason::InvalidJson),
    };
    let addr = grpc_endpoint(endpoints).ok_or(SkipReason::NoGrpcEndpoint)?;
    let weight = json::metadata_weight(json::field(&obj, "metadata"))
        .map_err(|_| SkipReason::InvalidWeight)?
        .unwrap_or(DEFAULT_WEIGHT);
    Ok(Registration {
        name: name.to_owned(),
        version: version.unwrap_or_default().to_owned(),
        addr: parse_addr(addr)?,
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
        crate::format::parse(Format::Kratos, "/p/", key.as_bytes(), value.as_bytes())
            .map(|(r, _)| r)
    }

    #[test]
    fn reads_the_grpc_endpoint_of_a_service_instance() {
        let r = entry(
            "helloworld/7f3c1e2a",
            r#"{"id":"7f3c1e2a","name":"helloworld","version":"v1.2","metadata":{"weight":"4"},"endpoints":["http://10.0.0.5:8000","grpc://10.0.0.5:9000?isSecure=false"]}"#,
        )
        .unwrap();
        assert_eq!(
            (r.name.as_str(), r.version.as_str(), r.weight),
            ("helloworld", "v1.2", 4)
        );
        assert_eq!(r.addr.to_string(), "10.0.0.5:9000");
    }

    #[test]
    fn no_grpc_endpoint_or_bad_values_are_skipped() {
        for (value, want) in [
            (
                r#"{"id":"1","name":"h","endpoints":["http://10.0.0.5:8000"]}"#,
                SkipReason::NoGrpcEndpoint,
            ),
            (
                r#"{"id":"1","name":"h","endpoints":null}"#,
                SkipReason::NoGrpcEndpoint,
            ),
            (
                r#"{"id":"1","name":"h","endpoints":["grpc://helloworld:9000"]}"#,
                SkipReason::Hostname,
            ),
            (
                r#"{"id":"1","name":"h","endpoints":"grpc://10.0.0.5:9000"}"#,
                SkipReason::InvalidJson,
            ),
            (r#"{"id":"1","name":"h","endpoi"#, SkipReason::InvalidJson),
        ] {
            assert_eq!(entry("h/1", value), Err(want), "{value}");
        }
    }
}
