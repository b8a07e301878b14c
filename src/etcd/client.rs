//! One way to connect to etcd, used by `run`, `preview` and write-back alike.

use super::rewind::{Fingerprint, Header};
use crate::error::{Error, Result};
use crate::source::spec::Connection;
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// Connects to the endpoints in `args`, with HTTP/2 keepalive on so that a hung etcd (alive at
/// TCP level, answering nothing) breaks the watch instead of stalling it forever. PEM files are
/// read at each connection, so a rotated certificate is picked up.
pub async fn connect(args: &Connection) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(args.timeout)
        .with_keep_alive(Duration::from_secs(5), args.timeout)
        .with_keep_alive_while_idle(true);
    if let Some(c) = &args.credentials {
        opts = opts.with_user(c.username.clone(), c.password.clone());
    }
    if args.tls() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &args.ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca.read()?));
        }
        if let Some((cert, key)) = &args.identity {
            tls = tls.identity(Identity::from_pem(cert.read()?, key.read()?));
        }
        opts = opts.with_tls(tls);
    }
    match Client::connect(&args.endpoints, Some(opts)).await {
        Ok(client) => Ok(client),
        Err(e) => Err(explained(args, e).await),
    }
}

/// The error for a failure of the etcd client: classified once, with a probe of the endpoints
/// when the transport's own words are too vague to name the cause.
pub async fn explained(args: &Connection, source: etcd_client::Error) -> Error {
    let cause = super::probe::explain(args, super::cause::classify(&source)).await;
    Error::Etcd {
        endpoints: args.endpoints.join(","),
        cause,
        source,
    }
}

/// Keys read per request: a whole large registry in one response would pass gRPC's 4 MiB message
/// limit (100k registrations are about 12 MiB).
const PAGE: i64 = 5_000;

/// Everything under `prefix` at one revision, who answered at which revision, and the
/// fingerprint that later tells whether etcd still has this history.
pub struct Listing {
    pub kvs: Vec<(Vec<u8>, Vec<u8>)>,
    pub header: Header,
    pub fingerprint: Fingerprint,
}

/// Everything under `prefix` at one revision: (key, value) pairs and the revision.
pub async fn read_prefix(
    client: &mut Client,
    args: &Connection,
    prefix: &str,
) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, i64)> {
    let listing = list_prefix(client, args, prefix).await?;
    Ok((listing.kvs, listing.header.revision))
}

/// Everything under `prefix` at one revision. Read in pages, all at the revision of the first
/// one, so the result is one consistent snapshot; the first page is linearizable (etcd's
/// default), so it reflects every write acknowledged before it.
pub async fn list_prefix(client: &mut Client, args: &Connection, prefix: &str) -> Result<Listing> {
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut header: Option<Header> = None;
    let mut kvs = Vec::new();
    let mut fingerprint = Fingerprint::default();
    loop {
        let mut opts = etcd_client::GetOptions::new()
            .with_range(end.clone())
            .with_limit(PAGE);
        if let Some(h) = &header {
            opts = opts.with_revision(h.revision);
        }
        let page = match client.get(from.clone(), Some(opts)).await {
            Ok(page) => page,
            Err(e) => return Err(explained(args, e).await),
        };
        let first = *header.get_or_insert_with(|| {
            page.header().map(Header::from).unwrap_or(Header {
                cluster_id: 0,
                member_id: 0,
                revision: 0,
            })
        });
        for kv in page.kvs() {
            fingerprint.add_listed(kv.key(), kv.mod_revision());
            kvs.push((kv.key().to_vec(), kv.value().to_vec()));
        }
        match (page.more(), page.kvs().last()) {
            (true, Some(last)) => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => {
                return Ok(Listing {
                    kvs,
                    header: first,
                    fingerprint,
                });
            }
        }
    }
}

/// The end of the key range of everything that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b""), vec![0]);
    }
}
