//! `kitex`: kitex-contrib/registry-etcd. The key is `kitex/registry-etcd/{service}/{addr}` (no
//! leading `/`), the value `{"network":"tcp","address":"host:port","weight":N,"tags":{..}}`.
//! Resolvers read the values under `kitex/registry-etcd/{service}/`. No version. kitex reads a
//! missing or non-positive weight as 10, its default, and so does the bridge.

use crate::format::addr::parse_addr;
use crate::format::{Registration, SkipReason, json};

/// kitex's `discovery.DefaultWeight`.
const KITEX_DEFAULT_WEIGHT: i64 = 10;

/// `service`: the key without its last segment.
pub fn parse(service: &str, value: &str) -> Result<Registration, SkipReason> {
    let obj = json::object(value).ok_or(SkipReason::InvalidJson)?;
    match json::string(&obj, "network").map_err(|_| SkipReason::InvalidJson)? {
        None | Some("tcp" | "tcp4" | "tcp6") => {}
        // A unix socket cannot be an EndpointSlice address.
        Some(_) => return Err(SkipReason::InvalidAddr),
    }
    let addr = json::string(&obj, "address").map_err(|_| SkipReason::InvalidJson)?;
    let weight = json::weight(json::field(&obj, "weight"))
        .map_err(|_| SkipReason::InvalidWeight)?
        .filter(|w| *w > 0)
        .unwrap_or(KITEX_DEFAULT_WEIGHT);
    Ok(Registration {
        name: service.to_owned(),
        version: String::new(),
        addr: parse_addr(addr.unwrap_or_default())?,
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
        crate::format::parse(Format::Kitex, "/p/", key.as_bytes(), value.as_bytes()).map(|(r, _)| r)
    }

    #[test]
    fn reads_what_the_registry_writes() {
        let r = entry(
            "echo/10.0.0.3:8888",
            r#"{"network":"tcp","address":"10.0.0.3:8888","weight":10,"tags":{"env":"prod"}}"#,
        )
        .unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("echo", 10));
        for (value, want) in [
            (
                r#"{"network":"unix","address":"/tmp/s"}"#,
                SkipReason::InvalidAddr,
            ),
            (
                r#"{"network":"tcp","address":"echo:8888"}"#,
                SkipReason::Hostname,
            ),
            (
                r#"{"network":"tcp","address":"10.0.0.3:8888","weight":"x"}"#,
                SkipReason::InvalidWeight,
            ),
            (r#"{"network":"tcp""#, SkipReason::InvalidJson),
        ] {
            assert_eq!(entry("echo/x", value), Err(want), "{value}");
        }
    }
}
