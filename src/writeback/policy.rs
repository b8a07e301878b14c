//! Which namespaces may publish which service names into etcd: `NS_GLOB:SERVICE_GLOB` rules,
//! `*` and `?` wildcards. An object is allowed when any rule matches; the default `*:*` allows all.

use crate::error::{Error, Result};

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

/// `*` matches any run of characters, `?` one character; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Iterative matching with one backtrack point for the last `*`: linear in practice.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
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
