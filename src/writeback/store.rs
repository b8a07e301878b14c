//! Writes and deletes of written-back keys, each a transaction that checks ownership, so the
//! bridge never overwrites or deletes a key another registrant (or another bridge) holds.

use crate::error::{Error, Result};
use crate::format::seed::owner_of;
use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp};

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Already there, with this value and lease.
    Unchanged,
    Written,
    /// Held by someone else (their owner marker, or none): not touched.
    Conflict(String),
}

fn err(key: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
    move |e| Error::WriteBack {
        key: key.into(),
        reason: format!(
            "{}; the object is retried",
            crate::etcd::cause::describe(&e)
        ),
    }
}

/// Puts `key` = `value` under `lease` if the key is absent or owned by `owner`.
pub async fn put(
    client: &mut Client,
    key: &str,
    value: &str,
    lease: i64,
    owner: &str,
) -> Result<Put> {
    // A concurrent writer can slip in between the read and the transaction: retry a few times.
    for _ in 0..3 {
        let current = client.get(key, None).await.map_err(err(key))?;
        let cmp = match current.kvs().first() {
            None => Compare::create_revision(key, CompareOp::Equal, 0),
            Some(kv) => {
                match owner_of(kv.value()) {
                    Some(o) if o == owner => {}
                    Some(o) => return Ok(Put::Conflict(o)),
                    None => return Ok(Put::Conflict("a registrant outside etcd-bridge".into())),
                }
                if kv.value() == value.as_bytes() && kv.lease() == lease {
                    return Ok(Put::Unchanged);
                }
                Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision())
            }
        };
        let txn = Txn::new().when([cmp]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        if client.txn(txn).await.map_err(err(key))?.succeeded() {
            return Ok(Put::Written);
        }
    }
    Err(Error::WriteBack {
        key: key.into(),
        reason: "the key kept changing under the transaction; the object is retried".into(),
    })
}

/// Deletes `key` if `owner` holds it. Returns whether it deleted anything.
pub async fn delete(client: &mut Client, key: &str, owner: &str) -> Result<bool> {
    for _ in 0..3 {
        let current = client.get(key, None).await.map_err(err(key))?;
        let Some(kv) = current.kvs().first() else {
            return Ok(false);
        };
        if owner_of(kv.value()).as_deref() != Some(owner) {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([TxnOp::delete(key, None)]);
        if client.txn(txn).await.map_err(err(key))?.succeeded() {
            return Ok(true);
        }
    }
    Err(Error::WriteBack {
        key: key.into(),
        reason: "the key kept changing under the delete; the object is retried".into(),
    })
}
