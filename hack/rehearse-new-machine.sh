#!/usr/bin/env bash
# Rehearses the README's first step on a new machine, on this one:
#   1. a minimal Debian bookworm root (debootstrap --variant=minbase, plus the compilers, git and
#      certificates every machine of this kind starts with), holding none of this project's
#      packages;
#   2. the toolchains a new machine has besides Debian (Go, Rust, Node.js), bind-mounted read-only
#      from this machine, and the checkout bind-mounted at /src;
#   3. inside it: hack/deps.sh, which must install every Debian package and pass its own checks
#      (kube binaries, helm and image packages come from this machine's ~/.cache/etcd-bridge,
#      bind-mounted: their builds are the same Go and npm steps on any machine);
#   4. a COLD build (fresh target dir) of the crates whose build scripts run system tools:
#      etcd-client (protoc and the well-known types), ring (the C compiler); then a build of the
#      etcd-bridge binary and a `preview --help`.
# Then it lists the Debian packages this machine has beyond the kind's baseline (a package list,
# BASELINE=file with lines "apt<TAB>name<TAB>version"), each with what pulled it in, so that a
# package installed by hand and used by the build shows up.
# Usage: hack/rehearse-new-machine.sh [--keep]   (root; ~2 GB under /var/tmp; about 10 minutes)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
root=${REHEARSAL_ROOT:-/var/tmp/etcd-bridge-rehearsal}
keep=false
[[ ${1:-} == --keep ]] && keep=true
[[ $(id -u) -eq 0 ]] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null || {
  echo ">> apt-get install debootstrap (for this rehearsal only)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

mounts=()
cleanup() {
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount -l "${mounts[$i]}" 2>/dev/null || true; done
  $keep || rm -rf --one-file-system "$root"
}
trap cleanup EXIT
bind() { # bind SRC DEST [ro]
  mkdir -p "$root$2"
  mount --bind "$1" "$root$2"
  [[ ${3:-} == ro ]] && mount -o remount,bind,ro "$root$2"
  mounts+=("$root$2")
}

if [[ ! -e $root/etc/debian_version ]]; then
  echo ">> debootstrap bookworm into $root (minbase + build-essential, git, ca-certificates, curl)"
  rm -rf "$root"
  debootstrap --variant=minbase --include=build-essential,git,ca-certificates,curl,xz-utils,pkg-config \
    bookworm "$root" http://deb.debian.org/debian >"$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log"; exit 1; }
fi
cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
cp /etc/resolv.conf "$root/etc/resolv.conf"
# A chroot has no init: packages must not try to start their services (etcd-server would).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc"; mounts+=("$root/proc")
bind /sys /sys ro
bind /dev /dev
bind /dev/pts /dev/pts
bind /usr/local/go /usr/local/go ro
bind /root/.cargo /root/.cargo ro
bind /root/.rustup /root/.rustup ro
bind /usr/lib/node_modules /usr/lib/node_modules ro
cp /usr/bin/node "$root/usr/bin/node"
ln -sf ../lib/node_modules/npm/bin/npm-cli.js "$root/usr/bin/npm"
bind "$HOME/.cache/etcd-bridge" /root/.cache/etcd-bridge
bind "$(go env GOMODCACHE)" /root/go/pkg/mod
bind "$src" /src ro

in_root() {
  chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/go/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    GOMODCACHE=/root/go/pkg/mod GOPROXY="$(go env GOPROXY)" CARGO_HOME=/root/cargo-home \
    RUSTUP_HOME=/root/.rustup TERM=dumb bash -euo pipefail -c "$1"
}
# cargo's registry cache is the only writable part of CARGO_HOME a build needs.
mkdir -p "$root/root/cargo-home"
cp -a /root/.cargo/config.toml "$root/root/cargo-home/" 2>/dev/null || true
[[ -d /root/.cargo/registry ]] && { mkdir -p "$root/root/cargo-home/registry"; bind /root/.cargo/registry /root/cargo-home/registry; }

echo ">> in the new root: hack/deps.sh"
in_root "dpkg-query -W -f='\${Package}\n' | sort" >"$root.before"
in_root "cd /src && hack/deps.sh"
echo ">> in the new root: a cold build of the crates that run system tools (etcd-client: protoc; ring: cc)"
in_root "cd /src && CARGO_TARGET_DIR=/root/target cargo build --locked -p etcd-client -p ring 2>&1 | tail -3"
echo ">> in the new root: the etcd-bridge binary, and preview --help"
in_root "cd /src && CARGO_TARGET_DIR=/root/target cargo build --locked --bin etcd-bridge 2>&1 | tail -2 && /root/target/debug/etcd-bridge preview --help | head -3"
echo ">> the packages hack/deps.sh installed in the new root (with their dependencies):"
in_root "dpkg-query -W -f='\${Package}\n' | sort" | comm -13 "$root.before" - | tr '\n' ' '; echo
rm -f "$root.before"

if [[ -n ${BASELINE:-} ]]; then
  echo ">> this machine's Debian packages beyond the baseline ($BASELINE), and what pulled each in:"
  awk -F'\t' '$1=="apt"{print $2}' "$BASELINE" | sed 's/:.*//' | sort -u >"$root.base"
  dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' | awk '$2 ~ /^ii/{print $1}' | sed 's/:.*//' | sort -u >"$root.now"
  for p in $(comm -13 "$root.base" "$root.now"); do
    by=$(apt-cache rdepends --installed --no-recommends --no-suggests "$p" 2>/dev/null | sed -n '3,$p' | tr -d ' |' | sort -u | tr '\n' ' ')
    grep -q "\[$p\]=" "$src/hack/deps.sh" && how="hack/deps.sh" || how="pulled in by: ${by:-nothing (installed by hand?)}"
    echo "  $p: $how"
  done
  rm -f "$root.base" "$root.now"
fi
echo ">> rehearsal passed"
