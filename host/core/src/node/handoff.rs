//! Moving VMs between hosts: the hand-off protocol, sans IO.
//!
//! The source drives every move, in four steps:
//! 1. It writes "moving to D" into the VM's intent and asks D to
//!    [`PeerRequest::Arrive`]. D checks the VM fits (capacity, fences,
//!    anti-affinity, CPU demand, one arrival at a time), writes "arriving
//!    from S" with the next generation, prepares what libvirt does not copy
//!    (the VM's disk) and answers ready — with its migration URI when both
//!    hypervisors can live-migrate.
//! 2. The source live-migrates the domain (libvirt undefines it at the
//!    source), or, moving cold, powers its copy off.
//! 3. It tells D the VM [`PeerRequest::Arrived`]: D marks the domain as its
//!    own (starting it after a cold move), clears "arriving" and answers.
//! 4. The source undefines what is left of its copy and forgets the VM.
//!
//! Intent is written before each step's command (the node's ordering
//! contract), so whatever is killed, a restarted agent finds the hand-off
//! in its intent and finishes or undoes it:
//! - a source with "moving to D" and nothing in flight settles its domain
//!   (ending any migration job libvirt still runs) and looks: a copy still
//!   running here means the move did not happen, and it tells D to
//!   [`PeerRequest::Abandon`] before clearing the mark; otherwise the copy
//!   left (or, cold, is off), and it tells D it arrived;
//! - a destination with "arriving from S" that hears nothing for a while
//!   asks S about the [`PeerRequest::Departure`]: still moving (wait),
//!   stayed (drop the arrival and its disk), or gone (take it over).
//!
//! Both messages are idempotent, so a lost answer is repaired by asking
//! again. By default at most one move leaves a host and one arrives at a
//! time, and a move takes a slot of its PoP's bound first (see `slots`).

use super::timers::Timer;
use super::{Event, Node, Origin, Output, Purpose, Step, Task, VmRecord, not_found};
use crate::VmRequest;
use crate::cluster::{Liveness, PeerId};
use crate::hypervisor::{HvCommand, MigrationProgress};
use crate::intent::{Desired, Handoff, VmIntent};
use crate::model::HostState;
use crate::node::slots::SlotBook;
use crate::node::{
    ApiError, ApiErrorKind, Departure, DrainStatus, InboundId, OutboundId, PeerRequest, PeerResponse, Reply,
    VmStatus,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A destination that has heard nothing about an arriving VM for this long
/// asks its source where the move stands.
const ARRIVAL_CHECK: Duration = Duration::from_secs(20);
/// The shortest time a live migration is given before it is aborted.
const MIN_MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);
/// A move whose destination is busy receiving another VM, or whose PoP has
/// no free slot, is tried again after this long; a busy destination this
/// many times at most.
const BUSY_RETRY: Duration = Duration::from_millis(500);
const BUSY_RETRIES: u32 = 60;

/// A move waiting for the host's outgoing slot.
#[derive(Debug, Clone)]
struct Queued {
    vm: String,
    /// The destination host; the placement policy chooses when none.
    to: Option<String>,
    origin: Option<Origin>,
    /// Not before then (the destination was busy).
    not_before: Option<Instant>,
    /// Destinations that refused it; the policy chooses among the others.
    avoid: Vec<PeerId>,
    /// Why it waits, for `host status`.
    why: Option<String>,
}

/// Destinations the placement policy may choose for one move before it
/// fails (each refusal is avoided next time).
const MAX_CHOICES: usize = 3;

/// Which message of the protocol an outbound request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Arrive,
    Arrived,
    Abandon,
    Departure,
    Slot,
    SlotFree,
}

/// The host's moves: waiting, under way, and a drain's progress.
#[derive(Debug, Default)]
pub(super) struct Moves {
    queue: VecDeque<Queued>,
    /// Moves that left the queue: waiting for a slot, being decided or
    /// carried out.
    active: BTreeSet<String>,
    /// Moves waiting for the PoP's speaker (the second) to grant a slot.
    asking: HashMap<String, (Queued, PeerId)>,
    /// Moves holding a slot of the PoP's bound, with the agent that granted
    /// it (none: this one, as speaker).
    holding: BTreeMap<String, Option<PeerId>>,
    /// Slots this agent granted as its PoP's speaker.
    book: SlotBook,
    /// Protocol messages sent and not answered yet.
    sent: HashMap<OutboundId, (String, Stage)>,
    /// Times each waiting move found its destination busy.
    retries: HashMap<String, u32>,
    /// Moves whose destination the policy chose, with the destinations
    /// chosen so far (a refusal makes it choose again, elsewhere).
    chosen: HashMap<String, Vec<PeerId>>,
    drain: Option<DrainStatus>,
}

impl Moves {
    /// Whether the host is draining.
    pub(super) fn draining(&self) -> bool {
        self.drain.is_some()
    }

    /// Whether no move leaves this host now or waits to.
    pub(super) fn idle(&self) -> bool {
        self.active.is_empty() && self.queue.is_empty()
    }

    /// Whether `vm` is moving or waiting to.
    pub(super) fn busy_with(&self, vm: &str) -> bool {
        self.active.contains(vm) || self.queue.iter().any(|q| q.vm == vm)
    }

    /// The moves holding a slot of the PoP's bound, for the summary.
    pub(super) fn holding_slots(&self) -> Vec<String> {
        self.holding.keys().cloned().collect()
    }
}

impl Node {
    // ---- asking for moves ----

    /// `vm migrate`: moves a VM of this host, or passes the request to the
    /// host that runs it.
    pub(super) fn migrate(&mut self, origin: Origin, name: String, to: Option<String>) -> Option<ApiError> {
        if !self.vms.contains_key(&name) {
            return match self.membership.find_vm(&name) {
                Some((peer, _, _, Liveness::Alive)) => {
                    let req = PeerRequest::Migrate { name, to };
                    let purpose = super::overlay::relay(&req);
                    self.send(peer, req, origin, purpose);
                    None
                }
                Some((_, host, ..)) => Some(ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!("vm {name} is on host {host}, which is not alive"),
                )),
                None => {
                    self.locate(origin, PeerRequest::Migrate { name, to });
                    None
                }
            };
        }
        if let Err(e) = self.movable(&name).and_then(|()| self.check_destination(&name, to.as_deref())) {
            return Some(e);
        }
        self.moves.queue.push_back(Queued {
            vm: name,
            to,
            origin: Some(origin),
            not_before: None,
            avoid: vec![],
            why: None,
        });
        self.next_move();
        None
    }

    /// Whether a VM of this host can start moving now.
    fn movable(&self, name: &str) -> Result<(), ApiError> {
        self.can_move(name)?;
        if self.moves.busy_with(name) {
            return Err(conflict(format!("vm {name} is already waiting to move")));
        }
        Ok(())
    }

    /// Whether a VM of this host can move now, as far as the VM goes.
    fn can_move(&self, name: &str) -> Result<(), ApiError> {
        let r = self.vms.get(name).ok_or_else(|| not_found(name))?;
        if let Some(h) = &r.intent.handoff {
            return Err(conflict(format!("vm {name} is already {h}")));
        }
        if r.intent.desired == Desired::Deleted {
            return Err(conflict(format!("vm {name} is being deleted")));
        }
        if !r.state().is_active() && r.intent.spec.image.is_some() && self.can_live() {
            return Err(conflict(format!(
                "vm {name} is not running: a stopped VM with a disk cannot be migrated live; start it first"
            )));
        }
        self.writable()
    }

    /// Checks an operator's chosen destination against what this agent
    /// knows for sure (its fence); the destination checks the rest against
    /// its exact state (a summary may still say draining after a resume).
    fn check_destination(&self, name: &str, to: Option<&str>) -> Result<(), ApiError> {
        let Some(to) = to else { return Ok(()) };
        if to == self.config.host.name {
            return Err(ApiError::new(
                ApiErrorKind::BadRequest,
                format!("vm {name} is already on host {to}"),
            ));
        }
        let peer = self.peer_of_host(to).ok_or_else(|| {
            ApiError::new(
                ApiErrorKind::Unplaceable,
                format!(
                    "no alive host named {to:?} in PoP {} (VMs move within their PoP)",
                    self.config.pop.name
                ),
            )
        })?;
        let (Some(&host), Some(r)) = (self.remote_hosts.get(&peer), self.vms.get(name)) else {
            return Ok(());
        };
        let resolved = crate::filter::Resolved::new(&self.model, &r.intent.spec);
        match crate::filter::fence_refusal(&self.model, &resolved, host) {
            None => Ok(()),
            Some(why) => Err(ApiError::new(
                ApiErrorKind::Unplaceable,
                format!("host {to} cannot take vm {name}: {why}"),
            )),
        }
    }

    /// An alive agent of this PoP whose host is `host`. VMs move within
    /// their PoP: its fences and policies judge its own hosts.
    fn peer_of_host(&self, host: &str) -> Option<PeerId> {
        let (peer, m) =
            self.membership.members_in_order().into_iter().find(|(_, m)| m.summary.host == host)?;
        (m.liveness == Liveness::Alive).then(|| peer.clone())
    }

    /// Starts waiting moves while the host's outgoing slots are free.
    pub(super) fn next_move(&mut self) {
        let now = self.now;
        let max_out = self.config.moves.max_out_per_host as usize;
        while self.moves.active.len() < max_out {
            let due = |q: &Queued| q.not_before.is_none_or(|t| now.is_some_and(|now| now >= t));
            let Some(q) = self.moves.queue.iter().position(due).and_then(|i| self.moves.queue.remove(i))
            else {
                return;
            };
            if let Err(e) = self.movable(&q.vm) {
                self.move_failed(&q.vm, q.origin, e);
                continue;
            }
            self.moves.active.insert(q.vm.clone());
            self.take_slot(q);
        }
    }

    /// A move asks its PoP's speaker for a slot (or grants itself one, as
    /// the speaker) and starts once it has it.
    fn take_slot(&mut self, q: Queued) {
        match self.membership.speaker().cloned() {
            None => {
                let me = self.config.peer.clone();
                match self.grant_slot(&me, &q.vm) {
                    Ok(()) => self.granted(q, None),
                    Err(why) => self.wait_for_slot(q, why),
                }
            }
            Some(speaker) => {
                let id = self.request(speaker.clone(), PeerRequest::Slot { vm: q.vm.clone() });
                self.moves.sent.insert(id, (q.vm.clone(), Stage::Slot));
                self.moves.asking.insert(q.vm.clone(), (q, speaker));
            }
        }
    }

    /// The PoP has no free slot (or its speaker did not answer): the move
    /// waits its turn.
    fn wait_for_slot(&mut self, q: Queued, why: String) {
        self.moves.active.remove(&q.vm);
        let not_before = self.now.map(|t| t + BUSY_RETRY);
        self.moves.queue.push_front(Queued { not_before, why: Some(why), ..q });
    }

    /// As the PoP's speaker: a slot for `peer` to move `vm`, if the PoP has
    /// one free.
    fn grant_slot(&mut self, peer: &PeerId, vm: &str) -> Result<(), String> {
        let Some(now) = self.now else { return Err("no clock yet".into()) };
        let mut reported: BTreeMap<PeerId, Vec<String>> = self
            .membership
            .members
            .iter()
            .filter(|(_, m)| m.liveness == Liveness::Alive)
            .map(|(p, m)| (p.clone(), m.summary.moving.clone()))
            .collect();
        reported.insert(self.config.peer.clone(), self.moves.holding_slots());
        let max = self.config.moves.max_per_pop;
        self.moves.book.grant(now, peer, vm, max, &reported).map_err(|in_use| {
            format!("PoP {} has {in_use} of {max} migrations under way", self.config.pop.name)
        })
    }

    /// Gives a move's slot back to whoever granted it.
    fn release_slot(&mut self, vm: &str) {
        match self.moves.holding.remove(vm) {
            Some(None) => {
                let me = self.config.peer.clone();
                self.moves.book.release(&me, vm);
            }
            Some(Some(grantor)) => {
                let id = self.request(grantor, PeerRequest::SlotFree { vm: vm.to_owned() });
                self.moves.sent.insert(id, (vm.to_owned(), Stage::SlotFree));
            }
            None => {}
        }
    }

    /// A move leaves the active set: its slot goes back.
    fn leave_active(&mut self, vm: &str) -> bool {
        self.release_slot(vm);
        self.moves.active.remove(vm)
    }

    /// A PoP-mate asks this agent, as speaker, for a slot or gives one back.
    fn slot_request(&mut self, id: InboundId, from: &PeerId, req: PeerRequest) {
        let resp = if !self.membership.members.contains_key(from) {
            refused(
                ApiErrorKind::BadRequest,
                format!("slots of PoP {} are for its members only", self.config.pop.name),
            )
        } else {
            match req {
                PeerRequest::Slot { vm } => match self.grant_slot(from, &vm) {
                    Ok(()) => PeerResponse::Done,
                    Err(why) => refused(ApiErrorKind::Unavailable, why),
                },
                PeerRequest::SlotFree { vm } => {
                    self.moves.book.release(from, &vm);
                    PeerResponse::Done
                }
                _ => return,
            }
        };
        self.outputs.push_back(Output::Respond { id, resp });
    }

    /// A move has its slot (granted by `grantor`, or by this agent): it
    /// starts, unless the VM changed while it waited.
    fn granted(&mut self, q: Queued, grantor: Option<PeerId>) {
        self.moves.holding.insert(q.vm.clone(), grantor);
        if let Err(e) = self.can_move(&q.vm) {
            self.leave_active(&q.vm);
            return self.move_failed(&q.vm, q.origin, e);
        }
        self.start(q);
    }

    /// A move with its slot starts: towards its chosen host, or the
    /// placement policy chooses one.
    fn start(&mut self, q: Queued) {
        match q.to {
            Some(host) => match self.peer_of_host(&host) {
                Some(peer) => self.start_move(&q.vm, peer, host, q.origin),
                None => {
                    let e = ApiError::new(ApiErrorKind::Unplaceable, format!("host {host} is not alive"));
                    self.move_ended(&q.vm, q.origin, Err(e));
                }
            },
            None => {
                let spec = Box::new(self.vms[&q.vm].intent.spec.clone());
                self.ask_move(q.origin, spec, q.avoid);
            }
        }
    }

    /// The placement policy chose `host` (of this PoP) for a VM to move to.
    pub(super) fn move_decided(
        &mut self,
        origin: Option<Origin>,
        vm: &str,
        host: Result<PeerId, ApiError>,
        mut avoid: Vec<PeerId>,
    ) {
        let Some(to) =
            host.ok().and_then(|p| self.membership.members.get(&p).map(|m| (p, m.summary.host.clone())))
        else {
            let e = ApiError::new(
                ApiErrorKind::Unplaceable,
                format!("no other host of PoP {} can take vm {vm}", self.config.pop.name),
            );
            return self.move_ended(vm, origin, Err(e));
        };
        avoid.push(to.0.clone());
        self.moves.chosen.insert(vm.to_owned(), avoid);
        self.start_move(vm, to.0, to.1, origin);
    }

    /// Step 1 at the source: the intent says where the VM goes, then the
    /// destination is asked to get ready.
    fn start_move(&mut self, name: &str, peer: PeerId, host: String, origin: Option<Origin>) {
        let live = self.can_live();
        let from_host = self.config.host.name.clone();
        let Some(r) = self.vms.get_mut(name) else { return };
        r.intent.handoff = Some(Handoff::To { peer: peer.clone(), host: host.clone() });
        r.pending = None;
        r.task = Some(Task::new(Purpose::MoveOut, Step::Handoff, origin));
        let req = PeerRequest::Arrive {
            spec: Box::new(r.intent.spec.clone()),
            desired: r.intent.desired,
            generation: r.intent.generation + 1,
            from_host,
            live,
        };
        self.persist(name);
        self.event(Event::Moving { vm: name.to_owned(), to: host, live });
        self.protocol(peer, name, Stage::Arrive, req);
    }

    /// Whether this host's hypervisor can live-migrate.
    fn can_live(&self) -> bool {
        self.migration_uri().is_some()
    }

    fn migration_uri(&self) -> Option<String> {
        match &self.hypervisor {
            super::Hypervisor::Up(i) => i.migration_uri.clone(),
            _ => None,
        }
    }

    fn protocol(&mut self, to: PeerId, vm: &str, stage: Stage, req: PeerRequest) {
        let id = self.request(to, req);
        self.moves.sent.insert(id, (vm.to_owned(), stage));
    }

    /// The destination named in a VM's hand-off, and the generation it
    /// arrives with.
    fn destination(&self, name: &str) -> Option<(PeerId, u64)> {
        let r = self.vms.get(name)?;
        match &r.intent.handoff {
            Some(Handoff::To { peer, .. }) => Some((peer.clone(), r.intent.generation + 1)),
            _ => None,
        }
    }

    /// Tells the destination the VM left (step 3), or that it stays.
    pub(super) fn conclude(&mut self, name: &str, left: bool) {
        let Some((peer, generation)) = self.destination(name) else { return };
        let (stage, req) = if left {
            (Stage::Arrived, PeerRequest::Arrived { name: name.to_owned(), generation })
        } else {
            (Stage::Abandon, PeerRequest::Abandon { name: name.to_owned(), generation })
        };
        if let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.as_mut()) {
            task.step = Step::Handoff;
        }
        self.protocol(peer, name, stage, req);
    }

    /// What a live migration of `spec` may take before it is aborted:
    /// proportional to what it copies (memory and disk), as Nova and
    /// KubeVirt bound it.
    pub(super) fn migration_timeout(&self, spec: &VmRequest) -> Duration {
        let gib = (f64::from(spec.memory_mib) / 1024.0 + f64::from(spec.disk_gib)).max(1.0);
        let per_gib = Duration::from_millis(self.config.timing.migration_timeout_ms_per_gib);
        per_gib.mul_f64(gib).max(MIN_MIGRATION_TIMEOUT)
    }

    /// The answer to a protocol message, if `id` was one.
    pub(super) fn protocol_answer(&mut self, id: OutboundId, result: &Result<PeerResponse, String>) -> bool {
        let Some((vm, stage)) = self.moves.sent.remove(&id) else { return false };
        let refused = |result: &Result<PeerResponse, String>| match result {
            Ok(PeerResponse::Refused(e)) => e.message.clone(),
            Ok(other) => format!("unexpected answer {other:?}"),
            Err(e) => e.clone(),
        };
        match (stage, result) {
            (Stage::Arrive, Ok(PeerResponse::Ready { uri })) => self.transfer(&vm, uri.clone()),
            (Stage::Arrive, other) => {
                // Called off before anything was copied. A destination that
                // did get ready (its answer was lost) asks us in a while.
                let dest = self.handoff_host(&vm);
                self.clear_handoff(&vm);
                let busy =
                    matches!(other, Ok(PeerResponse::Refused(e)) if e.kind == ApiErrorKind::Unavailable);
                let tries = self.moves.retries.entry(vm.clone()).or_insert(0);
                *tries += 1;
                let chosen = self.moves.chosen.remove(&vm);
                let again = match (busy && *tries <= BUSY_RETRIES, chosen) {
                    // The destination is receiving another VM: this one waits its turn.
                    (true, chosen) => {
                        let not_before = self.now.map(|t| t + BUSY_RETRY);
                        let avoid = chosen.map(|mut c| {
                            c.pop();
                            c
                        });
                        let to = if avoid.is_some() { None } else { Some(dest.clone()) };
                        Some((to, not_before, avoid.unwrap_or_default()))
                    }
                    // The policy's choice refused it: it chooses again, elsewhere.
                    (false, Some(avoid)) if avoid.len() < MAX_CHOICES => Some((None, None, avoid)),
                    _ => None,
                };
                if let Some((to, not_before, avoid)) = again {
                    let task = self.vms.get_mut(&vm).and_then(|r| r.task.take());
                    self.leave_active(&vm);
                    let origin = task.and_then(|t| t.origin);
                    let why = busy.then(|| format!("host {dest} is receiving another VM"));
                    self.moves.queue.push_front(Queued {
                        vm: vm.clone(),
                        to,
                        origin,
                        not_before,
                        avoid,
                        why,
                    });
                    self.next_move();
                    return true;
                }
                let e = ApiError::new(
                    ApiErrorKind::Unplaceable,
                    format!("vm {vm} cannot move to host {dest}: {}", refused(other)),
                );
                self.finish(&vm, Some(e));
            }
            (Stage::Arrived, Ok(PeerResponse::Vm(status))) => {
                if let Some(task) = self.vms.get_mut(&vm).and_then(|r| r.task.as_mut()) {
                    task.moved = Some(status.clone());
                }
                // Step 4: what is left here (a cold copy, the disk) goes.
                self.issue(&vm, Step::Undefine, HvCommand::Undefine(vm.clone()));
            }
            (Stage::Abandon, Ok(PeerResponse::Done)) => {
                self.clear_handoff(&vm);
                self.finish(&vm, None);
            }
            (Stage::Arrived, Ok(PeerResponse::Refused(e))) if e.kind == ApiErrorKind::NotFound => {
                // The destination took it over and has lost it since (its
                // copy removed as stale after a partition, or deleted):
                // the records say whether a newer copy runs elsewhere.
                if self.verifying.insert(vm.clone()) && !self.locating.contains_key(&vm) {
                    self.outputs.push_back(Output::Locate(vm.clone()));
                }
                let e = ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!(
                        "vm {vm}: the hand-off to {} is not settled yet: {}",
                        self.handoff_host(&vm),
                        e.message
                    ),
                );
                self.finish(&vm, Some(e));
            }
            (Stage::Arrived | Stage::Abandon, other) => {
                // Asked again at the next observation.
                let e = ApiError::new(
                    ApiErrorKind::Unavailable,
                    format!(
                        "vm {vm}: the hand-off to {} is not settled yet: {}",
                        self.handoff_host(&vm),
                        refused(other)
                    ),
                );
                self.finish(&vm, Some(e));
            }
            (Stage::Slot, Ok(PeerResponse::Done)) => {
                if let Some((q, grantor)) = self.moves.asking.remove(&vm) {
                    self.granted(q, Some(grantor));
                }
            }
            (Stage::Slot, other) => {
                if let Some((q, _)) = self.moves.asking.remove(&vm) {
                    self.wait_for_slot(q, refused(other));
                }
            }
            (Stage::SlotFree, _) => {}
            (Stage::Departure, Ok(PeerResponse::Departure(d))) => self.departure_known(&vm, *d),
            (Stage::Departure, _) => self.check_arrival_later(&vm),
        }
        true
    }

    fn handoff_host(&self, name: &str) -> String {
        match self.vms.get(name).and_then(|r| r.intent.handoff.as_ref()) {
            Some(Handoff::To { host, .. } | Handoff::From { host, .. }) => host.clone(),
            None => "?".into(),
        }
    }

    fn clear_handoff(&mut self, name: &str) {
        if let Some(r) = self.vms.get_mut(name)
            && r.intent.handoff.take().is_some()
        {
            self.persist(name);
        }
    }

    /// Step 2 at the source: live migration, or powering off for a cold move.
    fn transfer(&mut self, name: &str, uri: Option<String>) {
        let Some(r) = self.vms.get(name) else { return };
        if r.task.as_ref().map(|t| t.step) != Some(Step::Handoff) {
            return;
        }
        match uri.filter(|_| self.can_live() && r.state().is_active()) {
            Some(uri) => {
                let timeout = self.migration_timeout(&r.intent.spec);
                self.issue(name, Step::Migrate, HvCommand::MigrateOut { vm: name.to_owned(), uri, timeout });
            }
            None => self.issue(name, Step::Destroy, HvCommand::Destroy(name.to_owned())),
        }
    }

    /// A source's move that ended (moved, failed or called off): its
    /// origin hears, a drain counts it, and the next move may start.
    pub(super) fn move_ended(
        &mut self,
        name: &str,
        origin: Option<Origin>,
        result: Result<Box<VmStatus>, ApiError>,
    ) {
        let was_active = self.leave_active(name);
        match &result {
            Ok(status) => self.event(Event::Moved { vm: name.to_owned(), to: status.host.clone() }),
            Err(e) => self.event(Event::NotMoved { vm: name.to_owned(), error: e.message.clone() }),
        }
        if was_active && let Some(drain) = self.moves.drain.as_mut() {
            match &result {
                Ok(_) => drain.moved += 1,
                Err(e) => drain.failed.push((name.to_owned(), e.message.clone())),
            }
        }
        if let Some(origin) = origin {
            self.answer(origin, result.map(Reply::Vm));
        }
        self.next_move();
    }

    fn move_failed(&mut self, name: &str, origin: Option<Origin>, e: ApiError) {
        if let Some(drain) = self.moves.drain.as_mut() {
            drain.failed.push((name.to_owned(), e.message.clone()));
        }
        if let Some(origin) = origin {
            self.answer(origin, Err(e));
        }
    }

    // ---- the destination ----

    /// Step 1 at the destination: check, record "arriving from", prepare.
    pub(super) fn arrive(&mut self, id: InboundId, from: PeerId, arrival: Arrival) {
        let Arrival { spec, desired, generation, from_host, live } = arrival;
        let name = spec.name.clone();
        let handoff = Handoff::From { peer: from.clone(), host: from_host.clone() };
        if let Some(r) = self.vms.get(&name) {
            // Asked again (our answer was lost): still ready.
            let again = r.intent.handoff.as_ref() == Some(&handoff) && r.intent.generation == generation;
            let resp = match (again, &r.task) {
                (true, None) => PeerResponse::Ready { uri: self.migration_uri().filter(|_| live) },
                (true, Some(_)) => {
                    refused(ApiErrorKind::Unavailable, format!("vm {name} is still being prepared"))
                }
                (false, _) => refused(
                    ApiErrorKind::Conflict,
                    format!("vm {name} already exists on host {}", self.config.host.name),
                ),
            };
            return self.outputs.push_back(Output::Respond { id, resp });
        }
        if let Err(e) = self.can_receive(&spec) {
            return self.outputs.push_back(Output::Respond { id, resp: PeerResponse::Refused(e) });
        }
        let vm_id = match self.model.record_placement(&spec, self.host) {
            Ok(v) => v,
            Err(e) => {
                let resp = refused(ApiErrorKind::BadRequest, e.to_string());
                return self.outputs.push_back(Output::Respond { id, resp });
            }
        };
        let live = live && self.can_live();
        self.wake("a VM arrives");
        let mut intent = VmIntent::new((*spec).clone(), desired);
        intent.generation = generation;
        intent.handoff = Some(handoff);
        let mut record = VmRecord::new(intent, vm_id);
        let mut task = Task::new(Purpose::MoveIn, Step::Receive, Some(Origin::Peer(id)));
        task.live = live;
        record.task = Some(task);
        self.vms.insert(name.clone(), record);
        self.persist(&name);
        self.event(Event::Arriving { vm: name.clone(), from: from_host });
        if let Some(now) = self.now {
            self.timers.set(Timer::Arrival(name.clone()), now + ARRIVAL_CHECK);
        }
        self.issue(&name, Step::Receive, HvCommand::Receive { spec, live, generation });
    }

    /// Whether this host can take an arriving VM now.
    fn can_receive(&self, spec: &VmRequest) -> Result<(), ApiError> {
        spec.validate().map_err(|e| ApiError::new(ApiErrorKind::BadRequest, e.to_string()))?;
        self.writable()?;
        self.room_to_record()?;
        let host = &self.config.host.name;
        if self.moves.draining() {
            return Err(ApiError::new(ApiErrorKind::Unplaceable, format!("host {host} is draining")));
        }
        let foreign = self.others.contains(&spec.name) || self.orphans.contains_key(&spec.name);
        if foreign && !self.vms.contains_key(&spec.name) {
            // A domain of that name that is not ours (or ours with no
            // intent, being judged): only an arriving migration may bring
            // one, and this is not it.
            return Err(conflict(format!("a domain named {:?} exists on host {host}", spec.name)));
        }
        let arriving =
            self.vms.values().filter(|r| matches!(r.intent.handoff, Some(Handoff::From { .. }))).count();
        if arriving >= self.config.moves.max_in_per_host as usize {
            return Err(ApiError::new(
                ApiErrorKind::Unavailable,
                format!("host {host} is receiving another VM; try again when it is done"),
            ));
        }
        let mut resolved = crate::filter::Resolved::new(&self.model, spec);
        resolved.standby = true;
        if let Some(why) = crate::filter::refusal(&self.model, &resolved, self.host) {
            return Err(ApiError::new(ApiErrorKind::Unplaceable, format!("host {host} is {why}")));
        }
        let demand = self.demand();
        let after = demand.cpu_milli.saturating_add(spec.expected_load());
        if f64::from(after)
            > f64::from(demand.cpu_capacity_milli) * f64::from(self.config.load.overload_ratio)
        {
            return Err(ApiError::new(
                ApiErrorKind::Unplaceable,
                format!(
                    "host {host} would be overloaded: CPU demand {after} of {} milli-CPUs",
                    demand.cpu_capacity_milli
                ),
            ));
        }
        Ok(())
    }

    /// The destination's side of steps 1 and 3: ready after preparing,
    /// and done once the VM is its own.
    pub(super) fn arrival_step(&mut self, name: &str, step: Step, active: bool) {
        match step {
            Step::Receive => {
                let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.take()) else { return };
                let uri = self.migration_uri().filter(|_| task.live);
                if let Some(Origin::Peer(id)) = task.origin {
                    self.outputs.push_back(Output::Respond { id, resp: PeerResponse::Ready { uri } });
                }
            }
            Step::Adopt
                if !active && self.vms.get(name).is_some_and(|r| r.intent.desired == Desired::Running) =>
            {
                self.issue(name, Step::Start, HvCommand::Start(name.to_owned()));
            }
            _ => {
                self.timers.cancel(&Timer::Arrival(name.to_owned()));
                self.handoff_ended(name);
                let from = self.handoff_host(name);
                self.clear_handoff(name);
                self.announce(name);
                self.event(Event::Arrived { vm: name.to_owned(), from });
                self.finish(name, None);
            }
        }
    }

    /// A hand-off of `name` ended, in or out. A sample taken during it may
    /// have seen the domain as another host's (marked by its source, or its
    /// mark unreadable as it left); that sighting is void, or the VM could
    /// not come back here until the next sample.
    pub(super) fn handoff_ended(&mut self, name: &str) {
        self.others.remove(name);
    }

    /// Step 3 at the destination: the VM left its source; take it over.
    fn arrived(&mut self, id: InboundId, name: &str, generation: u64) {
        let resp = match self.idle_arrival(name, generation) {
            Some(Ok(())) => {
                let from = self.handoff_host(name);
                let Some(r) = self.vms.get_mut(name) else { return };
                let spec = Box::new(r.intent.spec.clone());
                r.task = Some(Task::new(Purpose::MoveIn, Step::Adopt, Some(Origin::Peer(id))));
                return self.issue(name, Step::Adopt, HvCommand::Adopt { spec, from, generation });
            }
            Some(Err(busy)) => busy,
            // Asked again after it was taken over (our answer was lost).
            None => match self.vms.get(name) {
                Some(r) if r.intent.generation >= generation && r.intent.handoff.is_none() => {
                    PeerResponse::Vm(Box::new(self.status(r)))
                }
                _ => refused(
                    ApiErrorKind::NotFound,
                    format!("host {} expects no vm {name} of generation {generation}", self.config.host.name),
                ),
            },
        };
        self.outputs.push_back(Output::Respond { id, resp });
    }

    /// The source calls the move off: the arrival and its disk go.
    fn abandon(&mut self, id: InboundId, name: &str, generation: u64) {
        let resp = match self.idle_arrival(name, generation) {
            Some(Ok(())) => return self.drop_arrival(name, Some(Origin::Peer(id))),
            Some(Err(busy)) => busy,
            None if self.vms.contains_key(name) => {
                refused(ApiErrorKind::Conflict, format!("vm {name} runs on host {}", self.config.host.name))
            }
            None => PeerResponse::Done,
        };
        self.outputs.push_back(Output::Respond { id, resp });
    }

    /// Whether `name` is arriving here with `generation` and nothing in
    /// flight (`Ok`), arriving but busy (`Err`, the answer to give), or
    /// not arriving with that generation (`None`).
    fn idle_arrival(&self, name: &str, generation: u64) -> Option<Result<(), PeerResponse>> {
        let r = self.vms.get(name)?;
        let arriving =
            r.intent.generation == generation && matches!(r.intent.handoff, Some(Handoff::From { .. }));
        if !arriving {
            return None;
        }
        if r.task.is_some() {
            let busy = format!("vm {name} is busy on host {}", self.config.host.name);
            return Some(Err(refused(ApiErrorKind::Unavailable, busy)));
        }
        Some(Ok(()))
    }

    fn drop_arrival(&mut self, name: &str, origin: Option<Origin>) {
        self.timers.cancel(&Timer::Arrival(name.to_owned()));
        let from = self.handoff_host(name);
        if let Some(r) = self.vms.get_mut(name) {
            r.task = Some(Task::new(Purpose::MoveIn, Step::Undefine, origin));
        }
        self.issue(name, Step::Undefine, HvCommand::Discard { vm: name.to_owned(), from });
    }

    /// The source's answer to "is it still coming?".
    fn departure(&mut self, id: InboundId, from: &PeerId, name: &str) {
        let answer = match self.vms.get(name).map(|r| &r.intent.handoff) {
            Some(Some(Handoff::To { peer, .. })) if peer == from => Departure::Moving,
            Some(_) => Departure::Stayed,
            None => Departure::Gone,
        };
        self.outputs.push_back(Output::Respond { id, resp: PeerResponse::Departure(answer) });
    }

    /// An arrival heard nothing for a while: ask its source.
    pub(super) fn arrival_overdue(&mut self, name: &str) {
        let Some(r) = self.vms.get(name) else { return };
        let Some(Handoff::From { peer, .. }) = &r.intent.handoff else { return };
        if r.task.is_some() {
            return self.check_arrival_later(name);
        }
        let (peer, generation) = (peer.clone(), r.intent.generation);
        self.protocol(
            peer,
            name,
            Stage::Departure,
            PeerRequest::Departure { name: name.to_owned(), generation },
        );
    }

    fn check_arrival_later(&mut self, name: &str) {
        if let Some(now) = self.now {
            self.timers.set(Timer::Arrival(name.to_owned()), now + ARRIVAL_CHECK);
        }
    }

    fn departure_known(&mut self, name: &str, d: Departure) {
        let waiting = self
            .vms
            .get(name)
            .is_some_and(|r| r.task.is_none() && matches!(r.intent.handoff, Some(Handoff::From { .. })));
        if !waiting {
            return;
        }
        match d {
            Departure::Moving => self.check_arrival_later(name),
            Departure::Stayed => self.drop_arrival(name, None),
            Departure::Gone => {
                // The source forgot it: whatever arrived is ours. A domain
                // that did not arrive is defined again by reconciliation.
                let (spec, generation) =
                    (Box::new(self.vms[name].intent.spec.clone()), self.vms[name].intent.generation);
                let from = self.handoff_host(name);
                if let Some(r) = self.vms.get_mut(name) {
                    r.task = Some(Task::new(Purpose::MoveIn, Step::Adopt, None));
                }
                self.issue(name, Step::Adopt, HvCommand::Adopt { spec, from, generation });
            }
        }
    }

    /// Requests of the protocol from another agent.
    pub(super) fn handoff_request(&mut self, id: InboundId, from: PeerId, req: PeerRequest) {
        match req {
            PeerRequest::Arrive { spec, desired, generation, from_host, live } => {
                self.arrive(id, from, Arrival { spec, desired, generation, from_host, live })
            }
            PeerRequest::Arrived { name, generation } => self.arrived(id, &name, generation),
            PeerRequest::Abandon { name, generation } => self.abandon(id, &name, generation),
            PeerRequest::Departure { name, .. } => self.departure(id, &from, &name),
            PeerRequest::Migrate { name, to } => {
                if let Some(e) = self.migrate(Origin::Peer(id), name, to) {
                    self.answer(Origin::Peer(id), Err(e));
                }
            }
            req @ (PeerRequest::Slot { .. } | PeerRequest::SlotFree { .. }) => {
                self.slot_request(id, &from, req)
            }
            other => self.rebalance_request(id, from, other),
        }
    }

    // ---- reconciliation ----

    /// A VM with a hand-off and nothing in flight, after an observation:
    /// the source settles and concludes; the destination waits for it.
    pub(super) fn resume_handoff(&mut self, name: &str) {
        let Some(r) = self.vms.get_mut(name) else { return };
        if r.task.is_some() || !matches!(r.intent.handoff, Some(Handoff::To { .. })) {
            return;
        }
        r.task = Some(Task::new(Purpose::MoveOut, Step::Settle, None));
        self.issue(name, Step::Settle, HvCommand::Settle(name.to_owned()));
    }

    /// At (re)start, arrivals restored from the store get their check.
    pub(super) fn arm_arrivals(&mut self, now: Instant) {
        let arriving: Vec<String> = self
            .vms
            .iter()
            .filter(|(_, r)| matches!(r.intent.handoff, Some(Handoff::From { .. })))
            .map(|(n, _)| n.clone())
            .collect();
        for name in arriving {
            self.timers.set(Timer::Arrival(name), now + ARRIVAL_CHECK);
        }
    }

    // ---- drain ----

    /// `host drain`: no new VMs here, and every VM moves away.
    pub(super) fn drain(&mut self) -> Reply {
        self.model.set_host_state(self.host, HostState::Draining);
        let failed: Vec<String> = match self.moves.drain.as_mut() {
            Some(d) => d.failed.drain(..).map(|(vm, _)| vm).collect(),
            None => {
                self.moves.drain =
                    Some(DrainStatus { total: self.vms.len() as u32, ..DrainStatus::default() });
                self.vms.keys().cloned().collect()
            }
        };
        for vm in failed {
            let queued = self.moves.active.contains(&vm) || self.moves.queue.iter().any(|q| q.vm == vm);
            let leaving = self.vms.get(&vm).is_some_and(|r| r.intent.handoff.is_some());
            if !queued && !leaving {
                self.moves.queue.push_back(Queued {
                    vm,
                    to: None,
                    origin: None,
                    not_before: None,
                    avoid: vec![],
                    why: None,
                });
            }
        }
        self.next_move();
        Reply::Host(Box::new(self.host_status()))
    }

    /// `host resume`: VMs are welcome again; moves not started are dropped.
    pub(super) fn resume(&mut self) -> Reply {
        self.moves.drain = None;
        self.moves.queue.retain(|q| q.origin.is_some());
        self.wake("resumed");
        if matches!(self.hypervisor, super::Hypervisor::Up(_)) {
            self.model.set_host_state(self.host, HostState::Up);
        }
        Reply::Host(Box::new(self.host_status()))
    }

    /// A drain's progress, for `host status`.
    pub(super) fn drain_status(&self) -> Option<DrainStatus> {
        let mut d = self.moves.drain.clone()?;
        d.remaining =
            self.vms.values().filter(|r| !matches!(r.intent.handoff, Some(Handoff::From { .. }))).count()
                as u32;
        Some(d)
    }

    /// A live migration's job statistics: kept with its task for `vm show`
    /// and `host status`.
    pub(super) fn migration_progress(&mut self, op: crate::hypervisor::OpId, progress: MigrationProgress) {
        let Some(name) = self.ops.get(&op) else { return };
        let Some(task) = self.vms.get_mut(name).and_then(|r| r.task.as_mut()) else { return };
        if task.step == Step::Migrate && task.op == Some(op) {
            task.progress = Some(progress);
        }
    }

    /// Moves under way or waiting, for `host status`.
    pub(super) fn moves_status(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .vms
            .iter()
            .filter_map(|(n, r)| {
                let h = r.intent.handoff.as_ref()?;
                Some(match r.task.as_ref().and_then(|t| t.progress) {
                    Some(p) => format!("{n}: {h} ({p})"),
                    None => format!("{n}: {h}"),
                })
            })
            .collect();
        out.extend(self.moves.queue.iter().map(|q| {
            let to = q.to.as_ref().map(|to| format!(" to {to}")).unwrap_or_default();
            let why = q.why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default();
            format!("{}: waiting to move{to}{why}", q.vm)
        }));
        out
    }
}

/// What a source asks of a destination in step 1.
pub(super) struct Arrival {
    spec: Box<VmRequest>,
    desired: Desired,
    generation: u64,
    from_host: String,
    live: bool,
}

fn conflict(message: String) -> ApiError {
    ApiError::new(ApiErrorKind::Conflict, message)
}

fn refused(kind: ApiErrorKind, message: String) -> PeerResponse {
    PeerResponse::Refused(ApiError::new(kind, message))
}
