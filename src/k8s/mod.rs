//! The Kubernetes shell: what the cluster holds (`view`) and how the bridge changes it (`writer`).

pub mod view;
pub mod writer;

pub use view::{ClusterView, ObjectEvent};
pub use writer::{Outcome, Writer};
