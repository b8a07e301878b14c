//! A watch of etcd puts, for the latencies that end in etcd: when each key was first and last
//! seen, and its last value.

use etcd_client::{Client as Etcd, EventType, WatchOptions};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::task::JoinHandle;

/// Keys seen put: key → (first seen, last value, last seen).
pub type KeyLog = Arc<Mutex<HashMap<String, (Instant, String, Instant)>>>;

/// Watches the puts of `key` (with `options`: a prefix, or every key) and logs each as its event
/// arrives. Abort the task when done.
pub async fn watch_puts(
    etcd: &mut Etcd,
    key: &str,
    options: WatchOptions,
) -> Result<(KeyLog, JoinHandle<()>), etcd_client::Error> {
    let mut watch = etcd.watch(key, Some(options)).await?;
    let keys: KeyLog = Arc::default();
    let k = keys.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(resp)) = watch.message().await {
            let t = Instant::now();
            for ev in resp.events() {
                if ev.event_type() == EventType::Put
                    && let Some(kv) = ev.kv()
                {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    let value = String::from_utf8_lossy(kv.value()).into_owned();
                    let mut k = k.lock().unwrap();
                    let first = k.get(&key).map_or(t, |e| e.0);
                    k.insert(key, (first, value, t));
                }
            }
        }
    });
    Ok((keys, task))
}
