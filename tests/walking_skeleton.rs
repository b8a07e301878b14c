//! The thinnest end-to-end path, on the real test bed: a key written the way the seed's Go
//! `Register` writes it becomes a selector-less Service and an EndpointSlice; deleting the key,
//! or letting its lease expire, removes the endpoint.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_seed_registration_becomes_a_service_and_an_endpointslice_and_goes_away() {
    let scope = Scope::new("skeleton");
    // The bridge runs with a ServiceAccount token and exactly the rights of its Role.
    let kubeconfig = scope.bridge_kubeconfig();
    let mut bridge = scope.bridge(&kubeconfig, &[]);
    bridge.ready(WAIT).await;

    let mut etcd = scope.etcd().await;
    let lease = register(
        &mut etcd,
        &scope.prefix,
        "greeter",
        "v1",
        "10.1.2.3:50051",
        3,
        60,
    )
    .await;

    let kube = scope.kube().await;
    let services: Api<Service> = Api::namespaced(kube.clone(), &scope.namespace);
    let slice_api: Api<EndpointSlice> = Api::namespaced(kube, &scope.namespace);

    // One Service per resolver target: `greeter-v1` and the aggregate `greeter`.
    for name in ["greeter-v1", "greeter"] {
        let svc = eventually(&format!("Service {name}"), WAIT, || async {
            services.get_opt(name).await.ok().flatten()
        })
        .await;
        let spec = svc.spec.clone().expect("spec");
        assert_eq!(spec.selector, None, "selector-less");
        assert_eq!(
            spec.cluster_ip.as_deref(),
            Some("None"),
            "headless by default"
        );
        let ports = spec.ports.expect("ports");
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].port, 50051);
        assert_eq!(svc.labels()["app.kubernetes.io/managed-by"], "etcd-bridge");
        assert_eq!(svc.annotations()["etcd-bridge.io/name"], "greeter");
        assert_eq!(svc.annotations()["etcd-bridge.io/prefix"], scope.prefix);

        let s = eventually(&format!("EndpointSlice of {name}"), WAIT, || async {
            let s = slices_of(&slice_api, name).await;
            (!s.is_empty()).then_some(s)
        })
        .await;
        assert_eq!(s.len(), 1);
        let slice = &s[0];
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(addresses(&s), ["10.1.2.3"]);
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(50051));
        assert_eq!(slice.annotations()["etcd-bridge.io/weight"], "3");
        assert_eq!(
            slice.labels()["endpointslice.kubernetes.io/managed-by"],
            "controller.etcd-bridge.io"
        );
        let owner = &slice.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("Service", name)
        );
        assert_eq!(Some(owner.uid.clone()), svc.uid());
    }
    assert_eq!(
        services
            .get("greeter")
            .await
            .unwrap()
            .annotations()
            .get("etcd-bridge.io/version"),
        None,
        "the aggregate has no version"
    );

    // `kubectl get` shows them, as a user would look.
    let out = scope.kubectl(&["get", "services,endpointslices", "-o", "name"]);
    assert!(out.contains("service/greeter-v1"), "{out}");

    // A second instance joins; deleting the first key leaves only the second.
    register(
        &mut etcd,
        &scope.prefix,
        "greeter",
        "v1",
        "10.1.2.4:50051",
        3,
        60,
    )
    .await;
    eventually("two endpoints", WAIT, || async {
        (addresses(&slices_of(&slice_api, "greeter-v1").await) == ["10.1.2.3", "10.1.2.4"])
            .then_some(())
    })
    .await;
    etcd.delete(
        seed_key(&scope.prefix, "greeter", "v1", "10.1.2.3:50051"),
        None,
    )
    .await
    .unwrap();
    eventually("the deleted endpoint gone", WAIT, || async {
        (addresses(&slices_of(&slice_api, "greeter-v1").await) == ["10.1.2.4"]).then_some(())
    })
    .await;

    // The last registration's lease expires (its service stopped keeping it alive): the Service
    // goes, and with it (garbage collection) its EndpointSlices.
    etcd.lease_revoke(lease).await.ok();
    let short = etcd.lease_grant(2, None).await.unwrap().id();
    etcd.put(
        seed_key(&scope.prefix, "greeter", "v1", "10.1.2.4:50051"),
        seed_value("greeter", "v1", "10.1.2.4:50051", 3),
        Some(etcd_client::PutOptions::new().with_lease(short)),
    )
    .await
    .unwrap();
    eventually("Services removed after the lease expired", WAIT, || async {
        let gone = services.get_opt("greeter-v1").await.unwrap().is_none()
            && services.get_opt("greeter").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    eventually("EndpointSlices garbage-collected", WAIT, || async {
        slices_of(&slice_api, "greeter-v1")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    assert!(bridge.proc.is_running(), "{}", bridge.log());
    assert_eq!(bridge.metric("etcd_bridge_leader"), Some(1.0));
}
