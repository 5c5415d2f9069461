//! Whole runs of small scenarios: a seed replays a run byte for byte, and
//! the nodes answer every request and place each VM once.

use locus_sim::{Scenario, World};

const TWO_POPS: &str = include_str!("../../../examples/scenarios/two-pops.toml");

fn run(text: &str, seed: u64) -> (String, Vec<(String, String)>) {
    let scenario = Scenario::parse(text).expect("scenario");
    let mut world = World::new(scenario.clone(), seed).expect("world");
    world.run_until(scenario.duration_s * 1_000_000);
    let placements = world.placements();
    let report = world.run();
    (serde_json::to_string_pretty(&report).expect("json"), placements)
}

#[test]
fn the_same_seed_gives_byte_identical_output_and_another_seed_another_run() {
    let (a, placed_a) = run(TWO_POPS, 42);
    let (b, placed_b) = run(TWO_POPS, 42);
    assert_eq!(a, b);
    assert_eq!(placed_a, placed_b);
    let (c, _) = run(TWO_POPS, 43);
    assert_ne!(a, c, "the seed drives the run");
}

#[test]
fn every_request_is_answered_and_each_vm_placed_once_within_its_fence() {
    let (json, placed) = run(TWO_POPS, 7);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    eprintln!("{json}");
    assert_eq!(report["requested"], 80);
    assert_eq!(report["placed"], 80, "{json}");
    let mut names: Vec<&str> = placed.iter().map(|(vm, _)| vm.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 80, "each VM on one host");
    for (vm, host) in &placed {
        if vm.starts_with("b1-") {
            assert!(host.starts_with("berlin"), "{vm} on {host}: the DE fence");
        }
    }
}

#[test]
fn changing_loads_overload_hosts_and_rebalancing_relieves_them_by_live_migration() {
    let text = include_str!("../../../examples/scenarios/overload.toml");
    let (json, placed) = run(text, 3);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(report["placed"], 48, "{json}");
    let (overloads, migrations) = (report["overloads"].as_u64(), report["migrations"].as_u64());
    assert!(overloads.is_some_and(|o| o > 0) && migrations.is_some_and(|m| m > 0), "{json}");
    assert_eq!(report["overloads_unsolved"], 0, "{json}");
    let mut names: Vec<&str> = placed.iter().map(|(vm, _)| vm.as_str()).collect();
    names.dedup();
    assert_eq!(names.len(), 48, "each VM on one host after its moves");
}

#[test]
fn after_a_crash_and_a_partition_heal_every_vm_runs_once_recorded_by_its_host() {
    let text = include_str!("../../../examples/scenarios/faults.toml");
    for seed in 0..5 {
        let scenario = Scenario::parse(text).expect("scenario");
        let mut world = World::new(scenario.clone(), seed).expect("world");
        world.run_until(scenario.duration_s * 1_000_000);
        let problems = world.unsettled();
        let report = world.run();
        assert!(problems.is_empty(), "seed {seed}: {problems:#?}\n{report:#?}");
        assert_eq!((report.placed, report.faults), (30, 4), "seed {seed}");
        assert!(report.node_events.get("evacuated").is_some_and(|&n| n > 0), "seed {seed}: {report:#?}");
    }
}

#[test]
fn the_checker_passes_a_modest_number_of_seeds() {
    // `locus sim --check --seeds 2000` runs many more.
    let failures: Vec<_> = (0..100).filter_map(|seed| locus_sim::check::check(seed).err()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_central_scheduler_relieves_overloads_while_the_agents_start_no_rebalancing_of_their_own() {
    let text = include_str!("../../../examples/scenarios/overload.toml").to_owned()
        + "[policies]\nconsolidation = false\n[scheduler]\nkind = \"centralized\"\nperiod-s = 30\n";
    let scenario = Scenario::parse(&text).expect("scenario");
    let mut world = World::new(scenario.clone(), 3).expect("world");
    world.run_until(scenario.duration_s * 1_000_000);
    assert_eq!(world.unsettled(), Vec::<String>::new());
    let report = world.run();
    assert_eq!((report.scheduler, report.central_rounds, report.central_failures), ("centralized", 10, 0));
    assert!(report.overloads > 0 && report.central_moves > 0 && report.migrations > 0, "{report:#?}");
    assert!(!report.node_events.contains_key("rebalance"), "only the scheduler plans: {report:#?}");
}

#[test]
fn green_placement_with_consolidation_draws_less_grid_power_than_spread_and_keeps_every_bound() {
    let text = include_str!("../../../examples/scenarios/green.toml");
    let mut green = Scenario::parse(text).expect("scenario");
    // The first hour: every VM has arrived and emptied hosts have gone to standby.
    green.duration_s = 3_600;
    let spread = Scenario {
        policies: locus_sim::scenario::Policies {
            placement: "spread".into(),
            consolidation: false,
            ..Default::default()
        },
        ..green.clone()
    };
    let (g, s) = (World::new(green, 1).expect("world").run(), World::new(spread, 1).expect("world").run());
    for r in [&g, &s] {
        assert_eq!((r.placed, r.jurisdiction_violations, r.outside_latency_bound), (160, 0, 0), "{r:#?}");
        assert!(r.energy.kwh > 0.0 && r.energy.renewable_kwh > 0.0, "{r:#?}");
    }
    assert!(g.node_events.get("power").is_some_and(|&n| n > 0), "hosts emptied go to standby: {g:#?}");
    assert!(!s.node_events.contains_key("power"), "spread leaves no host empty");
    assert!(g.energy.grid_kwh < s.energy.grid_kwh * 0.9, "{:?} against {:?}", g.energy, s.energy);
    assert!(g.energy.carbon_kg < s.energy.carbon_kg, "{:?} against {:?}", g.energy, s.energy);
}

#[test]
fn a_burst_entering_every_agent_of_a_pop_at_once_is_placed_without_refusals() {
    // 200 creates a second into 32 agents: every placer's view shows the same
    // hosts emptiest until the next summaries, so first choices collide.
    let text = r#"
        name = "burst"
        duration-s = 20
        [[pops]]
        name = "site"
        jurisdiction = "FR"
        lat = 47.22
        lon = -1.55
        hosts = 32
        vcpus = 16
        cpus = 8
        memory-mib = 32768
        [[arrivals]]
        at-s = 1
        count = 320
        every-ms = 5
        vcpus = 1
        memory-mib = 1024
    "#;
    let (json, placed) = run(text, 1);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!((report["placed"].as_u64(), report["refused"].as_u64()), (Some(320), Some(0)), "{json}");
    assert_eq!(placed.len(), 320);
}

#[test]
fn the_webassembly_components_metered_by_fuel_replay_byte_for_byte_and_decide_as_the_native_builds() {
    let wasm = format!(
        "{}\n[policies]\nruntime = \"wasm\"\n",
        include_str!("../../../examples/scenarios/overload.toml")
    );
    let (a, placed_a) = run(&wasm, 5);
    let (b, placed_b) = run(&wasm, 5);
    assert_eq!((&a, &placed_a), (&b, &placed_b), "fuel, not the clock, times the decisions");
    let report: serde_json::Value = serde_json::from_str(&a).expect("json");
    assert_eq!((report["runtime"].as_str(), report["placed"].as_u64()), (Some("wasm"), Some(48)), "{a}");
    assert!(report["migrations"].as_u64().is_some_and(|m| m > 0), "the migration component planned: {a}");
    assert!(
        !report["node_events"].as_object().is_some_and(|e| e.contains_key("fell-back")),
        "no failure: {a}"
    );
    // A decision's virtual time follows from the fuel it burnt, not the fixed native 2 ms.
    let (native, _) = run(include_str!("../../../examples/scenarios/overload.toml"), 5);
    let native: serde_json::Value = serde_json::from_str(&native).expect("json");
    assert_ne!(report["placement_ms"], native["placement_ms"], "{a}");
}

#[test]
fn the_events_are_counted_by_kind_and_a_calm_host_makes_its_heartbeats_and_probes() {
    let hosts = 64;
    let scenario = locus_sim::scale::scenario(hosts, 120).expect("scenario");
    let report = World::new(scenario, 5).expect("world").run();
    let c = &report.events_by_kind;
    let per_host_s = |n: u64| n as f64 / f64::from(hosts) / report.virtual_s;
    // A heartbeat every 500 ms; a probe a second, each answered.
    assert!((1.9..2.2).contains(&per_host_s(c.timers)), "{c:?}");
    assert!((0.9..1.3).contains(&per_host_s(c.peer_requests)), "{c:?}");
    assert!(c.peer_responses.abs_diff(c.peer_requests) < c.peer_requests / 50, "{c:?}");
    // Two PoPs of 32: each agent hears the other PoP's summaries.
    assert!(c.pop_summaries > 0 && c.host_summaries > c.pop_summaries, "{c:?}");
    assert!((0.45..0.55).contains(&per_host_s(c.samples)), "a sample every 2 s: {c:?}");
    assert!(c.world > 0, "the requests and load changes arriving: {c:?}");
}
