//! Golden tests: keys and values captured from each framework's own registration code
//! (tests/go/frameworks/capture.sh writes tests/fixtures/formats/), read as the bridge reads them.
//! What each key becomes is kept in `{format}.parsed`: a framework upgrade that changes its
//! layout, or a parser change, shows up as a diff. `ETCD_BRIDGE_UPDATE_GOLDEN=1` rewrites them.

use crate::format::{Format, parse, sniff};
use serde::Deserialize;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Fixture {
    key: String,
    value: String,
}

/// The prefix a user would configure for these keys.
fn prefix_for(format: Format, key: &str) -> String {
    match format {
        Format::Kratos => "/microservices/".into(),
        Format::GoMicro => "/micro/registry/".into(),
        Format::Kitex => "kitex/registry-etcd/".into(),
        // Free-form keys: their first segment.
        _ => format!("{}/", key.split('/').next().unwrap_or_default()),
    }
}

fn dir() -> PathBuf {
    etcd_bridge_testbed::repo::root().join("tests/fixtures/formats")
}

fn fixtures(file: &str) -> Vec<Fixture> {
    let path = dir().join(file);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

/// What the bridge makes of every fixture of `format`, one line each.
fn read_all(format: Format) -> String {
    let mut out = String::new();
    for (file, good) in [
        (format!("{format}.json"), true),
        (format!("{format}.bad.json"), false),
    ] {
        for f in fixtures(&file) {
            let prefix = prefix_for(format, &f.key);
            let got = parse(format, &prefix, f.key.as_bytes(), f.value.as_bytes());
            let line = match &got {
                Ok((r, _)) => format!(
                    "{} => name={} version={} addr={} weight={}",
                    f.key, r.name, r.version, r.addr, r.weight
                ),
                Err(reason) => format!("{} => skipped: {}", f.key, reason.label()),
            };
            assert_eq!(got.is_ok(), good, "{file}: {line}");
            if good {
                // auto reads what the framework wrote as that framework's format.
                assert_eq!(
                    sniff(&f.value).map(|(f, _)| f),
                    Some(format),
                    "{file}: {}",
                    f.value
                );
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

#[test]
fn every_frameworks_registrations_read_as_captured() {
    for format in [
        Format::EtcdNaming,
        Format::GoZero,
        Format::Kratos,
        Format::GoMicro,
        Format::Kitex,
    ] {
        let got = read_all(format);
        let path = dir().join(format!("{format}.parsed"));
        if std::env::var_os("ETCD_BRIDGE_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &got).unwrap();
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "read {} (ETCD_BRIDGE_UPDATE_GOLDEN=1 writes it): {e}",
                path.display()
            )
        });
        assert_eq!(got, want, "{} changed", path.display());
    }
}
