//! Nodes driven by hand through their API in a small world of three PoPs
//! (Paris, Berlin, Madrid; three hosts of 4 vCPUs and 4 GiB each): what a
//! client sees when it asks any agent, with crashes.

use locus_core::cluster::Liveness;
use locus_core::hypervisor::DomainState;
use locus_core::intent::Handoff;
use locus_core::node::{ApiErrorKind, Command, HostStatus, Reply, ReqId};
use locus_core::request::{Location, RestartPolicy};
use locus_core::{VmRequest, node::ClusterStatus};
use locus_sim::{Scenario, World};
use proptest::prelude::*;

/// The PoPs: name, jurisdiction.
const POPS: [(&str, &str); 3] = [("paris", "FR"), ("berlin", "DE"), ("madrid", "ES")];

/// Three PoPs of `HOSTS` hosts each.
const WORLD: &str = r#"
name = "three pops, driven by hand"
duration-s = 60
[[pops]]
name = "paris"
jurisdiction = "FR"
lat = 48.86
lon = 2.35
hosts = 3
vcpus = 4
memory-mib = 4096
[[pops]]
name = "berlin"
jurisdiction = "DE"
lat = 52.52
lon = 13.40
hosts = 3
vcpus = 4
memory-mib = 4096
[[pops]]
name = "madrid"
jurisdiction = "ES"
lat = 40.42
lon = -3.70
hosts = 3
vcpus = 4
memory-mib = 4096
"#;

/// The scenario with `per_pop` hosts in each PoP.
fn scenario(per_pop: usize) -> Scenario {
    Scenario::parse(&WORLD.replace("hosts = 3", &format!("hosts = {per_pop}"))).expect("scenario")
}

/// The world, converged: every agent knows its PoP-mates and the other PoPs.
fn world(seed: u64) -> World {
    converged(World::new(scenario(3), seed).expect("world"))
}

fn converged(mut world: World) -> World {
    world.run_until(3_000_000);
    world
}

fn vm(name: &str) -> VmRequest {
    VmRequest { name: name.into(), vcpus: 1, memory_mib: 1024, ..VmRequest::default() }
}

fn fenced(name: &str, jurisdiction: &str) -> VmRequest {
    VmRequest { jurisdictions: vec![jurisdiction.into()], ..vm(name) }
}

/// Asks node `i` and runs until its answer is in (at most 2 s).
fn ask(world: &mut World, i: usize, cmd: Command) -> ReqId {
    let req = world.command(i, cmd);
    let until = world.now_us() + 2_000_000;
    while world.answer(req).is_none() && world.now_us() < until {
        world.run_until(world.now_us() + 10_000);
    }
    req
}

/// Where the answer to `req` says its VM is: (host, PoP).
fn placed_on(world: &World, req: ReqId) -> Option<(String, String)> {
    match world.answer(req) {
        Some(Ok(Reply::Vm(s))) => Some((s.host.clone(), s.pop.clone())),
        _ => None,
    }
}

fn cluster(world: &mut World, i: usize) -> ClusterStatus {
    let req = ask(world, i, Command::Cluster);
    match world.answer(req) {
        Some(Ok(Reply::Cluster(c))) => (**c).clone(),
        other => panic!("cluster status of node {i}: {other:?}"),
    }
}

fn node_of(world: &World, host: &str) -> usize {
    (0..world.hosts()).find(|&i| world.host_name(i) == host).expect("a node of that host")
}

#[test]
fn nodes_converge_then_place_by_jurisdiction_and_latency_across_pops() {
    let mut world = world(1);
    for i in 0..world.hosts() {
        let c = cluster(&mut world, i);
        assert_eq!(c.pops.len(), 3, "node {i} knows every PoP: {c:?}");
        assert!(c.pops[1..].iter().all(|p| p.rtt_ms.is_some()), "latency to every PoP is measured: {c:?}");
        let mates =
            c.hosts.iter().filter(|h| h.pop == c.pop && h.host != c.host && h.liveness == Liveness::Alive);
        assert_eq!(mates.count(), 2, "node {i} sees its PoP-mates alive: {c:?}");
    }
    // FR only, entering a Berlin agent: lands in Paris.
    let fr = world.command(3, Command::Create(Box::new(fenced("fr-only", "FR"))));
    // Users in Madrid within 5 ms, entering a Paris agent: lands in Madrid.
    let near = VmRequest {
        user: Some(Location { lat: 40.4, lon: -3.7 }),
        max_latency_ms: Some(5.0),
        ..vm("near-madrid")
    };
    let near = world.command(0, Command::Create(Box::new(near)));
    // Nowhere suits: refused with the reason.
    let nowhere = world.command(0, Command::Create(Box::new(fenced("tokyo-only", "JP"))));
    world.run_until(4_000_000);
    assert_eq!(placed_on(&world, fr).map(|p| p.1).as_deref(), Some("paris"), "{:?}", world.answer(fr));
    assert_eq!(placed_on(&world, near).map(|p| p.1).as_deref(), Some("madrid"), "{:?}", world.answer(near));
    match world.answer(nowhere) {
        Some(Err(e)) => assert_eq!(e.kind, ApiErrorKind::Unplaceable, "{e}"),
        other => panic!("tokyo-only: {other:?}"),
    }
    // Shown from any agent, once two heartbeats have carried the news.
    world.run_until(5_000_000);
    let shown = ask(&mut world, 8, Command::Show("fr-only".into()));
    assert_eq!(placed_on(&world, shown).map(|p| p.1).as_deref(), Some("paris"), "{:?}", world.answer(shown));
}

#[test]
fn a_name_another_pop_runs_is_refused_while_a_deleted_ones_is_free_again() {
    let mut world = world(2);
    let first = ask(&mut world, 0, Command::Create(Box::new(fenced("taken", "FR"))));
    let (host, pop) = placed_on(&world, first).expect("placed");
    assert_eq!(pop, "paris");
    // Entering Berlin and Madrid agents: no Berlin or Madrid summary names
    // it; the overlay's records and its Paris agent do.
    let again = [3, 6].map(|i| world.command(i, Command::Create(Box::new(vm("taken")))));
    world.run_until(world.now_us() + 1_000_000);
    for req in again {
        match world.answer(req) {
            Some(Err(e)) => {
                assert_eq!(e.kind, ApiErrorKind::Conflict, "{e}");
                assert!(e.message.contains("already exists") && e.message.contains("paris"), "{e}");
            }
            other => panic!("{req:?}: {other:?}"),
        }
    }
    assert_eq!(world.placements().iter().filter(|(v, _)| v == "taken").count(), 1);
    // Deleted, its record may linger (Kademlia replicas) but the name is free.
    let holder = node_of(&world, &host);
    let deleted = ask(&mut world, holder, Command::Delete("taken".into()));
    assert!(matches!(world.answer(deleted), Some(Ok(Reply::Deleted(_)))), "{:?}", world.answer(deleted));
    world.run_until(world.now_us() + 1_000_000);
    let created = ask(&mut world, 3, Command::Create(Box::new(vm("taken"))));
    assert_eq!(
        placed_on(&world, created).map(|p| p.1).as_deref(),
        Some("berlin"),
        "{:?}",
        world.answer(created)
    );
}

#[test]
fn a_crashed_node_is_declared_dead_everywhere_with_its_vms_lost() {
    let mut world = world(3);
    // Restart policy never: it is reported lost, not created again.
    let doomed = VmRequest { restart: RestartPolicy::Never, ..vm("doomed") };
    let req = ask(&mut world, 4, Command::Create(Box::new(doomed)));
    let host = placed_on(&world, req).expect("placed").0;
    let victim = node_of(&world, &host);
    world.crash(victim);
    // Dead after 3 s of silence; a heartbeat and a hop later everyone knows.
    world.run_until(world.now_us() + 4_500_000);
    for i in (0..world.hosts()).filter(|&i| i != victim) {
        let c = cluster(&mut world, i);
        let seen =
            c.hosts.iter().find(|h| h.host == host).unwrap_or_else(|| panic!("node {i} lists {host}: {c:?}"));
        assert_eq!(seen.liveness, Liveness::Dead, "node {i} sees {host} dead");
    }
    let other = (victim + 4) % world.hosts();
    let shown = ask(&mut world, other, Command::Show("doomed".into()));
    match world.answer(shown) {
        Some(Ok(Reply::Vm(s))) => assert_eq!(s.state, DomainState::Lost),
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many requests at once, entering random agents: every one is answered,
    /// no host takes more than it has, no VM runs twice, a fence holds, and
    /// a refusal comes only when the PoPs allowed were (nearly) full.
    #[test]
    fn concurrent_requests_never_overcommit_and_are_all_answered(
        seed in 0u64..1000,
        entries in proptest::collection::vec((0usize..9, 0usize..4), 20..60),
    ) {
        let mut world = world(seed);
        let reqs: Vec<ReqId> = entries
            .iter()
            .enumerate()
            .map(|(k, &(entry, fence))| {
                let name = format!("vm{k}");
                let r = if fence < 3 { fenced(&name, POPS[fence].1) } else { vm(&name) };
                world.command(entry, Command::Create(Box::new(r)))
            })
            .collect();
        world.run_until(8_000_000);
        prop_assert!(reqs.iter().all(|&r| world.answer(r).is_some()), "every request answered");
        let placements = world.placements();
        let mut names: Vec<&str> = placements.iter().map(|(v, _)| v.as_str()).collect();
        names.dedup();
        prop_assert_eq!(names.len(), placements.len(), "each VM on one host: {:?}", placements);
        let placed = reqs.iter().filter(|&&r| matches!(world.answer(r), Some(Ok(_)))).count();
        prop_assert_eq!(placed, placements.len(), "what was answered placed is what runs");
        let mut per_host = std::collections::HashMap::new();
        let mut per_pop = [0usize; 3];
        for (_, host) in &placements {
            *per_host.entry(host.as_str()).or_insert(0) += 1;
            per_pop[POPS.iter().position(|p| host.starts_with(p.0)).expect("a PoP")] += 1;
        }
        prop_assert!(per_host.values().all(|&n| n <= 4), "4 VMs of 1 GiB at most on 4 GiB: {:?}", per_host);
        for (k, &(_, fence)) in entries.iter().enumerate() {
            match placed_on(&world, reqs[k]) {
                Some((_, pop)) if fence < 3 => prop_assert_eq!(pop.as_str(), POPS[fence].0, "fence of vm{}", k),
                Some(_) => {}
                None => {
                    let used = if fence < 3 { per_pop[fence] } else { per_pop.iter().sum::<usize>() / 3 };
                    prop_assert!(
                        used >= 10,
                        "vm{} refused while its PoPs held {:?} of 12 each: {:?}",
                        k,
                        per_pop,
                        world.answer(reqs[k])
                    );
                }
            }
        }
        prop_assert!(world.unsettled().is_empty(), "{:?}", world.unsettled());
    }
}

// ---- moves between hosts ----

/// Creates `name` in Paris (entering node 0) and returns its host's node.
fn create_in_paris(world: &mut World, name: &str) -> usize {
    let req = ask(world, 0, Command::Create(Box::new(fenced(name, "FR"))));
    let host = placed_on(world, req).unwrap_or_else(|| panic!("{name} placed: {:?}", world.answer(req))).0;
    node_of(world, &host)
}

/// Exactly one copy of `vm`: one domain, running and marked as its host's,
/// recorded by that host's agent alone with no hand-off left; returns the
/// host's node.
fn one_copy(world: &World, vm: &str) -> usize {
    let domains: Vec<usize> =
        (0..world.hosts()).filter(|&i| world.hypervisor(i).domains.contains_key(vm)).collect();
    assert_eq!(domains.len(), 1, "{vm}: one domain, found on nodes {domains:?}");
    let holder = domains[0];
    let d = &world.hypervisor(holder).domains[vm];
    assert_eq!(d.owner, world.host_name(holder), "{vm}: its domain is marked as its host's");
    assert_eq!(d.state, DomainState::Running, "{vm} runs");
    let stores: Vec<usize> = (0..world.hosts()).filter(|&i| world.store(i).contains_key(vm)).collect();
    assert_eq!(stores, [holder], "{vm}: recorded by its host's agent alone");
    assert_eq!(world.store(holder)[vm].handoff, None, "{vm}: no hand-off left");
    let held: Vec<String> = world.placements().into_iter().filter(|(v, _)| v == vm).map(|(_, h)| h).collect();
    assert_eq!(held, [world.host_name(holder)], "{vm}: every agent's intents agree where it is");
    holder
}

#[test]
fn the_policy_chooses_when_no_host_is_named_and_bad_moves_are_refused() {
    let mut world = world(4);
    let from = create_in_paris(&mut world, "v");
    // A host in a jurisdiction the VM may not enter; an unknown host; no such VM; itself.
    let here = world.host_name(from).to_owned();
    let refusals = [
        (("v", Some("berlin-0")), ApiErrorKind::Unplaceable, "VMs move within their PoP"),
        (("v", Some("nowhere")), ApiErrorKind::Unplaceable, "no alive host named"),
        (("nope", None), ApiErrorKind::NotFound, "no vm named"),
        (("v", Some(here.as_str())), ApiErrorKind::BadRequest, "already on host"),
    ];
    for ((name, to), kind, says) in refusals {
        let req = ask(&mut world, from, Command::Migrate { name: name.into(), to: to.map(str::to_owned) });
        match world.answer(req) {
            Some(Err(e)) => {
                assert_eq!(e.kind, kind, "{name} to {to:?}: {e}");
                assert!(e.message.contains(says), "{name} to {to:?}: {e}");
            }
            other => panic!("{name} to {to:?}: {other:?}"),
        }
    }
    let moved = ask(&mut world, from, Command::Migrate { name: "v".into(), to: None });
    let to = match world.answer(moved) {
        Some(Ok(Reply::Vm(s))) => s.host.clone(),
        other => panic!("{other:?}"),
    };
    assert!(to.starts_with("paris") && to != here, "{to}");
    world.run_until(world.now_us() + 2_000_000);
    assert_eq!(world.host_name(one_copy(&world, "v")), to);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whichever agent is killed at whatever moment of a move, live or
    /// cold, and however long it stays down, the VM ends with exactly one
    /// running copy, marked as one host's and recorded by that host's agent
    /// alone, within its fence: on either end of the move, or on the PoP's
    /// third host when the one that held it was declared dead meanwhile and
    /// the PoP created it again there.
    #[test]
    fn a_move_survives_either_agent_killed_at_any_moment(
        seed in 0u64..1000,
        live in any::<bool>(),
        kill_source in any::<bool>(),
        kill_after_us in 0u64..400_000,
        down_for_us in prop_oneof![Just(0u64), 0u64..30_000_000],
    ) {
        let mut scenario = scenario(3);
        scenario.hypervisor.live_migration = live;
        let mut world = World::new(scenario, seed).expect("world");
        world.run_until(3_000_000);
        let from = create_in_paris(&mut world, "m");
        let to = if from == 0 { 1 } else { 0 };
        let cmd = Command::Migrate { name: "m".into(), to: Some(world.host_name(to).to_owned()) };
        world.command(from, cmd);
        world.run_until(world.now_us() + kill_after_us);
        let victim = if kill_source { from } else { to };
        world.crash(victim);
        world.run_until(world.now_us() + down_for_us);
        world.restart(victim);
        world.run_until(world.now_us() + 60_000_000);
        let holder = one_copy(&world, "m");
        prop_assert!(world.host_name(holder).starts_with("paris"), "m on {}", world.host_name(holder));
    }
}

fn host_status(world: &mut World, i: usize) -> HostStatus {
    let req = ask(world, i, Command::Host);
    match world.answer(req) {
        Some(Ok(Reply::Host(h))) => (**h).clone(),
        other => panic!("host status of node {i}: {other:?}"),
    }
}

#[test]
fn a_drained_host_empties_onto_its_pop_mates_and_takes_nothing_new() {
    let mut world = world(5);
    for k in 0..3 {
        world.put(0, fenced(&format!("d{k}"), "FR"));
    }
    world.run_until(world.now_us() + 500_000);
    assert_eq!(world.hypervisor(0).domains.len(), 3);
    ask(&mut world, 0, Command::Drain);
    world.run_until(world.now_us() + 5_000_000);
    assert!(world.hypervisor(0).domains.is_empty(), "drained: {:?}", world.hypervisor(0).domains.keys());
    let drain = host_status(&mut world, 0).drain.expect("drain status");
    assert_eq!((drain.total, drain.moved, drain.remaining), (3, 3, 0), "{drain:?}");
    for k in 0..3 {
        assert_ne!(one_copy(&world, &format!("d{k}")), 0);
    }
    // Nothing new lands on it while it drains, though the request enters there.
    let late = ask(&mut world, 0, Command::Create(Box::new(fenced("late", "FR"))));
    let (host, _) = placed_on(&world, late).unwrap_or_else(|| panic!("late: {:?}", world.answer(late)));
    assert_ne!(host, world.host_name(0));
    ask(&mut world, 0, Command::Resume);
    assert_eq!(host_status(&mut world, 0).drain, None);
}

/// Moves under way out of the hosts of nodes `nodes`: VMs whose source's
/// intent says "moving to".
fn moves_out_of(world: &World, nodes: std::ops::Range<usize>) -> usize {
    let leaving =
        |i: usize| world.store(i).values().filter(|r| matches!(r.handoff, Some(Handoff::To { .. }))).count();
    nodes.map(leaving).sum()
}

#[test]
fn a_pops_bound_on_concurrent_migrations_holds_and_every_move_still_ends() {
    // Five hosts each send their two VMs to the next: ten moves, up to five
    // at once by the per-host bounds alone.
    for bound in [2usize, 16] {
        let world = World::new(scenario(5), 6).expect("world");
        let mut world =
            converged(world.configure(|c| c.moves.max_per_pop = bound as u32).expect("configured"));
        for i in 0..5 {
            for k in 0..2 {
                world.put(i, VmRequest { load_cpu_milli: Some(100), ..vm(&format!("m{i}-{k}")) });
            }
        }
        world.run_until(world.now_us() + 500_000);
        let mut moves = vec![];
        for i in 0..5 {
            for k in 0..2 {
                let to = Some(world.host_name((i + 1) % 5).to_owned());
                moves.push((i, k, world.command(i, Command::Migrate { name: format!("m{i}-{k}"), to })));
            }
        }
        let (mut most, until) = (0, world.now_us() + 20_000_000);
        while world.step(until) {
            let now = moves_out_of(&world, 0..5);
            assert!(now <= bound, "{now} moves under way in a PoP bounded to {bound}");
            most = most.max(now);
        }
        for (i, k, req) in moves {
            match world.answer(req) {
                Some(Ok(Reply::Vm(s))) => assert_eq!(s.host, world.host_name((i + 1) % 5)),
                other => panic!("bound {bound}: m{i}-{k}: {other:?}"),
            }
            assert_eq!(one_copy(&world, &format!("m{i}-{k}")), (i + 1) % 5);
        }
        if bound == 2 {
            assert_eq!(most, 2, "the bound is reached, not only kept");
        } else {
            assert!(most > 2, "without a tight bound more moves overlap: {most}");
        }
    }
}
