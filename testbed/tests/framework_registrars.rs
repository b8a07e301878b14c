//! The framework registrars of `tests/go/frameworks/` still write what the golden fixtures say.
//!
//! Each registrar is built with [`build_registrars`] (a failed Go build fails the test), run
//! against a real etcd with a fixed instance id, and the key and value it wrote are compared
//! with `tests/fixtures/formats/{format}.json` byte for byte. So a framework upgrade that changes
//! a layout fails here until `tests/go/frameworks/capture.sh` regenerates the fixtures. Each
//! server must answer the gRPC health check on loopback, and must remove its key on SIGTERM.

use etcd_bridge_testbed::go::build_registrars;
use etcd_bridge_testbed::{Etcd, scratch_dir};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// A registrar run: its stdout lines arrive on `lines`; killed when dropped.
struct Run {
    label: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Run {
    fn start(label: &str, bin: &Path, etcd: &str, args: &[&str]) -> Run {
        let mut child = Command::new(bin)
            .arg("--endpoints")
            .arg(etcd)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {label} ({}): {e}", bin.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Run {
            label: label.into(),
            child,
            lines,
        }
    }

    /// The rest of the first stdout line starting with `prefix`.
    fn expect(&self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(WAIT) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.to_string();
                    }
                }
                Err(e) => panic!("{}: no '{prefix}' line within {WAIT:?} ({e})", self.label),
            }
        }
    }

    /// SIGTERM, then the exit status and the "deregistered" line.
    fn terminate(mut self, key: &str) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "{}: kill -TERM failed", self.label);
        assert_eq!(self.expect("deregistered "), key, "{}", self.label);
        let exit = self.child.wait().expect("wait for the registrar");
        assert!(
            exit.success(),
            "{}: exited {exit} after SIGTERM",
            self.label
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn etcdctl_get(endpoint: &str, key: &str) -> String {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", endpoint, "get", key, "--print-value-only"])
        .output()
        .expect("run etcdctl (Debian's etcd-client; `make deps` installs it)");
    assert!(
        out.status.success(),
        "etcdctl get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut value = String::from_utf8(out.stdout).expect("utf-8 value");
    // etcdctl ends the value with a newline of its own.
    if value.ends_with('\n') {
        value.pop();
    }
    value
}

/// The captured value of `key` in `tests/fixtures/formats/{format}.json`.
fn fixture_value(format: &str, key: &str) -> String {
    let path =
        etcd_bridge_testbed::repo::path("tests/fixtures/formats").join(format!("{format}.json"));
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).expect("fixture JSON");
    entries
        .iter()
        .find(|e| e["key"] == key)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("{}: no entry with key {key}", path.display()))
        .to_string()
}

#[test]
fn every_registrar_writes_its_fixture_and_removes_it_on_sigterm() {
    let bins = build_registrars();
    let dir = scratch_dir("registrars");
    let etcd = Etcd::start(&dir, "registry", &[])
        .unwrap_or_else(|e| panic!("etcd did not start (this test does not skip): {e}"));
    let endpoint = etcd.endpoint();
    // The fixed-id registrations of capture.sh; the random-id ones differ in their ids only.
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "etcd-naming",
            "greeter/10.0.0.2:50051",
            &[
                "--name=greeter",
                "--advertise=10.0.0.2:50051",
                "--version=v2",
                "--weight=5",
            ],
        ),
        (
            "go-zero",
            "greeter.rpc/42",
            &["--name=greeter.rpc", "--advertise=10.0.0.2:8080", "--id=42"],
        ),
        (
            "kratos",
            "/microservices/greeter/greeter-2",
            &[
                "--name=greeter",
                "--version=v2",
                "--weight=5",
                "--id=greeter-2",
                "--advertise=10.0.0.2:9000",
                "--http-listen=127.0.0.1:0",
                "--advertise-http=10.0.0.2:8000",
            ],
        ),
        (
            "go-micro",
            "/micro/registry/greeter/greeter-node-3",
            &[
                "--name=greeter",
                "--version=v2",
                "--weight=5",
                "--id=node-3",
                "--advertise=10.0.0.3:50051",
            ],
        ),
        (
            "kitex",
            "kitex/registry-etcd/greeter/10.0.0.2:8888",
            &[
                "--name=greeter",
                "--weight=5",
                "--tags=cluster=c1,env=prod",
                "--advertise=10.0.0.2:8888",
            ],
        ),
    ];
    for (format, key, args) in cases {
        let bin = bins.for_format(format).expect("a registrar per format");
        let run = Run::start(format, bin, &endpoint, args);
        let serving = run.expect("serving on ");
        assert_eq!(run.expect("registered "), key, "{format}: registered key");
        assert_eq!(
            etcdctl_get(&endpoint, key),
            fixture_value(format, key),
            "{format}: the value {key} differs from tests/fixtures/formats/{format}.json \
             (a framework changed its layout? re-run tests/go/frameworks/capture.sh and review the diff)"
        );
        // The health check dials the loopback address the server listens on, never the
        // advertised one.
        let probe = Command::new(&bins.healthprobe)
            .args(["--addr", &serving])
            .output()
            .expect("run healthprobe");
        assert!(
            probe.status.success(),
            "{format}: health check of {serving}: {}{}",
            String::from_utf8_lossy(&probe.stdout),
            String::from_utf8_lossy(&probe.stderr)
        );
        run.terminate(key);
        assert_eq!(
            etcdctl_get(&endpoint, key),
            "",
            "{format}: {key} still in etcd after SIGTERM"
        );
    }
}
