//! The import flow, etcd → Kubernetes. The decisions are pure and unit-tested:
//! - [`plan`]: what one Service needs, from what the registry wants and what the cluster has;
//! - [`guard`]: which removals the mass-deletion guard holds;
//! - [`panic_guard`]: which failed health checks a Service shows, or none when too many fail;
//! - [`schedule`]: when to flush (coalescing, retries, readiness);
//! - [`registries`]: every source's snapshot, side by side;
//! - [`sources`]: how a flush treats each source's Services (hold, import, expire);
//! - [`route`]: which namespace's reconciler each source's updates go to.
//!
//! [`reconciler`] only carries them out; `preview` shows the same decisions.

pub mod guard;
pub mod panic_guard;
pub mod plan;
pub mod reconciler;
pub mod registries;
pub mod route;
pub mod schedule;
pub mod sources;

pub use reconciler::{Reconciler, Tuning, run};
