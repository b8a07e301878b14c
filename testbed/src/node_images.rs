//! The node's images, built without a Docker engine by `hack/image.sh`: the bridge (the
//! Dockerfile's runtime stage around the binary under test), the sandbox's pause image and a
//! busybox for looking around from a pod. Each is an OCI layout and a docker-archive in
//! `~/.cache/etcd-bridge/images`, rebuilt only when what it is made of changes.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One built image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The one normalised name it is imported under, e.g. `docker.io/local/pause:1.35.0`.
    pub reference: String,
    /// A docker-archive tar, for `ctr images import`.
    pub archive: PathBuf,
}

impl Image {
    /// The OCI layout beside the archive (`NAME-oci`).
    pub fn oci_layout(&self) -> PathBuf {
        let stem = self
            .archive
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.archive.with_file_name(format!("{stem}-oci"))
    }

    /// The tag, after the last `:`.
    pub fn tag(&self) -> &str {
        self.reference.rsplit_once(':').map_or("", |(_, t)| t)
    }

    /// The repository, before the tag.
    pub fn repository(&self) -> &str {
        self.reference
            .rsplit_once(':')
            .map_or(self.reference.as_str(), |(r, _)| r)
    }

    /// The image configuration (`application/vnd.oci.image.config.v1+json`), read from the OCI
    /// layout: index.json, then the manifest of this tag, then its config blob.
    pub fn config(&self) -> Result<Value, String> {
        let layout = self.oci_layout();
        let index = read_json(&layout.join("index.json"))?;
        let manifest = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == self.tag())
            .ok_or_else(|| format!("{}: no manifest tagged {}", layout.display(), self.tag()))?;
        let manifest = read_json(&blob(&layout, &manifest["digest"])?)?;
        read_json(&blob(&layout, &manifest["config"]["digest"])?)
    }
}

/// The three images of the node.
#[derive(Clone, Debug)]
pub struct Images {
    pub bridge: Image,
    pub pause: Image,
    pub busybox: Image,
}

impl Images {
    pub fn all(&self) -> [&Image; 3] {
        [&self.bridge, &self.pause, &self.busybox]
    }
}

/// Runs `hack/image.sh --binary BINARY` (seconds when nothing changed) and returns its images.
pub fn build(binary: &Path) -> Result<Images, String> {
    let script = crate::repo::path("hack/image.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--binary")
        .arg(binary)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} --binary {} failed (its output is above); run it by hand to see why",
            script.display(),
            binary.display()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let find = |repo: &str| -> Result<Image, String> {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(r, _)| {
                r.rsplit_once(':')
                    .is_some_and(|(name, _)| name.ends_with(repo))
            })
            .map(|(r, a)| Image {
                reference: r.to_string(),
                archive: PathBuf::from(a),
            })
            .ok_or_else(|| format!("hack/image.sh printed no {repo} image:\n{text}"))
    };
    Ok(Images {
        bridge: find("/etcd-bridge")?,
        pause: find("/pause")?,
        busybox: find("/busybox")?,
    })
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The path of a blob named by a `sha256:...` digest.
fn blob(layout: &Path, digest: &Value) -> Result<PathBuf, String> {
    let d = digest.as_str().unwrap_or_default();
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| format!("{}: unexpected digest {digest}", layout.display()))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_splits_into_repository_and_tag_at_the_last_colon() {
        let i = Image {
            reference: "docker.io/local/etcd-bridge:0.1.0".into(),
            archive: PathBuf::from("/c/images/etcd-bridge.tar"),
        };
        assert_eq!(i.repository(), "docker.io/local/etcd-bridge");
        assert_eq!(i.tag(), "0.1.0");
        assert_eq!(i.oci_layout(), PathBuf::from("/c/images/etcd-bridge-oci"));
    }
}
