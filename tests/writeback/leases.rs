//! Write-back on many etcd leases (issue 13, part 4): at most N keys per lease, because etcd
//! before 3.4.27 spends time linear in the keys on a lease for every Put with it (etcd #15993);
//! one long-lived keepalive stream per lease; a lost lease puts again only its own keys.

use super::{WAIT, bridge, registration};
use crate::common::*;
use etcd_bridge_testbed::process::http_get;
use etcd_client::{Client as Etcd, EventType, GetOptions, WatchOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// Each lease with the keys under `prefix` on it.
async fn leases_under(etcd: &mut Etcd, prefix: &str) -> BTreeMap<i64, BTreeSet<String>> {
    let r = etcd
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .expect("etcd get");
    let mut by: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    for kv in r.kvs() {
        by.entry(kv.lease())
            .or_default()
            .insert(String::from_utf8_lossy(kv.key()).into_owned());
    }
    by
}

/// `n` distinct addresses `10.{net}.x.y:80`, as a YAML flow list.
fn addresses(net: u8, n: usize) -> String {
    let a: Vec<String> = (0..n)
        .map(|i| format!("\"10.{net}.{}.{}:80\"", i / 256, i % 256))
        .collect();
    format!("[{}]", a.join(", "))
}

/// `.status.leaseId` of the EtcdRegistration `name`.
fn lease_id(scope: &Scope, name: &str) -> String {
    scope.kubectl(&["get", "etcdreg", name, "-o", "jsonpath={.status.leaseId}"])
}

/// The leases `keys` are on, as the status writes them.
fn as_status(leases: &BTreeMap<i64, BTreeSet<String>>, keys: impl Fn(&str) -> bool) -> String {
    leases
        .iter()
        .filter(|(_, ks)| ks.iter().any(|k| keys(k)))
        .map(|(l, _)| format!("{l:x}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[tokio::test]
async fn no_lease_holds_more_than_1000_keys() {
    let scope = Scope::new("wb-1000");
    let _bridge = bridge(&scope, &[]).await;
    // 1,200 keys: more than one lease may hold.
    for (name, net) in [("a", 21), ("b", 22)] {
        scope.apply(&registration(
            name,
            &format!("{{service: {name}, addresses: {}}}", addresses(net, 600)),
        ));
    }
    let mut etcd = scope.etcd().await;
    let leases = eventually("1,200 keys in etcd", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move {
            let l = leases_under(&mut etcd, &p).await;
            (l.values().map(BTreeSet::len).sum::<usize>() == 1200).then_some(l)
        }
    })
    .await;
    let sizes: Vec<usize> = leases.values().map(BTreeSet::len).collect();
    eprintln!("keys per lease: {sizes:?}");
    assert!(!leases.contains_key(&0), "every key is on a lease");
    assert!(
        sizes.iter().all(|n| *n <= 1000),
        "a lease holds more than 1000 keys: {sizes:?}"
    );
    assert_eq!(leases.len(), 2, "filled, not spread: {sizes:?}");
    // Each object's status names the leases its keys are on.
    for name in ["a", "b"] {
        let prefix = format!("{}{name}/", scope.prefix);
        let want = as_status(&leases, |k| k.starts_with(&prefix));
        eventually(&format!("{name}'s leaseId {want}"), WAIT, || async {
            (lease_id(&scope, name) == want).then_some(())
        })
        .await;
    }
    // The keys stay on their leases: nothing moves while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leases_under(&mut etcd, &scope.prefix).await, leases);
}

#[tokio::test]
async fn each_lease_is_kept_alive_on_one_long_lived_stream() {
    // A private etcd: its gRPC counters then count this bridge's streams only.
    let dir = etcd_bridge_testbed::scratch_dir("wb-streams");
    let registry =
        etcd_bridge_testbed::Etcd::start(&dir, "registry", &[]).expect("start a private etcd");
    let endpoint = registry.endpoint();
    let scope = Scope::with_registry("wb-streams", &endpoint);
    // A 3 s TTL: renewed every second.
    let _bridge = bridge(
        &scope,
        &[
            "--writeback-keys-per-lease=2",
            "--writeback-lease-ttl=3s",
            "--lease-duration=2s",
        ],
    )
    .await;
    for (name, net) in [("a", 31), ("b", 32), ("c", 33)] {
        scope.apply(&registration(
            name,
            &format!("{{service: {name}, addresses: {}}}", addresses(net, 2)),
        ));
    }
    let etcd = scope.etcd().await;
    let leases = eventually("6 keys in etcd", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move {
            let l = leases_under(&mut etcd, &p).await;
            (l.values().map(BTreeSet::len).sum::<usize>() == 6).then_some(l)
        }
    })
    .await;
    assert_eq!(leases.len(), 3, "2 keys per lease: {leases:?}");
    let port: u16 = endpoint
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the etcd port");
    let metric = |text: &str, series: &str| {
        etcd_bridge_testbed::metrics::value(text, series)
            .unwrap_or_else(|| panic!("etcd's /metrics has no {series}"))
    };
    let streams = r#"grpc_server_started_total{grpc_method="LeaseKeepAlive",grpc_service="etcdserverpb.Lease",grpc_type="bidi_stream"}"#;
    let renewed = "etcd_debugging_lease_renewed_total";
    let before = http_get(port, "/metrics").expect("etcd's /metrics").1;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = http_get(port, "/metrics").expect("etcd's /metrics").1;
    let renewals = metric(&after, renewed) - metric(&before, renewed);
    eprintln!(
        "in 5 s: {renewals} renewals; keepalive streams opened in all: {}",
        metric(&after, streams)
    );
    assert!(
        renewals >= 3.0 * 3.0,
        "each of the 3 leases renewed every second: {renewals} renewals in 5 s"
    );
    assert_eq!(
        metric(&after, streams),
        3.0,
        "one keepalive stream per lease, kept open across renewals"
    );
}

#[tokio::test]
async fn a_lost_lease_puts_again_only_the_keys_that_were_on_it() {
    let scope = Scope::new("wb-lost");
    let bridge = bridge(&scope, &["--writeback-keys-per-lease=2"]).await;
    let mut etcd = scope.etcd().await;
    // a fills the first lease, b takes a second one.
    let mut leases = BTreeMap::new();
    for (name, net, total) in [("a", 41, 2), ("b", 42, 4)] {
        scope.apply(&registration(
            name,
            &format!("{{service: {name}, addresses: {}}}", addresses(net, 2)),
        ));
        leases = eventually(&format!("{name}'s keys in etcd"), WAIT, || {
            let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
            async move {
                let l = leases_under(&mut etcd, &p).await;
                (l.values().map(BTreeSet::len).sum::<usize>() == total).then_some(l)
            }
        })
        .await;
    }
    let lease_of = |name: &str| {
        let prefix = format!("{}{name}/", scope.prefix);
        let on: BTreeSet<i64> = leases
            .iter()
            .filter(|(_, ks)| ks.iter().any(|k| k.starts_with(&prefix)))
            .map(|(l, _)| *l)
            .collect();
        assert_eq!(on.len(), 1, "{name}'s keys on one lease: {leases:?}");
        *on.first().unwrap()
    };
    let (lost, kept) = (lease_of("a"), lease_of("b"));
    assert_ne!(lost, kept);
    let b_keys = leases[&kept].clone();
    let revisions = |etcd: Etcd, keys: BTreeSet<String>| async move {
        let mut etcd = etcd;
        let mut revs = Vec::new();
        for k in keys {
            let r = etcd.get(k.as_str(), None).await.expect("etcd get");
            revs.push(r.kvs().first().map(|kv| (kv.mod_revision(), kv.lease())));
        }
        revs
    };
    let b_before = revisions(etcd.clone(), b_keys.clone()).await;

    // a's lease goes (as when it expires): etcd deletes its keys.
    let mut watch = etcd
        .watch(
            scope.prefix.as_str(),
            Some(WatchOptions::new().with_prefix()),
        )
        .await
        .expect("watch the prefix");
    let revoked = Instant::now();
    etcd.lease_revoke(lost).await.expect("revoke a's lease");
    let a_prefix = format!("{}a/", scope.prefix);
    let mut back = BTreeSet::new();
    let mut puts_elsewhere = Vec::new();
    while back.len() < 2 {
        let resp = tokio::time::timeout(WAIT, watch.message())
            .await
            .expect("a's keys put again")
            .expect("etcd watch")
            .expect("etcd watch open");
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if ev.event_type() != EventType::Put {
                continue;
            }
            if key.starts_with(&a_prefix) {
                assert_ne!(kv.lease(), lost, "put again under the lost lease");
                back.insert(key);
            } else {
                puts_elsewhere.push(key);
            }
        }
    }
    let took = revoked.elapsed();
    eprintln!("lease revoked → its keys put again under another: {took:?}");
    assert!(took <= Duration::from_secs(1), "put again after {took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        puts_elsewhere.is_empty(),
        "keys on the other lease were put again: {puts_elsewhere:?}"
    );
    assert_eq!(
        revisions(etcd.clone(), b_keys).await,
        b_before,
        "b's keys untouched, still on their lease"
    );
    let metrics = http_get(bridge.http_port, "/metrics")
        .expect("the bridge's /metrics")
        .1;
    assert_eq!(
        etcd_bridge_testbed::metrics::value(&metrics, "etcd_bridge_writeback_leases_lost_total"),
        Some(1.0),
        "{metrics}"
    );
    let now = leases_under(&mut etcd, &scope.prefix).await;
    let want = as_status(&now, |k| k.starts_with(&a_prefix));
    eventually(&format!("a's leaseId {want}"), WAIT, || async {
        (lease_id(&scope, "a") == want).then_some(())
    })
    .await;
}
