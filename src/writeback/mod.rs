//! Write-back: `EtcdRegistration` objects become seed-format keys in etcd, under an etcd lease
//! the bridge owns.
//!
//! - `crd`: the custom resource; `policy`: who may publish what; `desired`: the keys an object asks
//!   for; `status`: what its status reports and which Events tell of it; `triggers`: which
//!   objects a change elsewhere concerns (all pure).
//! - `lease_pool`: which etcd lease each key goes on, at most N keys per lease (pure).
//! - `lease`: the etcd leases of this process, each kept alive on one stream; a lost one names
//!   the objects whose keys were on it.
//! - `store`: compare-and-put / compare-and-delete transactions that never touch a key another
//!   owner holds.
//! - `destination`: which registry an object is written to, the flags' etcd or the EtcdSource
//!   its `spec.source` names (pure); `targets`: those registries, connected, each with its own
//!   leases and freed-key watch.
//! - `freed`: the watch on keys leaving etcd under a write-back prefix.
//! - `keys`: an object's keys in etcd, on their leases; `publish`: the queue of writes to the
//!   objects (pure); `object`: those writes (finalizer, status, Events), a few at a time.
//! - `controller`: the kube-runtime controller that ties them together (leader only).

pub mod controller;
pub mod crd;
pub mod desired;
pub mod destination;
pub mod freed;
pub mod keys;
pub mod lease;
pub mod lease_pool;
pub mod object;
pub mod policy;
pub mod publish;
pub mod status;
pub mod store;
pub mod targets;
pub mod triggers;
