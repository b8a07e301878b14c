//! The HTTP endpoints: `/healthz` (the process is alive), `/readyz` (first complete sync done and
//! etcd reachable) and `/metrics` (Prometheus text).

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What `/readyz` reports.
#[derive(Default)]
pub struct Health {
    synced: AtomicBool,
    etcd: AtomicBool,
}

impl Health {
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Release);
    }
    pub fn set_etcd(&self, up: bool) {
        self.etcd.store(up, Ordering::Release);
    }
    /// Why the bridge is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if !self.etcd.load(Ordering::Acquire) {
            Some("etcd is unreachable; the last known state is kept")
        } else if !self.synced.load(Ordering::Acquire) {
            Some("the first complete sync has not finished")
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
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why.to_string()),
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
