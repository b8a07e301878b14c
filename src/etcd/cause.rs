//! Why a request to etcd failed, decided once per connection attempt.
//!
//! The transport words one refusal in many ways: a client certificate etcd rejects shows up as
//! "BadCertificate" on one attempt and "broken pipe", "connection closed" or "operation was
//! canceled" on the next, depending on whether the TLS alert or the failed write is noticed
//! first. So the error is classified into a [`Cause`], which names the flag to check; when the
//! error alone cannot tell (the connection was just closed), a probe of the endpoint
//! ([`super::probe`]) decides, and [`refine`] merges what it saw.

use std::error::Error as StdError;
use std::fmt;
use tokio_rustls::rustls::{self, AlertDescription};

/// The class of an etcd failure: what went wrong, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// etcd's TLS layer rejected the client certificate (or the lack of one) with this alert.
    ClientCertRefused { alert: String },
    /// etcd's TLS layer ended the handshake with another alert (versions, ciphers, ...).
    TlsRefused { alert: String },
    /// etcd's serving certificate does not verify against the CA given to the bridge.
    ServerCertUntrusted { detail: String },
    /// The endpoint says https:// but etcd does not speak TLS there.
    NotTls,
    /// The endpoint says http:// but etcd speaks only TLS there.
    TlsRequired,
    /// Username or password refused.
    CredentialsRefused,
    /// A username was given, but etcd has authentication off.
    AuthNotEnabled,
    /// Authenticated, but the user may not read the prefix.
    PermissionDenied,
    /// Nothing accepts connections at the endpoint (refused, no route, no such host).
    Unreachable { detail: String },
    /// etcd did not answer within --etcd-timeout (or the keepalive).
    TimedOut,
    /// The connection was closed, and nothing tells why.
    ConnectionLost { detail: String },
    /// A read at a revision etcd has not reached: etcd went back in time (replaced, restored).
    FutureRevision,
    /// A read at a revision etcd has compacted away.
    Compacted,
    /// The endpoint list itself is wrong (not a URL, empty).
    BadEndpoint { detail: String },
    /// etcd answered with some other error.
    Server { detail: String },
}

impl Cause {
    /// The flags (or the thing) to check, for the error message.
    pub fn check(&self) -> &'static str {
        match self {
            Cause::ClientCertRefused { .. } => {
                "check --etcd-cert-file and --etcd-key-file: a client certificate and key signed by a CA that etcd trusts (etcd's --trusted-ca-file)"
            }
            Cause::TlsRefused { .. } => {
                "check --etcd-ca-file, --etcd-cert-file and --etcd-key-file against etcd's TLS settings"
            }
            Cause::ServerCertUntrusted { .. } => {
                "check --etcd-ca-file: the CA that signed etcd's serving certificate, and that the host in --etcd-endpoints is one the certificate names"
            }
            Cause::NotTls => {
                "check --etcd-endpoints: use http:// for an etcd without TLS, or turn TLS on in etcd"
            }
            Cause::TlsRequired => {
                "check --etcd-endpoints: use https:// (with --etcd-ca-file) for an etcd that serves TLS"
            }
            Cause::CredentialsRefused => "check --etcd-username and --etcd-password",
            Cause::AuthNotEnabled => {
                "check --etcd-username and --etcd-password: leave them out, etcd has authentication off"
            }
            Cause::PermissionDenied => {
                "check the roles of --etcd-username: it needs read access to every --prefix"
            }
            Cause::Unreachable { .. } => {
                "check that etcd is running and --etcd-endpoints (host and port)"
            }
            Cause::TimedOut => {
                "check --etcd-timeout, that etcd is not overloaded or hung, and the network to --etcd-endpoints"
            }
            Cause::ConnectionLost { .. } => {
                "check that etcd is running and healthy and --etcd-endpoints; if etcd requires client certificates, --etcd-cert-file and --etcd-key-file"
            }
            Cause::FutureRevision => {
                "nothing to set: etcd was replaced or restored from an older backup, and the bridge lists it again"
            }
            Cause::Compacted => "nothing to set: the bridge lists again",
            Cause::BadEndpoint { .. } => {
                "check --etcd-endpoints: comma-separated URLs such as https://10.0.0.1:2379"
            }
            Cause::Server { .. } => "check etcd's health (etcdctl endpoint health) and its log",
        }
    }

    /// The transport gave no reason beyond a closed connection; a probe may find the real one.
    pub fn is_vague(&self) -> bool {
        matches!(self, Cause::ConnectionLost { .. })
    }

    /// Whether a wait before the next attempt may be cut short as soon as the endpoint accepts
    /// connections again: only when the attempt failed for want of anything listening, so an
    /// etcd that refuses the bridge (credentials, TLS) is never retried faster than its backoff.
    pub fn retry_when_reachable(&self) -> bool {
        matches!(self, Cause::Unreachable { .. })
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::ClientCertRefused { alert } => {
                write!(f, "etcd refused the client certificate (TLS alert {alert})")
            }
            Cause::TlsRefused { alert } => {
                write!(f, "etcd refused the TLS handshake (TLS alert {alert})")
            }
            Cause::ServerCertUntrusted { detail } => {
                write!(f, "etcd's serving certificate is not trusted ({detail})")
            }
            Cause::NotTls => write!(f, "etcd does not speak TLS at this https:// endpoint"),
            Cause::TlsRequired => write!(f, "etcd requires TLS at this http:// endpoint"),
            Cause::CredentialsRefused => write!(f, "etcd refused the username or password"),
            Cause::AuthNotEnabled => write!(f, "etcd has authentication off"),
            Cause::PermissionDenied => write!(f, "etcd denied the user permission"),
            Cause::Unreachable { detail } => write!(f, "etcd is unreachable ({detail})"),
            Cause::TimedOut => write!(f, "etcd did not answer in time"),
            Cause::ConnectionLost { detail } => {
                write!(f, "etcd closed the connection ({detail})")
            }
            Cause::FutureRevision => write!(
                f,
                "etcd is at an older revision than the bridge has seen (replaced or restored)"
            ),
            Cause::Compacted => write!(f, "the revision read was compacted"),
            Cause::BadEndpoint { detail } => write!(f, "invalid endpoint ({detail})"),
            Cause::Server { detail } => write!(f, "etcd answered: {detail}"),
        }
    }
}

/// One error line for a failure where a full [`crate::Error::Etcd`] is not at hand (write-back's
/// lease keeper and watches): the cause, what the transport said, and what to check.
pub fn describe(err: &etcd_client::Error) -> String {
    let cause = classify(err);
    format!("{cause} [{err}]; {}", cause.check())
}

/// Classifies one failure of the etcd client.
pub fn classify(err: &etcd_client::Error) -> Cause {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) => from_status(status),
        E::TransportError(e) => from_chain(e).unwrap_or_else(|| lost(&err.to_string())),
        E::IoError(e) => from_chain(e).unwrap_or_else(|| lost(&err.to_string())),
        E::InvalidUri(e) => Cause::BadEndpoint {
            detail: e.to_string(),
        },
        E::InvalidArgs(m) | E::EndpointError(m) => Cause::BadEndpoint { detail: m.clone() },
        // A watch cancelled by etcd (with its reason), or its stream gone.
        E::WatchError(m) => from_etcd_message(m)
            .or_else(|| from_text(m))
            .unwrap_or_else(|| lost(m)),
        other => Cause::Server {
            detail: other.to_string(),
        },
    }
}

fn lost(detail: &str) -> Cause {
    Cause::ConnectionLost {
        detail: detail.to_string(),
    }
}

/// Classifies any error by walking its source chain; `None` if nothing in it is recognised.
pub fn classify_chain(err: &(dyn StdError + 'static)) -> Option<Cause> {
    from_chain(err)
}

/// etcd's own error strings (etcdserver/api/v3rpc/rpctypes), which come back as gRPC statuses
/// or as the reason a watch was cancelled.
fn from_etcd_message(msg: &str) -> Option<Cause> {
    let has = |s: &str| msg.contains(s);
    if has("authentication failed") || has("invalid user ID or password") {
        Some(Cause::CredentialsRefused)
    } else if has("authentication is not enabled") {
        Some(Cause::AuthNotEnabled)
    } else if has("permission denied") {
        Some(Cause::PermissionDenied)
    } else if has("required revision is a future revision") {
        Some(Cause::FutureRevision)
    } else if has("required revision has been compacted") {
        Some(Cause::Compacted)
    } else {
        None
    }
}

fn from_status(status: &tonic::Status) -> Cause {
    use tonic::Code;
    let msg = status.message();
    if let Some(c) = from_etcd_message(msg) {
        return c;
    }
    // A status made by the client from a transport failure carries that failure as its source.
    if let Some(c) = status.source().and_then(from_chain) {
        return c;
    }
    match status.code() {
        Code::Unauthenticated => Cause::CredentialsRefused,
        Code::PermissionDenied => Cause::PermissionDenied,
        Code::DeadlineExceeded => Cause::TimedOut,
        _ => from_text(msg).unwrap_or_else(|| match status.code() {
            Code::Unavailable | Code::Cancelled | Code::Unknown => lost(msg),
            _ => Cause::Server {
                detail: format!("{:?}: {msg}", status.code()),
            },
        }),
    }
}

/// Walks `err` and its sources. A definite cause (a TLS alert, refused, timed out) anywhere in
/// the chain wins over a vague one (closed, reset) nearer the top.
fn from_chain(err: &(dyn StdError + 'static)) -> Option<Cause> {
    let mut vague = None;
    let mut link = Some(err);
    while let Some(e) = link {
        let found = one_link(e);
        match found {
            Some(c) if !c.is_vague() => return Some(c),
            Some(c) => {
                vague.get_or_insert(c);
            }
            None => {}
        }
        link = e.source();
    }
    vague
}

fn one_link(e: &(dyn StdError + 'static)) -> Option<Cause> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(from_rustls(tls));
    }
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return Some(from_status(status));
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        // io::Error's `source()` skips the error it wraps: look at that one here.
        if let Some(inner) = io.get_ref()
            && let Some(c) = one_link(inner).filter(|c| !c.is_vague())
        {
            return Some(c);
        }
        return from_io_kind(io).or_else(|| from_text(&io.to_string()));
    }
    from_text(&e.to_string())
}

fn from_rustls(e: &rustls::Error) -> Cause {
    match e {
        rustls::Error::AlertReceived(alert) => from_alert(*alert),
        rustls::Error::InvalidCertificate(c) => Cause::ServerCertUntrusted {
            detail: format!("invalid peer certificate: {c}"),
        },
        rustls::Error::InvalidMessage(_) => Cause::NotTls,
        other => Cause::TlsRefused {
            alert: other.to_string(),
        },
    }
}

/// The alerts a TLS server sends when it does not accept the client's certificate.
pub fn from_alert(alert: AlertDescription) -> Cause {
    use AlertDescription as A;
    let name = format!("{alert:?}");
    match alert {
        A::BadCertificate
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::CertificateUnknown
        | A::UnknownCA
        | A::AccessDenied
        | A::NoCertificate
        | A::CertificateRequired => Cause::ClientCertRefused { alert: name },
        _ => Cause::TlsRefused { alert: name },
    }
}

fn from_io_kind(io: &std::io::Error) -> Option<Cause> {
    use std::io::ErrorKind as K;
    let detail = io.to_string();
    match io.kind() {
        K::ConnectionRefused
        | K::AddrNotAvailable
        | K::HostUnreachable
        | K::NetworkUnreachable
        | K::NetworkDown => Some(Cause::Unreachable { detail }),
        K::TimedOut => Some(Cause::TimedOut),
        K::BrokenPipe
        | K::ConnectionReset
        | K::ConnectionAborted
        | K::UnexpectedEof
        | K::NotConnected => Some(lost(&detail)),
        _ => None,
    }
}

/// The last resort: errors of hyper, h2 and tonic that only say what they are in words.
fn from_text(text: &str) -> Option<Cause> {
    let t = text.to_ascii_lowercase();
    let has = |s: &str| t.contains(s);
    if let Some(rest) = text.split("received fatal alert: ").nth(1) {
        let alert = rest.split(|c: char| !c.is_alphanumeric()).next()?;
        return Some(from_alert_name(alert));
    }
    if has("invalid peer certificate") {
        return Some(Cause::ServerCertUntrusted {
            detail: text.to_string(),
        });
    }
    if has("received corrupt message") {
        return Some(Cause::NotTls);
    }
    if has("connection refused")
        || has("dns error")
        || has("failed to lookup address")
        || has("no route to host")
        || has("network is unreachable")
    {
        return Some(Cause::Unreachable {
            detail: text.to_string(),
        });
    }
    if has("timed out") || has("timeout expired") || has("deadline has elapsed") {
        return Some(Cause::TimedOut);
    }
    if has("connection closed")
        || has("broken pipe")
        || has("connection reset")
        || has("operation was canceled")
        || has("channel closed")
        || has("connection error")
        || has("unexpected end of file")
    {
        return Some(lost(text));
    }
    None
}

fn from_alert_name(name: &str) -> Cause {
    const CLIENT_CERT: [&str; 9] = [
        "BadCertificate",
        "UnsupportedCertificate",
        "CertificateRevoked",
        "CertificateExpired",
        "CertificateUnknown",
        "UnknownCA",
        "AccessDenied",
        "NoCertificate",
        "CertificateRequired",
    ];
    let alert = name.to_string();
    if CLIENT_CERT.contains(&name) {
        Cause::ClientCertRefused { alert }
    } else {
        Cause::TlsRefused { alert }
    }
}

/// What a probe of the endpoint saw, after an attempt failed for a vague reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The probe saw a definite cause (a TLS alert, an untrusted certificate, refused, ...).
    Failed(Cause),
    /// The probe's connection was accepted: the attempt's failure was not the connection's.
    Accepted,
    /// The probe learned nothing (closed, timed out, could not be made).
    Inconclusive,
}

/// The cause of an attempt: the attempt's own, unless it was vague and the probe found better.
pub fn refine(cause: Cause, probe: Probe) -> Cause {
    match probe {
        Probe::Failed(found) if cause.is_vague() && !found.is_vague() => found,
        _ => cause,
    }
}

#[cfg(test)]
mod tests;
