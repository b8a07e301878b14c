use super::*;
use crate::source::crd::{Endpoint, PrefixSpec, SecretRef};
use proptest::prelude::*;

fn spec(endpoints: &[&str], prefixes: &[(&str, &str)]) -> EtcdSourceSpec {
    EtcdSourceSpec {
        endpoints: endpoints.iter().map(|e| Endpoint(e.to_string())).collect(),
        secret_ref: None,
        prefixes: prefixes
            .iter()
            .map(|(p, f)| PrefixSpec {
                prefix: p.to_string(),
                format: f.to_string(),
            })
            .collect(),
        target_namespace: None,
        name_prefix: None,
        writeback_prefix: None,
        stale_after: None,
    }
}

const CTX: Context<'static> = Context {
    namespace: "services",
    namespaces: &[],
    timeout: Duration::from_secs(5),
    reserved: &[DEFAULT_SOURCE],
};

fn fields(r: Result<SourceConfig, Vec<Invalid>>) -> Vec<String> {
    r.expect_err("refused")
        .into_iter()
        .map(|i| i.field)
        .collect()
}

#[test]
fn a_plain_source_resolves_like_the_flags_would() {
    let mut s = spec(
        &["http://10.0.0.1:2379"],
        &[("/services/", "seed"), ("kitex/registry-etcd/", "kitex")],
    );
    s.stale_after = Some("90s".into());
    s.name_prefix = Some("eu-".into());
    let c = resolve("eu", &s, Secret::NotNamed, &CTX).unwrap();
    assert_eq!(c.name, "eu");
    assert_eq!(c.target_namespace, "services", "defaults to --namespace");
    assert_eq!(c.stale_after, Some(Duration::from_secs(90)));
    assert_eq!(c.name_prefix, "eu-");
    assert_eq!(c.connection.timeout, Duration::from_secs(5));
    assert!(!c.connection.tls());
    assert_eq!(
        c.prefixes,
        [
            Prefix {
                prefix: "/services/".into(),
                format: Format::Seed
            },
            Prefix {
                prefix: "kitex/registry-etcd/".into(),
                format: Format::Kitex
            },
        ]
    );
}

#[test]
fn the_flags_define_the_default_source() {
    use clap::Parser;
    let cli = crate::config::Cli::parse_from([
        "etcd-bridge",
        "run",
        "--etcd-endpoints=https://e:2379",
        "--prefix=/a/,/m/=kratos",
        "--etcd-ca-file=/ca.pem",
        "--etcd-username=u",
        "--etcd-password=p",
        "--namespace=svc",
    ]);
    let crate::config::Command::Run(r) = cli.command else {
        unreachable!()
    };
    let c = from_flags(&r.etcd, &r.projection, &r.writeback);
    assert_eq!(c.name, DEFAULT_SOURCE);
    assert_eq!(c.target_namespace, "svc");
    assert_eq!(c.prefixes, r.etcd.prefixes);
    assert_eq!(c.connection.ca, Some(Pem::File("/ca.pem".into())));
    assert_eq!(
        c.connection
            .credentials
            .as_ref()
            .map(|c| c.username.as_str()),
        Some("u")
    );
    assert_eq!(c.writeback_prefix.as_deref(), Some("/"));
    assert_eq!(
        c.stale_after, None,
        "the flags' source keeps its endpoints for ever, as before"
    );
    let cli = crate::config::Cli::parse_from(["etcd-bridge", "run", "--stale-after=10m"]);
    let crate::config::Command::Run(r) = cli.command else {
        unreachable!()
    };
    let c = from_flags(&r.etcd, &r.projection, &r.writeback);
    assert_eq!(c.stale_after, Some(Duration::from_secs(600)));
    assert_eq!(
        c.name_prefix, "",
        "no name change for one-registry installs"
    );
}

#[test]
fn every_problem_names_its_field() {
    let mut s = spec(
        &["http://ok:2379", "etcd:2379", "ftp://x:1", "http://h:1/v3"],
        &[
            ("/a/", "seed"),
            ("/a/b/", "kratos"),
            ("x/", "consul"),
            ("noslash", "kitex"),
        ],
    );
    s.stale_after = Some("soon".into());
    s.name_prefix = Some("EU_".into());
    s.writeback_prefix = Some("wb".into());
    s.target_namespace = Some("elsewhere".into());
    let got = fields(resolve("default", &s, Secret::NotNamed, &CTX));
    assert_eq!(
        got,
        [
            "metadata.name",
            "spec.endpoints[1]",
            "spec.endpoints[2]",
            "spec.endpoints[3]",
            "spec.prefixes[1].prefix",
            "spec.prefixes[2].format",
            "spec.prefixes[3].prefix",
            "spec.targetNamespace",
            "spec.namePrefix",
            "spec.writebackPrefix",
            "spec.staleAfter",
        ]
    );
    let msg = describe(&resolve("default", &s, Secret::NotNamed, &CTX).unwrap_err());
    assert!(msg.contains("unknown registry format `consul`"), "{msg}");
    assert!(msg.contains("overlap"), "{msg}");
    assert!(
        msg.contains("add `elsewhere` to --target-namespaces"),
        "{msg}"
    );
}

#[test]
fn a_target_namespace_must_be_one_the_bridge_projects_into() {
    let mut s = spec(&["http://ok:2379"], &[("/a/", "seed")]);
    s.target_namespace = Some("eu".into());
    let served = ["services".to_owned(), "eu".to_owned()];
    let ctx = Context {
        namespaces: &served,
        ..CTX
    };
    let c = resolve("eu-registry", &s, Secret::NotNamed, &ctx).unwrap();
    assert_eq!(c.target_namespace, "eu");
    s.target_namespace = Some("us".into());
    let msg = describe(&resolve("us-registry", &s, Secret::NotNamed, &ctx).unwrap_err());
    assert!(
        msg.contains("projects into `services`, `eu` only") && msg.contains("add `us`"),
        "{msg}"
    );
}

#[test]
fn a_zero_stale_after_is_refused() {
    let mut s = spec(&["http://e:2379"], &[("/", "seed")]);
    s.stale_after = Some("0s".into());
    assert_eq!(
        fields(resolve("a", &s, Secret::NotNamed, &CTX)),
        ["spec.staleAfter"]
    );
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

#[test]
fn credentials_come_from_the_secret() {
    let mut s = spec(&["https://e:2379"], &[("/", "seed")]);
    s.secret_ref = Some(SecretRef {
        name: "etcd-a".into(),
    });
    let d = data(&[
        ("ca.crt", "CA"),
        ("tls.crt", "C"),
        ("tls.key", "K"),
        ("username", "u"),
        ("password", "p"),
    ]);
    let c = resolve("a", &s, Secret::Data(&d), &CTX).unwrap().connection;
    assert_eq!(c.ca, Some(Pem::Inline(b"CA".to_vec())));
    assert_eq!(
        c.identity,
        Some((Pem::Inline(b"C".to_vec()), Pem::Inline(b"K".to_vec())))
    );
    assert_eq!(
        c.credentials,
        Some(Credentials {
            username: "u".into(),
            password: "p".into()
        })
    );
    assert!(
        !format!("{c:?}").contains("\"p\""),
        "the password is never printed"
    );

    let refused = |d: &BTreeMap<String, Vec<u8>>, endpoint: &str| {
        let mut s = s.clone();
        s.endpoints = vec![Endpoint(endpoint.into())];
        describe(&resolve("a", &s, Secret::Data(d), &CTX).unwrap_err())
    };
    let m = refused(&data(&[("tls.crt", "C")]), "https://e:2379");
    assert!(
        m.starts_with("spec.secretRef.name: Secret `etcd-a`: `tls.crt` and `tls.key`"),
        "{m}"
    );
    let m = refused(&data(&[("username", "u")]), "https://e:2379");
    assert!(m.contains("`username` and `password` go together"), "{m}");
    let m = refused(&data(&[("token", "t")]), "https://e:2379");
    assert!(m.contains("has none of the keys"), "{m}");
    let m = refused(&data(&[("ca.crt", "CA")]), "http://e:2379");
    assert!(
        m.starts_with("spec.endpoints: the Secret holds TLS material"),
        "{m}"
    );
}

#[test]
fn an_unreadable_secret_is_named() {
    let mut s = spec(&["https://e:2379"], &[("/", "seed")]);
    s.secret_ref = Some(SecretRef {
        name: "gone".into(),
    });
    let e = resolve("a", &s, Secret::Unreadable("not found"), &CTX).unwrap_err();
    assert_eq!(
        describe(&e),
        "spec.secretRef.name: Secret `gone`: not found"
    );
    // Username and password alone need no TLS: a plain endpoint is fine.
    s.endpoints = vec![Endpoint("http://e:2379".into())];
    let d = data(&[("username", "u"), ("password", "p")]);
    assert!(resolve("a", &s, Secret::Data(&d), &CTX).is_ok());
}

fn config(name: &str, endpoints: &[&str], prefixes: &[&str]) -> SourceConfig {
    let pairs: Vec<(&str, &str)> = prefixes.iter().map(|p| (*p, "seed")).collect();
    resolve(
        name,
        &spec(endpoints, &pairs),
        Secret::NotNamed,
        &Context {
            reserved: &[],
            ..CTX
        },
    )
    .unwrap()
}

#[test]
fn overlapping_prefixes_on_one_etcd_refuse_the_later_source() {
    let sources = vec![
        config("default", &["http://a:2379"], &["/services/"]),
        config(
            "team",
            &["http://b:2379", "HTTP://A:2379/"],
            &["/services/payments/"],
        ),
        config("other", &["http://a:2379"], &["/other/"]),
        config("region-b", &["http://b:2379"], &["/services/"]),
    ];
    let (kept, refused) = refuse_overlaps(sources);
    let names: Vec<&str> = kept.iter().map(|s| s.name.as_str()).collect();
    // The same prefix on another cluster is no overlap.
    assert_eq!(names, ["default", "other", "region-b"]);
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].source, "team");
    assert_eq!(refused[0].kept_by, "default");
    let m = refused[0].invalid().to_string();
    assert!(
        m.contains("`/services/payments/` overlaps `/services/` of source `default`"),
        "{m}"
    );
}

proptest! {
    /// Whatever the sources, those kept never overlap each other, and each refused one
    /// overlaps a kept one: refusal is never arbitrary.
    #[test]
    fn kept_sources_are_disjoint(raw in proptest::collection::vec(
        (proptest::collection::vec(0u8..3, 1..3), proptest::collection::vec(0u8..4, 1..3)), 0..8)
    ) {
        let all_prefixes = ["/", "/a/", "/a/b/", "/c/"];
        let sources: Vec<SourceConfig> = raw.iter().enumerate().map(|(i, (eps, ps))| {
            let eps: Vec<String> = eps.iter().map(|e| format!("http://e{e}:2379")).collect();
            let eps: Vec<&str> = eps.iter().map(String::as_str).collect();
            let mut ps: Vec<&str> = ps.iter().map(|p| all_prefixes[*p as usize]).collect();
            ps.sort();
            ps.dedup();
            // Keep one source's own prefixes disjoint, as resolution requires.
            let ps: Vec<&str> = ps.iter().copied().filter(|p| *p == ps[0] || !contains(p, ps[0])).collect();
            config(&format!("s{i}"), &eps, &ps)
        }).collect();
        let (kept, refused) = refuse_overlaps(sources.clone());
        prop_assert_eq!(kept.len() + refused.len(), sources.len());
        for (i, a) in kept.iter().enumerate() {
            for b in &kept[i + 1..] {
                prop_assert!(overlap(b, a).is_none(), "{} and {} overlap", a.name, b.name);
            }
        }
        for r in &refused {
            let s = sources.iter().find(|s| s.name == r.source).unwrap();
            prop_assert!(kept.iter().any(|k| k.name == r.kept_by && overlap(s, k).is_some()));
        }
    }
}

#[test]
fn the_supervisor_restarts_only_what_changed() {
    let a = config("a", &["http://a:2379"], &["/"]);
    let b = config("b", &["http://b:2379"], &["/"]);
    let mut b2 = b.clone();
    b2.stale_after = Some(Duration::from_secs(60));
    let c = config("c", &["http://c:2379"], &["/"]);
    let map = |v: &[&SourceConfig]| -> BTreeMap<String, SourceConfig> {
        v.iter().map(|s| (s.name.clone(), (*s).clone())).collect()
    };
    let got = changes(&map(&[&a, &b]), &map(&[&a, &b2, &c]));
    assert_eq!(got.stop, ["b"], "changed: stopped, then started again");
    assert!(got.gone.is_empty());
    assert_eq!(got.start, [b2.clone(), c.clone()]);
    let got = changes(&map(&[&a, &b2, &c]), &map(&[&c]));
    assert_eq!(got.stop, ["a", "b"]);
    assert_eq!(got.gone, ["a", "b"]);
    assert!(got.start.is_empty());
    assert_eq!(changes(&map(&[&c]), &map(&[&c])), Changes::default());
}
