//! Writes and deletes of written-back keys, each a transaction that checks ownership, so the
//! bridge never overwrites or deletes a key another registrant (or another bridge) holds.
//!
//! An object's keys are read in one transaction and written in one (per 128 keys, etcd's default
//! `--max-txn-ops`): two round trips whatever the number of keys, and watchers see them at once.
//! Should another writer slip in between, the keys are put one by one.

use crate::error::{Error, Result};
use crate::format::seed::owner_of;
use crate::metrics::Metrics;
use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp, TxnOpResponse};
use std::time::Instant;

/// etcd's default `--max-txn-ops`: the most operations one transaction may hold.
const MAX_TXN_OPS: usize = 128;

/// What happened to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// Already there, with this value and lease.
    Unchanged,
    Written,
    /// Held by someone else (their owner marker, or none): not touched.
    Conflict(String),
    /// etcd does not have the lease (expired, or etcd lost its data): not written.
    LeaseGone,
}

/// One key to write: key, value, lease.
pub struct Item<'a> {
    pub key: &'a str,
    pub value: &'a str,
    pub lease: i64,
}

/// What the key's current state in etcd calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Unchanged,
    Conflict(String),
    /// Write it if it is still absent (`None`) or still at this mod revision.
    Write(Option<i64>),
}

/// A key as etcd holds it now.
#[derive(Debug, Clone, Copy)]
struct Current<'a> {
    value: &'a [u8],
    lease: i64,
    mod_revision: i64,
}

impl<'a> From<&'a KeyValue> for Current<'a> {
    fn from(kv: &'a KeyValue) -> Self {
        Current {
            value: kv.value(),
            lease: kv.lease(),
            mod_revision: kv.mod_revision(),
        }
    }
}

/// The key as it is (if it is) against what `owner` wants there. Pure.
fn decide(current: Option<Current<'_>>, value: &str, lease: i64, owner: &str) -> Decision {
    let Some(kv) = current else {
        return Decision::Write(None);
    };
    match owner_of(kv.value) {
        Some(o) if o == owner => {}
        Some(o) => return Decision::Conflict(o),
        None => return Decision::Conflict("a registrant outside etcd-bridge".into()),
    }
    if kv.value == value.as_bytes() && kv.lease == lease {
        return Decision::Unchanged;
    }
    Decision::Write(Some(kv.mod_revision))
}

fn compare(key: &str, at: Option<i64>) -> Compare {
    match at {
        None => Compare::create_revision(key, CompareOp::Equal, 0),
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
    }
}

/// etcd refused a Put because its lease does not exist.
fn lease_gone(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("requested lease not found"))
}

fn err(key: &str) -> impl FnOnce(etcd_client::Error) -> Error + '_ {
    move |e| Error::RegistryUnavailable {
        key: key.into(),
        reason: crate::etcd::cause::describe(&e),
    }
}

/// Puts each item if its key is absent or owned by `owner`: what happened to each, in order.
/// The time of each put transaction goes to `metrics`.
pub async fn put_all(
    client: &mut Client,
    items: &[Item<'_>],
    owner: &str,
    metrics: &Metrics,
) -> Result<Vec<Put>> {
    let mut out = Vec::with_capacity(items.len());
    for chunk in items.chunks(MAX_TXN_OPS) {
        out.extend(put_chunk(client, chunk, owner, metrics).await?);
    }
    Ok(out)
}

async fn put_chunk(
    client: &mut Client,
    items: &[Item<'_>],
    owner: &str,
    metrics: &Metrics,
) -> Result<Vec<Put>> {
    let first = items.first().map_or("", |i| i.key);
    // A read-only transaction: one consistent read of every key.
    let read = Txn::new().and_then(
        items
            .iter()
            .map(|i| TxnOp::get(i.key, None))
            .collect::<Vec<_>>(),
    );
    let got = client.txn(read).await.map_err(err(first))?;
    let decisions: Vec<Decision> = items
        .iter()
        .zip(got.op_responses())
        .map(|(i, r)| {
            let kv = match &r {
                TxnOpResponse::Get(g) => g.kvs().first(),
                _ => None,
            };
            decide(kv.map(Current::from), i.value, i.lease, owner)
        })
        .collect();
    let writes: Vec<(usize, Option<i64>)> = decisions
        .iter()
        .enumerate()
        .filter_map(|(n, d)| match d {
            Decision::Write(at) => Some((n, *at)),
            _ => None,
        })
        .collect();
    let mut out: Vec<Put> = decisions
        .iter()
        .map(|d| match d {
            Decision::Unchanged => Put::Unchanged,
            Decision::Conflict(o) => Put::Conflict(o.clone()),
            Decision::Write(_) => Put::Written,
        })
        .collect();
    if writes.is_empty() {
        return Ok(out);
    }
    let txn = Txn::new()
        .when(
            writes
                .iter()
                .map(|(n, at)| compare(items[*n].key, *at))
                .collect::<Vec<_>>(),
        )
        .and_then(
            writes
                .iter()
                .map(|(n, _)| {
                    let i = &items[*n];
                    TxnOp::put(i.key, i.value, Some(PutOptions::new().with_lease(i.lease)))
                })
                .collect::<Vec<_>>(),
        );
    let sent = Instant::now();
    let done = client.txn(txn).await;
    metrics
        .writeback_put_seconds
        .observe(sent.elapsed().as_secs_f64());
    match done {
        Ok(r) if r.succeeded() => Ok(out),
        // Another writer came in between: key by key, each with its own read.
        Ok(_) => {
            for (n, _) in writes {
                let i = &items[n];
                out[n] = put(client, i.key, i.value, i.lease, owner, metrics).await?;
            }
            Ok(out)
        }
        Err(e) if lease_gone(&e) => {
            for (n, _) in writes {
                out[n] = Put::LeaseGone;
            }
            Ok(out)
        }
        Err(e) => Err(err(items[writes[0].0].key)(e)),
    }
}

/// Puts `key` = `value` under `lease` if the key is absent or owned by `owner`; the time of
/// each put transaction goes to `metrics`.
pub async fn put(
    client: &mut Client,
    key: &str,
    value: &str,
    lease: i64,
    owner: &str,
    metrics: &Metrics,
) -> Result<Put> {
    // A concurrent writer can slip in between the read and the transaction: retry a few times.
    for _ in 0..3 {
        let current = client.get(key, None).await.map_err(err(key))?;
        let at = match decide(
            current.kvs().first().map(Current::from),
            value,
            lease,
            owner,
        ) {
            Decision::Unchanged => return Ok(Put::Unchanged),
            Decision::Conflict(o) => return Ok(Put::Conflict(o)),
            Decision::Write(at) => at,
        };
        let txn = Txn::new().when([compare(key, at)]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let sent = Instant::now();
        let done = match client.txn(txn).await {
            Err(e) if lease_gone(&e) => return Ok(Put::LeaseGone),
            r => r.map_err(err(key))?,
        };
        metrics
            .writeback_put_seconds
            .observe(sent.elapsed().as_secs_f64());
        if done.succeeded() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_on_a_missing_lease_is_told_from_other_errors() {
        // What etcd's gRPC server answers (rpctypes.ErrGRPCLeaseNotFound).
        let gone = etcd_client::Error::GRpcStatus(tonic::Status::not_found(
            "etcdserver: requested lease not found",
        ));
        assert!(lease_gone(&gone));
        let other =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("connection refused"));
        assert!(!lease_gone(&other));
    }

    #[test]
    fn a_key_is_written_only_when_absent_or_ours_and_different() {
        let ours = r#"{"name":"a","addr":"10.0.0.1:1","version":"","weight":1,"etcd-bridge.io/owner":"me"}"#;
        let now = |value: &'static str, lease| {
            Some(Current {
                value: value.as_bytes(),
                lease,
                mod_revision: 7,
            })
        };
        assert_eq!(decide(None, ours, 1, "me"), Decision::Write(None));
        assert_eq!(decide(now(ours, 1), ours, 1, "me"), Decision::Unchanged);
        // Another lease (a new leader's, or a lost one's replacement), or another value.
        assert_eq!(
            decide(now(ours, 2), ours, 1, "me"),
            Decision::Write(Some(7))
        );
        let heavier = ours.replace(r#""weight":1"#, r#""weight":2"#);
        assert_eq!(
            decide(now(ours, 1), &heavier, 1, "me"),
            Decision::Write(Some(7))
        );
        // Someone else's: never written.
        assert_eq!(
            decide(now(ours, 1), ours, 1, "you"),
            Decision::Conflict("me".into())
        );
        assert!(matches!(
            decide(now(r#"{"name":"a","addr":"10.0.0.1:1"}"#, 0), ours, 1, "me"),
            Decision::Conflict(who) if who.contains("outside")
        ));
    }
}
