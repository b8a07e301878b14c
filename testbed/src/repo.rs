//! Where the checkout is, found when the program runs, not when it was compiled.
//!
//! The compiled crates are cached outside the checkout (`~/.cache/etcd-bridge/target`) and
//! shared by every clone: cargo reuses a crate compiled in another clone when its sources are the
//! same, so a path baked in at compile time (cargo's CARGO_MANIFEST_DIR) may name a clone that is
//! gone (CI's) or one with other, uncommitted files. Every script and fixture the test bed reads
//! is found from here instead.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A file only this repository's root has.
const MARKER: &str = "testbed/kube/build.sh";

/// The root of the checkout being tested or run: `ETCD_BRIDGE_REPO` if set; else the nearest
/// ancestor of cargo's `CARGO_MANIFEST_DIR` (set when cargo runs a test), or of the current
/// directory (`make demo`, `make bench`), that holds `testbed/kube/build.sh`. Panics when none does,
/// saying how to point it at the checkout.
pub fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let mut starts: Vec<PathBuf> = Vec::new();
        if let Some(dir) = std::env::var_os("ETCD_BRIDGE_REPO") {
            let dir = PathBuf::from(dir);
            assert!(
                dir.join(MARKER).is_file(),
                "ETCD_BRIDGE_REPO={} has no {MARKER}: point it at an etcd-bridge checkout",
                dir.display()
            );
            return dir;
        }
        starts.extend(std::env::var_os("CARGO_MANIFEST_DIR").map(PathBuf::from));
        starts.extend(std::env::current_dir().ok());
        starts
            .iter()
            .find_map(|start| find_from(start))
            .unwrap_or_else(|| {
                panic!(
                    "no etcd-bridge checkout above {starts:?} (none has {MARKER}): run from the \
                     checkout, or set ETCD_BRIDGE_REPO to it"
                )
            })
    })
}

/// `relative` inside the checkout, e.g. `hack/image.sh`.
pub fn path(relative: &str) -> PathBuf {
    root().join(relative)
}

fn find_from(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .find(|dir| dir.join(MARKER).is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_found_from_any_directory_inside_the_checkout() {
        let here = root();
        assert!(here.join("Cargo.toml").is_file(), "{}", here.display());
        assert_eq!(find_from(&here.join("testbed/src")).as_deref(), Some(here));
        assert_eq!(find_from(Path::new("/")), None);
    }

    /// A compiled-in checkout path comes back with every new file that copies the habit: the
    /// shared target dir then runs another clone's scripts, or a deleted clone's (see the top).
    #[test]
    fn no_code_reads_the_checkout_from_a_compiled_in_path() {
        let habit = ["env!(\"CARGO", "_MANIFEST_DIR\")"].concat();
        let mut found = Vec::new();
        for dir in ["src", "tests", "examples", "testbed/src", "testbed/tests"] {
            scan(&root().join(dir), &habit, &mut found);
        }
        assert!(
            found.is_empty(),
            "use etcd_bridge_testbed::repo::path instead of {habit} in: {found:?}"
        );
    }

    fn scan(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                scan(&path, needle, found);
            } else if path.extension().is_some_and(|e| e == "rs")
                && std::fs::read_to_string(&path).is_ok_and(|t| t.contains(needle))
            {
                found.push(path);
            }
        }
    }
}
