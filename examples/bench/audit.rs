//! The audit log: every write the apiserver served.

use etcd_bridge_testbed::audit::{self, AuditWrite};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

pub struct Audit(pub PathBuf);

impl Audit {
    pub fn mark(&self) -> u64 {
        audit::mark(&self.0)
    }

    /// The writes to Services and EndpointSlices in `namespace` since `from` (a [`mark`]) by
    /// anyone but kube-controller-manager (whose garbage collector deletes slices of deleted
    /// Services). The bench itself never writes there, so these are the bridge's.
    pub fn bridge_writes(&self, from: u64, namespace: &str) -> Vec<AuditWrite> {
        audit::writes(&self.0, from, namespace)
            .into_iter()
            .filter(|w| {
                w.changes_an_object() && !w.user_agent.starts_with("kube-controller-manager")
            })
            .collect()
    }
}

pub fn writes_json(w: &[AuditWrite]) -> Value {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for x in w {
        *by.entry(format!("{} {}", x.verb, x.resource)).or_default() += 1;
    }
    let users: BTreeSet<&str> = w.iter().map(|x| x.user.as_str()).collect();
    json!({
        "total": w.len(),
        "failed": w.iter().filter(|x| x.code >= 400).count(),
        "by_verb_resource": by,
        "users": users,
    })
}
