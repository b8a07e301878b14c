//! Sources: the etcd registries the bridge imports from. One is defined by the command-line flags
//! (`default`); each `EtcdSource` object adds another.
//! - [`crd`]: the `EtcdSource` custom resource;
//! - [`spec`]: an object (and its Secret) resolved into a [`spec::SourceConfig`], with every
//!   problem named by its field, and the overlaps between sources (pure);
//! - [`status`]: an object's status and Events, from what the import reports (pure);
//! - [`file`]: an EtcdSource and its Secret read from YAML, for `preview --source-file`;
//! - [`publish`]: writes that status (the leader only), and its Events;
//! - [`supervisor`]: the shell that starts and stops each source's watchers as objects change.

pub mod crd;
pub mod file;
pub mod publish;
pub mod spec;
pub mod status;
pub mod supervisor;

pub use spec::{SourceConfig, SourceName};
