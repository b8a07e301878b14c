//! Writes EtcdSource status (server-side apply on /status) and Events, from
//! [`super::status`]'s decisions. Only the leader writes; a status that says nothing new is not
//! written at all.

use super::crd::{EtcdSource, EtcdSourceStatus};
use super::status::{self, Reports};
use super::supervisor::Refused;
use crate::labels::FIELD_MANAGER;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::BTreeMap;

pub struct Publisher {
    client: Client,
    recorder: Recorder,
    /// What this replica last wrote, newer than the watch may show yet.
    written: BTreeMap<String, EtcdSourceStatus>,
}

impl Publisher {
    pub fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Publisher {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            written: BTreeMap::new(),
        }
    }

    /// Brings the status of every object to what `reports` and `refused` say. Whether every
    /// status that needed a write was written.
    pub async fn publish(
        &mut self,
        objects: &[EtcdSource],
        reports: &Reports,
        refused: &Refused,
    ) -> bool {
        let mut all_written = true;
        self.written
            .retain(|n, _| objects.iter().any(|o| o.name_any() == *n));
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        for obj in objects {
            let name = obj.name_any();
            let prev = (self.written.get(&name).cloned())
                .or_else(|| obj.status.clone())
                .unwrap_or_default();
            let next = status::status(
                obj.metadata.generation,
                reports.get(&name),
                refused.get(&name).map(String::as_str),
                obj.spec.stale_after.as_deref(),
                &prev,
                now.clone(),
            );
            let Some(notes) = status::changes(&prev, &next) else {
                continue;
            };
            for n in notes {
                let ev = Event {
                    type_: if n.warning {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    reason: n.reason,
                    note: Some(n.message.chars().take(1000).collect()),
                    action: "Import".into(),
                    secondary: None,
                };
                if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
                    tracing::warn!(source = %name, error = %e, "could not publish an Event");
                }
            }
            let patch = serde_json::json!({
                "apiVersion": "etcd-bridge.io/v1alpha1",
                "kind": "EtcdSource",
                "status": next,
            });
            let api: Api<EtcdSource> =
                Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                Ok(_) => {
                    self.written.insert(name, next);
                }
                Err(e) => {
                    all_written = false;
                    tracing::warn!(source = %name, error = %e, "could not write the EtcdSource status; retrying in a few seconds")
                }
            }
        }
        all_written
    }

    /// A new term: what the last leader wrote is read back from the objects.
    pub fn forget(&mut self) {
        self.written.clear();
    }
}
