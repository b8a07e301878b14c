//! `seed`: the Go `Register`/`Resolver` of the reference write-up (the default format).
//!
//! A service registers the key `{prefix}{name}/{version}/{addr}` (or `{prefix}{name}/{addr}` with
//! no version) with the value `json.Marshal(Server{Name, Addr, Version, Weight})`. A Resolver adds
//! the value's addr on PUT but removes the key's last segment on DELETE, so the bridge only accepts
//! entries whose key and value agree: anything else would be added and never removed.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserializer;
use serde::de::{self, Deserialize, IgnoredAny, MapAccess, Visitor};

use crate::format::addr::parse_addr;
use crate::format::{Registration, SkipReason};

/// Parses one entry: `rest` is the key after the watched prefix.
pub fn parse(rest: &str, value: &str) -> Result<Registration, SkipReason> {
    let (name, version, key_addr) = split_key(rest)?;
    let server: GoServer = serde_json::from_str(value).map_err(|_| SkipReason::InvalidJson)?;
    let addr = parse_addr(&server.addr)?;
    if server.addr != key_addr || server.name != name || server.version != version {
        return Err(SkipReason::KeyValueMismatch);
    }
    if server.weight < 0 {
        return Err(SkipReason::NegativeWeight);
    }
    Ok(Registration {
        name: server.name,
        version: server.version,
        addr,
        weight: server.weight,
    })
}

/// Splits the key after the prefix into (name, version, addr); version is `""` when absent.
fn split_key(rest: &str) -> Result<(&str, &str, &str), SkipReason> {
    let mut segments = rest.split('/');
    let parts = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    );
    let (name, version, addr) = match parts {
        (Some(name), Some(addr), None, None) => (name, "", addr),
        (Some(name), Some(version), Some(addr), None) if !version.is_empty() => {
            (name, version, addr)
        }
        _ => return Err(SkipReason::BadKeyShape),
    };
    if name.is_empty() || addr.is_empty() {
        return Err(SkipReason::BadKeyShape);
    }
    Ok((name, version, addr))
}

/// The key a service registers under: BuildRegPath with the prefix in front.
pub fn reg_key(prefix: &str, name: &str, version: &str, addr: &str) -> String {
    if version.is_empty() {
        format!("{prefix}{name}/{addr}")
    } else {
        format!("{prefix}{name}/{version}/{addr}")
    }
}

/// The value Go's `json.Marshal(Server{...})` produces, byte for byte, followed by `extra`
/// string fields (in key order, as Go marshals a map). Extra keys that Go's decoder would read
/// as one of the four fields (it matches names case-insensitively) are left out, since they
/// would override the real field for every Resolver.
/// The extra JSON field that marks a value written back by etcd-bridge: `{instance}/{namespace}/{name}`
/// of the EtcdRegistration. Go's encoding/json ignores it, so seed Resolvers read the value as usual.
pub const OWNER_FIELD: &str = "etcd-bridge.io/owner";

/// The owner marker of a value, if it has one.
pub fn owner_of(value: &[u8]) -> Option<String> {
    // Most values have no marker: skip the JSON parse for them.
    if !value
        .windows(OWNER_FIELD.len())
        .any(|w| w == OWNER_FIELD.as_bytes())
    {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    v.get(OWNER_FIELD)?.as_str().map(str::to_owned)
}

pub fn encode_value(
    name: &str,
    version: &str,
    addr: &str,
    weight: i64,
    extra: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(64 + name.len() + version.len() + addr.len());
    out.push_str("{\"name\":");
    push_go_string(&mut out, name);
    out.push_str(",\"addr\":");
    push_go_string(&mut out, addr);
    out.push_str(",\"version\":");
    push_go_string(&mut out, version);
    out.push_str(",\"weight\":");
    out.push_str(&weight.to_string());
    for (key, value) in extra {
        if field_of(key).is_some() {
            continue;
        }
        out.push(',');
        push_go_string(&mut out, key);
        out.push(':');
        push_go_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `s` as a JSON string escaped the way Go's encoding/json does (HTML-safe, and
/// U+2028/U+2029 escaped), so encoded values compare equal to what Go services write.
pub(crate) fn push_go_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' | '\0'..='\u{1f}' => {
                let code = c as u32;
                out.push_str("\\u");
                for shift in [12, 8, 4, 0] {
                    out.push(char::from(HEX[((code >> shift) & 0xf) as usize]));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Field {
    Name,
    Addr,
    Version,
    Weight,
}

/// Which `Server` field Go's decoder fills from a JSON key: names match case-insensitively
/// under Unicode simple folding, where only `ſ` (U+017F) folds onto a letter of these names.
fn field_of(key: &str) -> Option<Field> {
    let folded: String = key
        .chars()
        .map(|c| {
            if c == 'ſ' {
                's'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    match folded.as_str() {
        "name" => Some(Field::Name),
        "addr" => Some(Field::Addr),
        "version" => Some(Field::Version),
        "weight" => Some(Field::Weight),
        _ => None,
    }
}

/// `Server` as Go's `json.Unmarshal` reads it: unknown keys ignored, `null` leaves a field
/// unchanged, a repeated key overwrites, and a type mismatch is an error.
#[derive(Default)]
struct GoServer {
    name: String,
    addr: String,
    version: String,
    weight: i64,
}

impl<'de> Deserialize<'de> for GoServer {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(GoServerVisitor)
    }
}

struct GoServerVisitor;

impl<'de> Visitor<'de> for GoServerVisitor {
    type Value = GoServer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    // Go unmarshals `null` into a struct as a no-op.
    fn visit_unit<E: de::Error>(self) -> Result<GoServer, E> {
        Ok(GoServer::default())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<GoServer, A::Error> {
        let mut server = GoServer::default();
        while let Some(key) = map.next_key::<String>()? {
            match field_of(&key) {
                Some(Field::Name) => set(&mut server.name, map.next_value()?),
                Some(Field::Addr) => set(&mut server.addr, map.next_value()?),
                Some(Field::Version) => set(&mut server.version, map.next_value()?),
                Some(Field::Weight) => set(&mut server.weight, map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(server)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Format, MAX_VALUE_BYTES};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    /// A whole entry, key and prefix included, as the snapshot hands it over.
    fn parse(prefix: &str, key: &[u8], value: &[u8]) -> Result<Registration, SkipReason> {
        crate::format::parse(Format::Seed, prefix, key, value).map(|(r, _)| r)
    }

    fn reg(name: &str, version: &str, addr: &str, weight: i64) -> Registration {
        Registration {
            name: name.into(),
            version: version.into(),
            addr: addr.parse().unwrap(),
            weight,
        }
    }

    fn parse_str(key: &str, value: &str) -> Result<Registration, SkipReason> {
        parse("/", key.as_bytes(), value.as_bytes())
    }

    #[test]
    fn parses_versioned_and_unversioned() {
        assert_eq!(
            parse_str(
                "/greeter/v1/10.0.0.1:50051",
                r#"{"name":"greeter","addr":"10.0.0.1:50051","version":"v1","weight":3}"#
            ),
            Ok(reg("greeter", "v1", "10.0.0.1:50051", 3))
        );
        assert_eq!(
            parse_str(
                "/greeter/10.0.0.1:50051",
                r#"{"name":"greeter","addr":"10.0.0.1:50051","version":""}"#
            ),
            Ok(reg("greeter", "", "10.0.0.1:50051", 0))
        );
    }

    #[test]
    fn parses_ipv6_and_custom_prefix() {
        let value = r#"{"name":"greeter","addr":"[fd00::1]:8080","version":"v2","weight":1}"#;
        assert_eq!(
            parse(
                "/services/",
                b"/services/greeter/v2/[fd00::1]:8080",
                value.as_bytes()
            ),
            Ok(reg("greeter", "v2", "[fd00::1]:8080", 1))
        );
    }

    #[test]
    fn reads_json_like_go() {
        // Case-insensitive names (with Go's folding of ſ), unknown fields, null, last key wins.
        let value = r#"{"NAME":"g","Addr":"x","aDDR":"10.0.0.1:80","verſion":"v1","weight":null,"extra":[1,{"a":2}]}"#;
        assert_eq!(
            parse_str("/g/v1/10.0.0.1:80", value),
            Ok(reg("g", "v1", "10.0.0.1:80", 0))
        );
        for bad in [
            r#"{"weight":3.0}"#,
            r#"{"weight":"3"}"#,
            r#"{"weight":1e2}"#,
            r#"{"weight":9223372036854775808}"#,
            r#"{"name":1}"#,
            r#"[1]"#,
            r#""x""#,
            r#"{"name":"g"} x"#,
            "{",
        ] {
            assert_eq!(
                parse_str("/g/10.0.0.1:80", bad),
                Err(SkipReason::InvalidJson),
                "{bad}"
            );
        }
        // Go leaves every field empty for `null`.
        assert_eq!(
            parse_str("/g/10.0.0.1:80", "null"),
            Err(SkipReason::MissingAddr)
        );
    }

    #[test]
    fn skip_reasons() {
        let ok = |addr: &str| format!(r#"{{"name":"g","addr":"{addr}","version":""}}"#);
        let cases: &[(&str, String, SkipReason)] = &[
            ("/g/a", r#"{"name":"g"}"#.into(), SkipReason::MissingAddr),
            (
                "/g/a",
                r#"{"name":"g","addr":""}"#.into(),
                SkipReason::MissingAddr,
            ),
            ("/g/10.0.0.1", ok("10.0.0.1"), SkipReason::MissingPort),
            ("/g/10.0.0.1:", ok("10.0.0.1:"), SkipReason::MissingPort),
            ("/g/[fd00::1]", ok("[fd00::1]"), SkipReason::MissingPort),
            ("/g/fd00::1", ok("fd00::1"), SkipReason::MissingPort),
            ("/g/host", ok("host"), SkipReason::MissingPort),
            ("/g/10.0.0.1:0", ok("10.0.0.1:0"), SkipReason::InvalidPort),
            (
                "/g/10.0.0.1:65536",
                ok("10.0.0.1:65536"),
                SkipReason::InvalidPort,
            ),
            (
                "/g/10.0.0.1:http",
                ok("10.0.0.1:http"),
                SkipReason::InvalidPort,
            ),
            (
                "/g/10.0.0.1:+80",
                ok("10.0.0.1:+80"),
                SkipReason::InvalidPort,
            ),
            (
                "/g/10.0.0.1:99999999999",
                ok("10.0.0.1:99999999999"),
                SkipReason::InvalidPort,
            ),
            (
                "/g/greeter.svc:80",
                ok("greeter.svc:80"),
                SkipReason::Hostname,
            ),
            ("/g/localhost:80", ok("localhost:80"), SkipReason::Hostname),
            ("/g/:80", ok(":80"), SkipReason::InvalidAddr),
            (
                "/g/10.0.0.256:80",
                ok("10.0.0.256:80"),
                SkipReason::InvalidAddr,
            ),
            (
                "/g/010.0.0.1:80",
                ok("010.0.0.1:80"),
                SkipReason::InvalidAddr,
            ),
            (
                "/g/[10.0.0.1]:80",
                ok("[10.0.0.1]:80"),
                SkipReason::InvalidAddr,
            ),
            (
                "/g/[fe80::1%eth0]:80",
                ok("[fe80::1%eth0]:80"),
                SkipReason::InvalidAddr,
            ),
            (
                "/g/[fd00::1]x80",
                ok("[fd00::1]x80"),
                SkipReason::InvalidAddr,
            ),
            ("/g/[fd00::1:80", ok("[fd00::1:80"), SkipReason::InvalidAddr),
            ("/g/a b:80", ok("a b:80"), SkipReason::InvalidAddr),
            (
                "/g/127.0.0.1:80",
                ok("127.0.0.1:80"),
                SkipReason::UnusableIp,
            ),
            ("/g/0.0.0.0:80", ok("0.0.0.0:80"), SkipReason::UnusableIp),
            (
                "/g/169.254.1.1:80",
                ok("169.254.1.1:80"),
                SkipReason::UnusableIp,
            ),
            (
                "/g/224.0.0.5:80",
                ok("224.0.0.5:80"),
                SkipReason::UnusableIp,
            ),
            ("/g/[::1]:80", ok("[::1]:80"), SkipReason::UnusableIp),
            ("/g/[::]:80", ok("[::]:80"), SkipReason::UnusableIp),
            (
                "/g/[fe80::1]:80",
                ok("[fe80::1]:80"),
                SkipReason::UnusableIp,
            ),
            (
                "/g/[ff02::1]:80",
                ok("[ff02::1]:80"),
                SkipReason::UnusableIp,
            ),
            (
                "/g/[::ffff:127.0.0.1]:80",
                ok("[::ffff:127.0.0.1]:80"),
                SkipReason::UnusableIp,
            ),
            (
                "/g/10.0.0.2:80",
                ok("10.0.0.1:80"),
                SkipReason::KeyValueMismatch,
            ),
            (
                "/h/10.0.0.1:80",
                ok("10.0.0.1:80"),
                SkipReason::KeyValueMismatch,
            ),
            (
                "/g/v1/10.0.0.1:80",
                ok("10.0.0.1:80"),
                SkipReason::KeyValueMismatch,
            ),
            (
                "/g/10.0.0.1:80",
                r#"{"name":"g","addr":"10.0.0.1:80","weight":-1}"#.into(),
                SkipReason::NegativeWeight,
            ),
            ("/g", ok("10.0.0.1:80"), SkipReason::BadKeyShape),
            (
                "/g/v1/x/10.0.0.1:80",
                ok("10.0.0.1:80"),
                SkipReason::BadKeyShape,
            ),
            ("//10.0.0.1:80", ok("10.0.0.1:80"), SkipReason::BadKeyShape),
            (
                "/g//10.0.0.1:80",
                ok("10.0.0.1:80"),
                SkipReason::BadKeyShape,
            ),
            ("/g/v1/", ok("10.0.0.1:80"), SkipReason::BadKeyShape),
            ("g/10.0.0.1:80", ok("10.0.0.1:80"), SkipReason::BadKeyShape),
        ];
        for (key, value, want) in cases {
            assert_eq!(parse_str(key, value), Err(*want), "{key} {value}");
        }
    }

    #[test]
    fn size_and_utf8_limits() {
        let big = format!(
            r#"{{"name":"g","addr":"10.0.0.1:80","pad":"{}"}}"#,
            "x".repeat(MAX_VALUE_BYTES)
        );
        assert_eq!(
            parse_str("/g/10.0.0.1:80", &big),
            Err(SkipReason::Oversized)
        );
        assert_eq!(
            parse("/", b"/g/\xff", br#"{"name":"g"}"#),
            Err(SkipReason::NotUtf8)
        );
        assert_eq!(
            parse("/", b"/g/10.0.0.1:80", b"{\"name\":\"\xff\"}"),
            Err(SkipReason::NotUtf8)
        );
    }

    #[test]
    fn encodes_like_go() {
        // Expected bytes are Go 1.26's json.Marshal output for the same Server.
        let none = BTreeMap::new();
        assert_eq!(
            encode_value("greeter", "v1", "10.0.0.1:50051", 3, &none),
            r#"{"name":"greeter","addr":"10.0.0.1:50051","version":"v1","weight":3}"#
        );
        assert_eq!(
            encode_value("greeter", "", "[fd00::1]:50051", 0, &none),
            r#"{"name":"greeter","addr":"[fd00::1]:50051","version":"","weight":0}"#
        );
        assert_eq!(
            encode_value(
                "a\"b\\c<d>&e\u{2028}\u{2029}\u{1}\u{8}\u{c}\n\r\t\u{7f}é😀",
                "v/1",
                "10.0.0.1:1",
                -5,
                &none
            ),
            "{\"name\":\"a\\\"b\\\\c\\u003cd\\u003e\\u0026e\\u2028\\u2029\\u0001\\b\\f\\n\\r\\t\u{7f}é😀\",\"addr\":\"10.0.0.1:1\",\"version\":\"v/1\",\"weight\":-5}"
        );
    }

    #[test]
    fn encodes_extra_fields_after_the_struct() {
        let extra: BTreeMap<String, String> = [
            ("owner", "x<y"),
            ("a", "b"),
            ("Addr", "1.2.3.4:5"),
            ("WEIGHT", "9"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let value = encode_value("g", "v1", "10.0.0.1:80", 2, &extra);
        assert_eq!(
            value,
            r#"{"name":"g","addr":"10.0.0.1:80","version":"v1","weight":2,"a":"b","owner":"x\u003cy"}"#
        );
        assert_eq!(
            parse_str("/g/v1/10.0.0.1:80", &value),
            Ok(reg("g", "v1", "10.0.0.1:80", 2))
        );
    }

    #[test]
    fn reg_key_matches_build_reg_path() {
        assert_eq!(reg_key("/", "g", "v1", "10.0.0.1:80"), "/g/v1/10.0.0.1:80");
        assert_eq!(
            reg_key("/svc/", "g", "", "10.0.0.1:80"),
            "/svc/g/10.0.0.1:80"
        );
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9._\\-<>&\"\\\\ é]{1,12}"
    }

    fn routable_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (1u8..=126, any::<[u8; 3]>())
                .prop_map(|(a, [b, c, d])| IpAddr::V4(Ipv4Addr::new(a, b, c, d))),
            any::<[u16; 7]>().prop_map(|g| IpAddr::V6(Ipv6Addr::new(
                0xfd00, g[0], g[1], g[2], g[3], g[4], g[5], g[6]
            ))),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(
            name in segment(),
            version in prop_oneof![Just(String::new()), segment()],
            ip in routable_ip(),
            port in 1u16..,
            weight in 0i64..,
            prefix in prop_oneof![Just("/".to_string()), Just("/reg/".to_string())],
        ) {
            let addr = SocketAddr::new(ip, port).to_string();
            let key = reg_key(&prefix, &name, &version, &addr);
            let value = encode_value(&name, &version, &addr, weight, &BTreeMap::new());
            // serde_json must read what we write as the same strings Go would.
            let generic: serde_json::Value = serde_json::from_str(&value).unwrap();
            prop_assert_eq!(generic["name"].as_str(), Some(name.as_str()));
            let parsed = parse(&prefix, key.as_bytes(), value.as_bytes());
            prop_assert_eq!(parsed, Ok(Registration { name, version, addr: SocketAddr::new(ip, port), weight }));
        }

        #[test]
        fn parse_never_panics(key in any::<Vec<u8>>(), value in any::<Vec<u8>>()) {
            let _ = parse("/", &key, &value);
        }

        #[test]
        fn parse_never_panics_on_addr_like_input(addr in "[0-9a-f:.\\[\\]%x]{0,24}") {
            let value = format!(r#"{{"name":"g","addr":"{addr}"}}"#);
            let key = format!("/g/{addr}");
            let _ = parse("/", key.as_bytes(), value.as_bytes());
        }
    }
}
