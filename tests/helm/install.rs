//! `helm install` / `upgrade` / `uninstall` end to end, with the bridge run as the chart's
//! Deployment runs it and under the chart's RBAC; the chart's TLS and auth values against a
//! secured etcd; and SIGTERM handing leadership over.

use crate::support::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// 4. install, import and write-back with the chart's permissions, upgrade, uninstall
// ---------------------------------------------------------------------------------------------

fn registration(namespace: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\n\
         metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// `status/reason` of an EtcdRegistration's condition `type_`.
fn condition(bed: &TestBed, namespace: &str, name: &str, type_: &str) -> String {
    let c = format!(".status.conditions[?(@.type==\"{type_}\")]");
    let path = format!("jsonpath={{{c}.status}}/{{{c}.reason}}");
    kubectl(bed, &["get", "etcdreg", name, "-n", namespace, "-o", &path]).stdout
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_with_the_bridge_working_under_the_charts_rbac() {
    let scope = Scope::new("chart-e2e");
    let bed = scope.bed;
    let ns = scope.namespace.as_str();
    // EtcdRegistrations live elsewhere: write-back watches every namespace.
    let apps = unique("chart-apps");
    create_namespace(bed, &apps);
    let (release, name) = ("bridge", "bridge-etcd-bridge");
    let values = [
        format!("etcd.endpoints[0]={}", scope.registry_endpoint),
        format!("etcd.prefixes[0]={}", scope.prefix),
        // Written back under the imported prefix: --import-own-registrations=false skips them.
        format!("writeback.prefix={}", scope.prefix),
        "writeback.policy[0].namespaces=chart-apps-*".into(),
        "writeback.policy[0].services=billing*".into(),
    ];
    let install = [&["install", release, chart(), "-n", ns][..], &sets(&values)].concat();
    let notes = must("helm install", helm_on(bed, &install));
    let see = format!(
        "kubectl get services,endpointslices -n {ns} -l app.kubernetes.io/managed-by=etcd-bridge"
    );
    assert!(
        notes.contains(&see),
        "NOTES show how to see the endpoints:\n{notes}"
    );
    assert!(notes.contains("etcd-bridge\\.io/weight"), "{notes}");
    assert!(notes.contains("kubectl get etcdreg -A"), "{notes}");
    assert!(notes.contains("kubectl port-forward"), "{notes}");

    // What Helm created.
    let cluster_rbac = format!("{ns}-{name}-writeback");
    let metrics = format!("{name}-metrics");
    let helms_objects: Vec<Vec<&str>> = vec![
        vec!["deployment", name, "-n", ns],
        vec!["serviceaccount", name, "-n", ns],
        vec!["role", name, "-n", ns],
        vec!["rolebinding", name, "-n", ns],
        vec!["service", &metrics, "-n", ns],
        vec!["poddisruptionbudget", name, "-n", ns],
        vec!["clusterrole", &cluster_rbac],
        vec!["clusterrolebinding", &cluster_rbac],
    ];
    for obj in &helms_objects {
        assert!(exists(bed, obj), "helm install created no {obj:?}");
    }
    assert!(
        exists(bed, &["crd", "etcdregistrations.etcd-bridge.io"]),
        "CRD from crds/"
    );

    // Least privilege, as the API server's authorizer sees the chart's ServiceAccount.
    let sa = format!("system:serviceaccount:{ns}:{name}");
    let lease = format!("leases/etcd-bridge-{release}");
    let checks: [(&[&str], bool); 16] = [
        (&["create", "services", "-n", ns], true),
        (
            &["delete", "endpointslices.discovery.k8s.io", "-n", ns],
            true,
        ),
        (&["create", "events.events.k8s.io", "-n", ns], true),
        (&["create", "leases.coordination.k8s.io", "-n", ns], true),
        (&["update", &lease, "-n", ns], true),
        (&["patch", "leases/someone-elses-lease", "-n", ns], false),
        (&["delete", &lease, "-n", ns], false),
        (&["create", "services", "-n", &apps], false),
        (
            &["delete", "endpointslices.discovery.k8s.io", "-n", &apps],
            false,
        ),
        // serviceRef: write-back watches Services everywhere; it may read them, never write.
        (&["watch", "services", "-n", &apps], true),
        (&["get", "secrets", "-n", ns], false),
        (&["list", "pods", "-n", ns], false),
        (
            &["create", "etcdregistrations.etcd-bridge.io", "-n", &apps],
            false,
        ),
        (&["watch", "etcdregistrations.etcd-bridge.io", "-A"], true),
        (
            &[
                "patch",
                "etcdregistrations.etcd-bridge.io",
                "--subresource=status",
                "-n",
                &apps,
            ],
            true,
        ),
        (&["watch", "endpointslices.discovery.k8s.io", "-A"], true),
    ];
    for (args, allowed) in checks {
        assert_eq!(can(bed, &sa, args), allowed, "can-i {args:?}");
    }

    // The bridge, as the chart runs it, imports with exactly these rights.
    let kubeconfig = chart_sa_kubeconfig(bed, ns, name);
    let deployment = installed_deployment(bed, ns, name);
    assert_eq!(
        flag(&args_of(&deployment), "--max-endpoints-per-slice"),
        Some("100")
    );
    let audit = bed.cluster.audit_log();
    let mark = audit_mark(&audit);
    let mut bridge = start_as_pod(bed, &deployment, &kubeconfig, &format!("{name}-7d9f-a"));
    bridge.leading(WAIT).await;
    let mut etcd = scope.etcd().await;
    let p = &scope.prefix;
    register(&mut etcd, p, "greeter", "v1", "10.70.0.1:50051", 7, 300).await;
    register(&mut etcd, p, "greeter", "v1", "10.70.0.2:50051", 7, 300).await;
    let kube = scope.kube().await;
    let services: Api<Service> = Api::namespaced(kube.clone(), ns);
    let slices: Api<EndpointSlice> = Api::namespaced(kube, ns);
    let s = converged(&slices, "greeter-v1", &["10.70.0.1", "10.70.0.2"]).await;
    assert_eq!(s.len(), 1, "one slice of up to 100");
    assert_eq!(s[0].annotations()["etcd-bridge.io/weight"], "7");
    converged(&slices, "greeter", &["10.70.0.1", "10.70.0.2"]).await;
    let svc = services.get("greeter-v1").await.unwrap();
    assert_eq!(
        svc.labels()["etcd-bridge.io/instance"],
        release,
        "instance = release"
    );

    // ... and writes back EtcdRegistrations of another namespace, as the policy allows.
    let apply = |yaml: String| {
        let out = bed.cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let spec = r#"{service: billing, version: v2, weight: 4, addresses: ["10.73.0.1:9000"]}"#;
    apply(registration(&apps, "billing", spec));
    let spec = r#"{service: ledger, addresses: ["10.73.0.2:9000"]}"#;
    apply(registration(&apps, "ledger", spec));
    let key = format!("{p}billing/v2/10.73.0.1:9000");
    let value = eventually("the written-back key in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { etcd_value(&mut etcd, &key).await }
    })
    .await;
    let owner = format!(r#""etcd-bridge.io/owner":"{release}/{apps}/billing""#);
    assert!(
        value.contains(r#""weight":4"#) && value.contains(&owner),
        "{value}"
    );
    eventually("billing Ready", WAIT, || async {
        (condition(bed, &apps, "billing", "Ready") == "True/Registered").then_some(())
    })
    .await;
    eventually("ledger denied by the chart's policy", WAIT, || async {
        (condition(bed, &apps, "ledger", "Denied").starts_with("True/")).then_some(())
    })
    .await;
    let ledger = etcd_value(&mut etcd, &format!("{p}ledger/10.73.0.2:9000")).await;
    assert_eq!(ledger, None, "a denied registration is not written");
    // Every write was the chart's ServiceAccount's, and none was refused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes = [
        audit_writes(&audit, mark, ns),
        audit_writes(&audit, mark, &apps),
    ]
    .concat();
    let mine: Vec<_> = writes.iter().filter(|w| w.user == sa).collect();
    for (resource, namespace) in [
        ("services", ns),
        ("endpointslices", ns),
        ("leases", ns),
        ("etcdregistrations", apps.as_str()),
        ("events", apps.as_str()),
    ] {
        let done = mine
            .iter()
            .any(|w| w.resource == resource && w.namespace == namespace && w.code < 300);
        assert!(
            done,
            "no successful write of {resource} in {namespace}: {writes:?}"
        );
    }
    let refused: Vec<_> = mine.iter().filter(|w| w.code == 403).collect();
    assert!(refused.is_empty(), "forbidden writes: {refused:?}");
    assert!(!bridge.full_log().contains("forbidden"), "{}", bridge.log());
    assert!(
        services.get_opt("billing-v2").await.unwrap().is_none(),
        "the bridge's own keys are not imported (writeback.importOwn=false)"
    );

    // Upgrade: one value changes, the Deployment's args follow; the bridge, restarted with them,
    // splits the slice.
    let upgrade_values = [&values[..], &["projection.maxEndpointsPerSlice=1".into()]].concat();
    let upgrade = [
        &["upgrade", release, chart(), "-n", ns][..],
        &sets(&upgrade_values),
    ]
    .concat();
    must("helm upgrade", helm_on(bed, &upgrade));
    let history = helm_on(bed, &["history", release, "-n", ns, "-o", "json"]);
    let history: Value = serde_json::from_str(&must("helm history", history)).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    let upgraded = installed_deployment(bed, ns, name);
    assert_eq!(
        flag(&args_of(&upgraded), "--max-endpoints-per-slice"),
        Some("1")
    );
    assert_eq!(
        upgraded["metadata"]["generation"], 2,
        "a new pod template: a rollout"
    );
    bridge.stop();
    let mut bridge = start_as_pod(bed, &upgraded, &kubeconfig, &format!("{name}-5c4b-a"));
    bridge.leading(WAIT).await;
    let s = eventually("two slices of one endpoint", WAIT, || async {
        let s = slices_of(&slices, "greeter-v1").await;
        (s.len() == 2 && s.iter().all(|x| x.endpoints.len() == 1)).then_some(s)
    })
    .await;
    assert_eq!(addresses(&s), ["10.70.0.1", "10.70.0.2"]);
    bridge.stop();

    // Uninstall: Helm's objects go; the CRD (crds/) and what the bridge wrote stay.
    let uninstall = ["uninstall", release, "-n", ns, "--wait"];
    must("helm uninstall", helm_on(bed, &uninstall));
    for obj in &helms_objects {
        assert!(!exists(bed, obj), "helm uninstall left {obj:?}");
    }
    let crd = ["crd", "etcdregistrations.etcd-bridge.io"];
    assert!(
        exists(bed, &crd),
        "Helm keeps the CRDs of crds/ on uninstall"
    );
    for svc in ["greeter-v1", "greeter"] {
        let kept = services.get_opt(svc).await.unwrap().is_some();
        assert!(kept, "the projected Service {svc} stays");
    }
    assert_eq!(
        slices_of(&slices, "greeter-v1").await.len(),
        2,
        "its EndpointSlices stay"
    );
    let lease_obj = format!("etcd-bridge-{release}");
    assert!(
        exists(bed, &["lease", &lease_obj, "-n", ns]),
        "the bridge's Lease stays"
    );
    // EtcdRegistrations stay, with the bridge's finalizer (nobody will remove it now) ...
    let finalizers = kubectl(
        bed,
        &[
            "get",
            "etcdreg",
            "billing",
            "-n",
            &apps,
            "-o",
            "jsonpath={.metadata.finalizers}",
        ],
    );
    assert!(
        finalizers.stdout.contains("etcd-bridge.io/registration"),
        "{}",
        finalizers.stdout
    );
    // ... and their keys stay in etcd only until the stopped bridge's etcd lease runs out.
    let kv = etcd.get(key.as_str(), None).await.unwrap();
    let lease_id = kv.kvs().first().expect("the key, for now").lease();
    let ttl = etcd.lease_time_to_live(lease_id, None).await.unwrap().ttl();
    assert!(
        (0..=30).contains(&ttl),
        "expires within writeback.leaseTTL (30s): {ttl}"
    );
}

/// The etcd TLS Secret and the credentials Secret reach a secured etcd exactly as the chart wires
/// them: Secret keys mounted under the chart's paths and passed as --etcd-*-file, the username and
/// password as env from secretKeyRef (resolved from the cluster's Secrets, as the kubelet would).
#[tokio::test]
async fn the_charts_tls_and_auth_values_reach_an_etcd_with_client_certificates_and_a_password() {
    use etcd_client::{Certificate, ConnectOptions, Identity, Permission, TlsOptions};
    let bed = TestBed::shared();
    let dir = etcd_bridge_testbed::scratch_dir("chart-tls");
    let pki = etcd_bridge_testbed::pki::Pki::generate(&dir.join("pki")).unwrap();
    let flags: Vec<String> = vec![
        format!("--cert-file={}", pki.serving_cert.display()),
        format!("--key-file={}", pki.serving_key.display()),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.ca_cert.display()),
    ];
    let registry = etcd_bridge_testbed::Etcd::start(&dir, "secured", &flags).unwrap();
    let scope = Scope::with_registry("chart-tls", &registry.endpoint());
    let ns = scope.namespace.as_str();
    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca_cert)))
        .identity(Identity::from_pem(
            read(&pki.admin_cert),
            read(&pki.admin_key),
        ));

    // Users: root (to administer) and a bridge user that may only read the prefix.
    let opts = ConnectOptions::new().with_tls(tls.clone());
    let mut admin = etcd_client::Client::connect([registry.endpoint()], Some(opts))
        .await
        .expect("connect to the secured etcd");
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.role_add("root").await.ok();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.role_add("bridge-reader").await.unwrap();
    let read_prefix = Permission::read(scope.prefix.as_str()).with_prefix();
    admin
        .role_grant_permission("bridge-reader", read_prefix)
        .await
        .unwrap();
    admin.user_add("bridge", "s3cret-pw", None).await.unwrap();
    admin
        .user_grant_role("bridge", "bridge-reader")
        .await
        .unwrap();
    admin.auth_enable().await.unwrap();
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_user("root", "root-pw");
    let mut etcd = etcd_client::Client::connect([registry.endpoint()], Some(opts))
        .await
        .expect("connect as root");

    // The Secrets, the way an operator would create them.
    let file = |key: &str, p: &Path| format!("--from-file={key}={}", p.display());
    let (ca, crt, key) = (
        file("ca.crt", &pki.ca_cert),
        file("tls.crt", &pki.admin_cert),
        file("tls.key", &pki.admin_key),
    );
    let create = [
        "create",
        "secret",
        "generic",
        "etcd-client",
        "-n",
        ns,
        &ca,
        &crt,
        &key,
    ];
    must("create the TLS Secret", kubectl(bed, &create));
    let create = [
        "create",
        "secret",
        "generic",
        "etcd-credentials",
        "-n",
        ns,
        "--from-literal=username=bridge",
        "--from-literal=password=s3cret-pw",
    ];
    must("create the credentials Secret", kubectl(bed, &create));
    let values = [
        format!("etcd.endpoints[0]={}", registry.endpoint()),
        format!("etcd.prefixes[0]={}", scope.prefix),
        "etcd.tls.enabled=true".into(),
        "etcd.tls.secretName=etcd-client".into(),
        "etcd.auth.secretName=etcd-credentials".into(),
        "writeback.enabled=false".into(),
    ];
    let install = [&["install", "sec", chart(), "-n", ns][..], &sets(&values)].concat();
    must("helm install", helm_on(bed, &install));
    let deployment = installed_deployment(bed, ns, "sec-etcd-bridge");
    let ca_file = format!("{TLS_DIR}/ca.crt");
    assert_eq!(
        flag(&args_of(&deployment), "--etcd-ca-file"),
        Some(ca_file.as_str())
    );
    let kubeconfig = chart_sa_kubeconfig(bed, ns, "sec-etcd-bridge");
    let mut bridge = start_as_pod(bed, &deployment, &kubeconfig, "sec-etcd-bridge-1");
    bridge.ready(WAIT).await;
    bridge.leading(WAIT).await;
    register(
        &mut etcd,
        &scope.prefix,
        "vault",
        "",
        "10.71.0.1:8200",
        2,
        300,
    )
    .await;
    let slices: Api<EndpointSlice> = Api::namespaced(scope.kube().await, ns);
    let s = converged(&slices, "vault", &["10.71.0.1"]).await;
    assert_eq!(s[0].annotations()["etcd-bridge.io/weight"], "2");
    assert!(
        !bridge.full_log().contains("s3cret-pw"),
        "the password is never logged"
    );
    bridge.stop();
    must(
        "helm uninstall",
        helm_on(bed, &["uninstall", "sec", "-n", ns]),
    );
}

// ---------------------------------------------------------------------------------------------
// 5. SIGTERM hands leadership over at once
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn with_the_charts_args_a_sigtermed_leader_hands_over_to_the_standby_within_2s() {
    let scope = Scope::new("chart-sigterm");
    let bed = scope.bed;
    let ns = scope.namespace.as_str();
    let values = [
        format!("etcd.endpoints[0]={}", scope.registry_endpoint),
        format!("etcd.prefixes[0]={}", scope.prefix),
        // Write-back of this namespace only (a Role, not the ClusterRole).
        format!("writeback.namespace={ns}"),
        format!("writeback.prefix={}wb/", scope.prefix),
    ];
    let install = [&["install", "ha", chart(), "-n", ns][..], &sets(&values)].concat();
    must("helm install", helm_on(bed, &install));
    let deployment = installed_deployment(bed, ns, "ha-etcd-bridge");
    let lease_duration = flag(&args_of(&deployment), "--lease-duration")
        .unwrap()
        .to_string();
    assert_eq!(lease_duration, "15s", "the chart's default");
    let kubeconfig = chart_sa_kubeconfig(bed, ns, "ha-etcd-bridge");

    let mut a = start_as_pod(bed, &deployment, &kubeconfig, "ha-etcd-bridge-6f8-a");
    a.leading(WAIT).await;
    let mut b = start_as_pod(bed, &deployment, &kubeconfig, "ha-etcd-bridge-6f8-b");
    b.ready(WAIT).await;
    assert_eq!(b.metric("etcd_bridge_leader"), Some(0.0), "b stands by");
    // A field of the chart's Lease, by JSONPath.
    let lease = |path: &str| {
        let args = ["get", "lease", "etcd-bridge-ha", "-n", ns, "-o", path];
        kubectl(bed, &args)
    };
    let holder = must("read the Lease", lease("jsonpath={.spec.holderIdentity}"));
    assert_eq!(
        holder, "ha-etcd-bridge-6f8-a",
        "POD_NAME is the Lease identity"
    );

    let mut etcd = scope.etcd().await;
    register(&mut etcd, &scope.prefix, "ha", "v1", "10.72.0.1:80", 1, 300).await;
    let slices: Api<EndpointSlice> = Api::namespaced(scope.kube().await, ns);
    converged(&slices, "ha-v1", &["10.72.0.1"]).await;

    let t0 = Instant::now();
    a.proc.stop(Duration::from_secs(10));
    let stopped = t0.elapsed();
    let log = a.full_log();
    assert!(
        log.contains("leadership released"),
        "SIGTERM releases the Lease\n{}",
        a.log()
    );
    assert!(!log.contains("panicked"), "{}", a.log());
    // A change right after the SIGTERM, for the new leader to write.
    register(&mut etcd, &scope.prefix, "ha", "v1", "10.72.0.2:80", 1, 300).await;
    let deadline = t0 + Duration::from_secs(2);
    while b.metric("etcd_bridge_leader") != Some(1.0) && Instant::now() < deadline {
        assert!(b.proc.is_running(), "{}", b.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = t0.elapsed();
    let now = lease("jsonpath={.spec}").stdout;
    assert_eq!(
        b.metric("etcd_bridge_leader"),
        Some(1.0),
        "the standby did not lead within 2 s of the SIGTERM (the old leader exited after \
         {stopped:?} and released the Lease, now {now}): it waits for the {lease_duration} \
         lease it last saw to run out instead of noticing the release\n{}",
        b.log()
    );
    eprintln!("the standby led {took:?} after the SIGTERM (the leader exited after {stopped:?})");
    converged(&slices, "ha-v1", &["10.72.0.1", "10.72.0.2"]).await;
    b.stop();
}
