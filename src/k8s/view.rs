//! What the cluster holds, as far as the bridge is concerned: every Service in the target
//! namespace (to see a user's Service that has the name we want), and the bridge's own
//! EndpointSlices.
//!
//! Reflector stores lag behind our own writes by one watch event. Reading them right after a
//! write would make the next diff see the old object and write again, so the responses of our
//! writes are kept in an overlay until the store has caught up.

use crate::labels;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// A change seen in the cluster, named by the Service it concerns.
#[derive(Debug)]
pub enum ObjectEvent {
    /// An object of the Service `name` was changed or deleted by someone.
    Touched(String),
    /// Both stores have listed everything once.
    Ready,
}

/// An object we wrote (`Some`) or deleted (`None`), at a resourceVersion.
struct Written<K> {
    rv: u64,
    obj: Option<Arc<K>>,
}

struct Overlay<K>(Mutex<HashMap<String, Written<K>>>);

impl<K> Default for Overlay<K> {
    fn default() -> Self {
        Overlay(Mutex::new(HashMap::new()))
    }
}

fn rv_of<K: Resource>(obj: &K) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

impl<K: Resource + Clone> Overlay<K> {
    fn record(&self, name: &str, rv: u64, obj: Option<Arc<K>>) {
        self.0
            .lock()
            .expect("overlay lock")
            .insert(name.to_string(), Written { rv, obj });
    }

    /// The newer of the store's object and our last write of it.
    fn merge(&self, name: &str, stored: Option<Arc<K>>) -> Option<Arc<K>> {
        let mut map = self.0.lock().expect("overlay lock");
        let Some(w) = map.get(name) else {
            return stored;
        };
        let stored_rv = stored.as_deref().map(rv_of);
        match (&w.obj, stored_rv) {
            // The store has caught up with (or passed) our write: forget it.
            (Some(_), Some(rv)) if rv >= w.rv => {
                map.remove(name);
                stored
            }
            (None, None) => {
                map.remove(name);
                None
            }
            (None, Some(rv)) if rv > w.rv => {
                map.remove(name);
                stored
            }
            _ => w.obj.clone(),
        }
    }

    fn names(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("overlay lock")
            .keys()
            .cloned()
            .collect()
    }
}

/// Service name → names of its EndpointSlices, kept up to date from the watch and our writes, so a
/// flush never scans the whole store. Stale names are harmless: lookups check the object.
type SliceIndex = Mutex<HashMap<String, BTreeSet<String>>>;

fn index_event(index: &SliceIndex, ev: &watcher::Event<EndpointSlice>) {
    let (watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s)) = ev
    else {
        return;
    };
    let Some(svc) = s.labels().get(labels::SERVICE_NAME) else {
        return;
    };
    let mut index = index.lock().expect("slice index lock");
    if matches!(ev, watcher::Event::Delete(_)) {
        if let Some(names) = index.get_mut(svc) {
            names.remove(&s.name_any());
            if names.is_empty() {
                index.remove(svc);
            }
        }
    } else {
        index.entry(svc.clone()).or_default().insert(s.name_any());
    }
}

pub struct ClusterView {
    namespace: String,
    instance: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    written_services: Overlay<Service>,
    written_slices: Overlay<EndpointSlice>,
    index: Arc<SliceIndex>,
}

/// The label selector of everything one bridge instance owns.
pub fn owned_selector(instance: &str) -> String {
    format!(
        "{}={},{}={instance}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE,
        labels::INSTANCE
    )
}

/// Whether `meta` carries this instance's ownership labels.
pub fn is_owned<K: Resource>(obj: &K, instance: &str) -> bool {
    let l = obj.meta().labels.as_ref();
    l.and_then(|l| l.get(labels::MANAGED_BY))
        .is_some_and(|v| v == labels::MANAGED_BY_VALUE)
        && l.and_then(|l| l.get(labels::INSTANCE))
            .is_some_and(|v| v == instance)
}

/// How the view's watches retry. kube-runtime's default grows to 30 s, so after an apiserver
/// outage the view (and drift repair) would lag that long; two watches retrying every 2 s at
/// most cost the apiserver nothing.
fn watch_backoff() -> crate::backoff::Backoff {
    crate::backoff::Backoff::new(
        std::time::Duration::from_millis(200),
        std::time::Duration::from_secs(2),
    )
}

impl ClusterView {
    /// Starts the two watches (retrying with [`watch_backoff`]) and returns the view and a
    /// channel of changes. The watches run until the process ends.
    pub fn start(
        client: Client,
        namespace: &str,
        instance: &str,
    ) -> (Arc<ClusterView>, mpsc::UnboundedReceiver<ObjectEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (services, svc_writer) = reflector::store();
        let (slices, slice_writer) = reflector::store();
        let svc_api: Api<Service> = Api::namespaced(client.clone(), namespace);
        let slice_api: Api<EndpointSlice> = Api::namespaced(client, namespace);

        // managedFields are a large share of every object and the bridge never reads them.
        let svc_stream = reflector::reflector(
            svc_writer,
            watcher(svc_api, watcher::Config::default())
                .backoff(watch_backoff())
                .modify(|s: &mut Service| s.managed_fields_mut().clear()),
        );
        let slice_stream = reflector::reflector(
            slice_writer,
            watcher(
                slice_api,
                watcher::Config::default().labels(&owned_selector(instance)),
            )
            .backoff(watch_backoff())
            .modify(|s: &mut EndpointSlice| s.managed_fields_mut().clear()),
        );
        let index = Arc::new(Mutex::new(HashMap::<String, BTreeSet<String>>::new()));
        spawn_forward(
            svc_stream,
            format!("Services in namespace {namespace}"),
            tx.clone(),
            |_| {},
            |s: &Service| Some(s.name_any()),
        );
        let idx = index.clone();
        spawn_forward(
            slice_stream,
            format!("EndpointSlices in namespace {namespace}"),
            tx.clone(),
            move |ev: &watcher::Event<EndpointSlice>| index_event(&idx, ev),
            |s: &EndpointSlice| s.labels().get(labels::SERVICE_NAME).cloned(),
        );
        let (s1, s2) = (services.clone(), slices.clone());
        tokio::spawn(async move {
            let _ = s1.wait_until_ready().await;
            let _ = s2.wait_until_ready().await;
            let _ = tx.send(ObjectEvent::Ready);
        });
        let view = ClusterView {
            namespace: namespace.to_string(),
            instance: instance.to_string(),
            services,
            slices,
            written_services: Overlay::default(),
            written_slices: Overlay::default(),
            index,
        };
        (Arc::new(view), rx)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Service called `name`, ours or not.
    pub fn service(&self, name: &str) -> Option<Arc<Service>> {
        let stored = self
            .services
            .get(&ObjectRef::new(name).within(&self.namespace));
        self.written_services.merge(name, stored)
    }

    /// The names of every Service this instance owns.
    pub fn owned_services(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .state()
            .iter()
            .filter(|s| is_owned(s.as_ref(), &self.instance))
            .map(|s| s.name_any())
            .chain(self.written_services.names())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| {
                self.service(n)
                    .is_some_and(|s| is_owned(s.as_ref(), &self.instance))
            })
            .collect()
    }

    /// This instance's EndpointSlices of the Service `service`.
    pub fn slices_of(&self, service: &str) -> Vec<Arc<EndpointSlice>> {
        let names: Vec<String> = self
            .index
            .lock()
            .expect("slice index lock")
            .get(service)
            .map(|n| n.iter().cloned().collect())
            .unwrap_or_default();
        names
            .into_iter()
            .filter_map(|n| {
                let stored = self.slices.get(&ObjectRef::new(&n).within(&self.namespace));
                self.written_slices.merge(&n, stored)
            })
            .filter(|s| {
                s.labels()
                    .get(labels::SERVICE_NAME)
                    .is_some_and(|v| v == service)
            })
            .collect()
    }

    /// Forgets our recent writes that the stores have caught up with (called now and then:
    /// lookups prune only what they touch).
    pub fn prune(&self) {
        for n in self.written_slices.names() {
            let stored = self.slices.get(&ObjectRef::new(&n).within(&self.namespace));
            self.written_slices.merge(&n, stored);
        }
        for n in self.written_services.names() {
            self.service(&n);
        }
    }

    /// Endpoints in all of this instance's EndpointSlices.
    pub fn total_endpoints(&self) -> usize {
        self.slices.state().iter().map(|s| s.endpoints.len()).sum()
    }

    /// Counts of (owned Services, owned EndpointSlices) as the stores see them.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.services
                .state()
                .iter()
                .filter(|s| is_owned(s.as_ref(), &self.instance))
                .count(),
            self.slices.state().len(),
        )
    }

    pub(crate) fn record_service(&self, name: &str, obj: Option<Service>, deleted_rv: u64) {
        match obj {
            Some(s) => self
                .written_services
                .record(name, rv_of(&s), Some(Arc::new(s))),
            None => self.written_services.record(name, deleted_rv, None),
        }
    }

    pub(crate) fn record_slice(&self, name: &str, obj: Option<EndpointSlice>, deleted_rv: u64) {
        match obj {
            Some(s) => {
                // Indexed now: its watch event may come after the next look at its Service.
                if let Some(svc) = s.labels().get(labels::SERVICE_NAME) {
                    let mut index = self.index.lock().expect("slice index lock");
                    index
                        .entry(svc.clone())
                        .or_default()
                        .insert(name.to_owned());
                }
                self.written_slices
                    .record(name, rv_of(&s), Some(Arc::new(s)))
            }
            None => self.written_slices.record(name, deleted_rv, None),
        }
    }
}

/// Drives a reflector stream and forwards, for each changed object, the name of its Service.
fn spawn_forward<K, S>(
    stream: S,
    what: String,
    tx: mpsc::UnboundedSender<ObjectEvent>,
    observe: impl Fn(&watcher::Event<K>) + Send + 'static,
    service_of: impl Fn(&K) -> Option<String> + Send + 'static,
) where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Ok(ev) = &ev {
                observe(ev);
            }
            match ev {
                Ok(watcher::Event::Apply(o)) | Ok(watcher::Event::Delete(o)) => {
                    if let Some(name) = service_of(&o)
                        && tx.send(ObjectEvent::Touched(name)).is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {}
                // The namespace's projection waits (nothing there is removed) and /readyz says
                // which namespace has not synced.
                Err(e) => tracing::warn!(
                    error = %e,
                    "cannot watch {what}; retrying with backoff (is the bridge allowed there? the chart's Role, or sources.targetNamespaces for another namespace)"
                ),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn svc(rv: u64) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some("a".into()),
                resource_version: Some(rv.to_string()),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    /// A view with empty stores, as before any watch event.
    fn empty_view() -> ClusterView {
        let (services, _) = reflector::store();
        let (slices, _) = reflector::store();
        ClusterView {
            namespace: "ns".into(),
            instance: "i".into(),
            services,
            slices,
            written_services: Overlay::default(),
            written_slices: Overlay::default(),
            index: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    #[test]
    fn a_slice_we_wrote_is_found_before_its_watch_event() {
        // A Service checked again between our slice write and the slice's watch event (its own
        // watch event often comes first) must see the slice, or it is written twice.
        let view = empty_view();
        let slice = EndpointSlice {
            metadata: ObjectMeta {
                name: Some("greeter-abc-0".into()),
                resource_version: Some("9".into()),
                labels: Some([(labels::SERVICE_NAME.to_owned(), "greeter".to_owned())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        view.record_slice("greeter-abc-0", Some(slice), 0);
        let found: Vec<String> = view
            .slices_of("greeter")
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(found, ["greeter-abc-0"]);
    }

    #[test]
    fn overlay_prefers_our_newer_write_until_the_store_catches_up() {
        let o: Overlay<Service> = Overlay::default();
        o.record("a", 5, Some(svc(5)));
        assert_eq!(o.merge("a", Some(svc(4))).map(|s| rv_of(&*s)), Some(5));
        assert_eq!(o.merge("a", None).map(|s| rv_of(&*s)), Some(5));
        assert_eq!(o.merge("a", Some(svc(5))).map(|s| rv_of(&*s)), Some(5));
        assert!(o.names().is_empty(), "caught up, forgotten");
    }

    #[test]
    fn overlay_hides_a_deleted_object_until_the_store_drops_it() {
        let o: Overlay<Service> = Overlay::default();
        o.record("a", 7, None);
        assert!(o.merge("a", Some(svc(7))).is_none());
        assert!(o.merge("a", None).is_none());
        assert!(o.names().is_empty());
        // Recreated by someone after our delete: the store wins.
        o.record("a", 7, None);
        assert_eq!(o.merge("a", Some(svc(9))).map(|s| rv_of(&*s)), Some(9));
    }
}
