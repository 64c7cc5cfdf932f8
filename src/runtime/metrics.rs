//! Prometheus metrics. Labels are small fixed sets (kinds, outcomes), never
//! object names, so cardinality does not grow with the cluster.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AcceptedLabel {
    pub accepted: String,
}

/// The outcome of a DNS lookup: ok, nxdomain, no_addresses, servfail, timeout, no_server.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

impl ResultLabel {
    pub fn of(result: &str) -> ResultLabel {
        ResultLabel { result: result.to_string() }
    }
}

/// An Accepted=False reason (Invalid, HostnameNotAllowed, TLSRequired, AddressNotAllowed).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// A queue lane: `change` (watch events, DNS answers, retries) or `bulk` (re-lists, resyncs).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    pub lane: String,
}

/// A long-lived task or a writer's work, by name (`reconcile`, `egress`, a watch's kind, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

impl TaskLabel {
    pub fn of(task: &str) -> TaskLabel {
        TaskLabel { task: task.to_string() }
    }
}

/// A writer: `status` (XBackends), `egress` (policy objects), `gatewayclass`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriterLabel {
    pub writer: String,
}

impl WriterLabel {
    pub fn of(writer: &str) -> WriterLabel {
        WriterLabel { writer: writer.to_string() }
    }
}

/// The egress engine and the API version it writes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabel {
    pub engine: String,
    pub api_version: String,
}

/// A reconcile error's kind (`reconcile::Error::label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    pub error: String,
}

pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub reconcile_failures: Family<ErrorLabel, Counter>,
    pub reconcile_seconds: Histogram,
    pub status_writes: Counter,
    pub class_status_writes: Counter,
    pub egress_policy_writes: Counter,
    pub egress_policy_objects: Gauge,
    pub egress_addresses: Gauge,
    pub egress_gateways: Gauge,
    pub egress_addresses_max_per_gateway: Gauge,
    pub egress_hold_evictions: Counter,
    pub egress_widened_gateways: Gauge,
    pub egress_engine: Family<EngineLabel, Gauge>,
    pub status_conflicts: Counter,
    pub status_writes_fenced: Counter,
    pub panics: Family<TaskLabel, Counter>,
    pub task_ends: Family<TaskLabel, Counter>,
    pub write_failures: Family<WriterLabel, Counter>,
    pub resyncs: Counter,
    pub watch_events: Family<KindLabel, Counter>,
    pub watch_errors: Family<KindLabel, Counter>,
    pub decode_failures: Family<KindLabel, Counter>,
    pub xbackends: Family<AcceptedLabel, Gauge>,
    pub rejected: Family<ReasonLabel, Gauge>,
    pub dns_lookups: Family<ResultLabel, Counter>,
    pub dns_hostnames: Gauge,
    pub dns_servers: Gauge,
    pub dns_slow_first_lookups: Counter,
    /// Set when scraped, from the queue.
    pub queue_depth: Family<LaneLabel, Gauge>,
    pub leader: Gauge,
    pub ready: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("xbackend");
        let m = Metrics {
            reconciles: Counter::default(),
            reconcile_errors: Counter::default(),
            reconcile_failures: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            status_writes: Counter::default(),
            class_status_writes: Counter::default(),
            egress_policy_writes: Counter::default(),
            egress_policy_objects: Gauge::default(),
            egress_addresses: Gauge::default(),
            egress_gateways: Gauge::default(),
            egress_addresses_max_per_gateway: Gauge::default(),
            egress_hold_evictions: Counter::default(),
            egress_widened_gateways: Gauge::default(),
            egress_engine: Family::default(),
            status_conflicts: Counter::default(),
            status_writes_fenced: Counter::default(),
            panics: Family::default(),
            task_ends: Family::default(),
            write_failures: Family::default(),
            resyncs: Counter::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            decode_failures: Family::default(),
            xbackends: Family::default(),
            rejected: Family::default(),
            dns_lookups: Family::default(),
            dns_hostnames: Gauge::default(),
            dns_servers: Gauge::default(),
            dns_slow_first_lookups: Counter::default(),
            queue_depth: Family::default(),
            leader: Gauge::default(),
            ready: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("reconciles", "XBackend reconciles run", m.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "XBackend reconciles that failed and were retried",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_failures",
            "XBackend reconciles that failed, by error (timeout, api, conflict); each is retried with backoff",
            m.reconcile_failures.clone(),
        );
        registry.register("reconcile_duration_seconds", "Time to reconcile one XBackend", m.reconcile_seconds.clone());
        registry.register("status_writes", "Status patches sent", m.status_writes.clone());
        registry.register(
            "egress_policy_writes",
            "Egress policy object applies and deletes sent (--egress-policy)",
            m.egress_policy_writes.clone(),
        );
        registry.register(
            "egress_policy_objects",
            "Egress policy objects this controller wants to stand, over every judged Gateway",
            m.egress_policy_objects.clone(),
        );
        registry.register(
            "egress_addresses",
            "Addresses allowed by the egress policies, summed over Gateways",
            m.egress_addresses.clone(),
        );
        // Addresses per Gateway without a label per Gateway (no per-object
        // labels): how many Gateways, and the largest; the mean is the sum over the count.
        registry.register("egress_gateways", "Judged Gateways with egress policies written", m.egress_gateways.clone());
        registry.register(
            "egress_addresses_max_per_gateway",
            "Addresses allowed for the Gateway that has the most",
            m.egress_addresses_max_per_gateway.clone(),
        );
        registry.register(
            "egress_hold_evictions",
            "Held addresses dropped because a hostname passed --egress-max-addresses-per-host",
            m.egress_hold_evictions.clone(),
        );
        registry.register(
            "egress_widened_gateways",
            "Judged Gateways whose data-plane Pods another policy object lets reach more than ours (a Warning Event each)",
            m.egress_widened_gateways.clone(),
        );
        registry.register(
            "egress_engine",
            "1 for the egress engine (--egress-policy) and the API version of the objects it writes",
            m.egress_engine.clone(),
        );
        registry.register(
            "gatewayclass_status_writes",
            "Status patches sent to GatewayClasses whose controllerName is ours",
            m.class_status_writes.clone(),
        );
        registry.register(
            "status_conflicts",
            "Status patches refused with 409 Conflict and retried",
            m.status_conflicts.clone(),
        );
        registry.register(
            "status_writes_fenced",
            "Status writes not sent because this replica's leader Lease was lost or its renewal overdue",
            m.status_writes_fenced.clone(),
        );
        registry.register(
            "panics",
            "Panics caught, by task (reconcile, egress, gatewayclass, a watch's kind); the key is retried after a backoff",
            m.panics.clone(),
        );
        registry.register(
            "task_ends",
            "Long-lived tasks that ended and were started again, by task (after too many the process exits)",
            m.task_ends.clone(),
        );
        registry.register(
            "write_failures",
            "Writes that failed and are retried with backoff, by writer (status, egress, gatewayclass)",
            m.write_failures.clone(),
        );
        registry.register("resyncs", "Periodic safety resyncs started (every XBackend queued)", m.resyncs.clone());
        registry.register("watch_events", "Watch events received, by kind", m.watch_events.clone());
        registry.register(
            "watch_errors",
            "Watch errors (the watch retries with backoff), by kind",
            m.watch_errors.clone(),
        );
        registry.register(
            "decode_failures",
            "Objects skipped because they did not decode, by kind",
            m.decode_failures.clone(),
        );
        registry.register("objects", "XBackends by their Accepted verdict", m.xbackends.clone());
        registry.register("rejected", "XBackends with Accepted=False, by reason", m.rejected.clone());
        registry.register("dns_lookups", "DNS lookups of XBackend hostnames, by result", m.dns_lookups.clone());
        registry.register("dns_hostnames", "Distinct hostnames the DNS check tracks", m.dns_hostnames.clone());
        registry.register(
            "dns_servers",
            "DNS servers each lookup asks (--dns-server and the ready endpoints of --dns-service)",
            m.dns_servers.clone(),
        );
        registry.register(
            "dns_slow_first_lookups",
            "Reconciles that stopped waiting for a hostname's first DNS answer (2 s); it queues them again when it comes",
            m.dns_slow_first_lookups.clone(),
        );
        registry.register(
            "queue_depth",
            "XBackends waiting to be reconciled, by lane (change, bulk; retry: failed, waiting for their backoff)",
            m.queue_depth.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader Lease", m.leader.clone());
        registry.register(
            "ready",
            "1 while ready: every watch has synced and no long-lived task is down",
            m.ready.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn kind(kind: &str) -> KindLabel {
        KindLabel { kind: kind.to_string() }
    }

    /// Records the queue's depth by lane, for the next scrape.
    pub fn set_queue_depth(&self, (change, bulk): (usize, usize), retry: usize) {
        for (lane, depth) in [("change", change), ("bulk", bulk), ("retry", retry)] {
            self.queue_depth.get_or_create(&LaneLabel { lane: lane.into() }).set(depth as i64);
        }
    }

    /// Says which engine writes egress policies, in which API version.
    pub fn egress_engine(&self, engine: &str, api_version: &str) {
        let label = EngineLabel { engine: engine.to_string(), api_version: api_version.to_string() };
        self.egress_engine.get_or_create(&label).set(1);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
