//! What a source is, resolved: the flags' `default` source, or an `EtcdSource` object with its
//! Secret's data, checked and turned into one [`SourceConfig`]. Pure: the shell reads the object
//! and the Secret, this decides. Every problem names the field it is in, so that a source's
//! status can say exactly what to fix.

use super::crd::EtcdSourceSpec;
use crate::config::{EtcdArgs, ProjectionArgs, WritebackArgs};
use crate::format::Format;
use crate::snapshot::Source as Prefix;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The name of a source: the `etcd-bridge.io/source` label of everything projected from it.
pub type SourceName = String;

/// The source the command-line flags define.
pub const DEFAULT_SOURCE: &str = "default";

/// The Secret keys a source's credentials are read from (those of `kubernetes.io/tls`, plus
/// `kubernetes.io/basic-auth`'s).
pub const SECRET_CA: &str = "ca.crt";
pub const SECRET_CERT: &str = "tls.crt";
pub const SECRET_KEY: &str = "tls.key";
pub const SECRET_USERNAME: &str = "username";
pub const SECRET_PASSWORD: &str = "password";

/// PEM material: a file, read again at each connection (the flags: a rotated file is picked
/// up), or bytes from a Secret (a changed Secret changes the source, which reconnects).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl Pem {
    pub fn read(&self) -> crate::error::Result<Vec<u8>> {
        match self {
            Pem::Inline(b) => Ok(b.clone()),
            Pem::File(path) => std::fs::read(path).map_err(|source| crate::error::Error::Io {
                context: format!("read {}", path.display()),
                source,
            }),
        }
    }
}

impl fmt::Debug for Pem {
    // Never print key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            Pem::Inline(b) => write!(f, "Inline({} bytes)", b.len()),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

/// How to reach one etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub endpoints: Vec<String>,
    pub credentials: Option<Credentials>,
    /// CA of etcd's serving certificate.
    pub ca: Option<Pem>,
    /// Client certificate and key.
    pub identity: Option<(Pem, Pem)>,
    pub timeout: Duration,
}

impl Connection {
    pub fn tls(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

/// One registry, everything its import needs: the same whether the flags or an `EtcdSource`
/// defined it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceConfig {
    pub name: SourceName,
    pub connection: Connection,
    pub prefixes: Vec<Prefix>,
    pub target_namespace: String,
    /// Put before each projected name, before it is made a DNS label (`""`: none).
    pub name_prefix: String,
    pub writeback_prefix: Option<String>,
    /// Unreachable this long: the source's endpoints are removed. `None`: kept for ever.
    pub stale_after: Option<Duration>,
}

/// One thing wrong with a source, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The field, as `kubectl explain` names it: `spec.prefixes[1].format`.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem of a source, as one line for its status and log.
pub fn describe(problems: &[Invalid]) -> String {
    let all: Vec<String> = problems.iter().map(Invalid::to_string).collect();
    all.join("; ")
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The Secret a source names, as the shell found it.
#[derive(Debug, Clone, Copy)]
pub enum Secret<'a> {
    /// The source names none.
    NotNamed,
    /// Its data.
    Data(&'a BTreeMap<String, Vec<u8>>),
    /// It could not be read: not found, or not granted (the message says which).
    Unreadable(&'a str),
}

/// What resolution needs from the bridge itself.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    /// `--namespace`: where the bridge projects a source that names no `targetNamespace`.
    pub namespace: &'a str,
    /// Every namespace the bridge projects into (`--namespace` and `--target-namespaces`).
    pub namespaces: &'a [String],
    /// `--etcd-timeout`, for every source.
    pub timeout: Duration,
    /// Names no object may take (`default`, held by the flags' source).
    pub reserved: &'a [&'a str],
}

/// The source the flags define: what every install had before `EtcdSource` existed.
pub fn from_flags(
    etcd: &EtcdArgs,
    projection: &ProjectionArgs,
    writeback: &WritebackArgs,
) -> SourceConfig {
    SourceConfig {
        writeback_prefix: writeback.enabled.then(|| writeback.prefix.clone()),
        ..from_etcd_flags(etcd, projection)
    }
}

/// The flags' source without write-back (what `preview` reads).
pub fn from_etcd_flags(etcd: &EtcdArgs, projection: &ProjectionArgs) -> SourceConfig {
    SourceConfig {
        name: DEFAULT_SOURCE.into(),
        connection: etcd.connection(),
        prefixes: etcd.prefixes.clone(),
        target_namespace: projection.namespace.clone(),
        name_prefix: String::new(),
        writeback_prefix: None,
        stale_after: etcd.stale_after.filter(|d| !d.is_zero()),
    }
}

/// Resolves the `EtcdSource` named `name` (and its Secret) into its config, or every problem
/// found, each naming its field.
pub fn resolve(
    name: &str,
    spec: &EtcdSourceSpec,
    secret: Secret<'_>,
    ctx: &Context<'_>,
) -> Result<SourceConfig, Vec<Invalid>> {
    let mut problems = Vec::new();
    if !is_label_value(name) {
        problems.push(invalid(
            "metadata.name",
            format!("`{name}` becomes the label value etcd-bridge.io/source: at most 63 letters, digits, `-`, `_` or `.`"),
        ));
    }
    if ctx.reserved.contains(&name) {
        problems.push(invalid(
            "metadata.name",
            format!("`{name}` is the source the bridge's flags define; give this one another name"),
        ));
    }
    let endpoints = endpoints(spec, &mut problems);
    let (credentials, ca, identity) = credentials(spec, secret, &mut problems);
    if (ca.is_some() || identity.is_some())
        && let Some(plain) = endpoints.iter().find(|e| e.starts_with("http://"))
    {
        problems.push(invalid(
            "spec.endpoints",
            format!("the Secret holds TLS material but `{plain}` is http://: write it as https://"),
        ));
    }
    let prefixes = prefixes(spec, &mut problems);
    let target_namespace = match &spec.target_namespace {
        None => ctx.namespace.to_owned(),
        Some(ns) if ns == ctx.namespace || ctx.namespaces.contains(ns) => ns.clone(),
        // The bridge holds a cluster view and a Role only where it was told to project.
        Some(ns) => {
            problems.push(invalid(
                "spec.targetNamespace",
                format!(
                    "`{ns}`: this bridge projects into `{}` only; add `{ns}` to --target-namespaces (chart: targetNamespaces), or leave it out for --namespace `{}`",
                    ctx.namespaces.join("`, `"),
                    ctx.namespace
                ),
            ));
            ns.clone()
        }
    };
    let name_prefix = spec.name_prefix.clone().unwrap_or_default();
    let prefix_ok = name_prefix.len() <= 30
        && (name_prefix.is_empty()
            || (name_prefix.starts_with(|c: char| c.is_ascii_lowercase())
                && name_prefix
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')));
    if !prefix_ok {
        problems.push(invalid(
            "spec.namePrefix",
            format!("`{name_prefix}`: at most 30 lowercase letters, digits and `-`, starting with a letter"),
        ));
    }
    if let Some(p) = &spec.writeback_prefix
        && !(p.starts_with('/') && p.ends_with('/'))
    {
        problems.push(invalid(
            "spec.writebackPrefix",
            format!("`{p}` must start and end with `/`"),
        ));
    }
    let stale_after = match spec.stale_after.as_deref().map(crate::config::humantime) {
        None => None,
        Some(Ok(d)) if !d.is_zero() => Some(d),
        Some(Ok(_)) => {
            problems.push(invalid(
                "spec.staleAfter",
                "0 would remove the endpoints at the first hiccup; leave it out to keep them for ever",
            ));
            None
        }
        Some(Err(e)) => {
            problems.push(invalid("spec.staleAfter", e));
            None
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(SourceConfig {
        name: name.to_owned(),
        connection: Connection {
            endpoints,
            credentials,
            ca,
            identity,
            timeout: ctx.timeout,
        },
        prefixes,
        target_namespace,
        name_prefix,
        writeback_prefix: spec.writeback_prefix.clone(),
        stale_after,
    })
}

/// A valid source named `name` reading `prefix` from `http://{name}:2379` into `namespace`.
#[cfg(test)]
pub(crate) fn for_tests(name: &str, prefix: &str, namespace: &str) -> SourceConfig {
    let s: EtcdSourceSpec = serde_json::from_value(serde_json::json!({
        "endpoints": [format!("http://{name}:2379")],
        "prefixes": [{"prefix": prefix}],
        "targetNamespace": namespace,
    }))
    .unwrap();
    let ctx = Context {
        namespace,
        namespaces: &[],
        timeout: Duration::from_secs(1),
        reserved: &[],
    };
    resolve(name, &s, Secret::NotNamed, &ctx).unwrap()
}

fn is_label_value(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn endpoints(spec: &EtcdSourceSpec, problems: &mut Vec<Invalid>) -> Vec<String> {
    if spec.endpoints.is_empty() {
        problems.push(invalid("spec.endpoints", "give at least one etcd URL"));
    }
    let mut out = Vec::new();
    for (i, e) in spec.endpoints.iter().enumerate() {
        match check_url(&e.0) {
            Ok(()) => out.push(e.0.clone()),
            Err(why) => problems.push(invalid(format!("spec.endpoints[{i}]"), why)),
        }
    }
    out
}

/// An etcd client URL: `http(s)://host:port`, nothing after the authority.
fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL ({e}); write e.g. https://etcd-0.etcd:2379"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("`{url}`: the scheme must be http:// or https://"));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{url}`: an etcd endpoint has no path or query, only scheme, host and port"
        ));
    }
    Ok(())
}

type Creds = (Option<Credentials>, Option<Pem>, Option<(Pem, Pem)>);

fn credentials(spec: &EtcdSourceSpec, secret: Secret<'_>, problems: &mut Vec<Invalid>) -> Creds {
    let name = spec.secret_ref.as_ref().map(|r| r.name.as_str());
    let data = match (name, secret) {
        (None, _) => return (None, None, None),
        (Some(n), Secret::NotNamed) => {
            problems.push(invalid(
                "spec.secretRef.name",
                format!("Secret `{n}` was not read"),
            ));
            return (None, None, None);
        }
        (Some(n), Secret::Unreadable(why)) => {
            problems.push(invalid(
                "spec.secretRef.name",
                format!("Secret `{n}`: {why}"),
            ));
            return (None, None, None);
        }
        (Some(_), Secret::Data(d)) => d,
    };
    let n = name.unwrap_or_default();
    let get = |k: &str| data.get(k).cloned();
    let text = |k: &str, problems: &mut Vec<Invalid>| match get(k).map(String::from_utf8) {
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => {
            problems.push(invalid(
                "spec.secretRef.name",
                format!("Secret `{n}`: `{k}` is not UTF-8 text"),
            ));
            None
        }
        None => None,
    };
    let known = [
        SECRET_CA,
        SECRET_CERT,
        SECRET_KEY,
        SECRET_USERNAME,
        SECRET_PASSWORD,
    ];
    if !known.iter().any(|k| data.contains_key(*k)) {
        problems.push(invalid(
            "spec.secretRef.name",
            format!("Secret `{n}` has none of the keys {}; leave secretRef out if etcd needs no credentials", known.join(", ")),
        ));
    }
    let credentials = match (
        text(SECRET_USERNAME, problems),
        text(SECRET_PASSWORD, problems),
    ) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => {
            problems.push(invalid(
                "spec.secretRef.name",
                format!(
                    "Secret `{n}`: `username` and `password` go together; give both or neither"
                ),
            ));
            None
        }
    };
    let identity = match (get(SECRET_CERT), get(SECRET_KEY)) {
        (Some(c), Some(k)) => Some((Pem::Inline(c), Pem::Inline(k))),
        (None, None) => None,
        _ => {
            problems.push(invalid(
                "spec.secretRef.name",
                format!("Secret `{n}`: `tls.crt` and `tls.key` go together; give both or neither"),
            ));
            None
        }
    };
    (credentials, get(SECRET_CA).map(Pem::Inline), identity)
}

fn prefixes(spec: &EtcdSourceSpec, problems: &mut Vec<Invalid>) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::new();
    for (i, p) in spec.prefixes.iter().enumerate() {
        let format = match p.format.parse::<Format>() {
            Ok(f) => f,
            Err(e) => {
                problems.push(invalid(format!("spec.prefixes[{i}].format"), e));
                continue;
            }
        };
        let prefix = &p.prefix;
        if !prefix.ends_with('/') || (format == Format::Seed && !prefix.starts_with('/')) {
            problems.push(invalid(
                format!("spec.prefixes[{i}].prefix"),
                format!("`{prefix}` must end with `/`, and a seed prefix must start with `/`"),
            ));
            continue;
        }
        if let Some(j) = out.iter().position(|o| contains(&o.prefix, prefix)) {
            problems.push(invalid(
                format!("spec.prefixes[{i}].prefix"),
                format!("`{prefix}` and `{}` (spec.prefixes[{j}]) overlap: a key would be read twice; keep one", out[j].prefix),
            ));
            continue;
        }
        out.push(Prefix {
            prefix: prefix.clone(),
            format,
        });
    }
    if spec.prefixes.is_empty() {
        problems.push(invalid(
            "spec.prefixes",
            "give at least one prefix, e.g. `/`",
        ));
    }
    out
}

/// One of the two prefixes contains the other (or they are equal).
fn contains(a: &str, b: &str) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Two sources that would read one key twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    /// The source refused.
    pub source: SourceName,
    /// The source that keeps the prefix.
    pub kept_by: SourceName,
    pub prefix: String,
    pub other_prefix: String,
    pub endpoint: String,
}

impl Overlap {
    pub fn invalid(&self) -> Invalid {
        invalid(
            "spec.prefixes",
            format!(
                "`{}` overlaps `{}` of source `{}` on the same etcd ({}): a key would be imported twice; this source is not used until one of them changes",
                self.prefix, self.other_prefix, self.kept_by, self.endpoint
            ),
        )
    }
}

/// Splits `sources` (in priority order: the flags' source, then objects oldest first) into those
/// used and those refused because one of their prefixes overlaps an earlier kept source's on an
/// etcd endpoint both name. The same prefix on two different clusters is no overlap: each
/// source's Services carry its own label, and the stable-name rule settles a contested name.
pub fn refuse_overlaps(sources: Vec<SourceConfig>) -> (Vec<SourceConfig>, Vec<Overlap>) {
    let mut kept: Vec<SourceConfig> = Vec::new();
    let mut refused = Vec::new();
    for s in sources {
        match kept.iter().find_map(|k| overlap(&s, k)) {
            Some(o) => refused.push(o),
            None => kept.push(s),
        }
    }
    (kept, refused)
}

fn overlap(s: &SourceConfig, kept: &SourceConfig) -> Option<Overlap> {
    let endpoint = s.connection.endpoints.iter().find(|e| {
        kept.connection
            .endpoints
            .iter()
            .any(|k| same_endpoint(e, k))
    })?;
    let (p, q) = s.prefixes.iter().find_map(|p| {
        kept.prefixes
            .iter()
            .find(|q| contains(&p.prefix, &q.prefix))
            .map(|q| (p, q))
    })?;
    Some(Overlap {
        source: s.name.clone(),
        kept_by: kept.name.clone(),
        prefix: p.prefix.clone(),
        other_prefix: q.prefix.clone(),
        endpoint: endpoint.clone(),
    })
}

/// URLs compare without case and a trailing `/`: `HTTP://Etcd:2379/` is `http://etcd:2379`.
fn same_endpoint(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim_end_matches('/').to_ascii_lowercase();
    norm(a) == norm(b)
}

/// What the supervisor does to go from the sources `running` to those `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Stop these sources' watchers (gone, or changed: then started again below).
    pub stop: Vec<SourceName>,
    /// Gone for good: their Services go.
    pub gone: Vec<SourceName>,
    /// Start these (new, or changed).
    pub start: Vec<SourceConfig>,
}

pub fn changes(
    running: &BTreeMap<SourceName, SourceConfig>,
    desired: &BTreeMap<SourceName, SourceConfig>,
) -> Changes {
    let mut c = Changes::default();
    for (name, old) in running {
        match desired.get(name) {
            None => {
                c.stop.push(name.clone());
                c.gone.push(name.clone());
            }
            Some(new) if new != old => c.stop.push(name.clone()),
            Some(_) => {}
        }
    }
    for (name, new) in desired {
        if running.get(name) != Some(new) {
            c.start.push(new.clone());
        }
    }
    c
}

#[cfg(test)]
mod tests;
