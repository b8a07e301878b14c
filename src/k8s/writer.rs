//! Every write the bridge makes to Kubernetes: server-side apply with one field manager, and
//! deletes with a resourceVersion precondition. Each write is counted and remembered in the view.

use crate::error::{Error, Result};
use crate::k8s::ClusterView;
use crate::labels::FIELD_MANAGER;
use crate::metrics::Metrics;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, ResourceExt};
use std::sync::Arc;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Written,
    /// Not written: an object of that name belongs to someone else.
    Conflict(String),
}

pub struct Writer {
    client: Client,
    recorder: Recorder,
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    view: Arc<ClusterView>,
    metrics: Arc<Metrics>,
}

fn kube_err(context: String) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { context, source }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Writer {
    pub fn new(client: Client, view: Arc<ClusterView>, metrics: Arc<Metrics>) -> Self {
        let ns = view.namespace().to_string();
        let reporter = Reporter {
            controller: crate::labels::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Writer {
            client: client.clone(),
            recorder: Recorder::new(client.clone(), reporter),
            services: Api::namespaced(client.clone(), &ns),
            slices: Api::namespaced(client, &ns),
            view,
            metrics,
        }
    }

    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// `force`: our own objects are ours to set, even if someone edited the fields by hand (drift
    /// repair). Ownership is checked before, from the labels.
    fn params() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    pub async fn apply_service(&self, desired: &Service) -> Result<Service> {
        let name = desired.name_any();
        let res = self
            .services
            .patch(&name, &Self::params(), &Patch::Apply(desired))
            .await;
        self.count("apply", "Service", res.is_ok());
        let svc = res.map_err(kube_err(format!(
            "apply Service {}/{name}",
            self.view.namespace()
        )))?;
        self.view.record_service(&name, Some(svc.clone()), 0);
        Ok(svc)
    }

    pub async fn delete_service(&self, current: &Service) -> Result<()> {
        let name = current.name_any();
        let rv = current.resource_version();
        let res = self.services.delete(&name, &delete_params(current)).await;
        self.count(
            "delete",
            "Service",
            res.is_ok() || res.as_ref().is_err_and(is_not_found),
        );
        match res {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(kube_err(format!(
                    "delete Service {}/{name}",
                    self.view.namespace()
                ))(e));
            }
        }
        let rv = rv.and_then(|r| r.parse().ok()).unwrap_or(0);
        self.view.record_service(&name, None, rv);
        Ok(())
    }

    pub async fn apply_slice(&self, desired: &EndpointSlice) -> Result<()> {
        let name = desired.name_any();
        let res = self
            .slices
            .patch(&name, &Self::params(), &Patch::Apply(desired))
            .await;
        self.count("apply", "EndpointSlice", res.is_ok());
        let slice = res.map_err(kube_err(format!(
            "apply EndpointSlice {}/{name}",
            self.view.namespace()
        )))?;
        self.view.record_slice(&name, Some(slice), 0);
        Ok(())
    }

    pub async fn delete_slice(&self, current: &EndpointSlice) -> Result<()> {
        let name = current.name_any();
        let res = self.slices.delete(&name, &delete_params(current)).await;
        self.count(
            "delete",
            "EndpointSlice",
            res.is_ok() || res.as_ref().is_err_and(is_not_found),
        );
        match res {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => {
                return Err(kube_err(format!(
                    "delete EndpointSlice {}/{name}",
                    self.view.namespace()
                ))(e));
            }
        }
        let rv = current
            .resource_version()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        self.view.record_slice(&name, None, rv);
        Ok(())
    }

    /// Whether the apiserver answers a cheap request (GET /version) within a second: used to
    /// retry at once when it is back, rather than wait out a backoff grown during an outage.
    pub async fn api_answers(&self) -> bool {
        let probe = self.client.apiserver_version();
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(1), probe).await,
            Ok(Ok(_))
        )
    }

    /// A Warning Event on `obj`. Best effort: failing to report is logged, never fatal.
    pub async fn warn<K: kube::Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Project".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }

    fn count(&self, verb: &'static str, kind: &'static str, ok: bool) {
        if ok {
            self.metrics.write(verb, kind);
        } else {
            self.metrics.write_error(verb, kind);
        }
    }
}

/// Delete exactly the object we looked at: if someone replaced it meanwhile, the uid differs and
/// the apiserver refuses, so we never delete what we did not decide to delete.
fn delete_params<K: kube::Resource>(obj: &K) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: obj.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}
