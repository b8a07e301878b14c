//! Reading the bridge's Services and EndpointSlices back, for assertions.

use crate::common::eventually;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use std::time::Duration;

pub struct Apis {
    pub services: Api<Service>,
    pub slices: Api<EndpointSlice>,
}

impl Apis {
    pub fn new(kube: kube::Client, namespace: &str) -> Apis {
        Apis {
            services: Api::namespaced(kube.clone(), namespace),
            slices: Api::namespaced(kube, namespace),
        }
    }
}

/// The EndpointSlices of Service `service`, sorted by name; `None` if the apiserver did not answer.
pub async fn try_slices_of(api: &Api<EndpointSlice>, service: &str) -> Option<Vec<EndpointSlice>> {
    let mut s = api
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .ok()?
        .items;
    s.sort_by_key(|s| s.name_any());
    Some(s)
}

/// Like [`try_slices_of`], panicking when the apiserver does not answer.
pub async fn slices_of(api: &Api<EndpointSlice>, service: &str) -> Vec<EndpointSlice> {
    try_slices_of(api, service)
        .await
        .expect("list EndpointSlices")
}

pub fn addrs_of(slice: &EndpointSlice) -> Vec<String> {
    let mut a: Vec<String> = slice
        .endpoints
        .iter()
        .flat_map(|e| e.addresses.clone())
        .collect();
    a.sort();
    a
}

/// Every address of every slice, sorted.
pub fn addresses(slices: &[EndpointSlice]) -> Vec<String> {
    let mut a: Vec<String> = slices.iter().flat_map(addrs_of).collect();
    a.sort();
    a
}

pub fn weight_of(slice: &EndpointSlice) -> String {
    slice
        .annotations()
        .get("etcd-bridge.io/weight")
        .cloned()
        .unwrap_or_default()
}

pub fn rv(obj: &impl kube::Resource) -> String {
    obj.meta().resource_version.clone().unwrap_or_default()
}

pub fn sorted(list: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// Whether the Service `name` exists and its slices hold exactly `want`.
pub async fn holds(apis: &Apis, name: &str, want: &[&str]) -> Option<Vec<EndpointSlice>> {
    apis.services.get_opt(name).await.ok().flatten()?;
    let s = try_slices_of(&apis.slices, name).await?;
    (addresses(&s) == sorted(want)).then_some(s)
}

/// Waits until the Service `name` exists and its slices hold exactly `want`.
pub async fn converged(
    apis: &Apis,
    name: &str,
    want: &[&str],
    timeout: Duration,
) -> Vec<EndpointSlice> {
    eventually(&format!("Service {name} holding {want:?}"), timeout, || {
        holds(apis, name, want)
    })
    .await
}
