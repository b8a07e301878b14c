//! Where the checkout is, found when the program runs, not when it was compiled.
//!
//! The compiled crates are cached outside the checkout (`~/.cache/etcd-bridge/target`) and
//! shared by every clone: cargo reuses a crate compiled in another clone when its sources are the
//! same, so a path baked in with `env!("CARGO_MANIFEST_DIR")` may name a clone that is gone (CI's)
//! or one with other, uncommitted files. Every script and fixture the test bed reads is found
//! from here instead.

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
}
