//! Sources: the etcd registries the bridge imports from. One is defined by the command-line flags
//! (`default`); each `EtcdSource` object adds another.
//! - [`crd`]: the `EtcdSource` custom resource;
//! - [`spec`]: an object (and its Secret) resolved into a [`spec::SourceConfig`], with every
//!   problem named by its field, and the overlaps between sources (pure).

pub mod crd;
pub mod spec;

pub use spec::{SourceConfig, SourceName};
