//! `go-zero`: `core/discov`'s Publisher. The key is `{key}/{id}` (the etcd lease id in decimal, or
//! the id given with `WithId`), the value the plain `host:port` the service listens on. Subscribers
//! read the values under `{key}/`. No version or weight: every endpoint has weight 1.

use crate::format::addr::parse_addr;
use crate::format::{DEFAULT_WEIGHT, Registration, SkipReason};

/// `key`: the Publisher's key, the entry's key without its last segment.
pub fn parse(key: &str, value: &str) -> Result<Registration, SkipReason> {
    Ok(Registration {
        name: key.to_owned(),
        version: String::new(),
        addr: parse_addr(value.trim())?,
        weight: DEFAULT_WEIGHT,
    })
}

/// Whether a value looks like go-zero's: one `host:port`, nothing else.
pub fn looks_like(value: &str) -> bool {
    let v = value.trim();
    !v.is_empty()
        && v.contains(':')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"[]:.-_%".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    /// An entry under the prefix `/p/`, parsed as the snapshot parses it.
    fn entry(rest: &str, value: &str) -> Result<Registration, SkipReason> {
        let key = format!("/p/{rest}");
        crate::format::parse(Format::GoZero, "/p/", key.as_bytes(), value.as_bytes())
            .map(|(r, _)| r)
    }

    #[test]
    fn reads_what_the_publisher_writes() {
        let r = entry("user.rpc/7587867045393427713", "10.0.0.7:8080").unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("user.rpc", 1));
        assert_eq!(r.addr.to_string(), "10.0.0.7:8080");
        assert_eq!(
            entry("user.rpc/1", "user-svc:8080"),
            Err(SkipReason::Hostname)
        );
        // A prefix that is the service's own key: the service is the prefix's last segment.
        let own = crate::format::parse(
            Format::GoZero,
            "user.rpc/",
            b"user.rpc/42",
            b"10.0.0.7:8080",
        );
        assert_eq!(own.map(|(r, _)| r.name), Ok("user.rpc".to_string()));
        assert_eq!(entry("a//1", "10.0.0.7:8080"), Err(SkipReason::BadKeyShape));
        assert!(looks_like("10.0.0.7:8080") && looks_like("[fd00::1]:80"));
        assert!(!looks_like("{\"a\":1}") && !looks_like("hello"));
    }
}
