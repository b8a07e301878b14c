//! The library's one error type. Each variant's message says what went wrong and what to do.

/// Errors of the bridge's I/O shells. The pure core reports problems as data instead.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `cause` is decided once per failed attempt (see `etcd::cause`) and names what to check;
    /// `source` is what the transport said.
    #[error("etcd at {endpoints}: {cause} [{source}]; {}", .cause.check())]
    Etcd {
        endpoints: String,
        cause: crate::etcd::Cause,
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
    /// A registry's etcd did not take a write-back request (unreachable, timed out, refused):
    /// the object says so in its status, and is retried.
    #[error("write-back of {key}: {reason}; the object is retried")]
    RegistryUnavailable { key: String, reason: String },
    #[error(
        "etcd source `{source_name}` is unreachable, so it cannot be read again now; what depends on that read (held deletions) waits until it answers"
    )]
    SourceDown { source_name: String },
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
