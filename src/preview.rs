//! `etcd-bridge preview`: what `run` would write, from etcd alone, and every key it would skip.

use crate::config::{EtcdArgs, ProjectionArgs};
use crate::diff::SliceChange;
use crate::error::Result;
use crate::format::SkipReason;
use crate::format::{self, Format};
use crate::import::plan::{self, Decision, ServiceStep, Wanted};
use crate::naming::{self, Collision};
use crate::projection::{self, ProjectionConfig};
use crate::snapshot::{Snapshot, Source};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::fmt::Write;

pub struct Report {
    pub services: Vec<(Service, Vec<EndpointSlice>)>,
    /// Per prefix: its configured format, and how many keys were read as each format.
    pub formats: Vec<(Source, BTreeMap<Format, usize>)>,
    pub skipped: Vec<(String, SkipReason)>,
    pub collisions: Vec<Collision>,
}

/// Lists every prefix once and projects it, as `run` would on an empty cluster.
pub async fn preview(etcd: &EtcdArgs, proj: &ProjectionArgs) -> Result<Report> {
    let mut client = crate::etcd::connect(etcd).await?;
    // As `run` does by default: keys this instance wrote back are listed as skipped, not projected.
    let mut snapshot =
        Snapshot::new(etcd.prefixes.clone(), proj.aggregate).skip_own(&proj.instance);
    for prefix in etcd.prefixes.iter().map(|s| &s.prefix) {
        let (kvs, _) = crate::etcd::read_prefix(&mut client, etcd, prefix).await?;
        snapshot.reset_prefix(prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])));
    }
    Ok(Report::from_snapshot(&snapshot, &proj.projection_config()))
}

impl Report {
    /// The objects a fresh `run` would write for `snapshot`: the same planner as `run`, against
    /// an empty cluster.
    pub fn from_snapshot(snapshot: &Snapshot, cfg: &ProjectionConfig) -> Report {
        let (names, collisions) = naming::assign(snapshot.targets(), &BTreeMap::new());
        let mut services = Vec::new();
        for (target, name) in &names {
            let groups = projection::group(snapshot.registrations(target));
            if groups.is_empty() {
                continue;
            }
            let wanted = Wanted::new(target.clone(), groups);
            let Decision::Converge {
                service: ServiceStep::Apply(svc),
                groups,
                health,
                ..
            } = plan::decide(name, Some(&wanted), None, &[], false, cfg)
            else {
                unreachable!("with nothing in the cluster, a wanted Service is always applied")
            };
            let slices = plan::slice_changes(name, &groups, &health.unhealthy, &[], None, cfg)
                .into_iter()
                .filter_map(|c| match c {
                    SliceChange::Apply(s) => Some(s),
                    SliceChange::Delete(_) => None,
                })
                .collect();
            services.push((*svc, slices));
        }
        services.sort_by_key(|(s, _)| s.name_any());
        let read = snapshot.formats();
        let formats = snapshot
            .sources()
            .iter()
            .map(|s| {
                let counts = read
                    .iter()
                    .filter(|((p, _), _)| *p == s.prefix)
                    .map(|((_, f), n)| (*f, *n))
                    .collect();
                (s.clone(), counts)
            })
            .collect();
        Report {
            services,
            formats,
            skipped: snapshot
                .skipped()
                .map(|(k, r)| (k.to_string(), r))
                .collect(),
            collisions,
        }
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<40} {:<40} {:<8} {:<8} ENDPOINTS",
            "SERVICE", "ENDPOINTSLICE", "WEIGHT", "PORT"
        );
        for (svc, slices) in &self.services {
            for s in slices {
                let weight = s
                    .annotations()
                    .get(crate::labels::ANNOTATION_WEIGHT)
                    .cloned()
                    .unwrap_or_default();
                let port = s
                    .ports
                    .as_ref()
                    .and_then(|p| p.first())
                    .and_then(|p| p.port)
                    .unwrap_or_default();
                let addrs: Vec<&str> = s
                    .endpoints
                    .iter()
                    .flat_map(|e| e.addresses.iter().map(String::as_str))
                    .collect();
                let _ = writeln!(
                    out,
                    "{:<40} {:<40} {:<8} {:<8} {}",
                    svc.name_any(),
                    s.name_any(),
                    weight,
                    port,
                    addrs.join(",")
                );
            }
        }
        let _ = writeln!(
            out,
            "\n{} Services, {} EndpointSlices",
            self.services.len(),
            self.services.iter().map(|(_, s)| s.len()).sum::<usize>()
        );
        let _ = writeln!(
            out,
            "\n{:<32} {:<12} {:<12} {:>6}  WHY",
            "PREFIX", "CONFIGURED", "READ AS", "KEYS"
        );
        for (source, counts) in &self.formats {
            if counts.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<32} {:<12} {:<12} {:>6}",
                    source.prefix,
                    source.format.label(),
                    "-",
                    0
                );
            }
            for (format, n) in counts {
                let why = match source.format {
                    Format::Auto => format::why(*format),
                    _ => "configured",
                };
                let _ = writeln!(
                    out,
                    "{:<32} {:<12} {:<12} {n:>6}  {why}",
                    source.prefix,
                    source.format.label(),
                    format.label()
                );
            }
        }
        for c in &self.collisions {
            let _ = writeln!(
                out,
                "name collision on {}: {:?} keeps it; {:?} get a hashed suffix",
                c.name, c.winner, c.losers
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nSKIPPED KEY  REASON");
            for (k, r) in &self.skipped {
                let _ = writeln!(out, "{}  {} ({r})", k.escape_debug(), r.label());
            }
        }
        out
    }

    /// Every object as one Kubernetes `List`, for `-o json`.
    pub fn objects(&self) -> serde_json::Value {
        let mut items = Vec::new();
        for (svc, slices) in &self.services {
            items.push(serde_json::to_value(svc).unwrap_or_default());
            for s in slices {
                items.push(serde_json::to_value(s).unwrap_or_default());
            }
        }
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_objects_and_skips() {
        let mut snap = Snapshot::new(
            vec![crate::snapshot::Source {
                prefix: "/".into(),
                format: crate::format::Format::Seed,
            }],
            true,
        );
        snap.put(
            b"/greeter/v1/10.0.0.1:50051",
            br#"{"name":"greeter","addr":"10.0.0.1:50051","version":"v1","weight":2}"#,
        );
        snap.put(b"/greeter/v1/10.0.0.2", b"garbage");
        let cfg = ProjectionConfig {
            namespace: "ns".into(),
            instance: "default".into(),
            headless: true,
            max_endpoints_per_slice: 100,
            cilium_weight: true,
        };
        let r = Report::from_snapshot(&snap, &cfg);
        let names: Vec<String> = r.services.iter().map(|(s, _)| s.name_any()).collect();
        assert_eq!(names, ["greeter", "greeter-v1"]);
        assert_eq!(r.skipped.len(), 1);
        let table = r.table();
        assert!(table.contains("10.0.0.1"), "{table}");
        assert!(table.contains("2 Services, 2 EndpointSlices"), "{table}");
        assert!(table.contains("configured"), "{table}");
        assert_eq!(r.objects()["items"].as_array().map(Vec::len), Some(4));
    }
}
