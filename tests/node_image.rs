//! The image the node runs (hack/image.sh, no Docker engine) is the Dockerfile's runtime stage:
//! the same user, entrypoint, cmd and port, read from the Dockerfile here independently of the
//! script; and its own files are enough to run the binary under test as uid 65532.

use etcd_bridge_testbed::node_images::{self, Images};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const BINARY: &str = env!("CARGO_BIN_EXE_etcd-bridge");

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| node_images::build(Path::new(BINARY)).expect("hack/image.sh"))
}

/// What the Dockerfile's last stage says: (USER, ENTRYPOINT, CMD, EXPOSE as `port/proto`).
fn runtime_stage() -> (String, Value, Value, BTreeSet<String>) {
    let text = std::fs::read_to_string(etcd_bridge_testbed::repo::path("Dockerfile"))
        .expect("read the Dockerfile");
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let stage: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let last_from = stage
        .iter()
        .rposition(|l| l.to_uppercase().starts_with("FROM "))
        .expect("a FROM line");
    let (mut user, mut entrypoint, mut cmd, mut expose) =
        (None, None, None, BTreeSet::<String>::new());
    for line in &stage[last_from + 1..] {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let rest = rest.trim();
        match word.to_uppercase().as_str() {
            "USER" => user = Some(rest.to_string()),
            "ENTRYPOINT" => entrypoint = Some(serde_json::from_str(rest).expect("exec form")),
            "CMD" => cmd = Some(serde_json::from_str(rest).expect("exec form")),
            "EXPOSE" => expose.extend(rest.split_whitespace().map(|p| {
                if p.contains('/') {
                    p.to_string()
                } else {
                    format!("{p}/tcp")
                }
            })),
            _ => {}
        }
    }
    (
        user.expect("USER in the runtime stage"),
        entrypoint.expect("ENTRYPOINT in the runtime stage"),
        cmd.expect("CMD in the runtime stage"),
        expose,
    )
}

#[test]
fn the_image_config_is_the_dockerfile_runtime_stage() {
    let (user, entrypoint, cmd, expose) = runtime_stage();
    let config = images().bridge.config().expect("read the image config");
    let c = &config["config"];
    assert_eq!(c["User"], json!(user), "USER");
    assert_eq!(c["Entrypoint"], entrypoint, "ENTRYPOINT");
    assert_eq!(c["Cmd"], cmd, "CMD");
    let ports: BTreeSet<String> = c["ExposedPorts"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    assert_eq!(ports, expose, "EXPOSE");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["architecture"], "amd64");
    // The values the chart relies on, so a Dockerfile edit that breaks the chart shows here too.
    assert_eq!(user, "65532:65532");
    assert!(expose.contains("8080/tcp"));
}

/// Unpacks an image's layers into a fresh directory (umoci, as a runtime would).
fn unpack(image: &node_images::Image) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let bundle = dir.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:{}", image.oci_layout().display(), image.tag()))
        .arg(&bundle)
        .output()
        .expect("run umoci");
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, bundle.join("rootfs"))
}

/// `chroot --userspec=UID:GID ROOTFS ARGS...` with no environment but PATH: the image's own files
/// only.
fn run_in(rootfs: &Path, userspec: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("chroot")
        .arg(format!("--userspec={userspec}"))
        .arg(rootfs)
        .args(args)
        .env_clear()
        // Only for finding chroot; the image's programs are named by absolute path.
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run chroot (these tests run as root, as the node does)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_image_runs_the_binary_under_test_as_nonroot_with_its_own_files() {
    let (_dir, rootfs) = unpack(&images().bridge);
    let in_image = std::fs::read(rootfs.join("usr/local/bin/etcd-bridge")).expect("the binary");
    assert!(
        in_image == std::fs::read(BINARY).expect("read the binary under test"),
        "the image holds the binary under test"
    );
    let (ok, stdout, stderr) = run_in(
        &rootfs,
        "65532:65532",
        &["/usr/local/bin/etcd-bridge", "--version"],
    );
    assert!(ok, "--version inside the image's files failed: {stderr}");
    assert_eq!(
        stdout.trim(),
        format!("etcd-bridge {}", env!("CARGO_PKG_VERSION"))
    );

    let passwd = std::fs::read_to_string(rootfs.join("etc/passwd")).expect("/etc/passwd");
    assert!(
        passwd
            .lines()
            .any(|l| l.starts_with("nonroot:x:65532:65532:")),
        "{passwd}"
    );
    let group = std::fs::read_to_string(rootfs.join("etc/group")).expect("/etc/group");
    assert!(group.lines().any(|l| l == "nonroot:x:65532:"), "{group}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let home = std::fs::metadata(rootfs.join("home/nonroot")).expect("/home/nonroot");
    assert_eq!(
        (home.uid(), home.gid()),
        (65532, 65532),
        "/home/nonroot owner"
    );
    let tmp = std::fs::metadata(rootfs.join("tmp")).expect("/tmp");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777, "/tmp mode");
    let bundle = std::fs::read_to_string(rootfs.join("etc/ssl/certs/ca-certificates.crt"))
        .expect("the CA bundle");
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 100,
        "the CA bundle holds Debian's roots"
    );
    // No shell, as distroless: nothing to exec into.
    assert!(!rootfs.join("bin/sh").exists(), "the image has no shell");
}

#[test]
fn the_busybox_image_has_a_shell_and_the_pause_image_sleeps() {
    let (_dir, rootfs) = unpack(&images().busybox);
    let (ok, stdout, stderr) = run_in(&rootfs, "0:0", &["/bin/sh", "-c", "echo hello from $0"]);
    assert!(ok, "sh in the busybox image: {stderr}");
    assert_eq!(stdout.trim(), "hello from /bin/sh");

    let pause = images().pause.config().expect("the pause image config");
    assert_eq!(
        pause["config"]["Entrypoint"],
        json!(["/bin/busybox", "sleep", "2147483647"])
    );
}
