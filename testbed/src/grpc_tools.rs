//! What the data-plane tests run in pods: the `grpc-tools` image (busybox plus two static Go
//! programs of `tests/go/cmd/`: `healthclient`, a gRPC client that dials a target with grpc-go's
//! own name resolution and calls grpc.health.v1; and `server`, the seed-style server), and the
//! pods that run it.
//!
//! [`build`] compiles both with `CGO_ENABLED=0` (cached by source hash, like the other Go
//! programs) and layers them on busybox with `hack/image.sh --layer`; [`import`] puts the image
//! into a running node's containerd. A [`ToolsPod`] runs the image; [`ToolsPod::call`] and
//! [`ToolsPod::watch`] run `healthclient` in it through `kubectl exec`, so every name a pod
//! resolves goes through its resolv.conf, the kube-dns Service, kube-proxy and CoreDNS.

use crate::control_plane::ControlPlane;
use crate::go::{cache_root, source_hash};
use crate::node::Node;
use crate::node_images::Image;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Where the programs are in the image.
pub const CLIENT: &str = "/usr/local/bin/healthclient";
pub const SERVER: &str = "/usr/local/bin/server";

/// The built programs (for the host too: the same `server` runs outside the cluster) and their
/// image.
#[derive(Clone, Debug)]
pub struct GrpcTools {
    pub client: PathBuf,
    pub server: PathBuf,
    pub image: Image,
}

/// Builds the static programs (seconds when cached) and the image.
pub fn build() -> Result<GrpcTools, String> {
    let src = crate::repo::path("tests/go")
        .canonicalize()
        .map_err(|e| format!("tests/go: {e}"))?;
    let out = cache_root()?.join("grpc-tools").join(source_hash(&src)?);
    let (client, server) = (out.join("healthclient"), out.join("server"));
    if !(client.is_file() && server.is_file()) {
        let tmp = out.with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let started = Instant::now();
        let built = Command::new("go")
            .args([
                "build",
                "-trimpath",
                "-buildvcs=false",
                "-ldflags=-s -w",
                "-o",
            ])
            .arg(format!("{}/", tmp.display()))
            .args(["./cmd/healthclient", "./cmd/server"])
            .current_dir(&src)
            .env("CGO_ENABLED", "0")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("run `go build` (is Go installed and on PATH?): {e}"))?;
        if !built.status.success() {
            return Err(format!(
                "CGO_ENABLED=0 go build ./cmd/healthclient ./cmd/server in {} failed (its output is above)",
                src.display()
            ));
        }
        if std::fs::rename(&tmp, &out).is_err() {
            // Another process finished first: use its binaries.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        eprintln!(
            ">> grpc-tools: built healthclient and server in {:.1?} into {}",
            started.elapsed(),
            out.display()
        );
    }
    let script = crate::repo::path("hack/image.sh");
    let layer = format!("grpc-tools={},{}", client.display(), server.display());
    let made = Command::new("bash")
        .arg(&script)
        .args(["--layer", &layer])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&made.stdout);
    let line = text.lines().find(|l| l.contains("/grpc-tools:"));
    let image = match (made.status.success(), line.and_then(|l| l.split_once(' '))) {
        (true, Some((reference, archive))) => Image {
            reference: reference.to_string(),
            archive: PathBuf::from(archive),
        },
        _ => {
            return Err(format!(
                "{} --layer {layer} failed (its output is above):\n{text}",
                script.display()
            ));
        }
    };
    Ok(GrpcTools {
        client,
        server,
        image,
    })
}

/// Imports `image` into the node's containerd (pods run it with `imagePullPolicy: Never`).
pub fn import(node: &Node, image: &Image) -> Result<(), String> {
    node.ctr(&["images", "import", &image.archive.display().to_string()])?;
    let names = node.ctr(&["images", "ls", "-q"])?;
    if names.lines().any(|n| n == image.reference) {
        Ok(())
    } else {
        Err(format!(
            "imported {} but containerd lists:\n{names}",
            image.archive.display()
        ))
    }
}

/// A pod running the grpc-tools image.
pub struct ToolsPod {
    pub namespace: String,
    pub name: String,
    /// Its IP on the pod network, once Running.
    pub ip: String,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl ToolsPod {
    /// Creates the pod (`command`, or `sleep` to exec into), with `labels` (`key: value, ...`),
    /// and waits until it is Running.
    pub fn start(
        cluster: &ControlPlane,
        namespace: &str,
        name: &str,
        image: &Image,
        labels: &str,
        command: &[&str],
    ) -> Result<ToolsPod, String> {
        let command = if command.is_empty() {
            vec!["/bin/sleep", "2147483647"]
        } else {
            command.to_vec()
        };
        let yaml = format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{{labels}}}
spec:
  terminationGracePeriodSeconds: 0
  containers:
  - name: tools
    image: {image}
    imagePullPolicy: Never
    command: {command:?}
"#,
            image = image.reference,
        );
        let out = cluster.kubectl_stdin(&["apply", "-f", "-"], &yaml);
        if !out.status.success() {
            return Err(format!(
                "create pod {namespace}/{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let out = cluster.kubectl(&[
                "get",
                "pod",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.status.phase} {.status.podIP}",
            ]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            if let Some(("Running", ip)) = text.trim().split_once(' ') {
                return Ok(ToolsPod {
                    namespace: namespace.into(),
                    name: name.into(),
                    ip: ip.into(),
                    kubectl: cluster.kubectl_path(),
                    kubeconfig: cluster.kubeconfig.clone(),
                });
            }
            if Instant::now() > deadline {
                let describe = cluster.kubectl(&["describe", "pod", name, "-n", namespace]);
                return Err(format!(
                    "pod {namespace}/{name} not Running after 90 s ({text}):\n{}",
                    String::from_utf8_lossy(&describe.stdout)
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn exec(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args([
                "exec",
                "-n",
                &self.namespace,
                &self.name,
                "-c",
                "tools",
                "--",
            ])
            .arg(CLIENT)
            .args(args);
        c
    }

    /// One `healthclient -target TARGET` in the pod: what it resolved and who answered.
    pub fn call(&self, target: &str) -> Call {
        match self.exec(&["-target", target]).output() {
            Ok(out) => Call::parse(
                out.status.success(),
                &format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => Call::parse(false, &format!("run kubectl exec: {e}")),
        }
    }

    /// Starts `healthclient -target TARGET -wait EVENTS [-expect IP]` in the pod and returns once
    /// it says it is watching: what happens from now on is seen.
    pub fn watch(&self, target: &str, events: &str, expect: Option<&str>) -> Result<Watch, String> {
        let mut args = vec!["-v", "-target", target, "-wait", events, "-timeout", "120s"];
        if let Some(ip) = expect {
            args.extend(["-expect", ip]);
        }
        let mut child = self
            .exec(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run kubectl exec: {e}"))?;
        let (tx, lines) = channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut watch = Watch {
            child,
            lines,
            seen: Vec::new(),
        };
        watch.line(Duration::from_secs(30), |l| l == "watching")?;
        Ok(watch)
    }
}

/// What one `healthclient` call printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// It exited 0: the answer was SERVING.
    pub serving: bool,
    /// The addresses the target's name resolved to (empty when it did not resolve).
    pub resolved: Vec<String>,
    /// The address the connection went to (`IP:PORT`).
    pub peer: Option<String>,
    pub output: String,
}

impl Call {
    /// Reads `resolved HOST: [A B]` and `SERVING from IP:PORT`.
    pub fn parse(success: bool, output: &str) -> Call {
        let resolved = output
            .lines()
            .filter_map(|l| l.strip_prefix("resolved "))
            .filter_map(|l| l.split_once(": [").map(|(_, rest)| rest))
            .filter_map(|rest| rest.strip_suffix(']'))
            .flat_map(|list| list.split_whitespace().map(String::from))
            .collect();
        let peer = output
            .lines()
            .find_map(|l| l.strip_prefix("SERVING from "))
            .map(|p| p.trim().to_string());
        Call {
            serving: success && peer.is_some(),
            resolved,
            peer,
            output: output.to_string(),
        }
    }
}

/// One event `healthclient -wait` saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    pub event: String,
    /// The pod's wall clock when it saw it (the machine's: pods have no clock of their own).
    pub at: SystemTime,
    pub attempts: u64,
    pub detail: String,
}

impl Seen {
    /// Reads `EVENT at UNIX_NANOS after N attempts: DETAIL`.
    pub fn parse(line: &str) -> Option<Seen> {
        let (event, rest) = line.split_once(" at ")?;
        let (nanos, rest) = rest.split_once(" after ")?;
        let (attempts, detail) = rest.split_once(" attempts: ")?;
        Some(Seen {
            event: event.to_string(),
            at: UNIX_EPOCH + Duration::from_nanos(nanos.parse().ok()?),
            attempts: attempts.parse().ok()?,
            detail: detail.to_string(),
        })
    }

    /// How long after `since` (a wall-clock time taken on the host) it was seen.
    pub fn after(&self, since: SystemTime) -> Duration {
        self.at.duration_since(since).unwrap_or_default()
    }
}

/// A running `healthclient -wait`: its events as they come. Dropping it stops the exec.
pub struct Watch {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Watch {
    fn line(&mut self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if want(&l) {
                        return Ok(l);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "healthclient: nothing after {timeout:?}; it said:\n{}",
                        self.seen.join("\n")
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "healthclient ended; it said:\n{}",
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    /// The next event, `event`, within `timeout`.
    pub fn next(&mut self, event: &str, timeout: Duration) -> Result<Seen, String> {
        let line = self.line(timeout, |l| {
            Seen::parse(l).is_some() || l.starts_with("timeout")
        })?;
        match Seen::parse(&line) {
            Some(s) if s.event == event => Ok(s),
            _ => Err(format!(
                "healthclient: expected {event}; it said:\n{}",
                self.seen.join("\n")
            )),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_reads_what_was_resolved_and_who_answered() {
        let c = Call::parse(
            true,
            "resolved greeter.ns.svc.cluster.local: [10.253.0.2 10.253.1.2]\nSERVING from 10.253.0.2:50051\n",
        );
        assert_eq!(c.resolved, ["10.253.0.2", "10.253.1.2"]);
        assert_eq!(c.peer.as_deref(), Some("10.253.0.2:50051"));
        assert!(c.serving);
    }

    #[test]
    fn a_failed_call_resolves_nothing_and_is_not_serving() {
        let c = Call::parse(
            false,
            "resolved x.ns.svc.cluster.local: error: lookup x.ns.svc.cluster.local on 10.0.0.10:53: no such host\ncall failed: rpc error: code = Unavailable\n",
        );
        assert!(c.resolved.is_empty());
        assert_eq!(c.peer, None);
        assert!(!c.serving);
    }

    #[test]
    fn an_event_line_gives_the_pods_clock() {
        let s = Seen::parse("resolved at 1700000000123456789 after 7 attempts: [10.253.0.2] <nil>")
            .unwrap();
        assert_eq!(s.event, "resolved");
        assert_eq!(s.attempts, 7);
        assert_eq!(s.detail, "[10.253.0.2] <nil>");
        let put = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_100_000_000);
        assert_eq!(s.after(put), Duration::from_nanos(23_456_789));
        assert_eq!(Seen::parse("watching"), None);
        assert_eq!(
            Seen::parse("timeout waiting for serving after 3 attempts: x"),
            None
        );
    }
}
