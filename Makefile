# etcd-bridge. A newcomer needs two commands: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
# Compiled crates live outside the checkout, beside the other caches, so a fresh clone (CI's, or a
# second worktree) reuses them instead of compiling ~300 crates again.
export ETCD_BRIDGE_CACHE ?= $(HOME)/.cache/etcd-bridge
export CARGO_TARGET_DIR ?= $(ETCD_BRIDGE_CACHE)/target
T := $(CARGO_TARGET_DIR)

.PHONY: help deps build demo test lint bench crds clean-cache

help:
	@echo "make demo   - run the bridge on a local test bed (etcd, kube-apiserver, a real node) and show what it does"
	@echo "make test   - install whatever is missing, then run every test (lint, unit, integration, demo)"
	@echo "make bench  - benchmarks (release build): latency, burst, cold start, memory; see docs/benchmarks.md"

# Debian packages, kube-apiserver/kube-controller-manager/kubectl (Go build, cached), helm.
deps:
	@hack/deps.sh

build: deps
	@echo ">> cargo build (the first build compiles ~300 crates: several minutes on 2 cores)"
	$(CARGO) build --workspace --bins --examples

demo: build
	$(T)/debug/examples/demo --bridge $(T)/debug/etcd-bridge

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps lint
	$(CARGO) test --workspace --all-targets
	@echo ">> the demo, end to end (--once)"
	$(CARGO) build --bin etcd-bridge --example demo
	$(T)/debug/examples/demo --bridge $(T)/debug/etcd-bridge --once
	@echo ">> the benchmark harness, smoke size"
	$(CARGO) build --bin etcd-bridge --example bench && $(T)/debug/examples/bench --smoke --bridge $(T)/debug/etcd-bridge
	@echo ">> the Dockerfile's build steps, without Docker (a release build)"
	hack/docker-build-check.sh

# The benchmarks (docs/benchmarks.md): a release build, then every section in one run on a private
# test bed (about 4 minutes on 2 cores); prints the table and writes target/bench/results.json and
# latency.svg. Goals missed do not fail it. BENCH_ARGS adds flags, e.g. BENCH_ARGS=--services=100.
bench: deps
	@echo ">> cargo build --release (the first release build compiles ~300 crates: several minutes)"
	$(CARGO) build --release --bin etcd-bridge --example bench
	$(T)/release/examples/bench --bridge $(T)/release/etcd-bridge --out target/bench $(BENCH_ARGS)

# The CRD YAML is generated from src/writeback/crd.rs, never edited by hand.
crds:
	$(CARGO) run --quiet --bin etcd-bridge -- crd etcdregistrations > crds/etcdregistrations.etcd-bridge.io.yaml
	$(CARGO) run --quiet --bin etcd-bridge -- crd etcdsources > crds/etcdsources.etcd-bridge.io.yaml
	mkdir -p charts/etcd-bridge/crds
	cp crds/etcdregistrations.etcd-bridge.io.yaml crds/etcdsources.etcd-bridge.io.yaml charts/etcd-bridge/crds/

# Removes the cached Kubernetes binaries, helm and compiled crates (the next run rebuilds them).
clean-cache:
	rm -rf $(ETCD_BRIDGE_CACHE)
