//! Sharded leadership (src/leader/shards.rs) against the real kube-apiserver: replicas in this
//! process share the bucket Leases fairly, a replica that dies loses its buckets to the others
//! within the Lease duration, one that leaves hands them over at once, and at no instant do two
//! live replicas publish the same bucket.

mod common;

use common::*;
use etcd_bridge::leader::Holding;
use etcd_bridge::leader::shards::{ShardSpec, Shards};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

const BUCKETS: u32 = 6;
const DURATION: Duration = Duration::from_secs(3);

type Held = watch::Receiver<Holding>;

fn spec(scope: &Scope, identity: &str) -> ShardSpec {
    ShardSpec {
        namespace: scope.namespace.clone(),
        name: "etcd-bridge-test".into(),
        instance: "test".into(),
        identity: identity.into(),
        buckets: BUCKETS,
        duration: DURATION,
    }
}

/// Samples the live replicas' published buckets every 10 ms and remembers every bucket two of
/// them published at the same instant.
struct Monitor {
    live: Arc<Mutex<Vec<(String, Held)>>>,
    overlaps: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    fn start() -> Monitor {
        let live: Arc<Mutex<Vec<(String, Held)>>> = Arc::default();
        let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
        let (l, o) = (live.clone(), overlaps.clone());
        let task = tokio::spawn(async move {
            loop {
                {
                    let live = l.lock().unwrap();
                    for b in 0..BUCKETS {
                        let holders: Vec<&String> = live
                            .iter()
                            .filter(|(_, h)| h.borrow().held().contains(&b))
                            .map(|(id, _)| id)
                            .collect();
                        if holders.len() > 1 {
                            o.lock().unwrap().push(format!("bucket {b}: {holders:?}"));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Monitor {
            live,
            overlaps,
            task,
        }
    }

    fn add(&self, id: &str, held: Held) {
        self.live.lock().unwrap().push((id.into(), held));
    }

    fn remove(&self, id: &str) {
        self.live.lock().unwrap().retain(|(i, _)| i != id);
    }

    /// Each live replica's buckets, by identity.
    fn held(&self) -> Vec<(String, BTreeSet<u32>)> {
        let live = self.live.lock().unwrap();
        live.iter()
            .map(|(id, h)| (id.clone(), h.borrow().held().clone()))
            .collect()
    }

    /// Waits until every bucket is published by a live replica and each holds `per` of them;
    /// returns how long that took.
    async fn settled(&self, per: &[usize], what: &str) -> Duration {
        let t0 = Instant::now();
        eventually(what, Duration::from_secs(30), || async {
            let held = self.held();
            let all: BTreeSet<u32> = held.iter().flat_map(|(_, b)| b.clone()).collect();
            let mut counts: Vec<usize> = held.iter().map(|(_, b)| b.len()).collect();
            counts.sort();
            (all.len() == BUCKETS as usize && counts == per).then_some(())
        })
        .await;
        t0.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_buckets_fairly_take_over_from_a_dead_one_and_never_overlap() {
    let scope = Scope::new("shards");
    let client = scope.kube().await;
    let monitor = Monitor::start();
    let mut replicas: Vec<(String, Shards)> = Vec::new();
    for i in 0..3 {
        let id = format!("replica-{i}");
        let shards = Shards::join(client.clone(), spec(&scope, &id));
        monitor.add(&id, shards.held.clone());
        replicas.push((id, shards));
    }
    let took = monitor
        .settled(&[2, 2, 2], "three replicas holding two buckets each")
        .await;
    eprintln!("3 replicas, 6 buckets: 2 each after {took:?}");

    // A replica dies (nothing released): the others take its buckets once its Leases expire.
    let (dead, shards) = replicas.pop().unwrap();
    monitor.remove(&dead);
    shards.abandon();
    let handoff = monitor
        .settled(&[3, 3], "the survivors holding every bucket")
        .await;
    eprintln!(
        "a replica killed -> its buckets held again after {handoff:?} (Lease duration {DURATION:?})"
    );
    assert!(
        handoff <= DURATION + Duration::from_secs(2),
        "handoff took {handoff:?}, more than the Lease duration {DURATION:?} + 2 s"
    );
    assert!(
        handoff >= DURATION / 2,
        "handoff after {handoff:?}: before the dead replica's Leases could have expired"
    );

    // A replica leaves gracefully: its Leases are released and its membership deleted, so the
    // last one takes everything without waiting for an expiry.
    let (gone, shards) = replicas.pop().unwrap();
    monitor.remove(&gone);
    let t0 = Instant::now();
    shards.release().await;
    monitor
        .settled(&[6], "the last replica holding every bucket")
        .await;
    let leave = t0.elapsed();
    eprintln!("a replica released its buckets -> all held by the last after {leave:?}");
    assert!(leave < DURATION, "a graceful handover took {leave:?}");

    // A replica joins: the holder gives half up (unpublished, then released after a drain) and
    // the newcomer takes them.
    let id = "replica-new".to_string();
    let shards = Shards::join(client.clone(), spec(&scope, &id));
    monitor.add(&id, shards.held.clone());
    replicas.push((id, shards));
    let rebalance = monitor
        .settled(&[3, 3], "a newcomer getting its share")
        .await;
    eprintln!("a replica joined -> 3 and 3 after {rebalance:?}");

    monitor.task.abort();
    let overlaps = monitor.overlaps.lock().unwrap().clone();
    assert!(
        overlaps.is_empty(),
        "two live replicas published one bucket at once: {overlaps:?}"
    );
    for (_, shards) in replicas {
        shards.release().await;
    }
}
