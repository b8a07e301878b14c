//! Write-back to several registries (issue 13): an EtcdRegistration whose `spec.source` names an
//! EtcdSource is written to that source's etcd, under its `writebackPrefix`, on leases of its own;
//! one that moves is taken out of the registry before. Two real etcd clusters at once.

use super::{WAIT, bridge, condition, keys_under, registration, value};
use crate::common::*;
use std::time::{Duration, Instant};

/// `.status.source` of the EtcdRegistration `name`.
fn status_source(scope: &Scope, name: &str) -> String {
    scope.kubectl(&["get", "etcdreg", name, "-o", "jsonpath={.status.source}"])
}

/// Waits until `key` is in `etcd` (`present`) or not; returns how long after `since`.
async fn key_becomes(
    etcd: &etcd_client::Client,
    key: &str,
    present: bool,
    since: Instant,
) -> Duration {
    let what = format!("{key} {}", if present { "in etcd" } else { "gone" });
    eventually(&what, WAIT, || {
        let (mut etcd, key) = (etcd.clone(), key.to_owned());
        async move { (value(&mut etcd, &key).await.is_some() == present).then_some(()) }
    })
    .await;
    since.elapsed()
}

#[tokio::test]
async fn a_registration_goes_to_the_registry_its_source_names_and_moves_with_it() {
    let east = private_etcd("wb-sources-east");
    let scope = Scope::new("wb-sources");
    install_sources_crd(&scope);
    scope.apply(SOURCES_ROLE);
    let ns = &scope.namespace;
    let east_prefix = format!("/wb-east-{ns}/");
    // Imports from its own prefix; takes write-back under another.
    scope.apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: east}}\nspec: {{endpoints: [\"{}\"], prefixes: [{{prefix: /import-{ns}/}}], writebackPrefix: {east_prefix}}}\n",
        east.endpoint()
    ));
    // A registry that takes no write-back.
    scope.apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: readonly}}\nspec: {{endpoints: [\"{}\"], prefixes: [{{prefix: /readonly-{ns}/}}]}}\n",
        east.endpoint()
    ));
    // Short leases, so that a registry that goes takes its keys within seconds.
    let bridge = bridge(
        &scope,
        &[
            "--sources=true",
            "--etcd-timeout=2s",
            "--lease-duration=4s",
            "--writeback-lease-ttl=6s",
        ],
    )
    .await;
    let own = scope.etcd().await;
    let east_etcd = etcd_client::Client::connect([east.endpoint()], None)
        .await
        .expect("connect to the east etcd");

    // Named: written to east's etcd under its writebackPrefix, on a lease, and not to the
    // bridge's own etcd.
    let spec = |source: &str| {
        format!("{{service: greeter, weight: 2, addresses: [\"10.81.0.1:50051\"]{source}}}")
    };
    let in_east = format!("{east_prefix}greeter/10.81.0.1:50051");
    let in_own = format!("{}greeter/10.81.0.1:50051", scope.prefix);
    // Timed from the apply's return: the first kubectl of a new kind spends seconds on discovery.
    scope.apply(&registration("greeter", &spec(", source: east")));
    let took = key_becomes(&east_etcd, &in_east, true, Instant::now()).await;
    println!("in the named registry {took:?} after the apply returned");
    let v = value(&mut east_etcd.clone(), &in_east).await.unwrap();
    assert_eq!(
        v,
        format!(
            r#"{{"name":"greeter","addr":"10.81.0.1:50051","version":"","weight":2,"etcd-bridge.io/owner":"default/{ns}/greeter"}}"#
        ),
        "the seed's format, in the other registry"
    );
    let kv = east_etcd.clone().get(in_east.as_str(), None).await.unwrap();
    assert_ne!(kv.kvs()[0].lease(), 0, "on a lease in east's etcd");
    assert!(
        keys_under(&mut own.clone(), &scope.prefix).await.is_empty(),
        "nothing in the bridge's own etcd"
    );
    eventually("greeter Ready, in east", WAIT, || async {
        (condition(&scope, "greeter", "Ready") == "True/Registered"
            && status_source(&scope, "greeter") == "east")
            .then_some(())
    })
    .await;

    // Naming a registry that does not exist, or one that takes no write-back: refused, with why.
    scope.apply(&registration(
        "lost",
        r#"{service: lost, addresses: ["10.81.0.2:80"], source: west}"#,
    ));
    scope.apply(&registration(
        "ro",
        r#"{service: ro, addresses: ["10.81.0.3:80"], source: readonly}"#,
    ));
    eventually("both refused", WAIT, || async {
        (condition(&scope, "lost", "Ready") == "False/SourceNotFound"
            && condition(&scope, "ro", "Ready") == "False/SourceNotWritable")
            .then_some(())
    })
    .await;
    let message = |name: &str| {
        scope.kubectl(&[
            "get",
            "etcdreg",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ])
    };
    assert!(
        message("lost").contains(&format!("no EtcdSource `west` in namespace `{ns}`")),
        "{}",
        message("lost")
    );
    assert!(
        message("ro").contains("spec.writebackPrefix"),
        "{}",
        message("ro")
    );

    // Moved to the bridge's own registry: taken out of east, written to its own etcd.
    let t = Instant::now();
    scope.apply(&registration("greeter", &spec("")));
    let arrived = key_becomes(&own, &in_own, true, t).await;
    let left = key_becomes(&east_etcd, &in_east, false, t).await;
    println!("moved to the bridge's own etcd: arrived after {arrived:?}, left east after {left:?}");
    eventually("greeter in default", WAIT, || async {
        (status_source(&scope, "greeter") == "default").then_some(())
    })
    .await;
    // And back.
    let t = Instant::now();
    scope.apply(&registration("greeter", &spec(", source: east")));
    key_becomes(&east_etcd, &in_east, true, t).await;
    key_becomes(&own, &in_own, false, t).await;

    // Its registry hangs (SIGSTOP) while the object moves away from it: the status says which
    // registry could not be written, and keeps the keys; once it answers, the move is done.
    eventually("greeter Ready in east again", WAIT, || async {
        (condition(&scope, "greeter", "Ready") == "True/Registered").then_some(())
    })
    .await;
    east.freeze();
    scope.apply(&registration(
        "greeter",
        r#"{service: greeter, weight: 5, addresses: ["10.81.0.1:50051"]}"#,
    ));
    eventually("greeter says east is unavailable", WAIT, || async {
        (condition(&scope, "greeter", "Ready") == "False/RegistryUnavailable").then_some(())
    })
    .await;
    let status = |path: &str| {
        scope.kubectl(&[
            "get",
            "etcdreg",
            "greeter",
            "-o",
            &format!("jsonpath={path}"),
        ])
    };
    let message = status("{.status.conditions[?(@.type==\"Ready\")].message}");
    assert!(message.contains("registry `east`"), "{message}");
    assert!(
        status("{.status.keys}").contains(&in_east),
        "the keys stay in the status"
    );
    assert_eq!(status("{.status.source}"), "east");
    east.thaw();
    eventually("moved, with the new weight, Ready", WAIT, || async {
        let v = value(&mut own.clone(), &in_own).await?;
        (v.contains(r#""weight":5"#)
            && value(&mut east_etcd.clone(), &in_east).await.is_none()
            && condition(&scope, "greeter", "Ready") == "True/Registered"
            && status_source(&scope, "greeter") == "default")
            .then_some(())
    })
    .await;
    let t = Instant::now();
    scope.apply(&registration("greeter", &spec(", source: east")));
    key_becomes(&east_etcd, &in_east, true, t).await;

    // Deleted: its key goes from the registry that holds it.
    let t = Instant::now();
    scope.kubectl(&["delete", "etcdreg", "greeter", "--wait=true"]);
    key_becomes(&east_etcd, &in_east, false, t).await;

    // A registry that goes takes its keys: its leases are no longer kept alive (6 s TTL).
    scope.apply(&registration(
        "stays",
        r#"{service: stays, addresses: ["10.81.0.4:80"], source: east}"#,
    ));
    let stays = format!("{east_prefix}stays/10.81.0.4:80");
    key_becomes(&east_etcd, &stays, true, Instant::now()).await;
    const LEASES: &str = "etcd_bridge_writeback_leases";
    let leases = bridge.metric(LEASES).expect("the leases gauge");
    assert!(
        leases >= 2.0,
        "one lease in each registry at least: {leases}"
    );
    let t = Instant::now();
    scope.kubectl(&["delete", "etcdsource", "east", "--wait=true"]);
    let gone = key_becomes(&east_etcd, &stays, false, t).await;
    println!("the registry's keys left etcd {gone:?} after its EtcdSource was deleted");
    eventually("stays refused", WAIT, || async {
        (condition(&scope, "stays", "Ready") == "False/SourceNotFound").then_some(())
    })
    .await;
    // east's one lease leaves the gauge, which adds up every registry's.
    eventually("east's lease out of the gauge", WAIT, || async {
        (bridge.metric(LEASES) == Some(leases - 1.0)).then_some(())
    })
    .await;
    // A source created after the object that names it: the object is written once it comes.
    scope.apply(&format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: west}}\nspec: {{endpoints: [\"{}\"], prefixes: [{{prefix: /west-{ns}/}}], writebackPrefix: /wb-west-{ns}/}}\n",
        east.endpoint()
    ));
    let t = Instant::now();
    let came = key_becomes(
        &east_etcd,
        &format!("/wb-west-{ns}/lost/10.81.0.2:80"),
        true,
        t,
    )
    .await;
    println!(
        "an object waiting for its source was written {came:?} after the apply of its source returned"
    );
    eventually("lost Ready, in west", WAIT, || async {
        (condition(&scope, "lost", "Ready") == "True/Registered"
            && status_source(&scope, "lost") == "west")
            .then_some(())
    })
    .await;

    let ready = bridge.get("/readyz").map(|(code, _)| code);
    assert_eq!(ready, Some(200), "the bridge carries on:\n{}", bridge.log());
}
