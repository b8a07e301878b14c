//! What one endpoint's probe results add up to: a verdict that changes only past a threshold of
//! consecutive results, so one lost packet does not flap an endpoint. Pure: results go in, a
//! changed verdict comes out.

/// The result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// `SERVING` (or, in TCP mode, a connection).
    Serving,
    /// The server answered `NOT_SERVING`: its own verdict, taken at once.
    NotServing,
    /// The server answered `SERVICE_UNKNOWN` or `UNKNOWN` for the health service asked about.
    ServiceUnknown,
    /// The connection was refused or failed.
    Unreachable,
    /// No answer within the timeout (a wedged or stopped server, a lost network).
    TimedOut,
    /// The call failed with a gRPC error (e.g. no health service: UNIMPLEMENTED).
    Error,
}

impl Outcome {
    /// The `outcome` label of `etcd_bridge_probes_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Serving => "serving",
            Outcome::NotServing => "not_serving",
            Outcome::ServiceUnknown => "service_unknown",
            Outcome::Unreachable => "unreachable",
            Outcome::TimedOut => "timed_out",
            Outcome::Error => "error",
        }
    }

    /// An answer from the server that it does not serve: not ready at once. Anything else that
    /// is not SERVING may be the network's fault, and counts towards the failure threshold.
    fn is_answer_not_serving(&self) -> bool {
        matches!(self, Outcome::NotServing | Outcome::ServiceUnknown)
    }
}

/// Consecutive results it takes to change a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Failed probes before a serving endpoint is marked not serving.
    pub failure: u32,
    /// SERVING answers before a failed endpoint is marked serving again.
    pub success: u32,
}

/// What is known of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// No verdict yet: ready, as before the prober was turned on.
    Unknown,
    Serving,
    NotServing,
}

impl Health {
    /// The `state` label of `etcd_bridge_probed_endpoints`.
    pub fn label(&self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Serving => "serving",
            Health::NotServing => "not_serving",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointState {
    health: Health,
    /// Consecutive results of the kind that would change the verdict.
    successes: u32,
    failures: u32,
}

impl EndpointState {
    /// A new endpoint: `not_serving` when the slices already show it so (a new leader, a
    /// restart), so it keeps that until its probes pass; otherwise no verdict yet.
    pub fn new(not_serving: bool) -> EndpointState {
        EndpointState {
            health: if not_serving {
                Health::NotServing
            } else {
                Health::Unknown
            },
            successes: 0,
            failures: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether the slices show this endpoint as not serving.
    pub fn not_serving(&self) -> bool {
        self.health == Health::NotServing
    }

    /// Takes in one result. Returns whether [`EndpointState::not_serving`] changed: only then is
    /// there anything to write.
    pub fn observe(&mut self, outcome: Outcome, t: Thresholds) -> bool {
        let before = self.not_serving();
        if outcome == Outcome::Serving {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            match self.health {
                Health::NotServing if self.successes < t.success.max(1) => {}
                _ => self.health = Health::Serving,
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if outcome.is_answer_not_serving() || self.failures >= t.failure.max(1) {
                self.health = Health::NotServing;
            }
        }
        before != self.not_serving()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Outcome::*;
    use proptest::prelude::*;

    const T: Thresholds = Thresholds {
        failure: 3,
        success: 2,
    };

    /// Feeds `outcomes` to `state`; returns the health after each and which changed the verdict.
    fn run(state: &mut EndpointState, outcomes: &[Outcome]) -> Vec<(Health, bool)> {
        outcomes
            .iter()
            .map(|o| {
                let changed = state.observe(*o, T);
                (state.health(), changed)
            })
            .collect()
    }

    #[test]
    fn before_the_first_result_an_endpoint_is_ready() {
        let s = EndpointState::new(false);
        assert_eq!(s.health(), Health::Unknown);
        assert!(!s.not_serving());
    }

    #[test]
    fn failures_count_up_to_the_threshold() {
        let mut s = EndpointState::new(false);
        let got = run(&mut s, &[Serving, TimedOut, Unreachable, Error]);
        assert_eq!(
            got,
            [
                (Health::Serving, false),
                (Health::Serving, false),
                (Health::Serving, false),
                (Health::NotServing, true),
            ]
        );
        // A success in between starts the count again.
        let mut s = EndpointState::new(false);
        let got = run(&mut s, &[TimedOut, TimedOut, Serving, TimedOut, TimedOut]);
        assert!(got.iter().all(|(h, c)| *h != Health::NotServing && !c));
    }

    #[test]
    fn not_serving_is_the_servers_own_answer_and_taken_at_once() {
        for answer in [NotServing, ServiceUnknown] {
            let mut s = EndpointState::new(false);
            assert_eq!(
                run(&mut s, &[Serving, answer]),
                [(Health::Serving, false), (Health::NotServing, true)]
            );
        }
    }

    #[test]
    fn recovery_needs_the_success_threshold() {
        let mut s = EndpointState::new(false);
        run(&mut s, &[NotServing]);
        let got = run(&mut s, &[Serving, NotServing, Serving, Serving, Serving]);
        assert_eq!(
            got,
            [
                (Health::NotServing, false),
                (Health::NotServing, false),
                (Health::NotServing, false),
                (Health::Serving, true),
                (Health::Serving, false),
            ]
        );
    }

    #[test]
    fn a_seeded_endpoint_keeps_what_the_slices_show_until_its_probes_pass() {
        let mut s = EndpointState::new(true);
        assert!(s.not_serving());
        assert_eq!(
            run(&mut s, &[TimedOut, Serving]),
            [(Health::NotServing, false), (Health::NotServing, false)]
        );
        assert_eq!(run(&mut s, &[Serving]), [(Health::Serving, true)]);
    }

    fn outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            Just(Serving),
            Just(NotServing),
            Just(ServiceUnknown),
            Just(Unreachable),
            Just(TimedOut),
            Just(Error),
        ]
    }

    proptest! {
        /// The verdict changes exactly when `observe` says so, and only after a run of results
        /// that agree with the new verdict, as long as the threshold.
        #[test]
        fn verdicts_change_only_past_their_threshold(
            seed in any::<bool>(),
            outcomes in proptest::collection::vec(outcome(), 0..60),
            failure in 1u32..5,
            success in 1u32..5,
        ) {
            let t = Thresholds { failure, success };
            let mut s = EndpointState::new(seed);
            let mut run: Vec<Outcome> = Vec::new();
            for o in outcomes {
                let before = s.not_serving();
                let changed = s.observe(o, t);
                prop_assert_eq!(changed, before != s.not_serving());
                // The streak of results like this one, this one included.
                if run.last().is_some_and(|l| (*l == Serving) != (o == Serving)) {
                    run.clear();
                }
                run.push(o);
                if changed && s.not_serving() {
                    let answered = o == NotServing || o == ServiceUnknown;
                    prop_assert!(answered || run.len() >= failure as usize);
                }
                if changed && !s.not_serving() {
                    prop_assert!(run.len() >= success as usize);
                }
            }
        }
    }
}
