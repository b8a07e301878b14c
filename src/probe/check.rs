//! One probe of one endpoint: `grpc.health.v1.Health/Check` (tonic-health's client), or a TCP
//! connect. Each probe opens its own connection and closes it: 10,000 endpoints would otherwise
//! hold 10,000 connections (and their memory) open in the bridge. With `--probe-watch`, [`watch`]
//! holds one open per endpoint instead, for a `Health/Watch` stream.

use crate::probe::follow::Event;
use crate::probe::state::Outcome;
use prometheus_client::metrics::gauge::Gauge;
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
        Ok(response) => outcome(response.into_inner().status()),
        Err(status) => {
            tracing::debug!(%addr, %status, "health check: the call failed");
            Outcome::Error
        }
    }
}

fn outcome(status: ServingStatus) -> Outcome {
    match status {
        ServingStatus::Serving => Outcome::Serving,
        ServingStatus::NotServing => Outcome::NotServing,
        ServingStatus::ServiceUnknown | ServingStatus::Unknown => Outcome::ServiceUnknown,
    }
}

/// HTTP/2 PINGs on a Watch stream's connection at most this often. A stream is silent while the
/// status holds, so only PINGs tell a stopped server or a lost network; but gRPC servers by
/// default close connections that PING more often than every 5 minutes (grpc-go's
/// `EnforcementPolicy.MinTime`), which would end every stream. A stream that stops answering is
/// noticed by the Check that still goes out at every tick (`follow::tick`), within the interval.
pub const KEEPALIVE_FLOOR: Duration = Duration::from_secs(300);

/// Keeps the open-streams gauge right however the stream's task ends (aborted included).
struct OpenStream(Gauge);

impl OpenStream {
    fn new(gauge: &Gauge) -> OpenStream {
        gauge.inc();
        OpenStream(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Follows `addr` with a `Health/Watch` stream on a connection of its own: the first status
/// must come within `timeout`; then every status is sent on as it streams. `send` gets each
/// event, with how long the open took for the first status. Returns after the last event
/// ([`Event::OpenFailed`], [`Event::Ended`] or [`Event::Unimplemented`]); dropping the future
/// closes the stream and its connection.
pub async fn watch(
    service: &str,
    addr: SocketAddr,
    timeout: Duration,
    interval: Duration,
    open_streams: &Gauge,
    mut send: impl FnMut(Event, Option<Duration>),
) {
    let started = Instant::now();
    let opened = tokio::time::timeout(timeout, open(service, addr, timeout, interval)).await;
    let (mut stream, first) = match opened {
        Err(_) => return send(Event::OpenFailed(Outcome::TimedOut), None),
        Ok(Err(event)) => return send(event, None),
        Ok(Ok(open)) => open,
    };
    let _open = OpenStream::new(open_streams);
    send(Event::Status(first), Some(started.elapsed()));
    loop {
        match stream.message().await {
            Ok(Some(m)) => send(Event::Status(outcome(m.status())), None),
            Ok(None) => {
                tracing::debug!(%addr, "health watch: the server ended the stream");
                return send(Event::Ended, None);
            }
            Err(status) => {
                tracing::debug!(%addr, %status, "health watch: the stream broke");
                return send(Event::Ended, None);
            }
        }
    }
}

/// Connects, asks for the stream and reads its first status (the current one).
async fn open(
    service: &str,
    addr: SocketAddr,
    timeout: Duration,
    interval: Duration,
) -> Result<
    (
        tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
        Outcome,
    ),
    Event,
> {
    let failed = |status: tonic::Status| {
        if status.code() == tonic::Code::Unimplemented {
            Event::Unimplemented
        } else {
            tracing::debug!(%addr, %status, "health watch: the call failed");
            Event::OpenFailed(Outcome::Error)
        }
    };
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| Event::OpenFailed(Outcome::Error))?
        .http2_keep_alive_interval(interval.max(KEEPALIVE_FLOOR))
        .keep_alive_timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        tracing::debug!(%addr, error = %e, "health watch: cannot connect");
        Event::OpenFailed(Outcome::Unreachable)
    })?;
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let mut stream = HealthClient::new(channel)
        .watch(request)
        .await
        .map_err(failed)?
        .into_inner();
    match stream.message().await {
        Ok(Some(m)) => Ok((stream, outcome(m.status()))),
        Ok(None) => Err(Event::OpenFailed(Outcome::Unreachable)),
        Err(status) => Err(failed(status)),
    }
}
