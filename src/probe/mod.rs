//! Active health checks of imported endpoints (off by default). The decisions are pure and
//! unit-tested:
//! - [`selector`]: which registrations are probed (`--probe`);
//! - [`state`]: what one endpoint's results add up to (thresholds);
//! - [`timing`]: when each endpoint is probed (phase and jitter);
//! - [`follow`]: with `--probe-watch`, when a Watch stream is opened and what its events mean;
//! - [`index`]: which Services each probed endpoint is in;
//! - [`seed`]: what a new leader starts from (the slices' conditions);
//! - [`link`]: the reconciler's side: plans out, verdicts in, the panic guard's Services.
//!
//! [`prober`] and [`check`] only carry them out. What a verdict means for an endpoint's
//! conditions is `projection::conditions`, and the panic guard is `import::panic_guard`.

pub mod check;
pub mod follow;
pub mod index;
pub mod link;
pub mod prober;
pub mod seed;
pub mod selector;
pub mod state;
pub mod timing;

pub use link::Link;
pub use prober::{Plan, Settings, Verdict};
