#!/usr/bin/env bash
# Runs the Dockerfile's build stage outside Docker (there is no Docker engine here), as closely as
# it can: the same build context (the repository minus .dockerignore), the same command, read from
# the Dockerfile, and checks of the result against what the runtime stage gives it.
#
#   hack/docker-build-check.sh           reuse compiled dependencies from target/ (minutes)
#   hack/docker-build-check.sh --fresh   an empty target dir, like `docker build` (much longer)
#
# What it cannot prove (no engine, no registry): that the base images pull and are what their
# tags say, the apt-get line inside the builder image, crates.io downloads from inside the build,
# and the runtime stage itself (distroless cc-debian12:nonroot, USER, ENTRYPOINT). It checks what
# the runtime stage relies on instead: shared libraries, glibc version, running as 65532 with an
# empty environment.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

fresh=false
[[ "${1:-}" == "--fresh" ]] && fresh=true

say() { echo ">> $*" >&2; }
ok() { echo "   ok: $*" >&2; }
note() { echo "   note: $*" >&2; }
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# --- The Dockerfile, read rather than copied, so this script cannot drift from it. -----------
say "reading Dockerfile"
build_image=$(awk 'toupper($1) == "FROM" && toupper($3) == "AS" && $4 == "build" {print $2}' Dockerfile)
run_image=$(awk 'toupper($1) == "FROM" {img = $2} END {print img}' Dockerfile)
build_stage=$(sed -n '/^FROM .* AS build/,/^FROM /p' Dockerfile)
build_cmd=$(grep -E '^RUN cargo ' <<<"$build_stage" | sed 's/^RUN //')
[[ -n "$build_image" ]] || fail "no 'FROM ... AS build' stage in the Dockerfile"
[[ "$build_cmd" == "cargo build --release --locked --bin etcd-bridge" ]] ||
  fail "the build stage runs '$build_cmd', not 'cargo build --release --locked --bin etcd-bridge': update this script with the Dockerfile"
grep -q 'protobuf-compiler' <<<"$build_stage" || fail "the build stage does not install protobuf-compiler (etcd-client compiles .proto files)"
grep -q 'libprotobuf-dev' <<<"$build_stage" || fail "the build stage does not install libprotobuf-dev (the well-known google/protobuf/*.proto files protoc imports)"
grep -qE '^COPY --from=build /src/target/release/etcd-bridge ' Dockerfile || fail "the runtime stage does not copy /src/target/release/etcd-bridge"
grep -qE '^USER 65532' Dockerfile || fail "the runtime stage does not run as 65532 (the chart's runAsUser)"
ok "build stage $build_image: $build_cmd; runtime stage $run_image"

# --- The builder's toolchain. -----------------------------------------------------------------
want_rust=$(sed -E 's/^rust:([0-9]+\.[0-9]+).*/\1/' <<<"$build_image")
say "toolchain (the image has rust $want_rust and Debian's protoc)"
have_rust=$(rustc --version | awk '{print $2}')
if [[ "$have_rust" == "$want_rust" || "$have_rust" == "$want_rust".* ]]; then
  ok "rustc $have_rust"
else
  note "rustc $have_rust here, $want_rust in the image: a difference the image may not share"
fi
msrv=$(awk -F'"' '/^rust-version/ {print $2}' Cargo.toml)
[[ "$(printf '%s\n%s\n' "$msrv" "$want_rust" | sort -V | head -n1)" == "$msrv" ]] ||
  fail "the image's rust $want_rust is older than Cargo.toml's rust-version $msrv"
command -v protoc >/dev/null || fail "protoc not found: apt-get install protobuf-compiler (the Dockerfile's apt-get line)"
ok "$(protoc --version)"
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-unknown}")
[[ "$build_image" == *"$codename"* ]] && ok "Debian $codename, as the image" ||
  note "this is Debian $codename, the image is $build_image"

# --- The build context: the repository minus .dockerignore (COPY . .). ------------------------
say "build context (honouring .dockerignore)"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
excludes=()
while IFS= read -r pattern || [[ -n "$pattern" ]]; do
  pattern="${pattern%%#*}"
  pattern="${pattern//[[:space:]]/}"
  [[ -z "$pattern" ]] && continue
  [[ "$pattern" == !* ]] && fail ".dockerignore exception '$pattern' is not supported by this script"
  excludes+=("--exclude=./${pattern#/}")
done <.dockerignore
tar -C "$root" --anchored "${excludes[@]}" -cf - . | tar -C "$ctx" -xf -
ok "$(du -sh "$ctx" | cut -f1) copied to $ctx, without: ${excludes[*]#--exclude=./}"

# --- The build stage's command. --------------------------------------------------------------
if $fresh; then
  target="$ctx/target"
else
  # Dependencies compiled for release before are reused; the crate itself is rebuilt from $ctx.
  target="${CARGO_TARGET_DIR:-$root/target}"
fi
say "cd $ctx && $build_cmd   (CARGO_TARGET_DIR=$target; the first release build takes several minutes on 2 cores)"
(cd "$ctx" && CARGO_TARGET_DIR="$target" $build_cmd)
bin="$target/release/etcd-bridge"
[[ -x "$bin" ]] || fail "no binary at $bin"
ok "$bin ($(du -h "$bin" | cut -f1))"

# --- What the runtime stage relies on. --------------------------------------------------------
say "the binary"
version=$("$bin" --version)
want_version="etcd-bridge $(awk -F'"' '/^version/ {print $2; exit}' Cargo.toml)"
[[ "$version" == "$want_version" ]] || fail "--version printed '$version', want '$want_version'"
ok "--version: $version"
app_version=$(awk -F'"' '/^appVersion/ {print $2}' charts/etcd-bridge/Chart.yaml)
[[ "$version" == "etcd-bridge $app_version" ]] || fail "the chart's appVersion $app_version (the default image tag) is not the binary's version"
ok "the chart's appVersion is $app_version"
"$bin" crd | cmp -s - crds/etcdregistrations.etcd-bridge.io.yaml ||
  fail "'etcd-bridge crd' differs from crds/etcdregistrations.etcd-bridge.io.yaml: run make crds"
ok "crd prints crds/etcdregistrations.etcd-bridge.io.yaml"

# distroless/cc-debian12 has glibc 2.36, libgcc_s and libm; nothing else may be linked.
libs=$(ldd "$bin" | awk '{print $1}' | sed 's#.*/##')
for lib in $libs; do
  case "$lib" in
    linux-vdso.so.* | libc.so.6 | libm.so.6 | libgcc_s.so.1 | ld-linux-*.so.* | libpthread.so.0 | libdl.so.2 | librt.so.1) ;;
    *) fail "links $lib, which the distroless cc image does not have (ldd: $(ldd "$bin" | tr '\n' ' '))" ;;
  esac
done
ok "shared libraries: $(tr '\n' ' ' <<<"$libs")"
if command -v objdump >/dev/null; then
  glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -V | tail -n1)
  [[ "$(printf '%s\n2.36\n' "$glibc" | sort -V | tail -n1)" == "2.36" ]] ||
    fail "needs glibc $glibc; distroless cc-debian12 has 2.36"
  ok "needs glibc $glibc (cc-debian12 has 2.36)"
else
  note "objdump not found: glibc symbol versions not checked"
fi

# As the image runs it: uid/gid 65532, no environment, / as the working directory.
if [[ $(id -u) -eq 0 ]] && command -v setpriv >/dev/null; then
  home=$(mktemp -d)
  trap 'rm -rf "$ctx" "$home"' EXIT
  install -m 0755 "$bin" "$home/etcd-bridge"
  chmod 0755 "$home"
  as_nonroot() { (cd / && setpriv --reuid=65532 --regid=65532 --clear-groups env -i "$home/etcd-bridge" "$@"); }
  [[ "$(as_nonroot --version)" == "$version" ]] || fail "--version as 65532 with an empty environment"
  as_nonroot crd | cmp -s - crds/etcdregistrations.etcd-bridge.io.yaml || fail "crd as 65532"
  # Outside a pod, `run` finds no credentials: it must say so and exit, not panic.
  out=$(as_nonroot run --etcd-endpoints=http://127.0.0.1:1 --listen=127.0.0.1:0 --writeback=false 2>&1) && fail "run without credentials succeeded"
  grep -q "no Kubernetes credentials" <<<"$out" || fail "run without credentials: $out"
  grep -q "panicked" <<<"$out" && fail "run panicked: $out"
  ok "as uid 65532 with an empty environment: --version, crd, and run fails cleanly without credentials"
else
  note "not root (or no setpriv): not run as uid 65532"
fi

cat >&2 <<EOF
>> the build stage's command works here and its binary fits the runtime stage.
   The runtime stage's config (USER, EXPOSE, ENTRYPOINT, CMD) and contents, rebuilt from Debian
   packages by hack/image.sh, are checked by tests/node_image.rs, and that image runs on a real
   node (probes, uid 65532, read-only root, in-cluster credentials) in tests/node_helm.rs.
   Unproven without a Docker engine and registry access:
   - that $build_image and $run_image pull, and contain what their tags promise;
   - the apt-get line inside the builder, and crates.io downloads from inside the build.
EOF
