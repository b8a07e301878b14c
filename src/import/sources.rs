//! Each source fails on its own: how the planner treats the Services of one source, from what
//! is known of its etcd. Pure; the reconciler keeps the facts and carries the answer out.

use std::time::{Duration, Instant};

/// How a flush treats the Services of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Treatment {
    /// As the cache says: listed and answering, or down but not past `staleAfter` (then the
    /// cache is the last state read, kept: fail-static). A source that is gone (its object
    /// deleted or refused) is imported as empty: its Services go, through the mass-deletion
    /// guard like a prefix that empties.
    Import,
    /// Not listed yet (starting, or its etcd has not answered since it changed), or not known
    /// yet (the EtcdSource objects are not listed yet): keep what the cluster has; nothing of
    /// it is removed.
    Hold,
    /// Unreachable past its `staleAfter`: its endpoints go, and the mass-deletion guard does
    /// not hold that removal, because it was asked for.
    Expire,
}

/// What the reconciler knows of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The source is configured (the flags' one, or a valid EtcdSource).
    pub known: bool,
    /// Every prefix of it was listed since it (re)started.
    pub listed: bool,
    /// Since when its etcd has been unreachable, if it is.
    pub down_since: Option<Instant>,
    pub stale_after: Option<Duration>,
}

/// `sources_known`: the EtcdSource objects have been listed (always, without them), so a
/// source that is not known is gone rather than not seen yet.
pub fn treatment(f: Facts, sources_known: bool, now: Instant) -> Treatment {
    if !f.known {
        return match sources_known {
            true => Treatment::Import,
            false => Treatment::Hold,
        };
    }
    if stale_at(f).is_some_and(|at| now >= at) {
        return Treatment::Expire;
    }
    match f.listed {
        true => Treatment::Import,
        false => Treatment::Hold,
    }
}

/// When the source becomes stale, if it is down and has a `staleAfter`.
pub fn stale_at(f: Facts) -> Option<Instant> {
    Some(f.down_since? + f.stale_after?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn facts(
        now: Instant,
        listed: bool,
        down_for: Option<Duration>,
        stale_after: Option<Duration>,
    ) -> Facts {
        Facts {
            known: true,
            listed,
            down_since: down_for.map(|d| now - d),
            stale_after,
        }
    }

    #[test]
    fn a_source_that_answers_is_imported() {
        let now = Instant::now();
        assert_eq!(
            treatment(facts(now, true, None, Some(MIN)), true, now),
            Treatment::Import
        );
        assert_eq!(
            treatment(facts(now, true, None, None), false, now),
            Treatment::Import
        );
    }

    #[test]
    fn an_unreachable_source_keeps_its_endpoints_until_stale_after() {
        let now = Instant::now();
        let f = facts(now, true, Some(MIN / 2), Some(MIN));
        assert_eq!(treatment(f, true, now), Treatment::Import, "fail-static");
        assert_eq!(treatment(f, true, now + MIN / 2), Treatment::Expire);
        assert_eq!(stale_at(f), Some(f.down_since.unwrap() + MIN));
        // Without staleAfter: kept for ever.
        let f = facts(now, true, Some(MIN * 1000), None);
        assert_eq!(treatment(f, true, now), Treatment::Import);
        assert_eq!(stale_at(f), None);
    }

    #[test]
    fn a_source_not_yet_listed_is_held_unless_stale() {
        let now = Instant::now();
        assert_eq!(
            treatment(facts(now, false, None, Some(MIN)), true, now),
            Treatment::Hold
        );
        // Down since the bridge started: stale all the same once staleAfter has passed.
        let f = facts(now, false, Some(MIN * 2), Some(MIN));
        assert_eq!(treatment(f, true, now), Treatment::Expire);
    }

    #[test]
    fn an_unknown_source_is_held_until_the_sources_are_listed_then_removed() {
        let now = Instant::now();
        let gone = Facts {
            known: false,
            listed: false,
            down_since: None,
            stale_after: None,
        };
        assert_eq!(
            treatment(gone, false, now),
            Treatment::Hold,
            "never delete on uncertainty"
        );
        assert_eq!(
            treatment(gone, true, now),
            Treatment::Import,
            "gone: through the guard"
        );
    }
}
