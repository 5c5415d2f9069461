//! The node's side of the overlay: heartbeats, gossip and probes,
//! liveness, and placement across hosts and PoPs.
//!
//! A VM request entering any agent is placed by the PoP's placement policy
//! over the PoP's hosts (this agent's own and its PoP-mates', as their
//! summaries describe them) and carried out on the chosen host: here, or
//! handed to that host's agent, which checks again against its own exact
//! state and refuses what does not fit (so concurrent requests from several
//! agents never overcommit a host; a refused hand-off tries the next host).
//! When the PoP cannot take the request, or its jurisdiction or latency
//! constraints point elsewhere, it is forwarded to the nearest suitable PoP
//! (by measured latency) that has not been asked yet.
//!
//! The policy's answer comes back as an input (see the node's module
//! documentation): until it does, the request waits in `deciding`, and the
//! chosen host is checked again against the model as it is then.

use super::timers::Timer;
use super::{DecisionId, Event, Node, Origin, Output};
use crate::VmRequest;
use crate::cluster::{Gossip, HostSummary, Liveness, PROBE_EVERY, PeerId, Topic, VmDigest, minus};
use crate::filter;
use crate::hypervisor::DomainState;
use crate::model::HostState;
use crate::node::{
    ApiError, ApiErrorKind, ClusterStatus, MemberStatus, OutboundId, PeerRequest, PeerResponse, PopStatus,
    Reply, Size,
};
use crate::pipeline::{DecidedBy, Decision, Outcome, Prepared, Question};
use crate::policy::{ErrorKind, PolicyError, Verdict};
use crate::record::{self, Record};
use locus_sdk::{Placement, Resources};
use std::time::{Duration, Instant};

/// Hosts of this PoP tried for one request before it is forwarded: enough
/// for a burst entering many agents at once, whose first choices collide
/// on the hosts every view shows emptiest (a host found full counts as
/// full in the placer's view until its next summary).
const MAX_HANDOFFS: usize = 5;
/// PoPs a request may visit.
const MAX_POPS: usize = 4;
/// Placements that may wait for the policy at once; more are refused (503)
/// rather than queued without bound.
const MAX_DECIDING: usize = 4096;
/// Answers naming a host that no longer fits before the fallback decides.
const MAX_STALE: u8 = 3;

/// Whether this agent has learnt every PoP from its peers since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BookPull {
    /// Not yet: the next peer connected is asked.
    NotAsked,
    /// Asked the first peer connected, by this request.
    Asked(OutboundId),
    /// Answered. Perhaps before this agent heard the global topic: a
    /// summary published meanwhile would not come again until its PoP's
    /// refresh, and the peer asked may have joined just before. The
    /// publisher of the next PoP summary heard, a speaker that has heard
    /// the topic for a while, is asked again.
    Answered,
    /// Asked again, by this request.
    AskedAgain(OutboundId),
    /// Learnt.
    Done,
}

/// A placement waiting for the policy's answer.
#[derive(Debug, Clone)]
pub(super) struct Deciding {
    /// Who hears the outcome; none for a move the host itself began (a drain).
    origin: Option<Origin>,
    spec: Box<VmRequest>,
    /// A running VM of this host to move, rather than a new one to place.
    moving: bool,
    /// A VM of a dead host created again, with this generation (else 0).
    generation: u64,
    tried: Vec<PeerId>,
    visited: Vec<String>,
    /// Answers so far that named a host that had filled up meanwhile.
    stale: u8,
    /// When the policy was first asked.
    since: Option<Instant>,
    /// From then to its answer (or to the deadline that gave up on it).
    took: Option<Duration>,
}

/// A request sent to another agent and what it is for.
#[derive(Debug, Clone)]
pub(super) struct Outbound {
    origin: Origin,
    purpose: Purpose,
}

#[derive(Debug, Clone)]
pub(super) enum Purpose {
    /// Handed to a PoP-mate's host.
    Execute { spec: Box<VmRequest>, tried: Vec<PeerId>, visited: Vec<String>, generation: u64 },
    /// Forwarded to another PoP; `visited` includes it.
    Forward { spec: Box<VmRequest>, visited: Vec<String> },
    /// Asked where a VM is, or to act on it: the answer is passed on.
    /// Sent where a summary said the VM is, it keeps the request to ask
    /// the overlay's records when that host no longer has it (it moved).
    Relay(Option<Box<PeerRequest>>),
}

/// What a request about a VM is for, sent where the summaries say it is.
pub(super) fn relay(req: &PeerRequest) -> Purpose {
    Purpose::Relay(Some(Box::new(req.clone())))
}

impl Node {
    /// This host as gossiped to its PoP, with its VMs as `vms` describes them.
    pub(super) fn host_summary(&self, vms: VmDigest) -> HostSummary {
        let h = &self.model.hosts[self.host.0 as usize];
        HostSummary {
            peer: self.config.peer.clone(),
            host: self.config.host.name.clone(),
            pop: self.config.pop.name.clone(),
            capacity: h.capacity.into(),
            allocated: h.allocated.into(),
            cpu_milli: h.cpu_milli,
            load_cpu_milli: h.load_cpu_milli,
            load_state: self.load.state(),
            watts: (h.idle_watts, h.max_watts),
            up: h.state != HostState::Down,
            draining: self.moves.draining(),
            standby: self.standby,
            standby_watts: h.standby_watts,
            moving: self.moves.holding_slots(),
            vms,
            images: h.images.clone(),
            seq: 0,
        }
    }

    /// This host's summary goes out now if a VM was placed here or left
    /// (see [`crate::beacon::Beacon::placed`]); comparing the allocation
    /// first keeps the other inputs free of building a summary.
    pub(super) fn summarize_if_placed(&mut self) {
        let allocated = Size::from(self.model.hosts[self.host.0 as usize].allocated);
        if self.beacon.last().is_none_or(|l| l.allocated == allocated) {
            return;
        }
        let own = self.host_summary(self.beacon.digest());
        if let Some(msg) = self.beacon.placed(own, self.vms.names()) {
            self.outputs.push_back(Output::Gossip { topic: Topic::Pop(self.config.pop.name.clone()), msg });
        }
    }

    pub(super) fn heartbeat(&mut self, now: Instant) {
        let period = Duration::from_millis(self.membership.config().heartbeat_ms.max(1));
        self.timers.set(Timer::Heartbeat, now + period);
        let mut changes = self.membership.tick(now);
        let timeout = Duration::from_millis(self.membership.config().suspect_ms);
        for peer in self.probes.overdue(now, timeout) {
            changes.extend(self.probe_failed(now, &peer));
        }
        // The PoP's summary goes out at once when a member's liveness changed.
        let news = !changes.is_empty();
        for t in changes {
            self.member_changed(&t.peer, t.liveness, t.pop == self.config.pop.name);
            if t.liveness == Liveness::Dead {
                self.rebalance_host_dead(now, &t.host, &t.peer);
                self.evacuate_dead(now, &t);
            }
            self.event(Event::Member(t));
        }
        if self.verified_at.is_none_or(|t| now >= t + super::evacuation::VERIFY_AT_LEAST_EVERY) {
            self.verify_copies(now);
        }
        let turn = self.probes.next_turn();
        self.check_copies(turn);
        let own = self.host_summary(self.beacon.digest());
        let speaking =
            self.membership.is_speaker().then(|| self.membership.pop_summary(&own, &self.config.pop));
        if let Some(msg) = self.beacon.host(own, self.vms.names()) {
            self.outputs.push_back(Output::Gossip { topic: Topic::Pop(self.config.pop.name.clone()), msg });
        }
        match speaking {
            None => self.beacon.not_speaker(),
            Some(summary) => {
                let (every, known) = (self.membership.pop_refresh_every(), self.membership.pop_version());
                if let Some(msg) = self.beacon.pop(summary, news, every, known) {
                    if let Gossip::Pop(published) = &msg {
                        // Gossip does not come back to its publisher.
                        self.membership.heard_pop(now, &self.config.peer, published.clone());
                    }
                    self.outputs.push_back(Output::Gossip { topic: Topic::Global, msg });
                }
            }
        }
        if turn.is_multiple_of(PROBE_EVERY)
            && let Some(peer) = self.membership.probe_target(turn / PROBE_EVERY)
            && !self.probes.waiting_for(&peer)
        {
            let id = self.request(peer.clone(), PeerRequest::Ping { seq: self.beacon.seq() });
            self.probes.sent(id, peer, now);
        }
    }

    pub(super) fn gossip(&mut self, now: Instant, from: &PeerId, msg: Gossip) {
        match msg {
            Gossip::Host(summary) => {
                let heard = self.membership.heard_host(now, from, summary);
                if let Some(t) = heard.transition {
                    // A PoP-mate comes (back) into view: this host may be the
                    // one that was away, and its VMs may run elsewhere now;
                    // and it may not have heard this host yet.
                    self.beacon.again();
                    self.verify_copies(now);
                    self.event(Event::Member(t));
                }
                if heard.behind && !self.asked_vms.values().any(|p| p == from) {
                    let id = self.request(from.clone(), PeerRequest::Vms);
                    self.asked_vms.insert(id, from.clone());
                }
                self.learn_host(from);
            }
            Gossip::Suspect { peer, .. } if peer == self.config.peer => self.beacon.again(),
            Gossip::Suspect { peer, seq } => {
                if let Some(t) = self.membership.heard_suspect(now, &peer, seq) {
                    self.member_changed(&t.peer, t.liveness, true);
                    self.event(Event::Member(t));
                }
            }
            Gossip::Pop(summary) => {
                if self.book == BookPull::Answered && *from != self.config.peer {
                    let id = self.request(from.clone(), PeerRequest::Pops);
                    self.book = BookPull::AskedAgain(id);
                }
                let heard = self.membership.heard_pop(now, from, summary);
                self.heard_pop(now, heard);
            }
        }
    }

    /// Acts on a PoP's summary, published or passed on (its own PoP's
    /// tells only the number its summaries reached).
    fn heard_pop(&mut self, now: Instant, heard: crate::cluster::HeardPop) {
        self.beacon.pop_numbered(self.membership.pop_version());
        // Latency to another PoP is measured by ping on a connection to one
        // of its contacts: dialled while unmeasured, each time its summary comes.
        if let Some(peer) = heard.unmeasured {
            self.outputs.push_back(Output::Dial(peer));
        }
        if heard.new {
            // A PoP new here (or back from a partition) may not know this
            // one either. Hosts that join a known PoP ask for every PoP
            // instead (see [`Node::connected`]): were every PoP to speak
            // again whenever one gained a host, each join would cost a
            // summary from every PoP to every agent.
            self.beacon.pop_again();
        }
        if heard.more || heard.transitions.iter().any(|t| t.liveness == Liveness::Alive) {
            // Hosts elsewhere come back: copies made while they were away may meet now.
            self.verify_copies(now);
        }
        for t in heard.transitions {
            self.event(Event::Member(t));
        }
    }

    /// The overlay connected to `peer`: the first peer after this agent
    /// starts is asked for every PoP it knows (see [`BookPull`]).
    /// Summaries of other PoPs otherwise come only when they change or
    /// refresh, every few minutes with many PoPs. An answer that lists none
    /// (the peer knows no more than this agent) leaves the next peer
    /// connected to be asked.
    pub(super) fn connected(&mut self, peer: PeerId) {
        if self.book == BookPull::NotAsked {
            let id = self.request(peer, PeerRequest::Pops);
            self.book = BookPull::Asked(id);
        }
    }

    /// The answer to [`PeerRequest::Pops`], if `id` asked it.
    fn book_answer(&mut self, id: OutboundId, result: &Result<PeerResponse, String>) -> bool {
        let unanswered = match self.book {
            BookPull::Asked(asked) if asked == id => BookPull::NotAsked,
            BookPull::AskedAgain(asked) if asked == id => BookPull::Answered,
            _ => return false,
        };
        self.book = unanswered;
        let (Ok(PeerResponse::Pops(entries)), Some(now)) = (result, self.now) else { return true };
        let mine = &self.config.pop.name;
        if entries.iter().any(|e| e.summary.pop != *mine) {
            self.book = if unanswered == BookPull::NotAsked { BookPull::Answered } else { BookPull::Done };
        }
        for entry in entries.iter().cloned() {
            // Its own PoP's entry tells the number its speaker reached.
            if let Some(heard) = self.membership.heard_from_book(now, entry) {
                self.heard_pop(now, heard);
            }
        }
        true
    }

    /// A PoP-mate probed this agent or answered its probe, naming its
    /// latest summary `seq`: alive, and asked for that summary if missed.
    fn heard_alive(&mut self, now: Instant, from: &PeerId, seq: u64) {
        let heard = self.membership.heard_alive(now, from, seq);
        if let Some(t) = heard.transition {
            // Back from suspicion: copies made meanwhile may meet now.
            self.verify_copies(now);
            self.learn_host(from);
            self.event(Event::Member(t));
        }
        if heard.stale && !self.asked_summary.values().any(|p| p == from) {
            let id = self.request(from.clone(), PeerRequest::Summary);
            self.asked_summary.insert(id, from.clone());
        }
    }

    /// A probe of `peer` went unanswered: suspect it, and say so on the
    /// PoP's topic. Returns the transition for the caller to act on.
    fn probe_failed(&mut self, now: Instant, peer: &PeerId) -> Option<crate::cluster::Transition> {
        let (t, seq) = self.membership.probe_failed(now, peer)?;
        let msg = Gossip::Suspect { peer: peer.clone(), seq };
        self.outputs.push_back(Output::Gossip { topic: Topic::Pop(self.config.pop.name.clone()), msg });
        Some(t)
    }

    /// Keeps a PoP-mate's host in the model as its summary describes it.
    fn learn_host(&mut self, peer: &PeerId) {
        let Some(s) = self.membership.members.get(peer).map(|m| &m.summary) else { return };
        let id = match self.remote_hosts.get(peer) {
            Some(&id) => id,
            None => {
                let added =
                    self.model.add_host(&s.host, &self.config.pop.name, Resources::default(), 0, s.watts);
                match added {
                    Ok(id) => {
                        self.remote_hosts.insert(peer.clone(), id);
                        id
                    }
                    // A host name already taken: the summary is ignored for placement.
                    Err(_) => return,
                }
            }
        };
        let size = |z: Size| Resources::new(z.vcpus, z.memory_mib, z.disk_gib);
        self.model.set_host_capacity(id, size(s.capacity), s.cpu_milli);
        self.model.set_host_usage(id, size(s.allocated), s.load_cpu_milli, s.vms.count);
        let state = match (s.up, s.draining, s.standby) {
            (false, ..) => HostState::Down,
            (true, true, _) => HostState::Draining,
            (true, false, true) => HostState::Standby,
            (true, false, false) => HostState::Up,
        };
        self.model.set_host_state(id, state);
        self.model.set_standby_watts(id, s.standby_watts);
        if self.model.hosts[id.0 as usize].images != s.images {
            self.model.set_images(id, s.images.clone());
        }
    }

    fn member_changed(&mut self, peer: &PeerId, liveness: Liveness, mine: bool) {
        if !mine {
            return;
        }
        if let Some(&id) = self.remote_hosts.get(peer) {
            let state = match liveness {
                Liveness::Alive => HostState::Up,
                Liveness::Suspect => HostState::Draining,
                Liveness::Dead => HostState::Down,
            };
            self.model.set_host_state(id, state);
        }
    }

    // ---- placement across the cluster ----

    /// A create entering the cluster at this agent. Summaries tell the VMs
    /// of this PoP only: when there are other PoPs, the overlay's records
    /// are asked whether the name is taken in one of them while the policy
    /// decides; a decision that comes first waits for the answer.
    pub(super) fn create(&mut self, origin: Origin, spec: Box<VmRequest>) {
        if self.membership.remote_pops().next().is_some() && self.admissible(&spec, 0).is_ok() {
            let name = spec.name.clone();
            if !self.naming.contains_key(&name) {
                self.naming.insert(name.clone(), Vec::new());
                self.outputs.push_back(Output::Locate(name));
            }
        }
        self.route(origin, *spec, Vec::new());
    }

    /// The records answered for a name being created.
    fn named(&mut self, vm: &str, at: Option<&crate::cluster::VmLocation>) {
        if !self.naming.contains_key(vm) || self.confirming.values().any(|v| v == vm) {
            return;
        }
        match at {
            // Recorded in another PoP: its agent says whether it still runs it.
            Some(a) if a.peer != self.config.peer && a.pop != self.config.pop.name => {
                let id = self.request(a.peer.clone(), PeerRequest::Show(vm.to_owned()));
                self.confirming.insert(id, vm.to_owned());
            }
            // Unrecorded, or recorded in this PoP, whose summaries are exact
            // (a record left by a deleted VM): the name is free.
            _ => self.name_checked(vm, None),
        }
    }

    /// Another PoP's agent said whether it runs the VM a create names.
    fn confirmed(&mut self, id: OutboundId, result: &Result<PeerResponse, String>) -> bool {
        let Some(vm) = self.confirming.remove(&id) else { return false };
        let taken = match result {
            Ok(PeerResponse::Refused(e)) if e.kind == ApiErrorKind::NotFound => None,
            Ok(PeerResponse::Vm(s)) => {
                Some(format!("vm {vm:?} already exists (on host {} in PoP {})", s.host, s.pop))
            }
            Ok(other) => Some(format!("vm {vm:?} is recorded elsewhere, whose agent answered {other:?}")),
            Err(e) => {
                Some(format!("vm {vm:?} is recorded on an agent of another PoP that does not answer: {e}"))
            }
        };
        self.name_checked(&vm, taken);
        true
    }

    /// The lookup of a name being created concluded: free, or taken (with
    /// the reason). Parked decisions go on or are refused; when taken,
    /// creates of that name still deciding are refused too.
    fn name_checked(&mut self, vm: &str, taken: Option<String>) {
        let parked = self.naming.remove(vm).unwrap_or_default();
        let Some(why) = taken else {
            return parked.into_iter().for_each(|(d, decision)| self.act_parked(d, decision));
        };
        let mut still: Vec<DecisionId> = self
            .deciding
            .iter()
            .filter(|(_, d)| d.spec.name == vm && d.generation == 0 && !d.moving)
            .map(|(id, _)| *id)
            .collect();
        still.sort_unstable();
        let mut refused: Vec<Option<Origin>> = parked.into_iter().map(|(d, _)| d.origin).collect();
        for id in still {
            self.timers.cancel(&Timer::Decision(id));
            refused.extend(self.deciding.remove(&id).map(|d| d.origin));
        }
        for origin in refused.into_iter().flatten() {
            self.answer(origin, Err(ApiError::new(ApiErrorKind::Conflict, why.clone())));
        }
    }

    /// Places a request: in this PoP if it can, else in the nearest suitable PoP.
    pub(super) fn route(&mut self, origin: Origin, spec: VmRequest, visited: Vec<String>) {
        if let Err(e) = self.admissible(&spec, 0) {
            return self.answer(origin, Err(e));
        }
        self.place_in_pop(origin, Box::new(spec), Vec::new(), visited, 0);
    }

    pub(super) fn place_in_pop(
        &mut self,
        origin: Origin,
        spec: Box<VmRequest>,
        tried: Vec<PeerId>,
        visited: Vec<String>,
        generation: u64,
    ) {
        self.ask(Deciding {
            origin: Some(origin),
            spec,
            moving: false,
            generation,
            tried,
            visited,
            stale: 0,
            since: None,
            took: None,
        });
    }

    /// Asks the placement policy where a VM of this host should move,
    /// among the PoP's other hosts.
    pub(super) fn ask_move(&mut self, origin: Option<Origin>, spec: Box<VmRequest>, avoid: Vec<PeerId>) {
        let visited = Vec::new();
        self.ask(Deciding {
            origin,
            spec,
            moving: true,
            generation: 0,
            tried: avoid,
            visited,
            stale: 0,
            since: None,
            took: None,
        });
    }

    /// Filters the PoP's hosts for a request and asks the policy to choose,
    /// unless the filters already decided.
    fn ask(&mut self, d: Deciding) {
        match self.prepare(&d.spec, &d.tried, d.moving) {
            Prepared::Done(decision) => self.act(d, decision),
            Prepared::Ask(_) if self.deciding.len() >= MAX_DECIDING => {
                let e = ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!(
                        "{} placements are already waiting for the policy; try again shortly",
                        MAX_DECIDING
                    ),
                );
                self.reply_to(d.origin, Err(e));
            }
            Prepared::Ask(question) => {
                let mut d = d;
                d.since = d.since.or(self.now);
                let id = DecisionId(self.next_decision);
                self.next_decision += 1;
                if let Some(now) = self.now {
                    let timeout = Duration::from_millis(self.config.timing.decision_timeout_ms);
                    self.timers.set(Timer::Decision(id), now + timeout);
                }
                self.deciding.insert(id, d);
                self.outputs.push_back(Output::Decide { id, question });
            }
        }
    }

    /// The filters' view of this PoP for `spec`, leaving out hosts already
    /// tried for it.
    fn prepare(&mut self, spec: &VmRequest, tried: &[PeerId], moving: bool) -> Prepared {
        let mut tried_ids: Vec<_> = tried.iter().filter_map(|p| self.remote_hosts.get(p).copied()).collect();
        if moving {
            tried_ids.push(self.host);
        }
        let saved: Vec<_> = tried_ids.iter().map(|&id| (id, self.model.hosts[id.0 as usize].state)).collect();
        for &id in &tried_ids {
            self.model.set_host_state(id, HostState::Draining);
        }
        let prepared = self.placer.prepare(&self.model, spec);
        for (id, state) in saved {
            self.model.set_host_state(id, state);
        }
        prepared
    }

    /// The policy answered: the answer becomes a decision, acted on if the
    /// chosen host still passes the filters now.
    pub(super) fn decided(
        &mut self,
        id: DecisionId,
        question: &Question,
        answer: Result<Verdict<Placement>, PolicyError>,
    ) {
        let Some(mut d) = self.deciding.remove(&id) else {
            // Timed out and decided by the fallback already.
            return;
        };
        self.timers.cancel(&Timer::Decision(id));
        d.took = self.waited(&d);
        let policy = match &answer {
            Ok(v) => v.decided_by.clone(),
            Err(e) => e.policy.clone(),
        };
        let decision = question.conclude(answer);
        if self.outdated(&d, &decision) {
            d.stale += 1;
            if d.stale < MAX_STALE {
                return self.ask(d);
            }
            let failure = PolicyError::new(
                policy,
                ErrorKind::InvalidDecision,
                format!("chose hosts that filled up before its answer arrived, {MAX_STALE} times"),
            );
            return self.fall_back(d, failure);
        }
        self.act(d, decision);
    }

    /// Acts on a decision parked while its VM's name was looked up, or
    /// decides again when the host it chose filled up meanwhile: creates
    /// decided during the lookup went ahead of it.
    fn act_parked(&mut self, mut d: Deciding, decision: Decision) {
        if d.stale < MAX_STALE && self.outdated(&d, &decision) {
            d.stale += 1;
            return self.ask(d);
        }
        self.act(d, decision);
    }

    /// Whether `decision` chose a host that no longer takes `d`'s VM (it
    /// filled up while the policy ran, or while the name was looked up).
    fn outdated(&self, d: &Deciding, decision: &Decision) -> bool {
        match decision.outcome {
            Outcome::Placed { host } => {
                !self.still_fits(&d.spec, &d.tried, host) || (d.moving && host == self.host)
            }
            Outcome::Rejected { .. } => false,
        }
    }

    /// Whether `host` still passes every filter for `spec` and was not
    /// tried for it already.
    fn still_fits(&self, spec: &VmRequest, tried: &[PeerId], host: crate::HostId) -> bool {
        let tried_here = tried.iter().any(|p| self.remote_hosts.get(p) == Some(&host));
        // A host in standby is offered only when no other could take it.
        let mut resolved = filter::Resolved::new(&self.model, spec);
        resolved.standby = true;
        !tried_here && filter::admits(&self.model, &resolved, host)
    }

    /// Decides with the built-in fallback on the model as it is now.
    fn fall_back(&mut self, d: Deciding, failure: PolicyError) {
        match self.prepare(&d.spec, &d.tried, d.moving) {
            Prepared::Done(decision) => self.act(d, decision),
            Prepared::Ask(q) => {
                let decision = q.conclude(Err(failure));
                self.act(d, decision)
            }
        }
    }

    /// A placement whose answer did not come in time is decided by the fallback.
    pub(super) fn decision_overdue(&mut self, id: DecisionId) {
        if let Some(mut d) = self.deciding.remove(&id) {
            d.took = self.waited(&d);
            let failure = PolicyError::new(
                "placement policy",
                ErrorKind::Deadline,
                format!("no answer within {} ms", self.config.timing.decision_timeout_ms),
            );
            self.fall_back(d, failure);
        }
    }

    /// At shutdown, placements still waiting are refused.
    pub(super) fn abandon_decisions(&mut self) {
        for (id, d) in std::mem::take(&mut self.deciding) {
            self.timers.cancel(&Timer::Decision(id));
            let e = ApiError::new(ApiErrorKind::Unavailable, "the agent is shutting down");
            if d.moving {
                self.move_decided(d.origin, &d.spec.name, Err(e), d.tried);
            } else {
                self.reply_to(d.origin, Err(e));
            }
        }
    }

    /// Carries out a placement decision: here, on a PoP-mate, or elsewhere.
    fn act(&mut self, d: Deciding, decision: Decision) {
        if d.generation == 0 && !d.moving && self.naming.contains_key(&d.spec.name) {
            // Its name is still being looked up in the records.
            if let Some(parked) = self.naming.get_mut(&d.spec.name) {
                parked.push((d, decision));
            }
            return;
        }
        self.record(&d, &decision);
        let Deciding { origin, spec, tried, visited, moving, generation, .. } = d;
        if let DecidedBy::Fallback { failure } = &decision.decided_by {
            self.event(Event::FellBack { vm: spec.name.clone(), failure: failure.to_string() });
        }
        if moving {
            let peer = match decision.outcome {
                Outcome::Placed { host } => self
                    .remote_hosts
                    .iter()
                    .find(|&(_, &id)| id == host)
                    .map(|(p, _)| p.clone())
                    .ok_or_else(|| ApiError::new(ApiErrorKind::Unplaceable, "the chosen host is unknown")),
                Outcome::Rejected { message, .. } => Err(ApiError::new(ApiErrorKind::Unplaceable, message)),
            };
            return self.move_decided(origin, &spec.name, peer, tried);
        }
        let Some(origin) = origin else { return };
        match decision.outcome {
            Outcome::Placed { host } if host == self.host => {
                if let Err(e) = self.create_here(origin, *spec, generation) {
                    self.answer(origin, Err(e));
                }
            }
            Outcome::Placed { host } if tried.len() < MAX_HANDOFFS => {
                let Some(peer) =
                    self.remote_hosts.iter().find(|&(_, &id)| id == host).map(|(p, _)| p.clone())
                else {
                    return self.forward(origin, spec, visited, "the chosen host is unknown".into());
                };
                let to = self.model.hosts[host.0 as usize].name.clone();
                self.event(Event::Handed { vm: spec.name.clone(), to, why: "chosen in this PoP".into() });
                let mut tried = tried;
                tried.push(peer.clone());
                // Reserve the room on our view of that host until its next
                // summary, so requests placed meanwhile see it taken.
                self.reserve(host, &spec, true);
                let req = if generation > 0 {
                    PeerRequest::Evacuate { spec: spec.clone(), generation }
                } else {
                    PeerRequest::Execute(spec.clone())
                };
                self.send(peer, req, origin, Purpose::Execute { spec, tried, visited, generation });
            }
            // A dead host's VM is created again in its PoP or not at all:
            // its users and fences chose that PoP.
            Outcome::Placed { .. } | Outcome::Rejected { .. } if generation > 0 => {
                let why = match decision.outcome {
                    Outcome::Rejected { message, .. } => message,
                    _ => "the hosts of this PoP refused it".into(),
                };
                self.answer(
                    origin,
                    Err(ApiError::new(ApiErrorKind::Unplaceable, format!("vm {}: {why}", spec.name))),
                );
            }
            Outcome::Placed { .. } => {
                self.forward(origin, spec, visited, "hosts of this PoP refused it".into());
            }
            Outcome::Rejected { message, .. } => self.forward(origin, spec, visited, message),
        }
    }

    /// Keeps the record of a decision about to be acted on (see [`Self::act`]).
    fn record(&mut self, d: &Deciding, decision: &Decision) {
        let kind = match (d.moving, d.generation) {
            (true, _) => record::Kind::Move,
            (false, 0) => record::Kind::Placement,
            (false, _) => record::Kind::Evacuation,
        };
        let outcome = match &decision.outcome {
            Outcome::Placed { host } if *host == self.host && !d.moving => "created on this host".to_owned(),
            Outcome::Placed { host } if d.moving => {
                format!("moves to host {}", self.model.hosts[host.0 as usize].name)
            }
            Outcome::Placed { host } if d.tried.len() < MAX_HANDOFFS => {
                format!("handed to host {}", self.model.hosts[host.0 as usize].name)
            }
            Outcome::Placed { .. } if d.generation > 0 => "refused: this PoP's hosts refused it".to_owned(),
            Outcome::Placed { .. } => "this PoP's hosts refused it; forwarded".to_owned(),
            Outcome::Rejected { message, .. } if d.moving || d.generation > 0 => {
                format!("refused: {message}")
            }
            Outcome::Rejected { message, .. } => format!("not in this PoP ({message}); forwarded or refused"),
        };
        let hosts = &self.model.hosts;
        let mut r = Record::of(kind, &d.spec, decision, |h| hosts[h.0 as usize].name.clone(), outcome);
        r.host = self.config.host.name.clone();
        r.pop = self.config.pop.name.clone();
        r.took_us = d.took.map_or(0, |t| t.as_micros() as u64);
        self.outputs.push_back(Output::Record(Box::new(r)));
    }

    /// How long `d` has waited for the policy so far.
    fn waited(&self, d: &Deciding) -> Option<Duration> {
        Some(self.now?.saturating_duration_since(d.since?))
    }

    /// Hands a request to the nearest suitable PoP not asked yet, or refuses it.
    fn forward(
        &mut self,
        origin: Origin,
        spec: Box<VmRequest>,
        mut visited: Vec<String>,
        why_not_here: String,
    ) {
        if !visited.contains(&self.config.pop.name) {
            visited.push(self.config.pop.name.clone());
        }
        let mut options: Vec<(u64, String, PeerId)> = self
            .membership
            .remote_pops()
            .filter(|p| visited.len() < MAX_POPS && !visited.contains(&p.summary.pop))
            .filter(|p| suits(&spec, &p.summary))
            .filter_map(|p| {
                let contact = self.membership.contacts(&p.summary.pop).into_iter().next()?;
                // Measured latency where it is; an estimate from coordinates elsewhere.
                Some((self.membership.latency_us(p), p.summary.pop.clone(), contact))
            })
            .collect();
        options.sort();
        let Some((_, pop, contact)) = options.into_iter().next() else {
            // Alone, with its hypervisor away: say that, not "no room".
            if self.remote_hosts.is_empty()
                && let Err(e) = self.writable()
            {
                return self.answer(origin, Err(e));
            }
            let e = ApiError::new(
                ApiErrorKind::Unplaceable,
                format!(
                    "cannot place {}: {why_not_here} in PoP {}, and no other PoP that was not asked ({}) suits it",
                    spec.name,
                    self.config.pop.name,
                    visited.join(", ")
                ),
            );
            return self.answer(origin, Err(e));
        };
        self.event(Event::Handed { vm: spec.name.clone(), to: format!("PoP {pop}"), why: why_not_here });
        let req = PeerRequest::Forward { spec: spec.clone(), visited: visited.clone() };
        visited.push(pop);
        self.send(contact, req, origin, Purpose::Forward { spec, visited });
    }

    pub(super) fn send(&mut self, to: PeerId, req: PeerRequest, origin: Origin, purpose: Purpose) {
        let id = self.request(to, req);
        self.outbound.insert(id, Outbound { origin, purpose });
    }

    /// Sends a request to another agent; its answer comes with the id.
    pub(super) fn request(&mut self, to: PeerId, req: PeerRequest) -> OutboundId {
        let id = OutboundId(self.next_outbound);
        self.next_outbound += 1;
        self.outputs.push_back(Output::Request { id, to, req });
        id
    }

    fn reply_to(&mut self, origin: Option<Origin>, result: Result<crate::node::Reply, ApiError>) {
        if let Some(origin) = origin {
            self.answer(origin, result);
        }
    }

    pub(super) fn peer_request(&mut self, id: crate::node::InboundId, from: PeerId, req: PeerRequest) {
        let origin = Origin::Peer(id);
        match req {
            PeerRequest::Execute(spec) => {
                if let Err(e) = self.create_here(origin, *spec, 0) {
                    self.answer(origin, Err(e));
                }
            }
            PeerRequest::Evacuate { spec, generation } => {
                if let Err(e) = self.create_here(origin, *spec, generation.max(1)) {
                    self.answer(origin, Err(e));
                }
            }
            PeerRequest::Forward { spec, visited } => {
                if visited.len() > MAX_POPS {
                    let e = ApiError::new(ApiErrorKind::Unplaceable, "visited too many PoPs");
                    return self.answer(origin, Err(e));
                }
                self.route(origin, *spec, visited)
            }
            PeerRequest::Show(name) => {
                let result = self.show(&name);
                self.answer(origin, result);
            }
            PeerRequest::Ping { seq } => {
                if let Some(now) = self.now {
                    self.heard_alive(now, &from, seq);
                }
                let resp = PeerResponse::Pong { seq: self.beacon.seq() };
                self.outputs.push_back(Output::Respond { id, resp });
            }
            PeerRequest::Summary => {
                let resp = match self.beacon.last() {
                    Some(s) => PeerResponse::Summary(Box::new(s.clone())),
                    None => PeerResponse::Refused(ApiError::new(
                        ApiErrorKind::Unavailable,
                        "this agent has not summarized its host yet",
                    )),
                };
                self.outputs.push_back(Output::Respond { id, resp });
            }
            PeerRequest::Pops => {
                let own = self.host_summary(self.beacon.digest());
                let book = self.now.map(|now| self.membership.book(now, &own, &self.config.pop));
                let book = book.unwrap_or_default();
                self.outputs.push_back(Output::Respond { id, resp: PeerResponse::Pops(book) });
            }
            PeerRequest::Vms => {
                let (version, vms) = self.beacon.vms();
                self.outputs.push_back(Output::Respond { id, resp: PeerResponse::Vms { version, vms } });
            }
            other => self.handoff_request(id, from, other),
        }
    }

    pub(super) fn peer_response(&mut self, id: OutboundId, result: Result<PeerResponse, String>) {
        if let Some(peer) = self.probes.answered(id) {
            let Some(now) = self.now else { return };
            match result {
                Ok(PeerResponse::Pong { seq }) => self.heard_alive(now, &peer, seq),
                // An agent that answers otherwise is alive, whatever it knows.
                Ok(_) => {
                    let seq = self.membership.members.get(&peer).map_or(0, |m| m.summary.seq);
                    self.heard_alive(now, &peer, seq);
                }
                Err(_) => {
                    if let Some(t) = self.probe_failed(now, &peer) {
                        self.member_changed(&t.peer, t.liveness, true);
                        self.event(Event::Member(t));
                    }
                }
            }
            return;
        }
        if let Some(peer) = self.asked_summary.remove(&id) {
            // Unanswered, its next probe or answer asks again.
            if let (Ok(PeerResponse::Summary(s)), Some(now)) = (result, self.now) {
                self.gossip(now, &peer, Gossip::Host(std::sync::Arc::new(*s)));
            }
            return;
        }
        if let Some(peer) = self.asked_vms.remove(&id) {
            // Unanswered, the next summary finds the list still behind and asks again.
            if let Ok(PeerResponse::Vms { version, vms }) = result {
                self.membership.heard_vms(&peer, version, vms);
            }
            return;
        }
        if self.book_answer(id, &result)
            || self.confirmed(id, &result)
            || self.protocol_answer(id, &result)
            || self.rebalance_answer(id, &result)
            || self.copy_answer(id, &result)
        {
            return;
        }
        let Some(Outbound { origin, purpose }) = self.outbound.remove(&id) else {
            return;
        };
        match (purpose, result) {
            (_, Ok(PeerResponse::Vm(status))) => self.answer(origin, Ok(Reply::Vm(status))),
            (Purpose::Relay(Some(req)), Ok(PeerResponse::Refused(e))) if e.kind == ApiErrorKind::NotFound => {
                self.locate(origin, *req)
            }
            (Purpose::Relay(_), Ok(PeerResponse::Refused(e))) => self.answer(origin, Err(e)),
            (Purpose::Relay(_), Err(e)) => self
                .answer(origin, Err(ApiError::new(ApiErrorKind::Unavailable, format!("the VM's host: {e}")))),
            (Purpose::Relay(_), Ok(other)) => self.answer(
                origin,
                Err(ApiError::new(ApiErrorKind::Unavailable, format!("the VM's host answered {other:?}"))),
            ),
            // A name taken elsewhere is final; anything else tries the next host or PoP.
            (_, Ok(PeerResponse::Refused(e)))
                if e.kind == ApiErrorKind::Conflict || e.kind == ApiErrorKind::BadRequest =>
            {
                self.answer(origin, Err(e))
            }
            (Purpose::Execute { spec, tried, visited, generation }, result) => {
                if let Some(&host) = tried.last().and_then(|p| self.remote_hosts.get(p)) {
                    match result {
                        // Full, whatever our view said: agents placing at the same
                        // time chose it too. Full it stays until its next summary.
                        Ok(PeerResponse::Refused(e)) if e.kind == ApiErrorKind::Unplaceable => {
                            let h = &self.model.hosts[host.0 as usize];
                            let (capacity, load, count) = (h.capacity, h.load_cpu_milli, h.vm_count);
                            self.model.set_host_usage(host, capacity, load, count);
                        }
                        _ => self.reserve(host, &spec, false),
                    }
                }
                self.place_in_pop(origin, spec, tried, visited, generation)
            }
            (Purpose::Forward { spec, visited }, result) => {
                let why = match result {
                    Ok(PeerResponse::Refused(e)) => e.message,
                    Err(e) => e,
                    Ok(other) => format!("unexpected answer {other:?}"),
                };
                self.forward(origin, spec, visited, why);
            }
        }
    }

    /// Adds (or gives back) a request's size to a PoP-mate's host in the model.
    fn reserve(&mut self, host: crate::HostId, spec: &VmRequest, add: bool) {
        let h = &self.model.hosts[host.0 as usize];
        let (allocated, load, count) = if add {
            (
                h.allocated.plus(spec.size()),
                h.load_cpu_milli.saturating_add(spec.expected_load()),
                h.vm_count + 1,
            )
        } else {
            (
                h.allocated.minus(spec.size()),
                h.load_cpu_milli.saturating_sub(spec.expected_load()),
                h.vm_count.saturating_sub(1),
            )
        };
        self.model.set_host_usage(host, allocated, load, count);
    }

    /// Shows a VM wherever it runs: here, or on the host the summaries name.
    pub(super) fn show_anywhere(&mut self, origin: Origin, name: String) -> Result<Option<Reply>, ApiError> {
        if self.vms.contains_key(&name) {
            return self.show(&name).map(Some);
        }
        match self.membership.find_vm(&name) {
            Some((_, host, pop, Liveness::Dead)) => {
                Ok(Some(Reply::Vm(Box::new(self.lost(&name, host, pop)))))
            }
            Some((peer, ..)) => {
                let req = PeerRequest::Show(name.clone());
                let purpose = relay(&req);
                self.send(peer, req, origin, purpose);
                Ok(None)
            }
            // Not in any summary yet: ask the overlay's records.
            None => {
                self.locate(origin, PeerRequest::Show(name));
                Ok(None)
            }
        }
    }

    /// Passes `req` to the agent the overlay's records name for its VM.
    pub(super) fn locate(&mut self, origin: Origin, req: PeerRequest) {
        let name = match &req {
            PeerRequest::Show(n) | PeerRequest::Migrate { name: n, .. } => n.clone(),
            _ => return,
        };
        let waiting = self.locating.entry(name.clone()).or_default();
        waiting.push((origin, req));
        if waiting.len() == 1 {
            self.outputs.push_back(Output::Locate(name));
        }
    }

    pub(super) fn located(&mut self, vm: String, at: Option<crate::cluster::VmLocation>) {
        self.named(&vm, at.as_ref());
        if let Some(dead) = self.evacuating.remove(&vm) {
            self.evacuate(&vm, &dead, at.clone());
        }
        if self.verifying.remove(&vm) {
            self.verify_copy(&vm, at.clone());
        }
        let peer = at.map(|a| a.peer);
        // Recorded on a dead host of another PoP: lost, as its speaker says.
        let dead = peer.as_ref().and_then(|p| self.membership.remote_dead(p)).cloned();
        for (origin, req) in self.locating.remove(&vm).unwrap_or_default() {
            match (&peer, &dead, &req) {
                (_, Some((host, pop)), PeerRequest::Show(_)) => {
                    let lost = self.lost(&vm, host.clone(), pop.clone());
                    self.answer(origin, Ok(Reply::Vm(Box::new(lost))));
                }
                (_, Some((host, _)), _) => {
                    let why = format!("vm {vm} is on host {host}, which is not alive");
                    self.answer(origin, Err(ApiError::new(ApiErrorKind::Unavailable, why)));
                }
                (Some(p), None, _) if *p != self.config.peer => {
                    self.send(p.clone(), req, origin, Purpose::Relay(None))
                }
                _ => {
                    let e =
                        ApiError::new(ApiErrorKind::NotFound, format!("no vm named {vm:?} in the cluster"));
                    self.answer(origin, Err(e));
                }
            }
        }
    }

    fn lost(&self, name: &str, host: String, pop: String) -> crate::node::VmStatus {
        let mut s = self.status_of(name);
        s.state = DomainState::Lost;
        s.host = host;
        s.pop = pop;
        s.desired = crate::intent::Desired::Running;
        s.spec.name = name.to_owned();
        s
    }

    pub(super) fn cluster_status(&self) -> ClusterStatus {
        let own = self.host_summary(VmDigest { count: self.vms.len() as u32, ..VmDigest::default() });
        let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1000.0);
        let mut hosts = vec![MemberStatus {
            peer: own.peer.to_string(),
            host: own.host.clone(),
            pop: own.pop.clone(),
            liveness: Liveness::Alive,
            free: Some(minus(own.capacity, own.allocated)),
            rtt_ms: None,
            vms: own.vms.count,
            load: Some(own.load_state),
        }];
        for (peer, m) in self.membership.members_in_order() {
            hosts.push(MemberStatus {
                peer: peer.to_string(),
                host: m.summary.host.clone(),
                pop: m.summary.pop.clone(),
                liveness: m.liveness,
                free: Some(minus(m.summary.capacity, m.summary.allocated)),
                rtt_ms: ms(m.rtt),
                vms: m.summary.vms.count,
                load: Some(m.summary.load_state),
            });
        }
        let mine = self.membership.pop_summary(&own, &self.config.pop);
        let mut pops = vec![PopStatus {
            pop: mine.pop.clone(),
            jurisdiction: mine.jurisdiction.clone(),
            hosts_alive: mine.alive,
            hosts: mine.hosts,
            free: mine.free,
            rtt_ms: None,
            speaker: if self.membership.is_speaker() { own.peer.to_string() } else { String::new() },
            location: mine.location,
            renewable_watts: mine.renewable_watts,
            carbon_g_per_kwh: mine.carbon_g_per_kwh,
        }];
        for p in self.membership.pops_by_name() {
            let s = &p.summary;
            pops.push(PopStatus {
                pop: s.pop.clone(),
                jurisdiction: s.jurisdiction.clone(),
                hosts_alive: s.alive,
                hosts: s.hosts,
                free: s.free,
                rtt_ms: ms(self.membership.rtt_to(&p.summary)),
                speaker: p.speaker.to_string(),
                location: s.location,
                renewable_watts: s.renewable_watts,
                carbon_g_per_kwh: s.carbon_g_per_kwh,
            });
            // Other PoPs' hosts are counted, not listed, save the dead.
            for m in &s.dead {
                hosts.push(MemberStatus {
                    peer: m.peer.to_string(),
                    host: m.host.clone(),
                    pop: s.pop.clone(),
                    liveness: m.liveness,
                    free: None,
                    rtt_ms: None,
                    vms: m.vm_count,
                    load: None,
                });
            }
        }
        ClusterStatus { peer: own.peer.to_string(), host: own.host, pop: own.pop, pops, hosts }
    }
}

/// Whether a PoP could take the request, from its summary: jurisdiction,
/// latency to the users (estimated from coordinates) and room on one host.
fn suits(spec: &VmRequest, p: &crate::cluster::PopSummary) -> bool {
    let jurisdiction = spec.jurisdictions.is_empty() || spec.jurisdictions.contains(&p.jurisdiction);
    let latency = match (spec.user, spec.max_latency_us()) {
        (Some(user), Some(max)) => locus_sdk::geo::estimated_rtt_us(user.into(), p.location.into()) <= max,
        _ => true,
    };
    let room = p.largest_free_memory_mib >= spec.memory_mib && p.largest_free_vcpus >= spec.vcpus;
    jurisdiction && latency && room
}
