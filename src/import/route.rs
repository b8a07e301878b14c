//! Which namespace's reconciler an etcd update goes to. Each source projects into one namespace
//! (its `targetNamespace`), and each projected namespace has a reconciler of its own (its own
//! cluster view, names in use and mass-deletion guard). [`Router`] is pure; [`fan_out`] carries it out.

use crate::etcd::Update;
use std::collections::BTreeMap;
use tokio::sync::mpsc;

/// Where each source's updates go.
#[derive(Debug, Clone)]
pub struct Router {
    /// Every projected namespace, `--namespace` first.
    namespaces: Vec<String>,
    /// The namespace of each source known.
    owner: BTreeMap<String, String>,
}

impl Router {
    /// `known`: the sources the reconcilers start with (the flags' own), and their namespace.
    pub fn new(namespaces: Vec<String>, known: impl IntoIterator<Item = (String, String)>) -> Self {
        Router {
            namespaces,
            owner: known.into_iter().collect(),
        }
    }

    /// The (namespace, update) pairs `u` becomes, in the order to send them.
    /// - A source new or changed goes to its namespace; if it moved, the namespace it left hears
    ///   that it is gone first (its Services there go, through that namespace's guard).
    /// - "Every source listed" concerns every namespace.
    /// - Anything else goes where its source is; an update of a source no one holds is dropped
    ///   (the supervisor stops a source's watchers before saying it is gone).
    pub fn route(&mut self, u: Update) -> Vec<(String, Update)> {
        match u {
            Update::Source(config) => {
                let to = config.target_namespace.clone();
                let mut out = Vec::with_capacity(2);
                match self.owner.insert(config.name.clone(), to.clone()) {
                    Some(from) if from != to => {
                        out.push((from, Update::SourceGone(config.name.clone())))
                    }
                    _ => {}
                }
                out.push((to, Update::Source(config)));
                out
            }
            Update::SourceGone(name) => match self.owner.remove(&name) {
                Some(ns) => vec![(ns, Update::SourceGone(name))],
                None => Vec::new(),
            },
            Update::SourcesListed => (self.namespaces.iter())
                .map(|ns| (ns.clone(), Update::SourcesListed))
                .collect(),
            Update::Listed { ref source, .. }
            | Update::Events { ref source, .. }
            | Update::Connected { ref source, .. } => match self.owner.get(source) {
                Some(ns) => vec![(ns.clone(), u)],
                None => Vec::new(),
            },
        }
    }
}

/// Sends each update where the router says, until `rx` closes (every watcher and the
/// supervisor stopped) or every reconciler is gone.
pub async fn fan_out(
    mut router: Router,
    mut rx: mpsc::Receiver<Update>,
    to: BTreeMap<String, mpsc::Sender<Update>>,
) {
    while let Some(u) = rx.recv().await {
        for (ns, u) in router.route(u) {
            let Some(tx) = to.get(&ns) else {
                // Resolution refuses a targetNamespace the bridge does not project into.
                tracing::error!(namespace = %ns, "an update for a namespace this bridge does not project into: dropped");
                continue;
            };
            if tx.send(u).await.is_err() {
                return; // the reconcilers are gone: the bridge is stopping
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(name: &str, ns: &str) -> Update {
        Update::Source(Box::new(crate::source::spec::for_tests(name, "/s/", ns)))
    }

    fn connected(name: &str) -> Update {
        Update::Connected {
            source: name.into(),
            prefix: "/s/".into(),
            up: true,
            error: None,
        }
    }

    /// The namespaces and a short name of each update, for comparison.
    fn shape(routed: Vec<(String, Update)>) -> Vec<(String, String)> {
        (routed.into_iter())
            .map(|(ns, u)| {
                let what = match u {
                    Update::Source(c) => format!("source {}", c.name),
                    Update::SourceGone(n) => format!("gone {n}"),
                    Update::SourcesListed => "listed all".into(),
                    Update::Connected { source, .. } => format!("connected {source}"),
                    Update::Listed { source, .. } => format!("listed {source}"),
                    Update::Events { source, .. } => format!("events {source}"),
                };
                (ns, what)
            })
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn router() -> Router {
        Router::new(
            vec!["grpc".into(), "eu".into()],
            [("default".to_owned(), "grpc".to_owned())],
        )
    }

    #[test]
    fn each_source_s_updates_go_to_its_namespace() {
        let mut r = router();
        assert_eq!(
            shape(r.route(connected("default"))),
            pairs(&[("grpc", "connected default")])
        );
        assert_eq!(
            shape(r.route(source("eu-etcd", "eu"))),
            pairs(&[("eu", "source eu-etcd")])
        );
        assert_eq!(
            shape(r.route(connected("eu-etcd"))),
            pairs(&[("eu", "connected eu-etcd")])
        );
        assert_eq!(
            shape(r.route(Update::SourcesListed)),
            pairs(&[("grpc", "listed all"), ("eu", "listed all")]),
            "every namespace learns that every source is known"
        );
    }

    #[test]
    fn a_source_that_moves_is_gone_from_where_it_was_before_it_arrives() {
        let mut r = router();
        r.route(source("s", "grpc"));
        assert_eq!(
            shape(r.route(source("s", "eu"))),
            pairs(&[("grpc", "gone s"), ("eu", "source s")])
        );
        assert_eq!(
            shape(r.route(source("s", "eu"))),
            pairs(&[("eu", "source s")]),
            "a change that keeps the namespace is only a change"
        );
        assert_eq!(
            shape(r.route(connected("s"))),
            pairs(&[("eu", "connected s")])
        );
    }

    #[test]
    fn a_gone_source_is_forgotten_and_its_late_updates_dropped() {
        let mut r = router();
        r.route(source("s", "eu"));
        assert_eq!(
            shape(r.route(Update::SourceGone("s".into()))),
            pairs(&[("eu", "gone s")])
        );
        assert!(r.route(connected("s")).is_empty());
        assert!(
            r.route(Update::SourceGone("s".into())).is_empty(),
            "no one holds it any more"
        );
    }
}
