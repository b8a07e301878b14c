//! Writes to the EtcdRegistration objects themselves: the finalizer, the status and Events. At
//! most N reconciles call the apiserver at once (a permit each): a new leader over 10,000
//! objects starts them all, their etcd writes go ahead, and the apiserver sees N requests at a
//! time instead of thousands (which it answered with timeouts).

use crate::error::{Error, Result};
use crate::labels::FIELD_MANAGER;
use crate::writeback::crd::{EtcdRegistration, EtcdRegistrationStatus};
use crate::writeback::status::Note;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{Semaphore, SemaphorePermit};

pub const FINALIZER: &str = "etcd-bridge.io/registration";

pub struct Objects {
    client: Client,
    recorder: Recorder,
    permits: Semaphore,
}

/// How adding the finalizer went.
pub enum Finalizer {
    Added,
    /// The object is gone (deleted before it had the finalizer).
    Gone,
}

impl Objects {
    /// Writes with `client`, at most `at_once` reconciles at a time.
    pub fn new(client: Client, at_once: usize) -> Objects {
        Objects {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER.into(),
                    instance: std::env::var("POD_NAME").ok(),
                },
            ),
            client,
            permits: Semaphore::new(at_once.max(1)),
        }
    }

    /// The right to call the apiserver, held for one reconcile's reads or writes (first come,
    /// first served); released in between, so that no pass holds two.
    pub async fn permit(&self) -> SemaphorePermit<'_> {
        self.permits
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    fn api(&self, obj: &EtcdRegistration) -> Api<EtcdRegistration> {
        Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default())
    }

    /// Adds our finalizer, provided the finalizers did not change since `obj` was read.
    pub async fn add_finalizer(&self, obj: &EtcdRegistration) -> Result<Finalizer> {
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
        self.json_patch(obj, ops, "remove the finalizer from")
            .await
            .map(|_| ())
    }

    async fn json_patch(
        &self,
        obj: &EtcdRegistration,
        ops: serde_json::Value,
        what: &str,
    ) -> Result<Finalizer> {
        let patch: Patch<()> =
            Patch::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
        match self
            .api(obj)
            .patch(&obj.name_any(), &PatchParams::default(), &patch)
            .await
        {
            Ok(_) => Ok(Finalizer::Added),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(Finalizer::Gone),
            Err(source) => Err(Error::Kube {
                context: format!("{what} EtcdRegistration {}", describe(obj)),
                source,
            }),
        }
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
