//! Write-back on the real test bed: EtcdRegistration objects become keys in etcd, exactly as the
//! seed's Go `Register` writes them, under the bridge's etcd lease.

mod common;
// Reacting to changes outside the object: keys freed in etcd, followed Services deleted.
#[path = "writeback/watches.rs"]
mod watches;
// Write-back in formats other than the seed's.
#[path = "writeback/formats.rs"]
mod formats;
// Many etcd leases: at most N keys each, one keepalive stream each, lost ones put again.
#[path = "writeback/leases.rs"]
mod leases;
// Several registries: the EtcdSource an object's spec.source names.
#[path = "writeback/sources.rs"]
mod sources;

use common::*;
use etcd_client::{Client as Etcd, EventType, GetOptions, WatchOptions};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The value at `key`, as a string.
async fn value(etcd: &mut Etcd, key: &str) -> Option<String> {
    let r = etcd.get(key, None).await.expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

async fn keys_under(etcd: &mut Etcd, prefix: &str) -> Vec<String> {
    let r = etcd
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        )
        .await
        .expect("etcd get");
    r.kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn registration(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    )
}

/// `.status.conditions[type].status/reason` of an EtcdRegistration.
fn condition(scope: &Scope, name: &str, type_: &str) -> String {
    scope.kubectl(&[
        "get",
        "etcdreg",
        name,
        "-o",
        &format!("jsonpath={{.status.conditions[?(@.type==\"{type_}\")].status}}/{{.status.conditions[?(@.type==\"{type_}\")].reason}}"),
    ])
}

/// Waits until import has projected the Service `name` in the scope's namespace.
async fn service_appears(scope: &Scope, name: &str) {
    let want = format!("service/{name}");
    eventually(&format!("the projected Service {name}"), WAIT, || async {
        let names = scope.kubectl(&["get", "svc", "-o", "name"]);
        names.lines().any(|l| l == want).then_some(())
    })
    .await
}

/// Starts a write-back bridge on this scope, whose write-back prefix is the scope's prefix.
async fn bridge(scope: &Scope, extra: &[&str]) -> Bridge {
    let kubeconfig = scope.writeback_kubeconfig();
    let wb_prefix = format!("--writeback-prefix={}", scope.prefix);
    // Tests share one cluster: each bridge handles its own namespace's objects only.
    let wb_ns = format!("--writeback-namespace={}", scope.namespace);
    let mut args = vec!["--writeback=true", wb_prefix.as_str(), wb_ns.as_str()];
    args.extend_from_slice(extra);
    let mut b = scope.bridge(&kubeconfig, &args);
    b.ready(WAIT).await;
    b
}

#[tokio::test]
async fn a_static_registration_is_written_in_the_seed_format_and_follows_the_object() {
    let scope = Scope::new("wb-static");
    let _bridge = bridge(&scope, &[]).await;
    let mut etcd = scope.etcd().await;
    scope.apply(&registration(
        "greeter",
        r#"{service: greeter, version: v1, weight: 3, addresses: ["10.5.0.1:50051", "[fd00::7]:50051"]}"#,
    ));
    let key = format!("{}greeter/v1/10.5.0.1:50051", scope.prefix);
    let v = eventually("the key in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;
    // Exactly Go's json.Marshal(Server{...}), then the owner marker (ignored by Go).
    let marker = format!("{}/greeter", scope.namespace);
    assert_eq!(
        v,
        format!(
            r#"{{"name":"greeter","addr":"10.5.0.1:50051","version":"v1","weight":3,"etcd-bridge.io/owner":"default/{marker}"}}"#
        )
    );
    assert!(
        value(
            &mut etcd,
            &format!("{}greeter/v1/[fd00::7]:50051", scope.prefix)
        )
        .await
        .is_some()
    );
    // The key hangs on the bridge's lease.
    let kv = etcd.get(key.as_str(), None).await.unwrap();
    let lease = kv.kvs()[0].lease();
    assert_ne!(lease, 0, "attached to a lease");

    // Status and printer columns.
    eventually("Ready", WAIT, || async {
        (condition(&scope, "greeter", "Ready") == "True/Registered").then_some(())
    })
    .await;
    let table = scope.kubectl(&["get", "etcdreg"]);
    assert!(
        table.contains("SERVICE") && table.contains("WEIGHT") && table.contains("ENDPOINTS"),
        "{table}"
    );
    assert!(
        table.contains("greeter") && table.contains("True"),
        "{table}"
    );
    let lease_in_status = scope.kubectl(&[
        "get",
        "etcdreg",
        "greeter",
        "-o",
        "jsonpath={.status.leaseId}",
    ]);
    assert_eq!(lease_in_status, format!("{lease:x}"));

    // A weight patch rewrites the value: the seed's HTTP weight handler, the Kubernetes way.
    let t = Instant::now();
    scope.kubectl(&[
        "patch",
        "etcdreg",
        "greeter",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"weight":5}}"#,
    ]);
    eventually("weight 5 in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move {
            value(&mut etcd, &key)
                .await
                .filter(|v| v.contains(r#""weight":5"#))
        }
    })
    .await;
    eprintln!("weight patch → etcd: {:?}", t.elapsed());

    // Dropping an address removes exactly its key.
    scope.kubectl(&[
        "patch",
        "etcdreg",
        "greeter",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"addresses":["10.5.0.1:50051"]}}"#,
    ]);
    eventually("the dropped address gone", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move { (keys_under(&mut etcd, &p).await.len() == 1).then_some(()) }
    })
    .await;

    // Deleting the object removes its keys, then the finalizer lets it go.
    scope.kubectl(&[
        "delete",
        "etcdreg",
        "greeter",
        "--wait=true",
        "--timeout=30s",
    ]);
    assert!(keys_under(&mut etcd, &scope.prefix).await.is_empty());
}

#[tokio::test]
async fn a_foreign_key_is_never_overwritten_and_the_object_reports_the_conflict() {
    let scope = Scope::new("wb-conflict");
    let mut etcd = scope.etcd().await;
    // Another registrant (a Go service, say) already holds this key.
    let key = format!("{}billing/v2/10.6.0.1:9000", scope.prefix);
    let foreign = seed_value("billing", "v2", "10.6.0.1:9000", 9);
    etcd.put(key.as_str(), foreign.as_str(), None)
        .await
        .unwrap();
    let _bridge = bridge(&scope, &[]).await;
    scope.apply(&registration(
        "billing",
        r#"{service: billing, version: v2, addresses: ["10.6.0.1:9000", "10.6.0.2:9000"]}"#,
    ));
    eventually("Conflict=True", WAIT, || async {
        (condition(&scope, "billing", "Conflict") == "True/ForeignKey").then_some(())
    })
    .await;
    assert_eq!(condition(&scope, "billing", "Ready"), "False/Conflict");
    assert_eq!(
        value(&mut etcd, &key).await.as_deref(),
        Some(foreign.as_str()),
        "untouched"
    );
    // The other address is still registered.
    assert!(
        value(
            &mut etcd,
            &format!("{}billing/v2/10.6.0.2:9000", scope.prefix)
        )
        .await
        .is_some()
    );
    let events = scope.kubectl(&[
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=billing",
        "-o",
        "jsonpath={.items[*].reason}",
    ]);
    assert!(
        events.contains("ForeignKey"),
        "an Event reports it: {events}"
    );
    // Deleting the object leaves the foreign key alone.
    scope.kubectl(&[
        "delete",
        "etcdreg",
        "billing",
        "--wait=true",
        "--timeout=30s",
    ]);
    assert_eq!(
        value(&mut etcd, &key).await.as_deref(),
        Some(foreign.as_str())
    );
}

#[tokio::test]
async fn a_denied_namespace_writes_nothing() {
    let scope = Scope::new("wb-denied");
    let _bridge = bridge(&scope, &["--writeback-policy=payments-*:*,*:public-*"]).await;
    scope.apply(&registration(
        "secret",
        r#"{service: internal-api, addresses: ["10.7.0.1:80"]}"#,
    ));
    scope.apply(&registration(
        "open",
        r#"{service: public-api, addresses: ["10.7.0.2:80"]}"#,
    ));
    eventually("Denied=True", WAIT, || async {
        (condition(&scope, "secret", "Denied") == "True/PolicyDenied").then_some(())
    })
    .await;
    eventually("the allowed one Ready", WAIT, || async {
        (condition(&scope, "open", "Ready") == "True/Registered").then_some(())
    })
    .await;
    let mut etcd = scope.etcd().await;
    let keys = keys_under(&mut etcd, &scope.prefix).await;
    assert_eq!(keys, [format!("{}public-api/10.7.0.2:80", scope.prefix)]);
}

#[tokio::test]
async fn a_bad_object_is_refused_at_admission() {
    let scope = Scope::new("wb-admission");
    install_crd(scope.bed);
    for (spec, why) in [
        (
            r#"{service: "a/b", addresses: ["10.0.0.1:1"]}"#,
            "a slash in the name",
        ),
        (
            r#"{service: "a b", addresses: ["10.0.0.1:1"]}"#,
            "whitespace in the name",
        ),
        (
            r#"{service: a, addresses: ["10.0.0.1:1"], serviceRef: {name: x, port: 80}}"#,
            "both sources",
        ),
        (r#"{service: a}"#, "no source"),
        (
            r#"{service: a, weight: -1, addresses: ["10.0.0.1:1"]}"#,
            "a negative weight",
        ),
        (
            r#"{service: a, addresses: ["10.0.0.1"]}"#,
            "an address without a port",
        ),
    ] {
        let out = scope.bed.cluster.kubectl_stdin(
            &["apply", "-n", &scope.namespace, "-f", "-"],
            &registration("bad", spec),
        );
        assert!(!out.status.success(), "{why} was accepted");
    }
}

#[tokio::test]
async fn service_ref_exports_the_ready_endpoints_and_follows_them() {
    let scope = Scope::new("wb-ref");
    let _bridge = bridge(&scope, &[]).await;
    // No kubelet runs here, so the Service's endpoints are an EndpointSlice we write, as the
    // EndpointSlice controller would for ready pods.
    scope.apply(
        r#"
apiVersion: v1
kind: Service
metadata: {name: api}
spec:
  ports: [{name: grpc, port: 8080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-pods
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: grpc, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.8.0.1]
  conditions: {ready: true}
- addresses: [10.8.0.2]
  conditions: {ready: false}
"#,
    );
    scope.apply(&registration(
        "api",
        r#"{service: api, version: v1, weight: 2, serviceRef: {name: api, port: grpc}}"#,
    ));
    let mut etcd = scope.etcd().await;
    eventually("the ready endpoint registered", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move {
            (keys_under(&mut etcd, &p).await == [format!("{p}api/v1/10.8.0.1:8080")]).then_some(())
        }
    })
    .await;
    // A pod becomes ready, another goes away.
    scope.apply(
        r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-pods
  labels: {kubernetes.io/service-name: api}
addressType: IPv4
ports: [{name: grpc, port: 8080, protocol: TCP}]
endpoints:
- addresses: [10.8.0.2]
  conditions: {ready: true}
"#,
    );
    eventually("the registration follows the endpoints", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move {
            (keys_under(&mut etcd, &p).await == [format!("{p}api/v1/10.8.0.2:8080")]).then_some(())
        }
    })
    .await;
    assert!(
        value(&mut etcd, &format!("{}api/v1/10.8.0.2:8080", scope.prefix))
            .await
            .unwrap()
            .contains(r#""weight":2"#)
    );
}

#[tokio::test]
async fn a_service_ref_to_a_projected_service_is_refused() {
    let scope = Scope::new("wb-loop");
    let _bridge = bridge(&scope, &[]).await;
    // Import projects `greeter` from etcd; exporting it back would loop.
    let mut etcd = scope.etcd().await;
    register(
        &mut etcd,
        &scope.prefix,
        "greeter",
        "",
        "10.9.0.1:50051",
        1,
        60,
    )
    .await;
    service_appears(&scope, "greeter").await;
    scope.apply(&registration(
        "loop",
        r#"{service: greeter2, serviceRef: {name: greeter, port: 50051}}"#,
    ));
    eventually("Denied=True/FeedbackLoop", WAIT, || async {
        (condition(&scope, "loop", "Denied") == "True/FeedbackLoop").then_some(())
    })
    .await;
    assert!(
        value(
            &mut etcd,
            &format!("{}greeter2/10.9.0.1:50051", scope.prefix)
        )
        .await
        .is_none()
    );
}

#[tokio::test]
async fn own_written_back_keys_are_not_imported_again() {
    let scope = Scope::new("wb-noimport");
    let _bridge = bridge(&scope, &[]).await;
    scope.apply(&registration(
        "mine",
        r#"{service: mine, addresses: ["10.10.1.1:80"]}"#,
    ));
    eventually("Ready", WAIT, || async {
        (condition(&scope, "mine", "Ready") == "True/Registered").then_some(())
    })
    .await;
    // A registration of someone else in the same prefix is imported, ours is not.
    let mut etcd = scope.etcd().await;
    register(
        &mut etcd,
        &scope.prefix,
        "theirs",
        "",
        "10.10.1.2:80",
        1,
        60,
    )
    .await;
    service_appears(&scope, "theirs").await;
    let services = scope.kubectl(&["get", "svc", "-o", "name"]);
    assert!(!services.contains("service/mine"), "{services}");
}

/// Watches `prefix` and records every DELETE until dropped.
fn record_deletes(mut etcd: Etcd, prefix: String) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        let mut stream = etcd
            .watch(prefix, Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        while let Ok(Some(resp)) = stream.message().await {
            for ev in resp.events() {
                if ev.event_type() == EventType::Delete {
                    let k = ev
                        .kv()
                        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned());
                    out.lock().unwrap().push(k.unwrap_or_default());
                }
            }
        }
    });
    seen
}

#[tokio::test]
async fn killing_the_leader_with_a_standby_running_deletes_nothing() {
    let scope = Scope::new("wb-failover");
    let ttl = ["--writeback-lease-ttl=12s", "--lease-duration=4s"];
    let mut a = bridge(&scope, &ttl).await;
    a.leading(WAIT).await;
    let mut b = bridge(&scope, &ttl).await;
    scope.apply(&registration(
        "svc",
        r#"{service: svc, addresses: ["10.11.0.1:80", "10.11.0.2:80"]}"#,
    ));
    let mut etcd = scope.etcd().await;
    let key = format!("{}svc/10.11.0.1:80", scope.prefix);
    let lease_of = |etcd: Etcd, key: String| async move {
        let mut etcd = etcd;
        let r = etcd.get(key, None).await.unwrap();
        r.kvs().first().map(|kv| kv.lease())
    };
    let first = eventually("registered", WAIT, || lease_of(etcd.clone(), key.clone())).await;
    let deletes = record_deletes(etcd.clone(), scope.prefix.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    let killed = Instant::now();
    a.proc.kill();
    // The standby takes the Lease (after its 4 s) and re-attaches every key to its own etcd lease,
    // well before the dead leader's 12 s etcd lease runs out.
    let moved = eventually("keys re-attached to the new leader's lease", WAIT, || {
        let (etcd, key) = (etcd.clone(), key.clone());
        async move { lease_of(etcd, key).await.filter(|l| *l != first) }
    })
    .await;
    eprintln!(
        "failover: keys under the new lease {:?} after kill -9",
        killed.elapsed()
    );
    // Wait past the old lease's TTL: it expires, and must take no key with it.
    tokio::time::sleep(Duration::from_secs(13).saturating_sub(killed.elapsed())).await;
    assert!(
        deletes.lock().unwrap().is_empty(),
        "a watcher saw DELETEs: {:?}",
        deletes.lock().unwrap()
    );
    assert_eq!(keys_under(&mut etcd, &scope.prefix).await.len(), 2);
    assert_ne!(moved, first);
    b.leading(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn killing_the_only_bridge_lets_its_keys_expire_within_the_ttl() {
    let scope = Scope::new("wb-alone");
    let mut a = bridge(&scope, &["--writeback-lease-ttl=6s"]).await;
    scope.apply(&registration(
        "svc",
        r#"{service: svc, addresses: ["10.12.0.1:80"]}"#,
    ));
    let mut etcd = scope.etcd().await;
    eventually("registered", WAIT, || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move { (!keys_under(&mut etcd, &p).await.is_empty()).then_some(()) }
    })
    .await;
    let killed = Instant::now();
    a.proc.kill();
    eventually("keys gone", Duration::from_secs(20), || {
        let (mut etcd, p) = (etcd.clone(), scope.prefix.clone());
        async move { keys_under(&mut etcd, &p).await.is_empty().then_some(()) }
    })
    .await;
    let took = killed.elapsed();
    eprintln!("no successor: keys gone {took:?} after kill -9 (TTL 6 s)");
    assert!(
        took <= Duration::from_secs(6) + Duration::from_millis(1500),
        "gone within the TTL, not {took:?}"
    );
    assert!(keys_under(&mut etcd, &scope.prefix).await.is_empty());
}

#[tokio::test]
async fn after_etcd_loses_its_data_the_keys_are_put_again() {
    let dir = etcd_bridge_testbed::scratch_dir("wb-etcd");
    let mut registry =
        etcd_bridge_testbed::Etcd::start(&dir, "registry", &[]).expect("start a private etcd");
    let scope = Scope::with_registry("wb-etcd", &registry.endpoint());
    let _bridge = bridge(&scope, &["--writeback-lease-ttl=6s"]).await;
    scope.apply(&registration(
        "svc",
        r#"{service: svc, version: v1, addresses: ["10.13.0.1:80"]}"#,
    ));
    let key = format!("{}svc/v1/10.13.0.1:80", scope.prefix);
    let etcd = scope.etcd().await;
    eventually("registered", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;

    // Restarted with its data: the key and the lease survive.
    registry.restart().expect("restart etcd");
    let mut etcd = scope.etcd().await;
    eventually("still there after a restart", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;

    // Restarted empty: the lease is gone too; the bridge grants a new one and puts the key again.
    // It may do so before this test looks (a lost lease's keys are back within milliseconds), so
    // the loss is told by the lease the key is on, not by the key being absent for a while.
    let old_lease = etcd.get(key.as_str(), None).await.unwrap().kvs()[0].lease();
    registry.restart_empty().expect("restart etcd empty");
    let mut fresh = scope.etcd().await;
    let v = eventually("put again, on a new lease", WAIT, || {
        let (mut etcd, key) = (fresh.clone(), key.clone());
        async move {
            let got = etcd.get(key.as_str(), None).await.ok()?;
            let kv = got.kvs().first()?;
            (kv.lease() != old_lease).then(|| String::from_utf8_lossy(kv.value()).into_owned())
        }
    })
    .await;
    assert!(
        v.starts_with(r#"{"name":"svc","addr":"10.13.0.1:80","version":"v1","weight":1"#),
        "{v}"
    );
    let lease = fresh.get(key.as_str(), None).await.unwrap().kvs()[0].lease();
    assert_ne!(lease, 0);
    let _ = etcd.status().await;
}

#[tokio::test]
async fn weight_patches_reach_etcd_one_by_one() {
    let scope = Scope::new("wb-latency");
    let _bridge = bridge(&scope, &[]).await;
    scope.apply(&registration(
        "svc",
        r#"{service: svc, addresses: ["10.14.0.1:80"]}"#,
    ));
    let key = format!("{}svc/10.14.0.1:80", scope.prefix);
    let mut etcd = scope.etcd().await;
    eventually("registered", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;
    // Watch the key, then patch the weight N times; each value must arrive, in order.
    let mut stream = etcd.watch(key.as_str(), None).await.unwrap();
    let regs: kube::Api<etcd_bridge::writeback::crd::EtcdRegistration> =
        kube::Api::namespaced(scope.kube().await, &scope.namespace);
    let mut latencies = Vec::new();
    for w in 2..42 {
        let t = Instant::now();
        let patch = serde_json::json!({"spec": {"weight": w}});
        regs.patch(
            "svc",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .expect("patch the weight");
        let want = format!(r#""weight":{w},"#);
        loop {
            let resp = tokio::time::timeout(WAIT, stream.message())
                .await
                .expect("a watch event")
                .unwrap()
                .unwrap();
            if resp.events().iter().any(|e| {
                e.kv()
                    .is_some_and(|kv| String::from_utf8_lossy(kv.value()).contains(&want))
            }) {
                break;
            }
        }
        latencies.push(t.elapsed());
    }
    latencies.sort();
    eprintln!(
        "CR weight patch -> etcd value: p50 {:?} p99 {:?} over {}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
        latencies.len()
    );
    assert_eq!(latencies.len(), 40);
}
