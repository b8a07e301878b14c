//! Where the node's containers get their cgroups, and removing those a dead node left behind.
//!
//! cgroupfs is the machine's, not the node's: the kernel ends the node's processes when the test
//! process exits, but their (now empty) cgroup directories stay. So each node puts its
//! containers under a cgroup of its own, `/etcd-bridge-testbed/{scratch dir name}` (the kubelet's
//! `cgroupRoot`), whose name starts with the PID of the test process; a node starting later
//! removes the trees of processes that are gone, as `scratch_dir` does for directories.

use std::path::{Path, PathBuf};

/// The parent of every node's cgroups, in each hierarchy.
const PARENT: &str = "etcd-bridge-testbed";
const HIERARCHIES: &str = "/sys/fs/cgroup";

/// The kubelet's `cgroupRoot` for a node whose files are in `dir` (under a scratch directory
/// named `{pid}-{label}-{n}`).
pub fn root_for(scratch_dir: &Path) -> String {
    let name = scratch_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| std::process::id().to_string());
    format!("/{PARENT}/{name}")
}

/// Creates `root` in every hierarchy: the kubelet refuses a `cgroupRoot` that is missing in one.
pub fn create(root: &str) -> Result<(), String> {
    let hierarchies = std::fs::read_dir(HIERARCHIES).map_err(|e| format!("{HIERARCHIES}: {e}"))?;
    for h in hierarchies.flatten() {
        let dir = h.path().join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Whether a node cgroup named `name` (`{pid}-...`) belongs to a process that is gone.
pub fn is_stale(name: &str, alive: impl Fn(u32) -> bool) -> bool {
    name.split('-')
        .next()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|pid| !alive(pid))
}

/// Removes the cgroup trees of nodes whose test process is gone, in every hierarchy. A cgroup
/// with a process left in it cannot be removed and is kept; errors are ignored for the same
/// reason (the next node tries again).
pub fn remove_stale() {
    let alive = |pid: u32| Path::new("/proc").join(pid.to_string()).exists();
    let Ok(hierarchies) = std::fs::read_dir(HIERARCHIES) else {
        return;
    };
    for h in hierarchies.flatten() {
        let Ok(nodes) = std::fs::read_dir(h.path().join(PARENT)) else {
            continue;
        };
        for n in nodes.flatten() {
            let name = n.file_name().to_string_lossy().into_owned();
            if n.path().is_dir() && is_stale(&name, alive) {
                remove_tree(&n.path());
            }
        }
    }
}

/// rmdir, children first (cgroupfs removes a directory only once it has no children).
fn remove_tree(dir: &PathBuf) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.path().is_dir() {
                remove_tree(&c.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_named_after_the_scratch_dir() {
        assert_eq!(
            root_for(
                Path::new("/tmp/etcd-bridge-testbed/4242-shared-0/node")
                    .parent()
                    .unwrap()
            ),
            "/etcd-bridge-testbed/4242-shared-0"
        );
    }

    #[test]
    fn only_the_trees_of_processes_that_are_gone_are_stale() {
        let alive = |pid| pid == 4242;
        assert!(!is_stale("4242-shared-0", alive));
        assert!(is_stale("17-shared-3", alive));
        assert!(!is_stale("not-a-pid", alive), "a name we did not make");
    }
}
