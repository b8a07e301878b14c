//! etcd-bridge: projects an etcd gRPC service registry (the seed's `Register`/`Resolver` format)
//! into Kubernetes Services and EndpointSlices.
//!
//! The pure core (`registry`, `target`, `naming`, `projection`, `slicing`, `diff`, and the
//! planner in `import`) has no I/O; the shells (`etcd`, `k8s`, `leader`, `http`, the import
//! reconciler) move data between it and the outside world.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod diff;
pub mod error;
pub mod etcd;
pub mod format;
pub mod glob;
pub mod http;
pub mod import;
pub mod k8s;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod preview;
pub mod probe;
pub mod projection;
pub mod slicing;
pub mod snapshot;
pub mod source;
pub mod target;
pub mod writeback;

pub use error::{Error, Result};
