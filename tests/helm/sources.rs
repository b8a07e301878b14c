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

#[tokio::test]
async fn target_namespaces_render_the_flag_and_an_import_role_in_each() {
    let bed = TestBed::shared();
    let ns = unique("chart-srcns");
    let eu = unique("chart-srcns-eu");
    create_namespace(bed, &ns);
    create_namespace(bed, &eu);
    let eu_value = format!("sources.targetNamespaces[0]={eu}");
    // The release's own namespace listed again renders nothing more there.
    let own = format!("sources.targetNamespaces[1]={ns}");
    let values = ["sources.enabled=true", eu_value.as_str(), own.as_str()];
    let yaml = template("rel", &ns, &values).unwrap();
    let docs = documents(&yaml);
    let args = args_of(one(&docs, "Deployment"));
    let listed = format!("{eu},{ns}");
    assert_eq!(flag(&args, "--target-namespaces"), Some(listed.as_str()));
    assert!(bridge_has_flag("--target-namespaces"));
    let imports: Vec<&Value> = (of_kind(&docs, "Role").into_iter())
        .filter(|r| r["metadata"]["name"] == "rel-etcd-bridge-import")
        .collect();
    assert_eq!(imports.len(), 1, "one Role, in {eu} only");
    assert_eq!(imports[0]["metadata"]["namespace"], eu.as_str());
    let verbs = ["get", "list", "watch", "create", "patch", "delete"];
    let want = [
        rule("", "services", &[], &verbs),
        rule("discovery.k8s.io", "endpointslices", &[], &verbs),
        rule("events.k8s.io", "events", &[], &["create", "patch"]),
    ];
    assert_eq!(rules(imports[0]), want.into_iter().collect());
    // The same rules as the release namespace's own Role grants for importing.
    let own_role = (of_kind(&docs, "Role").into_iter())
        .find(|r| r["metadata"]["name"] == "rel-etcd-bridge")
        .expect("the bridge's Role");
    assert!(rules(imports[0]).is_subset(&rules(own_role)));
    let binding = (of_kind(&docs, "RoleBinding").into_iter())
        .find(|b| b["metadata"]["name"] == "rel-etcd-bridge-import")
        .expect("its RoleBinding");
    assert_eq!(binding["metadata"]["namespace"], eu.as_str());
    assert_eq!(binding["subjects"][0]["namespace"], ns.as_str());
    server_validates(bed, "sources in another namespace", &yaml);

    // Without sources.enabled, the list does nothing.
    let docs = documents(&template("rel", &ns, &[eu_value.as_str()]).unwrap());
    assert_eq!(
        flag(&args_of(one(&docs, "Deployment")), "--target-namespaces"),
        None
    );
    let bad = template(
        "rel",
        &ns,
        &["sources.enabled=true", "sources.targetNamespaces[0]=EU"],
    );
    assert!(bad.unwrap_err().contains("targetNamespaces"));
}
