//! Write-back: `EtcdRegistration` objects become seed-format keys in etcd, under an etcd lease
//! the bridge owns.
//!
//! - `crd`: the custom resource; `policy`: who may publish what; `desired`: the keys an object asks
//!   for; `status`: what its status reports and which Events tell of it; `triggers`: which
//!   objects a change elsewhere concerns (all pure).
//! - `lease`: the etcd lease of this process, kept alive and replaced when lost.
//! - `store`: compare-and-put / compare-and-delete transactions that never touch a key another
//!   owner holds.
//! - `freed`: the watch on keys leaving etcd under the write-back prefix.
//! - `controller`: the kube-runtime controller that ties them together (leader only).

pub mod controller;
pub mod crd;
pub mod desired;
pub mod freed;
pub mod lease;
pub mod policy;
pub mod status;
pub mod store;
pub mod triggers;
