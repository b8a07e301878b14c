//! The HTTP endpoints: `/healthz` (the process is alive), `/readyz` (first complete sync done and
//! etcd reachable) and `/metrics` (Prometheus text).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports. Each projected namespace's reconciler marks its own first sync;
/// the bridge is ready once all have, and the flags' registry answers.
pub struct Health {
    unsynced: Mutex<BTreeSet<String>>,
    etcd: AtomicBool,
}

impl Health {
    /// `parts`: the reconcilers (by namespace) that must each finish a first sync.
    pub fn new(parts: impl IntoIterator<Item = String>) -> Self {
        Health {
            unsynced: Mutex::new(parts.into_iter().collect()),
            etcd: AtomicBool::new(false),
        }
    }
    pub fn set_synced(&self, part: &str) {
        // A poisoned lock only means another reconciler panicked mid-insert: the set is fine.
        let mut unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        unsynced.remove(part);
    }
    pub fn set_etcd(&self, up: bool) {
        self.etcd.store(up, Ordering::Release);
    }
    /// Why the bridge is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<String> {
        let unsynced = self.unsynced.lock().unwrap_or_else(|p| p.into_inner());
        if !self.etcd.load(Ordering::Acquire) {
            Some("etcd is unreachable; the last known state is kept".into())
        } else if !unsynced.is_empty() {
            let parts: Vec<&str> = unsynced.iter().map(String::as_str).collect();
            Some(format!(
                "the first complete sync has not finished (namespace {})",
                parts.join(", ")
            ))
        } else {
            None
        }
    }
}

#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

/// Binds `addr` for [`serve`]. Separate, so that a failure stops the bridge at start.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|source| Error::Io {
        context: format!(
            "listen on {addr} for /healthz, /readyz and /metrics (is another process using it? choose another address with --listen)"
        ),
        source,
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(Shared { health, metrics });
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "read the address of the HTTP listener".into(),
        source,
    })?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .map_err(|source| Error::Io {
            context: "HTTP server".into(),
            source,
        })
}

async fn readyz(State(s): State<Shared>) -> impl IntoResponse {
    match s.health.not_ready() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics_text(State(s): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_every_namespace_synced_and_etcd_answers() {
        let h = Health::new(["grpc".to_owned(), "eu".to_owned()]);
        assert!(h.not_ready().unwrap().contains("etcd"));
        h.set_etcd(true);
        h.set_synced("grpc");
        h.set_synced("grpc");
        let why = h.not_ready().unwrap();
        assert!(why.contains("namespace eu"), "{why}");
        h.set_synced("eu");
        assert_eq!(h.not_ready(), None);
        h.set_etcd(false);
        assert!(h.not_ready().is_some());
    }
}
