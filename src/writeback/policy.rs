//! Which namespaces may publish which service names into etcd: `NS_GLOB:SERVICE_GLOB` rules,
//! `*` and `?` wildcards. An object is allowed when any rule matches; the default `*:*` allows all.

use crate::error::{Error, Result};
use crate::glob::glob;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    rules: Vec<(String, String)>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: vec![("*".into(), "*".into())],
        }
    }
}

impl Policy {
    /// Parses `ns:svc,ns:svc`.
    pub fn parse(rules: &[String]) -> Result<Policy> {
        let rules = rules
            .iter()
            .map(|r| {
                let (ns, svc) = r.split_once(':').ok_or_else(|| {
                    Error::Config(format!(
                        "--writeback-policy rule `{r}` is not NAMESPACE_GLOB:SERVICE_GLOB (e.g. `team-*:team-*` or `*:*`)"
                    ))
                })?;
                if ns.is_empty() || svc.is_empty() {
                    return Err(Error::Config(format!(
                        "--writeback-policy rule `{r}` has an empty side; use `*` to match everything"
                    )));
                }
                Ok((ns.to_string(), svc.to_string()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Policy { rules })
    }

    pub fn allows(&self, namespace: &str, service: &str) -> bool {
        self.rules
            .iter()
            .any(|(ns, svc)| glob(ns, namespace) && glob(svc, service))
    }

    /// The rules, for messages.
    pub fn describe(&self) -> String {
        self.rules
            .iter()
            .map(|(n, s)| format!("{n}:{s}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("team-*", "team-a"));
        assert!(!glob("team-*", "teams"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*-v*", "greeter-v2"));
        assert!(!glob("greeter", "greeter2"));
    }

    #[test]
    fn default_allows_all_and_rules_restrict() {
        assert!(Policy::default().allows("any", "thing"));
        let p = Policy::parse(&["payments:pay-*".into(), "team-*:team-*".into()]).unwrap();
        assert!(p.allows("payments", "pay-api"));
        assert!(!p.allows("payments", "greeter"));
        assert!(p.allows("team-a", "team-x"));
        assert!(!p.allows("default", "pay-api"));
        assert!(Policy::parse(&["nocolon".into()]).is_err());
        assert!(Policy::parse(&[":x".into()]).is_err());
    }
}
