//! The checker, in the spirit of TigerBeetle's VOPR: many short runs of
//! scenarios drawn from their seeds, with faults, the invariants of every
//! step checked as it goes (see [`crate::invariants`]), each run healed
//! at the end and then required to settle (every request answered, fences
//! kept, no host over what it offers, every VM running once and recorded
//! by its host's agent alone). A failure names its seed; `locus sim --check
//! --seeds 1 --from SEED` replays it.

use crate::scenario::{
    Arrivals, Fault, FaultKind, LoadChanges, PLACEMENTS, Policies, Pop, Scenario, Scheduler, SchedulerKind,
};
use crate::seed::Seed;
use crate::{Report, World};
use rand::RngExt;

/// Faults are over this long before the end, so the cluster can settle
/// (copies made on both sides of a partition meet within two of the
/// nodes' periodic checks), seconds.
const SETTLE_S: u64 = 75;

/// A failed check.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed that reproduces it.
    pub seed: u64,
    /// What was wrong.
    pub problems: Vec<String>,
}

/// Runs the scenario drawn from `seed`, and checks it settled.
pub fn check(seed: u64) -> Result<Report, Failure> {
    let scenario = random_scenario(seed);
    let end = scenario.duration_s * 1_000_000;
    let mut world = World::new(scenario, seed)
        .map_err(|e| Failure { seed, problems: vec![e.to_string()] })?
        .with_checks();
    world.run_until(end);
    let problems = world.unsettled();
    let report = world.run();
    if problems.is_empty() { Ok(report) } else { Err(Failure { seed, problems }) }
}

/// The node events of the run drawn from `seed`, one line each: to see
/// why a seed failed.
pub fn trace(seed: u64) -> Vec<String> {
    let scenario = random_scenario(seed);
    let end = scenario.duration_s * 1_000_000;
    match World::new(scenario, seed) {
        Ok(world) => {
            let mut world = world.with_trace().with_checks();
            world.run_until(end);
            world.trace().to_vec()
        }
        Err(e) => vec![e.to_string()],
    }
}

const POPS: [(&str, &str, f32, f32); 4] = [
    ("paris", "FR", 48.86, 2.35),
    ("berlin", "DE", 52.52, 13.40),
    ("madrid", "ES", 40.42, -3.70),
    ("lyon", "FR", 45.76, 4.84),
];

/// A small scenario with faults, every choice drawn from `seed`.
pub fn random_scenario(seed: u64) -> Scenario {
    let mut r = Seed(seed).stream("scenario");
    let pops: Vec<Pop> = POPS[..r.random_range(1..=POPS.len())]
        .iter()
        .map(|&(name, jurisdiction, lat, lon)| Pop {
            name: name.into(),
            jurisdiction: jurisdiction.into(),
            lat,
            lon,
            hosts: r.random_range(2..=4),
            vcpus: 16,
            cpus: Some(8),
            memory_mib: 16384,
            energy: Default::default(),
        })
        .collect();
    let hosts: Vec<String> =
        pops.iter().flat_map(|p| (0..p.hosts).map(move |h| format!("{}-{h}", p.name))).collect();
    let arrivals = (0..r.random_range(1..=3))
        .map(|_| Arrivals {
            at_s: r.random_range(1.0..10.0),
            count: r.random_range(5..=25),
            every_ms: r.random_range(10.0..300.0),
            vcpus: r.random_range(1..=4),
            memory_mib: 512 * r.random_range(1..=4),
            load_cpu_milli: None,
            pop: None,
            jurisdictions: if r.random_bool(0.3) { vec![pops[0].jurisdiction.clone()] } else { vec![] },
            user: None,
            max_latency_ms: None,
        })
        .collect();
    let load_changes = vec![LoadChanges {
        at_s: 10.0,
        count: r.random_range(0..=100),
        every_ms: 300.0,
        min_milli: 0,
        max_milli: 4000,
        step_milli: 250,
        normal: None,
    }];
    let duration_s = r.random_range(SETTLE_S + 30..=SETTLE_S + 90);
    let faults = (0..r.random_range(0..=3))
        .map(|_| {
            // Over (at most 20 s after it starts) before the settling time.
            let at_s = r.random_range(5.0..(duration_s - SETTLE_S - 20) as f64);
            let kind =
                [FaultKind::Crash, FaultKind::Partition, FaultKind::PartitionOneWay][r.random_range(0..3)];
            let hit = hosts[r.random_range(0..hosts.len())].clone();
            Fault { at_s, kind, hosts: vec![hit], for_s: Some(r.random_range(1.0..20.0)) }
        })
        .collect();
    let mut sometimes = |p: f64| if r.random_bool(0.3) { r.random_range(0.0..p) } else { 0.0 };
    let network =
        crate::net::NetConfig { loss: sometimes(0.02), duplicate: sometimes(0.02), ..Default::default() };
    // Drawn last, so the rest of a seed's scenario is what it was before
    // policies and the central scheduler were drawn too.
    let placement = PLACEMENTS[r.random_range(0..PLACEMENTS.len())].to_owned();
    let scheduler = if r.random_bool(0.25) {
        Scheduler { kind: SchedulerKind::Centralized, period_s: r.random_range(5.0..30.0) }
    } else {
        Scheduler::default()
    };
    let consolidation = scheduler.kind == SchedulerKind::Distributed;
    Scenario {
        name: format!("check {seed}"),
        duration_s,
        sample_interval_ms: 1000,
        network,
        hypervisor: Default::default(),
        pops,
        arrivals,
        load_changes,
        faults,
        policies: Policies { placement, consolidation, ..Policies::default() },
        scheduler,
    }
}
