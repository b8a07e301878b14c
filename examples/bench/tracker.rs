//! Tracker: a kube watch of EndpointSlices, which addresses each service has, and when.

use crate::harness::DONE;
use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct TrackState {
    /// slice name → (service, addresses)
    pub slices: HashMap<String, (String, Vec<String>)>,
    /// service → address → in how many slices
    pub present: HashMap<String, HashMap<String, u32>>,
    /// (service, address) → (expected to appear?, when the write was sent)
    pub pending: HashMap<(String, String), (bool, Instant)>,
    pub samples: Vec<f64>,
    /// Slices added, changed or deleted since the last reset.
    pub touched: HashSet<String>,
    /// When an address last appeared or disappeared.
    pub last_change: Option<Instant>,
    pub events: u64,
    pub synced: bool,
    pub init_seen: Option<HashSet<String>>,
    pub errors: u64,
}

impl TrackState {
    pub fn resolve(&mut self, service: &str, ip: &str, appeared: bool, t: Instant) {
        let key = (service.to_string(), ip.to_string());
        if let Some((add, start)) = self.pending.get(&key)
            && *add == appeared
        {
            self.samples
                .push(t.saturating_duration_since(*start).as_secs_f64() * 1000.0);
            self.pending.remove(&key);
        }
    }

    pub fn inc(&mut self, service: &str, ip: &str, t: Instant) {
        let c = self
            .present
            .entry(service.to_string())
            .or_default()
            .entry(ip.to_string())
            .or_insert(0);
        *c += 1;
        if *c == 1 {
            self.last_change = Some(t);
            self.resolve(service, ip, true, t);
        }
    }

    pub fn dec(&mut self, service: &str, ip: &str, t: Instant) {
        let Some(ips) = self.present.get_mut(service) else {
            return;
        };
        let Some(c) = ips.get_mut(ip) else { return };
        *c -= 1;
        if *c == 0 {
            ips.remove(ip);
            if ips.is_empty() {
                self.present.remove(service);
            }
            self.last_change = Some(t);
            self.resolve(service, ip, false, t);
        }
    }

    /// `listed`: from a (re)list, not a change: not counted as touched.
    pub fn apply(&mut self, s: &EndpointSlice, t: Instant, listed: bool) {
        let name = s.metadata.name.clone().unwrap_or_default();
        let service = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .cloned()
            .unwrap_or_default();
        let ips: Vec<String> = s
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        if let Some(seen) = &mut self.init_seen {
            seen.insert(name.clone());
        }
        let (old_service, old_ips) = self
            .slices
            .insert(name.clone(), (service.clone(), ips.clone()))
            .unwrap_or_else(|| (service.clone(), Vec::new()));
        let moved = old_service != service;
        for ip in &old_ips {
            if moved || !ips.contains(ip) {
                self.dec(&old_service, ip, t);
            }
        }
        for ip in &ips {
            if moved || !old_ips.contains(ip) {
                self.inc(&service, ip, t);
            }
        }
        if !listed {
            self.touched.insert(name);
            self.events += 1;
        }
    }

    pub fn delete(&mut self, name: &str, t: Instant) {
        if let Some((service, ips)) = self.slices.remove(name) {
            for ip in &ips {
                self.dec(&service, ip, t);
            }
        }
        self.touched.insert(name.to_string());
        self.events += 1;
    }
}

#[derive(Clone)]
pub struct Tracker(Arc<Mutex<TrackState>>);

impl Tracker {
    /// Watches the EndpointSlices of `namespace` that match `selector`.
    pub fn start(client: kube::Client, namespace: &str, selector: &str) -> Tracker {
        let state = Arc::new(Mutex::new(TrackState::default()));
        let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
        let config = watcher::Config::default().labels(selector);
        let st = state.clone();
        let what = format!("{namespace}/{selector}");
        tokio::spawn(async move {
            let mut stream = watcher(api, config).default_backoff().boxed();
            while let Some(ev) = stream.next().await {
                let t = Instant::now();
                let mut s = st.lock().unwrap();
                match ev {
                    Ok(watcher::Event::Apply(o)) => s.apply(&o, t, false),
                    Ok(watcher::Event::InitApply(o)) => s.apply(&o, t, true),
                    Ok(watcher::Event::Delete(o)) => {
                        s.delete(&o.metadata.name.unwrap_or_default(), t)
                    }
                    Ok(watcher::Event::Init) => s.init_seen = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = s.init_seen.take() {
                            let gone: Vec<String> = s
                                .slices
                                .keys()
                                .filter(|n| !seen.contains(*n))
                                .cloned()
                                .collect();
                            for n in gone {
                                s.delete(&n, t);
                            }
                        }
                        s.synced = true;
                    }
                    Err(e) => {
                        s.errors += 1;
                        if !DONE.load(Ordering::Relaxed) {
                            eprintln!("bench: watch of {what}: {e} (retrying)");
                        }
                    }
                }
            }
        });
        Tracker(state)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, TrackState> {
        self.0.lock().unwrap()
    }

    pub async fn synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.lock().synced {
            assert!(
                Instant::now() < deadline,
                "the bench's EndpointSlice watch did not sync in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn expect(&self, service: &str, ip: &str, add: bool, start: Instant) {
        self.lock()
            .pending
            .insert((service.to_string(), ip.to_string()), (add, start));
    }

    pub fn is_pending(&self, service: &str, ip: &str) -> bool {
        self.lock()
            .pending
            .contains_key(&(service.to_string(), ip.to_string()))
    }

    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// Forgets what is still pending; returns it (the misses).
    pub fn drop_pending(&self) -> Vec<(String, String, bool)> {
        self.lock()
            .pending
            .drain()
            .map(|((s, ip), (add, _))| (s, ip, add))
            .collect()
    }

    pub fn take_samples(&self) -> Vec<f64> {
        std::mem::take(&mut self.lock().samples)
    }

    /// How many services differ from `want` (wrong addresses, missing, or extra).
    pub fn mismatched(&self, want: &HashMap<String, BTreeSet<String>>) -> usize {
        let s = self.lock();
        let mut bad = 0;
        for (service, ips) in want {
            let ok = s
                .present
                .get(service)
                .is_some_and(|p| p.len() == ips.len() && ips.iter().all(|ip| p.contains_key(ip)));
            bad += usize::from(!ok);
        }
        bad + s.present.keys().filter(|k| !want.contains_key(*k)).count()
    }

    pub fn reset_touched(&self) {
        self.lock().touched.clear();
    }

    pub fn touched(&self) -> usize {
        self.lock().touched.len()
    }

    pub fn last_change(&self) -> Option<Instant> {
        self.lock().last_change
    }

    pub fn events(&self) -> u64 {
        self.lock().events
    }

    pub fn slices(&self) -> usize {
        self.lock().slices.len()
    }
}
