//! An EtcdSource's status, from what the import reconciler reports of its source (or why the
//! source is not used), and the Events a change of it is worth. Pure: the supervisor writes it.

use super::crd::EtcdSourceStatus;
use crate::snapshot::Summary;
use crate::writeback::status::{Note, condition, same_conditions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::collections::BTreeMap;

/// What the reconciler knows of one source, for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceReport {
    /// Every prefix's watch is established.
    pub connected: bool,
    /// Every prefix was listed since the source (re)started.
    pub listed: bool,
    /// Unreachable past its staleAfter: its endpoints were removed.
    pub stale: bool,
    pub revision: Option<i64>,
    pub summary: Summary,
    /// The last error reading it, while it is down.
    pub last_error: Option<String>,
}

/// Reports by source name.
pub type Reports = BTreeMap<String, SourceReport>;

/// Each projected namespace's reconciler reports its own sources, by namespace: one cannot
/// overwrite another's, even while a source moves between them.
pub type ReportsByNamespace = BTreeMap<String, Reports>;

/// Every source's report. A source moving between namespaces may be in two for a moment: the
/// one it projects into now wins.
pub fn by_source(all: &ReportsByNamespace, target: impl Fn(&str) -> Option<String>) -> Reports {
    let mut out = Reports::new();
    for (ns, reports) in all {
        for (name, r) in reports {
            if !out.contains_key(name) || target(name).as_deref() == Some(ns) {
                out.insert(name.clone(), r.clone());
            }
        }
    }
    out
}

/// The status of an object of `generation`: not used for `refused` reasons, or as `report` says
/// (`None`: not started yet). Transition times are kept from `previous` where a condition holds.
pub fn status(
    generation: Option<i64>,
    report: Option<&SourceReport>,
    refused: Option<&str>,
    stale_after: Option<&str>,
    previous: &EtcdSourceStatus,
    now: Time,
) -> EtcdSourceStatus {
    let prev = &previous.conditions;
    let c = |type_: &str, status: bool, reason: &str, message: String| {
        condition(
            prev,
            type_,
            status,
            reason,
            message,
            generation,
            now.clone(),
        )
    };
    if let Some(why) = refused {
        return EtcdSourceStatus {
            observed_generation: generation,
            conditions: vec![
                c("Connected", false, "Invalid", why.to_owned()),
                c("Synced", false, "Invalid", "this source is not used".into()),
                c("Stale", false, "Invalid", "this source is not used".into()),
            ],
            last_error: Some(why.to_owned()),
            ..EtcdSourceStatus::default()
        };
    }
    let r = report.cloned().unwrap_or_default();
    let connected = match (report, r.connected) {
        (None, _) => c("Connected", false, "Starting", "not connected yet".into()),
        (_, true) => c(
            "Connected",
            true,
            "Connected",
            "every prefix is watched".into(),
        ),
        (_, false) => c(
            "Connected",
            false,
            "Unreachable",
            (r.last_error.clone()).unwrap_or_else(|| "connecting".into()),
        ),
    };
    let synced = match (r.listed, r.stale) {
        (_, true) => c(
            "Synced",
            false,
            "Stale",
            "its endpoints were removed".into(),
        ),
        (true, false) => c(
            "Synced",
            true,
            "Synced",
            format!("{} keys read", r.summary.keys),
        ),
        (false, false) => c("Synced", false, "NotListed", "not listed yet".into()),
    };
    let stale = match r.stale {
        true => c(
            "Stale",
            true,
            "StaleAfterPassed",
            format!(
                "unreachable for more than staleAfter ({}): its endpoints were removed; they come back when it answers",
                stale_after.unwrap_or("?")
            ),
        ),
        false => c(
            "Stale",
            false,
            "Fresh",
            match stale_after {
                Some(d) => format!("its endpoints are removed after {d} unreachable"),
                None => "no staleAfter: the last state is kept while it is unreachable".into(),
            },
        ),
    };
    EtcdSourceStatus {
        observed_generation: generation,
        conditions: vec![connected, synced, stale],
        revision: r.revision,
        keys: r.summary.keys as i64,
        endpoints: r.summary.endpoints as i64,
        skipped: (r.summary.skipped.iter())
            .map(|(k, v)| ((*k).to_owned(), *v as i64))
            .collect(),
        last_error: (!r.connected).then_some(r.last_error).flatten(),
    }
}

/// `None` when `next` says nothing new (no write); otherwise the Events it is worth: each
/// condition whose status or reason changed, a Warning when it is bad news.
pub fn changes(prev: &EtcdSourceStatus, next: &EtcdSourceStatus) -> Option<Vec<Note>> {
    let same = same_conditions(&prev.conditions, &next.conditions)
        && (
            prev.observed_generation,
            prev.revision,
            prev.keys,
            prev.endpoints,
        ) == (
            next.observed_generation,
            next.revision,
            next.keys,
            next.endpoints,
        )
        && prev.skipped == next.skipped
        && prev.last_error == next.last_error;
    if same {
        return None;
    }
    let notes = (next.conditions.iter())
        .filter(|c| {
            let before = prev.conditions.iter().find(|p| p.type_ == c.type_);
            before.map(|b| (&b.status, &b.reason)) != Some((&c.status, &c.reason))
        })
        // The first report of a healthy source is no news.
        .filter(|c| !matches!(c.reason.as_str(), "Fresh" | "NotListed" | "Starting"))
        .map(|c| Note {
            warning: (c.type_ == "Stale") == (c.status == "True"),
            reason: c.reason.clone(),
            message: c.message.clone(),
        })
        .collect();
    Some(notes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(s: i64) -> Time {
        Time(Timestamp::from_second(s).unwrap())
    }

    fn healthy() -> SourceReport {
        SourceReport {
            connected: true,
            listed: true,
            stale: false,
            revision: Some(42),
            summary: Summary {
                keys: 3,
                endpoints: 2,
                skipped: [("invalid_json", 1)].into(),
            },
            last_error: None,
        }
    }

    fn get<'a>(s: &'a EtcdSourceStatus, t: &str) -> (&'a str, &'a str) {
        let c = s.conditions.iter().find(|c| c.type_ == t).unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn a_healthy_source_is_connected_synced_and_fresh() {
        let s = status(
            Some(3),
            Some(&healthy()),
            None,
            Some("5m"),
            &Default::default(),
            at(1),
        );
        assert_eq!(get(&s, "Connected"), ("True", "Connected"));
        assert_eq!(get(&s, "Synced"), ("True", "Synced"));
        assert_eq!(get(&s, "Stale"), ("False", "Fresh"));
        assert_eq!((s.revision, s.keys, s.endpoints), (Some(42), 3, 2));
        assert_eq!(s.skipped["invalid_json"], 1);
        assert_eq!(s.observed_generation, Some(3));
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
        assert_eq!(s.last_error, None);
        // First write: no Event for a healthy start beyond Connected and Synced.
        let notes = changes(&Default::default(), &s).unwrap();
        let reasons: Vec<&str> = notes.iter().map(|n| n.reason.as_str()).collect();
        assert_eq!(reasons, ["Connected", "Synced"]);
        assert!(notes.iter().all(|n| !n.warning));
        // The same again: nothing to write.
        let again = status(Some(3), Some(&healthy()), None, Some("5m"), &s, at(2));
        assert_eq!(changes(&s, &again), None);
        assert_eq!(again.conditions[0].last_transition_time, at(1));
    }

    #[test]
    fn going_stale_is_a_warning_event_with_the_error() {
        let ok = status(
            Some(1),
            Some(&healthy()),
            None,
            Some("90s"),
            &Default::default(),
            at(1),
        );
        let down = SourceReport {
            connected: false,
            stale: true,
            last_error: Some("etcd at http://e:2379: unreachable".into()),
            ..healthy()
        };
        let s = status(Some(1), Some(&down), None, Some("90s"), &ok, at(2));
        assert_eq!(get(&s, "Connected"), ("False", "Unreachable"));
        assert_eq!(get(&s, "Stale"), ("True", "StaleAfterPassed"));
        assert_eq!(get(&s, "Synced"), ("False", "Stale"));
        assert_eq!(
            s.last_error.as_deref(),
            Some("etcd at http://e:2379: unreachable")
        );
        let notes = changes(&ok, &s).unwrap();
        let stale = notes
            .iter()
            .find(|n| n.reason == "StaleAfterPassed")
            .unwrap();
        assert!(stale.warning && stale.message.contains("90s"), "{stale:?}");
        assert!(notes.iter().any(|n| n.reason == "Unreachable" && n.warning));
        // Back: Normal Events.
        let back = status(Some(1), Some(&healthy()), None, Some("90s"), &s, at(3));
        let notes = changes(&s, &back).unwrap();
        assert!(notes.iter().all(|n| !n.warning), "{notes:?}");
        assert_eq!(back.last_error, None);
    }

    #[test]
    fn a_refused_source_says_why_in_status_and_an_event() {
        let why = "spec.secretRef.name: Secret `etcd-b`: not found in this namespace";
        let s = status(Some(2), None, Some(why), None, &Default::default(), at(1));
        assert_eq!(get(&s, "Connected"), ("False", "Invalid"));
        assert_eq!(s.last_error.as_deref(), Some(why));
        let notes = changes(&Default::default(), &s).unwrap();
        assert!(
            notes
                .iter()
                .any(|n| n.reason == "Invalid" && n.warning && n.message == why)
        );
    }

    #[test]
    fn a_source_moving_between_namespaces_is_reported_from_where_it_goes() {
        let moving = SourceReport {
            listed: false,
            ..healthy()
        };
        let all: ReportsByNamespace = [
            ("eu".to_owned(), [("s".to_owned(), moving.clone())].into()),
            (
                "grpc".to_owned(),
                [
                    ("s".to_owned(), healthy()),
                    ("default".to_owned(), healthy()),
                ]
                .into(),
            ),
        ]
        .into();
        let now_in = |ns: &'static str| move |n: &str| (n == "s").then(|| ns.to_owned());
        let r = by_source(&all, now_in("eu"));
        assert_eq!(r.len(), 2);
        assert_eq!(r["s"], moving);
        assert_eq!(by_source(&all, now_in("grpc"))["s"], healthy());
    }
}
