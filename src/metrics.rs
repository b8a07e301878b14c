//! Prometheus metrics, served as text on `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, Ordering};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// `projected` or `skipped`.
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `apply` or `delete`.
    pub verb: &'static str,
    /// `Service` or `EndpointSlice`.
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// `put` or `delete`.
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// How a probe ended: `serving`, `not_serving`, `service_unknown`, `unreachable`,
    /// `timed_out` or `error`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthStateLabels {
    /// `unknown` (no verdict yet), `serving` or `not_serving`.
    pub state: &'static str,
}

/// Every metric of the bridge. Cheap to clone handles are shared by the tasks that update them.
pub struct Metrics {
    registry: Registry,
    pub registrations: Family<StateLabels, Gauge>,
    pub skipped: Family<ReasonLabels, Counter>,
    pub services: Gauge,
    pub slices: Gauge,
    pub api_writes: Family<WriteLabels, Counter>,
    pub api_errors: Family<WriteLabels, Counter>,
    pub etcd_writes: Family<VerbLabels, Counter>,
    pub sync_latency: Histogram,
    pub watch_restarts: Counter,
    pub compaction_relists: Counter,
    pub rewind_relists: Counter,
    pub conflicts: Family<KindLabels, Counter>,
    pub leader: Gauge,
    pub buckets_held: Gauge,
    pub etcd_connected: Gauge,
    pub held_deletions: Gauge,
    pub stale_sources: Gauge,
    pub weights_clamped: Counter,
    pub writeback_put_seconds: Histogram,
    pub writeback_leases: Gauge,
    pub writeback_leases_lost: Counter,
    pub probes: Family<OutcomeLabels, Counter>,
    pub probe_latency: Histogram,
    pub probed_endpoints: Family<HealthStateLabels, Gauge>,
    pub probe_watch_streams: Gauge,
    pub panic_activations: Counter,
    pub services_in_panic: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("etcd_bridge");
        let m = Metrics {
            registrations: Family::default(),
            skipped: Family::default(),
            services: Gauge::default(),
            slices: Gauge::default(),
            api_writes: Family::default(),
            api_errors: Family::default(),
            etcd_writes: Family::default(),
            // 1 ms .. ~16 s.
            sync_latency: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            watch_restarts: Counter::default(),
            compaction_relists: Counter::default(),
            rewind_relists: Counter::default(),
            conflicts: Family::default(),
            leader: Gauge::default(),
            buckets_held: Gauge::default(),
            etcd_connected: Gauge::default(),
            held_deletions: Gauge::default(),
            stale_sources: Gauge::default(),
            weights_clamped: Counter::default(),
            // 100 µs .. ~3.3 s.
            writeback_put_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            writeback_leases: Gauge::default(),
            writeback_leases_lost: Counter::default(),
            probes: Family::default(),
            // 0.25 ms .. ~4 s.
            probe_latency: Histogram::new(exponential_buckets(0.00025, 2.0, 15)),
            probed_endpoints: Family::default(),
            probe_watch_streams: Gauge::default(),
            panic_activations: Counter::default(),
            services_in_panic: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "registrations",
            "Registrations in the etcd cache, by state",
            m.registrations.clone(),
        );
        registry.register("skipped_registrations", "Registrations skipped as malformed or unprojectable, by reason (counted once per key version)", m.skipped.clone());
        registry.register(
            "services",
            "Services the bridge manages",
            m.services.clone(),
        );
        registry.register(
            "endpointslices",
            "EndpointSlices the bridge manages",
            m.slices.clone(),
        );
        registry.register(
            "api_writes",
            "Kubernetes API writes (Services, EndpointSlices), by verb and kind",
            m.api_writes.clone(),
        );
        registry.register(
            "etcd_writes",
            "etcd writes of written-back registrations that changed a key, by verb",
            m.etcd_writes.clone(),
        );
        registry.register(
            "api_write_errors",
            "Kubernetes API writes that failed, by verb and kind",
            m.api_errors.clone(),
        );
        registry.register(
            "sync_latency_seconds",
            "From the oldest etcd event of a flush to the end of that flush's writes, once per flush that wrote (initial sync excluded)",
            m.sync_latency.clone(),
        );
        registry.register(
            "watch_restarts",
            "etcd watch streams restarted after an error",
            m.watch_restarts.clone(),
        );
        registry.register(
            "compaction_relists",
            "Full relists of a prefix because the watch revision was compacted",
            m.compaction_relists.clone(),
        );
        registry.register(
            "rewind_relists",
            "Full relists of a prefix because etcd went back in time (restored from a snapshot, replaced, or another cluster)",
            m.rewind_relists.clone(),
        );
        registry.register(
            "conflicts",
            "Objects not written because one of the same name is not the bridge's",
            m.conflicts.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica writes (holds the Lease, or at least one bucket's)",
            m.leader.clone(),
        );
        registry.register(
            "buckets_held",
            "Leader buckets this replica holds and writes (--leader-buckets)",
            m.buckets_held.clone(),
        );
        registry.register(
            "etcd_connected",
            "1 while the etcd watch is established",
            m.etcd_connected.clone(),
        );
        registry.register(
            "held_deletions",
            "Endpoint deletions held by the mass-deletion guard until etcd confirms them",
            m.held_deletions.clone(),
        );
        registry.register(
            "stale_sources",
            "Sources unreachable past their staleAfter, whose endpoints were removed",
            m.stale_sources.clone(),
        );
        registry.register(
            "weights_clamped",
            "Services with a weight above 65535, written to service.cilium.io/weight as 65535 (counted once per Service)",
            m.weights_clamped.clone(),
        );
        registry.register(
            "writeback_put_seconds",
            "Write-back: from sending a transaction that puts an object's keys in etcd to etcd's answer",
            m.writeback_put_seconds.clone(),
        );
        registry.register(
            "writeback_leases",
            "Write-back: etcd leases this replica holds (each holds at most --writeback-keys-per-lease keys)",
            m.writeback_leases.clone(),
        );
        registry.register(
            "writeback_leases_lost",
            "Write-back: etcd leases found gone (expired, or etcd lost its data); their keys were put again",
            m.writeback_leases_lost.clone(),
        );
        registry.register(
            "probes",
            "Health checks of imported endpoints, by outcome",
            m.probes.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "How long one health check took (a timed-out check takes the timeout)",
            m.probe_latency.clone(),
        );
        registry.register(
            "probed_endpoints",
            "Endpoints the leader probes, by health state",
            m.probed_endpoints.clone(),
        );
        registry.register(
            "probe_watch_streams",
            "Health/Watch streams open (--probe-watch), each on an HTTP/2 connection of its own",
            m.probe_watch_streams.clone(),
        );
        registry.register(
            "panic_guard_activations",
            "Times a Service had more than the panic threshold of its endpoints fail their health checks, so all were kept ready",
            m.panic_activations.clone(),
        );
        registry.register(
            "panic_guard_services",
            "Services whose endpoints the panic guard keeps ready now",
            m.services_in_panic.clone(),
        );
        Metrics { registry, ..m }
    }
}

/// One writer's share of a gauge that several set: each projected namespace's reconciler
/// counts its own Services, and the gauge shows the sum.
#[derive(Debug)]
pub struct Share {
    gauge: Gauge,
    mine: AtomicI64,
}

impl Share {
    pub fn of(gauge: &Gauge) -> Self {
        Share {
            gauge: gauge.clone(),
            mine: AtomicI64::new(0),
        }
    }

    pub fn set(&self, v: i64) {
        let before = self.mine.swap(v, Ordering::Relaxed);
        self.gauge.inc_by(v - before);
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn write(&self, verb: &'static str, kind: &'static str) {
        self.api_writes
            .get_or_create(&WriteLabels { verb, kind })
            .inc();
    }

    pub fn etcd_write(&self, verb: &'static str) {
        self.etcd_writes.get_or_create(&VerbLabels { verb }).inc();
    }

    pub fn write_error(&self, verb: &'static str, kind: &'static str) {
        self.api_errors
            .get_or_create(&WriteLabels { verb, kind })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_with_labels() {
        let m = Metrics::default();
        m.write("apply", "EndpointSlice");
        m.skipped
            .get_or_create(&ReasonLabels {
                reason: "missing_port",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains(r#"etcd_bridge_api_writes_total{verb="apply",kind="EndpointSlice"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"etcd_bridge_skipped_registrations_total{reason="missing_port"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn shares_of_a_gauge_add_up() {
        let g = Gauge::default();
        let (a, b) = (Share::of(&g), Share::of(&g));
        a.set(10);
        b.set(5);
        a.set(7);
        assert_eq!(g.get(), 12);
        b.set(0);
        assert_eq!(g.get(), 7);
    }
}
