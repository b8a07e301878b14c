//! The registry model: what each service should hold, the changes made to it, and loading it
//! into etcd.

use crate::harness::{Rng, progress};
use crate::tracker::Tracker;
use etcd_bridge_testbed::seed::{seed_key, seed_value};
use etcd_client::{Client as Etcd, Txn, TxnOp};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// etcd 3.4's default `--max-txn-ops`.
pub const TXN_OPS: usize = 128;
/// The port of every registration.
pub const PORT: u16 = 8080;

/// A fresh IPv4 address, unique within this run: changes are matched by address.
pub fn fresh_ip() -> String {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("10.{}.{}.{}", (n >> 16) & 255, (n >> 8) & 255, n & 255)
}

/// Services and their endpoint addresses, as they should be.
pub struct Model {
    pub names: Vec<String>,
    pub want: HashMap<String, BTreeSet<String>>,
}

pub struct Change {
    pub service: String,
    pub ip: String,
    pub add: bool,
}

impl Model {
    pub fn new(base: &str, services: usize, endpoints: usize) -> Model {
        let names: Vec<String> = (0..services).map(|i| format!("{base}-{i:05}")).collect();
        let want = names
            .iter()
            .map(|n| (n.clone(), (0..endpoints).map(|_| fresh_ip()).collect()))
            .collect();
        Model { names, want }
    }

    pub fn registrations(&self) -> usize {
        self.want.values().map(|s| s.len()).sum()
    }

    /// Adds a fresh address to a random service, or deletes a random address (one whose last
    /// change is not still pending) from a random service that keeps at least one.
    pub fn change(&mut self, rng: &mut Rng, add: bool, tracker: &Tracker) -> Change {
        if !add {
            for _ in 0..100 {
                let service = self.names[rng.below(self.names.len())].clone();
                let ips = &self.want[&service];
                if ips.len() < 2 {
                    continue;
                }
                let ip = ips.iter().nth(rng.below(ips.len())).unwrap().clone();
                if tracker.is_pending(&service, &ip) {
                    continue;
                }
                self.want.get_mut(&service).unwrap().remove(&ip);
                return Change {
                    service,
                    ip,
                    add: false,
                };
            }
        }
        let service = self.names[rng.below(self.names.len())].clone();
        let ip = fresh_ip();
        self.want.get_mut(&service).unwrap().insert(ip.clone());
        Change {
            service,
            ip,
            add: true,
        }
    }
}

/// The key of a registration: unversioned, so one Service per name.
pub fn reg_key(prefix: &str, service: &str, ip: &str) -> String {
    seed_key(prefix, service, "", &format!("{ip}:{PORT}"))
}

/// The value the seed's Go `Register` writes (no version: one Service per name).
pub fn reg_value(service: &str, ip: &str) -> String {
    seed_value(service, "", &format!("{ip}:{PORT}"), 10)
}

/// Puts the registrations `regs` (service, ip) in txns of at most [`TXN_OPS`] puts, one after
/// another, as fast as etcd takes them. Returns how long it took.
pub async fn put_all(
    etcd: &mut Etcd,
    prefix: &str,
    regs: &[(String, String)],
    what: &str,
) -> Duration {
    let kvs: Vec<(String, String)> = (regs.iter())
        .map(|(s, ip)| (reg_key(prefix, s, ip), reg_value(s, ip)))
        .collect();
    put_kvs(etcd, &kvs, what).await
}

/// Puts `kvs` (key, value) in txns of at most [`TXN_OPS`] puts, one after another. Returns how
/// long it took.
pub async fn put_kvs(etcd: &mut Etcd, kvs: &[(String, String)], what: &str) -> Duration {
    let started = Instant::now();
    let mut last_report = Instant::now();
    for (i, chunk) in kvs.chunks(TXN_OPS).enumerate() {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
            .collect();
        etcd.txn(Txn::new().and_then(ops))
            .await
            .unwrap_or_else(|e| panic!("etcd txn ({what}): {e}"));
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            progress(&format!(
                "{what}: {} of {} puts",
                (i + 1) * TXN_OPS,
                kvs.len()
            ));
        }
    }
    started.elapsed()
}

pub fn all_regs(model: &Model) -> Vec<(String, String)> {
    let mut regs = Vec::with_capacity(model.registrations());
    for name in &model.names {
        for ip in &model.want[name] {
            regs.push((name.clone(), ip.clone()));
        }
    }
    regs
}
