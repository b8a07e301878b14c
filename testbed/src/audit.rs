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
    /// For a Lease written with its body: the holder it names (`None`: released, or not a
    /// Lease).
    pub lease_holder: Option<String>,
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
/// left for the next read. Panics when the log is now shorter than the mark: it was rotated, and
/// the writes since the mark cannot be counted (the test bed sets a rotation size no run reaches).
pub fn writes(path: &Path, from: u64, namespace: &str) -> Vec<AuditWrite> {
    let now = mark(path);
    assert!(
        now >= from,
        "the audit log {} was rotated or truncated after the mark (now {now} bytes, marked at {from}): the writes since cannot be counted",
        path.display()
    );
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
                lease_holder: e["requestObject"]["spec"]["holderIdentity"]
                    .as_str()
                    .map(String::from),
            }
        })
        .collect()
}

/// The Service an EndpointSlice of the bridge belongs to: its name less `-{8 hex}-{index}`.
pub fn service_of_slice(slice: &str) -> Option<&str> {
    let (rest, index) = slice.rsplit_once('-')?;
    let (service, hash) = rest.rsplit_once('-')?;
    let ok = !index.is_empty()
        && index.chars().all(|c| c.is_ascii_digit())
        && hash.len() == 8
        && hash.chars().all(|c| c.is_ascii_hexdigit());
    ok.then_some(service)
}

/// Sharded leadership, checked from the log: every successful write of an object in a bucket
/// (`bucket_of`) by a replica (a user named `{accounts}{identity}`) must come while the last
/// write of that bucket's Lease (`{lease_base}-{bucket}`) named that replica as its holder (a
/// take or a renewal; a release names none). Returns (writes checked, the writes made without
/// holding the bucket).
pub fn single_writer(
    writes: &[AuditWrite],
    lease_base: &str,
    accounts: &str,
    bucket_of: impl Fn(&AuditWrite) -> Option<u32>,
) -> (usize, Vec<String>) {
    let mut holder: std::collections::BTreeMap<u32, Option<String>> = Default::default();
    let mut checked = 0;
    let mut violations = Vec::new();
    let lease_prefix = format!("{lease_base}-");
    for w in writes.iter().filter(|w| (200..300).contains(&w.code)) {
        if w.resource == "leases" {
            let b = w.name.strip_prefix(&lease_prefix);
            if let Some(b) = b.and_then(|b| b.parse::<u32>().ok()) {
                holder.insert(b, w.lease_holder.clone());
            }
            continue;
        }
        let Some(bucket) = bucket_of(w) else { continue };
        let Some(replica) = w.user.strip_prefix(accounts) else {
            continue; // not a replica's write (the test's own, as admin)
        };
        checked += 1;
        let held_by = holder.get(&bucket).cloned().flatten();
        if held_by.as_deref() != Some(replica) {
            violations.push(format!(
                "{} {}/{} by {replica} while bucket {bucket} was held by {held_by:?}",
                w.verb, w.resource, w.name
            ));
        }
    }
    (checked, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = r#"{"stage":"ResponseComplete","verb":"patch","objectRef":{"namespace":"ns","resource":"services","name":"a"},"user":{"username":"u"},"userAgent":"x","responseStatus":{"code":200}}"#;

    #[test]
    fn slice_names_map_back_to_their_service() {
        assert_eq!(service_of_slice("svc-0-v1-0123abcd-12"), Some("svc-0-v1"));
        assert_eq!(service_of_slice("svc-0"), None);
        assert_eq!(service_of_slice("svc-0123abcd-"), None);
    }

    #[test]
    fn writes_after_the_mark_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, format!("{LINE}\n")).unwrap();
        let from = mark(&path);
        std::fs::write(&path, format!("{LINE}\n{LINE}\n")).unwrap();
        assert_eq!(writes(&path, from, "ns").len(), 1);
    }

    /// kube-apiserver rotates its audit log (100 MB by default): a mark into the old file would
    /// read the new one from the middle, or nothing, and count no writes at all.
    #[test]
    #[should_panic(expected = "rotated")]
    fn a_log_rotated_after_the_mark_is_an_error_not_zero_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, format!("{LINE}\n{LINE}\n")).unwrap();
        let from = mark(&path);
        std::fs::write(&path, format!("{LINE}\n")).unwrap();
        writes(&path, from, "ns");
    }
}
