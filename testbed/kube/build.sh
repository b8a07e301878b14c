#!/usr/bin/env bash
# Builds the test bed's Kubernetes binaries from k8s.io/kubernetes through the Go module proxy, and
# CoreDNS from its own Go module, once per version, into a cache outside the repo. A warm run only
# checks stamps.
#   control plane: kube-apiserver, kube-controller-manager, kubectl
#   node (testbed/src/node*.rs): kubelet, kube-proxy, kube-scheduler (the chart's pods have no
#   nodeName), and CoreDNS for cluster.local
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go.mod")
# CoreDNS is a module of its own (its go.mod pins its client-go), built with `go install`.
coredns_version=v1.15.0
out="${ETCD_BRIDGE_CACHE:-$HOME/.cache/etcd-bridge}/kube/$version"
bins=(kube-apiserver kube-controller-manager kubectl kubelet kube-proxy kube-scheduler)
# The stamp hashes what decides the result (file contents, not their paths: every worktree of the
# repo shares the cache).
stamp="$out/.built-$(cat "$here/go.mod" "$here/go.sum" <(echo "${bins[*]} coredns@$coredns_version") | sha256sum | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$out"
cd "$here"
for b in "${bins[@]}"; do
  start=$(date +%s)
  echo ">> building $b $version (cold: several minutes on 2 cores; Go build cache in $(go env GOCACHE))" >&2
  # Progress: print each package as it compiles, thinned to one line in 50 so the log stays short.
  CGO_ENABLED=0 go build -trimpath -v -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$version" | cut -d. -f2)" \
    -o "$out/$b.tmp" "k8s.io/kubernetes/cmd/$b" 2>&1 | awk -v b="$b" 'NR % 50 == 0 { printf "   %s: %d packages compiled\n", b, NR; fflush() }' >&2
  [[ ${PIPESTATUS[0]} -eq 0 ]] || { echo "build of $b failed" >&2; exit 1; }
  mv "$out/$b.tmp" "$out/$b"
  echo ">> $b built in $(( $(date +%s) - start ))s" >&2
done

start=$(date +%s)
echo ">> building coredns $coredns_version from its Go module (cold: downloads and compiles for several minutes)" >&2
gobin=$(mktemp -d)
trap 'rm -rf "$gobin"' EXIT
(cd "$gobin" && CGO_ENABLED=0 GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version") >&2 ||
  { echo "build of coredns $coredns_version failed" >&2; exit 1; }
mv "$gobin/coredns" "$out/coredns"
echo ">> coredns built in $(( $(date +%s) - start ))s" >&2

touch "$stamp"
echo "$out"
