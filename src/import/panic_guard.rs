//! The panic guard: when more than a share of a Service's endpoints fail their health checks at
//! once, the bridge keeps them all ready. This is Envoy's panic threshold: a partition on the
//! bridge's side of the network, or a health service misnamed in the flags, must not empty every
//! Service; sending traffic to all endpoints beats sending it to none.
//!
//! Only failed health checks count. Draining endpoints (weight 0) are a registrant's decision, not
//! a failure: they neither count nor are made ready by the guard.

use crate::projection::{EndpointId, Groups, Unhealthy};

/// A Service the guard holds: `failing` of its `total` endpoints failed their checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Panic {
    pub failing: usize,
    pub total: usize,
}

impl Panic {
    /// What the Event on the Service says.
    pub fn note(&self) -> String {
        format!(
            "{} of {} endpoints fail their health checks, more than the panic threshold: all are kept ready (a partition on the bridge's side must not empty the Service)",
            self.failing, self.total
        )
    }
}

/// What a Service shows: the endpoints written as not serving, and whether the guard holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    pub unhealthy: Unhealthy,
    pub panic: Option<Panic>,
}

/// The endpoints of `groups` that `failing` says failed, unless they are more than `max_share` of
/// all its endpoints: then none (every endpoint stays ready) and the panic is reported.
pub fn apply(groups: &Groups, failing: impl Fn(&EndpointId) -> bool, max_share: f64) -> Verdict {
    let endpoints: Unhealthy = groups
        .iter()
        .flat_map(|(g, addrs)| addrs.iter().map(move |a| (*a, g.port)))
        .collect();
    let unhealthy: Unhealthy = endpoints.iter().copied().filter(&failing).collect();
    let (failing, total) = (unhealthy.len(), endpoints.len());
    if failing > 0 && failing as f64 > max_share * total as f64 {
        return Verdict {
            unhealthy: Unhealthy::new(),
            panic: Some(Panic { failing, total }),
        };
    }
    Verdict {
        unhealthy,
        panic: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{AddressType, GroupKey};
    use proptest::prelude::*;
    use std::collections::BTreeSet;
    use std::net::IpAddr;

    fn key(port: u16, weight: i64) -> GroupKey {
        GroupKey {
            address_type: AddressType::IPv4,
            port,
            weight,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn groups(n: u8) -> Groups {
        Groups::from([(key(80, 1), (1..=n).map(ip).collect())])
    }

    fn failing(list: &[u8]) -> impl Fn(&EndpointId) -> bool {
        let set: BTreeSet<EndpointId> = list.iter().map(|n| (ip(*n), 80)).collect();
        move |e| set.contains(e)
    }

    #[test]
    fn up_to_the_share_failing_endpoints_are_not_ready() {
        let v = apply(&groups(4), failing(&[1, 2]), 0.5);
        assert_eq!(v.panic, None);
        assert_eq!(v.unhealthy, Unhealthy::from([(ip(1), 80), (ip(2), 80)]));
        assert_eq!(apply(&groups(4), failing(&[]), 0.5), Verdict::default());
    }

    #[test]
    fn past_the_share_every_endpoint_stays_ready_and_it_is_reported() {
        let v = apply(&groups(4), failing(&[1, 2, 3]), 0.5);
        assert_eq!(
            v,
            Verdict {
                unhealthy: Unhealthy::new(),
                panic: Some(Panic {
                    failing: 3,
                    total: 4
                }),
            }
        );
        // A single endpoint that fails is more than half of its Service: kept, as in Envoy.
        assert!(apply(&groups(1), failing(&[1]), 0.5).panic.is_some());
        // A share of 1 turns the guard off.
        let v = apply(&groups(2), failing(&[1, 2]), 1.0);
        assert_eq!((v.panic, v.unhealthy.len()), (None, 2));
    }

    #[test]
    fn failures_elsewhere_do_not_count() {
        // Another port of the same address, and addresses of other Services.
        let v = apply(&groups(2), |e: &EndpointId| e.1 == 81 || e.0 == ip(9), 0.5);
        assert_eq!(v, Verdict::default());
    }

    proptest! {
        #[test]
        fn never_more_than_the_share_is_written_not_ready(
            n in 1u8..20,
            fail in proptest::collection::btree_set(1u8..25, 0..20),
            share in 0.0f64..=1.0,
        ) {
            let fail: Vec<u8> = fail.into_iter().collect();
            let g = groups(n);
            let v = apply(&g, failing(&fail), share);
            prop_assert!(v.unhealthy.len() as f64 <= share * f64::from(n));
            let in_service = fail.iter().filter(|f| **f <= n).count();
            match v.panic {
                // Past the share: nothing is written not ready.
                Some(p) => {
                    prop_assert!(v.unhealthy.is_empty());
                    prop_assert_eq!(p, Panic { failing: in_service, total: usize::from(n) });
                }
                // Otherwise exactly this Service's failing endpoints.
                None => prop_assert_eq!(v.unhealthy.len(), in_service),
            }
        }
    }
}
