//! The import under failure, each test with private components it may stop: etcd restarted or
//! gone, a watch that fell behind a compaction, the apiserver down for a while, and a wiped prefix.

mod common;

use common::*;
use etcd_client::{CompactionOptions, DeleteOptions, PutOptions};
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_millis(2000);

async fn gone(apis: &Apis, name: &str, timeout: Duration) {
    eventually(&format!("Service {name} deleted"), timeout, || async {
        matches!(apis.services.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
}

/// A private registry etcd, a scope on it, a ready bridge (with `extra` flags) and the clients
/// to read the cluster and write etcd.
async fn on_private_etcd(
    label: &str,
    base: &str,
    extra: &[&str],
) -> (EtcdServer, Scope, Bridge, Apis, etcd_client::Client) {
    let server = private_etcd(label);
    let scope = Scope::with_registry(base, &server.endpoint());
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, extra);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let etcd = scope.etcd().await;
    (server, scope, bridge, apis, etcd)
}

async fn put(
    etcd: &mut etcd_client::Client,
    prefix: &str,
    name: &str,
    version: &str,
    addr: &str,
    weight: i64,
) {
    // No lease: these tests restart etcd and stop the bridge; nothing should expire meanwhile.
    etcd.put(
        seed_key(prefix, name, version, addr),
        seed_value(name, version, addr, weight),
        None,
    )
    .await
    .expect("put registration");
}

#[tokio::test]
async fn an_etcd_restart_mid_stream_converges_to_the_new_state() {
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-restart", "etcdrestart", &[]).await;
    put(&mut etcd, &scope.prefix, "r", "v1", "10.70.0.1:80", 1).await;
    converged(&apis, "r-v1", &["10.70.0.1"], WAIT).await;

    server
        .restart()
        .unwrap_or_else(|e| panic!("etcd did not restart: {e}\n{}", server.log_tail(40)));
    let mut etcd = scope.etcd().await;
    put(&mut etcd, &scope.prefix, "r", "v1", "10.70.0.2:80", 1).await;
    etcd.delete(seed_key(&scope.prefix, "r", "v1", "10.70.0.1:80"), None)
        .await
        .unwrap();
    converged(&apis, "r-v1", &["10.70.0.2"], WAIT).await;
    converged(&apis, "r", &["10.70.0.2"], WAIT).await;
    eventually("the watch re-established", WAIT, || async {
        (bridge.metric("etcd_bridge_etcd_connected") == Some(1.0)
            && matches!(bridge.get("/readyz"), Some((200, _))))
        .then_some(())
    })
    .await;
    assert!(
        bridge
            .metric("etcd_bridge_watch_restarts_total")
            .unwrap_or(0.0)
            >= 1.0,
        "the restart broke the watch\n{}",
        bridge.log()
    );
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn while_etcd_is_unreachable_nothing_is_deleted_and_readyz_says_so() {
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-down", "etcddown", &[]).await;
    let p = &scope.prefix;
    put(&mut etcd, p, "u1", "v1", "10.71.0.1:80", 1).await;
    put(&mut etcd, p, "u1", "v1", "10.71.0.2:80", 1).await;
    put(&mut etcd, p, "u2", "v1", "10.71.0.3:80", 2).await;
    let want: [(&str, &[&str]); 4] = [
        ("u1-v1", &["10.71.0.1", "10.71.0.2"]),
        ("u1", &["10.71.0.1", "10.71.0.2"]),
        ("u2-v1", &["10.71.0.3"]),
        ("u2", &["10.71.0.3"]),
    ];
    let mut before = BTreeMap::new();
    for (svc, ips) in want {
        let slices = converged(&apis, svc, ips, WAIT).await;
        let svc_rv = rv(&apis.services.get(svc).await.unwrap());
        let slice_rvs: Vec<(String, String)> =
            slices.iter().map(|s| (s.name_any(), rv(s))).collect();
        before.insert(svc, (svc_rv, slice_rvs));
    }
    let state = || async {
        let mut now = BTreeMap::new();
        for (svc, _) in want {
            let svc_rv = apis.services.get_opt(svc).await.unwrap().map(|s| rv(&s));
            let slices = try_slices_of(&apis.slices, svc).await.unwrap_or_default();
            let slice_rvs: Vec<(String, String)> =
                slices.iter().map(|s| (s.name_any(), rv(s))).collect();
            now.insert(svc, (svc_rv.unwrap_or_default(), slice_rvs));
        }
        now
    };

    server.stop();
    eventually("/readyz 503 and etcd_connected 0", WAIT, || async {
        (matches!(bridge.get("/readyz"), Some((503, _)))
            && bridge.metric("etcd_bridge_etcd_connected") == Some(0.0))
        .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        state().await,
        before,
        "etcd unreachable: every Service and slice stays as it was\n{}",
        bridge.log()
    );
    let (code, body) = bridge.get("/readyz").expect("/readyz answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("etcd"), "{body}");
    assert_eq!(bridge.metric("etcd_bridge_etcd_connected"), Some(0.0));
    assert!(bridge.proc.is_running(), "{}", bridge.log());

    server
        .restart()
        .unwrap_or_else(|e| panic!("etcd did not start again: {e}\n{}", server.log_tail(40)));
    bridge.ready(WAIT).await;
    eventually("etcd_connected 1", WAIT, || async {
        (bridge.metric("etcd_bridge_etcd_connected") == Some(1.0)).then_some(())
    })
    .await;
    for (svc, ips) in want {
        converged(&apis, svc, ips, WAIT).await;
    }
    tokio::time::sleep(SETTLE).await;
    assert_eq!(state().await, before, "nothing changed, nothing written");
}

#[tokio::test]
async fn a_watch_behind_a_compaction_relists_and_loses_no_delete() {
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-compact", "compaction", &[]).await;
    let p = &scope.prefix;
    put(&mut etcd, p, "c", "v1", "10.72.0.1:80", 1).await;
    put(&mut etcd, p, "c", "v1", "10.72.0.2:80", 1).await;
    converged(&apis, "c-v1", &["10.72.0.1", "10.72.0.2"], WAIT).await;
    assert_eq!(
        bridge.metric("etcd_bridge_compaction_relists_total"),
        Some(0.0)
    );

    // The bridge is frozen, and its connection broken by an etcd restart, so it cannot have seen
    // the delete: when it resumes, it watches from its old revision, which is compacted.
    bridge.proc.signal("STOP");
    server
        .restart()
        .unwrap_or_else(|e| panic!("etcd did not restart: {e}\n{}", server.log_tail(40)));
    let mut etcd = scope.etcd().await;
    etcd.delete(seed_key(p, "c", "v1", "10.72.0.2:80"), None)
        .await
        .unwrap();
    let mut revision = 0;
    for i in 0..50 {
        let r = etcd
            .put(format!("/elsewhere{p}k{i}"), "x", None)
            .await
            .unwrap();
        revision = r.header().unwrap().revision();
    }
    etcd.compact(revision, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    bridge.proc.signal("CONT");

    converged(&apis, "c-v1", &["10.72.0.1"], WAIT).await;
    converged(&apis, "c", &["10.72.0.1"], WAIT).await;
    let relists = eventually("a compaction relist counted", WAIT, || async {
        bridge
            .metric("etcd_bridge_compaction_relists_total")
            .filter(|v| *v >= 1.0)
    })
    .await;
    assert!(relists >= 1.0);
    assert!(bridge.proc.is_running(), "{}", bridge.log());
    bridge.ready(WAIT).await;
}

#[tokio::test]
async fn after_an_apiserver_outage_the_bridge_converges_without_a_write_storm() {
    let PrivateBed {
        mut bed,
        namespace,
        prefix,
        mut bridge,
    } = PrivateBed::start("apiserver-outage", "apiout", WAIT).await;
    let endpoint = bed.registry.endpoint();
    let apis = Apis::new(bed.cluster.client().await, &namespace);
    let mut etcd = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .expect("connect to the registry etcd");
    let p = &prefix;
    put(&mut etcd, p, "a", "v1", "10.73.0.1:80", 1).await;
    put(&mut etcd, p, "a", "v1", "10.73.0.2:80", 1).await;
    put(&mut etcd, p, "b", "v1", "10.73.0.3:80", 1).await;
    put(&mut etcd, p, "c", "v1", "10.73.0.4:80", 1).await;
    for (svc, ips) in [
        ("a-v1", &["10.73.0.1", "10.73.0.2"][..]),
        ("a", &["10.73.0.1", "10.73.0.2"]),
        ("b-v1", &["10.73.0.3"]),
        ("b", &["10.73.0.3"]),
        ("c-v1", &["10.73.0.4"]),
        ("c", &["10.73.0.4"]),
    ] {
        converged(&apis, svc, ips, WAIT).await;
    }
    tokio::time::sleep(SETTLE).await;

    bed.cluster.stop_apiserver();
    // Changes while the API is away: an endpoint added to a (its slice in a-v1 and in a), c's
    // only endpoint gone (Services c-v1 and c deleted), b's weight 1 → 7 (in b-v1 and in b, a
    // weight-7 slice created and the weight-1 slice deleted): 8 objects to write.
    let changed_objects = 8;
    put(&mut etcd, p, "a", "v1", "10.73.0.5:80", 1).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    etcd.delete(seed_key(p, "c", "v1", "10.73.0.4:80"), None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    put(&mut etcd, p, "b", "v1", "10.73.0.3:80", 7).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(bridge.proc.is_running(), "{}", bridge.log());
    let log = bed.cluster.audit_log();
    let mark = audit_mark(&log);
    bed.cluster
        .start_apiserver()
        .unwrap_or_else(|e| panic!("kube-apiserver did not start again: {e}"));

    let apis = apis_after_restart(&bed, &namespace).await;
    let long = Duration::from_secs(60);
    converged(
        &apis,
        "a-v1",
        &["10.73.0.1", "10.73.0.2", "10.73.0.5"],
        long,
    )
    .await;
    converged(&apis, "a", &["10.73.0.1", "10.73.0.2", "10.73.0.5"], long).await;
    for svc in ["b-v1", "b"] {
        converged(&apis, svc, &["10.73.0.3"], long).await;
        eventually(&format!("{svc}: one slice, of weight 7"), long, || async {
            let s = try_slices_of(&apis.slices, svc).await?;
            (s.len() == 1 && weight_of(&s[0]) == "7").then_some(())
        })
        .await;
    }
    gone(&apis, "c-v1", long).await;
    gone(&apis, "c", long).await;
    tokio::time::sleep(SETTLE).await;

    // The bridge runs as the admin, like kube-controller-manager and kubectl: tell it by its
    // user agent (kube-rs sends none).
    let writes: Vec<AuditWrite> = object_writes(&audit_writes(&log, mark, &namespace))
        .into_iter()
        .filter(|w| w.user == "testbed-admin")
        .filter(|w| {
            !w.user_agent.starts_with("kube-controller-manager")
                && !w.user_agent.starts_with("kubectl")
        })
        .collect();
    assert!(
        !writes.is_empty(),
        "the changes were written after the outage"
    );
    assert!(
        writes.len() <= 3 * changed_objects,
        "{} writes for {changed_objects} changed objects after the outage: {writes:#?}\n{}",
        writes.len(),
        bridge.log()
    );
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

/// A fresh client (the old one's connections died with the apiserver).
async fn apis_after_restart(bed: &TestBed, namespace: &str) -> Apis {
    Apis::new(bed.cluster.client().await, namespace)
}

#[tokio::test]
async fn a_wiped_prefix_trips_the_mass_deletion_guard_until_confirmed() {
    let scope = Scope::new("massdelete");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(
        &kubeconfig,
        &["--max-delete-ratio=0.5", "--delete-confirm-delay=3s"],
    );
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(600, None).await.unwrap().id();
    let mut services = Vec::new();
    for s in 0..5 {
        let name = format!("m{s}");
        let ips = [format!("10.74.{s}.1"), format!("10.74.{s}.2")];
        for ip in &ips {
            let addr = format!("{ip}:80");
            etcd.put(
                seed_key(&scope.prefix, &name, "v1", &addr),
                seed_value(&name, "v1", &addr, 1),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .unwrap();
        }
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        converged(&apis, &format!("{name}-v1"), &ips, WAIT).await;
        converged(&apis, &name, &ips, WAIT).await;
        services.push(format!("{name}-v1"));
        services.push(name);
    }
    let log_before = bridge.full_log().len();

    // One delete-range wipes the whole prefix: every Service would go.
    let deleted = etcd
        .delete(
            scope.prefix.as_str(),
            Some(DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(deleted.deleted(), 10);
    let wiped = Instant::now();
    let held = eventually("deletions held", WAIT, || async {
        bridge
            .metric("etcd_bridge_held_deletions")
            .filter(|v| *v > 0.0)
    })
    .await;
    assert!(held > 0.0);
    // Until the confirmation delay (3 s) has passed, every Service stays.
    while wiped.elapsed() < Duration::from_secs(2) {
        for svc in &services {
            assert!(
                apis.services.get_opt(svc).await.unwrap().is_some(),
                "{svc} deleted {:?} after a wipe, before the mass deletion was confirmed\n{}",
                wiped.elapsed(),
                bridge.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = bridge.full_log()[log_before..].to_lowercase();
    assert!(
        log.contains("held") || log.contains("hold"),
        "the bridge says it holds the deletions\n{log}"
    );

    // The wipe was real: a second consistent read after the delay confirms it.
    for svc in &services {
        gone(&apis, svc, WAIT).await;
    }
    eventually("no deletion held any more", WAIT, || async {
        (bridge.metric("etcd_bridge_held_deletions") == Some(0.0)).then_some(())
    })
    .await;
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn a_hung_etcd_is_noticed_by_keepalive_and_nothing_is_deleted() {
    // A short request timeout keeps the keepalive check quick.
    let (server, scope, bridge, apis, mut etcd) =
        on_private_etcd("etcd-hung", "etcdhung", &["--etcd-timeout=2s"]).await;
    put(&mut etcd, &scope.prefix, "h1", "", "10.72.0.1:80", 1).await;
    converged(&apis, "h1", &["10.72.0.1"], WAIT).await;

    // SIGSTOP: the TCP connection stays open but etcd answers nothing, not even HTTP/2 pings.
    server.freeze();
    eventually("the hung etcd noticed", WAIT, || async {
        (bridge.metric("etcd_bridge_etcd_connected") == Some(0.0)
            && matches!(bridge.get("/readyz"), Some((503, _))))
        .then_some(())
    })
    .await;
    assert!(
        holds(&apis, "h1", &["10.72.0.1"]).await.is_some(),
        "nothing deleted"
    );
    server.thaw();
    eventually("reconnected", WAIT, || async {
        (bridge.metric("etcd_bridge_etcd_connected") == Some(1.0)).then_some(())
    })
    .await;
    put(&mut etcd, &scope.prefix, "h1", "", "10.72.0.2:80", 1).await;
    converged(&apis, "h1", &["10.72.0.1", "10.72.0.2"], WAIT).await;
}

/// Writes `n` keys outside the prefix, so that the registry's revision moves well past what a
/// replaced or restored etcd comes back with.
async fn raise_revision(etcd: &mut etcd_client::Client, prefix: &str, n: usize) {
    for i in 0..n {
        etcd.put(format!("/elsewhere{prefix}k{i}"), "x", None)
            .await
            .unwrap();
    }
}

/// Flags for the rewind tests: the periodic resync (which would also repair the cache) is far
/// beyond the test, so only the detection of the rewind can be what brings the new state in.
const NO_RESYNC: [&str; 2] = ["--resync-interval=10m", "--delete-confirm-delay=2s"];

#[tokio::test]
async fn an_etcd_restored_from_an_older_snapshot_is_relisted_at_once() {
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-restore", "etcdrestore", &NO_RESYNC).await;
    let p = &scope.prefix;
    put(&mut etcd, p, "kept", "v1", "10.75.0.1:80", 1).await;
    put(&mut etcd, p, "kept", "v1", "10.75.0.2:80", 1).await;
    let snapshot = scratch_dir("etcd-restore-snapshot").join("backup.db");
    server
        .snapshot(&snapshot)
        .unwrap_or_else(|e| panic!("etcdctl snapshot save: {e}"));
    // After the backup: a registration it lacks, and the revision moves on well past it.
    put(&mut etcd, p, "late", "v1", "10.75.1.1:80", 1).await;
    raise_revision(&mut etcd, p, 100).await;
    converged(&apis, "late-v1", &["10.75.1.1"], WAIT).await;
    converged(&apis, "kept-v1", &["10.75.0.1", "10.75.0.2"], WAIT).await;
    let log_before = bridge.full_log().len();

    // The bridge is paused while etcd is restored and takes new registrations, so that when it
    // resumes, etcd's revision is already past the one the bridge was at (its prefix saw no
    // event since "late"): the revision alone does not show the rewind.
    bridge.proc.signal("STOP");
    server
        .restore(&snapshot)
        .unwrap_or_else(|e| panic!("etcd restore: {e}\n{}", server.log_tail(40)));
    let mut etcd = scope.etcd().await;
    let fresh = ["10.75.2.1", "10.75.2.2", "10.75.2.3"];
    for ip in fresh {
        put(&mut etcd, p, "fresh", "v1", &format!("{ip}:80"), 1).await;
    }
    bridge.proc.signal("CONT");
    let back = Instant::now();
    converged(&apis, "fresh-v1", &fresh, WAIT).await;
    let relisted = back.elapsed();
    gone(&apis, "late-v1", WAIT).await;
    gone(&apis, "late", WAIT).await;
    let cleaned = back.elapsed();
    converged(&apis, "kept-v1", &["10.75.0.1", "10.75.0.2"], WAIT).await;
    eprintln!(
        "etcd restored from an older snapshot → relisted in {relisted:?} (the registrations made \
         since projected); the registration the backup lacks removed after {cleaned:?}"
    );
    assert!(
        relisted < Duration::from_secs(5),
        "relisted after {relisted:?}, not at once\n{}",
        bridge.log()
    );
    let log = &bridge.full_log()[log_before..];
    assert!(
        log.contains("listing again") && log.contains("another history"),
        "the bridge says why it lists again\n{log}"
    );
    bridge.ready(WAIT).await;
}

#[tokio::test]
async fn an_etcd_replaced_by_an_empty_one_is_relisted_at_once() {
    // The guard counts even two endpoints, so that it is seen to judge the relist.
    let flags = [
        NO_RESYNC[0],
        "--delete-confirm-delay=3s",
        "--mass-delete-min=1",
    ];
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-replaced", "etcdreplaced", &flags).await;
    let p = &scope.prefix;
    let old = ["10.76.0.1", "10.76.0.2"];
    for ip in old {
        put(&mut etcd, p, "old", "v1", &format!("{ip}:80"), 1).await;
    }
    raise_revision(&mut etcd, p, 100).await;
    converged(&apis, "old-v1", &old, WAIT).await;

    // A lost disk: the same etcd, on the same port, starts again with no data at all.
    server
        .restart_empty()
        .unwrap_or_else(|e| panic!("etcd did not start empty: {e}\n{}", server.log_tail(40)));
    let back = Instant::now();
    // The relist finds nothing: every endpoint would go, so the mass-deletion guard holds them.
    eventually("deletions held after the relist", WAIT, || async {
        bridge
            .metric("etcd_bridge_held_deletions")
            .filter(|v| *v > 0.0)
    })
    .await;
    let relisted = back.elapsed();
    assert!(
        holds(&apis, "old-v1", &old).await.is_some(),
        "held, not deleted"
    );
    // The services register again there (a different set of them): projected at once.
    let mut etcd = scope.etcd().await;
    let new = ["10.76.1.1", "10.76.1.2"];
    for ip in new {
        put(&mut etcd, p, "new", "v1", &format!("{ip}:80"), 1).await;
    }
    converged(&apis, "new-v1", &new, WAIT).await;
    let projected = back.elapsed();
    // The new set goes out at once, but the old set stays until the guard's confirming read
    // (3 s): the additions must not dilute the held removals into a small share.
    assert!(
        projected >= Duration::from_secs(3) || holds(&apis, "old-v1", &old).await.is_some(),
        "the old set went before the confirming read\n{}",
        bridge.log()
    );
    gone(&apis, "old-v1", WAIT).await;
    gone(&apis, "old", WAIT).await;
    let cleaned = back.elapsed();
    eprintln!(
        "etcd replaced by an empty one → relisted in {relisted:?} (deletions held by the guard); \
         new registrations projected after {projected:?}; the old set removed after {cleaned:?}"
    );
    assert!(
        relisted < Duration::from_secs(5),
        "relisted after {relisted:?}, not at once\n{}",
        bridge.log()
    );
    assert!(
        cleaned >= Duration::from_secs(3),
        "the old set was removed after {cleaned:?}, before the 3 s confirming read"
    );
    assert!(
        bridge
            .metric("etcd_bridge_rewind_relists_total")
            .is_some_and(|n| n >= 1.0),
        "the rewind relist is counted"
    );
    bridge.ready(WAIT).await;
}

#[tokio::test]
async fn after_a_long_etcd_outage_the_watch_returns_as_soon_as_etcd_does() {
    let (mut server, scope, mut bridge, apis, mut etcd) =
        on_private_etcd("etcd-outage", "etcdoutage", &[]).await;
    let p = &scope.prefix;
    put(&mut etcd, p, "o", "", "10.77.0.1:80", 1).await;
    converged(&apis, "o", &["10.77.0.1"], WAIT).await;

    server.stop();
    let down = Instant::now();
    // 30 s down: the bridge's retry backoff grows to its cap meanwhile.
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Come back just after a failed attempt, when a full backoff wait lies ahead.
    let failures = |log: &str| log.matches("etcd watch failed").count();
    let before = failures(&bridge.full_log());
    eventually("another failed attempt", WAIT, || async {
        (failures(&bridge.full_log()) > before).then_some(())
    })
    .await;
    server
        .restart()
        .unwrap_or_else(|e| panic!("etcd did not start again: {e}\n{}", server.log_tail(40)));
    let back = Instant::now();
    let outage = down.elapsed();
    let mut etcd = scope.etcd().await;
    put(&mut etcd, p, "o", "", "10.77.0.2:80", 1).await;
    converged(&apis, "o", &["10.77.0.1", "10.77.0.2"], WAIT).await;
    let recovered = back.elapsed();
    eventually("the watch re-established", WAIT, || async {
        (bridge.metric("etcd_bridge_etcd_connected") == Some(1.0)).then_some(())
    })
    .await;
    eprintln!(
        "etcd down {outage:?}, then back → watch re-established and a new registration \
         projected in {recovered:?}"
    );
    assert!(
        recovered < Duration::from_secs(3),
        "the bridge waited out its backoff: {recovered:?} after etcd came back\n{}",
        bridge.log()
    );
    bridge.ready(WAIT).await;
}
