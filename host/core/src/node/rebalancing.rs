//! The node's side of cooperative rebalancing: it feeds its
//! [`Rebalancer`](crate::rebalance::Rebalancer) the host's load, the
//! protocol's messages and the policy's plans, and carries out what it
//! asks — joins and leaves over the overlay, plan questions to the policy
//! workers, and the plan's moves through the hand-off protocol.

use super::timers::Timer;
use super::{Event, Node, Origin, Output};
use crate::cluster::{Liveness, PeerId};
use crate::intent::Desired;
use crate::node::{ApiError, InboundId, OutboundId, PeerRequest, PeerResponse, Reply};
use crate::rebalance::{Action, EventId, EventKind, JoinAnswer, MemberView, MemberVm, PopBook};
use crate::record::{self, Record};
use crate::{PolicyError, Verdict};
use locus_sdk::Migration;
use std::collections::HashMap;
use std::time::Instant;

/// A rebalancing message sent and not answered yet.
#[derive(Debug, Clone)]
pub(super) enum Sent {
    Join { event: EventId, host: String },
    Move { vm: String },
    Leave,
}

/// Outbound rebalancing messages and plan moves carried out here.
#[derive(Debug, Default)]
pub(super) struct Outstanding {
    sent: HashMap<OutboundId, Sent>,
    /// Plan moves of VMs of this host, by the id in [`Origin::Plan`].
    local: HashMap<u64, String>,
    next_local: u64,
}

impl Node {
    /// After a load sample: starts an event when the host needs one.
    pub(super) fn maybe_rebalance(&mut self, now: Instant) {
        // The judgement is sustained; the latest sample must agree too (an
        // overload just relieved is still judged so for a few samples).
        let state = self.load.state();
        if self.load.latest() != state {
            return;
        }
        let Some(kind) = self.rebalancer.wants(now, state) else { return };
        let me = self.member_view();
        if kind == EventKind::Consolidate && me.vms.is_empty() {
            return;
        }
        let candidates = self.ring();
        if candidates.is_empty() {
            // Alone: no partition can form.
            return;
        }
        let actions = self.rebalancer.start(now, kind, me, candidates);
        self.act_on(now, actions);
    }

    /// This host as a partition member describes itself (what it answers
    /// a join with; a centralized scheduler gathers the same).
    pub fn member_view(&self) -> MemberView {
        let h = &self.model.hosts[self.host.0 as usize];
        let threshold = (f64::from(h.cpu_milli) * f64::from(self.config.load.overload_ratio)) as u32;
        let (mut vms, mut fixed) = (Vec::new(), Vec::new());
        for (name, r) in self.vms.iter() {
            let active = r.state().is_active();
            let demand = if active {
                r.seen.as_ref().and_then(|s| s.cpu_milli).unwrap_or_else(|| r.intent.spec.expected_load())
            } else {
                0
            };
            let v = MemberVm { spec: r.intent.spec.clone(), load_cpu_milli: demand };
            let movable = active
                && r.task.is_none()
                && r.intent.handoff.is_none()
                && r.intent.desired == Desired::Running
                && !self.moves.busy_with(name);
            if movable { vms.push(v) } else { fixed.push(v) }
        }
        MemberView {
            peer: self.config.peer.clone(),
            host: self.config.host.name.clone(),
            pop: self.config.pop.name.clone(),
            capacity: h.capacity.into(),
            cpu_milli: threshold,
            watts: (h.idle_watts, h.max_watts),
            vms,
            fixed,
        }
    }

    /// Hosts to ask, in order: this PoP's ring (by name, starting after
    /// this host), its hosts in standby (woken only if needed), then the
    /// other PoPs' hosts, nearest PoP first.
    fn ring(&self) -> Vec<(PeerId, String)> {
        let me = &self.config.host.name;
        let alive = |standby: bool| {
            let mut hosts: Vec<(PeerId, String)> = self
                .membership
                .members_in_order()
                .into_iter()
                .filter(|(_, m)| m.liveness == Liveness::Alive && m.summary.up && !m.summary.draining)
                .filter(|(_, m)| m.summary.standby == standby)
                .map(|(p, m)| (p.clone(), m.summary.host.clone()))
                .collect();
            hosts.sort_by(|a, b| a.1.cmp(&b.1));
            let split = hosts.iter().position(|(_, h)| h > me).unwrap_or(hosts.len());
            hosts.rotate_left(split);
            hosts
        };
        let mut pop = alive(false);
        pop.extend(alive(true));
        let mut others = self.membership.pops_by_name();
        others.sort_by_key(|p| self.membership.latency_us(p));
        for p in others {
            // Another PoP is reached through the agents its summary names.
            let mut hosts: Vec<(PeerId, String)> =
                p.summary.contacts.iter().map(|c| (c.peer.clone(), c.host.clone())).collect();
            hosts.sort_by(|a, b| a.1.cmp(&b.1));
            pop.extend(hosts);
        }
        pop
    }

    /// The PoPs a partition may span and the latencies measured to them.
    fn pop_book(&self) -> PopBook {
        let c = &self.config.pop;
        let mut book = PopBook::default();
        book.pops.push((
            c.name.clone(),
            c.jurisdiction.clone(),
            c.location,
            c.renewable_watts,
            c.carbon_g_per_kwh,
        ));
        for p in self.membership.pops_by_name() {
            let s = &p.summary;
            book.pops.push((
                s.pop.clone(),
                s.jurisdiction.clone(),
                s.location,
                s.renewable_watts,
                s.carbon_g_per_kwh,
            ));
            if let Some(rtt) = self.membership.rtt_to(&p.summary) {
                book.latency_us.insert(
                    (c.name.clone(), s.pop.clone()),
                    rtt.as_micros().min(u128::from(u32::MAX)) as u32,
                );
            }
        }
        book
    }

    /// Carries out what the rebalancer asks.
    pub(super) fn act_on(&mut self, now: Instant, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Join { to, host, event, kind } => {
                    let id = self.request(to, PeerRequest::Join { event: event.clone(), kind });
                    self.rebalancing.sent.insert(id, Sent::Join { event, host });
                }
                Action::Leave { to, event } => {
                    let id = self.request(to, PeerRequest::Leave { event });
                    self.rebalancing.sent.insert(id, Sent::Leave);
                }
                Action::Plan { id, question } => self.outputs.push_back(Output::Plan { id, question }),
                Action::Move { event, policy, vm, from, from_host, to } => {
                    self.record_plan_move(&event, policy, &vm, &from_host, &to);
                    if from_host == self.config.host.name {
                        self.rebalancing.next_local += 1;
                        let k = self.rebalancing.next_local;
                        self.rebalancing.local.insert(k, vm.clone());
                        if let Some(e) = self.migrate(Origin::Plan(k), vm.clone(), Some(to)) {
                            self.rebalancing.local.remove(&k);
                            let more = self.rebalancer.move_done(now, &vm, Err(e.message));
                            self.act_on(now, more);
                        }
                    } else {
                        let id = self.request(from, PeerRequest::Migrate { name: vm.clone(), to: Some(to) });
                        self.rebalancing.sent.insert(id, Sent::Move { vm });
                    }
                }
                Action::Report(line) => self.event(Event::Rebalance(line)),
                Action::Ended(report) => self.event(Event::Rebalanced(report)),
            }
        }
        match self.rebalancer.deadline() {
            Some(at) => self.timers.set(Timer::Rebalance, at),
            None => self.timers.cancel(&Timer::Rebalance),
        }
    }

    /// Keeps the record of a move the plan of `event` (led here) asks for.
    fn record_plan_move(&mut self, event: &EventId, policy: String, vm: &str, from: &str, to: &str) {
        let partition = self.rebalancer.partition();
        let at = (self.config.host.name.as_str(), self.config.pop.name.as_str());
        let record = Record {
            request: format!("rebalancing event {event} over [{}]", partition.join(", ")),
            considered: partition.len() as u32,
            decided_by: record::Decider::Policy,
            policy: Some(policy),
            outcome: format!("moves from host {from} to host {to}"),
            ..Record::moved(record::Kind::Rebalancing, vm, to, at)
        };
        self.outputs.push_back(Output::Record(Box::new(record)));
    }

    /// A plan move of a VM of this host ended (its origin was [`Origin::Plan`]).
    pub(super) fn plan_move_ended(&mut self, k: u64, result: &Result<Reply, ApiError>) {
        let Some(vm) = self.rebalancing.local.remove(&k) else { return };
        let now = self.now.unwrap_or_else(Instant::now);
        let result = result.as_ref().map(|_| ()).map_err(|e| e.message.clone());
        let actions = self.rebalancer.move_done(now, &vm, result);
        self.act_on(now, actions);
    }

    /// The policy's plan arrived.
    pub(super) fn planned(
        &mut self,
        now: Instant,
        id: u64,
        answer: Result<Verdict<Vec<Migration>>, PolicyError>,
    ) {
        let actions = self.rebalancer.planned(now, id, answer);
        self.act_on(now, actions);
    }

    /// The rebalancing deadline passed.
    pub(super) fn rebalance_due(&mut self, now: Instant) {
        let actions = self.rebalancer.tick(now);
        self.act_on(now, actions);
    }

    /// A member of this PoP or another was declared dead.
    pub(super) fn rebalance_host_dead(&mut self, now: Instant, host: &str, peer: &PeerId) {
        let actions = self.rebalancer.host_dead(now, host, peer);
        self.act_on(now, actions);
    }

    /// Rebalancing requests from other agents.
    pub(super) fn rebalance_request(&mut self, id: InboundId, from: PeerId, req: PeerRequest) {
        let now = self.now.unwrap_or_else(Instant::now);
        let resp = match req {
            PeerRequest::Join { event, .. } => {
                let moving = !self.moves.idle();
                let (answer, actions) = self.rebalancer.on_join(now, from, event, moving);
                self.act_on(now, actions);
                match answer {
                    JoinAnswer::Joined { also } => {
                        PeerResponse::Joined { view: Box::new(self.member_view()), also }
                    }
                    JoinAnswer::Busy(e) => PeerResponse::Busy(e),
                }
            }
            PeerRequest::Leave { event } => {
                self.rebalancer.on_leave(&event);
                self.act_on(now, vec![]);
                PeerResponse::Done
            }
            _ => return,
        };
        self.outputs.push_back(Output::Respond { id, resp });
    }

    /// The answer to a rebalancing message, if `id` was one.
    pub(super) fn rebalance_answer(&mut self, id: OutboundId, result: &Result<PeerResponse, String>) -> bool {
        let Some(sent) = self.rebalancing.sent.remove(&id) else { return false };
        let now = self.now.unwrap_or_else(Instant::now);
        let actions = match sent {
            Sent::Join { event, host } => {
                let answer = match result {
                    Ok(PeerResponse::Joined { view, also }) => Ok(((**view).clone(), also.clone())),
                    Ok(PeerResponse::Busy(e)) => Err(Some(e.clone())),
                    _ => Err(None),
                };
                self.rebalancer.refresh_me(self.member_view());
                let book = self.pop_book();
                self.rebalancer.join_answer(now, &event, &host, answer, &book)
            }
            Sent::Move { vm } => {
                let r = match result {
                    Ok(PeerResponse::Vm(_)) => Ok(()),
                    Ok(PeerResponse::Refused(e)) => Err(e.message.clone()),
                    Ok(other) => Err(format!("unexpected answer {other:?}")),
                    Err(e) => Err(e.clone()),
                };
                self.rebalancer.move_done(now, &vm, r)
            }
            Sent::Leave => vec![],
        };
        self.act_on(now, actions);
        true
    }
}
