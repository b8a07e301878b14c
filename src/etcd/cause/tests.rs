use super::*;
use std::io;
use std::sync::Arc;
use tonic::Status;

/// An error that only says what it is in words, with a source: like hyper's and tonic's.
#[derive(Debug)]
struct Wrapped(&'static str, Option<Box<dyn StdError + Send + Sync>>);

impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Wrapped {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
    }
}

fn alert(a: AlertDescription) -> io::Error {
    io::Error::other(rustls::Error::AlertReceived(a))
}

fn status_with_source(msg: &str, source: impl StdError + Send + Sync + 'static) -> Status {
    let mut s = Status::unavailable(msg);
    s.set_source(Arc::new(source));
    s
}

fn io_err(e: io::Error) -> etcd_client::Error {
    etcd_client::Error::IoError(e)
}

fn grpc(s: Status) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(s)
}

#[test]
fn a_tls_alert_is_named_wherever_it_is_in_the_chain() {
    let want = Cause::ClientCertRefused {
        alert: "BadCertificate".into(),
    };
    assert_eq!(
        classify(&io_err(alert(AlertDescription::BadCertificate))),
        want
    );
    // Deep in a status's source chain, under a vague "connection closed" nearer the top.
    let deep = Wrapped(
        "connection closed",
        Some(Box::new(Wrapped(
            "tls handshake",
            Some(Box::new(alert(AlertDescription::BadCertificate))),
        ))),
    );
    assert_eq!(
        classify(&grpc(status_with_source("transport error", deep))),
        want
    );
    // Only in words (another rustls version, or flattened into a message).
    let words = Wrapped("received fatal alert: BadCertificate", None);
    assert_eq!(
        classify(&grpc(status_with_source("transport error", words))),
        want
    );
    assert_eq!(
        classify(&io_err(alert(AlertDescription::CertificateRequired))),
        Cause::ClientCertRefused {
            alert: "CertificateRequired".into()
        }
    );
    assert_eq!(
        classify(&io_err(alert(AlertDescription::ProtocolVersion))),
        Cause::TlsRefused {
            alert: "ProtocolVersion".into()
        }
    );
}

#[test]
fn an_untrusted_server_certificate_and_a_plain_server_are_told_apart() {
    let untrusted = io::Error::other(rustls::Error::InvalidCertificate(
        rustls::CertificateError::UnknownIssuer,
    ));
    let c = classify(&io_err(untrusted));
    assert!(
        matches!(&c, Cause::ServerCertUntrusted { detail } if detail.contains("UnknownIssuer")),
        "{c:?}"
    );
    let plain = io::Error::other(rustls::Error::InvalidMessage(
        rustls::InvalidMessage::InvalidContentType,
    ));
    assert_eq!(classify(&io_err(plain)), Cause::NotTls);
}

#[test]
fn etcds_own_errors() {
    let c = |msg: &str| classify(&grpc(Status::invalid_argument(msg)));
    assert_eq!(
        c("etcdserver: authentication failed, invalid user ID or password"),
        Cause::CredentialsRefused
    );
    assert_eq!(
        c("etcdserver: authentication is not enabled"),
        Cause::AuthNotEnabled
    );
    assert_eq!(c("etcdserver: permission denied"), Cause::PermissionDenied);
    assert_eq!(
        classify(&grpc(Status::out_of_range(
            "etcdserver: mvcc: required revision is a future revision"
        ))),
        Cause::FutureRevision
    );
    assert_eq!(
        classify(&grpc(Status::out_of_range(
            "etcdserver: mvcc: required revision has been compacted"
        ))),
        Cause::Compacted
    );
    assert_eq!(
        classify(&grpc(Status::deadline_exceeded(
            "context deadline exceeded"
        ))),
        Cause::TimedOut
    );
    assert!(matches!(
        classify(&grpc(Status::unavailable("etcdserver: no leader"))),
        Cause::ConnectionLost { .. } | Cause::Server { .. }
    ));
    assert!(matches!(
        classify(&grpc(Status::resource_exhausted(
            "etcdserver: too many requests"
        ))),
        Cause::Server { .. }
    ));
}

#[test]
fn the_network() {
    let refused = classify(&io_err(io::Error::from(io::ErrorKind::ConnectionRefused)));
    assert!(matches!(refused, Cause::Unreachable { .. }), "{refused:?}");
    assert!(refused.retry_when_reachable());
    let words = Wrapped(
        "tcp connect error",
        Some(Box::new(Wrapped("Connection refused (os error 111)", None))),
    );
    let c = classify(&grpc(status_with_source("transport error", words)));
    assert!(matches!(c, Cause::Unreachable { .. }), "{c:?}");
    assert_eq!(
        classify(&io_err(io::Error::from(io::ErrorKind::TimedOut))),
        Cause::TimedOut
    );
    let ka = Wrapped("keep-alive timed out", None);
    assert_eq!(
        classify(&grpc(status_with_source("transport error", ka))),
        Cause::TimedOut
    );
    for vague in [io::ErrorKind::BrokenPipe, io::ErrorKind::ConnectionReset] {
        let c = classify(&io_err(io::Error::from(vague)));
        assert!(c.is_vague(), "{c:?}");
        assert!(!c.retry_when_reachable());
    }
    let canceled = Wrapped("operation was canceled", None);
    assert!(classify(&grpc(status_with_source("error", canceled))).is_vague());
}

#[test]
fn a_probe_only_replaces_a_vague_cause() {
    let vague = Cause::ConnectionLost {
        detail: "broken pipe".into(),
    };
    let alert = Cause::ClientCertRefused {
        alert: "BadCertificate".into(),
    };
    assert_eq!(
        refine(vague.clone(), Probe::Failed(alert.clone())),
        alert.clone()
    );
    assert_eq!(refine(vague.clone(), Probe::Accepted), vague);
    assert_eq!(refine(vague.clone(), Probe::Inconclusive), vague);
    // A vague probe does not replace a vague cause, and nothing replaces a definite one.
    assert_eq!(refine(vague.clone(), Probe::Failed(vague.clone())), vague);
    assert_eq!(
        refine(Cause::CredentialsRefused, Probe::Failed(alert)),
        Cause::CredentialsRefused
    );
}

#[test]
fn every_cause_names_a_flag_or_says_nothing_is_to_be_set() {
    let all = [
        Cause::ClientCertRefused { alert: "x".into() },
        Cause::TlsRefused { alert: "x".into() },
        Cause::ServerCertUntrusted { detail: "x".into() },
        Cause::NotTls,
        Cause::TlsRequired,
        Cause::CredentialsRefused,
        Cause::AuthNotEnabled,
        Cause::PermissionDenied,
        Cause::Unreachable { detail: "x".into() },
        Cause::TimedOut,
        Cause::ConnectionLost { detail: "x".into() },
        Cause::FutureRevision,
        Cause::Compacted,
        Cause::BadEndpoint { detail: "x".into() },
        Cause::Server { detail: "x".into() },
    ];
    for c in all {
        let check = c.check();
        assert!(
            check.contains("--")
                || check.starts_with("nothing to set")
                || check.contains("etcdctl"),
            "{c:?}: {check}"
        );
    }
    assert!(
        Cause::ClientCertRefused { alert: "x".into() }
            .check()
            .contains("--etcd-cert-file")
    );
    assert!(
        Cause::CredentialsRefused
            .check()
            .contains("--etcd-password")
    );
    assert!(
        Cause::ServerCertUntrusted { detail: "x".into() }
            .check()
            .contains("--etcd-ca-file")
    );
    assert!(Cause::TimedOut.check().contains("--etcd-timeout"));
    assert!(
        Cause::Unreachable { detail: "x".into() }
            .check()
            .contains("--etcd-endpoints")
    );
}
