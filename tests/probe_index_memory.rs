//! The prober's index of which Services each probed endpoint is in, at the size of the health
//! benchmark (1,000 Services × 10 endpoints): what it costs in memory per endpoint. Measured as
//! the growth of this process's resident set while the index is built, so this binary holds this
//! one test (nothing else allocates meanwhile).
//!
//! `make bench`'s prober section found 10,000 probed endpoints costing the bridge 13–21 MiB, and
//! heaptrack put 8 MB of it in this index: a one-element `BTreeSet<Target>` per endpoint is a
//! whole B-tree leaf (eleven Target-sized slots), plus a clone of the Target's strings.

use etcd_bridge::probe::index::ProbeIndex;
use etcd_bridge::projection::EndpointId;
use etcd_bridge::target::Target;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

/// This process's resident set, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

#[test]
fn ten_thousand_probed_endpoints_cost_the_index_under_300_bytes_each() {
    const SERVICES: u32 = 1_000;
    const PER_SERVICE: u32 = 10;
    // Everything the index is given is built first, so that only the index's own memory counts.
    let targets: Vec<(Target, BTreeSet<EndpointId>)> = (0..SERVICES)
        .map(|s| {
            let target = Target {
                source: "default".into(),
                prefix: "/bench-probe/".into(),
                name: format!("pr-{s:05}"),
                version: None,
            };
            let endpoints = (0..PER_SERVICE)
                .map(|e| {
                    let n = 0x0ae8_4000 + s * PER_SERVICE + e;
                    (IpAddr::V4(Ipv4Addr::from(n)), 50051)
                })
                .collect();
            (target, endpoints)
        })
        .collect();
    let mut index = ProbeIndex::default();
    let before = rss();
    for (target, endpoints) in &targets {
        index.set(target, endpoints.clone());
    }
    let grown = rss().saturating_sub(before);
    let n = (SERVICES * PER_SERVICE) as usize;
    assert_eq!(index.endpoints().count(), n);
    let per_endpoint = grown / n;
    eprintln!(
        "the index grew the resident set by {grown} bytes: {per_endpoint} bytes per endpoint"
    );
    assert!(
        per_endpoint < 300,
        "{per_endpoint} bytes per probed endpoint ({grown} bytes for {n})"
    );
}
