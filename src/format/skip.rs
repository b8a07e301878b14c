//! Why an etcd entry is not projected: one reason per fault, each with what to do about it.

use std::fmt;

/// Why an etcd entry under the prefix is not projected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The key or the value is not UTF-8.
    NotUtf8,
    /// The value is larger than [`MAX_VALUE_BYTES`].
    Oversized,
    /// The value is not what Go's `json.Unmarshal` into `Server` accepts.
    InvalidJson,
    /// The value has no (or an empty) addr.
    MissingAddr,
    /// The addr has no port.
    MissingPort,
    /// The port is 0, above 65535 or not a number.
    InvalidPort,
    /// The host is a DNS name: an FQDN EndpointSlice is ignored by kube-proxy and meshes.
    Hostname,
    /// The addr is neither `ipv4:port` nor `[ipv6]:port`.
    InvalidAddr,
    /// The IP is unspecified, loopback or link-local: the apiserver rejects such EndpointSlice
    /// addresses, and one of them would make the whole slice fail to write.
    UnusableIp,
    /// The key is not `{prefix}{name}/{addr}` or `{prefix}{name}/{version}/{addr}`.
    BadKeyShape,
    /// The value's name, version or addr differs from the key's segments.
    KeyValueMismatch,
    /// The weight is below zero.
    NegativeWeight,
    /// Written back by this bridge from an EtcdRegistration: projecting it again would loop.
    OwnRegistration,
    /// Under an `auto` prefix, the value has the shape of no known format.
    UnknownFormat,
    /// A kratos instance without a `grpc://` endpoint, or a go-micro node of another protocol.
    NoGrpcEndpoint,
    /// A weight (in the value or its metadata) that is not an integer.
    InvalidWeight,
}

impl SkipReason {
    /// Every reason, so that metrics can start each label value at zero.
    pub const ALL: [SkipReason; 16] = [
        SkipReason::NotUtf8,
        SkipReason::Oversized,
        SkipReason::InvalidJson,
        SkipReason::MissingAddr,
        SkipReason::MissingPort,
        SkipReason::InvalidPort,
        SkipReason::Hostname,
        SkipReason::InvalidAddr,
        SkipReason::UnusableIp,
        SkipReason::BadKeyShape,
        SkipReason::KeyValueMismatch,
        SkipReason::NegativeWeight,
        SkipReason::OwnRegistration,
        SkipReason::UnknownFormat,
        SkipReason::NoGrpcEndpoint,
        SkipReason::InvalidWeight,
    ];

    /// A stable snake_case name, used as a Prometheus label value.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::OwnRegistration => "own_registration",
            SkipReason::NotUtf8 => "not_utf8",
            SkipReason::Oversized => "oversized",
            SkipReason::InvalidJson => "invalid_json",
            SkipReason::MissingAddr => "missing_addr",
            SkipReason::MissingPort => "missing_port",
            SkipReason::InvalidPort => "invalid_port",
            SkipReason::Hostname => "hostname",
            SkipReason::InvalidAddr => "invalid_addr",
            SkipReason::UnusableIp => "unusable_ip",
            SkipReason::BadKeyShape => "bad_key_shape",
            SkipReason::KeyValueMismatch => "key_value_mismatch",
            SkipReason::NegativeWeight => "negative_weight",
            SkipReason::UnknownFormat => "unknown_format",
            SkipReason::NoGrpcEndpoint => "no_grpc_endpoint",
            SkipReason::InvalidWeight => "invalid_weight",
        }
    }
}

impl fmt::Display for SkipReason {
    // The reason carries no data (it is Copy and a metric label); the caller logs the key with it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::NotUtf8 => "the key or value is not valid UTF-8; register UTF-8 text",
            SkipReason::Oversized => {
                "the value is larger than 16384 bytes; register only the JSON of Server{name, addr, version, weight}"
            }
            SkipReason::InvalidJson => {
                "the value is not the JSON this prefix's format writes (for seed: {\"name\":..,\"addr\":\"ip:port\",\"version\":..,\"weight\":N}, json.Marshal(Server{...})); check the format given for this prefix (docs/formats.md)"
            }
            SkipReason::MissingAddr => "the value has no address; register the addr as ip:port",
            SkipReason::MissingPort => {
                "the addr has no port; register ip:port, with an IPv6 address as [ip]:port"
            }
            SkipReason::InvalidPort => {
                "the addr's port is not a number from 1 to 65535; register the port the service listens on"
            }
            SkipReason::Hostname => {
                "the addr's host is a DNS name, which an EndpointSlice cannot route; register the IP address instead"
            }
            SkipReason::InvalidAddr => {
                "the addr is not ip:port; register e.g. 10.0.0.1:50051 or [fd00::1]:50051"
            }
            SkipReason::UnusableIp => {
                "the addr's IP is unspecified, loopback or link-local, which Kubernetes refuses in an EndpointSlice; register a routable IP"
            }
            SkipReason::BadKeyShape => {
                "the key does not have the shape of this prefix's format (for seed: {prefix}{name}/{addr} or {prefix}{name}/{version}/{addr} with non-empty segments, as BuildRegPath builds)"
            }
            SkipReason::KeyValueMismatch => {
                "the value's name, version or addr differs from the key, so a Resolver would never delete it; register the value under the key BuildRegPath builds from it"
            }
            SkipReason::NegativeWeight => "the weight is negative; register a weight of 0 or more",
            SkipReason::UnknownFormat => "the value has the shape of no known registry format; give this prefix its format with --prefix=PREFIX=FORMAT (see docs/formats.md)",
            SkipReason::NoGrpcEndpoint => "the instance serves no gRPC (no grpc:// endpoint, or a go-micro node whose protocol is not grpc); only gRPC endpoints are projected",
            SkipReason::InvalidWeight => "the weight is not an integer; register an integer weight (a number, or a decimal string in metadata)",
            SkipReason::OwnRegistration => "this bridge wrote it back from an EtcdRegistration; it is not imported again (--import-own-registrations=true changes that)",
        })
    }
}

impl std::error::Error for SkipReason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: std::collections::BTreeSet<_> =
            SkipReason::ALL.iter().map(SkipReason::label).collect();
        assert_eq!(labels.len(), SkipReason::ALL.len());
        for label in labels {
            assert!(
                label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            );
        }
        assert!(SkipReason::MissingPort.to_string().contains("ip:port"));
    }
}
