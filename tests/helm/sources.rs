//! The chart's part of several registries: the EtcdSource CRD, `--sources`, and RBAC that lets
//! the bridge read exactly the Secrets listed in `sources.secretNames`.

use crate::support::*;
use serde_json::Value;

fn sources_role(docs: &[Value]) -> Option<&Value> {
    of_kind(docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "rel-etcd-bridge-sources")
}

#[tokio::test]
async fn sources_render_the_crd_the_flag_and_a_role_for_the_named_secrets_only() {
    let bed = TestBed::shared();
    let ns = unique("chart-sources");
    create_namespace(bed, &ns);

    // Off by default: the CRD ships (it is harmless), nothing else changes.
    let docs = documents(&template("rel", &ns, &[] as &[&str]).unwrap());
    let crds: Vec<&Value> = of_kind(&docs, "CustomResourceDefinition");
    let names: Vec<&str> = crds
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert!(names.contains(&"etcdsources.etcd-bridge.io"), "{names:?}");
    assert_eq!(flag(&args_of(one(&docs, "Deployment")), "--sources"), None);
    assert!(sources_role(&docs).is_none());

    let values = [
        "sources.enabled=true",
        "sources.secretNames[0]=etcd-eu",
        "sources.secretNames[1]=etcd-us",
    ];
    let mut lint = vec!["lint", chart(), "--strict"];
    lint.extend(sets(&values));
    must("helm lint (sources)", helm(&lint));
    let yaml = template("rel", &ns, &values).unwrap();
    let docs = documents(&yaml);
    let args = args_of(one(&docs, "Deployment"));
    assert_eq!(flag(&args, "--sources"), Some("true"));
    assert!(bridge_has_flag("--sources"));
    let role = sources_role(&docs).expect("the sources Role");
    assert_eq!(role["metadata"]["namespace"], ns.as_str());
    let want = [
        rule(
            "etcd-bridge.io",
            "etcdsources",
            &[],
            &["get", "list", "watch"],
        ),
        rule(
            "etcd-bridge.io",
            "etcdsources/status",
            &[],
            &["get", "patch", "update"],
        ),
        rule(
            "",
            "secrets",
            &["etcd-eu", "etcd-us"],
            &["get", "list", "watch"],
        ),
    ];
    assert_eq!(rules(role), want.into_iter().collect());
    let binding = of_kind(&docs, "RoleBinding")
        .into_iter()
        .find(|b| b["metadata"]["name"] == "rel-etcd-bridge-sources")
        .expect("its RoleBinding");
    assert_eq!(binding["roleRef"]["name"], "rel-etcd-bridge-sources");
    server_validates(bed, "sources", &yaml);

    // Without secretNames: no right on any Secret at all.
    let docs = documents(&template("rel", &ns, &["sources.enabled=true"]).unwrap());
    let role = rules(sources_role(&docs).unwrap());
    assert!(!role.iter().any(|r| r.1 == "secrets"), "{role:?}");

    // With the NetworkPolicy: egress to the sources' etcd ports too.
    let np = [
        "sources.enabled=true",
        "sources.etcdPorts[0]=12379",
        "networkPolicy.enabled=true",
    ];
    let yaml = template("rel", &ns, &np).unwrap();
    let docs = documents(&yaml);
    let egress = &one(&docs, "NetworkPolicy")["spec"]["egress"][0]["ports"];
    let ports: Vec<i64> = (egress.as_array().unwrap().iter())
        .filter_map(|p| p["port"].as_i64())
        .collect();
    assert_eq!(ports, [2379, 12379]);
    server_validates(bed, "sources with a NetworkPolicy", &yaml);

    let bad = template("rel", &ns, &["sources.secretNames[0]=Not_A_Name"]).unwrap_err();
    assert!(bad.contains("secretNames"), "{bad}");
}
