//! `etcd-naming`: etcd's own gRPC resolver (`go.etcd.io/etcd/client/v3/naming/endpoints`).
//!
//! `Manager.AddEndpoint(ctx, "{target}/{addr}", Endpoint{Addr, Metadata})` puts, under a key that
//! must start with `{target}/`, the JSON of `internal.Update{Op: Add, Addr, Metadata}`: Go field
//! names, untagged (`{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}`). The resolver builds its
//! address list from the values and removes by key, so the key's last segment is free-form. The
//! service is the target; a `weight` in an object Metadata is used, else weight 1.

use crate::format::addr::parse_addr;
use crate::format::{DEFAULT_WEIGHT, Registration, SkipReason, json};

/// `target`: the key without its last segment.
pub fn parse(target: &str, value: &str) -> Result<Registration, SkipReason> {
    // etcd's resolver ignores `Op` in stored values (every one it reads is an add), as do we.
    let obj = json::object(value).ok_or(SkipReason::InvalidJson)?;
    let addr = json::string(&obj, "Addr").map_err(|_| SkipReason::InvalidJson)?;
    let addr = parse_addr(addr.unwrap_or_default())?;
    let weight = json::metadata_weight(json::field(&obj, "Metadata"))
        .map_err(|_| SkipReason::InvalidWeight)?
        .unwrap_or(DEFAULT_WEIGHT);
    Ok(Registration {
        name: target.to_owned(),
        version: String::new(),
        addr,
        weight,
    })
}

/// The value `Manager.AddEndpoint` writes for `Endpoint{Addr: addr, Metadata: metadata}`, with
/// the weight in the metadata (where [`parse`] reads it) and `extra` fields after the struct's
/// (Go's decoder ignores unknown fields: the owner marker rides there). Deterministic, so an
/// unchanged registration compares equal.
pub fn encode_value(
    addr: &str,
    weight: i64,
    metadata: &std::collections::BTreeMap<String, String>,
    extra: &[(&str, &str)],
) -> String {
    use crate::format::seed::push_go_string;
    let mut out = String::from("{\"Op\":0,\"Addr\":");
    push_go_string(&mut out, addr);
    out.push_str(",\"Metadata\":{");
    // Go marshals a map with its keys sorted; `weight` takes its place among them.
    let mut fields: Vec<(&str, String)> = metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "weight")
        .map(|(k, v)| {
            let mut s = String::new();
            push_go_string(&mut s, v);
            (k.as_str(), s)
        })
        .collect();
    fields.push(("weight", weight.to_string()));
    fields.sort();
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_go_string(&mut out, k);
        out.push(':');
        out.push_str(v);
    }
    out.push('}');
    for (k, v) in extra {
        out.push(',');
        push_go_string(&mut out, k);
        out.push(':');
        push_go_string(&mut out, v);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Format;

    /// An entry under the prefix `/p/`, parsed as the snapshot parses it.
    fn entry(rest: &str, value: &str) -> Result<Registration, SkipReason> {
        let key = format!("/p/{rest}");
        crate::format::parse(Format::EtcdNaming, "/p/", key.as_bytes(), value.as_bytes())
            .map(|(r, _)| r)
    }

    #[test]
    fn reads_what_add_endpoint_writes() {
        let r = entry(
            "greeter/10.0.0.1:50051",
            r#"{"Op":0,"Addr":"10.0.0.1:50051","Metadata":null}"#,
        )
        .unwrap();
        assert_eq!(r.name, "greeter");
        assert_eq!(r.addr.to_string(), "10.0.0.1:50051");
        assert_eq!(r.weight, 1);
        // Targets may have slashes; metadata may carry a weight.
        let r = entry(
            "svc/team/greeter/any-id",
            r#"{"Op":0,"Addr":"[fd00::1]:80","Metadata":{"weight":5,"zone":"a"}}"#,
        )
        .unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("svc/team/greeter", 5));
    }

    #[test]
    fn what_write_back_writes_reads_back() {
        let metadata = [("zone".to_string(), "eu<1".to_string())].into();
        let v = encode_value(
            "10.0.0.1:80",
            3,
            &metadata,
            &[("etcd-bridge.io/owner", "a/b/c")],
        );
        assert_eq!(
            v,
            r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"weight":3,"zone":"eu\u003c1"},"etcd-bridge.io/owner":"a/b/c"}"#
        );
        let r = entry("greeter/10.0.0.1:80", &v).unwrap();
        assert_eq!((r.name.as_str(), r.weight), ("greeter", 3));
        assert_eq!(
            crate::format::seed::owner_of(v.as_bytes()).as_deref(),
            Some("a/b/c")
        );
    }

    #[test]
    fn bad_values_are_skipped_with_a_reason() {
        for (value, want) in [
            (r#"{"Op":0,"Addr":"greeter:80"}"#, SkipReason::Hostname),
            (r#"{"Op":0}"#, SkipReason::MissingAddr),
            (
                r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":{"weight":"x"}}"#,
                SkipReason::InvalidWeight,
            ),
            (r#"{"Op":0,"Addr":"10.0.0"#, SkipReason::InvalidJson),
        ] {
            assert_eq!(entry("g/1", value), Err(want), "{value}");
        }
        assert_eq!(
            entry("g/", r#"{"Op":0,"Addr":"10.0.0.1:80"}"#),
            Err(SkipReason::BadKeyShape)
        );
    }
}
