# etcd-bridge. A newcomer needs two commands: `make demo` and `make test`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo

.PHONY: help deps build demo test lint bench crds clean-cache

help:
	@echo "make demo   - run the bridge on a local test bed (etcd + kube-apiserver) and show what it does"
	@echo "make test   - install whatever is missing, then run every test (lint, unit, integration, demo)"
	@echo "make bench  - benchmarks (release build)"

# Debian packages, kube-apiserver/kube-controller-manager/kubectl (Go build, cached), helm.
deps:
	@hack/deps.sh

build: deps
	@echo ">> cargo build (the first build compiles ~300 crates: several minutes on 2 cores)"
	$(CARGO) build --workspace --bins --examples

demo: build
	target/debug/examples/demo --bridge target/debug/etcd-bridge

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: deps lint
	$(CARGO) test --workspace --all-targets
	@echo ">> the demo, end to end (--once)"
	$(CARGO) build --bin etcd-bridge --example demo
	target/debug/examples/demo --bridge target/debug/etcd-bridge --once

# The CRD YAML is generated from src/writeback/crd.rs, never edited by hand.
crds:
	$(CARGO) run --quiet --bin etcd-bridge -- crd > crds/etcdregistrations.etcd-bridge.io.yaml
	mkdir -p charts/etcd-bridge/crds
	cp crds/etcdregistrations.etcd-bridge.io.yaml charts/etcd-bridge/crds/

# Removes the cached Kubernetes binaries and helm (the next run rebuilds them).
clean-cache:
	rm -rf $${ETCD_BRIDGE_CACHE:-$$HOME/.cache/etcd-bridge}
