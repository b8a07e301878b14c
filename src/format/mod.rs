//! Registry formats: how each framework writes its registrations into etcd, all read into one
//! model, [`Registration`]. One file per format behind [`parse`]; the address rules they share
//! are in [`addr`], the reasons to skip an entry in [`skip`]. Nothing below the snapshot knows
//! about formats. docs/formats.md describes each layout, as read from the framework's source.

pub mod addr;
pub mod etcd_naming;
pub mod go_micro;
pub mod go_zero;
#[cfg(test)]
mod golden;
mod json;
pub mod kitex;
pub mod kratos;
pub mod seed;
pub mod skip;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

pub use skip::SkipReason;

/// Values larger than this are skipped unparsed: a real registration is well under 1 KiB, and the
/// bridge holds every value it accepts in memory.
pub const MAX_VALUE_BYTES: usize = 16 * 1024;

/// One accepted registration. Only what the projection needs is kept: memory per endpoint matters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Registration {
    pub name: String,
    /// `""` when the service registered without a version.
    pub version: String,
    pub addr: SocketAddr,
    pub weight: i64,
}

/// The weight of formats that carry none.
pub const DEFAULT_WEIGHT: i64 = 1;

/// How the keys under one prefix are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Format {
    /// The reference write-up's Register/Resolver: `{prefix}{name}/{version}/{addr}`.
    Seed,
    /// etcd's own gRPC resolver (`go.etcd.io/etcd/client/v3/naming/endpoints`).
    EtcdNaming,
    /// go-zero's `core/discov`.
    GoZero,
    /// kratos' `contrib/registry/etcd`.
    Kratos,
    /// go-micro's etcd registry.
    GoMicro,
    /// kitex-contrib/registry-etcd.
    Kitex,
    /// Sniffed per key from the shapes of key and value.
    Auto,
}

impl Format {
    /// The registry layouts (every format but `auto`, which sniffs among them).
    pub const LAYOUTS: [Format; 6] = [
        Format::Seed,
        Format::EtcdNaming,
        Format::GoZero,
        Format::Kratos,
        Format::GoMicro,
        Format::Kitex,
    ];

    pub const ALL: [Format; 7] = {
        let l = Format::LAYOUTS;
        [l[0], l[1], l[2], l[3], l[4], l[5], Format::Auto]
    };

    /// The name used in `--prefix=/p/=NAME`, Helm values, metrics and `preview`.
    pub fn label(&self) -> &'static str {
        match self {
            Format::Seed => "seed",
            Format::EtcdNaming => "etcd-naming",
            Format::GoZero => "go-zero",
            Format::Kratos => "kratos",
            Format::GoMicro => "go-micro",
            Format::Kitex => "kitex",
            Format::Auto => "auto",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.label() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = Format::ALL.iter().map(Format::label).collect();
                format!(
                    "unknown registry format `{s}`; use one of {}",
                    known.join(", ")
                )
            })
    }
}

/// Parses one etcd entry under `prefix` in `format`. Returns the registration and the format it
/// was read as (the sniffed one, for [`Format::Auto`]).
pub fn parse(
    format: Format,
    prefix: &str,
    key: &[u8],
    value: &[u8],
) -> Result<(Registration, Format), SkipReason> {
    let key = std::str::from_utf8(key).map_err(|_| SkipReason::NotUtf8)?;
    let rest = key.strip_prefix(prefix).ok_or(SkipReason::BadKeyShape)?;
    if value.len() > MAX_VALUE_BYTES {
        return Err(SkipReason::Oversized);
    }
    let value = std::str::from_utf8(value).map_err(|_| SkipReason::NotUtf8)?;
    let format = match format {
        Format::Auto => sniff(value).ok_or(SkipReason::UnknownFormat)?.0,
        f => f,
    };
    let reg = match format {
        Format::Seed => seed::parse(rest, value),
        Format::EtcdNaming => etcd_naming::parse(split_last(prefix, rest)?.0, value),
        Format::GoZero => go_zero::parse(split_last(prefix, rest)?.0, value),
        Format::Kratos => kratos::parse(split_last(prefix, rest)?.0, value),
        Format::GoMicro => go_micro::parse(split_last(prefix, rest)?, value),
        Format::Kitex => kitex::parse(split_last(prefix, rest)?.0, value),
        Format::Auto => unreachable!("sniffed above"),
    }?;
    if reg.weight < 0 {
        return Err(SkipReason::NegativeWeight);
    }
    Ok((reg, format))
}

/// Which format a value is in, and why, from its shape alone (keys are free-form in most
/// formats). `None` when no format fits.
pub fn sniff(value: &str) -> Option<(Format, &'static str)> {
    let trimmed = value.trim_start();
    if !trimmed.starts_with('{') {
        return go_zero::looks_like(value).then_some((Format::GoZero, why(Format::GoZero)));
    }
    let obj = json::object(value)?;
    let has = |name: &str| json::field(&obj, name).is_some();
    let format = if has("nodes") {
        Format::GoMicro
    } else if has("endpoints") && has("id") {
        Format::Kratos
    } else if has("op") && has("addr") {
        Format::EtcdNaming
    } else if has("network") && has("address") {
        Format::Kitex
    } else if has("addr") && has("name") {
        Format::Seed
    } else {
        return None;
    };
    Some((format, why(format)))
}

/// What [`sniff`] saw in a value to call it `format`.
pub fn why(format: Format) -> &'static str {
    match format {
        Format::GoMicro => "the value is a registry.Service with nodes",
        Format::Kratos => "the value is a ServiceInstance with endpoint URLs",
        Format::EtcdNaming => "the value is an endpoints.Update {Op, Addr}",
        Format::Kitex => "the value has network and address",
        Format::Seed => "the value is a Server {name, addr, version, weight}",
        Format::GoZero => "the value is a plain host:port",
        Format::Auto => "",
    }
}

/// For the formats whose keys are `{service}/{id}`: (service, id) of the key after the watched
/// prefix. When the prefix is one service's own (`user.rpc/` for go-zero's `user.rpc/{lease}`),
/// the service is the prefix's last segment.
fn split_last<'a>(prefix: &'a str, rest: &'a str) -> Result<(&'a str, &'a str), SkipReason> {
    match rest.rsplit_once('/') {
        // No empty segment: `a//1` would name a service `a/`.
        Some((head, last)) if !last.is_empty() && !head.split('/').any(str::is_empty) => {
            Ok((head, last))
        }
        Some(_) => Err(SkipReason::BadKeyShape),
        None if rest.is_empty() => Err(SkipReason::BadKeyShape),
        None => {
            let own = prefix.trim_end_matches('/');
            let own = own.rsplit('/').next().unwrap_or_default();
            if own.is_empty() {
                Err(SkipReason::BadKeyShape)
            } else {
                Ok((own, rest))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_from_their_labels() {
        for f in Format::ALL {
            assert_eq!(f.label().parse::<Format>(), Ok(f));
        }
        let err = "consul".parse::<Format>().unwrap_err();
        assert!(err.contains("seed, etcd-naming"), "{err}");
    }

    #[test]
    fn sniffing_tells_every_format_apart() {
        let cases = [
            (
                r#"{"name":"g","addr":"10.0.0.1:80","version":"","weight":1}"#,
                Format::Seed,
            ),
            (
                r#"{"Op":0,"Addr":"10.0.0.1:80","Metadata":null}"#,
                Format::EtcdNaming,
            ),
            ("10.0.0.1:80", Format::GoZero),
            (
                r#"{"id":"1","name":"g","version":"v1","metadata":null,"endpoints":["grpc://10.0.0.1:9000"]}"#,
                Format::Kratos,
            ),
            (
                r#"{"name":"g","version":"1","nodes":[{"id":"g-1","address":"10.0.0.1:80"}]}"#,
                Format::GoMicro,
            ),
            (
                r#"{"network":"tcp","address":"10.0.0.1:80","weight":10}"#,
                Format::Kitex,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(sniff(value).map(|(f, _)| f), Some(want), "{value}");
        }
        assert_eq!(sniff(r#"{"x":1}"#), None);
        assert_eq!(sniff("garbage"), None);
    }

    #[test]
    fn auto_reads_each_key_in_its_own_format_and_says_which() {
        let (reg, format) = parse(Format::Auto, "/p/", b"/p/svc/7587867", b"10.0.0.1:80").unwrap();
        assert_eq!((reg.name.as_str(), format), ("svc", Format::GoZero));
        assert_eq!(
            parse(Format::Auto, "/p/", b"/p/svc/1", b"{\"x\":1}"),
            Err(SkipReason::UnknownFormat)
        );
    }

    #[test]
    fn negative_weights_are_refused_in_every_format() {
        assert_eq!(
            parse(
                Format::Kratos,
                "/microservices/",
                b"/microservices/h/1",
                br#"{"id":"1","name":"h","metadata":{"weight":"-1"},"endpoints":["grpc://10.0.0.5:9000"]}"#
            ),
            Err(SkipReason::NegativeWeight)
        );
        // kitex reads a non-positive weight as its default, 10.
        let kitex = parse(
            Format::Kitex,
            "kitex/registry-etcd/",
            b"kitex/registry-etcd/svc/10.0.0.1:80",
            br#"{"network":"tcp","address":"10.0.0.1:80","weight":-1}"#,
        );
        assert_eq!(kitex.map(|(r, _)| r.weight), Ok(10));
    }
}
