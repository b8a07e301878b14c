//! A secured registry etcd: TLS with client-certificate authentication, and username/password
//! authentication (etcd 3.4, `auth enable`). The bridge connects with the right credentials and
//! projects; with wrong ones it logs a clear error that names etcd and says what to check, keeps
//! running and retries with backoff (no panic, no crash loop), and says so on /readyz.

mod common;

use common::*;
use etcd_bridge_testbed::Etcd as EtcdServer;
use etcd_bridge_testbed::pki::Pki;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, Permission, TlsOptions};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::path::{Path, PathBuf};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A private etcd serving TLS, requiring client certificates signed by `pki`'s CA.
fn tls_etcd(dir: &Path, pki: &Pki) -> EtcdServer {
    let flags = vec![
        format!("--cert-file={}", pki.serving_cert.display()),
        format!("--key-file={}", pki.serving_key.display()),
        "--client-cert-auth".into(),
        format!("--trusted-ca-file={}", pki.ca_cert.display()),
    ];
    EtcdServer::start(dir, "tls", &flags).expect("start etcd with TLS and client-cert auth")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// TLS options: trust `ca`, present `identity` (cert, key) if any.
fn tls(ca: &Path, identity: Option<(&Path, &Path)>) -> TlsOptions {
    let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)));
    if let Some((cert, key)) = identity {
        t = t.identity(Identity::from_pem(read(cert), read(key)));
    }
    t
}

/// A private plain-HTTP etcd with authentication on: `root` (password `root-pw`) and `bridge`
/// (password `bridge-pw`), who may only read `prefix`. Returns it and a root client.
async fn auth_etcd(dir: &Path, prefix: &str) -> (EtcdServer, Client) {
    let server = EtcdServer::start(dir, "auth", &[]).expect("start etcd");
    let mut c = Client::connect([server.endpoint()], None)
        .await
        .expect("connect to etcd");
    c.user_add("root", "root-pw", None).await.unwrap();
    c.role_add("root").await.ok(); // the root role may already exist
    c.user_grant_role("root", "root").await.unwrap();
    c.role_add("bridge-reader").await.unwrap();
    let perm = Permission::read(prefix).with_prefix();
    c.role_grant_permission("bridge-reader", perm)
        .await
        .unwrap();
    c.user_add("bridge", "bridge-pw", None).await.unwrap();
    c.user_grant_role("bridge", "bridge-reader").await.unwrap();
    c.auth_enable().await.unwrap();
    let opts = ConnectOptions::new().with_user("root", "root-pw");
    let root = Client::connect([server.endpoint()], Some(opts))
        .await
        .expect("connect as root");
    (server, root)
}

async fn projected(scope: &Scope, service: &str, address: &str) {
    let api: Api<EndpointSlice> = Api::namespaced(scope.kube().await, &scope.namespace);
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={service}"));
    eventually(&format!("{service} projected"), WAIT, || async {
        let slices = api.list(&lp).await.ok()?.items;
        let hit = slices.iter().any(|s| {
            s.endpoints
                .iter()
                .any(|e| e.addresses.iter().any(|a| a == address))
                && s.annotations().contains_key("etcd-bridge.io/weight")
        });
        hit.then_some(())
    })
    .await
}

/// The lines of `log` the bridge logged about etcd at WARN or ERROR level (its own name, in the
/// log target or the field names, does not count as a mention of etcd).
fn etcd_error_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .filter(|l| {
            l.replace("etcd_bridge", "")
                .replace("etcd-bridge", "")
                .contains("etcd")
        })
        .collect()
}

/// The bridge failed to reach etcd and handles it as it should: it runs on, retries with growing
/// waits, logs errors that name etcd, what went wrong (`cause`) and the flags to check (`flags`),
/// never panics, and /readyz says etcd is unreachable while /healthz stays up (no restart by the
/// kubelet). EVERY error line about etcd names the cause and the flags, not just some of them.
async fn refused_clearly(
    bridge: &mut Bridge,
    endpoint: &str,
    cause: &[&str],
    flags: &[&str],
) -> String {
    let failures = |log: &str| log.matches("etcd watch failed").count();
    eventually("five failed attempts in the log", WAIT, || async {
        (failures(&bridge.full_log()) >= 5).then_some(())
    })
    .await;
    // It keeps running and keeps retrying, and is not ready for lack of etcd.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        bridge.proc.is_running(),
        "the bridge exited\n{}",
        bridge.log()
    );
    let (code, why) = bridge.get("/readyz").expect("GET /readyz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("etcd is unreachable"), "{why}");
    assert_eq!(bridge.get("/healthz").map(|r| r.0), Some(200), "alive");
    assert_eq!(bridge.metric("etcd_bridge_etcd_connected"), Some(0.0));
    let seen = failures(&bridge.full_log());
    eventually("retries go on", WAIT, || async {
        (failures(&bridge.full_log()) > seen).then_some(())
    })
    .await;
    let log = bridge.full_log();
    assert!(
        !log.contains("panicked") && !log.contains("backtrace"),
        "{log}"
    );
    let lines = etcd_error_lines(&log);
    assert!(lines.len() >= 6, "error lines about etcd\n{log}");
    let wrong: Vec<&&str> = lines
        .iter()
        .filter(|l| {
            !l.contains(&format!("etcd at {endpoint}"))
                || !cause.iter().all(|c| l.contains(c))
                || !flags.iter().all(|f| l.contains(f))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} error lines about etcd do not name etcd, the cause {cause:?} and the flags \
         {flags:?} to check:\n{wrong:#?}",
        wrong.len(),
        lines.len()
    );
    let line = lines[0];
    assert!(line.contains("retry_in"), "says when it retries: {line}");
    // The waits grow: backoff, not a hot loop.
    let waits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("etcd watch failed"))
        .filter_map(|l| l.split("retry_in=").nth(1))
        .collect();
    assert!(waits.len() >= 4, "{waits:?}");
    line.to_string()
}

#[tokio::test]
async fn with_tls_and_a_client_certificate_the_bridge_connects_and_projects() {
    let dir = etcd_bridge_testbed::scratch_dir("etcd-tls");
    let pki = Pki::generate(&dir.join("pki")).unwrap();
    let etcd = tls_etcd(&dir, &pki);
    let scope = Scope::with_registry("etcd-tls", &etcd.endpoint());
    assert!(etcd.endpoint().starts_with("https://"));

    // The etcd really wants a client certificate.
    let no_cert = ConnectOptions::new()
        .with_tls(tls(&pki.ca_cert, None))
        .with_connect_timeout(Duration::from_secs(3));
    let refused = match Client::connect([etcd.endpoint()], Some(no_cert)).await {
        Err(_) => true,
        Ok(mut c) => c.get("/", None).await.is_err(),
    };
    assert!(refused, "etcd served a client without a certificate");

    let identity = (pki.admin_cert.as_path(), pki.admin_key.as_path());
    let opts = ConnectOptions::new().with_tls(tls(&pki.ca_cert, Some(identity)));
    let mut client = Client::connect([etcd.endpoint()], Some(opts))
        .await
        .expect("connect with a client certificate");

    let kubeconfig = scope.bridge_kubeconfig();
    let flags = [
        format!("--etcd-ca-file={}", pki.ca_cert.display()),
        format!("--etcd-cert-file={}", pki.admin_cert.display()),
        format!("--etcd-key-file={}", pki.admin_key.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let mut bridge = scope.bridge(&kubeconfig, &flags);
    bridge.ready(WAIT).await;
    register(
        &mut client,
        &scope.prefix,
        "secure",
        "v1",
        "10.80.0.1:443",
        5,
        300,
    )
    .await;
    projected(&scope, "secure-v1", "10.80.0.1").await;
    assert_eq!(bridge.metric("etcd_bridge_etcd_connected"), Some(1.0));
}

#[tokio::test]
async fn with_a_username_and_password_the_bridge_connects_and_projects() {
    let dir = etcd_bridge_testbed::scratch_dir("etcd-auth");
    let base = unique("etcd-auth");
    let prefix = format!("/{base}/");
    let (etcd, mut root) = auth_etcd(&dir, &prefix).await;
    let scope = Scope::with_registry(&base, &etcd.endpoint());
    // Scope picks its prefix from its namespace; the user may read only `prefix`.
    let scope = Scope { prefix, ..scope };

    // Authentication is really on.
    let mut anonymous = Client::connect([etcd.endpoint()], None).await.unwrap();
    assert!(
        anonymous.get(scope.prefix.as_str(), None).await.is_err(),
        "anonymous read"
    );

    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(
        &kubeconfig,
        &["--etcd-username=bridge", "--etcd-password=bridge-pw"],
    );
    bridge.ready(WAIT).await;
    register(
        &mut root,
        &scope.prefix,
        "authed",
        "",
        "10.81.0.1:80",
        3,
        300,
    )
    .await;
    projected(&scope, "authed", "10.81.0.1").await;
    assert!(
        !bridge.full_log().contains("bridge-pw"),
        "the password is never logged"
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_and_the_bridge_keeps_retrying() {
    let dir = etcd_bridge_testbed::scratch_dir("etcd-badpw");
    let base = unique("etcd-badpw");
    let prefix = format!("/{base}/");
    let (etcd, _root) = auth_etcd(&dir, &prefix).await;
    let scope = Scope::with_registry(&base, &etcd.endpoint());
    let scope = Scope { prefix, ..scope };
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(
        &kubeconfig,
        &["--etcd-username=bridge", "--etcd-password=not-the-password"],
    );
    let line = refused_clearly(
        &mut bridge,
        &etcd.endpoint(),
        &["etcd refused the username or password"],
        &["--etcd-username", "--etcd-password"],
    )
    .await;
    eprintln!("a wrong password: {line}");
    assert!(!bridge.full_log().contains("not-the-password"), "{line}");
}

#[tokio::test]
async fn a_client_certificate_of_another_ca_is_a_clear_error_and_the_bridge_keeps_retrying() {
    let dir = etcd_bridge_testbed::scratch_dir("etcd-badcert");
    let pki = Pki::generate(&dir.join("pki")).unwrap();
    let other = Pki::generate(&dir.join("other-pki")).unwrap();
    let etcd = tls_etcd(&dir, &pki);
    let scope = Scope::with_registry("etcd-badcert", &etcd.endpoint());
    let kubeconfig = scope.bridge_kubeconfig();
    let flags = |ca: &PathBuf, cert: &PathBuf, key: &PathBuf| {
        vec![
            format!("--etcd-ca-file={}", ca.display()),
            format!("--etcd-cert-file={}", cert.display()),
            format!("--etcd-key-file={}", key.display()),
        ]
    };

    // The right CA for the server, a client certificate etcd does not trust.
    let f = flags(&pki.ca_cert, &other.admin_cert, &other.admin_key);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut bridge = scope.bridge(&kubeconfig, &f);
    // etcd's TLS alert, on every line, however the transport happened to see the refusal.
    let cause = ["etcd refused the client certificate", "BadCertificate"];
    let check = ["--etcd-cert-file", "--etcd-key-file"];
    let line = refused_clearly(&mut bridge, &etcd.endpoint(), &cause, &check).await;
    eprintln!("a foreign client certificate: {line}");
    bridge.stop();

    // The other way round: etcd's serving certificate is not signed by the given CA.
    let f = flags(&other.ca_cert, &pki.admin_cert, &pki.admin_key);
    let f: Vec<&str> = f.iter().map(String::as_str).collect();
    let mut bridge = scope.bridge(&kubeconfig, &f);
    let cause = [
        "etcd's serving certificate is not trusted",
        "invalid peer certificate",
    ];
    let line = refused_clearly(&mut bridge, &etcd.endpoint(), &cause, &["--etcd-ca-file"]).await;
    eprintln!("an untrusted server certificate: {line}");
    bridge.stop();

    // Plain HTTP, and no TLS flags, to the TLS etcd: the transport only sees a closed
    // connection or a broken pipe.
    let http = etcd.endpoint().replacen("https://", "http://", 1);
    let plain = Scope::with_registry("etcd-badcert-http", &http);
    let kubeconfig = plain.bridge_kubeconfig();
    let mut bridge = plain.bridge(&kubeconfig, &[]);
    let cause = ["etcd requires TLS at this http:// endpoint"];
    let line = refused_clearly(&mut bridge, &http, &cause, &["--etcd-endpoints"]).await;
    eprintln!("plain HTTP to a TLS etcd: {line}");
}
