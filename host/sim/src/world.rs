//! The simulated world: one real `locus_core::Node` per host, each with a
//! simulated hypervisor, joined by the simulated network, in virtual time
//! that jumps to the next due event (ties broken by the order they were
//! scheduled). The node code is the agent's; only its surroundings are
//! modelled: the store never fails, policies answer inline (natively for
//! now) after a fixed virtual delay, and the overlay's records are one map
//! that outlives every node, as the Kademlia store does.

use crate::central;
use crate::deciders::Deciders;
use crate::energy::Energy;
use crate::hypervisor::Hypervisor;
use crate::invariants::{Invariants, Step, over_capacity};
use crate::net::Network;
use crate::queue::Queue;
use crate::report::Report;
use crate::scenario::{FaultKind, Scenario, ScenarioError, SchedulerKind};
use crate::seed::{Rng, Seed};
use crate::series::{MAX_ROWS, Row};
use crate::traffic::{self, Traffic};
use locus_core::VmRequest;
use locus_core::cluster::{PeerId, Topic, VmLocation};
use locus_core::hypervisor::{DomainState, HvCommand, Inventory, MigrationProgress, OpId};
use locus_core::intent::{Change, VmIntent};
use locus_core::node::{
    ApiError, Command, InboundId, Node, NodeConfig, OutboundId, PeerRequest, Reply, ReqId,
};
use locus_core::node::{Input, Output};
use locus_core::request::Location;
use rand::RngExt;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A peer request unanswered for this long fails, as libp2p's does, µs.
const REQUEST_TIMEOUT_US: u64 = 10_000_000;
/// A lookup in the overlay's records, µs.
const LOCATE_US: u64 = 20_000;

/// An input made when it is delivered, so it carries the time it arrives.
type Deliver = Box<dyn FnOnce(Instant) -> Input>;

/// Nodes by number, and their epochs, in 32 bits: hundreds of thousands
/// of these wait in the queue at 10,000 hosts, moved between its buckets
/// as time advances, and this keeps one in half a cache line.
enum Due {
    /// An input for node `.0`, unless it restarted since (`.1` is its epoch).
    Input(u32, u32, Deliver),
    /// A gossip message (its publisher and itself) for node `.0`, unless it
    /// restarted since: one copy shared by every subscriber until delivered.
    Gossip(u32, u32, Rc<(PeerId, locus_core::cluster::Gossip)>),
    /// Node `.0`'s deadline, if it is still the one it asked for.
    Timer(u32, u64),
    /// Node `.0` samples its hypervisor.
    Sample(usize),
    /// Request `.1` of arrival batch `.0` enters the cluster.
    Arrival(usize, u32),
    /// Change `.1` of load-change batch `.0` happens.
    LoadChange(usize, u32),
    /// Fault `.0` happens (`.1`: or is undone).
    Fault(usize, bool),
    /// The first peer request still unanswered may be due to time out.
    RequestTimeouts,
    /// A live migration's copy is done.
    Migrated(u64),
    /// The power meter reads every host and the PoPs' energy supply.
    Meter,
    /// The central scheduler gathers the hosts and plans.
    Central,
}

struct SimNode {
    node: Node,
    /// What it was started with, to start it again.
    config: NodeConfig,
    /// Its intent store, as its writes left it.
    store: BTreeMap<String, VmIntent>,
    /// Its agent runs (its hypervisor always does).
    alive: bool,
    hv: Hypervisor,
    /// Its overlay identity.
    peer: PeerId,
    pop: usize,
    epoch: u32,
    /// The deadline a `Timer` is scheduled for, µs.
    timer_at: Option<u64>,
    /// Its agent put it in standby.
    standby: bool,
}

/// Node `i` of `nodes` runs the life it had at `epoch`.
fn current(nodes: &[SimNode], i: u32, epoch: u32) -> bool {
    let n = &nodes[i as usize];
    n.epoch == epoch && n.alive
}

struct Migration {
    vm: String,
    from: usize,
    to: usize,
    op: OpId,
    epoch: u32,
}

/// A running simulation.
pub struct World {
    scenario: Scenario,
    seed: Seed,
    start: Instant,
    now_us: u64,
    queue: Queue<Due>,
    nodes: Vec<SimNode>,
    peers: HashMap<PeerId, usize>,
    /// Every node, and the nodes of each PoP: who hears each topic.
    everyone: Rc<[usize]>,
    by_pop: Vec<Rc<[usize]>>,
    pop_index: HashMap<String, usize>,
    net: Network,
    traffic: Traffic,
    workload: Rng,
    records: HashMap<String, VmLocation>,
    inbound: HashMap<u64, (usize, u32, OutboundId)>,
    /// Peer requests in the order sent, each with when it times out (in
    /// that order too: the timeout is one for all). One event waits for
    /// the first, not one per request: nearly all are answered first.
    timeouts: VecDeque<(u64, u64)>,
    /// When the event waiting for `timeouts` is due, if one is.
    timeouts_at: Option<u64>,
    next_inbound: u64,
    next_req: u64,
    /// Requests sent to the nodes: when, and to which node, for the
    /// placement latency (a crash of that node ends them: its client's
    /// connection breaks).
    asked: HashMap<ReqId, (u64, usize)>,
    /// Requests sent through [`World::command`], and their answers once come.
    answers: HashMap<ReqId, Option<Result<Reply, ApiError>>>,
    migrations: HashMap<u64, Migration>,
    next_migration: u64,
    /// The policies, and how long they take to answer.
    deciders: Deciders,
    /// What the hosts draw and what their PoPs are supplied with.
    energy: Energy,
    /// The run over time, a row every `row_every_us`, and the overlay's
    /// bytes at the last row.
    series: Vec<Row>,
    row_every_us: u64,
    row_bytes: u64,
    report: Report,
    /// Every node event, with its time and host, when asked for.
    trace: Option<Vec<String>>,
    /// What must hold after every step, when checked.
    invariants: Option<Invariants>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World").field("nodes", &self.nodes.len()).field("now_us", &self.now_us).finish()
    }
}

impl World {
    /// A world for `scenario`, every random choice drawn from `seed`; an
    /// error when a host of the scenario cannot be configured.
    pub fn new(scenario: Scenario, seed: u64) -> Result<Self, ScenarioError> {
        scenario.check().map_err(ScenarioError::Invalid)?;
        let seed = Seed(seed);
        let locations: Vec<Location> =
            scenario.pops.iter().map(|p| Location { lat: p.lat, lon: p.lon }).collect();
        let mut nodes = Vec::new();
        let mut peers = HashMap::new();
        for (p, h) in scenario.hosts() {
            let pop = &scenario.pops[p];
            let mut config =
                NodeConfig { peer: PeerId::from(format!("{p:04}-{h:05}")), ..NodeConfig::default() };
            config.pop.name = pop.name.clone();
            config.pop.jurisdiction = pop.jurisdiction.clone();
            config.pop.location = locations[p];
            config.host.name = format!("{}-{h}", pop.name);
            config.host.vcpus = Some(pop.vcpus);
            config.host.memory_mib = Some(pop.memory_mib);
            let e = &pop.energy;
            (config.host.idle_watts, config.host.max_watts) = (e.idle_watts, e.max_watts);
            config.host.standby_watts = e.standby_watts;
            config.pop.renewable_watts = e.renewable_watts.at(0);
            config.pop.carbon_g_per_kwh = e.carbon_g_per_kwh.at(0);
            config.rebalance.enabled = scenario.scheduler.kind == SchedulerKind::Distributed;
            if !scenario.policies.consolidation {
                config.rebalance.consolidate_interval_ms = 0;
            }
            let hv = Hypervisor::new(&config.host.name);
            let peer = config.peer.clone();
            peers.insert(peer.clone(), nodes.len());
            let node = Node::new(config.clone(), vec![])
                .map_err(|e| ScenarioError::Invalid(format!("host {}: {e}", config.host.name)))?;
            let store = BTreeMap::new();
            nodes.push(SimNode {
                node,
                config,
                store,
                alive: true,
                hv,
                peer,
                pop: p,
                epoch: 0,
                timer_at: None,
                standby: false,
            });
        }
        let net = Network::new(scenario.network.clone(), &locations, nodes.len(), seed.stream("network"));
        let report = Report::new(&scenario, seed.0, nodes.len());
        let mut by_pop = vec![Vec::new(); scenario.pops.len()];
        for (i, n) in nodes.iter().enumerate() {
            by_pop[n.pop].push(i);
        }
        let everyone = (0..nodes.len()).collect();
        let by_pop = by_pop.into_iter().map(Rc::from).collect();
        let traffic = Traffic::new(nodes.len());
        let pop_index = scenario.pops.iter().enumerate().map(|(i, p)| (p.name.clone(), i)).collect();
        let energy = Energy::new(&scenario.pops, nodes.iter().map(|n| n.pop));
        let deciders = Deciders::new(&scenario.policies).map_err(ScenarioError::Invalid)?;
        let mut world = World {
            scenario,
            seed,
            start: Instant::now(),
            now_us: 0,
            queue: Queue::default(),
            nodes,
            peers,
            everyone,
            by_pop,
            pop_index,
            traffic,
            net,
            workload: seed.stream("workload"),
            records: HashMap::new(),
            inbound: HashMap::new(),
            timeouts: VecDeque::new(),
            timeouts_at: None,
            next_inbound: 0,
            next_req: 0,
            asked: HashMap::new(),
            answers: HashMap::new(),
            migrations: HashMap::new(),
            next_migration: 0,
            deciders,
            series: Vec::new(),
            row_every_us: 0,
            row_bytes: 0,
            energy,
            report,
            trace: None,
            invariants: None,
        };
        world.boot();
        Ok(world)
    }

    fn boot(&mut self) {
        let mut phases = self.seed.stream("sample-phases");
        let interval = self.scenario.sample_interval_ms * 1000;
        for i in 0..self.nodes.len() {
            self.hypervisor_up(i);
            self.join(i);
            let phase = phases.random_range(0..interval);
            self.at(phase, Due::Sample(i));
        }
        // The first of each batch of arrivals and load changes, and every fault.
        let us = |s: f64| (s * 1e6) as u64;
        let sc = &self.scenario;
        let arrivals = sc.arrivals.iter().enumerate().filter(|(_, a)| a.count > 0);
        let loads = sc.load_changes.iter().enumerate().filter(|(_, l)| l.count > 0);
        let firsts: Vec<(u64, Due)> = (arrivals.map(|(b, a)| (us(a.at_s), Due::Arrival(b, 0))))
            .chain(loads.map(|(b, l)| (us(l.at_s), Due::LoadChange(b, 0))))
            .chain(sc.faults.iter().enumerate().map(|(f, x)| (us(x.at_s), Due::Fault(f, false))))
            .collect();
        for (at, due) in firsts {
            self.at(at, due);
        }
        let interval = self.scenario.sample_interval_ms * 1000;
        let duration = self.scenario.duration_s * 1_000_000;
        self.row_every_us = duration.div_ceil(MAX_ROWS).div_ceil(interval).max(1) * interval;
        self.at(0, Due::Meter);
        if self.scenario.scheduler.kind == SchedulerKind::Centralized {
            self.at(self.central_period_us(), Due::Central);
        }
    }

    fn central_period_us(&self) -> u64 {
        (self.scenario.scheduler.period_s * 1e6) as u64
    }

    fn hypervisor_up(&mut self, i: usize) {
        let n = &self.nodes[i];
        let pop = &self.scenario.pops[n.pop];
        let inventory = Inventory {
            cpus: pop.cpus.unwrap_or(pop.vcpus),
            memory_mib: pop.memory_mib,
            hypervisor: "simulated".into(),
            migration_uri: self.scenario.hypervisor.live_migration.then(|| format!("sim://{i}")),
        };
        let domains = n.hv.observation();
        self.to(i, 0, Box::new(move |now| Input::HypervisorUp { now, inventory, domains }));
    }

    /// Node `i`'s overlay connects to its bootstrap peer: the first node
    /// alive that it reaches, as an agent tries the peers it is configured
    /// with in turn. The connection takes a round trip and a handshake's.
    fn join(&mut self, i: usize) {
        let reachable = |j: &usize| *j != i && self.nodes[*j].alive && self.net.connected(i, *j);
        let Some(j) = (0..self.nodes.len()).find(reachable) else { return };
        let peer = self.nodes[j].peer.clone();
        let delay = 4 * self.net.base_delay_us(self.nodes[i].pop, self.nodes[j].pop);
        self.to(i, delay.max(1), Box::new(move |now| Input::Connected { now, peer }));
    }

    /// Keeps every node event from now on (see [`World::trace`]).
    pub fn with_trace(mut self) -> Self {
        self.trace = Some(Vec::new());
        self
    }

    /// Checks the invariants of every step from now on (see
    /// [`crate::invariants`]); what broke joins [`World::unsettled`].
    pub fn with_checks(mut self) -> Self {
        let timeout = self.nodes.first().map_or(0, |n| n.config.rebalance.event_timeout_ms);
        self.invariants = Some(Invariants::new(self.nodes.len(), timeout));
        self
    }

    /// The node events kept, one line each: virtual seconds, host, event.
    pub fn trace(&self) -> &[String] {
        self.trace.as_deref().unwrap_or_default()
    }

    /// Runs to the scenario's end and says what happened.
    pub fn run(mut self) -> Report {
        self.run_until(self.end_us());
        self.finish()
    }

    /// The virtual time the scenario ends at, µs.
    pub fn end_us(&self) -> u64 {
        self.scenario.duration_s * 1_000_000
    }

    /// What happened up to now, ending the run.
    pub fn finish(mut self) -> Report {
        self.report.outside_latency_bound = self.outside_latency_bound();
        self.report.finish(self.now_us, self.net.lost, &self.traffic);
        self.report
    }

    /// Runs until virtual time `until_us`.
    pub fn run_until(&mut self, until_us: u64) {
        while self.step(until_us) {}
        self.now_us = self.now_us.max(until_us);
    }

    fn fire(&mut self, due: Due) {
        let now = self.instant(self.now_us);
        let counts = &mut self.report.events_by_kind;
        match due {
            Due::Input(i, epoch, deliver) if current(&self.nodes, i, epoch) => {
                let i = i as usize;
                let input = deliver(now);
                *match &input {
                    Input::PeerRequest { .. } => &mut counts.peer_requests,
                    Input::PeerResponse { .. } => &mut counts.peer_responses,
                    Input::Located { .. } => &mut counts.lookups,
                    _ => &mut counts.other_inputs,
                } += 1;
                self.input(i, input);
            }
            Due::Gossip(i, epoch, m) if current(&self.nodes, i, epoch) => {
                let i = i as usize;
                *match &m.1 {
                    locus_core::cluster::Gossip::Host(_) => &mut counts.host_summaries,
                    locus_core::cluster::Gossip::Pop(_) => &mut counts.pop_summaries,
                    locus_core::cluster::Gossip::Suspect { .. } => &mut counts.suspicions,
                } += 1;
                let (from, msg) = (m.0.clone(), m.1.clone());
                self.input(i, Input::Gossip { now, from, msg });
            }
            // Counted among the world's: see `EventCounts::world`.
            Due::Input(..) | Due::Gossip(..) => {}
            Due::Timer(i, at) => {
                let i = i as usize;
                counts.timers += 1;
                if self.nodes[i].timer_at == Some(at) {
                    self.nodes[i].timer_at = None;
                    self.input(i, Input::Timeout(now));
                }
            }
            Due::Sample(i) => {
                self.power(i);
                if self.nodes[i].alive {
                    self.report.events_by_kind.samples += 1;
                    let domains = self.nodes[i].hv.observation();
                    self.input(i, Input::Sampled { now, domains });
                }
                self.at(self.scenario.sample_interval_ms * 1000, Due::Sample(i));
            }
            Due::Meter => self.meter(),
            Due::Central => self.central(),
            Due::Arrival(b, k) => self.arrive(b, k),
            Due::LoadChange(b, k) => self.change_load(b, k),
            Due::Fault(f, undo) => self.fault(f, undo),
            Due::RequestTimeouts => self.time_out(now),
            Due::Migrated(id) => self.land(id),
        }
    }

    /// Fails the peer requests unanswered in time, and waits for the next.
    fn time_out(&mut self, now: Instant) {
        let mut expired = vec![];
        while let Some(&(at, id)) = self.timeouts.front() {
            let waiting = self.inbound.contains_key(&id);
            if waiting && at > self.now_us {
                break;
            }
            self.timeouts.pop_front();
            if let Some(asked) = self.inbound.remove(&id) {
                expired.push(asked);
            }
        }
        self.timeouts_at = self.timeouts.front().map(|&(at, _)| at);
        if let Some(at) = self.timeouts_at {
            self.queue.push(at, Due::RequestTimeouts);
        }
        for (asker, epoch, out) in expired {
            if epoch == self.nodes[asker].epoch {
                let result = Err("request timed out".into());
                self.input(asker, Input::PeerResponse { now, id: out, result });
            }
        }
    }

    /// Request `k` of batch `b` enters at a random host (of its PoP).
    fn arrive(&mut self, b: usize, k: u32) {
        let batch = &self.scenario.arrivals[b];
        let entry = match batch.pop.as_ref().and_then(|p| self.pop_index.get(p)) {
            Some(&p) => self.by_pop[p][self.workload.random_range(0..self.by_pop[p].len())],
            None => self.workload.random_range(0..self.nodes.len()),
        };
        let spec = VmRequest {
            name: format!("b{b}-{k}"),
            vcpus: batch.vcpus,
            memory_mib: batch.memory_mib,
            load_cpu_milli: batch.load_cpu_milli,
            jurisdictions: batch.jurisdictions.clone(),
            user: batch.user,
            max_latency_ms: batch.max_latency_ms,
            ..VmRequest::default()
        };
        let (count, every_ms) = (batch.count, batch.every_ms);
        self.report.requested += 1;
        if self.nodes[entry].alive {
            let req = ReqId(self.next_req);
            self.next_req += 1;
            self.asked.insert(req, (self.now_us, entry));
            let now = self.instant(self.now_us);
            self.input(entry, Input::Api { now, req, cmd: Command::Create(Box::new(spec)) });
        } else {
            // Its agent is down: the client's connection is refused.
            self.report.cut_off += 1;
        }
        if k + 1 < count {
            let gap = self.poisson_gap_us(every_ms);
            self.at(gap, Due::Arrival(b, k + 1));
        }
    }

    /// Change `k` of batch `b`: a running guest drawn at random uses a new amount of CPU.
    fn change_load(&mut self, b: usize, k: u32) {
        let batch = self.scenario.load_changes[b].clone();
        let host = self.workload.random_range(0..self.nodes.len());
        let running: Vec<String> = (self.nodes[host].hv.domains.iter())
            .filter(|(_, d)| d.state == DomainState::Running)
            .map(|(n, _)| n.clone())
            .collect();
        if !running.is_empty() {
            let vm = &running[self.workload.random_range(0..running.len())];
            let milli = batch.draw(&mut self.workload);
            if let Some(d) = self.nodes[host].hv.domains.get_mut(vm) {
                d.cpu_milli = milli.min(d.vcpus * 1000);
            }
        }
        if k + 1 < batch.count {
            let gap = self.poisson_gap_us(batch.every_ms);
            self.at(gap, Due::LoadChange(b, k + 1));
        }
    }

    /// Sends `cmd` to node `i`'s API now, as a client of its agent would;
    /// its answer is kept for [`World::answer`].
    pub fn command(&mut self, i: usize, cmd: Command) -> ReqId {
        let req = ReqId(self.next_req);
        self.next_req += 1;
        self.answers.insert(req, None);
        self.to(i, 0, Box::new(move |now| Input::Api { now, req, cmd }));
        req
    }

    /// The answer to request `req` of [`World::command`], once it came.
    pub fn answer(&self, req: ReqId) -> Option<&Result<Reply, ApiError>> {
        self.answers.get(&req)?.as_ref()
    }

    /// How many hosts the world has (nodes are numbered from 0, PoP by
    /// PoP in the scenario's order).
    pub fn hosts(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s host name.
    pub fn host_name(&self, i: usize) -> &str {
        &self.nodes[i].hv.host
    }

    /// Rebuilds every node with `f` applied to its configuration, before
    /// the run starts (an error when a node refuses the result).
    pub fn configure(mut self, f: impl Fn(&mut NodeConfig)) -> Result<Self, ScenarioError> {
        for n in &mut self.nodes {
            f(&mut n.config);
            n.node = Node::new(n.config.clone(), vec![])
                .map_err(|e| ScenarioError::Invalid(format!("host {}: {e}", n.config.host.name)))?;
        }
        Ok(self)
    }

    /// Creates `spec` on node `i`'s host now, as a hand-off from a
    /// PoP-mate would (no client waits for it).
    pub fn put(&mut self, i: usize, spec: VmRequest) {
        self.next_inbound += 1;
        let (id, from) = (InboundId(self.next_inbound), self.nodes[i].peer.clone());
        let req = PeerRequest::Execute(Box::new(spec));
        self.to(i, 0, Box::new(move |now| Input::PeerRequest { now, from, id, req }));
    }

    /// Fires the next event due no later than `until_us`, if one is (for
    /// checks after every step); false when none is.
    pub fn step(&mut self, until_us: u64) -> bool {
        let Some((at_us, due)) = self.queue.pop_until(until_us) else { return false };
        self.now_us = at_us;
        self.report.events += 1;
        self.fire(due);
        true
    }

    /// Node `i`, as its last input left it (its agent's state while down).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i].node
    }

    /// Whether node `i`'s agent runs.
    pub fn alive(&self, i: usize) -> bool {
        self.nodes[i].alive
    }

    /// The overlay's record of where `vm` runs, if any.
    pub fn record(&self, vm: &str) -> Option<&VmLocation> {
        self.records.get(vm)
    }

    /// Node `i`'s agent, down, loses its intent store (a disk replaced),
    /// and with `new_key` its identity too: it comes back as a new peer.
    pub fn lose_state(&mut self, i: usize, new_key: bool) {
        let n = &mut self.nodes[i];
        n.store.clear();
        if new_key {
            // Its old self is gone: nothing reaches it under that id.
            self.peers.remove(&n.peer);
            n.config.peer = PeerId::from(format!("{}-new-key", n.peer.as_str()));
            n.peer = n.config.peer.clone();
            self.peers.insert(n.peer.clone(), i);
        }
    }

    /// Gives node `i` an input now, as `make` makes it at the time it is
    /// delivered: what no model of the world produces (a sample that
    /// lists a domain as it looked at an awkward moment on a real host).
    pub fn inject(&mut self, i: usize, make: impl FnOnce(Instant) -> Input + 'static) {
        self.to(i, 0, Box::new(make));
    }

    /// Node `i` samples its hypervisor now.
    pub fn sample(&mut self, i: usize) {
        let domains = self.nodes[i].hv.observation();
        self.inject(i, move |now| Input::Sampled { now, domains });
    }

    /// Whether a live migration of `vm` is copying.
    pub fn migrating(&self, vm: &str) -> bool {
        self.migrations.values().any(|m| m.vm == vm)
    }

    /// Node `i`'s hypervisor: its domains as they are.
    pub fn hypervisor(&self, i: usize) -> &Hypervisor {
        &self.nodes[i].hv
    }

    /// Node `i`'s intent store, as its writes left it.
    pub fn store(&self, i: usize) -> &BTreeMap<String, VmIntent> {
        &self.nodes[i].store
    }

    /// Kills node `i`'s agent; its hypervisor and guests go on. Requests
    /// it was answering are cut off, as its clients' connections break.
    pub fn crash(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.alive = false;
        n.epoch += 1;
        n.timer_at = None;
        let before = self.asked.len();
        self.asked.retain(|_, (_, entry)| *entry != i);
        self.report.cut_off += (before - self.asked.len()) as u64;
    }

    /// Starts node `i`'s agent again from the intents it stored.
    pub fn restart(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let intents = n.store.values().cloned().collect();
        // It started with this configuration before, so it starts again
        // (an intent it cannot take is reported, not fatal).
        let Ok(node) = Node::new(n.config.clone(), intents) else { return };
        n.node = node;
        n.alive = true;
        self.hypervisor_up(i);
        self.join(i);
    }

    /// Fault `f` happens, or (`undo`) is undone.
    fn fault(&mut self, f: usize, undo: bool) {
        let fault = self.scenario.faults[f].clone();
        let hit: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| fault.hosts.iter().any(|h| **h == *self.nodes[i].hv.host))
            .collect();
        self.report.faults += 1;
        match (fault.kind, undo) {
            (FaultKind::Crash, false) => hit.into_iter().for_each(|i| self.crash(i)),
            (FaultKind::Crash, true) => hit.into_iter().for_each(|i| self.restart(i)),
            (FaultKind::Partition | FaultKind::PartitionOneWay, false) => {
                self.net.partition(&hit, fault.kind == FaultKind::PartitionOneWay);
            }
            (FaultKind::Partition | FaultKind::PartitionOneWay, true) => self.net.heal(),
        }
        if let (false, Some(d)) = (undo, fault.for_s) {
            self.at((d * 1e6) as u64, Due::Fault(f, true));
        }
    }

    /// Host `i` draws what its load says now.
    fn power(&mut self, i: usize) {
        let n = &self.nodes[i];
        self.energy.host(i, n.pop, &self.scenario.pops, &n.hv, n.standby);
    }

    /// The meter: every PoP's draw over the last interval against its
    /// renewable supply; a PoP whose supply or grid changed tells its agents.
    fn meter(&mut self) {
        let interval = self.scenario.sample_interval_ms * 1000;
        let now = self.instant(self.now_us);
        for p in 0..self.scenario.pops.len() {
            if self.now_us > 0 {
                let (watts, (renewable, carbon)) = self.energy.pop(p);
                self.report.metered(p, watts, renewable, carbon, interval);
            }
            if let Some(supply) = self.energy.supply_changed(p, &self.scenario.pops, self.now_us) {
                let (renewable_watts, carbon_g_per_kwh) = supply;
                for k in 0..self.by_pop[p].len() {
                    let j = self.by_pop[p][k];
                    let pop = &mut self.nodes[j].config.pop;
                    (pop.renewable_watts, pop.carbon_g_per_kwh) = supply;
                    if self.nodes[j].alive {
                        self.input(j, Input::Energy { now, renewable_watts, carbon_g_per_kwh });
                    }
                }
            }
        }
        if self.now_us.is_multiple_of(self.row_every_us) {
            self.row();
        }
        self.at(interval, Due::Meter);
    }

    /// A row of the run's time series, now.
    fn row(&mut self) {
        let (watts, grid) = self.energy.totals();
        let bytes = self.traffic.bytes();
        let per_node_s = (bytes - self.row_bytes) as f64
            / self.nodes.len().max(1) as f64
            / (self.row_every_us as f64 / 1e6);
        self.row_bytes = bytes;
        self.series.push(Row {
            t_s: self.now_us as f64 / 1e6,
            vms: self.nodes.iter().map(|n| n.store.len() as u64).sum(),
            overloaded_hosts: self.report.overloaded_now(),
            standby_hosts: self.nodes.iter().filter(|n| n.standby).count() as u64,
            migrating: self.migrations.len() as u64,
            migrations: self.report.migrations,
            watts,
            grid_watts: grid,
            overlay_bytes_per_node_s: if self.now_us == 0 { 0.0 } else { per_node_s },
        });
    }

    /// The run over time so far.
    pub fn series(&self) -> &[Row] {
        &self.series
    }

    /// Virtual time now, µs.
    pub fn now_us(&self) -> u64 {
        self.now_us
    }

    /// The central scheduler's round: each PoP's live hosts as they
    /// describe themselves, the migration policy over them, and each move
    /// sent to the agent holding the VM. The scheduler sits in the first
    /// PoP: a PoP's moves reach it after the round trip that gathered its
    /// hosts, the policy's time and the way back.
    fn central(&mut self) {
        self.report.central_rounds += 1;
        let mut computing_us = 0;
        for p in 0..self.scenario.pops.len() {
            let holders: Vec<usize> =
                self.by_pop[p].iter().copied().filter(|&j| self.nodes[j].alive).collect();
            let members: Vec<_> = holders.iter().map(|&j| self.nodes[j].node.member_view()).collect();
            let pop = &self.scenario.pops[p];
            let (_, (renewable, carbon)) = self.energy.pop(p);
            let book = locus_core::rebalance::PopBook {
                pops: vec![(
                    pop.name.clone(),
                    pop.jurisdiction.clone(),
                    Location { lat: pop.lat, lon: pop.lon },
                    renewable,
                    carbon,
                )],
                ..Default::default()
            };
            let moves = match central::plan(&members, &book, &self.deciders) {
                Ok((moves, us)) => {
                    // One scheduler plans the PoPs one after another.
                    computing_us += us;
                    moves
                }
                Err(e) => {
                    self.report.central_failures += 1;
                    let line = format!("{}: {e}", pop.name);
                    self.note("central", line);
                    continue;
                }
            };
            let delay = 3 * self.net.base_delay_us(0, p) + computing_us;
            for m in moves {
                self.report.central_moves += 1;
                let req = ReqId(self.next_req);
                self.next_req += 1;
                let cmd = Command::Migrate { name: m.vm, to: Some(m.to) };
                self.to(holders[m.from], delay, Box::new(move |now| Input::Api { now, req, cmd }));
            }
        }
        self.at(self.central_period_us(), Due::Central);
    }

    /// An exponential gap of mean `mean_ms`, µs: the next event of a Poisson process.
    fn poisson_gap_us(&mut self, mean_ms: f64) -> u64 {
        let u: f64 = self.workload.random_range(f64::EPSILON..1.0);
        ((-u.ln() * mean_ms * 1000.0) as u64).max(1)
    }

    fn input(&mut self, i: usize, input: Input) {
        self.nodes[i].node.handle_input(input);
        self.drain(i);
        if let Some(invariants) = &mut self.invariants {
            let n = &self.nodes[i];
            let pop = &self.scenario.pops[n.pop];
            invariants.after(Step {
                node: i,
                host: &n.hv.host,
                now_us: self.now_us,
                capacity: (pop.vcpus, pop.memory_mib),
                store: &n.store,
                rebalancer: n.node.rebalancer(),
            });
        }
    }

    /// Carries out everything node `i` asked for.
    fn drain(&mut self, i: usize) {
        let mut wrote = false;
        loop {
            let now = self.instant(self.now_us);
            match self.nodes[i].node.poll_output() {
                // The simulated store never fails: a round's writes are durable.
                Output::Timeout(_) | Output::Closed if wrote => {
                    wrote = false;
                    self.nodes[i].node.handle_input(locus_core::node::Input::Recorded);
                }
                Output::Timeout(Some(at)) => {
                    let at_us = self.now_us + at.saturating_duration_since(now).as_micros() as u64;
                    let at_us = at_us.max(self.now_us + 1);
                    // One timer per node: a later deadline waits for the one scheduled.
                    if self.nodes[i].timer_at.is_none_or(|t| at_us < t) {
                        self.nodes[i].timer_at = Some(at_us);
                        self.at(at_us - self.now_us, Due::Timer(i as u32, at_us));
                    }
                    break;
                }
                Output::Timeout(None) | Output::Closed => break,
                Output::Persist(change) => {
                    wrote = true;
                    match change {
                        Change::Put(intent) => {
                            let fence = &intent.spec.jurisdictions;
                            let pop = &self.scenario.pops[self.nodes[i].pop];
                            if !fence.is_empty() && !fence.contains(&pop.jurisdiction) {
                                self.report.fence_crossed(&intent.spec.name);
                            }
                            self.nodes[i].store.insert(intent.spec.name.clone(), *intent);
                        }
                        Change::Remove(name) => {
                            self.nodes[i].store.remove(&name);
                        }
                    }
                }
                Output::Hypervisor { op, cmd: HvCommand::MigrateOut { vm, uri, .. } } => {
                    self.migrate(i, op, vm, &uri)
                }
                Output::Hypervisor { op, cmd } => {
                    if let HvCommand::Settle(vm) = &cmd {
                        // The job is aborted: the domain stays where it is.
                        self.migrations.retain(|_, m| !(m.from == i && m.vm == *vm));
                    }
                    let (result, took) = self.nodes[i].hv.run(&cmd, &self.scenario.hypervisor);
                    self.to(i, took, Box::new(move |now| Input::Hypervisor { now, op, result }));
                }
                Output::Gossip { topic, msg } => {
                    let from = self.nodes[i].peer.clone();
                    let (receivers, name_len) = match &topic {
                        Topic::Global => (self.everyone.clone(), "locus/global/1".len()),
                        Topic::Pop(name) => match self.pop_index.get(name) {
                            Some(&p) => (self.by_pop[p].clone(), "locus/pop//1".len() + name.len()),
                            None => continue,
                        },
                    };
                    let kind = match &msg {
                        locus_core::cluster::Gossip::Host(_) => "host-summary",
                        locus_core::cluster::Gossip::Suspect { .. } => "suspicion",
                        locus_core::cluster::Gossip::Pop(_) => "pop-summary",
                    };
                    let bytes = traffic::gossip_copy(name_len, &msg);
                    let shared = Rc::new((from, msg));
                    let copies = traffic::copies(receivers.len());
                    let mut reached = 0;
                    for &j in receivers.iter().filter(|&&j| j != i) {
                        let deliveries = self.net.deliveries(i, self.nodes[i].pop, j, self.nodes[j].pop);
                        if !deliveries.is_empty() {
                            self.traffic.reached(j, bytes * copies);
                            reached += 1;
                        }
                        for delay in deliveries {
                            self.at(delay, Due::Gossip(j as u32, self.nodes[j].epoch, shared.clone()));
                        }
                    }
                    self.traffic.count(kind, reached * copies, reached * bytes * copies);
                }
                Output::Request { id, to, req } => {
                    let from = self.nodes[i].peer.clone();
                    let Some(&j) = self.peers.get(&to).filter(|&&j| self.nodes[j].alive) else {
                        let result = Err("connection refused".to_owned());
                        self.to(i, 1_000, Box::new(move |now| Input::PeerResponse { now, id, result }));
                        continue;
                    };
                    self.next_inbound += 1;
                    let inbound = self.next_inbound;
                    self.inbound.insert(inbound, (i, self.nodes[i].epoch, id));
                    let deadline = self.now_us + REQUEST_TIMEOUT_US;
                    self.timeouts.push_back((deadline, inbound));
                    if self.timeouts_at.is_none() {
                        self.timeouts_at = Some(deadline);
                        self.queue.push(deadline, Due::RequestTimeouts);
                    }
                    if let Some(delay) = self.net.stream(i, self.nodes[i].pop, j, self.nodes[j].pop) {
                        self.traffic.received("request", j, traffic::stream_message(&req), 1);
                        let id = InboundId(inbound);
                        self.to(j, delay, Box::new(move |now| Input::PeerRequest { now, from, id, req }));
                    }
                }
                Output::Respond { id, resp } => {
                    if let locus_core::node::PeerResponse::Refused(e) = &resp {
                        self.note_of(i, format_args!("refused a peer: {e}"));
                    }
                    let Some(&(asker, epoch, out)) = self.inbound.get(&id.0) else { continue };
                    if epoch != self.nodes[asker].epoch {
                        continue;
                    }
                    if let Some(delay) = self.net.stream(i, self.nodes[i].pop, asker, self.nodes[asker].pop) {
                        self.inbound.remove(&id.0);
                        self.traffic.received("response", asker, traffic::stream_message(&resp), 1);
                        let respond = move |now| Input::PeerResponse { now, id: out, result: Ok(resp) };
                        self.to(asker, delay, Box::new(respond));
                    }
                }
                Output::Dial(peer) => {
                    let Some(&j) = self.peers.get(&peer) else { continue };
                    let rtt_us = 2 * self.net.base_delay_us(self.nodes[i].pop, self.nodes[j].pop);
                    let rtt = Duration::from_micros(rtt_us);
                    self.to(i, rtt_us, Box::new(move |now| Input::Rtt { now, peer, rtt }));
                }
                Output::Reply { req, reply } => {
                    if let Err(e) = &reply {
                        self.note_of(i, format_args!("refused: {e}"));
                    }
                    if let Some((at, _)) = self.asked.remove(&req) {
                        let placed = matches!(reply, Ok(Reply::Vm(_)));
                        self.report.answered(placed, self.now_us - at);
                    }
                    if let Some(answer) = self.answers.get_mut(&req) {
                        *answer = Some(reply);
                    }
                }
                Output::Decide { id, question } => {
                    let (answer, us) = self.deciders.place(&question.cluster, &question.request);
                    self.to(i, us, Box::new(move |now| Input::Decided { now, id, question, answer }));
                }
                Output::Plan { id, question } => {
                    let (answer, us) = self.deciders.plan(question.kind, &question.partition);
                    self.to(i, us, Box::new(move |now| Input::Planned { now, id, answer }));
                }
                Output::Locate(vm) => {
                    let at = self.records.get(&vm).cloned().map(Box::new);
                    self.to(i, LOCATE_US, Box::new(move |now| Input::Located { now, vm, at }));
                }
                Output::Announce { vm, at: Some(at) } => {
                    self.records.insert(vm, *at);
                }
                Output::Announce { vm, at: None } => {
                    let me = &self.nodes[i].peer;
                    if self.records.get(&vm).is_some_and(|r| r.peer == *me) {
                        self.records.remove(&vm);
                    }
                }
                Output::Power { standby } => {
                    self.nodes[i].standby = standby;
                    self.power(i);
                }
                // The simulator's report counts decisions its own way.
                Output::Record(_) => {}
                Output::Event(e) => {
                    self.note_of(i, format_args!("{e}"));
                    self.report.event(i, self.now_us, &e);
                }
            }
        }
    }

    /// A live migration from node `from` to the hypervisor at `uri`, timed by the model.
    fn migrate(&mut self, from: usize, op: OpId, vm: String, uri: &str) {
        let to = uri
            .strip_prefix("sim://")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&t| t < self.nodes.len());
        let (Some(to), Some(d)) = (to, self.nodes[from].hv.domains.get(&vm)) else {
            let result = Err(locus_core::hypervisor::HvError {
                kind: locus_core::hypervisor::HvErrorKind::Refused,
                message: format!("cannot migrate {vm} to {uri}"),
            });
            self.to(from, 1_000, Box::new(move |now| Input::Hypervisor { now, op, result }));
            return;
        };
        let hv = &self.scenario.hypervisor;
        let memory = u64::from(d.memory_mib) << 20;
        let dirty = hv.dirty_bytes_per_s_per_vcpu * u64::from(d.cpu_milli) / 1000;
        let time = hv.migration(memory, dirty);
        self.report.migrated(time);
        self.next_migration += 1;
        let epoch = self.nodes[from].epoch;
        self.migrations.insert(self.next_migration, Migration { vm, from, to, op, epoch });
        self.at(time.total_us.max(1), Due::Migrated(self.next_migration));
        // How far it got, once, half way: the agent samples a job four times
        // a second, which shows no more than this and would cost an event
        // per quarter second of every migration at scale.
        let half = time.total_us / 2;
        let progress = MigrationProgress {
            elapsed_ms: half / 1000,
            total_bytes: time.bytes,
            processed_bytes: time.bytes / 2,
            remaining_bytes: time.bytes - time.bytes / 2,
            memory_passes: 1,
            memory_bytes_per_s: self.scenario.hypervisor.bandwidth_bytes_per_s,
            throttle_percent: 0,
        };
        self.to(from, half.max(1), Box::new(move |now| Input::MigrationProgress { now, op, progress }));
    }

    /// A live migration's copy finished: the domain runs at the
    /// destination (still marked as the source's) and is gone from the source.
    fn land(&mut self, id: u64) {
        let Some(m) = self.migrations.remove(&id) else { return };
        let Some(d) = self.nodes[m.from].hv.domains.remove(&m.vm) else { return };
        self.nodes[m.to].hv.domains.insert(m.vm, d);
        if m.epoch == self.nodes[m.from].epoch {
            let op = m.op;
            self.to(
                m.from,
                0,
                Box::new(move |now| Input::Hypervisor { now, op, result: Ok(DomainState::Missing) }),
            );
        }
    }

    /// Keeps a line of the trace, when one is kept: the time, who, what.
    fn note(&mut self, who: &str, what: impl std::fmt::Display) {
        if let Some(t) = &mut self.trace {
            t.push(format!("{:>10.3} {who}: {what}", self.now_us as f64 / 1e6));
        }
    }

    /// [`World::note`] about node `i`'s host.
    fn note_of(&mut self, i: usize, what: std::fmt::Arguments<'_>) {
        if self.trace.is_some() {
            let host = self.nodes[i].hv.host.clone();
            self.note(&host, what);
        }
    }

    /// VMs whose host is farther from their users than they accept, now.
    fn outside_latency_bound(&self) -> u64 {
        let mut outside = 0;
        for n in &self.nodes {
            let pop = &self.scenario.pops[n.pop];
            let at = locus_sdk::Coordinates::from(Location { lat: pop.lat, lon: pop.lon });
            for i in n.store.values() {
                if let (Some(user), Some(bound)) = (i.spec.user, i.spec.max_latency_us())
                    && locus_sdk::geo::estimated_rtt_us(user.into(), at) > bound
                {
                    outside += 1;
                }
            }
        }
        outside
    }

    fn instant(&self, us: u64) -> Instant {
        self.start + Duration::from_micros(us)
    }

    fn to(&mut self, i: usize, delay_us: u64, deliver: Deliver) {
        let epoch = self.nodes[i].epoch;
        self.at(delay_us, Due::Input(i as u32, epoch, deliver));
    }

    fn at(&mut self, delay_us: u64, due: Due) {
        self.queue.push(self.now_us + delay_us, due);
    }

    /// What is wrong once everything has settled: an invariant a checked
    /// step broke (see [`World::with_checks`]), a request never
    /// answered, a fence crossed, a host holding more than it offers, or a
    /// VM whose domain runs on other than one host, recorded by other than
    /// one agent, or by another agent than the one whose host runs it.
    pub fn unsettled(&self) -> Vec<String> {
        let mut problems = self.invariants.as_ref().map(Invariants::problems).unwrap_or_default();
        let mut running: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut recorded: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for n in &self.nodes {
            for (vm, d) in &n.hv.domains {
                if d.state.is_active() {
                    running.entry(vm).or_default().push(&n.hv.host);
                }
            }
            for i in n.store.values() {
                recorded.entry(&i.spec.name).or_default().push(&n.hv.host);
            }
        }
        if !self.asked.is_empty() {
            problems.push(format!("{} request(s) never answered", self.asked.len()));
        }
        for n in &self.nodes {
            let pop = &self.scenario.pops[n.pop];
            for i in n.store.values() {
                let fenced = &i.spec.jurisdictions;
                if !fenced.is_empty() && !fenced.contains(&pop.jurisdiction) {
                    problems.push(format!(
                        "{}: on {} in {}, fenced to {fenced:?}",
                        i.spec.name, n.hv.host, pop.jurisdiction
                    ));
                }
            }
            problems.extend(over_capacity(&n.hv.host, &n.store, (pop.vcpus, pop.memory_mib)));
        }
        for (vm, hosts) in &recorded {
            match running.get(vm) {
                Some(on) if on == hosts && on.len() == 1 => {}
                on => problems.push(format!(
                    "{vm}: recorded on {hosts:?}, running on {:?}",
                    on.cloned().unwrap_or_default()
                )),
            }
        }
        for (vm, on) in running.iter().filter(|(vm, _)| !recorded.contains_key(*vm)) {
            problems.push(format!("{vm}: running on {on:?}, recorded nowhere"));
        }
        problems
    }

    /// Where each VM runs: (VM, host), for checks.
    pub fn placements(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = self
            .nodes
            .iter()
            .flat_map(|n| n.node.intents().map(move |i| (i.spec.name.clone(), n.hv.host.to_string())))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_requests_lost_in_a_partition_time_out_with_one_event_waiting() {
        let scenario = crate::scale::scenario(32, 60).expect("a scale scenario");
        let mut world = World::new(scenario, 7).expect("a world");
        world.run_until(15_000_000);
        // One host cut off: its PoP-mates' probes of it, and its own, are lost.
        world.net.partition(&[0], false);
        world.run_until(20_000_000);
        let lost: Vec<u64> = world.inbound.keys().copied().collect();
        world.run_until(21_000_000);
        let lost: Vec<u64> = lost.into_iter().filter(|id| world.inbound.contains_key(id)).collect();
        assert!(!lost.is_empty(), "requests to and from the host cut off go unanswered");
        world.run_until(20_000_000 + REQUEST_TIMEOUT_US);
        assert!(lost.iter().all(|id| !world.inbound.contains_key(id)), "each timed out");
        // Answered or not, a request is let go by its deadline.
        assert!(world.timeouts.iter().all(|&(at, _)| at > world.now_us));
        assert_eq!(
            world.timeouts_at,
            world.timeouts.front().map(|&(at, _)| at),
            "one event waits for the first"
        );
    }
}
