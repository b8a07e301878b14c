//! Write-back in etcd's own resolver format (`etcd-naming`): what etcd's endpoints `Manager`
//! writes, read back by a bridge importing that prefix as etcd-naming.

use super::{WAIT, bridge, condition, registration, value};
use crate::common::*;

#[tokio::test]
async fn an_etcd_naming_registration_is_written_as_the_endpoints_manager_writes_it() {
    let scope = Scope::new("wb-naming");
    // This bridge imports its own keys, as etcd-naming: the round trip through etcd proves the
    // value is what an etcd-naming reader (ours, and etcd's resolver) expects.
    let prefix = format!("--prefix={}=etcd-naming", scope.prefix);
    let _bridge = bridge(&scope, &[&prefix, "--import-own-registrations=true"]).await;
    let etcd = scope.etcd().await;
    scope.apply(&registration(
        "naming",
        r#"{service: greeter, version: v2, weight: 4, format: etcd-naming, metadata: {zone: eu-1}, addresses: ["10.5.3.1:50051"]}"#,
    ));
    let key = format!("{}greeter/v2/10.5.3.1:50051", scope.prefix);
    let v = eventually("the key in etcd", WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.clone());
        async move { value(&mut etcd, &key).await }
    })
    .await;
    let marker = format!("default/{}/naming", scope.namespace);
    assert_eq!(
        v,
        format!(
            r#"{{"Op":0,"Addr":"10.5.3.1:50051","Metadata":{{"weight":4,"zone":"eu-1"}},"etcd-bridge.io/owner":"{marker}"}}"#
        )
    );
    eventually("Ready", WAIT, || async {
        (condition(&scope, "naming", "Ready") == "True/Registered").then_some(())
    })
    .await;
    // The target is `greeter/v2`: imported as etcd-naming, it is the Service greeter-v2-<hash>.
    let apis = Apis::new(scope.kube().await, &scope.namespace);
    let name = eventually("the imported Service", WAIT, || async {
        let names = scope.kubectl(&["get", "svc", "-o", "name"]);
        names
            .lines()
            .find_map(|l| l.strip_prefix("service/greeter-v2-"))
            .map(|h| format!("greeter-v2-{h}"))
    })
    .await;
    let slices = converged(&apis, &name, &["10.5.3.1"], WAIT).await;
    assert_eq!(weight_of(&slices[0]), "4");
}
