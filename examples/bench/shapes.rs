//! Registrations in each framework's format, shaped like the golden fixtures of
//! tests/fixtures/formats/ (captured from each framework's own registration code): the keys and
//! values the format sections parse and load into etcd.

use etcd_bridge::format::Format;
use etcd_bridge_testbed::seed::{seed_key, seed_value};

/// The six formats a prefix can be in (`auto` is not a layout of its own).
pub const SIX: [Format; 6] = Format::LAYOUTS;

/// The port each framework's example servers use in the fixtures.
pub fn port(format: Format) -> u16 {
    match format {
        Format::Seed | Format::EtcdNaming | Format::GoMicro => 50051,
        Format::GoZero => 8080,
        Format::Kratos => 9000,
        Format::Kitex | Format::Auto => 8888,
    }
}

/// A UUID-like id, unique for `i` (kratos and go-micro name instances by UUID).
fn uuid(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// The key and value of registration `i` of `service` at `ip`, under `prefix`, as `format`'s
/// framework writes it. `version` is used by the formats that carry one in the value or key
/// (seed, kratos, go-micro); `""` gives a single Service per name in every format.
pub fn entry(
    format: Format,
    prefix: &str,
    service: &str,
    version: &str,
    ip: &str,
    i: usize,
) -> (String, String) {
    let addr = format!("{ip}:{}", port(format));
    match format {
        Format::Seed | Format::Auto => (
            seed_key(prefix, service, version, &addr),
            seed_value(service, version, &addr, 10),
        ),
        Format::EtcdNaming => (
            format!("{prefix}{service}/{addr}"),
            format!(r#"{{"Op":0,"Addr":"{addr}","Metadata":null}}"#),
        ),
        // go-zero's key ends with its etcd lease id.
        Format::GoZero => (
            format!(
                "{prefix}{service}/{}",
                7_587_867_045_393_427_713u64 + i as u64
            ),
            addr,
        ),
        Format::Kratos => {
            let id = uuid(i);
            (
                format!("{prefix}{service}/{id}"),
                format!(
                    r#"{{"id":"{id}","name":"{service}","version":"{version}","metadata":{{"weight":"5"}},"endpoints":["http://{ip}:8000","grpc://{addr}"]}}"#
                ),
            )
        }
        Format::GoMicro => {
            let node = format!("{service}-{}", uuid(i));
            (
                format!("{prefix}{service}/{node}"),
                format!(
                    r#"{{"name":"{service}","version":"{version}","metadata":null,"endpoints":[],"nodes":[{{"metadata":{{"broker":"http","protocol":"grpc","registry":"etcd","server":"grpc","transport":"grpc"}},"id":"{node}","address":"{addr}"}}]}}"#
                ),
            )
        }
        Format::Kitex => (
            format!("{prefix}{service}/{addr}"),
            format!(
                r#"{{"network":"tcp","address":"{addr}","weight":10,"tags":{{"cluster":"c1","env":"prod"}}}}"#
            ),
        ),
    }
}

/// The prefix a user configures for `format` (the frameworks' defaults where they have one).
pub fn default_prefix(format: Format) -> &'static str {
    match format {
        Format::Seed => "/services/",
        Format::EtcdNaming => "naming/",
        Format::GoZero => "zero/",
        Format::Kratos => "/microservices/",
        Format::GoMicro => "/micro/registry/",
        Format::Kitex => "kitex/registry-etcd/",
        Format::Auto => "/auto/",
    }
}

/// The `i`th address of a parse corpus: distinct, in 10.0.0.0/8 (never dialled: parsing only).
pub fn corpus_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + (i >> 16) % 250, (i >> 8) & 255, i & 255)
}
