//! The Kubernetes shell: what the cluster holds (`view`) and how the bridge changes it (`writer`);
//! the CRDs generated from the types (`crd`).

pub mod crd;
pub mod view;
pub mod writer;

pub use view::{ClusterView, ObjectEvent};
pub use writer::{Outcome, Writer};
