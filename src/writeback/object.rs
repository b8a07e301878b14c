//! Writes to the EtcdRegistration objects themselves: the finalizer, the status and Events.
//! Passes queue them (see `publish`) once their keys are in etcd, and N workers write them: a new
//! leader over 10,000 objects gets every key into etcd in seconds, and the apiserver sees N
//! requests at a time instead of thousands (which it answered with timeouts).

use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::writeback::crd::{EtcdRegistration, EtcdRegistrationStatus};
use crate::writeback::lease::Owner;
use crate::writeback::publish::{Publication, Queue};
use crate::writeback::status::{Note, digest};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub const FINALIZER: &str = "etcd-bridge.io/registration";

pub struct Objects {
    client: Client,
    recorder: Recorder,
    queue: Mutex<Queue<Owner, Arc<EtcdRegistration>>>,
    wake: Notify,
    /// The digest of the status last queued for each object (written, or about to be), until
    /// the cache shows it: a pass that reads the object before then would otherwise write the
    /// same status (and Events) again.
    published: Mutex<HashMap<Owner, u64>>,
}

/// How adding the finalizer went.
pub enum Finalizer {
    Added,
    /// The object is gone (deleted before it had the finalizer).
    Gone,
}

impl Objects {
    pub fn new(client: Client) -> Objects {
        Objects {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            client,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            published: Mutex::new(HashMap::new()),
        }
    }

    /// Queues `p` for the object `key`.
    pub fn push(&self, key: Owner, p: Publication<Arc<EtcdRegistration>>) {
        if let Some((status, _)) = &p.status {
            self.published
                .lock()
                .expect("not poisoned")
                .insert(key.clone(), digest(status));
        }
        self.queue.lock().expect("not poisoned").push(key, p);
        self.wake.notify_one();
    }

    /// The next write, waiting for one.
    pub async fn next(&self) -> (Owner, Publication<Arc<EtcdRegistration>>) {
        loop {
            let notified = self.wake.notified();
            if let Some(next) = self.queue.lock().expect("not poisoned").take() {
                // Another worker may be waiting too.
                self.wake.notify_one();
                return next;
            }
            notified.await;
        }
    }

    /// The write of `key` failed: its status is not written, whatever was queued.
    pub fn failed(&self, key: &Owner) {
        self.published.lock().expect("not poisoned").remove(key);
    }

    /// The write of `key` is over.
    pub fn done(&self, key: &Owner) {
        self.queue.lock().expect("not poisoned").done(key);
        self.wake.notify_one();
    }

    /// Writes queued and not yet started.
    pub fn queued(&self) -> usize {
        self.queue.lock().expect("not poisoned").len()
    }

    /// The object is gone: nothing more to write, nothing to remember.
    pub fn forget(&self, key: &Owner) {
        self.queue.lock().expect("not poisoned").forget(key);
        self.published.lock().expect("not poisoned").remove(key);
    }

    /// Whether `status` is what was last queued for the object (written, or about to be), which
    /// the cache (showing `cached`) has not caught up with yet.
    pub fn already_written(
        &self,
        key: &Owner,
        cached: &EtcdRegistrationStatus,
        status: &EtcdRegistrationStatus,
    ) -> bool {
        let mut published = self.published.lock().expect("not poisoned");
        match published.get(key) {
            // The cache shows it: from now on the cache is the reference.
            Some(d) if *d == digest(cached) => {
                published.remove(key);
                false
            }
            Some(d) => *d == digest(status),
            None => false,
        }
    }

    fn api(&self, obj: &EtcdRegistration) -> Api<EtcdRegistration> {
        Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default())
    }

    /// Adds our finalizer, provided the finalizers did not change since `obj` was read; when the
    /// patch fails, the object as it is now says whether it has the finalizer (added by an
    /// earlier write from an older copy, or by this one before an error) or is gone.
    pub async fn add_finalizer(&self, obj: &EtcdRegistration) -> Result<Finalizer> {
        let Err(e) = self.try_add_finalizer(obj).await else {
            return Ok(Finalizer::Added);
        };
        match self.api(obj).get_opt(&obj.name_any()).await {
            Ok(None) => Ok(Finalizer::Gone),
            Ok(Some(now)) if now.finalizers().iter().any(|f| f == FINALIZER) => {
                Ok(Finalizer::Added)
            }
            _ => Err(e),
        }
    }

    async fn try_add_finalizer(&self, obj: &EtcdRegistration) -> Result<()> {
        let now = obj.finalizers();
        let ops = if now.is_empty() {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
            ])
        } else {
            serde_json::json!([
                {"op": "test", "path": "/metadata/finalizers", "value": now},
                {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
            ])
        };
        self.json_patch(obj, ops, "add the finalizer to").await
    }

    /// Removes our finalizer (the keys are gone), provided it is still where `obj` had it.
    pub async fn remove_finalizer(&self, obj: &EtcdRegistration) -> Result<()> {
        let Some(i) = obj.finalizers().iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let path = format!("/metadata/finalizers/{i}");
        let ops = serde_json::json!([
            {"op": "test", "path": path, "value": FINALIZER},
            {"op": "remove", "path": path},
        ]);
        match self.json_patch(obj, ops, "remove the finalizer from").await {
            // Gone already: nothing holds it.
            Err(Error::Kube {
                source: kube::Error::Api(e),
                ..
            }) if e.code == 404 => Ok(()),
            r => r,
        }
    }

    async fn json_patch(
        &self,
        obj: &EtcdRegistration,
        ops: serde_json::Value,
        what: &str,
    ) -> Result<()> {
        let patch: Patch<()> =
            Patch::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
        self.api(obj)
            .patch(&obj.name_any(), &PatchParams::default(), &patch)
            .await
            .map(|_| ())
            .map_err(|source| Error::Kube {
                context: format!("{what} EtcdRegistration {}", describe(obj)),
                source,
            })
    }

    /// Records `notes` as Events and writes `status`.
    pub async fn publish_status(
        &self,
        obj: &EtcdRegistration,
        status: &EtcdRegistrationStatus,
        notes: &[Note],
    ) -> Result<()> {
        for n in notes {
            let type_ = if n.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.event(obj, type_, &n.reason, &n.message).await;
        }
        let patch = serde_json::json!({
            "apiVersion": "etcd-bridge.io/v1alpha1",
            "kind": "EtcdRegistration",
            "status": status,
        });
        self.api(obj)
            .patch_status(
                &obj.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(|source| Error::Kube {
                context: format!("update the status of EtcdRegistration {}", describe(obj)),
                source,
            })?;
        Ok(())
    }

    pub async fn event(&self, obj: &EtcdRegistration, type_: EventType, reason: &str, note: &str) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Register".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, "could not publish an Event");
        }
    }
}

fn describe(obj: &EtcdRegistration) -> String {
    format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any())
}
