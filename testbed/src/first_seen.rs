//! When each object was first seen by a watch: propagation measured without a polling delay, by
//! the tests and the benchmarks alike.

use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Names of the objects `api` lists, each with the instant a watch first saw it.
#[derive(Clone, Default)]
pub struct FirstSeen(Arc<Mutex<HashMap<String, Instant>>>);

impl FirstSeen {
    /// Starts watching `api` (in a task of its own, for the rest of the process).
    pub fn start<K>(api: Api<K>) -> FirstSeen
    where
        K: Resource + Clone + Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let seen = FirstSeen::default();
        let out = seen.0.clone();
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default()).applied_objects();
            let mut stream = std::pin::pin!(stream);
            while let Some(Ok(obj)) = stream.next().await {
                let mut seen = out.lock().unwrap();
                seen.entry(obj.name_any()).or_insert_with(Instant::now);
            }
        });
        seen
    }

    /// When `name` was first seen, if it was.
    pub fn at(&self, name: &str) -> Option<Instant> {
        self.0.lock().unwrap().get(name).copied()
    }

    /// Waits up to `timeout` for `name` to be seen; when it first was.
    pub async fn wait(&self, name: &str, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = self.at(name) {
                return Some(at);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
