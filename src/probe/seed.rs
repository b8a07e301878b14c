//! What a new leader (or a restarted bridge) starts from: the endpoints our slices already show
//! as not serving. They stay so until their own probes pass, so a change of leader does not flap
//! them to ready and back (see docs/architecture.md, "Health checks").

use crate::projection::EndpointId;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::IpAddr;

/// The endpoints of `slice` whose `serving` condition is false (unset: as `ready`, and unset
/// `ready` is true, as the API says).
pub fn not_serving(slice: &EndpointSlice) -> Vec<EndpointId> {
    let Some(port) = slice
        .ports
        .iter()
        .flatten()
        .find_map(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
    else {
        return Vec::new();
    };
    slice
        .endpoints
        .iter()
        .filter(|e| {
            let c = e.conditions.clone().unwrap_or_default();
            !c.serving.unwrap_or(c.ready.unwrap_or(true))
        })
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| (ip.to_canonical(), port))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{self, AddressType, GroupKey, ProjectionConfig, Unhealthy};

    #[test]
    fn reads_back_what_the_projection_wrote_not_serving() {
        let cfg = ProjectionConfig {
            namespace: "ns".into(),
            instance: "i".into(),
            headless: true,
            max_endpoints_per_slice: 100,
            cilium_weight: true,
            buckets: 1,
        };
        let ips: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let sick = Unhealthy::from([(ips[1], 7000)]);
        for weight in [0, 4] {
            let g = GroupKey {
                address_type: AddressType::IPv4,
                port: 7000,
                weight,
            };
            let s = projection::slice("default", "s", "s-0", &g, &ips, &sick, &cfg);
            // A draining endpoint is not ready, but serves: only the failed one is read back.
            assert_eq!(not_serving(&s), [(ips[1], 7000)], "weight {weight}");
        }
        let mut unset = projection::slice(
            "default",
            "s",
            "s-0",
            &GroupKey {
                address_type: AddressType::IPv4,
                port: 7000,
                weight: 1,
            },
            &ips,
            &sick,
            &cfg,
        );
        for e in &mut unset.endpoints {
            let c = e.conditions.as_mut().unwrap();
            c.serving = None;
        }
        assert_eq!(
            not_serving(&unset),
            [(ips[1], 7000)],
            "serving unset: as ready"
        );
        unset.endpoints[1].conditions = None;
        assert!(not_serving(&unset).is_empty(), "no conditions: ready");
    }
}
