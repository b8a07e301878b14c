//! Targets: what a gRPC client's Resolver can be built for, and so what gets a Service.
//!
//! A Resolver for (name, version) watches `{prefix}{name}/{version}/`; one for (name, "") watches
//! `{prefix}{name}/`, which holds every version plus the unversioned keys. Each Resolver target
//! becomes one Service holding exactly the endpoints that Resolver would see.

use crate::format::Registration;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The registry it is read from (first: each source's targets sort together).
    pub source: String,
    pub prefix: String,
    pub name: String,
    /// `None`: the aggregate `{name}` (all versions and unversioned keys); `Some(v)`: `{name}-{v}`.
    pub version: Option<String>,
}

impl Target {
    /// The prefix the matching Resolver watches.
    pub fn key_prefix(&self) -> String {
        match &self.version {
            None => format!("{}{}/", self.prefix, self.name),
            Some(version) => format!("{}{}/{}/", self.prefix, self.name, version),
        }
    }

    /// The name before DNS sanitising: `name`, or `name-version`.
    pub fn raw_name(&self) -> String {
        match &self.version {
            None => self.name.clone(),
            Some(version) => format!("{}-{}", self.name, version),
        }
    }
}

/// The targets `reg` belongs to: its version's target (unversioned registrations have none), and
/// the aggregate when aggregates are projected.
pub fn targets_of<'a>(
    source: &'a str,
    prefix: &'a str,
    reg: &'a Registration,
    aggregate: bool,
) -> impl Iterator<Item = Target> {
    let target = move |version: Option<String>| Target {
        source: source.to_owned(),
        prefix: prefix.to_owned(),
        name: reg.name.clone(),
        version,
    };
    let versioned = (!reg.version.is_empty()).then(|| target(Some(reg.version.clone())));
    let aggregate = aggregate.then(|| target(None));
    versioned.into_iter().chain(aggregate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(version: &str) -> Registration {
        Registration {
            name: "greeter".into(),
            version: version.into(),
            addr: "10.0.0.1:80".parse().unwrap(),
            weight: 0,
        }
    }

    fn target(version: Option<&str>) -> Target {
        Target {
            source: "default".into(),
            prefix: "/".into(),
            name: "greeter".into(),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn versioned_registration_belongs_to_its_version_and_the_aggregate() {
        let r = reg("v1");
        let all: Vec<_> = targets_of("default", "/", &r, true).collect();
        assert_eq!(all, vec![target(Some("v1")), target(None)]);
        let only: Vec<_> = targets_of("default", "/", &r, false).collect();
        assert_eq!(only, vec![target(Some("v1"))]);
    }

    #[test]
    fn unversioned_registration_belongs_only_to_the_aggregate() {
        let r = reg("");
        assert_eq!(
            targets_of("default", "/", &r, true).collect::<Vec<_>>(),
            vec![target(None)]
        );
        assert_eq!(targets_of("default", "/", &r, false).count(), 0);
    }

    #[test]
    fn key_prefix_and_raw_name() {
        assert_eq!(target(None).key_prefix(), "/greeter/");
        assert_eq!(target(Some("v1")).key_prefix(), "/greeter/v1/");
        assert_eq!(target(None).raw_name(), "greeter");
        assert_eq!(target(Some("v1")).raw_name(), "greeter-v1");
    }

    #[test]
    fn key_prefix_matches_the_registration_keys() {
        use crate::format::seed::reg_key;
        for r in [reg("v1"), reg("")] {
            let key = reg_key("/reg/", &r.name, &r.version, "10.0.0.1:80");
            for t in targets_of("default", "/reg/", &r, true) {
                assert!(key.starts_with(&t.key_prefix()), "{key} {t:?}");
            }
        }
        // The aggregate of "greeter" does not see "greeter2".
        assert!(
            !reg_key("/", "greeter2", "", "10.0.0.1:80").starts_with(&target(None).key_prefix())
        );
    }
}
