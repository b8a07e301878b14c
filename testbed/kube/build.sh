#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kubectl from k8s.io/kubernetes through the
# Go module proxy, once per version, into a cache outside the repo. A warm run only checks stamps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/go.mod")
out="${ETCD_BRIDGE_CACHE:-$HOME/.cache/etcd-bridge}/kube/$version"
bins=(kube-apiserver kube-controller-manager kubectl)
stamp="$out/.built-$(sha256sum "$here/go.mod" "$here/go.sum" | sha256sum | cut -c1-16)"
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
touch "$stamp"
echo "$out"
