//! Where an EtcdRegistration is written: the bridge's own etcd under `--writeback-prefix`, or the
//! etcd and `writebackPrefix` of the EtcdSource its `spec.source` names. Pure: the source
//! supervisor says which registries exist, this decides where each object goes.

use crate::source::spec::{Connection, DEFAULT_SOURCE, SourceConfig, SourceName};
use std::collections::{BTreeMap, BTreeSet};

/// One registry write-back may write to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub source: SourceName,
    pub connection: Connection,
    /// Keys go under it: `{prefix}{service}[/{version}]/{addr}`.
    pub prefix: String,
}

/// What the bridge knows of the registries it may write back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registries {
    /// The bridge reads EtcdSource objects (`--sources`).
    pub sources: bool,
    /// Those objects have been listed (until then, a source not seen is not known to be absent).
    pub listed: bool,
    /// By source name, those with a write-back prefix (`default`: the flags').
    pub writable: BTreeMap<SourceName, Destination>,
    /// The sources that exist but take no write-back, and why.
    pub not_writable: BTreeMap<SourceName, String>,
}

impl Registries {
    /// The flags' registry alone, as without `--sources`. `listed`: no objects are awaited.
    pub fn flags_only(default: &SourceConfig) -> Self {
        Registries {
            sources: false,
            listed: true,
            ..Self::from_sources(std::slice::from_ref(default), &BTreeMap::new())
        }
    }

    /// The flags' registry, while the EtcdSource objects are not listed yet.
    pub fn awaiting_sources(default: &SourceConfig) -> Self {
        Registries {
            listed: false,
            ..Self::from_sources(std::slice::from_ref(default), &BTreeMap::new())
        }
    }

    /// Every valid source (`kept`, the flags' one among them) and the refused ones with why.
    pub fn from_sources(kept: &[SourceConfig], refused: &BTreeMap<SourceName, String>) -> Self {
        let mut writable = BTreeMap::new();
        let mut not_writable = refused.clone();
        for c in kept {
            match &c.writeback_prefix {
                Some(prefix) => {
                    let d = Destination {
                        source: c.name.clone(),
                        connection: c.connection.clone(),
                        prefix: prefix.clone(),
                    };
                    writable.insert(c.name.clone(), d);
                }
                None => {
                    not_writable.insert(
                        c.name.clone(),
                        "it has no spec.writebackPrefix: set one to write back to it".into(),
                    );
                }
            }
        }
        Registries {
            sources: true,
            listed: true,
            writable,
            not_writable,
        }
    }
}

/// Where one object's keys go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice<'a> {
    Write(&'a Destination),
    /// Not known yet (the EtcdSource objects are not listed): write nothing, remove nothing.
    Wait(String),
    /// Nowhere: nothing is written, and the keys written before are taken back. (reason, message)
    Refuse(&'static str, String),
}

/// The destination of an object whose `spec.source` is `named` (absent: the flags' registry).
/// `namespace`: the bridge's, where EtcdSource objects live.
pub fn choose<'a>(named: Option<&str>, r: &'a Registries, namespace: &str) -> Choice<'a> {
    let name = named.unwrap_or(DEFAULT_SOURCE);
    if let Some(d) = r.writable.get(name) {
        return Choice::Write(d);
    }
    if name != DEFAULT_SOURCE && !r.sources {
        return Choice::Refuse(
            "SourceNotFound",
            format!(
                "spec.source names `{name}`, but this bridge reads no EtcdSource objects (--sources=false; chart: sources.enabled); remove spec.source to write to the bridge's own etcd"
            ),
        );
    }
    if let Some(why) = r.not_writable.get(name) {
        return Choice::Refuse(
            "SourceNotWritable",
            format!("EtcdSource `{name}` takes no write-back: {why}"),
        );
    }
    if !r.listed {
        return Choice::Wait(format!(
            "the EtcdSource objects are not listed yet; `{name}` may be among them"
        ));
    }
    if name == DEFAULT_SOURCE {
        // Only reachable when the flags' registry takes no write-back, which runs no controller.
        return Choice::Refuse(
            "SourceNotWritable",
            "the bridge's own etcd takes no write-back (--writeback=false)".into(),
        );
    }
    Choice::Refuse(
        "SourceNotFound",
        format!(
            "no EtcdSource `{name}` in namespace `{namespace}`; create it, or remove spec.source to write to the bridge's own etcd"
        ),
    )
}

/// Where keys written before are, for taking them back (a move, a deletion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held<'a> {
    /// In a registry that is connected or can be: delete them there.
    In(&'a Destination),
    /// In a registry that is gone or refused: nothing keeps its leases alive any more, so the
    /// keys leave etcd within the lease TTL.
    Lapsing,
    /// In a registry not known yet (the EtcdSource objects are not listed): not known to be
    /// gone either, so wait; taking nothing back now would leave them on a live lease.
    Unknown,
}

/// Where the keys of a registry named `name` are (see [`holding`]).
pub fn held<'a>(r: &'a Registries, name: &str) -> Held<'a> {
    match r.writable.get(name) {
        Some(d) => Held::In(d),
        None if r.listed => Held::Lapsing,
        None => Held::Unknown,
    }
}

/// Which objects a change of the registries concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// Every object: the EtcdSource objects were just listed, so the objects that waited for a
    /// source not seen yet (their names are in the objects only) now learn where they go.
    All,
    /// Those that name one of these registries, or whose keys are in one: it came, went,
    /// changed (its etcd, credentials or prefix), or is refused for another reason.
    Sources(BTreeSet<SourceName>),
}

/// What changed from `before` to `now`; `None` when nothing write-back cares about did.
pub fn changed(before: &Registries, now: &Registries) -> Option<Changed> {
    if before.listed != now.listed {
        return Some(Changed::All);
    }
    let entry = |r: &Registries, name: &str| {
        (
            r.writable.get(name).cloned(),
            r.not_writable.get(name).cloned(),
        )
    };
    let names: BTreeSet<SourceName> = [before, now]
        .iter()
        .flat_map(|r| r.writable.keys().chain(r.not_writable.keys()))
        .filter(|n| entry(before, n) != entry(now, n))
        .cloned()
        .collect();
    (!names.is_empty()).then_some(Changed::Sources(names))
}

/// The registry that holds the keys an object's status lists (statuses written before
/// `status.source` existed hold the flags' registry's).
pub fn holding(status_source: Option<&str>) -> &str {
    status_source.unwrap_or(DEFAULT_SOURCE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::spec::for_tests;

    fn config(name: &str, writeback: Option<&str>) -> SourceConfig {
        SourceConfig {
            writeback_prefix: writeback.map(str::to_owned),
            ..for_tests(name, "/services/", "bridge")
        }
    }

    fn registries() -> Registries {
        let refused = BTreeMap::from([("broken".to_string(), "spec.endpoints: bad".to_string())]);
        Registries::from_sources(
            &[
                config(DEFAULT_SOURCE, Some("/services/")),
                config("east", Some("/wb-east/")),
                config("readonly", None),
            ],
            &refused,
        )
    }

    #[test]
    fn no_source_named_writes_to_the_flags_registry() {
        let r = registries();
        let Choice::Write(d) = choose(None, &r, "bridge") else {
            panic!("the flags' registry")
        };
        assert_eq!(
            (d.source.as_str(), d.prefix.as_str()),
            ("default", "/services/")
        );
        assert_eq!(choose(Some("default"), &r, "bridge"), Choice::Write(d));
    }

    #[test]
    fn a_named_source_writes_to_its_etcd_under_its_writeback_prefix() {
        let r = registries();
        let Choice::Write(d) = choose(Some("east"), &r, "bridge") else {
            panic!("east")
        };
        assert_eq!(d.prefix, "/wb-east/");
        assert_eq!(d.connection.endpoints, vec!["http://east:2379".to_string()]);
    }

    #[test]
    fn a_source_without_writeback_prefix_or_refused_is_refused_with_why() {
        let r = registries();
        let Choice::Refuse(reason, msg) = choose(Some("readonly"), &r, "bridge") else {
            panic!("refused")
        };
        assert_eq!(reason, "SourceNotWritable");
        assert!(msg.contains("spec.writebackPrefix"), "{msg}");
        let Choice::Refuse(reason, msg) = choose(Some("broken"), &r, "bridge") else {
            panic!("refused")
        };
        assert_eq!(reason, "SourceNotWritable");
        assert!(msg.contains("spec.endpoints: bad"), "{msg}");
    }

    #[test]
    fn an_unknown_source_waits_until_the_sources_are_listed_then_is_refused() {
        let default = config(DEFAULT_SOURCE, Some("/services/"));
        let waiting = Registries::awaiting_sources(&default);
        assert!(matches!(
            choose(Some("west"), &waiting, "bridge"),
            Choice::Wait(_)
        ));
        // The flags' registry never waits for the objects.
        assert!(matches!(choose(None, &waiting, "bridge"), Choice::Write(_)));
        let Choice::Refuse(reason, msg) = choose(Some("west"), &registries(), "bridge") else {
            panic!("refused once listed")
        };
        assert_eq!(reason, "SourceNotFound");
        assert!(
            msg.contains("no EtcdSource `west` in namespace `bridge`"),
            "{msg}"
        );
    }

    #[test]
    fn without_sources_only_the_flags_registry_exists() {
        let r = Registries::flags_only(&config(DEFAULT_SOURCE, Some("/services/")));
        assert!(matches!(choose(None, &r, "bridge"), Choice::Write(_)));
        let Choice::Refuse(reason, msg) = choose(Some("east"), &r, "bridge") else {
            panic!("refused")
        };
        assert_eq!(reason, "SourceNotFound");
        assert!(msg.contains("--sources=false"), "{msg}");
    }

    #[test]
    fn a_change_names_the_registries_it_touches_and_listing_concerns_everyone() {
        let default = config(DEFAULT_SOURCE, Some("/services/"));
        let waiting = Registries::awaiting_sources(&default);
        let listed = registries();
        assert_eq!(changed(&waiting, &listed), Some(Changed::All));
        assert_eq!(changed(&listed, &listed.clone()), None);
        // east moves to another prefix, readonly gains one, broken is fixed without one, a new
        // source comes: each is named, the others are not.
        let refused = BTreeMap::new();
        let now = Registries::from_sources(
            &[
                default.clone(),
                config("east", Some("/wb-east-2/")),
                config("readonly", Some("/ro/")),
                config("broken", None),
                config("west", Some("/west/")),
            ],
            &refused,
        );
        let names = ["broken", "east", "readonly", "west"].map(String::from);
        assert_eq!(
            changed(&listed, &now),
            Some(Changed::Sources(BTreeSet::from(names)))
        );
        // Gone: named too.
        let gone = Registries::from_sources(std::slice::from_ref(&default), &refused);
        let Some(Changed::Sources(names)) = changed(&listed, &gone) else {
            panic!("the sources that went")
        };
        assert_eq!(
            names,
            BTreeSet::from(["broken", "east", "readonly"].map(String::from))
        );
    }

    #[test]
    fn keys_are_taken_back_where_they_are_and_waited_for_while_unknown() {
        let listed = registries();
        assert!(matches!(held(&listed, "east"), Held::In(d) if d.prefix == "/wb-east/"));
        assert_eq!(held(&listed, "gone"), Held::Lapsing);
        assert_eq!(held(&listed, "readonly"), Held::Lapsing);
        let waiting = Registries::awaiting_sources(&config(DEFAULT_SOURCE, Some("/services/")));
        assert_eq!(held(&waiting, "east"), Held::Unknown);
        assert!(matches!(held(&waiting, "default"), Held::In(_)));
    }

    #[test]
    fn keys_without_a_recorded_source_are_in_the_flags_registry() {
        assert_eq!(holding(None), "default");
        assert_eq!(holding(Some("east")), "east");
    }
}
