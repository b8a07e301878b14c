//! The prober: probes every endpoint of the current [`Plan`] on its own schedule
//! ([`Timing`]), folds the results into each endpoint's [`EndpointState`], and sends each change
//! of verdict to the reconciler. It decides nothing of its own: what to probe comes from the
//! reconciler (only the leader's plan has endpoints), what a verdict means for the slices is
//! the planner's business, and with `--probe-watch`, whether a tick opens a Watch stream, sends
//! a Check or waits is [`follow`]'s.

use crate::metrics::{HealthStateLabels, Metrics, OutcomeLabels};
use crate::probe::check::{self, Mode};
use crate::probe::follow::{self, Event, Follow, Tick};
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
    /// Follow each endpoint with a `Health/Watch` stream (gRPC mode only).
    pub watch: bool,
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
    follow: Follow,
    /// The task that reads this endpoint's Watch stream; dropping the slot closes it.
    stream: Option<StreamTask>,
}

/// Aborts the stream's task (closing its connection) when the slot goes: the endpoint left the
/// plan, or a new term began.
struct StreamTask(tokio::task::AbortHandle);

impl Drop for StreamTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An event of an endpoint's stream: (endpoint, slot id, event, how long the open took).
type StreamEvent = (EndpointId, u64, Event, Option<Duration>);

struct Prober {
    settings: Settings,
    term: u64,
    slots: HashMap<EndpointId, Slot>,
    /// (due, endpoint, slot id); entries whose slot moved on are skipped when they come up.
    queue: BinaryHeap<Reverse<(Instant, EndpointId, u64)>>,
    next_id: u64,
    out: mpsc::UnboundedSender<Verdict>,
    events: mpsc::UnboundedSender<StreamEvent>,
    metrics: Arc<Metrics>,
}

impl Prober {
    /// One prober runs per projected namespace: each adds its own changes to the shared gauge,
    /// which shows their sum.
    fn count(&self, health: Health, delta: i64) {
        self.metrics
            .probed_endpoints
            .get_or_create(&HealthStateLabels {
                state: health.label(),
            })
            .inc_by(delta);
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
                    follow: Follow::Closed,
                    stream: None,
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

    /// Whether ticks may open Watch streams.
    fn watching(&self) -> bool {
        self.settings.watch && matches!(self.settings.mode, Mode::Grpc { .. })
    }

    /// Plans the tick after this one.
    fn reschedule(&mut self, e: EndpointId, id: u64, now: Instant) {
        let timing = self.settings.timing;
        let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) else {
            return;
        };
        slot.round += 1;
        slot.due = timing.next(&e, slot.round, slot.due).max(now);
        self.queue.push(Reverse((slot.due, e, id)));
    }

    /// What a due tick does (see [`follow::tick`]). Only a Check's result plans the next tick;
    /// otherwise it is planned here.
    fn tick(&mut self, e: EndpointId, id: u64, now: Instant) -> Tick {
        let watching = self.watching();
        let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) else {
            return Tick::Wait;
        };
        let (tick, follow) = follow::tick(watching, slot.follow);
        slot.follow = follow;
        if tick != Tick::Check {
            self.reschedule(e, id, now);
        }
        tick
    }

    /// Starts the task that reads `e`'s Watch stream and sends its events to the prober.
    fn open_stream(&mut self, e: EndpointId, id: u64) {
        let Mode::Grpc { service } = &self.settings.mode else {
            return;
        };
        let (service, timeout) = (service.clone(), self.settings.timeout);
        let interval = self.settings.timing.interval;
        let (events, gauge) = (
            self.events.clone(),
            self.metrics.probe_watch_streams.clone(),
        );
        let task = tokio::spawn(async move {
            let addr = SocketAddr::from(e);
            check::watch(&service, addr, timeout, interval, &gauge, |event, took| {
                // The prober gone means shutting down.
                let _ = events.send((e, id, event, took));
            })
            .await;
        });
        if let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) {
            slot.stream = Some(StreamTask(task.abort_handle()));
        }
    }

    /// Takes in one event of `e`'s stream. Returns whether to send a Check now.
    fn stream_event(
        &mut self,
        e: EndpointId,
        id: u64,
        event: Event,
        took: Option<Duration>,
    ) -> bool {
        let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) else {
            return false; // forgotten meanwhile (its task is aborted)
        };
        let step = follow::event(slot.follow, event);
        slot.follow = step.follow;
        if step.follow != Follow::Open {
            slot.stream = None;
        }
        if step.fell_back {
            tracing::debug!(endpoint = %SocketAddr::from(e), "the server does not implement Health/Watch: checking it periodically instead");
        }
        if let Some(outcome) = step.result {
            self.observe(e, id, outcome, took);
        }
        step.check_now
    }

    /// Takes in a Check's result; schedules the next tick if a tick sent it.
    fn result(
        &mut self,
        e: EndpointId,
        id: u64,
        outcome: Outcome,
        took: Duration,
        now: Instant,
        ticked: bool,
    ) {
        self.observe(e, id, outcome, Some(took));
        if ticked {
            self.reschedule(e, id, now);
        }
    }

    /// Takes in one result (a Check's or a streamed status); reports a changed verdict.
    fn observe(&mut self, e: EndpointId, id: u64, outcome: Outcome, took: Option<Duration>) {
        self.metrics
            .probes
            .get_or_create(&OutcomeLabels {
                outcome: outcome.label(),
            })
            .inc();
        if let Some(took) = took {
            self.metrics.probe_latency.observe(took.as_secs_f64());
        }
        let thresholds = self.settings.thresholds;
        let Some(slot) = self.slots.get_mut(&e).filter(|s| s.id == id) else {
            return; // forgotten meanwhile
        };
        let before = slot.state.health();
        let changed = slot.state.observe(outcome, thresholds);
        let after = slot.state.health();
        let not_serving = slot.state.not_serving();
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
    let (events, mut streamed) = mpsc::unbounded_channel();
    let mut p = Prober {
        settings,
        term: 0,
        slots: HashMap::new(),
        queue: BinaryHeap::new(),
        next_id: 0,
        out,
        events,
        metrics,
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
            Some((e, id, ticked, (outcome, took))) = running.next() => {
                p.result(e, id, outcome, took, Instant::now(), ticked);
            }
            // Never None: `p` holds a sender.
            Some((e, id, event, took)) = streamed.recv() => {
                if p.stream_event(e, id, event, took) {
                    running.push(checking(&p.settings, e, id, false));
                }
            }
            _ = sleep_until(next), if next.is_some() => {
                let now = Instant::now();
                while running.len() < MAX_IN_FLIGHT {
                    let Some((e, id)) = p.pop_due(now) else { break };
                    match p.tick(e, id, now) {
                        Tick::Check => running.push(checking(&p.settings, e, id, true)),
                        Tick::OpenStream => p.open_stream(e, id),
                        Tick::Wait => {}
                    }
                }
            }
        }
    }
}

/// One Check of `e`, tagged with its slot and whether a tick sent it (its result plans the
/// next tick) or a fallback from Watch did (the next tick is planned already).
fn checking(
    settings: &Settings,
    e: EndpointId,
    id: u64,
    ticked: bool,
) -> impl std::future::Future<Output = (EndpointId, u64, bool, (Outcome, Duration))> + use<> {
    let (mode, timeout) = (settings.mode.clone(), settings.timeout);
    async move {
        let result = check::check(&mode, SocketAddr::from(e), timeout).await;
        (e, id, ticked, result)
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
}
