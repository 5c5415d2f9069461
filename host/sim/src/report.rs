//! What a run shows: counts and latency percentiles, as JSON whose fields
//! and order are fixed, so the same seed gives byte-identical output.

use crate::hypervisor::MigrationTime;
use crate::scenario::Scenario;
use crate::traffic::{Traffic, TrafficReport};
use locus_core::load::LoadState;
use locus_core::node::Event;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Percentiles of a latency, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many were measured.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The largest.
    pub max: f64,
}

impl Percentiles {
    fn of(mut us: Vec<u64>) -> Self {
        if us.is_empty() {
            return Percentiles::default();
        }
        us.sort_unstable();
        let at = |q: f64| us[((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1] as f64 / 1000.0;
        Percentiles { count: us.len() as u64, p50: at(0.5), p99: at(0.99), max: at(1.0) }
    }
}

/// A run's summary.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// The seed that reproduces the run.
    pub seed: u64,
    /// Hosts simulated.
    pub hosts: usize,
    /// Who rebalanced: `distributed` or `centralized`.
    pub scheduler: &'static str,
    /// The placement policy.
    pub placement: String,
    /// Whether underloaded hosts were consolidated.
    pub consolidation: bool,
    /// How the policies ran: `native` or `wasm` (metered by fuel).
    pub runtime: &'static str,
    /// Virtual time simulated, seconds.
    pub virtual_s: f64,
    /// Events the simulator processed.
    pub events: u64,
    /// The same, by what they were.
    pub events_by_kind: EventCounts,
    /// Messages the network lost.
    pub lost: u64,
    /// Faults injected and undone.
    pub faults: u64,
    /// VMs requested.
    pub requested: u64,
    /// Requests answered with a running VM.
    pub placed: u64,
    /// Requests refused.
    pub refused: u64,
    /// Requests whose agent died before answering, or was down when they came.
    pub cut_off: u64,
    /// From a request entering the cluster to its answer.
    pub placement_ms: Percentiles,
    /// Live migrations started.
    pub migrations: u64,
    /// Bytes those migrations sent.
    pub migration_bytes: u64,
    /// How long they took.
    pub migration_ms: Percentiles,
    /// Times a host became overloaded.
    pub overloads: u64,
    /// Overloads still going at the end.
    pub overloads_unsolved: u64,
    /// Time hosts spent overloaded, summed over hosts, seconds.
    pub overload_host_s: f64,
    /// From a host becoming overloaded to its being normal again.
    pub overload_ms: Percentiles,
    /// What the hosts drew and where it came from.
    pub energy: EnergyReport,
    /// VMs ever recorded on a host outside the jurisdictions they are
    /// fenced to (must be 0).
    pub jurisdiction_violations: u64,
    /// VMs farther from their users than they accept, at the end.
    pub outside_latency_bound: u64,
    /// Rounds of the central scheduler (0 when distributed).
    pub central_rounds: u64,
    /// Moves it sent to the agents.
    pub central_moves: u64,
    /// PoPs it could not plan for, summed over rounds.
    pub central_failures: u64,
    /// What the overlay carried.
    pub traffic: TrafficReport,
    /// Events the nodes reported, by kind.
    pub node_events: BTreeMap<&'static str, u64>,
    #[serde(skip)]
    placement_us: Vec<u64>,
    #[serde(skip)]
    migration_us: Vec<u64>,
    /// Since when each overloaded host has been, µs, by node.
    #[serde(skip)]
    overloaded_since: BTreeMap<usize, u64>,
    #[serde(skip)]
    overload_us: Vec<u64>,
    #[serde(skip)]
    fenced_out: BTreeSet<String>,
}

/// The simulator's events by what they were: where a run's time goes,
/// since an event costs about the same whatever it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventCounts {
    /// A node's deadline came: its heartbeat, nearly always.
    pub timers: u64,
    /// A host summary delivered to a PoP-mate.
    pub host_summaries: u64,
    /// A PoP summary delivered to an agent of another PoP.
    pub pop_summaries: u64,
    /// A suspicion delivered to a PoP-mate.
    pub suspicions: u64,
    /// A peer request delivered (probes, most of them).
    pub peer_requests: u64,
    /// An answer to one, or its failure, delivered.
    pub peer_responses: u64,
    /// A node sampled its hypervisor.
    pub samples: u64,
    /// A lookup in the overlay's records answered.
    pub lookups: u64,
    /// Anything else a node was told: hypervisor results, policy answers,
    /// latency measurements, connections.
    pub other_inputs: u64,
    /// What the world does itself (requests and load changes arriving,
    /// faults, the power meter, the central scheduler, request timeouts,
    /// migrations landing), and inputs for a node that was down.
    pub world: u64,
}

/// Energy: what the hosts drew, how much of it renewable power covered,
/// and the grid's share and its carbon.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EnergyReport {
    /// Everything the hosts drew, kWh.
    pub kwh: f64,
    /// Drawn from the grid (beyond the PoP's renewable power), kWh.
    pub grid_kwh: f64,
    /// Covered by renewable power, kWh.
    pub renewable_kwh: f64,
    /// The grid's carbon, kg CO2.
    pub carbon_kg: f64,
    /// The same, per PoP (in the scenario's order).
    pub by_pop: Vec<PopEnergyReport>,
}

/// One PoP's energy.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PopEnergyReport {
    /// The PoP.
    pub pop: String,
    /// Drawn, kWh.
    pub kwh: f64,
    /// From the grid, kWh.
    pub grid_kwh: f64,
    /// The grid's carbon, kg CO2.
    pub carbon_kg: f64,
}

impl Report {
    /// An empty report for a run of `scenario` with `seed`.
    pub fn new(scenario: &Scenario, seed: u64, hosts: usize) -> Self {
        Report {
            scenario: scenario.name.clone(),
            seed,
            hosts,
            scheduler: match scenario.scheduler.kind {
                crate::scenario::SchedulerKind::Distributed => "distributed",
                crate::scenario::SchedulerKind::Centralized => "centralized",
            },
            placement: scenario.policies.placement.clone(),
            consolidation: scenario.policies.consolidation,
            runtime: match scenario.policies.runtime {
                crate::scenario::PolicyRuntime::Native => "native",
                crate::scenario::PolicyRuntime::Wasm => "wasm",
            },
            energy: EnergyReport {
                by_pop: (scenario.pops.iter())
                    .map(|p| PopEnergyReport { pop: p.name.clone(), ..Default::default() })
                    .collect(),
                ..Default::default()
            },
            jurisdiction_violations: 0,
            outside_latency_bound: 0,
            central_rounds: 0,
            central_moves: 0,
            central_failures: 0,
            fenced_out: BTreeSet::new(),
            virtual_s: 0.0,
            events: 0,
            events_by_kind: EventCounts::default(),
            traffic: TrafficReport::default(),
            lost: 0,
            faults: 0,
            requested: 0,
            placed: 0,
            refused: 0,
            cut_off: 0,
            placement_ms: Percentiles::default(),
            migrations: 0,
            migration_bytes: 0,
            migration_ms: Percentiles::default(),
            overloads: 0,
            overloads_unsolved: 0,
            overload_host_s: 0.0,
            overload_ms: Percentiles::default(),
            node_events: BTreeMap::new(),
            placement_us: Vec::new(),
            migration_us: Vec::new(),
            overloaded_since: BTreeMap::new(),
            overload_us: Vec::new(),
        }
    }

    /// A request was answered after `us`.
    pub fn answered(&mut self, placed: bool, us: u64) {
        if placed {
            self.placed += 1;
        } else {
            self.refused += 1;
        }
        self.placement_us.push(us);
    }

    /// PoP `pop` drew `watts` for `us` with `renewable` watts of renewable
    /// power and a grid of `carbon` gCO2/kWh.
    pub fn metered(&mut self, pop: usize, watts: f64, renewable: u32, carbon: u32, us: u64) {
        let hours = us as f64 / 3.6e9;
        let kwh = watts * hours / 1000.0;
        let grid = (watts - f64::from(renewable)).max(0.0) * hours / 1000.0;
        let kg = grid * f64::from(carbon) / 1000.0;
        let e = &mut self.energy;
        (e.kwh, e.grid_kwh, e.renewable_kwh, e.carbon_kg) =
            (e.kwh + kwh, e.grid_kwh + grid, e.renewable_kwh + kwh - grid, e.carbon_kg + kg);
        if let Some(p) = e.by_pop.get_mut(pop) {
            (p.kwh, p.grid_kwh, p.carbon_kg) = (p.kwh + kwh, p.grid_kwh + grid, p.carbon_kg + kg);
        }
    }

    /// Hosts overloaded now.
    pub fn overloaded_now(&self) -> u64 {
        self.overloaded_since.len() as u64
    }

    /// VM `vm` was recorded on a host outside its fence.
    pub fn fence_crossed(&mut self, vm: &str) {
        if self.fenced_out.insert(vm.to_owned()) {
            self.jurisdiction_violations += 1;
        }
    }

    /// A live migration started and will take `time`.
    pub fn migrated(&mut self, time: MigrationTime) {
        self.migrations += 1;
        self.migration_bytes += time.bytes;
        self.migration_us.push(time.total_us);
    }

    /// Node `node` reported `e` at `now_us`.
    pub fn event(&mut self, node: usize, now_us: u64, e: &Event) {
        *self.node_events.entry(kind(e)).or_default() += 1;
        if let Event::Load { state, .. } = e {
            if *state == LoadState::Overloaded {
                self.overloads += 1;
                self.overloaded_since.entry(node).or_insert(now_us);
            } else if let Some(since) = self.overloaded_since.remove(&node) {
                self.overload_us.push(now_us - since);
                self.overload_host_s += (now_us - since) as f64 / 1e6;
            }
        }
    }

    /// The run ended at `now_us`.
    pub fn finish(&mut self, now_us: u64, lost: u64, traffic: &Traffic) {
        self.virtual_s = now_us as f64 / 1e6;
        self.traffic = TrafficReport::of(traffic, self.virtual_s);
        self.lost = lost;
        let c = &mut self.events_by_kind;
        let nodes = c.timers
            + c.host_summaries
            + c.pop_summaries
            + c.suspicions
            + c.peer_requests
            + c.peer_responses
            + c.samples
            + c.lookups
            + c.other_inputs;
        c.world = self.events - nodes;
        for since in std::mem::take(&mut self.overloaded_since).into_values() {
            self.overloads_unsolved += 1;
            self.overload_host_s += (now_us - since) as f64 / 1e6;
        }
        self.overload_ms = Percentiles::of(std::mem::take(&mut self.overload_us));
        self.placement_ms = Percentiles::of(std::mem::take(&mut self.placement_us));
        self.migration_ms = Percentiles::of(std::mem::take(&mut self.migration_us));
    }
}

fn kind(e: &Event) -> &'static str {
    match e {
        Event::HypervisorUp(_) => "hypervisor-up",
        Event::HypervisorDown(_) => "hypervisor-down",
        Event::Adopted(_) => "adopted",
        Event::Recreating(_) => "recreating",
        Event::Restarting { .. } => "restarting",
        Event::LeftStopped(_) => "left-stopped",
        Event::Stopping(_) => "stopping",
        Event::Orphan(_) => "orphan",
        Event::Reclaimed { .. } => "reclaimed",
        Event::Member(_) => "member",
        Event::Evacuated { .. } => "evacuated",
        Event::Stale { .. } => "stale",
        Event::Handed { .. } => "handed",
        Event::FellBack { .. } => "fell-back",
        Event::Load { .. } => "load",
        Event::Moving { .. } => "moving",
        Event::Moved { .. } => "moved",
        Event::Arriving { .. } => "arriving",
        Event::Arrived { .. } => "arrived",
        Event::Rebalance(_) | Event::Rebalanced(_) => "rebalance",
        Event::Power { .. } => "power",
        Event::Failed { .. } | Event::NotMoved { .. } => "failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_supplies_what_renewable_power_does_not_and_its_carbon_counts() {
        let text = "name = \"e\"\nduration-s = 10\n[[pops]]\nname = \"a\"\njurisdiction = \"FR\"\n\
                    lat = 0\nlon = 0\nhosts = 1\nvcpus = 1\nmemory-mib = 1\n";
        let scenario = Scenario::parse(text).expect("scenario");
        let mut r = Report::new(&scenario, 1, 1);
        // 1000 W for an hour, 400 W of it renewable, then 300 W for an hour, all renewable.
        r.metered(0, 1000.0, 400, 500, 3_600_000_000);
        r.metered(0, 300.0, 400, 500, 3_600_000_000);
        let e = &r.energy;
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(near(e.kwh, 1.3) && near(e.grid_kwh, 0.6) && near(e.renewable_kwh, 0.7), "{e:?}");
        assert!(near(e.carbon_kg, 0.3) && near(e.by_pop[0].carbon_kg, 0.3), "{e:?}");
        r.fence_crossed("vm");
        r.fence_crossed("vm");
        assert_eq!(r.jurisdiction_violations, 1, "a VM counts once");
    }
}
