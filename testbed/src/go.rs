//! The framework registrars of `tests/go/frameworks/`: one Go program per etcd registry format,
//! each registering a real gRPC server (standard health service) with its framework's own code.
//!
//! [`build_registrars`] builds them once per source tree into
//! `~/.cache/etcd-bridge/frameworks/{hash}/` (`ETCD_BRIDGE_CACHE` moves the cache), with one
//! `go build` for all of them. When Go cannot build them it panics: a test that needs them fails,
//! it never skips.
//!
//! Every registrar takes `--endpoints URL --name NAME [--version V] [--weight N]
//! [--listen 127.0.0.1:0] [--advertise IP:PORT] [--id ID]` plus its own flags (`--help`), and
//! prints on stdout `serving on ADDR`, then `registered KEY` once the key is in etcd, and on
//! SIGTERM `deregistered KEY` once it is gone, exiting 0. `healthprobe --addr ADDR` checks a
//! loopback server's health. The layouts are in docs/formats.md.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Instant;

/// The registrar binaries, by format.
#[derive(Debug, Clone)]
pub struct Registrars {
    /// etcd's own gRPC resolver, `go.etcd.io/etcd/client/v3/naming/endpoints`.
    pub etcd_naming: PathBuf,
    /// go-zero, `core/discov` Publisher.
    pub go_zero: PathBuf,
    /// kratos, `contrib/registry/etcd`.
    pub kratos: PathBuf,
    /// go-micro v5, `registry/etcd` with its gRPC server.
    pub go_micro: PathBuf,
    /// kitex, `kitex-contrib/registry-etcd`.
    pub kitex: PathBuf,
    /// gRPC health check of a loopback address.
    pub healthprobe: PathBuf,
}

/// The `cmd/` of each binary, and where it goes in [`Registrars`].
const COMMANDS: [&str; 6] = [
    "etcdnaming",
    "gozero",
    "kratos",
    "gomicro",
    "kitex",
    "healthprobe",
];

impl Registrars {
    fn in_dir(dir: &Path) -> Registrars {
        Registrars {
            etcd_naming: dir.join("etcdnaming"),
            go_zero: dir.join("gozero"),
            kratos: dir.join("kratos"),
            go_micro: dir.join("gomicro"),
            kitex: dir.join("kitex"),
            healthprobe: dir.join("healthprobe"),
        }
    }

    /// The registrar of a format by the name the bridge gives it (`etcd-naming`, `go-zero`,
    /// `kratos`, `go-micro`, `kitex`).
    pub fn for_format(&self, format: &str) -> Option<&Path> {
        Some(match format {
            "etcd-naming" => &self.etcd_naming,
            "go-zero" => &self.go_zero,
            "kratos" => &self.kratos,
            "go-micro" => &self.go_micro,
            "kitex" => &self.kitex,
            _ => return None,
        })
    }
}

/// The registrars, built on first use in this process (and cached across runs). Panics (fails
/// the test) when they cannot be built, with Go's output.
pub fn build_registrars() -> &'static Registrars {
    static BINS: OnceLock<Result<Registrars, String>> = OnceLock::new();
    match BINS.get_or_init(|| {
        let src = crate::repo::path("tests/go/frameworks");
        build(&src, &cache_root()?.join("frameworks"))
    }) {
        Ok(bins) => bins,
        Err(e) => panic!(
            "the framework registrars of tests/go/frameworks could not be built (no skipping):\n{e}"
        ),
    }
}

pub(crate) fn cache_root() -> Result<PathBuf, String> {
    std::env::var_os("ETCD_BRIDGE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/etcd-bridge")))
        .ok_or_else(|| {
            "neither ETCD_BRIDGE_CACHE nor HOME is set: nowhere to cache the Go binaries".into()
        })
}

/// Progress on the real stderr (libtest captures only `eprintln!`).
fn progress(msg: &str) {
    let _ = writeln!(std::io::stderr(), ">> frameworks: {msg}");
}

/// Builds every `cmd/` of the Go module `src` into `cache/{hash of the sources}/`, unless a
/// previous run did.
fn build(src: &Path, cache: &Path) -> Result<Registrars, String> {
    let src = src
        .canonicalize()
        .map_err(|e| format!("{}: {e}", src.display()))?;
    let out = cache.join(source_hash(&src)?);
    let bins = Registrars::in_dir(&out);
    if COMMANDS.iter().all(|c| out.join(c).is_file()) {
        return Ok(bins);
    }
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    // A private directory, renamed into place when complete: a concurrent test binary never sees
    // half the binaries.
    let tmp = cache.join(format!(".tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let started = Instant::now();
    progress(&format!(
        "building {} from {} (cold: module downloads and a few minutes on 2 cores)",
        COMMANDS.join(", "),
        src.display()
    ));
    let mut child = Command::new("go")
        .args(["build", "-trimpath", "-buildvcs=false", "-o"])
        .arg(format!("{}/", tmp.display()))
        .arg("./cmd/...")
        .current_dir(&src)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run `go build` (is Go installed and on PATH?): {e}"))?;
    // Go prints module downloads and errors on stderr: show them as they come, keep them for
    // the failure message.
    let mut said = Vec::new();
    for line in BufReader::new(child.stderr.take().expect("piped")).lines() {
        let line = line.unwrap_or_default();
        progress(&format!("  {line}"));
        said.push(line);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(format!(
            "go build ./cmd/... in {} failed ({status}):\n{}",
            src.display(),
            said.join("\n")
        ));
    }
    if let Some(missing) = COMMANDS.iter().find(|c| !tmp.join(c).is_file()) {
        return Err(format!(
            "go build ./cmd/... in {} made no {missing}",
            src.display()
        ));
    }
    if std::fs::rename(&tmp, &out).is_err() {
        // Another process finished first: use its binaries.
        let _ = std::fs::remove_dir_all(&tmp);
        if !COMMANDS.iter().all(|c| out.join(c).is_file()) {
            return Err(format!(
                "could not move the binaries into {}",
                out.display()
            ));
        }
    }
    progress(&format!(
        "built in {:.1?} into {}",
        started.elapsed(),
        out.display()
    ));
    Ok(bins)
}

/// Every input of the Go build (`*.go`, `go.mod`, `go.sum`), hashed with FNV-1a: the cache key.
/// Not a security boundary, only "did the sources change".
pub(crate) fn source_hash(dir: &Path) -> Result<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("read {}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "go")
                || matches!(
                    p.file_name().and_then(|n| n.to_str()),
                    Some("go.mod" | "go.sum")
                )
            {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, &mut files)?;
    let mut h = Fnv1a::default();
    for f in files {
        h.write(
            f.strip_prefix(dir)
                .unwrap_or(&f)
                .to_string_lossy()
                .as_bytes(),
        );
        h.write(&[0]);
        h.write(&std::fs::read(&f).map_err(|e| format!("read {}: {e}", f.display()))?);
        h.write(&[0]);
    }
    Ok(format!("{:016x}", h.0))
}

/// 64-bit FNV-1a: stable across Rust versions and platforms, unlike `DefaultHasher`.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_values() {
        // From the FNV reference test vectors.
        let mut h = Fnv1a::default();
        h.write(b"");
        assert_eq!(h.0, 0xcbf2_9ce4_8422_2325);
        let mut h = Fnv1a::default();
        h.write(b"a");
        assert_eq!(h.0, 0xaf63_dc4c_8601_ec8c);
        let mut h = Fnv1a::default();
        h.write(b"foobar");
        assert_eq!(h.0, 0x8594_4171_f739_67e8);
    }

    #[test]
    fn source_hash_changes_with_a_go_file_and_ignores_other_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("go.mod"), "module x\n").unwrap();
        std::fs::create_dir(dir.path().join("cmd")).unwrap();
        std::fs::write(dir.path().join("cmd/main.go"), "package main\n").unwrap();
        let first = source_hash(dir.path()).unwrap();
        std::fs::write(dir.path().join("capture.sh"), "#!/bin/sh\n").unwrap();
        assert_eq!(source_hash(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join("cmd/main.go"), "package main // changed\n").unwrap();
        assert_ne!(source_hash(dir.path()).unwrap(), first);
    }

    #[test]
    fn every_format_has_its_registrar() {
        let bins = Registrars::in_dir(Path::new("/bins"));
        for format in ["etcd-naming", "go-zero", "kratos", "go-micro", "kitex"] {
            let path = bins.for_format(format).unwrap();
            assert!(
                COMMANDS.contains(&path.file_name().unwrap().to_str().unwrap()),
                "{format}: {}",
                path.display()
            );
        }
        assert_eq!(bins.for_format("seed"), None);
    }
}
