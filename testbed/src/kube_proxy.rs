//! What the node's kube-proxy says about itself on `/metrics` (on the node's address): how many
//! times it has rewritten its rules. Every sync is paid on every node of a real cluster, and syncs
//! are rate-limited (at least `minSyncPeriod`, 1 s by default, from the end of one to the start of
//! the next), so a change that makes kube-proxy sync for nothing delays the next Service that
//! needs it.

use crate::node::Node;
use crate::node_config::KUBE_PROXY_METRICS_PORT;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// The series counting kube-proxy's rule syncs (full and partial) for IPv4.
pub const SYNCS: &str = r#"kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"}"#;

/// The node's kube-proxy's `/metrics`, or None when it does not answer.
pub fn metrics(node: &Node) -> Option<String> {
    let addr = SocketAddr::from((node.link.node_ip(), KUBE_PROXY_METRICS_PORT));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
}

/// How many times kube-proxy has synced its rules so far.
pub fn syncs(node: &Node) -> Option<u64> {
    crate::metrics::value(&metrics(node)?, SYNCS).map(|v| v as u64)
}
