//! Which etcd lease each written-back key goes on. etcd before 3.4.27 (and later versions for
//! clients with auth on and no root role) spends time linear in the keys already on a lease for
//! every Put with that lease (etcd #15993), so no lease holds more than a fixed number of keys.
//! Pure: the shell (`leases`) grants the leases this asks for and keeps them alive.
//!
//! - A key stays on its lease while it stays (re-putting it elsewhere would be a write for
//!   nothing, and its watchers would see it move).
//! - New keys fill the leases in the order they were granted, so freed slots are reused before
//!   a new lease is asked for; one object's new keys land on one lease when one has room.
//! - A lost lease gives back the owners of the keys that were on it: only they are put again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The leases of this process and the keys placed on them, each with the owners that want it
/// (two objects may ask for the same key; etcd's ownership check lets one of them write it).
#[derive(Debug, Clone)]
pub struct LeasePool<O> {
    per_lease: usize,
    /// In the order granted: the order in which they fill.
    order: Vec<i64>,
    leases: HashMap<i64, BTreeSet<String>>,
    keys: HashMap<String, Slot<O>>,
    /// The keys each owner wants, so that a new want releases the keys it no longer names.
    wants: BTreeMap<O, BTreeSet<String>>,
}

#[derive(Debug, Clone)]
struct Slot<O> {
    lease: i64,
    owners: BTreeSet<O>,
}

/// `place` needs this many more leases before it can place every key; nothing was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NeedLeases(pub usize);

/// Where an owner's keys go, and which keys it wanted before and no longer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Each key asked for, in order, with its lease.
    pub leases: Vec<(String, i64)>,
    /// Keys this owner wanted and no longer names: to delete from etcd, if it holds them.
    pub dropped: Vec<String>,
}

impl<O: Ord + Clone> LeasePool<O> {
    /// A pool of at most `per_lease` keys per lease (at least 1).
    pub fn new(per_lease: usize) -> Self {
        LeasePool {
            per_lease: per_lease.max(1),
            order: Vec::new(),
            leases: HashMap::new(),
            keys: HashMap::new(),
            wants: BTreeMap::new(),
        }
    }

    /// A lease granted at the pool's request; it fills after the others.
    pub fn add_lease(&mut self, lease: i64) {
        if self.leases.insert(lease, BTreeSet::new()).is_none() {
            self.order.push(lease);
        }
    }

    /// `owner` now wants exactly `keys`: the lease for each of them, and the owner's other keys
    /// are released (and named). A key already placed keeps its lease; the others go on the first leases (in
    /// grant order) with room, all on one lease when one has room for all of them. When the
    /// room is short, nothing changes and the answer says how many leases to grant first.
    pub fn place(&mut self, owner: &O, keys: &[String]) -> Result<Placed, NeedLeases> {
        let fresh: BTreeSet<&String> = keys
            .iter()
            .filter(|k| !self.keys.contains_key(*k))
            .collect();
        // (lease, free slots), in grant order.
        let mut room: Vec<(i64, usize)> = self
            .order
            .iter()
            .map(|l| (*l, self.per_lease - self.leases[l].len()))
            .collect();
        let free: usize = room.iter().map(|(_, r)| r).sum();
        if fresh.len() > free {
            return Err(NeedLeases((fresh.len() - free).div_ceil(self.per_lease)));
        }
        // One lease for all of them if one has room, else fill in order.
        if let Some(one) = room.iter().find(|(_, r)| *r >= fresh.len()).copied() {
            room = vec![one];
        }
        room.retain(|(_, r)| *r > 0);
        room.reverse();
        for key in fresh {
            let (lease, left) = room.last_mut().expect("enough room, checked above");
            let lease = *lease;
            *left -= 1;
            if *left == 0 {
                room.pop();
            }
            self.leases
                .get_mut(&lease)
                .expect("a known lease")
                .insert(key.clone());
            self.keys.insert(
                key.clone(),
                Slot {
                    lease,
                    owners: BTreeSet::new(),
                },
            );
        }
        let wanted: BTreeSet<String> = keys.iter().cloned().collect();
        let before = self.wants.remove(owner).unwrap_or_default();
        let dropped: Vec<String> = before.difference(&wanted).cloned().collect();
        for gone in &dropped {
            self.unown(owner, gone);
        }
        let placed = keys
            .iter()
            .map(|k| {
                let slot = self.keys.get_mut(k).expect("placed above");
                slot.owners.insert(owner.clone());
                (k.clone(), slot.lease)
            })
            .collect();
        if !wanted.is_empty() {
            self.wants.insert(owner.clone(), wanted);
        }
        Ok(Placed {
            leases: placed,
            dropped,
        })
    }

    /// `owner` no longer wants `key` (deleted, or another registrant holds it): once no owner
    /// wants it, its slot is free.
    pub fn release(&mut self, owner: &O, key: &str) {
        if let Some(w) = self.wants.get_mut(owner) {
            w.remove(key);
            if w.is_empty() {
                self.wants.remove(owner);
            }
        }
        self.unown(owner, key);
    }

    /// `owner` is gone (its object deleted): every key it wanted is released.
    pub fn forget(&mut self, owner: &O) {
        for key in self.wants.remove(owner).unwrap_or_default() {
            self.unown(owner, &key);
        }
    }

    /// Forgets the keys of every owner that `keep` refuses (their bucket went to another
    /// replica, which moves them to its own leases): their slots are free again.
    pub fn forget_unless(&mut self, keep: impl Fn(&O) -> bool) {
        let gone: Vec<O> = self.wants.keys().filter(|o| !keep(o)).cloned().collect();
        for owner in &gone {
            self.forget(owner);
        }
    }

    fn unown(&mut self, owner: &O, key: &str) {
        let Some(slot) = self.keys.get_mut(key) else {
            return;
        };
        slot.owners.remove(owner);
        if slot.owners.is_empty() {
            let lease = slot.lease;
            self.keys.remove(key);
            if let Some(keys) = self.leases.get_mut(&lease) {
                keys.remove(key);
            }
        }
    }

    /// The lease is gone (expired, or etcd lost it) and with it its keys: forgets both and
    /// returns the owners whose keys were on it, each once.
    pub fn lose(&mut self, lease: i64) -> Vec<O> {
        let Some(keys) = self.leases.remove(&lease) else {
            return Vec::new();
        };
        self.order.retain(|l| *l != lease);
        let mut owners = BTreeSet::new();
        for k in keys {
            if let Some(slot) = self.keys.remove(&k) {
                for o in &slot.owners {
                    if let Some(w) = self.wants.get_mut(o) {
                        w.remove(&k);
                        if w.is_empty() {
                            self.wants.remove(o);
                        }
                    }
                }
                owners.extend(slot.owners);
            }
        }
        owners.into_iter().collect()
    }

    /// The lease `key` is on, if it is placed.
    pub fn lease_of(&self, key: &str) -> Option<i64> {
        self.keys.get(key).map(|s| s.lease)
    }

    /// Each lease, in grant order, with how many keys it holds.
    pub fn usage(&self) -> Vec<(i64, usize)> {
        self.order
            .iter()
            .map(|l| (*l, self.leases[l].len()))
            .collect()
    }

    /// The keys `owner` wants, with their leases.
    pub fn keys_of(&self, owner: &O) -> BTreeMap<String, i64> {
        self.wants
            .get(owner)
            .into_iter()
            .flatten()
            .map(|k| (k.clone(), self.keys[k].lease))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("/{prefix}/{i}")).collect()
    }

    /// Places `keys` for `owner`, granting leases 1, 2, 3... as asked; returns the leases granted.
    fn place_granting(
        pool: &mut LeasePool<String>,
        next: &mut i64,
        owner: &str,
        keys: &[String],
    ) -> Vec<(String, i64)> {
        loop {
            match pool.place(&owner.to_string(), keys) {
                Ok(placed) => return placed.leases,
                Err(NeedLeases(n)) => {
                    assert!(n > 0);
                    for _ in 0..n {
                        *next += 1;
                        pool.add_lease(*next);
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_pool_asks_for_as_many_leases_as_the_keys_need() {
        let mut pool: LeasePool<String> = LeasePool::new(1000);
        assert_eq!(pool.place(&"a".into(), &keys("a", 1)), Err(NeedLeases(1)));
        assert_eq!(
            pool.place(&"a".into(), &keys("a", 2500)),
            Err(NeedLeases(3))
        );
        assert!(pool.usage().is_empty(), "nothing placed while short");
        assert_eq!(
            pool.place(&"a".into(), &[]),
            Ok(Placed {
                leases: vec![],
                dropped: vec![]
            })
        );
    }

    #[test]
    fn leases_fill_to_the_limit_then_a_new_one_is_asked_for() {
        let mut pool = LeasePool::new(3);
        let mut next = 0;
        for i in 0..7 {
            place_granting(&mut pool, &mut next, &format!("o{i}"), &[format!("/k/{i}")]);
        }
        assert_eq!(pool.usage(), [(1, 3), (2, 3), (3, 1)]);
    }

    #[test]
    fn a_freed_slot_is_reused_before_a_new_lease() {
        let mut pool = LeasePool::new(2);
        let mut next = 0;
        place_granting(&mut pool, &mut next, "a", &keys("a", 2));
        place_granting(&mut pool, &mut next, "b", &keys("b", 2));
        assert_eq!(pool.usage(), [(1, 2), (2, 2)]);
        pool.release(&"a".to_string(), "/a/0");
        let placed = pool
            .place(&"c".into(), &keys("c", 1))
            .expect("room on lease 1");
        assert_eq!(placed.leases, [("/c/0".to_string(), 1)]);
        assert_eq!(pool.usage(), [(1, 2), (2, 2)]);
    }

    #[test]
    fn a_key_stays_on_its_lease_while_it_stays() {
        let mut pool = LeasePool::new(2);
        let mut next = 0;
        place_granting(&mut pool, &mut next, "a", &keys("a", 2));
        // Lease 1 is full; the object's third key goes elsewhere, the first two stay.
        let placed = place_granting(&mut pool, &mut next, "a", &keys("a", 3));
        assert_eq!(
            placed,
            [
                ("/a/0".to_string(), 1),
                ("/a/1".to_string(), 1),
                ("/a/2".to_string(), 2)
            ]
        );
        // A freed slot on lease 1 does not pull the third key back.
        pool.release(&"a".to_string(), "/a/0");
        assert_eq!(
            pool.place(&"a".into(), &keys("a", 3)).unwrap().leases[2].1,
            2
        );
    }

    #[test]
    fn an_objects_new_keys_go_together_when_one_lease_has_room() {
        let mut pool = LeasePool::new(4);
        let mut next = 0;
        place_granting(&mut pool, &mut next, "x", &keys("x", 3)); // lease 1: 1 free
        place_granting(&mut pool, &mut next, "y", &keys("y", 4)); // lease 2: full
        pool.release(&"y".to_string(), "/y/0");
        pool.release(&"y".to_string(), "/y/1"); // lease 2: 2 free
        let placed = pool.place(&"z".into(), &keys("z", 2)).unwrap().leases;
        assert!(placed.iter().all(|(_, l)| *l == 2), "{placed:?}");
    }

    #[test]
    fn a_key_two_objects_want_is_freed_when_neither_wants_it() {
        let mut pool = LeasePool::new(10);
        let mut next = 0;
        let shared = vec!["/svc/10.0.0.1:80".to_string()];
        place_granting(&mut pool, &mut next, "a", &shared);
        place_granting(&mut pool, &mut next, "b", &shared);
        assert_eq!(pool.usage(), [(1, 1)]);
        pool.release(&"a".to_string(), &shared[0]);
        assert_eq!(pool.lease_of(&shared[0]), Some(1), "b still wants it");
        pool.release(&"b".to_string(), &shared[0]);
        assert_eq!(pool.lease_of(&shared[0]), None);
        assert_eq!(pool.usage(), [(1, 0)]);
    }

    #[test]
    fn a_lost_lease_names_only_the_owners_of_its_keys() {
        let mut pool = LeasePool::new(2);
        let mut next = 0;
        place_granting(&mut pool, &mut next, "a", &keys("a", 2)); // lease 1
        place_granting(&mut pool, &mut next, "b", &keys("b", 1)); // lease 2
        place_granting(&mut pool, &mut next, "c", &keys("c", 1)); // lease 2
        assert_eq!(pool.lose(2), ["b".to_string(), "c".to_string()]);
        assert_eq!(pool.usage(), [(1, 2)]);
        assert_eq!(pool.lease_of("/b/0"), None);
        assert_eq!(pool.lease_of("/a/0"), Some(1));
        assert!(pool.lose(2).is_empty(), "losing it twice changes nothing");
        // Put again, b and c go on a new lease.
        let placed = place_granting(&mut pool, &mut next, "b", &keys("b", 1));
        assert_eq!(placed[0].1, 3);
        assert_eq!(
            pool.keys_of(&"a".to_string())
                .into_iter()
                .collect::<Vec<_>>(),
            [("/a/0".to_string(), 1), ("/a/1".to_string(), 1)]
        );
    }

    #[test]
    fn forgetting_the_owners_of_a_lost_bucket_frees_only_their_slots() {
        let mut pool = LeasePool::new(4);
        let mut next = 0;
        place_granting(&mut pool, &mut next, "a", &keys("a", 2));
        place_granting(&mut pool, &mut next, "b", &keys("b", 2));
        pool.forget_unless(|o| o == "a");
        assert_eq!(pool.usage(), [(1, 2)], "b's two slots are free");
        assert_eq!(pool.keys_of(&"a".to_string()).len(), 2);
        assert!(pool.keys_of(&"b".to_string()).is_empty());
    }

    #[test]
    fn a_new_want_releases_the_keys_it_no_longer_names() {
        let mut pool = LeasePool::new(3);
        let mut next = 0;
        let a = "a".to_string();
        place_granting(&mut pool, &mut next, "a", &keys("a", 3));
        let again = pool.place(&a, &keys("a", 1)).unwrap();
        assert_eq!(again.dropped, ["/a/1", "/a/2"], "named, to delete");
        assert_eq!(pool.usage(), [(1, 1)]);
        assert_eq!(pool.keys_of(&a).len(), 1);
        pool.forget(&a);
        assert_eq!(pool.usage(), [(1, 0)]);
        place_granting(&mut pool, &mut next, "b", &keys("b", 2));
        pool.forget_unless(|_| false);
        assert_eq!(pool.usage(), [(1, 0)], "the leases stay, empty");
        assert_eq!(pool.lease_of("/b/0"), None);
    }

    /// One step of a random history.
    #[derive(Debug, Clone)]
    enum Op {
        /// Owner `o` now wants keys `k..k+n` (of a small key space, so owners share keys).
        Want(u8, u8, u8),
        Release(u8, u8),
        Forget(u8),
        Lose(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0u8..6, 0u8..40, 0u8..12).prop_map(|(o, k, n)| Op::Want(o, k, n)),
            2 => (0u8..6, 0u8..52).prop_map(|(o, k)| Op::Release(o, k)),
            1 => (0u8..6).prop_map(Op::Forget),
            1 => (1u8..8).prop_map(Op::Lose),
        ]
    }

    proptest! {
        /// Whatever happens: no lease holds more than its limit; a key that stays keeps its
        /// lease; a new lease is asked for only when the existing ones lack the room; a lost
        /// lease names exactly the owners of its keys; a key is placed exactly while someone
        /// wants it.
        #[test]
        fn the_pool_keeps_its_rules(per_lease in 1usize..6, ops in proptest::collection::vec(op(), 1..80)) {
            let mut pool: LeasePool<u8> = LeasePool::new(per_lease);
            let mut next = 0i64;
            // The model: what each owner wants, and where each wanted key is.
            let mut wants: BTreeMap<u8, BTreeSet<String>> = BTreeMap::new();
            let mut at: BTreeMap<String, i64> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Want(o, k, n) => {
                        let want: Vec<String> = (k..k + n).map(|i| format!("/k/{i}")).collect();
                        let fresh = want.iter().filter(|k| !at.contains_key(*k)).count();
                        let free: usize = pool.usage().iter().map(|(_, c)| per_lease - c).sum();
                        let placed = match pool.place(&o, &want) {
                            Ok(p) => { prop_assert!(fresh <= free); p }
                            Err(NeedLeases(m)) => {
                                prop_assert!(fresh > free, "asked for leases with room left");
                                prop_assert_eq!(m, (fresh - free).div_ceil(per_lease));
                                for _ in 0..m { next += 1; pool.add_lease(next); }
                                pool.place(&o, &want).expect("room after granting what it asked")
                            }
                        };
                        let before = wants.get(&o).cloned().unwrap_or_default();
                        let now: BTreeSet<String> = want.iter().cloned().collect();
                        let dropped: BTreeSet<String> = placed.dropped.iter().cloned().collect();
                        prop_assert_eq!(dropped, before.difference(&now).cloned().collect::<BTreeSet<_>>());
                        let placed = placed.leases;
                        prop_assert_eq!(placed.len(), want.len());
                        for (key, lease) in placed {
                            if let Some(before) = at.get(&key) {
                                prop_assert_eq!(*before, lease, "a placed key moved");
                            }
                            at.insert(key, lease);
                        }
                        wants.insert(o, want.into_iter().collect());
                    }
                    Op::Release(o, k) => {
                        let key = format!("/k/{k}");
                        pool.release(&o, &key);
                        wants.entry(o).or_default().remove(&key);
                    }
                    Op::Forget(o) => {
                        pool.forget(&o);
                        wants.remove(&o);
                    }
                    Op::Lose(l) => {
                        let l = i64::from(l);
                        let gone: BTreeSet<String> = at.iter().filter(|(_, x)| **x == l).map(|(k, _)| k.clone()).collect();
                        let want: BTreeSet<u8> = wants.iter().filter(|(_, ks)| !ks.is_disjoint(&gone)).map(|(o, _)| *o).collect();
                        let got: BTreeSet<u8> = pool.lose(l).into_iter().collect();
                        prop_assert_eq!(got, want);
                        for ks in wants.values_mut() {
                            ks.retain(|k| !gone.contains(k));
                        }
                    }
                }
                let wanted: BTreeSet<&String> = wants.values().flatten().collect();
                at.retain(|k, _| wanted.contains(k));
                for (lease, count) in pool.usage() {
                    prop_assert!(count <= per_lease, "lease {} holds {} > {}", lease, count, per_lease);
                    prop_assert_eq!(count, at.values().filter(|x| **x == lease).count());
                }
                for (key, lease) in &at {
                    prop_assert_eq!(pool.lease_of(key), Some(*lease));
                }
                for (o, ks) in &wants {
                    let placed: BTreeSet<String> = pool.keys_of(o).into_keys().collect();
                    prop_assert_eq!(&placed, ks);
                }
            }
        }
    }
}
