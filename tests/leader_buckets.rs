//! Sharded writing with real bridge processes: replicas run with `--leader-buckets=3` share the
//! import and the write-back by bucket. While registrations keep changing, replicas are killed
//! (kill -9) and replaced, one after another. The audit log then shows every write of a Service,
//! an EndpointSlice or an EtcdRegistration made by the replica that held its bucket's Lease at
//! that moment (never by two at once), and everything converges to what etcd says.

mod common;

use common::*;
use etcd_bridge::leader::buckets;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BUCKETS: u32 = 3;
const SERVICES: usize = 12;
const REGISTRATIONS: usize = 9;
const LEASE: &str = "eb";
const DURATION: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

/// A ServiceAccount per replica, with the bridge's rights, so that the audit log tells the
/// replicas apart.
fn accounts(namespace: &str, names: &[String]) -> String {
    names
        .iter()
        .map(|sa| {
            format!(
                r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {sa}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {sa}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge}}
subjects:
- {{kind: ServiceAccount, name: {sa}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "etcd-bridge-writeback-{namespace}-{sa}"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "etcd-bridge-writeback-{namespace}"}}
subjects:
- {{kind: ServiceAccount, name: {sa}, namespace: "{namespace}"}}
"#
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

struct Replicas<'a> {
    scope: &'a Scope,
    wb_prefix: String,
    next: usize,
    live: Vec<(String, Bridge)>,
}

impl Replicas<'_> {
    /// Starts replica `r{next}` with its own ServiceAccount (created beforehand).
    fn start(&mut self) -> String {
        let id = format!("r{}", self.next);
        self.next += 1;
        let path: PathBuf = self
            .scope
            .bed
            .dir
            .join(format!("{}-{id}.kubeconfig", self.scope.namespace));
        let kubeconfig = (self.scope.bed.cluster)
            .service_account_kubeconfig(&self.scope.namespace, &id, &path)
            .expect("TokenRequest for a replica's ServiceAccount");
        let args = [
            format!("--leader-buckets={BUCKETS}"),
            format!("--lease-name={LEASE}"),
            format!("--lease-duration={}s", DURATION.as_secs()),
            format!("--identity={id}"),
            "--writeback=true".into(),
            format!("--writeback-prefix={}", self.wb_prefix),
            format!("--writeback-namespace={}", self.scope.namespace),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let bridge = self.scope.bridge(&kubeconfig, &args);
        self.live.push((id.clone(), bridge));
        id
    }

    /// Buckets held by the live replicas, summed (from their metrics).
    fn held(&self) -> f64 {
        (self.live.iter())
            .filter_map(|(_, b)| b.metric("etcd_bridge_buckets_held"))
            .sum()
    }
}

/// What etcd says each Service should hold: the addresses registered for `svc-{i}`.
type Model = BTreeMap<usize, VecDeque<String>>;

fn addr(i: usize, host: usize) -> String {
    format!("10.41.{i}.{host}")
}

/// Which bucket an audited write's object is in (None: not one the bridge writes by bucket).
fn bucket_of(namespace: &str) -> impl Fn(&AuditWrite) -> Option<u32> {
    let namespace = namespace.to_string();
    move |w| match w.resource.as_str() {
        "services" => Some(buckets::of_service("default", &w.name, BUCKETS)),
        "endpointslices" => {
            service_of_slice(&w.name).map(|s| buckets::of_service("default", s, BUCKETS))
        }
        "etcdregistrations" => Some(buckets::of_registration(&namespace, &w.name, BUCKETS)),
        _ => None,
    }
}

fn single_writer(writes: &[AuditWrite], namespace: &str) -> (usize, Vec<String>) {
    let accounts = format!("system:serviceaccount:{namespace}:");
    audit_single_writer(writes, LEASE, &accounts, bucket_of(namespace))
}

#[test]
fn the_audit_check_flags_a_write_outside_the_holders_term() {
    let ns = "n";
    let w = |resource: &str, name: &str, user: &str, holder: Option<&str>| AuditWrite {
        verb: "update".into(),
        resource: resource.into(),
        namespace: ns.into(),
        name: name.into(),
        user: format!("system:serviceaccount:{ns}:{user}"),
        user_agent: String::new(),
        code: 200,
        lease_holder: holder.map(String::from),
    };
    let svc = "svc-0";
    let b = buckets::of_service("default", svc, BUCKETS);
    let lease = format!("{LEASE}-{b}");
    let slice = format!("{svc}-0123abcd-0");
    let good = [
        w("leases", &lease, "r0", Some("r0")),
        w("services", svc, "r0", None),
        w("leases", &lease, "r0", None), // released
        w("leases", &lease, "r1", Some("r1")),
        w("endpointslices", &slice, "r1", None),
    ];
    assert_eq!(single_writer(&good, ns), (2, vec![]));
    let late = [
        w("leases", &lease, "r0", Some("r0")),
        w("leases", &lease, "r1", Some("r1")), // r0's expired, r1 took it
        w("endpointslices", &slice, "r0", None),
    ];
    assert_eq!(single_writer(&late, ns).1.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_import_and_write_back_by_bucket_and_never_write_one_object_at_once() {
    let scope = Scope::new("buckets");
    scope.writeback_kubeconfig(); // the CRD, the Role and the write-back ClusterRole
    let ids: Vec<String> = (0..6).map(|i| format!("r{i}")).collect();
    scope.apply(&accounts(&scope.namespace, &ids));
    let audit = scope.bed.cluster.audit_log();
    let from = audit_mark(&audit);

    let mut etcd = scope.etcd().await;
    let mut model = Model::new();
    for i in 0..SERVICES {
        let a = addr(i, 1);
        etcd.put(
            seed_key(
                &scope.prefix,
                &format!("svc-{i}"),
                "v1",
                &format!("{a}:50051"),
            ),
            seed_value(&format!("svc-{i}"), "v1", &format!("{a}:50051"), 1),
            None,
        )
        .await
        .expect("put a registration");
        model.entry(i).or_default().push_back(a);
    }
    for i in 0..REGISTRATIONS {
        scope.apply(&format!(
            "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\nmetadata: {{name: wb-{i}}}\nspec: {{service: wb-{i}, version: v1, weight: 1, addresses: [\"10.42.0.{i}:50051\"]}}\n"
        ));
    }

    let mut replicas = Replicas {
        scope: &scope,
        wb_prefix: format!("/{}-wb/", scope.namespace),
        next: 0,
        live: Vec::new(),
    };
    for _ in 0..3 {
        replicas.start();
    }
    let t0 = Instant::now();
    // The first to start takes every bucket; the others join and get their share.
    eventually("the three replicas holding a bucket each", WAIT, || async {
        (replicas.live.iter())
            .all(|(_, b)| b.metric("etcd_bridge_buckets_held") == Some(1.0))
            .then_some(())
    })
    .await;
    eprintln!(
        "3 replicas hold a bucket each {:?} after starting",
        t0.elapsed()
    );
    converged_to(&scope, &model, &replicas.wb_prefix).await;

    // Registrations keep changing while replicas are killed one after another and replaced.
    let mut handoffs = Vec::new();
    let mut change = SERVICES;
    for round in 0..3 {
        let (dead, mut bridge) = replicas.live.remove(0);
        bridge.proc.kill();
        let killed = Instant::now();
        replicas.start();
        let mut taken = None;
        while killed.elapsed() < DURATION * 2 + Duration::from_secs(2) {
            let i = change % SERVICES;
            let a = addr(i, change / SERVICES % 250 + 2);
            let key = |a: &str| {
                seed_key(
                    &scope.prefix,
                    &format!("svc-{i}"),
                    "v1",
                    &format!("{a}:50051"),
                )
            };
            etcd.put(
                key(&a),
                seed_value(&format!("svc-{i}"), "v1", &format!("{a}:50051"), 1),
                None,
            )
            .await
            .expect("put a registration");
            let addrs = model.entry(i).or_default();
            addrs.push_back(a);
            // Each service keeps its two newest addresses: every change also removes one.
            if addrs.len() > 2 {
                let oldest = addrs.pop_front().unwrap();
                etcd.delete(key(&oldest), None)
                    .await
                    .expect("delete a registration");
            }
            change += 1;
            if taken.is_none() && replicas.held() == BUCKETS as f64 {
                taken = Some(killed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let taken = taken.unwrap_or_else(|| {
            panic!(
                "round {round}: the buckets of {dead} were not all held again within {:?}",
                DURATION * 2 + Duration::from_secs(2)
            )
        });
        eprintln!("round {round}: {dead} killed -> every bucket held again after {taken:?}");
        handoffs.push(taken);
    }
    let t = Instant::now();
    converged_to(&scope, &model, &replicas.wb_prefix).await;
    eprintln!("converged {:?} after the last change", t.elapsed());
    for h in &handoffs {
        assert!(
            *h <= DURATION + Duration::from_secs(2),
            "a handoff took {h:?}, more than the Lease duration {DURATION:?} + 2 s"
        );
    }

    let writes = audit_writes(&audit, from, &scope.namespace);
    let (checked, violations) = single_writer(&writes, &scope.namespace);
    let writers: BTreeSet<&str> = (writes.iter())
        .filter(|w| w.changes_an_object())
        .map(|w| w.user.as_str())
        .collect();
    eprintln!(
        "audit: {checked} object writes by {} replicas, each by its bucket's holder: {}",
        writers.len(),
        violations.is_empty()
    );
    assert!(
        checked > 0,
        "no object writes by the replicas in the audit log"
    );
    assert!(
        writers.len() >= 3,
        "the writing was not shared: {writers:?}"
    );
    assert!(
        violations.is_empty(),
        "objects written by a replica that did not hold their bucket:\n{}",
        violations.join("\n")
    );
    for (_, mut b) in replicas.live {
        b.stop();
    }
}

/// Waits until every Service holds what `model` says, labelled with its bucket, and every
/// EtcdRegistration's key is in etcd.
async fn converged_to(scope: &Scope, model: &Model, wb_prefix: &str) {
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    for (i, want) in model {
        let name = format!("svc-{i}-v1");
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        let slices = eventually(&format!("{name} holding {want:?}"), WAIT, || {
            holds(&apis, &name, &want)
        })
        .await;
        let bucket = buckets::of_service("default", &name, BUCKETS).to_string();
        for s in &slices {
            assert_eq!(
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("etcd-bridge.io/bucket")),
                Some(&bucket),
                "{name}'s slice is labelled with its bucket"
            );
        }
    }
    let etcd = scope.etcd().await;
    eventually("every write-back key in etcd", WAIT, || {
        let mut etcd = etcd.clone();
        async move {
            let r = etcd
                .get(
                    wb_prefix,
                    Some(etcd_client::GetOptions::new().with_prefix()),
                )
                .await
                .ok()?;
            (r.kvs().len() == REGISTRATIONS).then_some(())
        }
    })
    .await;
}
