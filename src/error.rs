//! The library's one error type. Each variant's message says what went wrong and what to do.

/// Errors of the bridge's I/O shells. The pure core reports problems as data instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "etcd at {endpoints}: {source}; check that etcd is running, reachable and that the --etcd-* credentials are right"
    )]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error(
        "Kubernetes API: {context}: {source}; check the kubeconfig or in-cluster credentials and the RBAC rules of the bridge's ServiceAccount"
    )]
    Kube {
        context: String,
        #[source]
        source: kube::Error,
    },
    #[error("write-back of {key}: {reason}")]
    WriteBack { key: String, reason: String },
    #[error("configuration: {0}")]
    Config(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
