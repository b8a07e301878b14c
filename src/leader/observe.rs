//! When a Lease held by another replica counts as expired, judged on this replica's own clock
//! (pure). As client-go's leader election does, a Lease is expired when its record has not
//! changed for its duration *since this replica saw it change*: the renew time written by another
//! machine is only compared with itself, so clock skew between replicas cannot make a live holder
//! look expired. A replica that has just started therefore waits one duration before it takes a
//! Lease it finds held, which is what makes a restart safe.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A Lease's record as read: who holds it, and what changes on every renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub holder: Option<String>,
    /// The renew time as written (any string that changes with every renewal).
    pub renewed: String,
    pub duration: Duration,
}

/// The records seen so far, by Lease name, with when each last changed.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<String, (Record, Instant)>,
}

impl Observer {
    /// Notes `record` for `lease`, read at `now`.
    pub fn observe(&mut self, lease: &str, record: Record, now: Instant) {
        match self.seen.get_mut(lease) {
            Some((old, _)) if *old == record => {}
            _ => {
                self.seen.insert(lease.to_string(), (record, now));
            }
        }
    }

    /// Forgets a Lease that was deleted.
    pub fn forget(&mut self, lease: &str) {
        self.seen.remove(lease);
    }

    /// The Lease's holder while its record is alive at `now`: None when it is free (never seen,
    /// released) or expired.
    pub fn live_holder(&self, lease: &str, now: Instant) -> Option<&str> {
        let (record, changed) = self.seen.get(lease)?;
        let holder = record.holder.as_deref().filter(|h| !h.is_empty())?;
        (now.saturating_duration_since(*changed) < record.duration).then_some(holder)
    }

    /// The holder of a Lease seen held, alive or not.
    pub fn holder(&self, lease: &str) -> Option<&str> {
        let (record, _) = self.seen.get(lease)?;
        record.holder.as_deref().filter(|h| !h.is_empty())
    }
}

/// Until when this replica may act on a Lease it renewed: the renewal was *sent* at `sent`, so the
/// others (who count from when they saw it, later) cannot take it before `sent + duration`;
/// `margin` leaves time to stop writing before then.
pub fn valid_until(sent: Instant, duration: Duration, margin: Duration) -> Instant {
    sent + duration.saturating_sub(margin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, renewed: &str) -> Record {
        Record {
            holder: (!holder.is_empty()).then(|| holder.to_string()),
            renewed: renewed.into(),
            duration: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_lease_renewed_stays_alive_and_one_left_alone_expires_after_its_duration() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe("b-0", rec("a", "1"), t0);
        assert_eq!(o.live_holder("b-0", t0 + Duration::from_secs(9)), Some("a"));
        // Renewed: the record changed, the clock starts again.
        o.observe("b-0", rec("a", "2"), t0 + Duration::from_secs(9));
        assert_eq!(
            o.live_holder("b-0", t0 + Duration::from_secs(18)),
            Some("a")
        );
        // Read again unchanged: no new start.
        o.observe("b-0", rec("a", "2"), t0 + Duration::from_secs(18));
        assert_eq!(o.live_holder("b-0", t0 + Duration::from_secs(19)), None);
        assert_eq!(o.holder("b-0"), Some("a"));
    }

    #[test]
    fn a_new_observer_waits_a_whole_duration_whatever_the_renew_time_says() {
        // The record's renew time may be long ago by this machine's clock (skew, or a stalled
        // holder): this replica still counts from when it first saw it.
        let t0 = Instant::now();
        let mut o = Observer::default();
        o.observe("b-1", rec("other", "1970-01-01T00:00:00Z"), t0);
        assert_eq!(
            o.live_holder("b-1", t0 + Duration::from_secs(5)),
            Some("other")
        );
        assert_eq!(o.live_holder("b-1", t0 + Duration::from_secs(10)), None);
    }

    #[test]
    fn released_unknown_and_forgotten_leases_are_free() {
        let t0 = Instant::now();
        let mut o = Observer::default();
        assert_eq!(o.live_holder("b-2", t0), None);
        o.observe("b-2", rec("", "3"), t0);
        assert_eq!(o.live_holder("b-2", t0), None);
        o.observe("b-3", rec("a", "3"), t0);
        o.forget("b-3");
        assert_eq!(o.live_holder("b-3", t0), None);
    }

    #[test]
    fn a_holder_stops_acting_before_anyone_may_take_its_lease() {
        let sent = Instant::now();
        let d = Duration::from_secs(15);
        let until = valid_until(sent, d, Duration::from_secs(3));
        // Others count from a read after `sent`: the earliest take is sent + d.
        assert!(until < sent + d);
        assert_eq!(valid_until(sent, d, Duration::from_secs(60)), sent);
    }
}
