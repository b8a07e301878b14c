#!/usr/bin/env bash
# Builds the Dockerfile's runtime stage as an OCI image without a Docker engine (no registry for
# base images is reachable here), plus two helper images for the test bed's node:
#
#   etcd-bridge  what `FROM gcr.io/distroless/cc-debian12:nonroot` gives, taken from the same
#                Debian packages distroless takes it from (glibc from libc6, libgcc_s from
#                libgcc-s1, the CA bundle from ca-certificates, passwd/group entries for nonroot
#                65532, /home/nonroot, /tmp), plus the binary at the path the Dockerfile copies it
#                to. USER, EXPOSE, ENTRYPOINT and CMD are read from the Dockerfile, never copied.
#   pause        the node's sandbox image: a static busybox (busybox-static) sleeping forever.
#   busybox      a shell and small network tools, for tests that look at the cluster from a pod.
#   NAME         (--layer only) busybox plus static binaries of our own in /usr/local/bin, e.g. the
#                data-plane tests' gRPC health client and seed server.
#
# Usage:
#   hack/image.sh                 the release binary, built as the Dockerfile builds it
#   hack/image.sh --binary PATH   that binary instead (the test bed passes the one under test)
#   hack/image.sh --fetch         only download the Debian packages (hack/deps.sh does, so that
#                                 tests find them in the cache)
#   hack/image.sh --layer NAME=BIN[,BIN...]
#                                 only the image NAME: busybox plus each BIN (static: nothing else
#                                 is in the image) in /usr/local/bin, tagged with their digest
#
# Output, in ${ETCD_BRIDGE_CACHE:-~/.cache/etcd-bridge}/images: NAME-oci/ (an OCI layout) and
# NAME.tar (a docker-archive, for `ctr images import`). Each image is rebuilt only when what it is
# made of changes. Prints one line per image: `REFERENCE ARCHIVE`. Tools: umoci, skopeo and
# apt-get download (hack/deps.sh installs them); no root needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cache="${ETCD_BRIDGE_CACHE:-$HOME/.cache/etcd-bridge}/images"
say() { echo ">> $*" >&2; }
fail() {
  echo "hack/image.sh: $*" >&2
  exit 1
}

binary=""
fetch_only=false
layer=""
while (($#)); do
  case "$1" in
    --binary) binary=$(realpath "$2") && shift 2 ;;
    --fetch) fetch_only=true && shift ;;
    --layer) layer=$2 && shift 2 ;;
    *) fail "unknown argument $1 (usage: hack/image.sh [--binary PATH | --fetch | --layer NAME=BIN[,BIN...]])" ;;
  esac
done
for tool in umoci skopeo apt-get dpkg-deb python3 flock; do
  command -v "$tool" >/dev/null || fail "$tool is missing: run hack/deps.sh"
done
layer_name="" layer_bins=()
if [[ -n "$layer" ]]; then
  layer_name=${layer%%=*}
  [[ "$layer" == *=* && "$layer_name" =~ ^[a-z0-9][a-z0-9-]*$ ]] || fail "--layer $layer: expected NAME=BIN[,BIN...]"
  IFS=, read -ra layer_bins <<<"${layer#*=}"
  for b in "${layer_bins[@]}"; do [[ -x "$b" ]] || fail "--layer: no executable at $b"; done
fi
if [[ -z "$binary" && -z "$layer" ]] && ! $fetch_only; then
  # The Dockerfile's own build command (hack/docker-build-check.sh checks it is this one).
  say "cargo build --release --locked --bin etcd-bridge"
  (cd "$root" && cargo build --release --locked --bin etcd-bridge >&2)
  binary="${CARGO_TARGET_DIR:-$root/target}/release/etcd-bridge"
fi
$fetch_only || [[ -n "$layer" ]] || [[ -x "$binary" ]] || fail "no executable at $binary"

mkdir -p "$cache/debs"
exec 9>"$cache/.lock"
flock 9 # one builder at a time: test binaries of two checkouts may ask together

# --- The Dockerfile's runtime stage (everything after the last FROM), exec-form instructions. ---
# Printed as shell assignments; a form this script cannot honour fails instead of being guessed.
eval "$(python3 - "$root/Dockerfile" <<'PY'
import json, shlex, sys
lines, cur = [], ""
for raw in open(sys.argv[1]):
    line = raw.rstrip("\n")
    if line.lstrip().startswith("#") and not cur:
        continue
    if line.endswith("\\"):
        cur += line[:-1] + " "
        continue
    cur += line
    if cur.strip():
        lines.append(cur.strip())
    cur = ""
stage = []
for l in lines:
    if l.split()[0].upper() == "FROM":
        stage = [l]
    else:
        stage.append(l)
got = {"base": stage[0].split()[1]}
for l in stage[1:]:
    word, _, rest = l.partition(" ")
    word, rest = word.upper(), rest.strip()
    if word in ("ENTRYPOINT", "CMD"):
        try:
            value = json.loads(rest)
        except ValueError:
            sys.exit(f"Dockerfile: {word} {rest} is not in exec form (a JSON array)")
        got[word.lower()] = value
    elif word == "USER":
        got["user"] = rest
    elif word == "EXPOSE":
        got.setdefault("expose", []).extend(p if "/" in p else p + "/tcp" for p in rest.split())
    elif word == "COPY":
        got["copy_to"] = rest.split()[-1]
for key in ("user", "entrypoint", "cmd", "expose", "copy_to"):
    if key not in got:
        sys.exit(f"Dockerfile: the runtime stage has no {key.upper()}")
print(f"base={shlex.quote(got['base'])}")
print(f"user={shlex.quote(got['user'])}")
print(f"bin_path={shlex.quote(got['copy_to'])}")
print("entrypoint=(" + " ".join(shlex.quote(a) for a in got["entrypoint"]) + ")")
print("cmd=(" + " ".join(shlex.quote(a) for a in got["cmd"]) + ")")
print("expose=(" + " ".join(shlex.quote(a) for a in got["expose"]) + ")")
PY
)"
[[ "$base" == gcr.io/distroless/cc-debian12* ]] ||
  fail "the runtime stage is FROM $base; this script rebuilds gcr.io/distroless/cc-debian12 only: update it with the Dockerfile"
version=$(awk -F'"' '/^version/ {print $2; exit}' "$root/Cargo.toml")

# --- Debian packages, downloaded once (apt-get download: no root, no install). ----------------
deb() {
  local pkg=$1 file
  file=$(ls "$cache/debs/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z "$file" ]]; then
    say "apt-get download $pkg"
    (cd "$cache/debs" && { apt-get download -q "$pkg" >/dev/null 2>&1 ||
      fail "apt-get download $pkg failed: run apt-get update (or hack/deps.sh) first"; })
    file=$(ls "$cache/debs/${pkg}"_*.deb | sort -V | tail -n1)
  fi
  echo "$file"
}
libc6=$(deb libc6)
libgcc=$(deb libgcc-s1)
cacerts=$(deb ca-certificates)
busybox=$(deb busybox-static)
if $fetch_only; then
  echo "$cache/debs"
  exit 0
fi

# --- One image from a root filesystem directory. --------------------------------------------
# build NAME TAG ROOTFS STAMP [umoci config flags...]: ROOTFS is packed as one layer, owned by
# root except the paths listed in ROOTFS.nonroot (owned by 65532), with fixed mtimes so the layer
# only changes when its files do.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
build() {
  local name=$1 ref=$2 rootfs=$3 stamp=$4
  shift 4
  local tag=${ref##*:} oci="$cache/$name-oci" tar="$cache/$name.tar"
  if [[ -f "$tar" && "$(cat "$cache/$name.stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "$ref $tar"
    return
  fi
  say "image $ref"
  local layer="$work/$name-layer.tar" tarflags=(--sort=name --numeric-owner --mtime=@0 --format=posix --pax-option=delete=atime,delete=ctime)
  local nonroot=()
  [[ -f "$rootfs.nonroot" ]] && mapfile -t nonroot <"$rootfs.nonroot"
  local exclude=()
  for p in "${nonroot[@]}"; do exclude+=("--exclude=./$p"); done
  tar -C "$rootfs" "${tarflags[@]}" --owner=0 --group=0 "${exclude[@]}" -cf "$layer" .
  for p in "${nonroot[@]}"; do
    tar -C "$rootfs" "${tarflags[@]}" --owner=65532 --group=65532 -rf "$layer" "./$p"
  done
  rm -rf "$oci.tmp" "$tar.tmp"
  umoci init --layout "$oci.tmp"
  umoci new --image "$oci.tmp:$tag"
  umoci raw add-layer --image "$oci.tmp:$tag" --history.created_by "hack/image.sh" "$layer"
  umoci config --image "$oci.tmp:$tag" --os linux --architecture amd64 \
    --created 1970-01-01T00:00:00Z --history.created_by "hack/image.sh" "$@"
  skopeo --insecure-policy copy -q "oci:$oci.tmp:$tag" "docker-archive:$tar.tmp:$ref" >&2
  rm -rf "$oci"
  mv "$oci.tmp" "$oci"
  mv "$tar.tmp" "$tar"
  echo "$stamp" >"$cache/$name.stamp"
  echo "$ref $tar"
}
config_flags() { # ENTRYPOINT... -- CMD...: umoci's flags for an exec-form entrypoint and cmd
  local out=(--clear=config.entrypoint --clear=config.cmd) seen=false
  for a in "$@"; do
    if [[ "$a" == "--" ]]; then seen=true; elif $seen; then out+=("--config.cmd=$a"); else out+=("--config.entrypoint=$a"); fi
  done
  printf '%s\n' "${out[@]}"
}
sum() { cat "$@" | sha256sum | cut -c1-32; }

# busybox_rootfs DIR: a static busybox with every applet linked, root and nobody.
busybox_rootfs() {
  local rootfs=$1
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,tmp,etc}
  install -m 0755 "$x/busybox/bin/busybox" "$rootfs/bin/busybox"
  chmod 1777 "$rootfs/tmp"
  "$rootfs/bin/busybox" --list-full | while read -r applet; do
    [[ -e "$rootfs/$applet" ]] || ln -s /bin/busybox "$rootfs/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
}
x="$work/x"

# --- --layer NAME=BIN,...: busybox plus our binaries, and nothing else. -------------------------
if [[ -n "$layer" ]]; then
  mkdir -p "$x/busybox"
  dpkg-deb -x "$busybox" "$x/busybox"
  rootfs="$work/$layer_name"
  busybox_rootfs "$rootfs"
  mkdir -p "$rootfs/usr/local/bin"
  for b in "${layer_bins[@]}"; do install -m 0755 "$b" "$rootfs/usr/local/bin/$(basename "$b")"; done
  digest=$(sum "${layer_bins[@]}" "$busybox" "$0")
  mapfile -t cfg < <(config_flags /bin/sh --)
  build "$layer_name" "docker.io/local/$layer_name:${digest:0:16}" "$rootfs" "$digest" "${cfg[@]}" \
    --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  exit 0
fi

# --- etcd-bridge: distroless cc-debian12:nonroot + the binary. --------------------------------
rootfs="$work/etcd-bridge"
mkdir -p "$rootfs"/{etc/ssl/certs,tmp,root,home/nonroot,usr/local/bin}
mkdir -p "$x"/{libc6,libgcc,cacerts}
dpkg-deb -x "$libc6" "$x/libc6"
dpkg-deb -x "$libgcc" "$x/libgcc"
dpkg-deb -x "$cacerts" "$x/cacerts"
# glibc's shared objects and the loader (lib/, lib64/); not its gconv modules, docs or locales.
cp -a "$x/libc6/lib" "$x/libc6/lib64" "$rootfs/"
cp -a "$x/libc6/etc/ld.so.conf.d" "$rootfs/etc/"
cp -a "$x/libgcc/lib/x86_64-linux-gnu/libgcc_s.so.1" "$rootfs/lib/x86_64-linux-gnu/"
# The bundle update-ca-certificates would write (the package's postinst, which never runs here).
find "$x/cacerts/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"
chmod 0700 "$rootfs/root" "$rootfs/home/nonroot"
echo "home/nonroot" >"$rootfs.nonroot"
install -m 0755 "$binary" "$rootfs$bin_path"
ports=()
for p in "${expose[@]}"; do ports+=("--config.exposedports=$p"); done
mapfile -t cfg < <(config_flags "${entrypoint[@]}" -- "${cmd[@]}")
build etcd-bridge "docker.io/local/etcd-bridge:$version" "$rootfs" \
  "$(sum "$binary" "$libc6" "$libgcc" "$cacerts" "$0" "$root/Dockerfile")" \
  "--config.user=$user" "${ports[@]}" "${cfg[@]}" --config.workingdir=/home/nonroot \
  --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --config.env=SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

# --- pause and busybox: one static busybox. -----------------------------------------------------
mkdir -p "$x/busybox"
dpkg-deb -x "$busybox" "$x/busybox"
bb_version=$(dpkg-deb -f "$busybox" Version | sed -E 's/^[0-9]+://; s/-.*//')
rootfs="$work/pause"
mkdir -p "$rootfs/bin"
install -m 0755 "$x/busybox/bin/busybox" "$rootfs/bin/busybox"
# PID 1 of every pod sandbox: it only holds the namespaces (the kubelet stops it with SIGKILL).
mapfile -t cfg < <(config_flags /bin/busybox sleep 2147483647 --)
build pause "docker.io/local/pause:$bb_version" "$rootfs" "$(sum "$busybox" "$0")" "${cfg[@]}" --config.user=65535:65535

rootfs="$work/busybox"
busybox_rootfs "$rootfs"
mapfile -t cfg < <(config_flags /bin/sh --)
build busybox "docker.io/local/busybox:$bb_version" "$rootfs" "$(sum "$busybox" "$0")" "${cfg[@]}" \
  --config.env=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
