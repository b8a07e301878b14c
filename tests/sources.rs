//! Several registries in one bridge: the flags' etcd (source `default`) and another one from an
//! EtcdSource object, two real etcd clusters at once. Each source fails on its own.

mod common;

use common::*;
use etcd_bridge_testbed::first_seen::FirstSeen;
use kube::ResourceExt;
use std::path::Path;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn source(scope: &Scope, name: &str, endpoint: &str, extra: &str) {
    scope.apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: {name}}}\nspec: {{endpoints: [\"{endpoint}\"], prefixes: [{{prefix: {}}}]{extra}}}\n",
        scope.prefix
    ));
}

/// `jsonpath` of the EtcdSource `name`.
fn status(scope: &Scope, name: &str, path: &str) -> String {
    scope.kubectl(&["get", "etcdsource", name, "-o", &format!("jsonpath={path}")])
}

fn condition(scope: &Scope, name: &str, type_: &str) -> String {
    status(
        scope,
        name,
        &format!("{{.status.conditions[?(@.type==\"{type_}\")].status}}"),
    )
}

/// The reasons of the Events recorded on the EtcdSource `name`.
fn event_reasons(scope: &Scope, name: &str) -> Vec<String> {
    let out = scope.kubectl(&["get", "events.events.k8s.io", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("events as JSON");
    (v["items"].as_array().into_iter().flatten())
        .filter(|e| e["regarding"]["kind"] == "EtcdSource" && e["regarding"]["name"] == name)
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect()
}

async fn connect(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect to a registry etcd")
}

async fn put(etcd: &mut etcd_client::Client, prefix: &str, name: &str, addr: &str) {
    etcd.put(
        seed_key(prefix, name, "", addr),
        seed_value(name, "", addr, 1),
        None,
    )
    .await
    .expect("put a registration");
}

fn label(svc: &k8s_openapi::api::core::v1::Service, key: &str) -> String {
    svc.labels().get(key).cloned().unwrap_or_default()
}

/// The Service whose name starts with `prefix`, other than `not`.
async fn service_like(apis: &Apis, prefix: &str, not: &str) -> String {
    eventually(&format!("a Service {prefix}-*"), WAIT, || async {
        let list = apis.services.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .map(|s| s.name_any())
            .find(|n| n.starts_with(prefix) && n != not)
    })
    .await
}

#[tokio::test]
async fn two_registries_each_fail_on_their_own() {
    let a = private_etcd("sources-a");
    let b = private_etcd("sources-b");
    let scope = Scope::with_registry("sources", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    source(&scope, "region-b", &b.endpoint(), ", staleAfter: 6s");
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true", "--etcd-timeout=2s"]);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let (mut ea, mut eb) = (scope.etcd().await, connect(&b.endpoint()).await);
    let p = scope.prefix.clone();

    put(&mut ea, &p, "alpha", "10.73.0.1:80").await;
    put(&mut eb, &p, "beta", "10.73.1.1:80").await;
    // Both registries want `greeter`: the first in sort order (default) gets the name.
    put(&mut ea, &p, "greeter", "10.73.0.9:80").await;
    put(&mut eb, &p, "greeter", "10.73.1.9:80").await;
    converged(&apis, "alpha", &["10.73.0.1"], WAIT).await;
    converged(&apis, "beta", &["10.73.1.1"], WAIT).await;
    converged(&apis, "greeter", &["10.73.0.9"], WAIT).await;
    let other = service_like(&apis, "greeter-", "greeter").await;
    converged(&apis, &other, &["10.73.1.9"], WAIT).await;
    let svc = |n: &str| {
        let api = apis.services.clone();
        let n = n.to_owned();
        async move { api.get(&n).await.expect("the Service") }
    };
    assert_eq!(
        label(&svc("alpha").await, "etcd-bridge.io/source"),
        "default"
    );
    assert_eq!(
        label(&svc("beta").await, "etcd-bridge.io/source"),
        "region-b"
    );
    assert_eq!(
        label(&svc(&other).await, "etcd-bridge.io/source"),
        "region-b"
    );
    for s in slices_of(&apis.slices, "beta").await {
        assert_eq!(s.labels()["etcd-bridge.io/source"], "region-b");
    }
    // Its status tells the story: connected, synced, 2 keys, 2 endpoints, this generation.
    eventually("region-b's status", WAIT, || async {
        let s = |p: &str| status(&scope, "region-b", p);
        (condition(&scope, "region-b", "Connected") == "True"
            && condition(&scope, "region-b", "Synced") == "True"
            && condition(&scope, "region-b", "Stale") == "False"
            && s("{.status.keys}/{.status.endpoints}") == "2/2"
            && s("{.status.observedGeneration}") == s("{.metadata.generation}")
            && !s("{.status.revision}").is_empty())
        .then_some(())
    })
    .await;

    // Region B hangs (SIGSTOP: its TCP connections stay open, it answers nothing).
    b.freeze();
    let frozen = Instant::now();
    eventually("region-b noticed down", WAIT, || async {
        (condition(&scope, "region-b", "Connected") == "False").then_some(())
    })
    .await;
    // Readiness follows the flags' registry: another one down is its status's news.
    assert!(matches!(bridge.get("/readyz"), Some((200, _))));
    let detected = frozen.elapsed();
    // The other registry carries on.
    let put_at = Instant::now();
    put(&mut ea, &p, "alpha2", "10.73.0.2:80").await;
    converged(&apis, "alpha2", &["10.73.0.2"], WAIT).await;
    let carried_on = put_at.elapsed();
    // Region B's endpoints stay until its staleAfter, then go, unblocked by the guard.
    assert!(
        holds(&apis, "beta", &["10.73.1.1"]).await.is_some(),
        "kept while not stale"
    );
    eventually("region-b's Services removed once stale", WAIT, || async {
        matches!(apis.services.get_opt("beta").await, Ok(None)).then_some(())
    })
    .await;
    let removed_after = frozen.elapsed();
    assert!(
        removed_after >= Duration::from_secs(6),
        "not before staleAfter: {removed_after:?}"
    );
    assert!(matches!(apis.services.get_opt(&other).await, Ok(None)));
    assert_eq!(bridge.metric("etcd_bridge_stale_sources"), Some(1.0));
    eventually("Stale=True, with a Warning Event", WAIT, || async {
        (condition(&scope, "region-b", "Stale") == "True"
            && condition(&scope, "region-b", "Connected") == "False"
            && event_reasons(&scope, "region-b").contains(&"StaleAfterPassed".to_owned()))
        .then_some(())
    })
    .await;
    let table = scope.kubectl(&["get", "etcdsources", "-o", "wide"]);
    eprintln!("while stale:\n{table}");
    assert!(!status(&scope, "region-b", "{.status.lastError}").is_empty());
    assert!(
        holds(&apis, "greeter", &["10.73.0.9"]).await.is_some(),
        "default untouched"
    );
    assert!(holds(&apis, "alpha", &["10.73.0.1"]).await.is_some());

    // Region B returns: its Services come back, each object written once.
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    b.thaw();
    let thawed = Instant::now();
    converged(&apis, "beta", &["10.73.1.1"], WAIT).await;
    let back = thawed.elapsed();
    converged(&apis, &other, &["10.73.1.9"], WAIT).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<AuditWrite> =
        audit_writes(&scope.bed.cluster.audit_log(), mark, &scope.namespace)
            .into_iter()
            .filter(|w| w.changes_an_object())
            .collect();
    let mut seen = std::collections::BTreeMap::new();
    for w in &writes {
        *seen
            .entry((w.resource.clone(), w.name.clone()))
            .or_insert(0) += 1;
    }
    eprintln!(
        "figures: region-b seen down {detected:?} after SIGSTOP; other source carried on in {carried_on:?}; region-b removed {removed_after:?} after SIGSTOP (staleAfter 6s); back {back:?} after SIGCONT; {} writes on return: {seen:?}",
        writes.len()
    );
    let detail: Vec<String> = (writes.iter())
        .map(|w| format!("{} {} {} by {}", w.verb, w.resource, w.name, w.user))
        .collect();
    assert!(
        seen.values().all(|n| *n == 1),
        "each object written once on return: {detail:#?}"
    );
    assert_eq!(bridge.metric("etcd_bridge_stale_sources"), Some(0.0));
    eventually("Stale=False again", WAIT, || async {
        (condition(&scope, "region-b", "Stale") == "False"
            && condition(&scope, "region-b", "Connected") == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn bad_sources_never_crash_the_bridge_and_a_deleted_source_takes_its_services() {
    let a = private_etcd("sources-bad-a");
    let b = private_etcd("sources-bad-b");
    let scope = Scope::with_registry("sourcesbad", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    // Overlaps the flags' source (same etcd, same prefix); names a Secret that is not there.
    source(&scope, "overlapping", &a.endpoint(), "");
    source(
        &scope,
        "no-secret",
        &b.endpoint(),
        ", secretRef: {name: etcd-b}",
    );
    source(&scope, "good", &b.endpoint(), ", namePrefix: b-");
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true"]);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let (mut ea, mut eb) = (scope.etcd().await, connect(&b.endpoint()).await);
    let p = scope.prefix.clone();
    put(&mut ea, &p, "alpha", "10.74.0.1:80").await;
    put(&mut eb, &p, "beta", "10.74.1.1:80").await;
    converged(&apis, "alpha", &["10.74.0.1"], WAIT).await;
    // Its namePrefix comes first in the names of its Services.
    converged(&apis, "b-beta", &["10.74.1.1"], WAIT).await;
    let log = bridge.log();
    assert!(
        log.contains("overlaps") && log.contains("Secret `etcd-b`: not found"),
        "bad sources are reported:\n{log}"
    );
    // ... in their status too, naming the field, with a Warning Event.
    eventually("bad sources' status", WAIT, || async {
        let missing = status(&scope, "no-secret", "{.status.lastError}");
        let overlap = status(&scope, "overlapping", "{.status.lastError}");
        (missing.starts_with("spec.secretRef.name: Secret `etcd-b`: not found")
            && overlap.starts_with("spec.prefixes: ")
            && overlap.contains("of source `default`")
            && condition(&scope, "no-secret", "Connected") == "False"
            && event_reasons(&scope, "no-secret").contains(&"Invalid".to_owned())
            && condition(&scope, "good", "Connected") == "True")
            .then_some(())
    })
    .await;
    eprintln!("{}", scope.kubectl(&["get", "etcdsources", "-o", "wide"]));
    // A changed source is restarted: held until listed again, then nothing to write.
    let mark = audit_mark(&scope.bed.cluster.audit_log());
    let patch = r#"{"spec":{"staleAfter":"1h"}}"#;
    scope.kubectl(&[
        "patch",
        "etcdsource",
        "good",
        "--type",
        "merge",
        "-p",
        patch,
    ]);
    eventually("the changed source running again", WAIT, || async {
        let s = |p: &str| status(&scope, "good", p);
        (s("{.status.observedGeneration}") == "2" && condition(&scope, "good", "Synced") == "True")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes: Vec<AuditWrite> =
        audit_writes(&scope.bed.cluster.audit_log(), mark, &scope.namespace)
            .into_iter()
            .filter(|w| w.changes_an_object())
            .collect();
    assert!(writes.is_empty(), "a restart rewrites nothing: {writes:?}");
    assert!(holds(&apis, "b-beta", &["10.74.1.1"]).await.is_some());
    assert_eq!(
        label(
            &apis.services.get("alpha").await.unwrap(),
            "etcd-bridge.io/source"
        ),
        "default",
        "the overlapping source imported nothing"
    );
    // Deleting the good source removes its Services; the flags' source keeps its own.
    scope.kubectl(&["delete", "etcdsource", "good"]);
    eventually("region good's Services removed", WAIT, || async {
        matches!(apis.services.get_opt("b-beta").await, Ok(None)).then_some(())
    })
    .await;
    assert!(holds(&apis, "alpha", &["10.74.0.1"]).await.is_some());
    assert!(bridge.proc.is_running(), "the bridge is still up");
}

/// Puts `n` services, `gap` apart, and returns each one's propagation (PUT sent to Service seen).
async fn propagation(
    etcd: &mut etcd_client::Client,
    prefix: &str,
    base: &str,
    n: usize,
    seen: &FirstSeen,
) -> Vec<Duration> {
    let mut sent = Vec::new();
    for i in 0..n {
        let name = format!("{base}{i}");
        sent.push((name.clone(), Instant::now()));
        put(
            etcd,
            prefix,
            &name,
            &format!("10.75.{}.{}:80", i / 250, i % 250 + 1),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut out = Vec::new();
    for (name, at) in sent {
        let seen_at = eventually(&format!("Service {name}"), WAIT, || async {
            seen.at(&name)
        })
        .await;
        out.push(seen_at.saturating_duration_since(at));
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::test]
async fn a_frozen_source_leaves_the_others_propagation_unchanged() {
    let a = private_etcd("sources-prop-a");
    let b = private_etcd("sources-prop-b");
    let scope = Scope::with_registry("sourcesprop", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    source(&scope, "frozen", &b.endpoint(), "");
    // Frequent drift repairs: each reads every source again, and must not wait on the frozen one.
    let flags = [
        "--sources=true",
        "--etcd-timeout=2s",
        "--resync-interval=3s",
    ];
    let mut bridge = scope.bridge(&kubeconfig, &flags);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let (mut ea, mut eb) = (scope.etcd().await, connect(&b.endpoint()).await);
    let p = scope.prefix.clone();
    for i in 0..20 {
        put(
            &mut eb,
            &p,
            &format!("b{i}"),
            &format!("10.76.0.{}:80", i + 1),
        )
        .await;
    }
    converged(&apis, "b19", &["10.76.0.20"], WAIT).await;
    let seen = FirstSeen::start(apis.services.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = 40;
    let before = propagation(&mut ea, &p, "before", n, &seen).await;
    b.freeze();
    // Both while the hang is not noticed yet (keepalive) and after.
    let during = propagation(&mut ea, &p, "during", n, &seen).await;
    eventually("the frozen source seen down", WAIT, || async {
        (condition(&scope, "frozen", "Connected") == "False").then_some(())
    })
    .await;
    let after = propagation(&mut ea, &p, "after", n, &seen).await;
    b.thaw();
    let line = |what: &str, d: &[Duration]| {
        format!("{what}: p50 {:?} p99 {:?}", pct(d, 0.5), pct(d, 0.99))
    };
    eprintln!(
        "figures (n={n} each, one PUT every 100 ms): {}; {}; {}",
        line("both answering", &before),
        line("other frozen, not yet noticed", &during),
        line("other frozen, noticed down", &after)
    );
    assert!(holds(&apis, "b0", &["10.76.0.1"]).await.is_some(), "kept");
    // Within noise: a frozen source costs the others no waiting, not even at a drift repair
    // (every 3 s here; reading the frozen source again would take --etcd-timeout).
    for d in [&during, &after] {
        assert!(
            pct(d, 0.5) <= pct(&before, 0.5) * 3 + Duration::from_millis(50),
            "{} vs {}",
            line("frozen", d),
            line("before", &before)
        );
    }
    assert!(
        pct(&after, 0.99) < Duration::from_millis(1500),
        "a drift repair waited on the frozen source: {}",
        line("after", &after)
    );
}

#[tokio::test]
async fn preview_of_an_etcdsource_file_shows_what_run_would_write_for_it() {
    let scope = Scope::new("sourcepreview");
    let mut etcd = scope.etcd().await;
    put(&mut etcd, &scope.prefix, "greeter", "10.77.0.1:80").await;
    let file = scope
        .bed
        .dir
        .join(format!("{}-source.yaml", scope.namespace));
    let yaml = format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: region-p}}\nspec: {{endpoints: [\"{}\"], prefixes: [{{prefix: {}}}], namePrefix: p-}}\n",
        scope.registry_endpoint, scope.prefix
    );
    std::fs::write(&file, yaml).unwrap();
    let out = std::process::Command::new(bridge_binary())
        .args(["preview", "-o", "json", "--namespace", &scope.namespace])
        .arg("--source-file")
        .arg(&file)
        .output()
        .expect("run etcd-bridge preview");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("a List");
    let svc = (list["items"].as_array().unwrap().iter())
        .find(|o| o["kind"] == "Service")
        .expect("a Service");
    assert_eq!(svc["metadata"]["name"], "p-greeter", "{stdout}");
    assert_eq!(
        svc["metadata"]["labels"]["etcd-bridge.io/source"],
        "region-p"
    );
    // A source that would be refused says why, naming the field.
    std::fs::write(
        &file,
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {name: x}\nspec: {endpoints: [\"http://e:1\"], secretRef: {name: s}, prefixes: [{prefix: /}]}\n",
    )
    .unwrap();
    let out = std::process::Command::new(bridge_binary())
        .args(["preview", "--source-file"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.secretRef.name: Secret `s`: give it with --secret-file"),
        "{err}"
    );
}

#[tokio::test]
async fn a_source_connects_with_the_tls_client_certificate_of_its_secret() {
    use etcd_bridge_testbed::pki::Pki;
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let dir = scratch_dir("sources-tls");
    let pki = Pki::generate(&dir.join("pki")).unwrap();
    let flags = vec![
        format!("--cert-file={}", pki.serving_cert.display()),
        format!("--key-file={}", pki.serving_key.display()),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.ca_cert.display()),
    ];
    let secured = EtcdServer::start(&dir, "tls", &flags).expect("etcd with client-cert auth");
    assert!(secured.endpoint().starts_with("https://"));
    let a = private_etcd("sources-tls-a");
    let scope = Scope::with_registry("sourcestls", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    // The Secret the chart's Role lets the bridge read: CA, client certificate and key.
    let files = [
        ("ca.crt", &pki.ca_cert),
        ("tls.crt", &pki.admin_cert),
        ("tls.key", &pki.admin_key),
    ];
    let mut args = vec![
        "create".to_owned(),
        "secret".into(),
        "generic".into(),
        "etcd-b".into(),
    ];
    args.extend(
        files
            .iter()
            .map(|(k, p)| format!("--from-file={k}={}", p.display())),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The source first, its Secret not there yet: the source is refused until it comes.
    source(
        &scope,
        "secured",
        &secured.endpoint(),
        ", secretRef: {name: etcd-b}",
    );
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true"]);
    bridge.ready(WAIT).await;
    eventually(
        "the source refused for its missing Secret",
        WAIT,
        || async {
            status(&scope, "secured", "{.status.conditions}")
                .contains("etcd-b")
                .then_some(())
        },
    )
    .await;

    let read = |p: &Path| std::fs::read(p).unwrap();
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca_cert)))
        .identity(Identity::from_pem(
            read(&pki.admin_cert),
            read(&pki.admin_key),
        ));
    let mut etcd = etcd_client::Client::connect(
        [secured.endpoint()],
        Some(ConnectOptions::new().with_tls(tls)),
    )
    .await
    .expect("connect with the client certificate");
    put(&mut etcd, &scope.prefix, "vault", "10.78.0.1:443").await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    // The Secret is watched by name: the source starts at once, not at the next 30 s re-read.
    scope.kubectl(&args);
    let created = Instant::now();
    converged(&apis, "vault", &["10.78.0.1"], WAIT).await;
    let took = created.elapsed();
    eprintln!("figures: Secret created -> the source's Service in place after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "the Secret was not watched: {took:?} (re-read every 30 s)"
    );
    assert_eq!(
        label(
            &apis.services.get("vault").await.unwrap(),
            "etcd-bridge.io/source"
        ),
        "secured"
    );
    eventually("Connected=True", WAIT, || async {
        (condition(&scope, "secured", "Connected") == "True").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_flags_registry_expires_after_stale_after_too() {
    let a = private_etcd("sources-flags-stale");
    let scope = Scope::with_registry("flagsstale", &a.endpoint());
    let kubeconfig = scope.bridge_kubeconfig();
    let flags = ["--etcd-timeout=2s", "--stale-after=3s"];
    let mut bridge = scope.bridge(&kubeconfig, &flags);
    bridge.ready(WAIT).await;
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let mut etcd = scope.etcd().await;
    put(&mut etcd, &scope.prefix, "alpha", "10.79.0.1:80").await;
    converged(&apis, "alpha", &["10.79.0.1"], WAIT).await;
    assert_eq!(
        label(
            &apis.services.get("alpha").await.unwrap(),
            "etcd-bridge.io/source"
        ),
        "default"
    );
    a.freeze();
    let frozen = Instant::now();
    eventually("the flags' registry removed once stale", WAIT, || async {
        matches!(apis.services.get_opt("alpha").await, Ok(None)).then_some(())
    })
    .await;
    eprintln!(
        "figures: removed {:?} after SIGSTOP (--stale-after=3s)",
        frozen.elapsed()
    );
    assert_eq!(bridge.metric("etcd_bridge_stale_sources"), Some(1.0));
    a.thaw();
    converged(&apis, "alpha", &["10.79.0.1"], WAIT).await;
    assert_eq!(bridge.metric("etcd_bridge_stale_sources"), Some(0.0));
}

/// The names of the Services in `apis`' namespace.
async fn service_names(apis: &Apis) -> Vec<String> {
    let list = apis.services.list(&Default::default()).await.expect("list");
    let mut names: Vec<String> = list.items.iter().map(|s| s.name_any()).collect();
    names.sort();
    names
}

/// Each source projects into its targetNamespace (one of `--target-namespaces`), with names of
/// that namespace; a namespace the bridge is not given is refused in the status; a source that
/// moves takes its Services along.
#[tokio::test]
async fn a_source_projects_into_its_target_namespace_and_moves_with_it() {
    let a = private_etcd("sources-ns-a");
    let b = private_etcd("sources-ns-b");
    let scope = Scope::with_registry("sourcesns", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    let eu = unique("sourcesns-eu");
    let cluster = &scope.bed.cluster;
    cluster
        .create_namespace(&eu)
        .unwrap_or_else(|e| panic!("{e}"));
    let out = cluster.kubectl_stdin(
        &["apply", "-n", &eu, "-f", "-"],
        &import_role(&scope.namespace),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra = format!(", targetNamespace: {eu}");
    source(&scope, "region-eu", &b.endpoint(), &extra);
    source(
        &scope,
        "region-us",
        &b.endpoint(),
        ", targetNamespace: not-given",
    );
    let target = format!("--target-namespaces={eu}");
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true", &target]);
    bridge.ready(WAIT).await;
    let kube = scope.kube().await;
    let (home, away) = (
        Apis::new(kube.clone(), &scope.namespace),
        Apis::new(kube, &eu),
    );
    let (mut ea, mut eb) = (scope.etcd().await, connect(&b.endpoint()).await);
    let p = scope.prefix.clone();

    put(&mut ea, &p, "alpha", "10.80.0.1:80").await;
    put(&mut eb, &p, "beta", "10.80.1.1:80").await;
    // The same name in two namespaces is no contest: each namespace has its own names.
    put(&mut ea, &p, "greeter", "10.80.0.9:80").await;
    put(&mut eb, &p, "greeter", "10.80.1.9:80").await;
    converged(&home, "alpha", &["10.80.0.1"], WAIT).await;
    converged(&home, "greeter", &["10.80.0.9"], WAIT).await;
    converged(&away, "beta", &["10.80.1.1"], WAIT).await;
    converged(&away, "greeter", &["10.80.1.9"], WAIT).await;
    assert_eq!(service_names(&home).await, ["alpha", "greeter"]);
    assert_eq!(service_names(&away).await, ["beta", "greeter"]);
    let beta = away.services.get("beta").await.expect("beta");
    assert_eq!(label(&beta, "etcd-bridge.io/source"), "region-eu");
    for s in slices_of(&away.slices, "greeter").await {
        assert_eq!(s.labels()["etcd-bridge.io/source"], "region-eu");
    }
    // The gauges add up every namespace's Services.
    let services = || async { (bridge.metric("etcd_bridge_services") == Some(4.0)).then_some(()) };
    eventually("etcd_bridge_services 4", WAIT, services).await;
    // A namespace the bridge was not given: refused, naming the flag to add it with.
    eventually("region-us refused, region-eu synced", WAIT, || async {
        let why = status(&scope, "region-us", "{.status.lastError}");
        (why.starts_with("spec.targetNamespace: `not-given`")
            && why.contains("add `not-given` to --target-namespaces")
            && condition(&scope, "region-eu", "Synced") == "True"
            && status(&scope, "region-eu", "{.status.keys}") == "2")
            .then_some(())
    })
    .await;
    assert!(matches!(bridge.get("/readyz"), Some((200, _))));

    // region-eu moves home: its Services leave `eu` and arrive beside default's, where
    // `greeter` is taken and region-eu's gets a suffix (the name in use keeps its owner).
    let moved = Instant::now();
    let patch = format!(r#"{{"spec":{{"targetNamespace":"{}"}}}}"#, scope.namespace);
    scope.kubectl(&[
        "patch",
        "etcdsource",
        "region-eu",
        "--type",
        "merge",
        "-p",
        &patch,
    ]);
    converged(&home, "beta", &["10.80.1.1"], WAIT).await;
    let arrived = moved.elapsed();
    let other = service_like(&home, "greeter-", "greeter").await;
    converged(&home, &other, &["10.80.1.9"], WAIT).await;
    eventually("region-eu's Services gone from eu", WAIT, || async {
        service_names(&away).await.is_empty().then_some(())
    })
    .await;
    let left = moved.elapsed();
    assert!(holds(&home, "greeter", &["10.80.0.9"]).await.is_some());
    eventually("etcd_bridge_services still 4", WAIT, services).await;
    eprintln!("figures: moved namespace: arrived {arrived:?}, left the old one {left:?}");
    assert!(bridge.proc.is_running());
}

/// A target namespace the bridge was given no Role in: `/readyz` names it and the log says
/// what to grant; every other namespace carries on.
#[tokio::test]
async fn a_target_namespace_without_rights_is_named_and_the_others_carry_on() {
    let a = private_etcd("sources-ns-denied");
    let scope = Scope::with_registry("sourcesdenied", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    scope.apply(SOURCES_ROLE);
    let denied = unique("sourcesdenied-x");
    let cluster = &scope.bed.cluster;
    cluster
        .create_namespace(&denied)
        .unwrap_or_else(|e| panic!("{e}"));
    let target = format!("--target-namespaces={denied}");
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true", &target]);
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let mut etcd = scope.etcd().await;
    put(&mut etcd, &scope.prefix, "alpha", "10.81.0.1:80").await;
    converged(&apis, "alpha", &["10.81.0.1"], WAIT).await;
    let watch_denied = format!("cannot watch Services in namespace {denied}");
    eventually(
        "the namespace named in /readyz and the log",
        WAIT,
        || async {
            let log = bridge.log();
            match bridge.get("/readyz") {
                Some((503, why)) if why.contains(&denied) && log.contains(&watch_denied) => {
                    Some(())
                }
                _ => None,
            }
        },
    )
    .await;
    assert!(bridge.log().contains("sources.targetNamespaces"));
    assert!(bridge.proc.is_running());
}

/// A status write that fails (here: not allowed yet) is tried again within seconds, not at the
/// next change or the 30 s re-read.
#[tokio::test]
async fn a_failed_status_write_is_retried_soon() {
    let a = private_etcd("sources-retry");
    let scope = Scope::with_registry("sourcesretry", &a.endpoint());
    install_sources_crd(&scope);
    let kubeconfig = scope.bridge_kubeconfig();
    let no_status = SOURCES_ROLE.replace("etcdsources/status", "etcdsources/scale");
    scope.apply(&no_status);
    source(
        &scope,
        "quiet",
        &a.endpoint(),
        ", secretRef: {name: etcd-b}",
    );
    let mut bridge = scope.bridge(&kubeconfig, &["--sources=true"]);
    bridge.ready(WAIT).await;
    eventually("a refused status write", WAIT, || async {
        bridge
            .log()
            .contains("could not write the EtcdSource status")
            .then_some(())
    })
    .await;
    scope.apply(SOURCES_ROLE);
    let granted = Instant::now();
    eventually("the status written once allowed", WAIT, || async {
        status(&scope, "quiet", "{.status.lastError}")
            .contains("etcd-b")
            .then_some(())
    })
    .await;
    let took = granted.elapsed();
    eprintln!("figures: status written {took:?} after the write was allowed");
    assert!(
        took < Duration::from_secs(10),
        "retried at the next change or re-read only: {took:?}"
    );
}

/// Two replicas with leader election: only the leader writes the EtcdSource status; when it dies,
/// the standby leads and the status keeps following the source. Each replica runs as a
/// ServiceAccount of its own, so the audit log says who wrote each status.
#[tokio::test]
async fn with_two_replicas_only_the_leader_writes_status_and_the_standby_takes_over() {
    let a = private_etcd("sources-ha-a");
    let b = private_etcd("sources-ha-b");
    let scope = Scope::with_registry("sourcesha", &a.endpoint());
    install_sources_crd(&scope);
    scope.bridge_kubeconfig(); // the Role etcd-bridge
    scope.apply(SOURCES_ROLE);
    let replicas = ["r0", "r1"];
    for sa in replicas {
        scope.apply(&format!(
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {sa}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge}}\nsubjects:\n- {{kind: ServiceAccount, name: {sa}}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {sa}-sources}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: etcd-bridge-sources}}\nsubjects:\n- {{kind: ServiceAccount, name: {sa}}}\n"
        ));
    }
    source(&scope, "region-b", &b.endpoint(), "");
    let audit = scope.bed.cluster.audit_log();
    let from = audit_mark(&audit);
    let start = |id: &str| {
        let path = scope
            .bed
            .dir
            .join(format!("{}-{id}.kubeconfig", scope.namespace));
        let kubeconfig = (scope.bed.cluster)
            .service_account_kubeconfig(&scope.namespace, id, &path)
            .expect("TokenRequest for a replica");
        let identity = format!("--identity={id}");
        scope.bridge(
            &kubeconfig,
            &["--sources=true", "--lease-duration=3s", identity.as_str()],
        )
    };
    let mut leader = start("r0");
    leader.leading(WAIT).await;
    let mut standby = start("r1");
    standby.ready(WAIT).await;
    let mut eb = connect(&b.endpoint()).await;
    let p = scope.prefix.clone();
    put(&mut eb, &p, "beta", "10.77.1.1:80").await;
    let keys = |n: &'static str| {
        let scope = &scope;
        move || async move { (status(scope, "region-b", "{.status.keys}") == n).then_some(()) }
    };
    eventually("region-b's status counting 1 key", WAIT, keys("1")).await;

    leader.proc.kill();
    let killed = Instant::now();
    put(&mut eb, &p, "gamma", "10.77.1.2:80").await;
    standby.leading(WAIT).await;
    eventually("region-b's status counting 2 keys", WAIT, keys("2")).await;
    eprintln!(
        "figures: leader killed -> the standby's status write counted the new key after {:?} (Lease 3 s)",
        killed.elapsed()
    );

    let writers: Vec<String> = audit_writes(&audit, from, &scope.namespace)
        .into_iter()
        .filter(|w| w.resource == "etcdsources" && (200..300).contains(&w.code))
        .map(|w| w.user.rsplit(':').next().unwrap_or_default().to_owned())
        .collect();
    let mut runs: Vec<&str> = writers.iter().map(String::as_str).collect();
    runs.dedup();
    assert_eq!(
        runs,
        ["r0", "r1"],
        "status written by the leader only, then by the new leader: {writers:?}"
    );
    standby.stop();
}
