//! Telling when etcd went back in time: replaced by another cluster, started on a fresh data
//! directory, or restored from an older snapshot. A watch resumed from the old revision on such an
//! etcd waits for a revision it may never reach, and misses every change in between; only a new
//! list brings the cache back to what etcd holds.

use std::fmt;

/// Who answered a response, and at which revision (an etcd `ResponseHeader`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub cluster_id: u64,
    pub member_id: u64,
    pub revision: i64,
}

impl From<&etcd_client::ResponseHeader> for Header {
    fn from(h: &etcd_client::ResponseHeader) -> Self {
        Header {
            cluster_id: h.cluster_id(),
            member_id: h.member_id(),
            revision: h.revision(),
        }
    }
}

/// How far a response header can be trusted about the revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A linearizable read: its revision is at least every revision committed before it, so one
    /// below a revision already seen means that history is gone.
    Linearizable,
    /// A watch response: a member that lags the leader may report an older revision, so only a
    /// change of cluster counts.
    Watch,
}

/// Why the cache must be listed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relist {
    /// Another cluster answers at the same endpoints.
    ClusterChanged { seen: u64, now: u64 },
    /// etcd's revision is below one the bridge has seen: started empty or restored.
    RevisionWentBack { seen: i64, now: i64 },
    /// etcd refused a read at a revision it has not reached (the same, noticed by an error).
    FutureRevision,
    /// At the cache's revision, etcd holds other keys than the cache: a different history that
    /// has already moved past the cache's revision.
    HistoryDiffers { revision: i64, what: Difference },
}

/// What differs between the cache and etcd at the cache's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Difference {
    Count {
        cache: i64,
        etcd: i64,
    },
    LastChange {
        cache: Option<i64>,
        etcd: Option<i64>,
    },
}

impl fmt::Display for Relist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Relist::ClusterChanged { seen, now } => write!(
                f,
                "etcd's cluster ID changed from {seen:x} to {now:x}: another cluster answers"
            ),
            Relist::RevisionWentBack { seen, now } => write!(
                f,
                "etcd's revision went back from {seen} to {now}: replaced or restored from an older snapshot"
            ),
            Relist::FutureRevision => write!(
                f,
                "etcd has not reached the revision the bridge is at: replaced or restored from an older snapshot"
            ),
            Relist::HistoryDiffers { revision, what } => {
                write!(f, "at revision {revision} ")?;
                match what {
                    Difference::Count { cache, etcd } => write!(
                        f,
                        "etcd holds {etcd} keys under the prefix but the cache {cache}"
                    )?,
                    Difference::LastChange { cache, etcd } => write!(
                        f,
                        "the key changed last is {} in etcd but {} in the cache",
                        state(*etcd),
                        state(*cache)
                    )?,
                }
                write!(
                    f,
                    ": another history (replaced or restored from an older snapshot)"
                )
            }
        }
    }
}

fn state(mod_revision: Option<i64>) -> String {
    match mod_revision {
        Some(r) => format!("put at revision {r}"),
        None => "absent".into(),
    }
}

/// What to do about one response header, given the last one seen (`None` before any).
///
/// A changed member ID alone is not a reason: in a cluster of several members the client moves
/// between them, which share one history; a single-member etcd replaced by another one changes
/// the cluster ID too (it is derived from the member IDs), and a rewound one shows a lower
/// revision.
pub fn judge(seen: Option<&Header>, now: &Header, source: Source) -> Option<Relist> {
    let seen = seen?;
    if seen.cluster_id != 0 && now.cluster_id != 0 && seen.cluster_id != now.cluster_id {
        return Some(Relist::ClusterChanged {
            seen: seen.cluster_id,
            now: now.cluster_id,
        });
    }
    if source == Source::Linearizable && now.revision < seen.revision {
        return Some(Relist::RevisionWentBack {
            seen: seen.revision,
            now: now.revision,
        });
    }
    None
}

/// The header to remember after `now` was accepted: the newest identity, and the highest
/// revision seen (a lagging member's lower one must not lower the bar).
pub fn remember(seen: Option<&Header>, now: &Header) -> Header {
    Header {
        revision: seen.map_or(now.revision, |s| s.revision.max(now.revision)),
        ..*now
    }
}

/// Raises the remembered revision to one seen in an event (events carry no identity).
pub fn seen_revision(seen: &mut Option<Header>, revision: i64) {
    if let Some(s) = seen {
        s.revision = s.revision.max(revision);
    }
}

/// What the cache knows about its prefix at its revision: enough to check, with two small reads
/// at that revision, that etcd still has the history the cache was built from. The revision
/// alone cannot tell when a restored etcd has since moved past it (the cache's revision only
/// moves with its own prefix's events, so it lags etcd's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint {
    /// Keys under the prefix.
    pub count: i64,
    /// The key changed last, with its mod revision if it was put, `None` if it was deleted.
    pub last: Option<(Vec<u8>, Option<i64>)>,
}

impl Fingerprint {
    /// After a list: the listed (key, mod revision) pairs.
    pub fn listed<'a>(kvs: impl IntoIterator<Item = (&'a [u8], i64)>) -> Fingerprint {
        let mut fp = Fingerprint::default();
        for (key, rev) in kvs {
            fp.add_listed(key, rev);
        }
        fp
    }

    /// One listed key, at `mod_revision`.
    pub fn add_listed(&mut self, key: &[u8], mod_revision: i64) {
        self.count += 1;
        if self
            .last
            .as_ref()
            .is_none_or(|(_, r)| r.unwrap_or(0) < mod_revision)
        {
            self.last = Some((key.to_vec(), Some(mod_revision)));
        }
    }

    /// A put at `mod_revision`; `created` when the key did not exist (its version is 1).
    pub fn put(&mut self, key: &[u8], mod_revision: i64, created: bool) {
        if created {
            self.count += 1;
        }
        self.last = Some((key.to_vec(), Some(mod_revision)));
    }

    /// A delete (etcd reports deletes of existing keys only).
    pub fn delete(&mut self, key: &[u8]) {
        self.count -= 1;
        self.last = Some((key.to_vec(), None));
    }

    /// The key whose state at the cache's revision is checked, if any.
    pub fn last_key(&self) -> Option<&[u8]> {
        self.last.as_ref().map(|(k, _)| k.as_slice())
    }
}

/// What etcd says at the cache's revision: the header of the read, the number of keys under the
/// prefix, and the mod revision of the fingerprint's last key (`None` if absent; not read if
/// the fingerprint has no last key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRevision {
    pub header: Header,
    pub count: i64,
    pub last: Option<i64>,
}

/// Before a watch resumes from `revision`: whether etcd, read at that revision, still has the
/// history the cache was built from.
pub fn judge_resume(
    seen: Option<&Header>,
    revision: i64,
    cache: &Fingerprint,
    etcd: &AtRevision,
) -> Option<Relist> {
    if let Some(why) = judge(seen, &etcd.header, Source::Linearizable) {
        return Some(why);
    }
    if etcd.count != cache.count {
        return Some(Relist::HistoryDiffers {
            revision,
            what: Difference::Count {
                cache: cache.count,
                etcd: etcd.count,
            },
        });
    }
    match &cache.last {
        Some((_, want)) if *want != etcd.last => Some(Relist::HistoryDiffers {
            revision,
            what: Difference::LastChange {
                cache: *want,
                etcd: etcd.last,
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn h(cluster_id: u64, member_id: u64, revision: i64) -> Header {
        Header {
            cluster_id,
            member_id,
            revision,
        }
    }

    #[test]
    fn nothing_seen_yet_is_never_a_rewind() {
        assert_eq!(judge(None, &h(1, 1, 5), Source::Linearizable), None);
    }

    #[test]
    fn the_same_etcd_moving_on() {
        let seen = h(7, 1, 100);
        assert_eq!(
            judge(Some(&seen), &h(7, 1, 100), Source::Linearizable),
            None
        );
        assert_eq!(
            judge(Some(&seen), &h(7, 1, 150), Source::Linearizable),
            None
        );
    }

    #[test]
    fn a_fresh_data_dir_or_an_older_snapshot_goes_back() {
        // Same flags, so the same cluster and member IDs: only the revision tells.
        assert_eq!(
            judge(Some(&h(7, 1, 105)), &h(7, 1, 4), Source::Linearizable),
            Some(Relist::RevisionWentBack { seen: 105, now: 4 })
        );
    }

    #[test]
    fn another_cluster_at_the_same_endpoint() {
        for source in [Source::Linearizable, Source::Watch] {
            assert_eq!(
                judge(Some(&h(7, 1, 10)), &h(8, 2, 500), source),
                Some(Relist::ClusterChanged { seen: 7, now: 8 })
            );
        }
    }

    #[test]
    fn another_member_of_the_same_cluster_is_no_reason() {
        assert_eq!(
            judge(Some(&h(7, 1, 10)), &h(7, 2, 10), Source::Linearizable),
            None
        );
    }

    #[test]
    fn a_lagging_member_on_a_watch_is_no_reason() {
        assert_eq!(judge(Some(&h(7, 1, 10)), &h(7, 2, 9), Source::Watch), None);
        // And it does not lower what was seen.
        assert_eq!(remember(Some(&h(7, 1, 10)), &h(7, 2, 9)), h(7, 2, 10));
    }

    #[test]
    fn an_unknown_cluster_id_is_not_a_change() {
        assert_eq!(judge(Some(&h(0, 0, 10)), &h(7, 1, 10), Source::Watch), None);
        assert_eq!(judge(Some(&h(7, 1, 10)), &h(0, 0, 10), Source::Watch), None);
    }

    #[test]
    fn events_raise_the_bar() {
        let mut seen = Some(h(7, 1, 10));
        seen_revision(&mut seen, 42);
        seen_revision(&mut seen, 12);
        assert_eq!(seen, Some(h(7, 1, 42)));
        assert_eq!(
            judge(seen.as_ref(), &h(7, 1, 41), Source::Linearizable),
            Some(Relist::RevisionWentBack { seen: 42, now: 41 })
        );
        let mut none = None;
        seen_revision(&mut none, 5);
        assert_eq!(none, None);
    }

    fn at(revision: i64, count: i64, last: Option<i64>) -> AtRevision {
        AtRevision {
            header: h(7, 1, revision),
            count,
            last,
        }
    }

    #[test]
    fn a_fingerprint_follows_the_events() {
        let mut fp = Fingerprint::listed([(&b"/a"[..], 3), (&b"/b"[..], 5), (&b"/c"[..], 4)]);
        assert_eq!(fp.count, 3);
        assert_eq!(fp.last, Some((b"/b".to_vec(), Some(5))));
        fp.put(b"/a", 6, false);
        assert_eq!((fp.count, fp.last_key()), (3, Some(&b"/a"[..])));
        fp.put(b"/d", 7, true);
        fp.delete(b"/b");
        assert_eq!(fp.count, 3);
        assert_eq!(fp.last, Some((b"/b".to_vec(), None)));
        assert_eq!(Fingerprint::listed([]), Fingerprint::default());
    }

    #[test]
    fn the_same_history_resumes() {
        let fp = Fingerprint {
            count: 2,
            last: Some((b"/k".to_vec(), Some(40))),
        };
        let seen = h(7, 1, 40);
        assert_eq!(
            judge_resume(Some(&seen), 40, &fp, &at(90, 2, Some(40))),
            None
        );
        let deleted = Fingerprint {
            count: 1,
            last: Some((b"/k".to_vec(), None)),
        };
        assert_eq!(
            judge_resume(Some(&seen), 40, &deleted, &at(40, 1, None)),
            None
        );
        // Nothing listed and nothing changed yet: the count alone.
        let empty = Fingerprint::default();
        assert_eq!(
            judge_resume(Some(&seen), 40, &empty, &at(41, 0, None)),
            None
        );
    }

    #[test]
    fn a_restored_etcd_past_the_cache_revision_is_told_by_its_keys() {
        // The cache saw /late put at 4; the restored etcd (at 3) took a new put, now at 4.
        let fp = Fingerprint {
            count: 3,
            last: Some((b"/late".to_vec(), Some(4))),
        };
        let seen = h(7, 1, 4);
        assert_eq!(
            judge_resume(Some(&seen), 4, &fp, &at(4, 3, None)),
            Some(Relist::HistoryDiffers {
                revision: 4,
                what: Difference::LastChange {
                    cache: Some(4),
                    etcd: None
                }
            })
        );
        assert_eq!(
            judge_resume(Some(&seen), 4, &fp, &at(4, 2, Some(4))),
            Some(Relist::HistoryDiffers {
                revision: 4,
                what: Difference::Count { cache: 3, etcd: 2 }
            })
        );
        // And one below the revision seen is caught by the header.
        assert_eq!(
            judge_resume(Some(&seen), 4, &fp, &at(3, 3, Some(4))),
            Some(Relist::RevisionWentBack { seen: 4, now: 3 })
        );
    }

    proptest! {
        /// Within one cluster, a linearizable read relists exactly when its revision is below
        /// the highest one seen so far, whatever order the headers came in.
        #[test]
        fn relists_exactly_when_the_revision_falls_below_the_highest_seen(
            revs in proptest::collection::vec((0i64..1_000, 1u64..4), 1..30),
            probe in 0i64..1_000,
        ) {
            let mut seen: Option<Header> = None;
            for (rev, member) in &revs {
                seen = Some(remember(seen.as_ref(), &h(9, *member, *rev)));
            }
            let highest = revs.iter().map(|(r, _)| *r).max().unwrap();
            let verdict = judge(seen.as_ref(), &h(9, 1, probe), Source::Linearizable);
            prop_assert_eq!(verdict.is_some(), probe < highest);
            prop_assert_eq!(judge(seen.as_ref(), &h(9, 1, probe), Source::Watch), None);
        }
    }
}
