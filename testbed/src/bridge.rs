//! Where an `etcd-bridge run` under test points, and what its build can do: shared by the tests,
//! the demo and the benchmarks, which each start the bridge their own way.

use std::path::Path;

/// Where a bridge points: a registry etcd, prefix, namespace and kubeconfig, with its log under
/// `dir`.
pub struct BridgeTarget<'a> {
    pub dir: &'a Path,
    pub etcd_endpoint: &'a str,
    pub prefix: &'a str,
    pub namespace: &'a str,
    pub kubeconfig: &'a Path,
}

impl BridgeTarget<'_> {
    /// `run` and the flags that point the bridge here; the caller adds `--listen` and the rest.
    pub fn run_args(&self) -> Vec<String> {
        vec![
            "run".to_string(),
            format!("--etcd-endpoints={}", self.etcd_endpoint),
            format!("--prefix={}", self.prefix),
            format!("--namespace={}", self.namespace),
            format!("--kubeconfig={}", self.kubeconfig.display()),
        ]
    }
}

/// `etcd-bridge run --help` of the binary `bin`: which flags (and env) this build has. Empty when
/// it does not run.
pub fn run_help(bin: &Path) -> String {
    std::process::Command::new(bin)
        .args(["run", "--help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
