//! The reconciler's side of the prober: which targets are probed, the verdicts received this
//! term, the plan sent to the prober, and which Services the panic guard holds. No I/O: the
//! plan goes out on a watch channel, verdicts come in as values.

use crate::import::panic_guard::{self, Panic};
use crate::probe::index::{ProbeIndex, endpoints_of};
use crate::probe::prober::{Plan, Verdict};
use crate::probe::selector::Selector;
use crate::projection::{EndpointId, Groups};
use crate::target::Target;
use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// A Service entering or leaving the panic guard's hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanicChange {
    Began(Panic),
    Ended,
}

pub struct Link {
    selector: Selector,
    /// The panic guard's share.
    panic_share: f64,
    index: ProbeIndex,
    /// Endpoints the prober found not serving, this term.
    not_serving: HashSet<EndpointId>,
    term: u64,
    leader: bool,
    /// This term's verdicts started from what the slices show.
    seeded: bool,
    plans: watch::Sender<Arc<Plan>>,
    /// Services the panic guard holds (synced concurrently, hence the lock).
    in_panic: Mutex<BTreeSet<String>>,
    /// Where the prober's verdicts arrive, until the import loop takes it.
    verdicts: Option<mpsc::UnboundedReceiver<Verdict>>,
}

/// The prober's ends of a [`Link`]: plans in, verdicts out.
pub struct ProberEnds {
    pub plans: watch::Receiver<Arc<Plan>>,
    pub verdicts: mpsc::UnboundedSender<Verdict>,
}

impl Link {
    /// The link, and the prober's ends of it.
    pub fn new(selector: Selector, panic_share: f64) -> (Link, ProberEnds) {
        let (plans, plans_rx) = watch::channel(Arc::new(Plan::default()));
        let (verdicts_tx, verdicts) = mpsc::unbounded_channel();
        let link = Link {
            selector,
            panic_share,
            index: ProbeIndex::default(),
            not_serving: HashSet::new(),
            term: 0,
            leader: false,
            seeded: false,
            plans,
            in_panic: Mutex::new(BTreeSet::new()),
            verdicts: Some(verdicts),
        };
        let ends = ProberEnds {
            plans: plans_rx,
            verdicts: verdicts_tx,
        };
        (link, ends)
    }

    /// The verdicts' receiver, once, for the import loop.
    pub fn take_verdicts(&mut self) -> Option<mpsc::UnboundedReceiver<Verdict>> {
        self.verdicts.take()
    }

    /// A change of leadership starts a new term: a standby probes nothing, and a new leader
    /// starts from what the slices show ([`Link::seed`]).
    pub fn set_leader(&mut self, leader: bool) {
        self.leader = leader;
        self.term += 1;
        self.seeded = false;
        self.not_serving.clear();
        self.index.clear();
        self.index.take_changed();
        self.in_panic.lock().expect("panic lock").clear();
        self.send();
    }

    /// `target` now has `groups` (empty: it is gone).
    pub fn update(&mut self, target: &Target, groups: &Groups) {
        let endpoints = match self.selector.matches(target) {
            true => endpoints_of(groups),
            false => BTreeSet::new(),
        };
        self.index.set(target, endpoints);
    }

    /// Brings the probed endpoints up to the `changed` targets (each with its groups, empty when
    /// it is gone) and sends the prober its plan. A term not yet seeded first takes `shown`: the
    /// endpoints the slices show as not serving.
    pub fn refresh<'a>(
        &mut self,
        changed: impl IntoIterator<Item = (&'a Target, Groups)>,
        shown: impl FnOnce() -> Vec<EndpointId>,
    ) {
        for (target, groups) in changed {
            self.update(target, &groups);
        }
        match self.needs_seed() {
            true => self.seed(shown()),
            false => self.publish(),
        }
    }

    /// Whether this term still has to start from the slices.
    pub fn needs_seed(&self) -> bool {
        self.leader && !self.seeded
    }

    /// Starts this term from the endpoints the slices show not serving (those still probed).
    pub fn seed(&mut self, not_serving: impl IntoIterator<Item = EndpointId>) {
        let probed: Vec<EndpointId> = not_serving
            .into_iter()
            .filter(|e| self.index.contains(e))
            .collect();
        self.not_serving.extend(probed);
        self.seeded = true;
        self.index.take_changed();
        self.send();
    }

    /// Sends the prober the probed endpoints, if they changed.
    pub fn publish(&mut self) {
        if self.index.take_changed() {
            self.send();
        }
    }

    fn send(&mut self) {
        let index = &self.index;
        self.not_serving.retain(|e| index.contains(e));
        let plan = match self.leader && self.seeded {
            true => Plan {
                term: self.term,
                endpoints: self.index.endpoints().copied().collect(),
                not_serving: self.not_serving.iter().copied().collect(),
            },
            false => Plan {
                term: self.term,
                ..Plan::default()
            },
        };
        // No prober listening (it stopped, or tests): nothing to tell.
        let _ = self.plans.send(Arc::new(plan));
    }

    /// Takes in a verdict; returns the targets to check again (none for a stale one).
    pub fn on_verdict(&mut self, v: Verdict) -> Vec<Target> {
        if v.term != self.term || !self.index.contains(&v.endpoint) {
            return Vec::new();
        }
        let changed = match v.not_serving {
            true => self.not_serving.insert(v.endpoint),
            false => self.not_serving.remove(&v.endpoint),
        };
        match changed {
            true => self.index.targets_of(&v.endpoint).cloned().collect(),
            false => Vec::new(),
        }
    }

    /// What `target`'s Service shows of its endpoints' health (nothing if it is not probed).
    pub fn verdict(&self, target: &Target, groups: &Groups) -> panic_guard::Verdict {
        if !self.selector.matches(target) {
            return panic_guard::Verdict::default();
        }
        panic_guard::apply(groups, |e| self.not_serving.contains(e), self.panic_share)
    }

    /// Records whether the guard holds `service` now; returns the change, if any, and how many
    /// Services it holds.
    pub fn note_panic(&self, service: &str, panic: Option<Panic>) -> (Option<PanicChange>, usize) {
        let mut held = self.in_panic.lock().expect("panic lock");
        let change = match panic {
            Some(p) if held.insert(service.to_owned()) => Some(PanicChange::Began(p)),
            None if held.remove(service) => Some(PanicChange::Ended),
            _ => None,
        };
        (change, held.len())
    }
}

/// The next verdict from `rx`; never, without a prober.
pub async fn next_verdict(rx: &mut Option<mpsc::UnboundedReceiver<Verdict>>) -> Option<Verdict> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::{AddressType, GroupKey};
    use std::net::IpAddr;

    fn target(name: &str) -> Target {
        Target {
            source: "default".into(),
            prefix: "/".into(),
            name: name.into(),
            version: None,
        }
    }

    fn ep(n: u8) -> EndpointId {
        (IpAddr::from([10, 0, 0, n]), 80)
    }

    fn groups(list: &[u8]) -> Groups {
        let key = GroupKey {
            address_type: AddressType::IPv4,
            port: 80,
            weight: 1,
        };
        Groups::from([(key, list.iter().map(|n| ep(*n).0).collect())])
    }

    fn link() -> (Link, watch::Receiver<Arc<Plan>>) {
        let sel = Selector::parse(&["probed*".to_string()], &["/"]).unwrap();
        let (link, ends) = Link::new(sel, 0.5);
        (link, ends.plans)
    }

    #[test]
    fn a_new_leader_starts_from_the_slices_and_probes_only_selected_targets() {
        let (mut l, rx) = link();
        l.set_leader(true);
        l.update(&target("probed-a"), &groups(&[1, 2, 3]));
        l.update(&target("other"), &groups(&[4]));
        assert!(l.needs_seed());
        // The slices show 2 (probed) and 4 (not probed) as not serving.
        l.seed([ep(2), ep(4)]);
        let plan = rx.borrow().clone();
        assert_eq!(plan.endpoints, [ep(1), ep(2), ep(3)].into());
        assert_eq!(plan.not_serving, [ep(2)].into());
        let v = l.verdict(&target("probed-a"), &groups(&[1, 2, 3]));
        assert_eq!(v.unhealthy, [ep(2)].into());
        // An endpoint that is not probed is never shown not serving.
        assert!(
            l.verdict(&target("other"), &groups(&[4]))
                .unhealthy
                .is_empty()
        );
    }

    #[test]
    fn verdicts_mark_their_services_and_stale_ones_are_ignored() {
        let (mut l, rx) = link();
        l.set_leader(true);
        l.update(&target("probed-a"), &groups(&[1, 2, 3]));
        l.update(&target("probed-b"), &groups(&[3]));
        l.seed([]);
        let term = rx.borrow().term;
        let v = |n, not_serving| Verdict {
            term,
            endpoint: ep(n),
            not_serving,
        };
        let mut dirty = l.on_verdict(v(3, true));
        dirty.sort();
        assert_eq!(dirty, [target("probed-a"), target("probed-b")]);
        assert!(
            l.on_verdict(v(3, true)).is_empty(),
            "no change, nothing to do"
        );
        assert!(l.on_verdict(v(9, true)).is_empty(), "not probed");
        // A verdict from before a change of leadership is stale.
        l.set_leader(false);
        l.set_leader(true);
        l.update(&target("probed-a"), &groups(&[1, 2, 3]));
        l.seed([]);
        assert!(l.on_verdict(v(1, true)).is_empty());
        assert!(
            l.verdict(&target("probed-a"), &groups(&[1, 2, 3]))
                .unhealthy
                .is_empty()
        );
    }

    #[test]
    fn a_standby_probes_nothing() {
        let (mut l, rx) = link();
        l.set_leader(true);
        l.update(&target("probed-a"), &groups(&[1]));
        l.seed([]);
        assert_eq!(rx.borrow().endpoints.len(), 1);
        l.set_leader(false);
        assert!(rx.borrow().endpoints.is_empty());
        assert!(!l.needs_seed());
    }

    #[test]
    fn the_plan_is_sent_only_when_the_probed_endpoints_change() {
        let (mut l, mut rx) = link();
        l.set_leader(true);
        l.update(&target("probed-a"), &groups(&[1]));
        l.seed([]);
        rx.borrow_and_update();
        l.update(&target("probed-a"), &groups(&[1]));
        l.publish();
        assert!(!rx.has_changed().unwrap());
        l.update(&target("probed-a"), &groups(&[1, 2]));
        l.publish();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().endpoints.len(), 2);
    }

    #[test]
    fn panic_changes_are_reported_once() {
        let (l, _rx) = link();
        let p = Panic {
            failing: 3,
            total: 4,
        };
        assert_eq!(l.note_panic("a", Some(p)), (Some(PanicChange::Began(p)), 1));
        assert_eq!(l.note_panic("a", Some(p)), (None, 1));
        assert_eq!(l.note_panic("a", None), (Some(PanicChange::Ended), 0));
        assert_eq!(l.note_panic("a", None), (None, 0));
    }
}
