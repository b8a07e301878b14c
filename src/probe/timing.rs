//! When each endpoint is probed: once per interval, each at its own phase, with jitter, so that
//! 10,000 endpoints added at once (a start, a new leader) are probed evenly over the interval
//! rather than in one burst, and do not fall back into step. Pure: times in, times out.

use crate::projection::EndpointId;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub interval: Duration,
    /// Each period is the interval, plus or minus this share of it.
    pub jitter: f64,
}

/// A stable 64-bit hash of the endpoint.
fn hash(endpoint: &EndpointId) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    endpoint.hash(&mut h);
    h.finish()
}

/// splitmix64: a well-mixed number from `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A number in [0, 1) from `x`.
fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

impl Timing {
    /// The first probe of an endpoint that appears at `now`: somewhere in the next interval,
    /// at a phase of its own.
    pub fn first(&self, endpoint: &EndpointId, now: Instant) -> Instant {
        now + self.interval.mul_f64(unit(hash(endpoint)))
    }

    /// The probe after the one planned at `planned`, the `round`th of this endpoint: one
    /// interval later, give or take the jitter.
    pub fn next(&self, endpoint: &EndpointId, round: u64, planned: Instant) -> Instant {
        let u = unit(hash(endpoint) ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let jitter = self.jitter.clamp(0.0, 1.0);
        planned + self.interval.mul_f64(1.0 + jitter * (2.0 * u - 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn ep(n: u32) -> EndpointId {
        (IpAddr::from((0x0a00_0000u32 + n).to_be_bytes()), 50051)
    }

    const T: Timing = Timing {
        interval: Duration::from_secs(5),
        jitter: 0.1,
    };

    #[test]
    fn ten_thousand_first_probes_spread_evenly_over_the_interval() {
        let now = Instant::now();
        // Count the first probes in each tenth of the interval.
        let mut buckets = [0usize; 10];
        for n in 0..10_000 {
            let at = T.first(&ep(n), now) - now;
            assert!(at < T.interval);
            buckets[(at.as_secs_f64() / 0.5) as usize] += 1;
        }
        // 1,000 expected in each; a burst would put them in one.
        assert!(
            buckets.iter().all(|b| (850..=1150).contains(b)),
            "{buckets:?}"
        );
        // The same endpoint keeps its phase.
        assert_eq!(T.first(&ep(7), now), T.first(&ep(7), now));
    }

    #[test]
    fn periods_stay_within_the_jitter_and_vary() {
        let now = Instant::now();
        let periods: Vec<Duration> = (0..1000).map(|r| T.next(&ep(1), r, now) - now).collect();
        assert!(
            periods
                .iter()
                .all(|p| *p >= Duration::from_millis(4500) && *p <= Duration::from_millis(5500))
        );
        let (min, max) = (periods.iter().min().unwrap(), periods.iter().max().unwrap());
        assert!(*max - *min > Duration::from_millis(800), "{min:?}..{max:?}");
        let mean = periods.iter().sum::<Duration>() / 1000;
        assert!(
            mean.abs_diff(T.interval) < Duration::from_millis(50),
            "{mean:?}"
        );
        let none = Timing { jitter: 0.0, ..T };
        assert_eq!(none.next(&ep(1), 3, now) - now, T.interval);
    }
}
