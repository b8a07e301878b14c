//! The prober: probes every endpoint of the current [`Plan`] on its own schedule
//! ([`Timing`]), folds the results into each endpoint's [`EndpointState`], and sends each change
//! of verdict to the reconciler. It decides nothing of its own: what to probe comes from the
//! reconciler (only the leader's plan has endpoints), and what a verdict means for the slices is
//! the planner's business.

use crate::metrics::{HealthStateLabels, Metrics, OutcomeLabels};
use crate::probe::check::{self, Mode};
use crate::probe::state::{EndpointState, Health, Outcome, Thresholds};
use crate::probe::timing::Timing;
use crate::projection::EndpointId;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Probes in flight at most: each holds a socket, and a partition makes every probe wait for its
/// timeout. Past this, due probes wait for a free place.
const MAX_IN_FLIGHT: usize = 2048;

#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub mode: Mode,
    pub timeout: Duration,
    pub timing: Timing,
    pub thresholds: Thresholds,
}

/// What to probe, from the reconciler. A new `term` (this replica became leader, or stopped
/// being it) starts every endpoint over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub term: u64,
    pub endpoints: BTreeSet<EndpointId>,
    /// Of the endpoints new to the prober, those to start as not serving: what the slices show.
    pub not_serving: BTreeSet<EndpointId>,
}

/// A change of verdict of one endpoint, sent to the reconciler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub term: u64,
    pub endpoint: EndpointId,
    pub not_serving: bool,
}

struct Slot {
    /// Tells this slot's results from those of a slot the endpoint had before.
    id: u64,
    state: EndpointState,
    due: Instant,
    round: u64,
}

struct Prober {
    settings: Settings,
    term: u64,
    slots: HashMap<EndpointId, Slot>,
    /// (due, endpoint, slot id); entries whose slot moved on are skipped when they come up.
    queue: BinaryHeap<Reverse<(Instant, EndpointId, u64)>>,
    next_id: u64,
    out: mpsc::UnboundedSender<Verdict>,
    metrics: Arc<Metrics>,
    counts: HashMap<Health, i64>,
}

impl Prober {
    fn count(&mut self, health: Health, delta: i64) {
        *self.counts.entry(health).or_default() += delta;
        let n = self.counts[&health];
        self.metrics
            .probed_endpoints
            .get_or_create(&HealthStateLabels {
                state: health.label(),
            })
            .set(n);
    }

    /// Brings the slots to `plan`: new endpoints get a slot and a first probe within one
    /// interval; endpoints no longer planned are forgotten.
    fn apply(&mut self, plan: &Plan, now: Instant) {
        if plan.term != self.term {
            self.term = plan.term;
            for slot in std::mem::take(&mut self.slots).into_values() {
                self.count(slot.state.health(), -1);
            }
            self.queue.clear();
        }
        let gone: Vec<EndpointId> = self
            .slots
            .keys()
            .filter(|e| !plan.endpoints.contains(e))
            .copied()
            .collect();
        for e in gone {
            if let Some(slot) = self.slots.remove(&e) {
                self.count(slot.state.health(), -1);
            }
        }
        for e in &plan.endpoints {
            if self.slots.contains_key(e) {
                continue;
            }
            let state = EndpointState::new(plan.not_serving.contains(e));
            let due = self.settings.timing.first(e, now);
            self.next_id += 1;
            self.queue.push(Reverse((due, *e, self.next_id)));
            self.count(state.health(), 1);
            self.slots.insert(
                *e,
                Slot {
                    id: self.next_id,
                    state,
                    due,
                    round: 0,
                },
            );
        }
    }

    /// The next due probe, if its slot still waits for it.
    fn pop_due(&mut self, now: Instant) -> Option<(EndpointId, u64)> {
        while let Some(Reverse((due, e, id))) = self.queue.peek().copied() {
            if due > now {
                return None;
            }
            self.queue.pop();
            if self
                .slots
                .get(&e)
                .is_some_and(|s| s.id == id && s.due == due)
            {
                return Some((e, id));
            }
        }
        None
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((due, _, _))| *due)
    }

    /// Takes in one result; schedules the next probe; reports a changed verdict.
    fn result(&mut self, e: EndpointId, id: u64, outcome: Outcome, took: Duration, now: Instant) {
        self.metrics
            .probes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        self.metrics.probe_latency.observe(took.as_secs_f64());
        let (thresholds, timing) = (self.settings.thresholds, self.settings.timing);
        let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) else {
            return; // forgotten meanwhile
        };
        let before = slot.state.health();
        let changed = slot.state.observe(outcome, thresholds);
        let after = slot.state.health();
        let not_serving = slot.state.not_serving();
        slot.round += 1;
        slot.due = timing.next(&e, slot.round, slot.due).max(now);
        self.queue.push(Reverse((slot.due, e, id)));
        if before != after {
            self.count(before, -1);
            self.count(after, 1);
        }
        if changed {
            tracing::info!(endpoint = %SocketAddr::from(e), outcome = outcome.label(), not_serving, "health verdict changed");
            // The reconciler gone means shutting down: nothing left to tell.
            let _ = self.out.send(Verdict {
                term: self.term,
                endpoint: e,
                not_serving,
            });
        }
    }
}

/// Runs until `shutdown` (or until the reconciler drops its end of `plans`).
pub async fn run(
    settings: Settings,
    mut plans: watch::Receiver<Arc<Plan>>,
    out: mpsc::UnboundedSender<Verdict>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut p = Prober {
        settings,
        term: 0,
        slots: HashMap::new(),
        queue: BinaryHeap::new(),
        next_id: 0,
        out,
        metrics,
        counts: HashMap::new(),
    };
    let mut running = FuturesUnordered::new();
    let initial = plans.borrow_and_update().clone();
    p.apply(&initial, Instant::now());
    loop {
        let next = p.next_due().filter(|_| running.len() < MAX_IN_FLIGHT);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = plans.changed() => {
                if changed.is_err() {
                    return;
                }
                let plan = plans.borrow_and_update().clone();
                p.apply(&plan, Instant::now());
            }
            Some((e, id, (outcome, took))) = running.next() => {
                p.result(e, id, outcome, took, Instant::now());
            }
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while running.len() < MAX_IN_FLIGHT {
                    let Some((e, id)) = p.pop_due(now) else { break };
                    let (mode, timeout) = (p.settings.mode.clone(), p.settings.timeout);
                    running.push(async move {
                        (e, id, check::check(&mode, SocketAddr::from(e), timeout).await)
                    });
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
