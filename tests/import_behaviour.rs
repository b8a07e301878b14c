//! How registrations become objects, on the shared test bed: slicing with little churn, weights,
//! names that collide, objects the bridge does not own, restarts that write nothing, bad
//! registrations, and failover between two bridge processes.

mod common;

use common::*;
use etcd_client::PutOptions;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
/// Lets the audit log and the bridge's follow-up checks settle before counting writes.
const SETTLE: Duration = Duration::from_millis(2000);

async fn apis(scope: &Scope) -> Apis {
    Apis::new(scope.kube().await, &scope.namespace)
}

async fn converged(apis: &Apis, name: &str, want: &[&str]) -> Vec<EndpointSlice> {
    common::converged(apis, name, want, WAIT).await
}

async fn put(etcd: &mut etcd_client::Client, key: &str, value: impl Into<Vec<u8>>, lease: i64) {
    etcd.put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put");
}

/// The bridge's writes of the EndpointSlices of Service `service` since `mark`.
fn slice_writes(scope: &Scope, mark: u64, service: &str) -> Vec<AuditWrite> {
    let user = bridge_user(&scope.namespace);
    object_writes(&audit_writes(
        &scope.bed.cluster.audit_log(),
        mark,
        &scope.namespace,
    ))
    .into_iter()
    .filter(|w| w.user == user && w.resource == "endpointslices")
    // Slice names are `{service}-{hash8}-{index}`: the aggregate's never start with `{service}-`.
    .filter(|w| w.name.starts_with(&format!("{service}-")))
    .collect()
}

#[tokio::test]
async fn a_big_service_fills_slices_of_100_and_one_change_rewrites_one_slice() {
    let scope = Scope::new("slicing");
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(600, None).await.unwrap().id();
    let addr = |i: u32| format!("10.50.{}.{}:8080", i / 200, i % 200 + 1);
    // Registered before the bridge starts: its first list sees all 250 at once, the layout a
    // steady state converges to (2 full slices and one of 50).
    for i in 0..250 {
        put(
            &mut etcd,
            &seed_key(&scope.prefix, "big", "v1", &addr(i)),
            seed_value("big", "v1", &addr(i), 1),
            lease,
        )
        .await;
    }
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    let apis = apis(&scope).await;

    let ip = |i: u32| addr(i).split(':').next().unwrap().to_string();
    let all: Vec<String> = (0..250).map(ip).collect();
    let all_refs: Vec<&str> = all.iter().map(String::as_str).collect();
    let before = converged(&apis, "big-v1", &all_refs).await;
    assert_eq!(before.len(), 3, "250 endpoints fill 3 slices: {before:#?}");
    let mut sizes: Vec<usize> = before.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [50, 100, 100], "no slice above 100");
    for s in &before {
        assert_eq!(weight_of(s), "1");
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(8080));
    }
    tokio::time::sleep(SETTLE).await;

    // A 251st endpoint: it fits in the slice of 50, the only one written.
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    put(
        &mut etcd,
        &seed_key(&scope.prefix, "big", "v1", &addr(250)),
        seed_value("big", "v1", &addr(250), 1),
        lease,
    )
    .await;
    let mut more = all.clone();
    more.push(ip(250));
    let more_refs: Vec<&str> = more.iter().map(String::as_str).collect();
    let after_add = converged(&apis, "big-v1", &more_refs).await;
    tokio::time::sleep(SETTLE).await;
    let writes = slice_writes(&scope, mark, "big-v1");
    assert_eq!(
        writes.len(),
        1,
        "one added endpoint rewrites exactly one slice: {writes:#?}\n{}",
        bridge.log()
    );
    assert_eq!(writes[0].verb, "patch", "{writes:#?}");
    let after_add = {
        // Re-read: the converged list may predate a (wrong) second write.
        let now = slices_of(&apis.slices, "big-v1").await;
        assert_eq!(addresses(&now), addresses(&after_add));
        now
    };
    assert_eq!(after_add.len(), 3, "{after_add:#?}");
    let before_rv: BTreeMap<String, String> =
        before.iter().map(|s| (s.name_any(), rv(s))).collect();
    let changed: Vec<String> = after_add
        .iter()
        .filter(|s| before_rv.get(&s.name_any()) != Some(&rv(*s)))
        .map(|s| s.name_any())
        .collect();
    assert_eq!(
        changed,
        [writes[0].name.clone()],
        "only the written slice has a new resourceVersion"
    );
    let grown = after_add
        .iter()
        .find(|s| s.name_any() == writes[0].name)
        .unwrap();
    assert_eq!(
        grown.endpoints.len(),
        51,
        "the 251st joined the slice of 50"
    );

    // Deleting one endpoint of a full slice rewrites that slice only.
    let full = after_add
        .iter()
        .find(|s| s.endpoints.len() == 100)
        .expect("a full slice");
    let victim = addrs_of(full)[0].clone();
    let victim_i = (0..251).find(|&i| ip(i) == victim).unwrap();
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    etcd.delete(seed_key(&scope.prefix, "big", "v1", &addr(victim_i)), None)
        .await
        .unwrap();
    let fewer: Vec<&str> = more_refs.iter().copied().filter(|a| *a != victim).collect();
    converged(&apis, "big-v1", &fewer).await;
    tokio::time::sleep(SETTLE).await;
    let writes = slice_writes(&scope, mark, "big-v1");
    assert_eq!(
        writes.len(),
        1,
        "one deleted endpoint rewrites exactly one slice: {writes:#?}\n{}",
        bridge.log()
    );
    assert_eq!(writes[0].name, full.name_any(), "{writes:#?}");
    let after_delete = slices_of(&apis.slices, "big-v1").await;
    assert_eq!(after_delete.len(), 3);
    for s in &after_delete {
        assert!(s.endpoints.len() <= 100);
        let old = after_add.iter().find(|o| o.name_any() == s.name_any());
        let old = old.expect("no slice appeared");
        if s.name_any() == full.name_any() {
            assert_ne!(rv(s), rv(old));
            assert_eq!(s.endpoints.len(), 99);
        } else {
            assert_eq!(rv(s), rv(old), "slice {} untouched", s.name_any());
        }
    }
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn a_weight_change_moves_the_endpoint_to_a_slice_of_its_new_weight() {
    let scope = Scope::new("weight");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    let apis = apis(&scope).await;
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    for a in ["10.60.0.1:9000", "10.60.0.2:9000"] {
        put(
            &mut etcd,
            &seed_key(&scope.prefix, "w", "v1", a),
            seed_value("w", "v1", a, 1),
            lease,
        )
        .await;
    }
    let s = converged(&apis, "w-v1", &["10.60.0.1", "10.60.0.2"]).await;
    assert_eq!(s.len(), 1, "{s:#?}");
    assert_eq!(weight_of(&s[0]), "1");

    // The same key, a new value: weight 5.
    put(
        &mut etcd,
        &seed_key(&scope.prefix, "w", "v1", "10.60.0.2:9000"),
        seed_value("w", "v1", "10.60.0.2:9000", 5),
        lease,
    )
    .await;
    for service in ["w-v1", "w"] {
        let by_weight = eventually(
            &format!("10.60.0.2 moved to a weight-5 slice of {service}"),
            WAIT,
            || async {
                let s = slices_of(&apis.slices, service).await;
                let by_weight: BTreeMap<String, Vec<String>> =
                    s.iter().map(|s| (weight_of(s), addrs_of(s))).collect();
                (s.len() == 2
                    && by_weight.get("1") == Some(&sorted(&["10.60.0.1"]))
                    && by_weight.get("5") == Some(&sorted(&["10.60.0.2"])))
                .then_some(by_weight)
            },
        )
        .await;
        assert_eq!(by_weight.len(), 2, "{by_weight:?}");
    }
    // Cilium reads the weight per slice, at most 65535: a larger one is clamped, once counted.
    put(
        &mut etcd,
        &seed_key(&scope.prefix, "w", "v1", "10.60.0.3:9000"),
        seed_value("w", "v1", "10.60.0.3:9000", 70_000),
        lease,
    )
    .await;
    let cilium = |s: &EndpointSlice| {
        s.annotations()
            .get("service.cilium.io/weight")
            .cloned()
            .unwrap_or_default()
    };
    let s = eventually("a slice of weight 70000", WAIT, || async {
        let s = slices_of(&apis.slices, "w-v1").await;
        (s.len() == 3).then_some(s)
    })
    .await;
    let by_weight: BTreeMap<String, String> = s.iter().map(|s| (weight_of(s), cilium(s))).collect();
    assert_eq!(
        by_weight,
        BTreeMap::from([
            ("1".into(), "1".into()),
            ("5".into(), "5".into()),
            ("70000".into(), "65535".into())
        ])
    );
    eventually("the clamp counted once per Service", WAIT, || async {
        (bridge.metric("etcd_bridge_weights_clamped_total") == Some(2.0)).then_some(())
    })
    .await;
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn colliding_names_get_distinct_services_and_the_collision_is_counted() {
    let scope = Scope::new("collide");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &["--aggregate=true"]);
    bridge.ready(WAIT).await;
    let apis = apis(&scope).await;
    let mut etcd = scope.etcd().await;
    // Name `a-b` without a version: its aggregate wants `a-b`. Name `a`, version `b`: its
    // versioned target wants `a-b` too (and its aggregate is `a`). Both new, in one transaction
    // (so one flush): the first in sort order gets the name. (A name already in use keeps its
    // owner instead: tests/import_decisions.rs.)
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    let put = |name: &str, version: &str, addr: &str| {
        etcd_client::TxnOp::put(
            seed_key(&scope.prefix, name, version, addr),
            seed_value(name, version, addr, 1),
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
    };
    etcd.txn(etcd_client::Txn::new().and_then([
        put("a-b", "", "10.61.0.1:7000"),
        put("a", "b", "10.61.0.2:7000"),
    ]))
    .await
    .unwrap();

    let (by_target, names) = eventually("three Services", WAIT, || async {
        let list = apis.services.list(&ListParams::default()).await.ok()?;
        let by_target: BTreeMap<(String, Option<String>), String> = list
            .items
            .iter()
            .map(|s| {
                let a = s.annotations();
                (
                    (
                        a.get("etcd-bridge.io/name").cloned().unwrap_or_default(),
                        a.get("etcd-bridge.io/version").cloned(),
                    ),
                    s.name_any(),
                )
            })
            .collect();
        (by_target.len() == 3).then(|| {
            let names: BTreeSet<String> = by_target.values().cloned().collect();
            (by_target, names)
        })
    })
    .await;
    assert_eq!(names.len(), 3, "distinct Services: {by_target:?}");
    let versioned = &by_target[&("a".to_string(), Some("b".to_string()))];
    let dashed = &by_target[&("a-b".to_string(), None)];
    let aggregate = &by_target[&("a".to_string(), None)];
    assert_eq!(aggregate, "a");
    // The first target in sort order, (a, b) < (a-b, none), keeps the plain name.
    assert_eq!(versioned, "a-b", "{by_target:?}");
    assert_ne!(dashed, "a-b");
    assert!(dashed.starts_with("a-b-"), "{dashed}");

    converged(&apis, versioned, &["10.61.0.2"]).await;
    converged(&apis, aggregate, &["10.61.0.2"]).await;
    converged(&apis, dashed, &["10.61.0.1"]).await;
    let conflicts = eventually("the collision counted", WAIT, || async {
        bridge
            .metric(r#"etcd_bridge_conflicts_total{kind="name_collision"}"#)
            .filter(|v| *v >= 1.0)
    })
    .await;
    assert!(conflicts >= 1.0);
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn a_users_service_of_the_wanted_name_is_left_alone_and_counted() {
    let scope = Scope::new("userowned");
    let out = scope.bed.cluster.kubectl_stdin(
        &["create", "-n", &scope.namespace, "-f", "-"],
        r#"
apiVersion: v1
kind: Service
metadata:
  name: owned-v1
  labels: {app: mine}
spec:
  selector: {app: mine}
  ports: [{name: https, port: 8443, targetPort: 8443}]
"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let apis = apis(&scope).await;
    let original = apis.services.get("owned-v1").await.unwrap();

    let kubeconfig = scope.bridge_kubeconfig();
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    let mut etcd = scope.etcd().await;
    register(
        &mut etcd,
        &scope.prefix,
        "owned",
        "v1",
        "10.62.0.1:50051",
        1,
        300,
    )
    .await;
    register(
        &mut etcd,
        &scope.prefix,
        "other",
        "v1",
        "10.62.0.2:50051",
        1,
        300,
    )
    .await;

    // Everything else of the prefix is projected.
    converged(&apis, "owned", &["10.62.0.1"]).await;
    converged(&apis, "other-v1", &["10.62.0.2"]).await;
    converged(&apis, "other", &["10.62.0.2"]).await;
    eventually("the conflict counted", WAIT, || async {
        bridge
            .metric(r#"etcd_bridge_conflicts_total{kind="Service"}"#)
            .filter(|v| *v >= 1.0)
    })
    .await;
    tokio::time::sleep(SETTLE).await;

    let now = apis.services.get("owned-v1").await.unwrap();
    assert_eq!(rv(&now), rv(&original), "the user's Service was written to");
    assert_eq!(now.labels(), original.labels());
    assert!(!now.labels().contains_key("app.kubernetes.io/managed-by"));
    assert!(!now.annotations().contains_key("etcd-bridge.io/name"));
    let spec = now.spec.clone().unwrap();
    assert_eq!(
        spec.selector,
        Some(BTreeMap::from([("app".to_string(), "mine".to_string())]))
    );
    assert_eq!(spec.ports.unwrap()[0].port, 8443);
    // No slice of the bridge's for it, and the endpoint in none of its slices.
    for s in slices_of(&apis.slices, "owned-v1").await {
        assert_ne!(
            s.labels().get("endpointslice.kubernetes.io/managed-by"),
            Some(&"controller.etcd-bridge.io".to_string()),
            "{s:#?}"
        );
        assert!(!addrs_of(&s).contains(&"10.62.0.1".to_string()), "{s:#?}");
    }
    let user = bridge_user(&scope.namespace);
    let touched: Vec<AuditWrite> = object_writes(&audit_writes(
        &scope.bed.cluster.audit_log(),
        mark,
        &scope.namespace,
    ))
    .into_iter()
    .filter(|w| w.user == user && w.name == "owned-v1")
    .collect();
    assert!(
        touched.is_empty(),
        "the bridge wrote the user's Service: {touched:#?}"
    );
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}

#[tokio::test]
async fn a_restart_with_nothing_changed_writes_nothing() {
    let scope = Scope::new("restart");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    let apis = apis(&scope).await;
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(600, None).await.unwrap().id();
    let mut want: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in 0..5 {
        for e in 0..4 {
            let name = format!("svc{s}");
            let version = if s % 2 == 0 { "v1" } else { "" };
            let addr = format!("10.63.{s}.{}:{}", e + 1, 7000 + s);
            put(
                &mut etcd,
                &seed_key(&scope.prefix, &name, version, &addr),
                seed_value(&name, version, &addr, e % 2 + 1),
                lease,
            )
            .await;
            let ip = addr.split(':').next().unwrap().to_string();
            want.entry(name.clone()).or_default().push(ip.clone());
            if !version.is_empty() {
                want.entry(format!("{name}-{version}"))
                    .or_default()
                    .push(ip);
            }
        }
    }
    let mut snapshot = BTreeMap::new();
    for (svc, ips) in &want {
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        let slices = converged(&apis, svc, &ips).await;
        let svc_rv = rv(&apis.services.get(svc).await.unwrap());
        snapshot.insert(svc.clone(), (svc_rv, slices));
    }
    tokio::time::sleep(SETTLE).await;

    bridge.stop();
    let log = scope.bed.cluster.audit_log();
    let mark = audit_mark(&log);
    let mut again = scope.bridge(&kubeconfig, &[]);
    again.ready(WAIT).await;
    again.leading(WAIT).await;
    tokio::time::sleep(SETTLE).await;

    let user = bridge_user(&scope.namespace);
    let all = audit_writes(&log, mark, &scope.namespace);
    let mine: Vec<&AuditWrite> = all.iter().filter(|w| w.user == user).collect();
    assert!(
        mine.iter().any(|w| w.resource == "leases"),
        "the new bridge took the Lease, so its writes are in the log: {all:#?}"
    );
    let writes: Vec<AuditWrite> = object_writes(&all)
        .into_iter()
        .filter(|w| w.user == user)
        .collect();
    assert!(
        writes.is_empty(),
        "a restart with nothing changed wrote {} objects: {writes:#?}\n{}",
        writes.len(),
        again.log()
    );
    for (svc, (svc_rv, slices)) in &snapshot {
        assert_eq!(&rv(&apis.services.get(svc).await.unwrap()), svc_rv);
        let now = slices_of(&apis.slices, svc).await;
        let a: Vec<(String, String)> = now.iter().map(|s| (s.name_any(), rv(s))).collect();
        let b: Vec<(String, String)> = slices.iter().map(|s| (s.name_any(), rv(s))).collect();
        assert_eq!(a, b, "slices of {svc} unchanged");
    }
}

#[tokio::test]
async fn bad_registrations_are_skipped_counted_and_previewed_and_the_good_one_is_projected() {
    let scope = Scope::new("badregs");
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    let p = &scope.prefix;
    let good = seed_key(p, "bad", "v1", "10.64.0.1:80");
    // (key, value, the reason label it is skipped for)
    let bad: Vec<(String, Vec<u8>, &str)> = vec![
        (
            seed_key(p, "bad", "v1", "10.64.0.2:80"),
            b"{not json".to_vec(),
            "invalid_json",
        ),
        (
            seed_key(p, "bad", "v1", "10.64.0.3"),
            seed_value("bad", "v1", "10.64.0.3", 1).into_bytes(),
            "missing_port",
        ),
        (
            seed_key(p, "bad", "v1", "10.64.0.4:0"),
            seed_value("bad", "v1", "10.64.0.4:0", 1).into_bytes(),
            "invalid_port",
        ),
        (
            seed_key(p, "bad", "v1", "10.64.0.5:70000"),
            seed_value("bad", "v1", "10.64.0.5:70000", 1).into_bytes(),
            "invalid_port",
        ),
        (
            seed_key(p, "bad", "v1", "greeter.example.com:80"),
            seed_value("bad", "v1", "greeter.example.com:80", 1).into_bytes(),
            "hostname",
        ),
        (
            seed_key(p, "bad", "v1", "10.64.0.6:80"),
            vec![b'{', 0xff, 0xfe, b'}'],
            "not_utf8",
        ),
        (
            format!("{p}bad/v1/extra/10.64.0.7:80"),
            seed_value("bad", "v1", "10.64.0.7:80", 1).into_bytes(),
            "bad_key_shape",
        ),
    ];
    // Half before the bridge starts (its first list), half after (its watch).
    put(
        &mut etcd,
        &good,
        seed_value("bad", "v1", "10.64.0.1:80", 1),
        lease,
    )
    .await;
    for (k, v, _) in &bad[..3] {
        put(&mut etcd, k, v.clone(), lease).await;
    }
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    for (k, v, _) in &bad[3..] {
        put(&mut etcd, k, v.clone(), lease).await;
    }
    let apis = apis(&scope).await;
    let s = converged(&apis, "bad-v1", &["10.64.0.1"]).await;
    assert_eq!(s.len(), 1);
    converged(&apis, "bad", &["10.64.0.1"]).await;

    let mut expected: BTreeMap<&str, f64> = BTreeMap::new();
    for (_, _, reason) in &bad {
        *expected.entry(reason).or_default() += 1.0;
    }
    for (reason, n) in &expected {
        let series = format!(r#"etcd_bridge_skipped_registrations_total{{reason="{reason}"}}"#);
        let got = eventually(&format!("{series} = {n}"), WAIT, || async {
            bridge.metric(&series).filter(|v| v >= n)
        })
        .await;
        assert_eq!(got, *n, "{series}");
    }
    assert!(matches!(bridge.get("/readyz"), Some((200, _))));
    assert!(bridge.proc.is_running(), "{}", bridge.log());

    let (ok, out, err) = preview(&scope.registry_endpoint, &scope.prefix, &[]);
    assert!(ok, "preview failed: {err}\n{out}");
    assert!(out.contains("bad-v1"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("bad-v1 ") && l.contains("10.64.0.1")),
        "{out}"
    );
    for (key, _, reason) in &bad {
        assert!(
            out.lines()
                .any(|l| l.starts_with(key.as_str())
                    && l[key.len()..].trim_start().starts_with(reason)),
            "preview does not list {key} as {reason}:\n{out}"
        );
    }
    assert!(
        !out.contains("10.64.0.1:80  "),
        "the good key is not skipped"
    );
}

/// Which of `bridges` says it leads, once exactly one does.
async fn the_leader(bridges: &mut [&mut Bridge]) -> usize {
    eventually("exactly one leader", WAIT, || async {
        let leaders: Vec<usize> = (0..bridges.len())
            .filter(|&i| bridges[i].metric("etcd_bridge_leader") == Some(1.0))
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let scope = Scope::new("failover");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut a = scope.bridge(&kubeconfig, &["--lease-duration=4s"]);
    let mut b = scope.bridge(&kubeconfig, &["--lease-duration=4s"]);
    a.ready(WAIT).await;
    b.ready(WAIT).await;
    let apis = apis(&scope).await;
    let mut etcd = scope.etcd().await;
    register(&mut etcd, &scope.prefix, "fo", "v1", "10.65.0.1:80", 1, 300).await;
    converged(&apis, "fo-v1", &["10.65.0.1"]).await;

    let leader = the_leader(&mut [&mut a, &mut b]).await;
    let (mut leader, mut standby) = if leader == 0 { (a, b) } else { (b, a) };
    assert_eq!(standby.metric("etcd_bridge_leader"), Some(0.0));
    leader.proc.kill();
    register(&mut etcd, &scope.prefix, "fo", "v1", "10.65.0.2:80", 1, 300).await;
    converged(&apis, "fo-v1", &["10.65.0.1", "10.65.0.2"]).await;
    converged(&apis, "fo", &["10.65.0.1", "10.65.0.2"]).await;
    standby.leading(WAIT).await;
    assert!(standby.proc.is_running(), "{}", standby.log());
    assert!(!leader.proc.is_running());
}

#[tokio::test]
async fn a_leader_stopped_with_sigterm_hands_over_without_waiting_for_its_lease_to_expire() {
    let scope = Scope::new("handover");
    let kubeconfig = scope.bridge_kubeconfig();
    // A Lease far longer than the wait below: only a release lets the standby in that soon.
    let flags = ["--lease-duration=60s"];
    let mut a = scope.bridge(&kubeconfig, &flags);
    a.leading(WAIT).await;
    let mut b = scope.bridge(&kubeconfig, &flags);
    b.ready(WAIT).await;
    assert_eq!(b.metric("etcd_bridge_leader"), Some(0.0));
    let apis = apis(&scope).await;
    let leases: Api<Lease> = Api::namespaced(scope.kube().await, &scope.namespace);
    let held = leases.get("etcd-bridge-default").await.unwrap();
    let holder = held.spec.as_ref().and_then(|s| s.holder_identity.clone());
    assert!(holder.is_some(), "{held:?}");

    a.stop();
    assert!(
        a.full_log().contains("leadership released"),
        "SIGTERM releases the Lease\n{}",
        a.log()
    );
    let after = leases.get("etcd-bridge-default").await.unwrap();
    let now_holder = after.spec.as_ref().and_then(|s| s.holder_identity.clone());
    assert_ne!(now_holder, holder, "the Lease was released: {after:?}");

    let mut etcd = scope.etcd().await;
    register(&mut etcd, &scope.prefix, "ho", "v1", "10.66.0.1:80", 1, 300).await;
    let deadline = std::time::Instant::now() + WAIT;
    while b.metric("etcd_bridge_leader") != Some(1.0) && std::time::Instant::now() < deadline {
        assert!(b.proc.is_running(), "{}", b.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        b.metric("etcd_bridge_leader") == Some(1.0),
        "the old leader released the Lease on SIGTERM (holder now {:?}), but the standby did \
         not take it within {WAIT:?}: it waits for the 60 s lease to run out\n{}",
        leases
            .get("etcd-bridge-default")
            .await
            .ok()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity),
        b.log()
    );
    converged(&apis, "ho-v1", &["10.66.0.1"]).await;
}

#[tokio::test]
async fn drift_is_repaired_a_slice_deleted_by_hand_comes_back_and_an_edit_is_undone() {
    let scope = Scope::new("drift");
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;
    let apis = apis(&scope).await;
    let mut etcd = scope.etcd().await;
    let lease = etcd.lease_grant(300, None).await.unwrap().id();
    let a = "10.61.0.1:9000";
    put(
        &mut etcd,
        &seed_key(&scope.prefix, "d", "", a),
        seed_value("d", "", a, 2),
        lease,
    )
    .await;
    let s = converged(&apis, "d", &["10.61.0.1"]).await;
    let name = s[0].name_any();

    // Someone deletes the slice by hand: the bridge sees it and writes it again.
    scope.kubectl(&["delete", "endpointslice", &name]);
    let back = converged(&apis, "d", &["10.61.0.1"]).await;
    assert_eq!(back[0].name_any(), name, "the same stable name");
    assert_ne!(back[0].uid(), s[0].uid(), "a new object");

    // Someone edits the weight annotation: the bridge sets it back.
    scope.kubectl(&[
        "annotate",
        "--overwrite",
        "endpointslice",
        &name,
        "etcd-bridge.io/weight=9",
    ]);
    eventually("the weight annotation restored", WAIT, || async {
        let s = slices_of(&apis.slices, "d").await;
        (s.len() == 1 && weight_of(&s[0]) == "2").then_some(())
    })
    .await;
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}
