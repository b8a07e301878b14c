//! The queue of writes to the EtcdRegistration objects (finalizer, status, Events) that passes
//! hand over once their keys are in etcd. A pass never waits for the apiserver: 10,000 objects
//! reach etcd in seconds, and their objects are written a few at a time after. Pure.
//!
//! One entry per object: what a later pass asks for merges into what is still queued (the
//! newest status wins, the finalizer and Events add up), and an object being written waits
//! until that write is done, so its writes never overtake one another.

use crate::writeback::crd::EtcdRegistrationStatus;
use crate::writeback::status::Note;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::Hash;

/// What a pass asks to write to its object.
#[derive(Debug, Clone, PartialEq)]
pub struct Publication<T> {
    /// The object as the pass read it (the finalizer patch tests its finalizers).
    pub object: T,
    /// Add our finalizer first.
    pub finalizer: bool,
    /// The status to write, with the Events that tell of it.
    pub status: Option<(EtcdRegistrationStatus, Vec<Note>)>,
    /// The keys the pass left in etcd: deleted again if the finalizer cannot be added.
    pub keys: BTreeSet<String>,
}

impl<T> Publication<T> {
    /// `newer` asked for after `self`, before `self` was written: both in one write.
    pub fn merge(self, newer: Publication<T>) -> Publication<T> {
        let status = match (self.status, newer.status) {
            (Some((_, mut notes)), Some((status, more))) => {
                for n in more {
                    if !notes.contains(&n) {
                        notes.push(n);
                    }
                }
                Some((status, notes))
            }
            (old, new) => new.or(old),
        };
        let mut keys = self.keys;
        keys.extend(newer.keys);
        Publication {
            object: newer.object,
            finalizer: self.finalizer || newer.finalizer,
            status,
            keys,
        }
    }
}

/// First come, first served, one entry per key, never two writes of one key at once.
#[derive(Debug)]
pub struct Queue<K, T> {
    order: VecDeque<K>,
    queued: HashMap<K, Publication<T>>,
    /// Being written; what comes meanwhile waits here until `done`.
    busy: HashSet<K>,
    waiting: HashMap<K, Publication<T>>,
}

impl<K, T> Default for Queue<K, T> {
    fn default() -> Self {
        Queue {
            order: VecDeque::new(),
            queued: HashMap::new(),
            busy: HashSet::new(),
            waiting: HashMap::new(),
        }
    }
}

impl<K: Clone + Eq + Hash, T> Queue<K, T> {
    pub fn push(&mut self, key: K, p: Publication<T>) {
        let slot = if self.busy.contains(&key) {
            &mut self.waiting
        } else {
            &mut self.queued
        };
        match slot.remove(&key) {
            Some(old) => {
                slot.insert(key, old.merge(p));
            }
            None => {
                let fresh = !self.busy.contains(&key);
                slot.insert(key.clone(), p);
                if fresh {
                    self.order.push_back(key);
                }
            }
        }
    }

    /// The next write to do; its key is busy until `done`.
    pub fn take(&mut self) -> Option<(K, Publication<T>)> {
        while let Some(key) = self.order.pop_front() {
            // A forgotten key leaves its place in the order behind.
            if let Some(p) = self.queued.remove(&key) {
                self.busy.insert(key.clone());
                return Some((key, p));
            }
        }
        None
    }

    /// The write of `key` is over: what waited for it goes to the back of the queue.
    pub fn done(&mut self, key: &K) {
        self.busy.remove(key);
        if let Some(p) = self.waiting.remove(key) {
            self.push(key.clone(), p);
        }
    }

    /// The object is gone: nothing more to write for it.
    pub fn forget(&mut self, key: &K) {
        self.queued.remove(key);
        self.waiting.remove(key);
    }

    /// Writes queued or waiting.
    pub fn len(&self) -> usize {
        self.queued.len() + self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn note(reason: &str) -> Note {
        Note {
            warning: false,
            reason: reason.into(),
            message: String::new(),
        }
    }

    fn status(generation: i64) -> EtcdRegistrationStatus {
        EtcdRegistrationStatus {
            observed_generation: Some(generation),
            ..Default::default()
        }
    }

    fn publication(
        v: u32,
        finalizer: bool,
        generation: Option<i64>,
        notes: &[&str],
        keys: &[&str],
    ) -> Publication<u32> {
        Publication {
            object: v,
            finalizer,
            status: generation.map(|g| (status(g), notes.iter().map(|r| note(r)).collect())),
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn a_later_pass_merges_into_what_is_queued() {
        let old = publication(1, true, Some(1), &["Registered"], &["/a"]);
        let new = publication(2, false, Some(2), &["Registered", "ForeignKey"], &["/b"]);
        let m = old.merge(new);
        assert_eq!(m.object, 2, "the newest snapshot");
        assert!(m.finalizer, "a finalizer asked for stays asked for");
        let (s, notes) = m.status.unwrap();
        assert_eq!(s.observed_generation, Some(2), "the newest status");
        assert_eq!(
            notes,
            [note("Registered"), note("ForeignKey")],
            "each Event once"
        );
        assert_eq!(m.keys.len(), 2);
        // A pass with no status to write keeps the queued one.
        let kept =
            publication(1, false, Some(1), &[], &[]).merge(publication(2, true, None, &[], &[]));
        assert_eq!(
            kept.status.map(|(s, _)| s.observed_generation),
            Some(Some(1))
        );
    }

    #[test]
    fn one_write_per_object_at_a_time_first_come_first_served() {
        let mut q: Queue<&str, u32> = Queue::default();
        q.push("a", publication(1, true, Some(1), &[], &[]));
        q.push("b", publication(1, true, Some(1), &[], &[]));
        q.push("a", publication(2, false, Some(2), &[], &[]));
        assert_eq!(q.len(), 2, "a's two passes are one write");
        let (k, p) = q.take().unwrap();
        assert_eq!((k, p.object, p.finalizer), ("a", 2, true));
        // While a is written, a new pass for a waits; b goes first.
        q.push("a", publication(3, false, Some(3), &[], &[]));
        assert_eq!(q.take().map(|(k, _)| k), Some("b"));
        assert!(q.take().is_none(), "a is still being written");
        q.done(&"a");
        assert_eq!(q.take().map(|(k, p)| (k, p.object)), Some(("a", 3)));
        q.done(&"a");
        q.done(&"b");
        assert!(q.take().is_none() && q.is_empty());
    }

    #[test]
    fn a_forgotten_object_is_not_written() {
        let mut q: Queue<&str, u32> = Queue::default();
        q.push("a", publication(1, true, None, &[], &[]));
        q.push("b", publication(1, true, None, &[], &[]));
        q.forget(&"a");
        assert_eq!(q.take().map(|(k, _)| k), Some("b"));
        assert!(q.take().is_none());
        // It may come back later, as a new object of the same name.
        q.push("a", publication(2, true, None, &[], &[]));
        assert_eq!(q.take().map(|(k, p)| (k, p.object)), Some(("a", 2)));
    }

    proptest! {
        /// Whatever the interleaving: a key is never taken twice before it is done, every push
        /// is written (merged into at most one write per take), and the latest push of a key is
        /// in the last write taken for it.
        #[test]
        fn every_pass_is_written_once_in_order(ops in proptest::collection::vec((0u8..4, 0u8..3), 1..60)) {
            let mut q: Queue<u8, u32> = Queue::default();
            let mut busy: HashSet<u8> = HashSet::new();
            let mut latest: HashMap<u8, u32> = HashMap::new();
            let mut written: HashMap<u8, u32> = HashMap::new();
            for (n, (key, what)) in ops.into_iter().enumerate() {
                match what {
                    0 => {
                        q.push(key, publication(n as u32, false, Some(n as i64), &[], &[]));
                        latest.insert(key, n as u32);
                    }
                    1 => {
                        if let Some((k, p)) = q.take() {
                            prop_assert!(busy.insert(k), "taken twice at once");
                            prop_assert!(written.get(&k).is_none_or(|w| *w < p.object), "an older write after a newer one");
                            written.insert(k, p.object);
                        }
                    }
                    _ => {
                        if busy.remove(&key) {
                            q.done(&key);
                        }
                    }
                }
            }
            // Drain: everything pushed ends up written, the latest last.
            loop {
                for k in busy.drain() {
                    q.done(&k);
                }
                let Some((k, p)) = q.take() else { break };
                busy.insert(k);
                written.insert(k, p.object);
            }
            prop_assert!(q.is_empty());
            prop_assert_eq!(written, latest);
        }
    }
}
