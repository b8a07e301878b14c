//! The Helm chart, on the real test bed: `helm lint` and `helm template` for every documented
//! combination of values, each rendering validated by the test bed's kube-apiserver
//! (`kubectl apply --dry-run=server`); bad values refused with a message that names the field; and
//! `helm install` / `upgrade` / `uninstall` end to end, with the bridge run outside the cluster
//! (the test bed has no kubelet) exactly as the chart's Deployment would run it: its args, its env,
//! its mounted Secrets, and a token of the chart's ServiceAccount, so it has the chart's RBAC and
//! nothing more.

#[path = "../common/mod.rs"]
mod common;

/// helm, kubectl, the rendered chart, and running the bridge as the chart's Deployment would.
mod support;

/// 1-3: every documented combination rendered and validated, bad values, RBAC as rendered.
mod render;

/// 4-5: install, import and write-back under the chart's RBAC, upgrade, uninstall; TLS and auth;
/// SIGTERM hand-over.
mod install;

/// Several registries: the EtcdSource CRD, `--sources` and the Secrets RBAC.
mod sources;
