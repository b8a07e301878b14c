//! Cheap looks at an etcd endpoint, outside the gRPC client.
//!
//! - [`explain`]: when an attempt failed with nothing but "connection closed" or "broken pipe",
//!   one TLS handshake (with the bridge's own CA and client certificate) followed by the HTTP/2
//!   preface shows what the server really does: send a TLS alert, reject the server certificate,
//!   or answer. With TLS 1.3 the client finishes its side of the handshake before the server has
//!   checked the client certificate, so the gRPC client may fail on its first write and never
//!   read the alert; the probe always reads it.
//! - [`reachable`]: a TCP connect, to notice that an etcd that was down listens again without
//!   waiting out a backoff grown during the outage.

use super::cause::{self, Cause, Probe};
use crate::source::spec::Connection;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

/// The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first. A
/// server that accepted the connection answers with its own SETTINGS.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// One endpoint, as the probe dials it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

/// Parses an --etcd-endpoints entry the way the etcd client does: `http://` unless it says
/// `https://`, default ports 80 and 443, IPv6 hosts in brackets.
pub fn target(endpoint: &str) -> Option<Target> {
    let (tls, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
        (true, r)
    } else {
        (false, endpoint.strip_prefix("http://").unwrap_or(endpoint))
    };
    let authority = rest.split('/').next()?;
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None if tls => 443,
        None => 80,
    };
    (!host.is_empty()).then(|| Target {
        tls,
        host: host.to_string(),
        port,
    })
}

/// Whether any endpoint accepts a TCP connection within `within`.
pub async fn reachable(endpoints: &[String], within: Duration) -> bool {
    for t in endpoints.iter().filter_map(|e| target(e)) {
        let addr = (t.host.as_str(), t.port);
        if matches!(timeout(within, TcpStream::connect(addr)).await, Ok(Ok(_))) {
            return true;
        }
    }
    false
}

/// The cause of a failed attempt: `cause`, unless it is vague and a probe of the endpoints
/// finds the real one.
pub async fn explain(args: &Connection, cause: Cause) -> Cause {
    if !cause.is_vague() {
        return cause;
    }
    for t in args.endpoints.iter().filter_map(|e| target(e)) {
        let probe = probe(args, &t).await;
        if matches!(probe, Probe::Failed(_)) {
            return cause::refine(cause, probe);
        }
    }
    cause
}

async fn probe(args: &Connection, t: &Target) -> Probe {
    let within = args.timeout.min(Duration::from_secs(3));
    let tcp = match timeout(within, TcpStream::connect((t.host.as_str(), t.port))).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return failed(&e),
        Err(_) => return Probe::Inconclusive,
    };
    if !t.tls {
        return plain(args, t, tcp, within).await;
    }
    let Some(config) = tls_config(args) else {
        return Probe::Inconclusive;
    };
    let Ok(name) = ServerName::try_from(t.host.clone()) else {
        return Probe::Inconclusive;
    };
    let connector = TlsConnector::from(Arc::new(config));
    let mut tls = match timeout(within, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return failed(&e),
        Err(_) => return Probe::Inconclusive,
    };
    // A write may already fail if the server has sent its alert and closed: read it anyway.
    let _ = tls.write_all(H2_PREFACE).await;
    let _ = tls.flush().await;
    let mut buf = [0u8; 64];
    match timeout(within, tls.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Probe::Accepted,
        Ok(Err(e)) => failed(&e),
        _ => Probe::Inconclusive,
    }
}

/// Plain HTTP/2 to an endpoint that may be TLS only. A server that answers the preface speaks
/// plain HTTP/2; one that answers with a TLS record or an HTTP/1 "400" speaks TLS; one that just
/// closes is asked for a TLS handshake: any certificate or alert back proves it speaks TLS.
async fn plain(args: &Connection, t: &Target, mut tcp: TcpStream, within: Duration) -> Probe {
    let _ = tcp.write_all(H2_PREFACE).await;
    let mut buf = [0u8; 64];
    if let Ok(Ok(n)) = timeout(within, tcp.read(&mut buf)).await
        && n > 0
    {
        let got = &buf[..n];
        return if got.starts_with(&[0x15, 0x03]) || got.starts_with(b"HTTP/1") {
            Probe::Failed(Cause::TlsRequired)
        } else {
            Probe::Accepted
        };
    }
    let (Some(config), Ok(name)) = (tls_config(args), ServerName::try_from(t.host.clone())) else {
        return Probe::Inconclusive;
    };
    let Ok(Ok(tcp)) = timeout(within, TcpStream::connect((t.host.as_str(), t.port))).await else {
        return Probe::Inconclusive;
    };
    let handshake = TlsConnector::from(Arc::new(config)).connect(name, tcp);
    match timeout(within, handshake).await {
        Ok(Ok(_)) => Probe::Failed(Cause::TlsRequired),
        Ok(Err(e)) => match cause::classify_chain(&e) {
            Some(Cause::ServerCertUntrusted { .. } | Cause::ClientCertRefused { .. })
            | Some(Cause::TlsRefused { .. }) => Probe::Failed(Cause::TlsRequired),
            _ => Probe::Inconclusive,
        },
        Err(_) => Probe::Inconclusive,
    }
}

fn failed(e: &std::io::Error) -> Probe {
    match cause::classify_chain(e) {
        Some(c) => Probe::Failed(c),
        None => Probe::Inconclusive,
    }
}

/// The same trust and identity as the gRPC client: the source's CA only (no system roots), and
/// the client certificate if given. `None` if the files cannot be read (the client reports that).
fn tls_config(args: &Connection) -> Option<ClientConfig> {
    let mut roots = RootCertStore::empty();
    if let Some(ca) = &args.ca {
        for cert in CertificateDer::pem_slice_iter(&ca.read().ok()?) {
            roots.add(cert.ok()?).ok()?;
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots);
    let mut config = match &args.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&cert.read().ok()?)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(&key.read().ok()?).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Some(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(tls: bool, host: &str, port: u16) -> Option<Target> {
        Some(Target {
            tls,
            host: host.into(),
            port,
        })
    }

    fn args(endpoint: &str) -> Connection {
        use crate::config::{Cli, Command};
        use clap::Parser;
        let cli = Cli::parse_from(["etcd-bridge", "run", "--etcd-endpoints", endpoint]);
        match cli.command {
            Command::Run(r) => r.etcd.connection(),
            _ => unreachable!(),
        }
    }

    /// A loopback server that answers the first thing it reads with `reply`, then closes.
    async fn answering(reply: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 64];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
            }
        });
        format!("http://{addr}")
    }

    fn vague() -> Cause {
        Cause::ConnectionLost {
            detail: "connection closed".into(),
        }
    }

    #[tokio::test]
    async fn a_probe_tells_a_tls_server_at_an_http_endpoint() {
        let tls_only = answering(
            b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n",
        )
        .await;
        assert_eq!(explain(&args(&tls_only), vague()).await, Cause::TlsRequired);
        // A server that answers HTTP/2 (its SETTINGS frame): the probe learns nothing new.
        let h2 = answering(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00").await;
        assert_eq!(explain(&args(&h2), vague()).await, vague());
        // A definite cause is never probed.
        assert_eq!(
            explain(&args(&tls_only), Cause::CredentialsRefused).await,
            Cause::CredentialsRefused
        );
    }

    #[tokio::test]
    async fn a_probe_tells_that_nothing_listens() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let c = explain(&args(&closed), vague()).await;
        assert!(matches!(c, Cause::Unreachable { .. }), "{c:?}");
        assert!(!reachable(std::slice::from_ref(&closed), Duration::from_secs(1)).await);
        let open = answering(b"").await;
        assert!(reachable(&[closed, open], Duration::from_secs(1)).await);
    }

    #[test]
    fn endpoints_parse_like_the_client_reads_them() {
        assert_eq!(target("http://127.0.0.1:2379"), t(false, "127.0.0.1", 2379));
        assert_eq!(
            target("https://etcd.example:2379/"),
            t(true, "etcd.example", 2379)
        );
        assert_eq!(target("127.0.0.1:2379"), t(false, "127.0.0.1", 2379));
        assert_eq!(target("https://[fd00::1]:2379"), t(true, "fd00::1", 2379));
        assert_eq!(target("https://etcd"), t(true, "etcd", 443));
        assert_eq!(target("http://etcd"), t(false, "etcd", 80));
        assert_eq!(target("http://:2379"), None);
        assert_eq!(target("http://etcd:port"), None);
    }
}
