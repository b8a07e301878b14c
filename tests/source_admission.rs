//! The EtcdSource CRD on the real apiserver: what its schema and CEL rules refuse at admission,
//! with messages that name the field, and what `kubectl get etcdsources` shows.

mod common;

use common::*;

fn install(scope: &Scope) {
    let crd = etcd_bridge_testbed::repo::path("crds/etcdsources.etcd-bridge.io.yaml");
    let yaml = std::fs::read_to_string(&crd).expect("read the generated CRD");
    scope
        .bed
        .cluster
        .install_crd(&yaml, "etcdsources.etcd-bridge.io")
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `kubectl apply` of one EtcdSource named `name` with `spec`: Ok, or the apiserver's refusal.
fn apply(scope: &Scope, name: &str, spec: &str) -> Result<(), String> {
    let yaml = format!(
        "apiVersion: etcd-bridge.io/v1alpha1\nkind: EtcdSource\nmetadata: {{name: {name}}}\nspec: {spec}\n"
    );
    let out = scope
        .bed
        .cluster
        .kubectl_stdin(&["apply", "-n", &scope.namespace, "-f", "-"], &yaml);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn bad_sources_are_refused_at_admission_with_the_field_named() {
    let scope = Scope::new("src-admission");
    install(&scope);
    let good = r#"{endpoints: ["https://etcd-0.etcd:2379", "http://10.0.0.1:2379"], secretRef: {name: etcd-a}, prefixes: [{prefix: /services/}, {prefix: kitex/registry-etcd/, format: kitex}], namePrefix: eu-, writebackPrefix: /, staleAfter: 90s}"#;
    apply(&scope, "region-a", good).expect("a good source is admitted");
    let format = scope.kubectl(&[
        "get",
        "etcdsource",
        "region-a",
        "-o",
        "jsonpath={.spec.prefixes[0].format}",
    ]);
    assert_eq!(format, "seed", "the format defaults to seed");

    let cases = [
        (
            r#"{endpoints: ["etcd:2379"], prefixes: [{prefix: /}]}"#,
            "spec.endpoints",
            "http:// or https:// URL",
        ),
        (
            r#"{endpoints: ["ftp://etcd:2379"], prefixes: [{prefix: /}]}"#,
            "spec.endpoints",
            "http:// or https:// URL",
        ),
        (
            r#"{endpoints: [], prefixes: [{prefix: /}]}"#,
            "spec.endpoints",
            "",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /services}]}"#,
            "spec.prefixes[0].prefix",
            "ends with `/`",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: services/}]}"#,
            "spec.prefixes[0]",
            "a seed prefix starts with `/`",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /s/, format: consul}]}"#,
            "spec.prefixes[0].format",
            "Unsupported value",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /a/}, {prefix: /a/b/, format: kratos}]}"#,
            "spec.prefixes",
            "no prefix may contain another",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /a/}, {prefix: /a/}]}"#,
            "spec.prefixes",
            "no prefix may contain another",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /}], staleAfter: soon}"#,
            "spec.staleAfter",
            "",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /}], writebackPrefix: wb}"#,
            "spec.writebackPrefix",
            "starts and ends with `/`",
        ),
        (
            r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /}], namePrefix: EU_}"#,
            "spec.namePrefix",
            "",
        ),
    ];
    for (i, (spec, field, words)) in cases.iter().enumerate() {
        let err = apply(&scope, &format!("bad-{i}"), spec)
            .expect_err(&format!("admitted, but should be refused: {spec}"));
        assert!(
            err.contains(field) && err.contains(words),
            "{spec}: the refusal should name {field} ({words}):\n{err}"
        );
    }
    let long = "a".repeat(64);
    let err = apply(
        &scope,
        &long,
        r#"{endpoints: ["http://e:2379"], prefixes: [{prefix: /}]}"#,
    )
    .expect_err("a name too long for a label value");
    assert!(err.contains("at most 63 characters"), "{err}");

    let table = scope.kubectl(&["get", "etcdsources", "-o", "wide"]);
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "CONNECTED",
            "SYNCED",
            "STALE",
            "KEYS",
            "ENDPOINTS",
            "REVISION",
            "AGE",
            "ERROR"
        ],
        "{table}"
    );
    assert!(table.contains("region-a"), "{table}");
}
