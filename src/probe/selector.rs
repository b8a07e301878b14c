//! Which registrations are probed: those under a source prefix named in `--probe`, those of a
//! source named there (`source:NAME`: an EtcdSource, or `default` for the flags' registry,
//! whose prefixes are not known when the bridge starts), or of a service whose registered name
//! matches a glob there. Off by default (nothing named).

use crate::error::{Error, Result};
use crate::glob::glob;
use crate::target::Target;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Source prefixes (each one of the `--prefix` values): every service under them.
    prefixes: Vec<String>,
    /// Globs (`*`, `?`) on the registered service name.
    globs: Vec<String>,
    /// Sources (`source:NAME`): every service of that registry.
    sources: Vec<String>,
}

impl Selector {
    /// From the `--probe` entries: one ending with `/` is a source prefix and must be one of
    /// `sources` (the watched prefixes); anything else is a glob on the service name.
    pub fn parse(entries: &[String], sources: &[&str]) -> Result<Selector> {
        let mut s = Selector::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Some(name) = e.strip_prefix("source:") {
                if name.is_empty() || name.contains('/') {
                    return Err(Error::Config(format!(
                        "--probe `{e}` names no source: write `source:NAME` with the name of an EtcdSource, or `source:default` for the registry of the flags"
                    )));
                }
                s.sources.push(name.to_owned());
            } else if e.ends_with('/') {
                if !sources.contains(&e) {
                    return Err(Error::Config(format!(
                        "--probe `{e}` ends with `/`, so it names a source prefix, but it is not one of the watched prefixes ({}); name a watched prefix, or a service-name glob such as `greeter*`",
                        sources.join(", ")
                    )));
                }
                s.prefixes.push(e.to_owned());
            } else {
                s.globs.push(e.to_owned());
            }
        }
        Ok(s)
    }

    /// Whether anything is probed at all.
    pub fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.globs.is_empty() && self.sources.is_empty()
    }

    /// Whether the endpoints of `target` are probed. A version's Service and the aggregate of
    /// the same name are probed alike.
    pub fn matches(&self, target: &Target) -> bool {
        self.prefixes.contains(&target.prefix)
            || self.sources.contains(&target.source)
            || self.globs.iter().any(|g| glob(g, &target.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(prefix: &str, name: &str) -> Target {
        Target {
            source: "default".into(),
            prefix: prefix.into(),
            name: name.into(),
            version: None,
        }
    }

    fn sel(entries: &[&str]) -> Result<Selector> {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        Selector::parse(&entries, &["/services/", "kitex/registry-etcd/"])
    }

    #[test]
    fn off_unless_named() {
        let s = sel(&[]).unwrap();
        assert!(s.is_empty());
        assert!(!s.matches(&target("/services/", "greeter")));
        assert!(sel(&[" ", ""]).unwrap().is_empty());
    }

    #[test]
    fn by_prefix_or_by_name() {
        let s = sel(&["kitex/registry-etcd/", "pay*", "a?c"]).unwrap();
        assert!(s.matches(&target("kitex/registry-etcd/", "echo")));
        assert!(s.matches(&target("/services/", "payments")));
        assert!(s.matches(&Target {
            version: Some("v1".into()),
            ..target("/services/", "abc")
        }));
        assert!(!s.matches(&target("/services/", "greeter")));
        assert!(!s.matches(&target("/services/", "abbc")));
        assert!(sel(&["*"]).unwrap().matches(&target("/services/", "x")));
    }

    #[test]
    fn by_source_name() {
        let s = sel(&["source:eu"]).unwrap();
        let eu = Target {
            source: "eu".into(),
            ..target("/other/", "greeter")
        };
        assert!(s.matches(&eu));
        assert!(!s.matches(&target("/services/", "greeter")), "default");
        assert!(
            sel(&["source:default"])
                .unwrap()
                .matches(&target("/services/", "x"))
        );
        for bad in ["source:", "source:/services/"] {
            let e = sel(&[bad]).unwrap_err().to_string();
            assert!(e.contains("source:NAME"), "{e}");
        }
    }

    #[test]
    fn a_prefix_must_be_watched() {
        let e = sel(&["/other/"]).unwrap_err().to_string();
        assert!(e.contains("/other/") && e.contains("/services/"), "{e}");
    }
}
