//! Cooperative rebalancing, sans IO (the DVMS protocol of Quesnel, Lèbre
//! and Südholt, 2013, as Locus runs it).
//!
//! A host whose load stays over its threshold starts an *event* and leads
//! a *partition*: itself at first, then one more host at a time, taken
//! along its PoP's ring (hosts sorted by name, starting after the leader)
//! and, once the PoP is exhausted, from the nearest PoPs by measured
//! latency. After each join the leader asks the migration policy for a
//! plan over the partition's hosts and VMs. A plan that passes the agent's
//! rules and leaves no host of the partition overloaded is carried out
//! (each move by its source's hand-off); then the partition dissolves.
//! An underloaded host runs the same procedure with the consolidation
//! policy at an interval: a valid plan that empties hosts is enough.
//!
//! A host belongs to at most one partition. Events are ordered by a
//! Lamport clock (ties broken by host name), and that order settles every
//! conflict without waiting: a host asked to join while in another
//! partition says it is busy and is skipped, except that the leader of a
//! *younger* event that is not yet carrying out a plan gives way to an
//! *older* one: it dissolves its partition and joins the older one,
//! handing it its former members to ask next (the two partitions merge).
//! Nothing ever waits on another partition, so none can deadlock; every
//! event ends — solved, unsolvable with the reason, or at its deadline —
//! and a member whose leader vanished leaves at the end of its lease.
//!
//! [`Rebalancer`] is the state one host keeps; the node feeds it what
//! happens and carries out the [`Action`]s it returns.

use crate::cluster::PeerId;
use crate::model::Model;
use crate::node::Size;
use crate::request::Location;
use crate::{PolicyError, Verdict, VmRequest};
use locus_sdk::{Migration, Partition, PlanBuilder, Resources};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Outcomes kept for `host status`.
const RECENT: usize = 16;

/// How rebalancing runs (`[rebalance]` in the agent's configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RebalanceConfig {
    /// Whether this host starts events (it always answers others').
    pub enabled: bool,
    /// Longest an event may last, from start to its last move, ms; a
    /// member's lease is as long.
    pub event_timeout_ms: u64,
    /// Most hosts in one partition.
    pub max_partition: usize,
    /// Wait after an event that did not solve its problem before trying
    /// again, ms.
    pub retry_after_ms: u64,
    /// Time between consolidation attempts of an underloaded host, ms
    /// (0: never).
    pub consolidate_interval_ms: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            enabled: true,
            event_timeout_ms: 120_000,
            max_partition: 8,
            retry_after_ms: 30_000,
            consolidate_interval_ms: 300_000,
        }
    }
}

impl RebalanceConfig {
    /// What is wrong with it, if anything.
    pub fn check(&self) -> Result<(), String> {
        if self.max_partition < 2 {
            return Err("rebalance.max-partition must be at least 2".into());
        }
        if self.event_timeout_ms == 0 {
            return Err("rebalance.event-timeout-ms must be positive".into());
        }
        Ok(())
    }
}

/// Names an event; the smaller is the older and wins conflicts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventId {
    /// Lamport time at its start.
    pub clock: u64,
    /// Its leader's host.
    pub host: String,
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.host, self.clock)
    }
}

/// What an event is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// Relieve overloaded hosts (the migration policy).
    Overload,
    /// Empty underloaded hosts (the consolidation policy).
    Consolidate,
}

/// One VM of a member, as its host describes it to a leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberVm {
    /// The VM's request (size, group, fences, latency bound).
    pub spec: VmRequest,
    /// Its CPU demand, milli-CPUs.
    pub load_cpu_milli: u32,
}

/// A host of a partition, as it describes itself when it joins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberView {
    /// Its agent.
    pub peer: PeerId,
    /// Its name.
    pub host: String,
    /// Its PoP.
    pub pop: String,
    /// Allocatable resources.
    pub capacity: Size,
    /// CPU demand above which it is overloaded, milli-CPUs.
    pub cpu_milli: u32,
    /// Idle and full-load power, watts.
    pub watts: (u32, u32),
    /// Its VMs that may move (running, not already moving).
    pub vms: Vec<MemberVm>,
    /// Its VMs that may not move now; they count against its capacity.
    pub fixed: Vec<MemberVm>,
}

/// What the leader knows of the PoPs its partition spans.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopBook {
    /// Each PoP: name, jurisdiction, location, renewable watts, carbon.
    pub pops: Vec<(String, String, Location, u32, u32)>,
    /// Measured round trips between PoPs, µs (estimated where absent).
    pub latency_us: BTreeMap<(String, String), u32>,
}

/// A plan question for the policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanQuestion {
    /// Which policy answers: the migration one or the consolidation one.
    pub kind: EventKind,
    /// The partition.
    pub partition: Partition,
}

/// What the rebalancer asks the node to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Ask `to` to join the event.
    Join {
        /// The agent.
        to: PeerId,
        /// Its host.
        host: String,
        /// The event.
        event: EventId,
        /// Its kind.
        kind: EventKind,
    },
    /// Tell `to` the event is over for it.
    Leave {
        /// The agent.
        to: PeerId,
        /// The event.
        event: EventId,
    },
    /// Ask the policy for a plan; answer with [`Rebalancer::planned`].
    Plan {
        /// Echo in the answer.
        id: u64,
        /// The question.
        question: Box<PlanQuestion>,
    },
    /// Move a VM from its host (a member) to another member.
    Move {
        /// The event whose plan it is.
        event: EventId,
        /// The policy that planned it.
        policy: String,
        /// The VM.
        vm: String,
        /// Its host's agent.
        from: PeerId,
        /// Its host.
        from_host: String,
        /// The destination host.
        to: String,
    },
    /// Something for the log and `host status`.
    Report(String),
    /// The event this host led ended, so.
    Ended(EventReport),
}

/// How an event ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventReport {
    /// The event.
    pub event: EventId,
    /// Its kind.
    pub kind: EventKind,
    /// Hosts in its partition at the end.
    pub partition: Vec<String>,
    /// Moves carried out.
    pub moved: u32,
    /// How long it took, ms.
    pub duration_ms: u64,
    /// Whether it did what it was for.
    pub solved: bool,
    /// How it ended: what was done, or why nothing could be.
    pub outcome: String,
}

/// A host that joined: its view, and the agents it hands over to ask next.
pub type Joined = (MemberView, Vec<(PeerId, String)>);

/// What a host asked to join answers.
#[derive(Debug, Clone, PartialEq)]
pub enum JoinAnswer {
    /// It joined; the leader may also ask these (the members of a younger
    /// event it led, which merged into this one).
    Joined {
        /// Agents and hosts to ask next.
        also: Vec<(PeerId, String)>,
    },
    /// It is in another partition (this event is not older than that one,
    /// or that one is already moving VMs).
    Busy(EventId),
}

#[derive(Debug, Clone)]
enum Phase {
    /// Waiting for this host's answer to a join.
    Joining(String),
    /// Waiting for the policy.
    Planning { id: u64, partition: Box<Partition>, rows: Vec<(String, usize)> },
    /// Carrying out a plan: VMs still moving, and failures.
    Executing { waiting: BTreeMap<String, String>, moved: u32, failures: Vec<String> },
}

#[derive(Debug, Clone)]
struct Leading {
    id: EventId,
    kind: EventKind,
    started: Instant,
    deadline: Instant,
    /// `members[0]` is the leader itself.
    members: Vec<MemberView>,
    candidates: VecDeque<(PeerId, String)>,
    busy: Vec<String>,
    unreachable: Vec<String>,
    plans: u32,
    phase: Phase,
}

/// One host's part in rebalancing: the event it leads, the partition it
/// is a member of, and what ended recently.
#[derive(Debug, Clone)]
pub struct Rebalancer {
    config: RebalanceConfig,
    host: String,
    clock: u64,
    leading: Option<Leading>,
    /// The event this host is a member of, its leader, and the lease's end.
    member_of: Option<(EventId, PeerId, Instant)>,
    not_before: Option<Instant>,
    next_consolidation: Option<Instant>,
    recent: VecDeque<EventReport>,
    next_plan: u64,
}

/// The rebalancing state `host status` shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebalanceStatus {
    /// The event this host leads: what it is doing and its partition.
    pub leading: Option<String>,
    /// The event whose partition this host is in.
    pub member_of: Option<EventId>,
    /// Recent events this host led, newest last.
    pub recent: Vec<EventReport>,
}

impl Rebalancer {
    /// The rebalancer of host `host`.
    pub fn new(config: RebalanceConfig, host: String) -> Self {
        Rebalancer {
            config,
            host,
            clock: 0,
            leading: None,
            member_of: None,
            not_before: None,
            next_consolidation: None,
            recent: VecDeque::new(),
            next_plan: 0,
        }
    }

    /// Whether the host takes part in no event.
    pub fn idle(&self) -> bool {
        self.leading.is_none() && self.member_of.is_none()
    }

    /// The event kind this host should start now, given its load, if any.
    pub fn wants(&mut self, now: Instant, load: crate::load::LoadState) -> Option<EventKind> {
        if !self.config.enabled || !self.idle() || self.not_before.is_some_and(|t| now < t) {
            return None;
        }
        match load {
            crate::load::LoadState::Overloaded => Some(EventKind::Overload),
            crate::load::LoadState::Underloaded if self.config.consolidate_interval_ms > 0 => {
                let interval = Duration::from_millis(self.config.consolidate_interval_ms);
                match self.next_consolidation {
                    None => {
                        // The first attempt waits one interval: a host that
                        // just started is not judged on its first minutes.
                        self.next_consolidation = Some(now + interval);
                        None
                    }
                    Some(t) if now >= t => {
                        self.next_consolidation = Some(now + interval);
                        Some(EventKind::Consolidate)
                    }
                    Some(_) => None,
                }
            }
            _ => None,
        }
    }

    /// Starts an event led by this host, over `me` and then `candidates`
    /// in order.
    pub fn start(
        &mut self,
        now: Instant,
        kind: EventKind,
        me: MemberView,
        candidates: Vec<(PeerId, String)>,
    ) -> Vec<Action> {
        self.clock += 1;
        let id = EventId { clock: self.clock, host: self.host.clone() };
        let deadline = now + Duration::from_millis(self.config.event_timeout_ms);
        let what = match kind {
            EventKind::Overload => "overloaded",
            EventKind::Consolidate => "underloaded",
        };
        let report = format!("event {id}: host {what}; leading a partition");
        self.leading = Some(Leading {
            id,
            kind,
            started: now,
            deadline,
            members: vec![me],
            candidates: candidates.into(),
            busy: Vec::new(),
            unreachable: Vec::new(),
            plans: 0,
            phase: Phase::Joining(String::new()),
        });
        let mut actions = vec![Action::Report(report)];
        actions.extend(self.grow(now));
        actions
    }

    /// Asks the next candidate to join, or ends the event when none is left.
    fn grow(&mut self, now: Instant) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else { return vec![] };
        if l.members.len() >= self.config.max_partition {
            let why = format!("no plan with the partition at its largest ({} hosts)", l.members.len());
            return self.end(now, false, why);
        }
        while let Some((peer, host)) = l.candidates.pop_front() {
            if host == self.host || l.members.iter().any(|m| m.host == host) {
                continue;
            }
            l.phase = Phase::Joining(host.clone());
            return vec![Action::Join { to: peer, host, event: l.id.clone(), kind: l.kind }];
        }
        let mut why = format!("no plan over the {} host(s) that joined", l.members.len());
        if !l.busy.is_empty() {
            why.push_str(&format!("; busy in other events: {}", l.busy.join(", ")));
        }
        if !l.unreachable.is_empty() {
            why.push_str(&format!("; unreachable: {}", l.unreachable.join(", ")));
        }
        self.end(now, false, why)
    }

    /// Another host asks this one to join `event`; `moving` says a VM is
    /// moving to or from this host now. Returns the answer and what to do.
    pub fn on_join(
        &mut self,
        now: Instant,
        leader: PeerId,
        event: EventId,
        moving: bool,
    ) -> (JoinAnswer, Vec<Action>) {
        self.clock = self.clock.max(event.clock);
        let mut actions = Vec::new();
        let mut also = Vec::new();
        if let Some(l) = &self.leading {
            let executing = matches!(l.phase, Phase::Executing { .. });
            if l.id == event {
                return (JoinAnswer::Busy(l.id.clone()), actions);
            }
            if event > l.id || executing || moving {
                return (JoinAnswer::Busy(l.id.clone()), actions);
            }
            // An older event asks: this younger one merges into it.
            also = l.members.iter().skip(1).map(|m| (m.peer.clone(), m.host.clone())).collect();
            actions.push(Action::Report(format!("event {}: merged into the older event {event}", l.id)));
            actions.extend(self.dissolve());
        }
        match &self.member_of {
            Some((e, ..)) if *e != event => return (JoinAnswer::Busy(e.clone()), actions),
            _ => {}
        }
        let lease = now + Duration::from_millis(self.config.event_timeout_ms);
        self.member_of = Some((event, leader, lease));
        (JoinAnswer::Joined { also }, actions)
    }

    /// The leader of `event` released this host.
    pub fn on_leave(&mut self, event: &EventId) {
        if self.member_of.as_ref().is_some_and(|(e, ..)| e == event) {
            self.member_of = None;
        }
    }

    /// A candidate answered the join: with its view, busy, or not at all.
    pub fn join_answer(
        &mut self,
        now: Instant,
        event: &EventId,
        host: &str,
        answer: Result<Joined, Option<EventId>>,
        book: &PopBook,
    ) -> Vec<Action> {
        let current = self
            .leading
            .as_ref()
            .filter(|l| l.id == *event && matches!(&l.phase, Phase::Joining(h) if h == host));
        if current.is_none() {
            // An answer for an event that ended (or moved on) meanwhile: a
            // host that joined it is let go.
            return match answer {
                Ok((view, _)) => vec![Action::Leave { to: view.peer, event: event.clone() }],
                Err(_) => vec![],
            };
        }
        let Some(l) = self.leading.as_mut() else { return vec![] };
        match answer {
            Ok((view, also)) => {
                for a in also.into_iter().rev() {
                    l.candidates.push_front(a);
                }
                l.members.push(view);
                let report = format!("event {}: host {host} joined; partition {}", l.id, names(&l.members));
                let mut actions = vec![Action::Report(report)];
                actions.extend(self.ask_plan(now, book));
                actions
            }
            Err(Some(other)) => {
                l.busy.push(format!("{host} ({other})"));
                self.grow(now)
            }
            Err(None) => {
                l.unreachable.push(host.to_owned());
                self.grow(now)
            }
        }
    }

    /// The leader refreshes its own view (its load changes) before planning.
    pub fn refresh_me(&mut self, me: MemberView) {
        if let Some(l) = self.leading.as_mut() {
            l.members[0] = me;
        }
    }

    fn ask_plan(&mut self, now: Instant, book: &PopBook) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else { return vec![] };
        match build_partition(&l.members, book) {
            Ok((partition, rows)) => {
                self.next_plan += 1;
                let id = self.next_plan;
                l.plans += 1;
                let question = Box::new(PlanQuestion { kind: l.kind, partition: partition.clone() });
                l.phase = Phase::Planning { id, partition: Box::new(partition), rows };
                vec![Action::Plan { id, question }]
            }
            Err(e) => self.end(now, false, format!("cannot describe the partition: {e}")),
        }
    }

    /// The policy answered plan `id`.
    pub fn planned(
        &mut self,
        now: Instant,
        id: u64,
        answer: Result<Verdict<Vec<Migration>>, PolicyError>,
    ) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else { return vec![] };
        let Phase::Planning { id: waiting, partition, rows } = &l.phase else { return vec![] };
        if *waiting != id {
            return vec![];
        }
        let (partition, rows) = (partition.clone(), rows.clone());
        let (plan, policy) = match answer {
            Ok(v) => (v.value, v.decided_by),
            Err(e) => {
                let mut actions = vec![Action::Report(format!("event {}: no plan: {e}", l.id))];
                actions.extend(self.grow(now));
                return actions;
            }
        };
        let overloaded =
            (0..partition.cluster.hosts.len() as u32).any(|h| PlanBuilder::new(&partition).is_overloaded(h));
        if l.kind == EventKind::Overload && !overloaded {
            return self.end(now, true, "the overload had passed".into());
        }
        match judge(l.kind, &partition, &rows, &l.members, &plan) {
            Ok(()) if !plan.is_empty() => {
                let mut waiting = BTreeMap::new();
                let mut actions = vec![Action::Report(format!(
                    "event {}: plan of {} move(s) over {}",
                    l.id,
                    plan.len(),
                    names(&l.members)
                ))];
                for m in &plan {
                    let (vm, from) = &rows[m.vm as usize];
                    let source = &l.members[*from];
                    let to = l.members[m.to as usize].host.clone();
                    waiting.insert(vm.clone(), to.clone());
                    actions.push(Action::Move {
                        event: l.id.clone(),
                        policy: policy.clone(),
                        vm: vm.clone(),
                        from: source.peer.clone(),
                        from_host: source.host.clone(),
                        to,
                    });
                }
                l.phase = Phase::Executing { waiting, moved: 0, failures: Vec::new() };
                actions
            }
            Ok(()) | Err(_) => self.grow(now),
        }
    }

    /// A move of the plan ended.
    pub fn move_done(&mut self, now: Instant, vm: &str, result: Result<(), String>) -> Vec<Action> {
        let Some(l) = self.leading.as_mut() else { return vec![] };
        let Phase::Executing { waiting, moved, failures } = &mut l.phase else { return vec![] };
        let Some(to) = waiting.remove(vm) else { return vec![] };
        let mut actions = vec![];
        match result {
            Ok(()) => {
                *moved += 1;
                actions.push(Action::Report(format!("event {}: vm {vm} moved to {to}", l.id)));
            }
            Err(e) => {
                failures.push(format!("vm {vm} to {to}: {e}"));
                actions.push(Action::Report(format!("event {}: vm {vm} did not move to {to}: {e}", l.id)));
            }
        }
        if waiting.is_empty() {
            let (solved, outcome) = if failures.is_empty() {
                (true, format!("{moved} move(s) carried out"))
            } else {
                (false, format!("moves failed: {}", failures.join("; ")))
            };
            actions.extend(self.end(now, solved, outcome));
        }
        actions
    }

    /// A host was declared dead: a leader forgets it, a member whose
    /// leader it was is free.
    pub fn host_dead(&mut self, now: Instant, host: &str, peer: &PeerId) -> Vec<Action> {
        if self.member_of.as_ref().is_some_and(|(_, leader, _)| leader == peer) {
            self.member_of = None;
        }
        let Some(l) = self.leading.as_mut() else { return vec![] };
        l.members.retain(|m| m.host != host);
        l.candidates.retain(|(p, _)| p != peer);
        if matches!(&l.phase, Phase::Joining(h) if h == host) {
            l.unreachable.push(host.to_owned());
            return self.grow(now);
        }
        vec![]
    }

    /// Time passed: an event past its deadline ends, a lease past its end frees this host.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = vec![];
        if self.member_of.as_ref().is_some_and(|(_, _, until)| now >= *until)
            && let Some((e, ..)) = self.member_of.take()
        {
            actions.push(Action::Report(format!("left event {e}: its leader was not heard from in time")));
        }
        if self.leading.as_ref().is_some_and(|l| now >= l.deadline) {
            actions.extend(self.end(now, false, "timed out".into()));
        }
        actions
    }

    /// The next instant [`Rebalancer::tick`] has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        let lease = self.member_of.as_ref().map(|(_, _, t)| *t);
        let event = self.leading.as_ref().map(|l| l.deadline);
        lease.into_iter().chain(event).min()
    }

    fn end(&mut self, now: Instant, solved: bool, outcome: String) -> Vec<Action> {
        let Some(l) = self.leading.as_ref() else { return vec![] };
        let moved = match &l.phase {
            Phase::Executing { moved, .. } => *moved,
            _ => 0,
        };
        let report = EventReport {
            event: l.id.clone(),
            kind: l.kind,
            partition: l.members.iter().map(|m| m.host.clone()).collect(),
            moved,
            duration_ms: now.saturating_duration_since(l.started).as_millis() as u64,
            solved,
            outcome: outcome.clone(),
        };
        if !solved {
            self.not_before = Some(now + Duration::from_millis(self.config.retry_after_ms));
        }
        self.recent.push_back(report.clone());
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
        let mut actions = vec![Action::Ended(report)];
        actions.extend(self.dissolve());
        actions
    }

    /// Releases every member and forgets the event. (A host still asked
    /// to join is let go when its answer comes.)
    fn dissolve(&mut self) -> Vec<Action> {
        let Some(l) = self.leading.take() else { return vec![] };
        l.members.iter().skip(1).map(|m| Action::Leave { to: m.peer.clone(), event: l.id.clone() }).collect()
    }

    /// For `host status`.
    pub fn status(&self) -> RebalanceStatus {
        let leading = self.leading.as_ref().map(|l| {
            let doing = match &l.phase {
                Phase::Joining(h) => format!("asking {h} to join"),
                Phase::Planning { .. } => "waiting for the policy's plan".into(),
                Phase::Executing { waiting, .. } => format!("moving {} VM(s)", waiting.len()),
            };
            format!("event {} ({:?}): {doing}; partition {}", l.id, l.kind, names(&l.members))
        });
        RebalanceStatus {
            leading,
            member_of: self.member_of.as_ref().map(|(e, ..)| e.clone()),
            recent: self.recent.iter().cloned().collect(),
        }
    }

    /// The hosts of the partition this host leads (itself first).
    pub fn partition(&self) -> Vec<String> {
        self.leading.as_ref().map(|l| l.members.iter().map(|m| m.host.clone()).collect()).unwrap_or_default()
    }

    /// The event this host is a member of.
    pub fn member_of(&self) -> Option<&EventId> {
        self.member_of.as_ref().map(|(e, ..)| e)
    }

    /// The event this host leads.
    pub fn leading(&self) -> Option<&EventId> {
        self.leading.as_ref().map(|l| &l.id)
    }
}

fn names(members: &[MemberView]) -> String {
    let v: Vec<&str> = members.iter().map(|m| m.host.as_str()).collect();
    format!("[{}]", v.join(", "))
}

/// Whether a plan does what its event is for and keeps every VM within
/// its latency bound (the view's fences and capacity were checked by the
/// policy's validation already, and are checked again here).
fn judge(
    kind: EventKind,
    partition: &Partition,
    rows: &[(String, usize)],
    members: &[MemberView],
    plan: &[Migration],
) -> Result<(), String> {
    let mut builder = PlanBuilder::new(partition);
    for m in plan {
        builder.try_move(m.vm, m.to).map_err(|e| e.to_string())?;
        let (vm, from) = &rows[m.vm as usize];
        let spec = members[*from].vms.iter().find(|v| v.spec.name == *vm).map(|v| &v.spec);
        if let (Some(spec), Some(bound)) = (spec, spec.and_then(VmRequest::max_latency_us)) {
            let to_pop = &members[m.to as usize].pop;
            let to = partition.cluster.hosts.pop[m.to as usize] as usize;
            if let (Some(user), Some(p)) = (spec.user, partition.cluster.pops.get(to)) {
                let rtt = locus_sdk::geo::estimated_rtt_us(user.into(), p.location);
                if rtt > bound {
                    return Err(format!(
                        "vm {vm} would be {rtt} µs from its users in {to_pop}, over its bound"
                    ));
                }
            }
        }
    }
    let hosts = partition.cluster.hosts.len() as u32;
    match kind {
        EventKind::Overload if (0..hosts).any(|h| builder.is_overloaded(h)) => {
            Err("a host stays overloaded".into())
        }
        _ => Ok(()),
    }
}

/// The policy's view of a partition: its hosts (members in order) and
/// their movable VMs; fixed VMs count against their host's allocation and
/// load. Returns the view and, per VM row, its name and member index.
pub fn build_partition(
    members: &[MemberView],
    book: &PopBook,
) -> Result<(Partition, Vec<(String, usize)>), String> {
    let mut model = Model::new();
    for (name, jurisdiction, location, renewable, carbon) in &book.pops {
        if members.iter().any(|m| m.pop == *name) {
            model
                .add_pop(name, jurisdiction, (*location).into(), *renewable, *carbon)
                .map_err(|e| e.to_string())?;
        }
    }
    for ((a, b), rtt) in &book.latency_us {
        if let (Ok(a), Ok(b)) = (model.pop_id(a), model.pop_id(b)) {
            model.set_latency(a, b, *rtt);
        }
    }
    let mut rows: BTreeMap<crate::VmId, (String, usize)> = BTreeMap::new();
    let mut hosts = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let size = Resources::new(m.capacity.vcpus, m.capacity.memory_mib, m.capacity.disk_gib);
        let host = model.add_host(&m.host, &m.pop, size, m.cpu_milli, m.watts).map_err(|e| e.to_string())?;
        hosts.push(host);
        for v in &m.fixed {
            // Counted on the host, never offered to move: a name of its own.
            let mut spec = v.spec.clone();
            spec.name = format!("{}\u{0}fixed", v.spec.name);
            spec.group = None;
            let id = model.record_placement(&spec, host).map_err(|e| e.to_string())?;
            model.set_vm_load(id, v.load_cpu_milli);
        }
        for v in &m.vms {
            let id = model.record_placement(&v.spec, host).map_err(|e| e.to_string())?;
            model.set_vm_load(id, v.load_cpu_milli);
            rows.insert(id, (v.spec.name.clone(), i));
        }
    }
    let (mut partition, ids) = crate::view::partition(&model, &hosts);
    // Only the movable VMs are rows; the fixed ones stay in the hosts' totals.
    let keep: Vec<usize> =
        ids.iter().enumerate().filter(|(_, id)| rows.contains_key(id)).map(|(i, _)| i).collect();
    let vms = &mut partition.vms;
    let pick = |col: &mut Vec<u32>| *col = keep.iter().map(|&i| col[i]).collect();
    for col in [
        &mut vms.host,
        &mut vms.vcpus,
        &mut vms.memory_mib,
        &mut vms.disk_gib,
        &mut vms.load_cpu_milli,
        &mut vms.group,
        &mut vms.migration_cost,
    ] {
        pick(col);
    }
    vms.allowed_jurisdictions = keep.iter().map(|&i| vms.allowed_jurisdictions[i]).collect();
    let rows = keep.iter().filter_map(|&i| rows.get(&ids[i]).cloned()).collect();
    Ok((partition, rows))
}

#[cfg(test)]
mod tests;
