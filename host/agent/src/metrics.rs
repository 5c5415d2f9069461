//! The agent's Prometheus metrics: one registry, served as OpenMetrics
//! text at `/metrics`, that libp2p's own metrics share, and the handle
//! every task of the agent counts through.
//!
//! Counting is a few atomic operations where the thing happens (a policy
//! call on its worker, a libvirt call on its thread, an intent commit on
//! the core task). What the node alone knows (its VMs, load, power) is read
//! once per scrape instead, so an agent nobody scrapes pays nothing for it.
//! Labels take values from small fixed sets (kinds, results, states) or the
//! loaded policy versions; never a VM's name. With `[metrics] enabled =
//! false` the handle is empty and every count is skipped.

use locus_core::node::{Event, HostStatus};
use locus_core::record::Record;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[metrics]`: the `/metrics` endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MetricsConfig {
    /// Count and serve metrics at `/metrics` (behind the token on TCP).
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// The content type of OpenMetrics text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The handle the agent's tasks count through; empty when metrics are off.
#[derive(Debug, Clone, Default)]
pub struct Telemetry(Option<Arc<Metrics>>);

impl Telemetry {
    /// Metrics as configured: a registry with the agent's families, and
    /// libp2p's, or nothing.
    pub fn new(config: &MetricsConfig) -> Self {
        Telemetry(config.enabled.then(|| Arc::new(Metrics::new())))
    }

    /// The metrics, when enabled.
    pub fn get(&self) -> Option<&Metrics> {
        self.0.as_deref()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    kind: &'static str,
    result: &'static str,
    decided_by: &'static str,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    slot: &'static str,
    policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    slot: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MoveLabels {
    mode: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RebalanceLabels {
    kind: &'static str,
    solved: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PopLabel {
    pop: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Fast things (policy calls, libvirt calls, commits): 50 µs to ~100 s.
fn fast() -> Histogram {
    Histogram::new(exponential_buckets(50e-6, 3.0, 14))
}

/// Slow things (migrations, rebalancing events): 100 ms to ~50 min.
fn slow() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 3.0, 10))
}

/// Every family the agent counts, in one registry.
pub struct Metrics {
    registry: Registry,
    p2p: libp2p::metrics::Metrics,
    decisions: Family<DecisionLabels, Counter>,
    decision_seconds: Histograms<KindLabel>,
    fallbacks: Family<KindLabel, Counter>,
    policy_calls: Histograms<PolicyLabels>,
    policy_failures: Family<FailureLabels, Counter>,
    placements_waiting: Gauge,
    images_waiting: Gauge,
    migrations: Family<MoveLabels, Counter>,
    migration_seconds: Histograms<ModeLabel>,
    migration_bytes: Counter,
    rebalancing: Family<RebalanceLabels, Counter>,
    rebalancing_seconds: Histograms<KindLabel>,
    rebalancing_moves: Counter,
    libvirt_ops: Family<OpLabels, Counter>,
    libvirt_seconds: Histograms<OpLabel>,
    commits: Family<ResultLabel, Counter>,
    commit_seconds: Histogram,
    peers: Gauge,
    gossip_bytes: Family<DirectionLabel, Counter>,
    vms: Family<StateLabel, Gauge>,
    capacity: Family<ResourceLabel, Gauge>,
    allocated: Family<ResourceLabel, Gauge>,
    cpu_demand: Gauge<f64, AtomicU64>,
    power: Gauge,
    renewable: Family<PopLabel, Gauge>,
    carbon: Family<PopLabel, Gauge>,
    /// Moves under way from this host: when each began and whether live.
    moving: Mutex<HashMap<String, (Instant, bool)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let p2p = libp2p::metrics::Metrics::new(&mut registry);
        let mut m = Metrics {
            registry,
            p2p,
            decisions: Family::default(),
            decision_seconds: Family::new_with_constructor(fast),
            fallbacks: Family::default(),
            policy_calls: Family::new_with_constructor(fast),
            policy_failures: Family::default(),
            placements_waiting: Gauge::default(),
            images_waiting: Gauge::default(),
            migrations: Family::default(),
            migration_seconds: Family::new_with_constructor(slow),
            migration_bytes: Counter::default(),
            rebalancing: Family::default(),
            rebalancing_seconds: Family::new_with_constructor(slow),
            rebalancing_moves: Counter::default(),
            libvirt_ops: Family::default(),
            libvirt_seconds: Family::new_with_constructor(fast),
            commits: Family::default(),
            commit_seconds: fast(),
            peers: Gauge::default(),
            gossip_bytes: Family::default(),
            vms: Family::default(),
            capacity: Family::default(),
            allocated: Family::default(),
            cpu_demand: Gauge::default(),
            power: Gauge::default(),
            renewable: Family::default(),
            carbon: Family::default(),
            moving: Mutex::default(),
        };
        let l = m.registry.sub_registry_with_prefix("locus");
        l.register(
            "decisions",
            "Decisions about where VMs run, by kind (placement, move, evacuation, rebalancing), result (chosen, refused), who decided (policy, fallback, filters) and policy version",
            m.decisions.clone(),
        );
        l.register_with_unit(
            "decision_duration",
            "From a placement question to its decision (queue and policy), by kind",
            Unit::Seconds,
            m.decision_seconds.clone(),
        );
        l.register(
            "fallbacks",
            "Decisions the built-in fallback took because the policy failed, by the failure's kind",
            m.fallbacks.clone(),
        );
        l.register_with_unit(
            "policy_call_duration",
            "Policy calls on the policy workers, by slot and policy version",
            Unit::Seconds,
            m.policy_calls.clone(),
        );
        l.register(
            "policy_failures",
            "Policy calls that failed, by slot and kind (trap, deadline, memory-cap, invalid-decision, ...)",
            m.policy_failures.clone(),
        );
        l.register(
            "placements_waiting",
            "Placements waiting for the placement policy's answer",
            m.placements_waiting.clone(),
        );
        l.register(
            "vms_waiting_for_image",
            "VMs whose define waits for their image to arrive",
            m.images_waiting.clone(),
        );
        l.register(
            "migrations",
            "VM moves from this host, by mode (live, cold) and result (moved, failed)",
            m.migrations.clone(),
        );
        l.register_with_unit(
            "migration_duration",
            "VM moves from this host, from the decision to move to the hand-off, by mode",
            Unit::Seconds,
            m.migration_seconds.clone(),
        );
        l.register_with_unit(
            "migration_transferred",
            "Bytes live migrations from this host sent (as libvirt last reported each job)",
            Unit::Bytes,
            m.migration_bytes.clone(),
        );
        l.register(
            "rebalancing_events",
            "Rebalancing events this host led, by kind (overload, consolidate) and whether solved",
            m.rebalancing.clone(),
        );
        l.register_with_unit(
            "rebalancing_duration",
            "Rebalancing events this host led, from start to end (time to solve), by kind",
            Unit::Seconds,
            m.rebalancing_seconds.clone(),
        );
        l.register(
            "rebalancing_moves",
            "VM moves rebalancing events led here carried out",
            m.rebalancing_moves.clone(),
        );
        l.register(
            "libvirt_operations",
            "libvirt operations, by operation and result",
            m.libvirt_ops.clone(),
        );
        l.register_with_unit(
            "libvirt_operation_duration",
            "libvirt operations, by operation",
            Unit::Seconds,
            m.libvirt_seconds.clone(),
        );
        l.register("intent_commits", "Intent store commits, by result", m.commits.clone());
        l.register_with_unit(
            "intent_commit_duration",
            "Intent store commits (one durable transaction per round)",
            Unit::Seconds,
            m.commit_seconds.clone(),
        );
        l.register("overlay_peers", "Overlay peers connected", m.peers.clone());
        l.register_with_unit(
            "gossip",
            "Gossip payload bytes, by direction (in, out)",
            Unit::Bytes,
            m.gossip_bytes.clone(),
        );
        l.register("vms", "VMs of this host, by state (running, stopped, other)", m.vms.clone());
        l.register(
            "host_capacity",
            "Allocatable resources of this host (vcpus; memory in bytes; disk in bytes)",
            m.capacity.clone(),
        );
        l.register("host_allocated", "Resources allocated to VMs on this host", m.allocated.clone());
        l.register("host_cpu_demand", "CPU demand of this host's running VMs, CPUs", m.cpu_demand.clone());
        l.register_with_unit(
            "host_power",
            "Power this host draws now (modelled)",
            Unit::Other("watts".into()),
            m.power.clone(),
        );
        l.register_with_unit(
            "pop_renewable_power",
            "Renewable power this host's PoP has unused now",
            Unit::Other("watts".into()),
            m.renewable.clone(),
        );
        l.register(
            "pop_carbon_intensity_grams_per_kwh",
            "Grid carbon intensity at this host's PoP, gCO2/kWh",
            m.carbon.clone(),
        );
        m
    }

    /// The registry as OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// libp2p's recorder, for the overlay's events.
    pub fn p2p(&self) -> &libp2p::metrics::Metrics {
        &self.p2p
    }

    /// A decision the node took (its record).
    pub fn decided(&self, r: &Record) {
        let labels = DecisionLabels {
            kind: r.kind.as_str(),
            result: r.result.as_str(),
            decided_by: r.decided_by.as_str(),
            policy: r.policy.clone().unwrap_or_default(),
        };
        self.decisions.get_or_create(&labels).inc();
        if r.took_us > 0 {
            let kind = KindLabel { kind: r.kind.as_str().into() };
            self.decision_seconds.get_or_create(&kind).observe(r.took_us as f64 / 1e6);
        }
        if r.decided_by == locus_core::record::Decider::Fallback {
            let kind = r.failure.as_ref().map_or_else(|| "unknown".into(), |f| f.kind.clone());
            self.fallbacks.get_or_create(&KindLabel { kind }).inc();
        }
    }

    /// A policy call on a worker: which slot, which version answered (or
    /// failed), how long it took, and the failure's kind if it failed.
    pub fn policy_call(
        &self,
        slot: &'static str,
        policy: &str,
        took: Duration,
        failed: Option<&'static str>,
    ) {
        let labels = PolicyLabels { slot, policy: policy.to_owned() };
        self.policy_calls.get_or_create(&labels).observe(took.as_secs_f64());
        if let Some(kind) = failed {
            self.policy_failures.get_or_create(&FailureLabels { slot, kind }).inc();
        }
    }

    /// An event of the node: moves and rebalancing are counted.
    pub fn event(&self, e: &Event) {
        let moving = || self.moving.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::Moving { vm, live, .. } => {
                moving().insert(vm.clone(), (Instant::now(), *live));
            }
            Event::Moved { vm, .. } | Event::NotMoved { vm, .. } => {
                let Some((since, live)) = moving().remove(vm) else { return };
                let mode = if live { "live" } else { "cold" };
                let result = if matches!(e, Event::Moved { .. }) { "moved" } else { "failed" };
                self.migrations.get_or_create(&MoveLabels { mode, result }).inc();
                self.migration_seconds
                    .get_or_create(&ModeLabel { mode })
                    .observe(since.elapsed().as_secs_f64());
            }
            Event::Rebalanced(r) => {
                let kind = match r.kind {
                    locus_core::rebalance::EventKind::Overload => "overload",
                    locus_core::rebalance::EventKind::Consolidate => "consolidate",
                };
                let solved = if r.solved { "true" } else { "false" };
                self.rebalancing.get_or_create(&RebalanceLabels { kind, solved }).inc();
                self.rebalancing_seconds
                    .get_or_create(&KindLabel { kind: kind.into() })
                    .observe(r.duration_ms as f64 / 1e3);
                self.rebalancing_moves.inc_by(u64::from(r.moved));
            }
            _ => {}
        }
    }

    /// A libvirt operation ended.
    pub fn libvirt(&self, op: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.libvirt_ops.get_or_create(&OpLabels { op, result }).inc();
        self.libvirt_seconds.get_or_create(&OpLabel { op }).observe(took.as_secs_f64());
    }

    /// A live migration sent this many bytes.
    pub fn migrated_bytes(&self, bytes: u64) {
        self.migration_bytes.inc_by(bytes);
    }

    /// An intent commit ended.
    pub fn committed(&self, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.commits.get_or_create(&ResultLabel { result }).inc();
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// Gossip bytes in or out.
    pub fn gossip(&self, outbound: bool, bytes: u64) {
        let direction = if outbound { "out" } else { "in" };
        self.gossip_bytes.get_or_create(&DirectionLabel { direction }).inc_by(bytes);
    }

    /// VMs whose images are on their way.
    pub fn images_waiting(&self, n: usize) {
        self.images_waiting.set(n as i64);
    }

    /// Overlay peers connected, read at a scrape.
    pub fn peers(&self, n: u32) {
        self.peers.set(i64::from(n));
    }

    /// The host as the node describes it, read at a scrape.
    pub fn host(&self, h: &HostStatus) {
        self.placements_waiting.set(i64::from(h.deciding));
        for (state, n) in [("running", h.vms.running), ("stopped", h.vms.stopped), ("other", h.vms.other)] {
            self.vms.get_or_create(&StateLabel { state }).set(i64::from(n));
        }
        for (family, size) in [(&self.capacity, &h.capacity), (&self.allocated, &h.allocated)] {
            family.get_or_create(&ResourceLabel { resource: "vcpus" }).set(i64::from(size.vcpus));
            family
                .get_or_create(&ResourceLabel { resource: "memory_bytes" })
                .set(i64::from(size.memory_mib) << 20);
            family
                .get_or_create(&ResourceLabel { resource: "disk_bytes" })
                .set(i64::from(size.disk_gib) << 30);
        }
        self.cpu_demand.set(f64::from(h.load_cpu_milli) / 1000.0);
        self.power.set(i64::from(h.watts));
        let pop = PopLabel { pop: h.pop.clone() };
        self.renewable.get_or_create(&pop).set(i64::from(h.pop_renewable_watts));
        self.carbon.get_or_create(&pop).set(i64::from(h.pop_carbon_g_per_kwh));
    }
}
