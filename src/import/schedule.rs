//! When the reconciler flushes: coalescing of bursts, retries of failed syncs, and readiness.
//! Pure: every method takes the time it is called at, so the rules are tested with given
//! `Instant`s and no clock.

use crate::backoff::Backoff;
use std::time::{Duration, Instant};

pub struct Schedule {
    /// A change after this much quiet is written at once; changes closer together are a burst,
    /// gathered until it pauses for this long, or for at most `coalesce_max`.
    coalesce: Duration,
    coalesce_max: Duration,
    /// Since when something waits to be written.
    dirty_since: Option<Instant>,
    /// When the last registration change arrived.
    last_change: Option<Instant>,
    /// The pending changes began after a quiet spell: written at once.
    leading: bool,
    retry: Backoff,
    /// A failed flush is retried at this time (or sooner, when the apiserver answers again).
    retry_at: Option<Instant>,
}

impl Schedule {
    pub fn new(coalesce: Duration, coalesce_max: Duration) -> Self {
        Schedule {
            coalesce,
            coalesce_max,
            dirty_since: None,
            last_change: None,
            leading: false,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
            retry_at: None,
        }
    }

    /// A registration changed at `now`.
    pub fn changed(&mut self, now: Instant) {
        let quiet = self
            .last_change
            .is_none_or(|t| now.duration_since(t) > self.coalesce);
        if self.dirty_since.is_none() {
            self.dirty_since = Some(now);
            self.leading = quiet;
        } else if quiet {
            self.leading = true;
        }
        self.last_change = Some(now);
    }

    /// Something needs a check but is not news (the cluster's echo of our own writes): it must
    /// not make the next real change look like part of a burst.
    pub fn touched(&mut self, now: Instant) {
        self.dirty_since.get_or_insert(now);
    }

    /// When the next flush is due, if one is. `full_sync`: every Service is to be checked (a new
    /// leader, a resync); that waits for nothing but a pending retry.
    pub fn due(&self, full_sync: bool, now: Instant) -> Option<Instant> {
        if full_sync {
            return Some(self.retry_at.unwrap_or(now));
        }
        let due = self.dirty_since.map(|since| {
            if self.leading {
                since
            } else {
                let quiet = self.last_change.unwrap_or(since) + self.coalesce;
                quiet.min(since + self.coalesce_max)
            }
        });
        match (due, self.retry_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, None) => a,
            (None, b) => b,
        }
    }

    /// A flush takes everything pending.
    pub fn flushing(&mut self) {
        self.dirty_since = None;
    }

    /// A flush ended. When some Services failed, they are retried after a growing backoff;
    /// returns that wait.
    pub fn flushed(&mut self, now: Instant, failed: bool) -> Option<Duration> {
        if !failed {
            self.retry.reset();
            self.retry_at = None;
            return None;
        }
        let wait = self.retry.next_delay();
        self.retry_at = Some(now + wait);
        self.changed(now);
        Some(wait)
    }

    /// Whether failed syncs wait for a retry: then the apiserver is worth probing.
    pub fn failing(&self) -> bool {
        self.retry_at.is_some()
    }

    /// The apiserver answered again after failures: retry at once rather than wait out a backoff
    /// that grew during the outage. Returns whether a retry was brought forward.
    pub fn api_answered(&mut self, now: Instant) -> bool {
        if self.retry_at.is_none_or(|at| at <= now) {
            return false;
        }
        self.retry.reset();
        self.retry_at = Some(now);
        true
    }
}

/// What `/readyz` says, from where the reconciler stands: standbys are ready once their cache is
/// warm; the leader after its first complete sync.
pub fn ready(cache_warm: bool, leader: bool, synced: bool) -> bool {
    cache_warm && (synced || !leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn schedule() -> Schedule {
        Schedule::new(10 * MS, 100 * MS)
    }

    #[test]
    fn an_isolated_change_is_due_at_once() {
        let t0 = Instant::now();
        let mut s = schedule();
        assert_eq!(s.due(false, t0), None);
        s.changed(t0);
        assert_eq!(s.due(false, t0), Some(t0));
    }

    #[test]
    fn a_burst_waits_for_a_pause_but_never_past_the_maximum() {
        let t0 = Instant::now();
        let mut s = schedule();
        s.changed(t0);
        s.flushing();
        // The next change 2 ms later is part of a burst: it waits for 10 ms of quiet.
        s.changed(t0 + 2 * MS);
        assert_eq!(s.due(false, t0 + 2 * MS), Some(t0 + 12 * MS));
        for i in 1..50 {
            s.changed(t0 + (2 + 5 * i) * MS);
        }
        // Changes every 5 ms never pause: the maximum of 100 ms from the first one holds.
        assert_eq!(s.due(false, t0 + 247 * MS), Some(t0 + 102 * MS));
    }

    #[test]
    fn echoes_of_our_writes_do_not_make_a_burst() {
        let t0 = Instant::now();
        let mut s = schedule();
        s.touched(t0);
        assert_eq!(s.due(false, t0), Some(t0 + 10 * MS));
        s.flushing();
        // A real change after only echoes is still isolated: written at once.
        s.changed(t0 + 3 * MS);
        assert_eq!(s.due(false, t0 + 3 * MS), Some(t0 + 3 * MS));
    }

    #[test]
    fn a_failed_flush_retries_after_a_backoff_that_grows_and_resets() {
        let t0 = Instant::now();
        let mut s = schedule();
        s.changed(t0);
        s.flushing();
        let first = s.flushed(t0, true).unwrap();
        assert!(first >= 500 * MS && first < 630 * MS, "{first:?}");
        assert!(s.failing());
        assert_eq!(s.due(false, t0), Some(t0 + first));
        // A full sync also waits for the retry.
        assert_eq!(s.due(true, t0), Some(t0 + first));
        let second = s.flushed(t0 + first, true).unwrap();
        assert!(second >= 1000 * MS, "{second:?}");
        assert_eq!(s.flushed(t0 + first + second, false), None);
        assert!(!s.failing());
        assert_eq!(s.due(true, t0 + 5 * MS), Some(t0 + 5 * MS));
    }

    #[test]
    fn the_apiserver_answering_again_cuts_the_backoff_short() {
        // Issue 10, hole 8: after an outage the backoff had grown to ~30 s, and convergence came
        // 23-25 s after the apiserver was back.
        let t0 = Instant::now();
        let mut s = schedule();
        let mut now = t0;
        for _ in 0..8 {
            now += s.flushed(now, true).unwrap();
        }
        let wait = s.flushed(now, true).unwrap();
        assert!(wait >= Duration::from_secs(30), "{wait:?}");
        let back = now + Duration::from_secs(1);
        assert!(s.api_answered(back));
        assert_eq!(s.due(false, back), Some(back));
        // The next failure starts the backoff from the bottom again.
        let again = s.flushed(back, true).unwrap();
        assert!(again < Duration::from_secs(1), "{again:?}");
        // Nothing to bring forward when no retry waits.
        assert!(!schedule().api_answered(back));
    }

    #[test]
    fn readiness() {
        assert!(!ready(false, false, false));
        assert!(ready(true, false, false), "a warm standby is ready");
        assert!(
            !ready(true, true, false),
            "a leader before its first sync is not"
        );
        assert!(ready(true, true, true));
    }
}
