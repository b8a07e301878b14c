//! A mixed estate, end to end: real Go programs that discover each other the seed's way (a gRPC
//! `Register`/`Resolver` on etcd, `tests/go/`) next to Kubernetes, with the bridge between them.
//!
//! - Kubernetes → Go: an `EtcdRegistration` written back by the bridge is resolved by the Go
//!   etcd resolver, and a real gRPC call (the standard health check) reaches the server it names.
//! - Go → Kubernetes: a Go server that registers itself appears as a Service and an
//!   EndpointSlice with its weight, and goes away when the server stops and unregisters.
//!
//! The Go binaries are built once per test binary into `~/.cache/etcd-bridge/seedgo/{hash}/`
//! (`ETCD_BRIDGE_CACHE` moves the cache). A test that cannot build or start them fails.

mod common;

use common::*;
use etcd_bridge_testbed::process::log_tail;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// Progress on the real stderr (libtest captures only `eprintln!`), as the test bed does for its
/// own Go build.
fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr(), ">> seedgo: {msg}");
}

/// The built `resolver` and `server` of `tests/go/`.
struct SeedGo {
    resolver: PathBuf,
    server: PathBuf,
}

/// Every input of the Go build, hashed: the cache key.
fn source_hash(dir: &Path) -> String {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "go")
                || matches!(
                    p.file_name().and_then(|n| n.to_str()),
                    Some("go.mod" | "go.sum")
                )
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let mut h = Sha256::new();
    for f in files {
        h.update(f.strip_prefix(dir).unwrap().to_string_lossy().as_bytes());
        h.update([0]);
        h.update(std::fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display())));
        h.update([0]);
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn build_seedgo() -> Result<SeedGo, String> {
    let src = etcd_bridge_testbed::repo::path("tests/go");
    let cache = std::env::var_os("ETCD_BRIDGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/etcd-bridge")))
        .ok_or("neither ETCD_BRIDGE_CACHE nor HOME is set: nowhere to cache the Go binaries")?;
    let out = cache.join("seedgo").join(source_hash(&src));
    let bins = SeedGo {
        resolver: out.join("resolver"),
        server: out.join("server"),
    };
    if bins.resolver.exists() && bins.server.exists() {
        return Ok(bins);
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    for (cmd, dest) in [("resolver", &bins.resolver), ("server", &bins.server)] {
        let started = Instant::now();
        progress(&format!(
            "building {cmd} from {} into {} (cold: module downloads and under a minute on 2 cores)",
            src.display(),
            out.display()
        ));
        // A private name, renamed into place when complete: concurrent builds never see half a
        // binary.
        let tmp = dest.with_extension(format!("tmp{}", std::process::id()));
        let mut child = Command::new("go")
            .args(["build", "-trimpath", "-buildvcs=false", "-o"])
            .arg(&tmp)
            .arg(format!("./cmd/{cmd}"))
            .current_dir(&src)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run `go build` (is Go installed and on PATH?): {e}"))?;
        // Go prints module downloads and errors on stderr: show them as they come, keep them
        // for the failure message.
        let mut said = Vec::new();
        for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
            let line = line.unwrap_or_default();
            progress(&format!("  {line}"));
            said.push(line);
        }
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "go build ./cmd/{cmd} in {} failed ({status}):\n{}",
                src.display(),
                said.join("\n")
            ));
        }
        std::fs::rename(&tmp, dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        progress(&format!("{cmd} built in {:.1?}", started.elapsed()));
    }
    Ok(bins)
}

/// The Go binaries, built on first use; panics (fails the test) when they cannot be built.
fn seedgo() -> &'static SeedGo {
    static BINS: OnceLock<Result<SeedGo, String>> = OnceLock::new();
    match BINS.get_or_init(build_seedgo) {
        Ok(b) => b,
        Err(e) => panic!("the Go programs of tests/go could not be built (no skipping):\n{e}"),
    }
}

/// Starts the Go `server` with `args` (it listens on a port of 127.0.0.1 it picks itself); waits
/// until its output has `ready` and returns it with the address it listens on.
fn go_server(scope: &Scope, label: &str, args: &[String], ready: &str) -> (Proc, String) {
    let log = scope
        .bed
        .dir
        .join(format!("go-server-{}-{label}.log", scope.namespace));
    let mut all = vec!["-listen=127.0.0.1:0".to_string()];
    all.extend_from_slice(args);
    let mut proc = Proc::spawn("go server", &seedgo().server, &all, &log)
        .unwrap_or_else(|e| panic!("start the Go server: {e}"));
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(ready) {
            let listening = text
                .lines()
                .find_map(|l| l.strip_prefix("serving on "))
                .unwrap_or_else(|| panic!("no \"serving on\" line:\n{text}"));
            return (proc, listening.trim().to_string());
        }
        assert!(
            proc.is_running(),
            "the Go server exited\n{}",
            proc.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "the Go server did not print {ready:?} within {WAIT:?}\n{}",
            proc.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the Go `resolver` for `name`/`version` under the scope's prefix, giving up after
/// `timeout`; returns (exit code, stdout, stderr).
async fn go_resolve(
    scope: &Scope,
    name: &str,
    version: &str,
    timeout: Duration,
) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(&seedgo().resolver)
        .arg(format!("-endpoints={}", scope.registry_endpoint))
        .arg(format!("-root={}", scope.prefix))
        .arg(format!("-name={name}"))
        .arg(format!("-version={version}"))
        .arg(format!("-timeout={}ms", timeout.as_millis()))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run the Go resolver");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Starts a write-back bridge whose write-back prefix is the scope's prefix, as tests/writeback.rs does.
async fn writeback_bridge(scope: &Scope) -> Bridge {
    let kubeconfig = scope.writeback_kubeconfig();
    let wb_prefix = format!("--writeback-prefix={}", scope.prefix);
    let wb_ns = format!("--writeback-namespace={}", scope.namespace);
    let mut b = scope.bridge(
        &kubeconfig,
        &["--writeback=true", wb_prefix.as_str(), wb_ns.as_str()],
    );
    b.ready(WAIT).await;
    b
}

async fn value(etcd: &mut etcd_client::Client, key: &str) -> Option<(String, i64)> {
    let r = etcd.get(key, None).await.expect("etcd get");
    r.kvs()
        .first()
        .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
}

#[tokio::test]
async fn a_kubernetes_registration_is_resolved_and_called_by_a_go_grpc_client() {
    let scope = Scope::new("mixed-k2g");
    let t = Instant::now();
    seedgo();
    eprintln!("Go binaries ready in {:?}", t.elapsed());

    // A real gRPC server (health service) on loopback that does not register itself: Kubernetes
    // declares it.
    let (mut server, addr) =
        go_server(&scope, "greeter", &["-register=false".into()], "serving on");

    let bridge = writeback_bridge(&scope).await;
    scope.apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdRegistration\nmetadata: {{name: greeter}}\nspec: {{service: greeter, version: v1, addresses: [\"{addr}\"]}}\n"
    ));
    // (kubectl apply itself takes a couple of seconds of discovery: timed from its return.)
    let started = Instant::now();
    let key = seed_key(&scope.prefix, "greeter", "v1", &addr);
    let etcd = scope.etcd().await;
    let (v, lease) = eventually("the written-back key in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;
    // The seed's four fields (the bridge adds its owner marker, which Go's encoding/json skips).
    let j: serde_json::Value = serde_json::from_str(&v).expect("a JSON value");
    assert_eq!(
        (&j["name"], &j["addr"], &j["version"], &j["weight"]),
        (
            &"greeter".into(),
            &addr.as_str().into(),
            &"v1".into(),
            &1.into()
        ),
        "{v}"
    );
    assert_ne!(lease, 0, "under the bridge's lease");
    eprintln!(
        "EtcdRegistration applied → etcd key: {:?}",
        started.elapsed()
    );

    // The Go client dials etcd://v1/greeter: its resolver lists {prefix}greeter/v1/ in etcd,
    // parses the value the bridge wrote (extra fields and all) and the health check goes to it.
    let t = Instant::now();
    let (code, out, err) = go_resolve(&scope, "greeter", "v1", WAIT).await;
    assert_eq!(
        code,
        Some(0),
        "the Go resolver failed\nstdout: {out}\nstderr: {err}\n{}\nbridge:\n{}",
        server.log_tail(20),
        bridge.log()
    );
    assert!(
        out.contains(&format!("reached {addr}: SERVING")),
        "stdout: {out}\nstderr: {err}"
    );
    eprintln!(
        "Go resolver (etcd://v1/greeter) → health check OK in {:?}",
        t.elapsed()
    );

    // The version-less target etcd:///greeter watches {prefix}greeter/ and sees it too.
    let (code, out, err) = go_resolve(&scope, "greeter", "", WAIT).await;
    assert_eq!(
        code,
        Some(0),
        "the version-less Go resolver failed\nstdout: {out}\nstderr: {err}"
    );
    let listed = format!("resolver {}greeter/ (list): [{addr}]", scope.prefix);
    assert!(err.contains(&listed), "{err}");
    assert!(
        out.contains(&format!("reached {addr}: SERVING")),
        "stdout: {out}\nstderr: {err}"
    );

    // Another version resolves to nothing: the address came from etcd, not from anywhere else.
    let (code, out, err) = go_resolve(&scope, "greeter", "v2", Duration::from_secs(1)).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    let listed = format!("resolver {}greeter/v2/ (list): []", scope.prefix);
    assert!(err.contains(&listed), "{err}");

    assert!(server.is_running(), "{}", server.log_tail(20));
    server.stop(Duration::from_secs(10));
}

#[tokio::test]
async fn a_go_server_that_registers_itself_becomes_a_service_and_goes_when_it_stops() {
    let scope = Scope::new("mixed-g2k");
    let t = Instant::now();
    seedgo();
    eprintln!("Go binaries ready in {:?}", t.elapsed());

    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;

    // The server listens on loopback but registers a routable address (Kubernetes refuses
    // loopback IPs in EndpointSlices); nothing connects to it here.
    let registered = "10.77.0.1:7000";
    let started = Instant::now();
    let (mut server, _) = go_server(
        &scope,
        "inventory",
        &[
            format!("-endpoints={}", scope.registry_endpoint),
            format!("-root={}", scope.prefix),
            "-name=inventory".into(),
            "-version=v2".into(),
            format!("-addr={registered}"),
            "-weight=4".into(),
            "-ttl=10".into(),
            "-register=true".into(),
        ],
        "registered ",
    );

    // Exactly what the Rust helpers of the other tests write for the seed's format.
    let key = seed_key(&scope.prefix, "inventory", "v2", registered);
    let mut etcd = scope.etcd().await;
    let (v, lease) = value(&mut etcd, &key)
        .await
        .unwrap_or_else(|| panic!("{key} not in etcd\n{}", server.log_tail(20)));
    assert_eq!(v, seed_value("inventory", "v2", registered, 4));
    assert_ne!(lease, 0, "under the server's lease");

    let kube = scope.kube().await;
    let services: Api<Service> = Api::namespaced(kube.clone(), &scope.namespace);
    let slice_api: Api<EndpointSlice> = Api::namespaced(kube, &scope.namespace);
    for name in ["inventory-v2", "inventory"] {
        let svc = eventually(&format!("Service {name}"), WAIT, || async {
            services.get_opt(name).await.ok().flatten()
        })
        .await;
        let ports = svc.spec.clone().and_then(|s| s.ports).unwrap_or_default();
        assert_eq!(
            ports.iter().map(|p| p.port).collect::<Vec<_>>(),
            [7000],
            "{name}"
        );
        assert_eq!(svc.annotations()["etcd-bridge.io/name"], "inventory");
        let slices = eventually(&format!("EndpointSlice of {name}"), WAIT, || async {
            let s = slice_api
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
                .await
                .ok()?
                .items;
            (!s.is_empty()).then_some(s)
        })
        .await;
        assert_eq!(slices.len(), 1, "{name}: {slices:?}");
        let s = &slices[0];
        let addrs: Vec<&String> = s.endpoints.iter().flat_map(|e| &e.addresses).collect();
        assert_eq!(addrs, ["10.77.0.1"], "{name}");
        assert_eq!(s.ports.as_ref().unwrap()[0].port, Some(7000), "{name}");
        assert_eq!(s.annotations()["etcd-bridge.io/weight"], "4", "{name}");
    }
    assert_eq!(
        services.get("inventory-v2").await.unwrap().annotations()["etcd-bridge.io/version"],
        "v2"
    );
    eprintln!(
        "Go Register → Service and EndpointSlice: {:?}",
        started.elapsed()
    );

    // SIGTERM: the server deletes its key and revokes its lease before it exits (not left to
    // expire), and the bridge removes the Services.
    let stopped = Instant::now();
    server.stop(Duration::from_secs(10));
    let log = log_tail(&server.log, 20);
    assert!(log.contains(&format!("unregistered {key}")), "{log}");
    assert!(log.contains("stopped"), "a clean exit: {log}");
    assert_eq!(value(&mut etcd, &key).await, None, "deleted on SIGTERM");
    let ttl = etcd.lease_time_to_live(lease, None).await.unwrap().ttl();
    assert!(
        ttl <= 0,
        "the lease is revoked, not left to expire (ttl {ttl})"
    );
    eventually("Services removed", WAIT, || async {
        let gone = services.get_opt("inventory-v2").await.ok()?.is_none()
            && services.get_opt("inventory").await.ok()?.is_none();
        gone.then_some(())
    })
    .await;
    eventually("EndpointSlices garbage-collected", WAIT, || async {
        let left = slice_api
            .list(
                &ListParams::default()
                    .labels("endpointslice.kubernetes.io/managed-by=controller.etcd-bridge.io"),
            )
            .await
            .ok()?
            .items;
        left.is_empty().then_some(())
    })
    .await;
    eprintln!("SIGTERM → Services gone: {:?}", stopped.elapsed());
    assert!(bridge.proc.is_running(), "{}", bridge.log());
}
