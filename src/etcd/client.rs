//! One way to connect to etcd, used by `run`, `preview` and write-back alike.

use crate::config::EtcdArgs;
use crate::error::{Error, Result};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use std::time::Duration;

/// Connects to the endpoints in `args`, with HTTP/2 keepalive on so that a hung etcd (alive at
/// TCP level, answering nothing) breaks the watch instead of stalling it forever.
pub async fn connect(args: &EtcdArgs) -> Result<Client> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(args.timeout)
        .with_keep_alive(Duration::from_secs(5), args.timeout)
        .with_keep_alive_while_idle(true);
    if let (Some(user), Some(password)) = (&args.username, &args.password) {
        opts = opts.with_user(user.clone(), password.clone());
    }
    if args.ca_file.is_some() || args.cert_file.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &args.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        opts = opts.with_tls(tls);
    }
    Client::connect(&args.endpoints, Some(opts))
        .await
        .map_err(|source| Error::Etcd {
            endpoints: args.endpoints.join(","),
            source,
        })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| Error::Io {
        context: format!("read {}", path.display()),
        source,
    })
}

/// Everything under `prefix` at one revision: (key, value) pairs and the revision. The read is
/// linearizable (etcd's default), so it reflects every write acknowledged before it.
pub async fn read_prefix(
    client: &mut Client,
    args: &EtcdArgs,
    prefix: &str,
) -> Result<(Vec<(Vec<u8>, Vec<u8>)>, i64)> {
    let list = client
        .get(
            prefix.as_bytes(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|source| Error::Etcd {
            endpoints: args.endpoints.join(","),
            source,
        })?;
    let revision = list.header().map(|h| h.revision()).unwrap_or_default();
    let kvs = list
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec()))
        .collect();
    Ok((kvs, revision))
}
