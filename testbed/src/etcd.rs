//! A real etcd (Debian's `etcd-server`) on loopback, with its data in a directory of its own.

use crate::process::{Proc, free_port, wait_until};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where Debian's `etcd-server` puts the binary; `ETCD_BIN` overrides it.
fn etcd_binary() -> Result<PathBuf, String> {
    let path = PathBuf::from(std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into()));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "etcd not found at {}: run `make deps` (installs Debian's etcd-server) or set ETCD_BIN",
            path.display()
        ))
    }
}

/// Debian's `etcdctl` (from `etcd-client`), for snapshots; `ETCDCTL_BIN` overrides it.
fn etcdctl_binary() -> Result<PathBuf, String> {
    let path =
        PathBuf::from(std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "/usr/bin/etcdctl".into()));
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "etcdctl not found at {}: run `make deps` (installs Debian's etcd-client) or set ETCDCTL_BIN",
            path.display()
        ))
    }
}

fn etcdctl(args: &[String]) -> Result<(), String> {
    let bin = etcdctl_binary()?;
    let out = std::process::Command::new(&bin)
        .args(args)
        .env("ETCDCTL_API", "3")
        .output()
        .map_err(|e| format!("run {}: {e}", bin.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "etcdctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// One single-member etcd cluster.
pub struct Etcd {
    pub name: String,
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    proc: Option<Proc>,
}

impl Etcd {
    /// Starts etcd with its data under `dir/name`. `extra` are more flags (TLS, auth).
    pub fn start(dir: &Path, name: &str, extra: &[String]) -> Result<Etcd, String> {
        let mut last = String::new();
        // The ports are free when picked but could be taken before etcd binds them: retry.
        for _ in 0..3 {
            let mut etcd = Etcd {
                name: name.to_string(),
                client_port: free_port(),
                peer_port: free_port(),
                dir: dir.join(name),
                extra: extra.to_vec(),
                proc: None,
            };
            match etcd.launch() {
                Ok(()) => return Ok(etcd),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    fn scheme(&self) -> &'static str {
        if self.extra.iter().any(|a| a.starts_with("--cert-file")) {
            "https"
        } else {
            "http"
        }
    }

    fn launch(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut args = vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.dir.join("data").display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={}={peer}", self.name),
            "--initial-cluster-state=new".into(),
            // Tests are short-lived; fsync latency only slows them down.
            "--unsafe-no-fsync".into(),
            "--logger=zap".into(),
            "--log-level=warn".into(),
        ];
        args.extend(self.extra.iter().cloned());
        let log = self.dir.join("etcd.log");
        let mut proc = Proc::spawn(&format!("etcd {}", self.name), &etcd_binary()?, &args, &log)?;
        let port = self.client_port;
        let tls = self.scheme() == "https";
        wait_until(
            &format!("etcd {} on port {port}", self.name),
            Duration::from_secs(20),
            &mut proc,
            || if tls { port_open(port) } else { healthy(port) },
        )?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops etcd gracefully (SIGTERM); its data stays for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop(Duration::from_secs(10));
        }
    }

    /// Freezes etcd (SIGSTOP): connections stay open but nothing answers, like a hung server.
    pub fn freeze(&self) {
        if let Some(p) = &self.proc {
            p.signal("STOP");
        }
    }

    /// Resumes a frozen etcd.
    pub fn thaw(&self) {
        if let Some(p) = &self.proc {
            p.signal("CONT");
        }
    }

    /// Starts etcd again on the same ports with the same data.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.launch()
    }

    /// Starts etcd again on the same ports with NO data: every key and lease is gone, as after a
    /// lost disk or a restore from an old backup.
    pub fn restart_empty(&mut self) -> Result<(), String> {
        self.stop();
        let data = self.dir.join("data");
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        self.launch()
    }

    /// Saves a snapshot of the running etcd (plain HTTP only) to `path`.
    pub fn snapshot(&self, path: &Path) -> Result<(), String> {
        etcdctl(&[
            format!("--endpoints={}", self.endpoint()),
            "snapshot".into(),
            "save".into(),
            path.display().to_string(),
        ])
    }

    /// Stops etcd, replaces its data with the `snapshot` (`etcdctl snapshot restore`, as an
    /// operator restoring a backup would) and starts it again on the same ports: every key and
    /// the revision go back to what they were when the snapshot was taken.
    pub fn restore(&mut self, snapshot: &Path) -> Result<(), String> {
        self.stop();
        let data = self.dir.join("data");
        std::fs::remove_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        etcdctl(&[
            "snapshot".into(),
            "restore".into(),
            snapshot.display().to_string(),
            format!("--name={}", self.name),
            format!("--data-dir={}", data.display()),
            format!("--initial-cluster={}={peer}", self.name),
            format!("--initial-advertise-peer-urls={peer}"),
        ])?;
        self.launch()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        crate::process::log_tail(&self.dir.join("etcd.log"), lines)
    }
}

fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// etcd's own `/health`.
fn healthy(port: u16) -> bool {
    crate::process::http_get(port, "/health")
        .is_some_and(|(_, body)| body.contains("\"health\":\"true\""))
}
