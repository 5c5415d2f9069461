//! A deterministic simulation of several nodes: virtual time that jumps to
//! the next event (ties broken by sequence number), a network with a
//! latency per pair of PoPs, an in-memory hypervisor per host, and node
//! crashes. The same `Node` code the agent runs; proptest supplies the
//! seeds (request sizes, constraints, entry points), so any failure
//! reproduces and shrinks.

use super::tests::{Hv, inventory};
use super::*;
use crate::cluster::{Liveness, PeerId, Topic};
use crate::request::Location;
use crate::{Native, Policy, VmRequest};
use locus_sdk::{Cluster, Placement, PlacementPolicy, Request};
use proptest::prelude::*;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

struct MostFree;

impl PlacementPolicy for MostFree {
    fn place(cluster: &Cluster, _: &Request) -> Placement {
        let hosts = &cluster.hosts;
        match (0..hosts.len() as u32).max_by_key(|&r| hosts.free(r as usize).memory_mib) {
            Some(row) => Placement::on(row),
            None => Placement::reject(locus_sdk::RejectReason::NoCapacity, "none"),
        }
    }
}

/// (name, jurisdiction, lat, lon)
/// Virtual time a placement policy takes to answer, µs.
const DECIDE_US: u64 = 2_000;

const POPS: [(&str, &str, f32, f32); 3] =
    [("paris", "FR", 48.86, 2.35), ("berlin", "DE", 52.52, 13.40), ("madrid", "ES", 40.42, -3.70)];

/// One-way latency between PoPs, µs; inside a PoP 200 µs.
fn one_way_us(a: usize, b: usize) -> u64 {
    if a == b { 200 } else { 5_000 + 2_000 * (a + b) as u64 }
}

enum Due {
    Input(usize, Box<Input>),
    Timer(usize),
}

struct SimNode {
    node: Node,
    hv: Hv,
    pop: usize,
    alive: bool,
}

struct Sim {
    start: Instant,
    now_us: u64,
    seq: u64,
    queue: BinaryHeap<(Reverse<u64>, Reverse<u64>, usize)>,
    dues: HashMap<usize, Due>,
    nodes: Vec<SimNode>,
    /// In-flight peer requests: inbound id → (asking node, its outbound id).
    inbound: HashMap<u64, (usize, OutboundId)>,
    next_inbound: u64,
    answers: HashMap<ReqId, Result<Reply, ApiError>>,
}

impl Sim {
    fn new(per_pop: usize) -> Sim {
        let start = Instant::now();
        let mut nodes = vec![];
        for (p, (name, jurisdiction, lat, lon)) in POPS.iter().enumerate() {
            for h in 0..per_pop {
                let mut config =
                    NodeConfig { peer: PeerId(format!("peer-{p}-{h}")), ..NodeConfig::default() };
                config.pop.name = (*name).into();
                config.pop.jurisdiction = (*jurisdiction).into();
                config.pop.location = Location { lat: *lat, lon: *lon };
                config.host.name = format!("{name}-{h}");
                config.host.vcpus = Some(4);
                config.host.memory_mib = Some(4096);
                let node = Node::new(config, vec![]).expect("node");
                nodes.push(SimNode { node, hv: Hv::default(), pop: p, alive: true });
            }
        }
        let mut sim = Sim {
            start,
            now_us: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            dues: HashMap::new(),
            nodes,
            inbound: HashMap::new(),
            next_inbound: 0,
            answers: HashMap::new(),
        };
        for i in 0..sim.nodes.len() {
            let domains = sim.nodes[i].hv.observation();
            sim.at(
                0,
                Due::Input(i, Box::new(Input::HypervisorUp { now: start, inventory: inventory(), domains })),
            );
        }
        sim
    }

    fn instant(&self, us: u64) -> Instant {
        self.start + Duration::from_micros(us)
    }

    fn at(&mut self, delay_us: u64, due: Due) {
        self.seq += 1;
        let to = match &due {
            Due::Input(i, _) | Due::Timer(i) => *i,
        };
        self.dues.insert(self.seq as usize, due);
        self.queue.push((Reverse(self.now_us + delay_us), Reverse(self.seq), to));
    }

    /// Runs until virtual time `until_us`.
    fn run(&mut self, until_us: u64) {
        while let Some(&(Reverse(t), Reverse(seq), i)) = self.queue.peek() {
            if t > until_us {
                break;
            }
            self.queue.pop();
            self.now_us = t;
            let Some(due) = self.dues.remove(&(seq as usize)) else { continue };
            if !self.nodes[i].alive {
                continue;
            }
            let now = self.instant(t);
            let input = match due {
                Due::Input(_, input) => *input,
                Due::Timer(_) => Input::Timeout(now),
            };
            self.nodes[i].node.handle_input(input);
            self.drain(i);
        }
        self.now_us = until_us;
    }

    fn drain(&mut self, i: usize) {
        let mut wrote = false;
        loop {
            let now = self.instant(self.now_us);
            match self.nodes[i].node.poll_output() {
                // The simulated store never fails: a round's writes are durable.
                Output::Timeout(_) | Output::Closed if wrote => {
                    wrote = false;
                    self.nodes[i].node.handle_input(Input::Recorded);
                }
                Output::Timeout(Some(at)) => {
                    let delay = at.saturating_duration_since(now).as_micros() as u64;
                    self.at(delay.max(1), Due::Timer(i));
                    break;
                }
                Output::Timeout(None) | Output::Closed => break,
                Output::Hypervisor { op, cmd } => {
                    let result = self.nodes[i].hv.run(&cmd);
                    self.at(500, Due::Input(i, Box::new(Input::Hypervisor { now, op, result })));
                }
                Output::Gossip { topic, msg } => {
                    let from = self.nodes[i].node.config.peer.clone();
                    for j in 0..self.nodes.len() {
                        let subscribed = match &topic {
                            Topic::Global => true,
                            Topic::Pop(p) => self.nodes[j].node.config.pop.name == *p,
                        };
                        if j != i && subscribed {
                            let delay = one_way_us(self.nodes[i].pop, self.nodes[j].pop);
                            let input = Input::Gossip { now, from: from.clone(), msg: msg.clone() };
                            self.at(delay, Due::Input(j, Box::new(input)));
                        }
                    }
                }
                Output::Request { id, to, req } => {
                    let from = self.nodes[i].node.config.peer.clone();
                    let j = self.index(&to);
                    if !self.nodes[j].alive {
                        let result = Err("connection refused".to_owned());
                        self.at(1_000, Due::Input(i, Box::new(Input::PeerResponse { now, id, result })));
                        continue;
                    }
                    self.next_inbound += 1;
                    self.inbound.insert(self.next_inbound, (i, id));
                    let input = Input::PeerRequest { now, from, id: InboundId(self.next_inbound), req };
                    self.at(one_way_us(self.nodes[i].pop, self.nodes[j].pop), Due::Input(j, Box::new(input)));
                }
                Output::Respond { id, resp } => {
                    if let Some((asker, out)) = self.inbound.remove(&id.0) {
                        let delay = one_way_us(self.nodes[i].pop, self.nodes[asker].pop);
                        let input = Input::PeerResponse { now, id: out, result: Ok(resp) };
                        self.at(delay, Due::Input(asker, Box::new(input)));
                    }
                }
                Output::Dial(peer) => {
                    let j = self.index(&peer);
                    let rtt = Duration::from_micros(2 * one_way_us(self.nodes[i].pop, self.nodes[j].pop));
                    self.at(rtt.as_micros() as u64, Due::Input(i, Box::new(Input::Rtt { now, peer, rtt })));
                }
                Output::Reply { req, reply } => {
                    self.answers.insert(req, reply);
                }
                // Answered after a while, as the agent's workers would: other
                // inputs (and other answers) may come first.
                Output::Decide { id, question } => {
                    let policy = Native::placement::<MostFree>("most-free");
                    let answer = policy.place(&question.cluster, &question.request);
                    let input = Input::Decided { now, id, question, answer };
                    self.at(DECIDE_US, Due::Input(i, Box::new(input)));
                }
                Output::Locate(vm) => {
                    let peer = self
                        .nodes
                        .iter()
                        .find(|n| n.node.vms.contains_key(&vm))
                        .map(|n| n.node.config.peer.clone());
                    self.at(2_000, Due::Input(i, Box::new(Input::Located { now, vm, peer })));
                }
                Output::Persist(_) => wrote = true,
                Output::Event(_) | Output::Announce { .. } => {}
            }
        }
    }

    fn index(&self, peer: &PeerId) -> usize {
        self.nodes.iter().position(|n| n.node.config.peer == *peer).expect("known peer")
    }

    fn ask(&mut self, i: usize, req: u64, cmd: Command) {
        let now = self.instant(self.now_us);
        self.at(0, Due::Input(i, Box::new(Input::Api { now, req: ReqId(req), cmd })));
    }

    /// Where each VM was defined, by host name.
    fn placements(&self) -> HashMap<String, Vec<String>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for n in &self.nodes {
            for vm in n.hv.domains.keys() {
                out.entry(vm.clone()).or_default().push(n.node.config.host.name.clone());
            }
        }
        out
    }

    fn check_no_overcommit(&self) {
        for n in &self.nodes {
            let h = &n.node.model.hosts[n.node.host.0 as usize];
            assert!(
                h.allocated.vcpus <= h.capacity.vcpus && h.allocated.memory_mib <= h.capacity.memory_mib,
                "{} overcommitted: {:?} of {:?}",
                h.name,
                h.allocated,
                h.capacity
            );
            let defined: u32 = n.hv.domains.len() as u32;
            assert!(defined * 1024 <= 4096, "{} runs {defined} VMs of 1 GiB on 4 GiB", h.name);
        }
    }
}

fn vm(name: String) -> VmRequest {
    VmRequest { name, vcpus: 1, memory_mib: 1024, ..VmRequest::default() }
}

fn placed_on(sim: &Sim, req: u64) -> Option<(String, String)> {
    match sim.answers.get(&ReqId(req)) {
        Some(Ok(Reply::Vm(s))) => Some((s.host.clone(), s.pop.clone())),
        _ => None,
    }
}

#[test]
fn nodes_converge_then_place_by_jurisdiction_and_latency_across_pops() {
    let mut sim = Sim::new(3);
    sim.run(3_000_000);
    for n in &sim.nodes {
        let m = &n.node.membership;
        assert_eq!(m.pops.len(), 2, "{} knows the other PoPs", n.node.config.host.name);
        assert_eq!(m.members.values().filter(|m| m.liveness == Liveness::Alive).count(), 2);
        assert!(m.pops.values().all(|p| p.rtt.is_some()), "latency to every PoP is measured");
    }
    // FR only, entering a Berlin agent: lands in Paris.
    let mut fr = vm("fr-only".into());
    fr.jurisdictions = vec!["FR".into()];
    sim.ask(3, 1, Command::Create(Box::new(fr)));
    // Users in Madrid within 5 ms, entering a Paris agent: lands in Madrid.
    let mut near = vm("near-madrid".into());
    near.user = Some(Location { lat: 40.4, lon: -3.7 });
    near.max_latency_ms = Some(5.0);
    sim.ask(0, 2, Command::Create(Box::new(near)));
    // Nowhere suits: refused with the reason.
    let mut nowhere = vm("tokyo-only".into());
    nowhere.jurisdictions = vec!["JP".into()];
    sim.ask(0, 3, Command::Create(Box::new(nowhere)));
    sim.run(4_000_000);
    assert_eq!(placed_on(&sim, 1).map(|p| p.1), Some("paris".to_owned()), "{:?}", sim.answers.get(&ReqId(1)));
    assert_eq!(
        placed_on(&sim, 2).map(|p| p.1),
        Some("madrid".to_owned()),
        "{:?}",
        sim.answers.get(&ReqId(2))
    );
    match sim.answers.get(&ReqId(3)) {
        Some(Err(e)) => assert_eq!(e.kind, ApiErrorKind::Unplaceable, "{e}"),
        other => panic!("tokyo-only: {other:?}"),
    }
    // Shown from any agent, once two heartbeats have carried the news.
    sim.run(5_000_000);
    sim.ask(8, 4, Command::Show("fr-only".into()));
    sim.run(5_500_000);
    assert_eq!(placed_on(&sim, 4).map(|p| p.1), Some("paris".to_owned()));
}

#[test]
fn a_crashed_node_is_declared_dead_everywhere_with_its_vms_lost() {
    let mut sim = Sim::new(3);
    sim.run(3_000_000);
    sim.ask(4, 1, Command::Create(Box::new(vm("doomed".into()))));
    sim.run(4_500_000);
    let host = placed_on(&sim, 1).expect("placed").0;
    let victim = sim.nodes.iter().position(|n| n.node.config.host.name == host).expect("victim");
    sim.nodes[victim].alive = false;
    // Dead after 3 s of silence; a heartbeat and a hop later everyone knows.
    let dead_by = 4_500_000 + 3_000_000 + 1_500_000;
    sim.run(dead_by);
    let victim_peer = sim.nodes[victim].node.config.peer.clone();
    for (i, n) in sim.nodes.iter().enumerate().filter(|(i, _)| *i != victim) {
        let status = n.node.cluster_status();
        let seen = status.hosts.iter().find(|h| h.peer == victim_peer.0).expect("listed");
        assert_eq!(seen.liveness, Liveness::Dead, "node {i} sees {host} dead");
    }
    let other = (victim + 4) % sim.nodes.len();
    sim.ask(other, 2, Command::Show("doomed".into()));
    sim.run(dead_by + 100_000);
    match sim.answers.get(&ReqId(2)) {
        Some(Ok(Reply::Vm(s))) => assert_eq!(s.state, DomainState::Lost),
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Many requests at once, entering random agents: every one is answered,
    /// no host takes more than it has, no VM runs twice.
    #[test]
    fn concurrent_requests_never_overcommit_and_are_all_answered(
        entries in proptest::collection::vec((0usize..9, 0usize..4), 20..60),
    ) {
        let mut sim = Sim::new(3);
        sim.run(3_000_000);
        for (k, (entry, fence)) in entries.iter().enumerate() {
            let mut r = vm(format!("vm{k}"));
            if *fence < 3 {
                r.jurisdictions = vec![POPS[*fence].1.to_owned()];
            }
            sim.ask(*entry, k as u64, Command::Create(Box::new(r)));
        }
        sim.run(8_000_000);
        sim.check_no_overcommit();
        prop_assert_eq!(sim.answers.len(), entries.len(), "every request answered");
        for (vm, hosts) in sim.placements() {
            prop_assert_eq!(hosts.len(), 1, "{} defined on {:?}", vm, hosts);
        }
        let placed = sim.answers.values().filter(|a| a.is_ok()).count();
        prop_assert_eq!(placed, sim.placements().len(), "what was answered placed is what runs");
        for (k, (_, fence)) in entries.iter().enumerate() {
            if let (Some((_, pop)), true) = (placed_on(&sim, k as u64), *fence < 3) {
                prop_assert_eq!(pop.as_str(), POPS[*fence].0, "fence of vm{} respected", k);
            }
        }
        // A refusal is justified: the PoPs the request allowed were (nearly) full.
        let mut per_pop = [0usize; 3];
        for hosts in sim.placements().values() {
            let pop = POPS.iter().position(|p| hosts[0].starts_with(p.0)).expect("pop");
            per_pop[pop] += 1;
        }
        for (k, (_, fence)) in entries.iter().enumerate() {
            if placed_on(&sim, k as u64).is_none() {
                let used: usize = if *fence < 3 { per_pop[*fence] } else { per_pop.iter().sum::<usize>() / 3 };
                prop_assert!(used >= 10, "vm{} refused while its PoPs held {:?} of 12 each", k, per_pop);
            }
        }
    }
}
