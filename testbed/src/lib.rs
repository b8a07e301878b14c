//! The test bed of etcd-bridge: a registry etcd and a Kubernetes control plane, real processes on
//! 127.0.0.1 with ephemeral ports and temporary directories; and, for the tests that need one, a
//! real node ([`Node`]: containerd, kubelet, kube-proxy, CoreDNS) in namespaces of its own, and a
//! machine outside the cluster beside it ([`outside::Outside`]) for the data-plane tests.
//!
//! A test that needs them and cannot start them fails, with the reason and the component's log:
//! [`TestBed::shared`] panics, it never skips.
#![forbid(unsafe_code)]

pub mod audit;
pub mod bridge;
pub mod control_plane;
pub mod etcd;
pub mod first_seen;
pub mod go;
pub mod grpc_tools;
pub mod kube_proxy;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod node_cgroups;
pub mod node_config;
pub mod node_images;
pub mod node_network;
pub mod outside;
pub mod pki;
pub mod process;
pub mod repo;
pub mod seed;

pub use control_plane::{ControlPlane, client_from};
pub use etcd::Etcd;
pub use node::Node;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The directory of the built kube-apiserver, kube-controller-manager and kubectl. Runs
/// `testbed/kube/build.sh`, which builds them once per version into `~/.cache/etcd-bridge` and is
/// instant when they are there. `KUBE_BIN_DIR` overrides it.
pub fn kube_bins() -> Result<PathBuf, String> {
    static BINS: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINS.get_or_init(|| {
        if let Ok(dir) = std::env::var("KUBE_BIN_DIR") {
            return Ok(PathBuf::from(dir));
        }
        let script = repo::path("testbed/kube/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: the Go build of kube-apiserver did not finish; run it by hand to see why",
                script.display()
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    })
    .clone()
}

/// A fresh directory for one test bed, under the system temp dir. Directories left by test
/// processes that are gone are removed first, since a `static` test bed is never dropped.
pub fn scratch_dir(label: &str) -> PathBuf {
    let root = std::env::temp_dir().join("etcd-bridge-testbed");
    if let Ok(entries) = std::fs::read_dir(&root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name.split('-').next().unwrap_or_default();
            if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = root.join(format!(
        "{}-{label}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create the test bed directory");
    dir
}

/// The registry etcd and the control plane, shared by every test of one test binary. Each test
/// takes its own namespace and key prefix from [`unique`], so tests run in parallel.
pub struct TestBed {
    pub registry: Etcd,
    pub cluster: ControlPlane,
    pub dir: PathBuf,
}

impl TestBed {
    /// Starts a new test bed (the demo and the benchmarks own theirs).
    pub fn start(label: &str) -> Result<TestBed, String> {
        let dir = scratch_dir(label);
        let registry = Etcd::start(&dir, "registry", &[])?;
        let cluster = ControlPlane::start(&dir.join("cluster"))?;
        Ok(TestBed {
            registry,
            cluster,
            dir,
        })
    }

    /// The test binary's test bed, started on first use. Panics (fails the test) when it cannot
    /// start, with the reason.
    pub fn shared() -> &'static TestBed {
        static BED: OnceLock<Result<TestBed, String>> = OnceLock::new();
        match BED.get_or_init(|| TestBed::start("shared")) {
            Ok(bed) => bed,
            Err(e) => {
                panic!("the test bed did not start (this test needs it and does not skip):\n{e}")
            }
        }
    }
}

/// A name unique within this test binary and across runs, usable as a namespace or etcd prefix
/// segment: `{base}-{pid}-{n}`.
pub fn unique(base: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{base}-{}-{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}
