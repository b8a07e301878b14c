//! `etcd-bridge preview`: what `run` would write, from etcd alone, and every key it would skip.

use crate::config::{ProbeArgs, ProjectionArgs};
use crate::diff::SliceChange;
use crate::error::Result;
use crate::format::SkipReason;
use crate::format::{self, Format};
use crate::import::panic_guard::{self, Panic};
use crate::import::plan::{self, Decision, ServiceStep, Wanted};
use crate::naming::{self, Collision};
use crate::probe::check;
use crate::probe::index::endpoints_of;
use crate::probe::selector::Selector;
use crate::probe::state::Outcome;
use crate::projection::{self, EndpointId, ProjectionConfig};
use crate::snapshot::{Snapshot, Source};
use crate::source::SourceConfig;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

/// Health checks in flight at once during `preview --probe`.
const PREVIEW_PROBES: usize = 256;

/// One round of health checks (`preview --probe`): each endpoint probed once, and that result
/// taken as its verdict (the thresholds need several rounds).
pub struct Probed {
    pub selector: Selector,
    pub panic_share: f64,
    pub results: BTreeMap<EndpointId, (Outcome, Duration)>,
}

impl Probed {
    fn verdict(
        &self,
        target: &crate::target::Target,
        groups: &projection::Groups,
    ) -> panic_guard::Verdict {
        if !self.selector.matches(target) {
            return panic_guard::Verdict::default();
        }
        let failed = |e: &EndpointId| {
            self.results
                .get(e)
                .is_some_and(|(o, _)| *o != Outcome::Serving)
        };
        panic_guard::apply(groups, failed, self.panic_share)
    }
}

pub struct Report {
    pub services: Vec<(Service, Vec<EndpointSlice>)>,
    /// Per prefix: its configured format, and how many keys were read as each format.
    pub formats: Vec<(Source, BTreeMap<Format, usize>)>,
    pub skipped: Vec<(String, SkipReason)>,
    pub collisions: Vec<Collision>,
    /// With `--probe`: the round of health checks, and the Services the panic guard would hold.
    pub probed: Option<Probed>,
    pub panics: Vec<(String, Panic)>,
}

/// Lists every prefix once and projects it, as `run` would on an empty cluster; with `--probe`,
/// after one round of health checks of the probed endpoints.
/// `source`: the flags' registry, or an EtcdSource's (`--source-file`).
pub async fn preview(
    source: &SourceConfig,
    proj: &ProjectionArgs,
    probe: &ProbeArgs,
) -> Result<Report> {
    let prefixes: Vec<&str> = source.prefixes.iter().map(|s| s.prefix.as_str()).collect();
    let selector = probe.selector_for(&prefixes)?;
    let connection = &source.connection;
    let mut client = crate::etcd::connect(connection).await?;
    // As `run` does by default: keys this instance wrote back are listed as skipped, not projected.
    let mut snapshot = Snapshot::new(source.prefixes.clone(), proj.aggregate)
        .of_source(&source.name)
        .skip_own(&proj.instance);
    for prefix in prefixes {
        let (kvs, _) = crate::etcd::read_prefix(&mut client, connection, prefix).await?;
        snapshot.reset_prefix(prefix, kvs.iter().map(|(k, v)| (&k[..], &v[..])));
    }
    let probed = match selector.is_empty() {
        true => None,
        false => Some(probe_once(&snapshot, selector, probe).await),
    };
    Ok(Report::from_snapshot_prefixed(
        &snapshot,
        &source.name_prefix,
        &proj.projection_config(),
        probed,
    ))
}

/// Probes every endpoint `selector` picks in `snapshot`, once.
async fn probe_once(snapshot: &Snapshot, selector: Selector, args: &ProbeArgs) -> Probed {
    let endpoints: BTreeSet<EndpointId> = snapshot
        .targets()
        .filter(|t| selector.matches(t))
        .flat_map(|t| endpoints_of(&projection::group(snapshot.registrations(t))))
        .collect();
    let settings = args.settings();
    let results = futures::stream::iter(endpoints)
        .map(|e| {
            let (mode, timeout) = (&settings.mode, settings.timeout);
            async move { (e, check::check(mode, SocketAddr::from(e), timeout).await) }
        })
        .buffer_unordered(PREVIEW_PROBES)
        .collect()
        .await;
    Probed {
        selector,
        panic_share: args.panic_threshold,
        results,
    }
}

impl Report {
    /// The objects a fresh `run` would write for `snapshot`: the same planner as `run`, against
    /// an empty cluster.
    pub fn from_snapshot(
        snapshot: &Snapshot,
        cfg: &ProjectionConfig,
        probed: Option<Probed>,
    ) -> Report {
        Report::from_snapshot_prefixed(snapshot, "", cfg, probed)
    }

    /// [`Report::from_snapshot`], new names starting with the source's `name_prefix`.
    pub fn from_snapshot_prefixed(
        snapshot: &Snapshot,
        name_prefix: &str,
        cfg: &ProjectionConfig,
        probed: Option<Probed>,
    ) -> Report {
        let prefixes = BTreeMap::from([(snapshot.source().to_owned(), name_prefix.to_owned())]);
        let (names, collisions) =
            naming::assign_prefixed(snapshot.targets(), &BTreeMap::new(), &prefixes);
        let mut services = Vec::new();
        let mut panics = Vec::new();
        for (target, name) in &names {
            let groups = projection::group(snapshot.registrations(target));
            if groups.is_empty() {
                continue;
            }
            let mut wanted = Wanted::new(target.clone(), groups);
            if let Some(p) = &probed {
                wanted.health = p.verdict(target, &wanted.groups);
            }
            let Decision::Converge {
                service: ServiceStep::Apply(svc),
                groups,
                health,
                ..
            } = plan::decide(name, Some(&wanted), None, &[], false, cfg)
            else {
                unreachable!("with nothing in the cluster, a wanted Service is always applied")
            };
            if let Some(p) = health.panic {
                panics.push((name.clone(), p));
            }
            let slices = plan::slice_changes(
                &wanted.target.source,
                name,
                &groups,
                &health.unhealthy,
                &[],
                None,
                cfg,
            )
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
            probed,
            panics,
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
                let addrs: Vec<String> = s.endpoints.iter().map(endpoint_cell).collect();
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
        if let Some(p) = &self.probed {
            self.probe_table(&mut out, p);
        }
        out
    }

    /// The round of health checks, and the Services the panic guard would hold.
    fn probe_table(&self, out: &mut String, p: &Probed) {
        let _ = writeln!(
            out,
            "\nHEALTH CHECKS: one round, each result taken as the verdict (run applies the thresholds)"
        );
        let _ = writeln!(out, "{:<48} {:<16} TOOK", "ENDPOINT", "OUTCOME");
        for (e, (outcome, took)) in &p.results {
            let _ = writeln!(
                out,
                "{:<48} {:<16} {took:.1?}",
                SocketAddr::from(*e).to_string(),
                outcome.label()
            );
        }
        for (name, panic) in &self.panics {
            let _ = writeln!(
                out,
                "panic guard on {name}: {} of {} endpoints fail, more than the threshold; all would be kept ready",
                panic.failing, panic.total
            );
        }
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

/// An endpoint's address, and how it is not ready if it is not.
fn endpoint_cell(e: &k8s_openapi::api::discovery::v1::Endpoint) -> String {
    let addr = e.addresses.join(",");
    let c = e.conditions.clone().unwrap_or_default();
    match (c.ready, c.serving, c.terminating) {
        (Some(false), Some(true), Some(true)) => format!("{addr}(draining)"),
        (Some(false), _, Some(true)) => format!("{addr}(draining,not-serving)"),
        (Some(false), ..) => format!("{addr}(not-serving)"),
        _ => addr,
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
            buckets: 1,
        };
        let r = Report::from_snapshot(&snap, &cfg, None);
        let names: Vec<String> = r.services.iter().map(|(s, _)| s.name_any()).collect();
        assert_eq!(names, ["greeter", "greeter-v1"]);
        assert_eq!(r.skipped.len(), 1);
        let table = r.table();
        assert!(table.contains("10.0.0.1"), "{table}");
        assert!(table.contains("2 Services, 2 EndpointSlices"), "{table}");
        assert!(table.contains("configured"), "{table}");
        assert_eq!(r.objects()["items"].as_array().map(Vec::len), Some(4));
    }

    #[test]
    fn a_round_of_probes_shows_the_conditions_it_would_write() {
        let mut snap = Snapshot::new(
            vec![crate::snapshot::Source {
                prefix: "/".into(),
                format: crate::format::Format::Seed,
            }],
            false,
        );
        let put = |snap: &mut Snapshot, name: &str, n: u8, weight: i64| {
            let addr = format!("10.0.0.{n}:50051");
            snap.put(
                format!("/{name}/v1/{addr}").as_bytes(),
                format!(r#"{{"name":"{name}","addr":"{addr}","version":"v1","weight":{weight}}}"#)
                    .as_bytes(),
            );
        };
        for n in 1..=3 {
            put(&mut snap, "greeter", n, 1);
        }
        put(&mut snap, "greeter", 4, 0);
        put(&mut snap, "lonely", 9, 1);
        let ep = |n: u8| (std::net::IpAddr::from([10, 0, 0, n]), 50051);
        let ms = Duration::from_millis(1);
        let probed = Probed {
            selector: Selector::parse(&["*".into()], &["/"]).unwrap(),
            panic_share: 0.5,
            results: BTreeMap::from([
                (ep(1), (Outcome::Serving, ms)),
                (ep(2), (Outcome::NotServing, ms)),
                (ep(3), (Outcome::Serving, ms)),
                (ep(4), (Outcome::Serving, ms)),
                (ep(9), (Outcome::TimedOut, ms)),
            ]),
        };
        let cfg = ProjectionConfig {
            namespace: "ns".into(),
            instance: "default".into(),
            headless: true,
            max_endpoints_per_slice: 100,
            cilium_weight: true,
            buckets: 1,
        };
        let r = Report::from_snapshot(&snap, &cfg, Some(probed));
        let table = r.table();
        assert!(table.contains("10.0.0.2(not-serving)"), "{table}");
        assert!(table.contains("10.0.0.4(draining)"), "{table}");
        assert!(
            table.contains("10.0.0.1 ") || table.contains("10.0.0.1,"),
            "{table}"
        );
        // lonely's only endpoint fails: more than half, so the guard keeps it ready.
        assert!(table.contains("10.0.0.9\n"), "{table}");
        assert!(
            table.contains("panic guard on lonely-v1: 1 of 1"),
            "{table}"
        );
        assert!(
            table.contains("10.0.0.2:50051") && table.contains("not_serving"),
            "{table}"
        );
    }
}
