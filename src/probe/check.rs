//! One probe of one endpoint: `grpc.health.v1.Health/Check` (tonic-health's client), or a TCP
//! connect. Each probe opens its own connection and closes it: 10,000 endpoints would otherwise
//! hold 10,000 connections (and their memory) open in the bridge.

use crate::probe::state::Outcome;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How endpoints are probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `grpc.health.v1.Health/Check` for this service name (`""`: the whole server).
    Grpc { service: String },
    /// A TCP connection that opens. Cannot tell a wedged server: its kernel still accepts.
    Tcp,
}

/// Probes `addr` once; the outcome and how long it took. Never longer than `timeout`.
pub async fn check(mode: &Mode, addr: SocketAddr, timeout: Duration) -> (Outcome, Duration) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, probe(mode, addr)).await {
        Ok(outcome) => outcome,
        Err(_) => Outcome::TimedOut,
    };
    (outcome, started.elapsed())
}

async fn probe(mode: &Mode, addr: SocketAddr) -> Outcome {
    match mode {
        Mode::Tcp => match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => Outcome::Serving,
            Err(e) => {
                tracing::debug!(%addr, error = %e, "TCP check: cannot connect");
                Outcome::Unreachable
            }
        },
        Mode::Grpc { service } => grpc(addr, service).await,
    }
}

async fn grpc(addr: SocketAddr, service: &str) -> Outcome {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        // A SocketAddr always makes a valid URI; were it not so, say the probe erred.
        return Outcome::Error;
    };
    let channel = match endpoint.connect().await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%addr, error = %e, "health check: cannot connect");
            return Outcome::Unreachable;
        }
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => match response.into_inner().status() {
            ServingStatus::Serving => Outcome::Serving,
            ServingStatus::NotServing => Outcome::NotServing,
            ServingStatus::ServiceUnknown | ServingStatus::Unknown => Outcome::ServiceUnknown,
        },
        Err(status) => {
            tracing::debug!(%addr, %status, "health check: the call failed");
            Outcome::Error
        }
    }
}
