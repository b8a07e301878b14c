//! Reading the control plane's audit log (one JSON line per write request), to count who wrote
//! what: tests and benchmarks count the bridge's writes with it.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One write request, as logged at the ResponseComplete stage.
#[derive(Debug, Clone)]
pub struct AuditWrite {
    pub verb: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub user: String,
    pub user_agent: String,
    pub code: i64,
}

impl AuditWrite {
    /// A create, update, patch or delete of a Service or an EndpointSlice (not a Lease, not an
    /// Event).
    pub fn changes_an_object(&self) -> bool {
        matches!(self.resource.as_str(), "services" | "endpointslices")
            && matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete")
    }
}

/// Where the log ends now (a byte offset): read [`writes`] from it.
pub fn mark(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Every write in `namespace` logged after `from` (a [`mark`]). A line still being written is
/// left for the next read.
pub fn writes(path: &Path, from: u64, namespace: &str) -> Vec<AuditWrite> {
    let mut text = Vec::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.seek(SeekFrom::Start(from));
        let _ = f.read_to_end(&mut text);
    }
    let end = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    String::from_utf8_lossy(&text[..end])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| e["objectRef"]["namespace"] == namespace)
        .map(|e| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            AuditWrite {
                verb: s(&e["verb"]),
                resource: s(&e["objectRef"]["resource"]),
                namespace: s(&e["objectRef"]["namespace"]),
                name: s(&e["objectRef"]["name"]),
                user: s(&e["user"]["username"]),
                user_agent: s(&e["userAgent"]),
                code: e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            }
        })
        .collect()
}
