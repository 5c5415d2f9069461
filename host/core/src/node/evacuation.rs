//! VMs of dead hosts, and the copies they leave behind.
//!
//! When a PoP-mate is declared dead, the PoP's speaker (its alive member
//! first in peer-id order: one agent, so each VM is decided once) looks
//! up each of the dead host's VMs in the overlay's records, which outlive
//! their host. A VM still recorded there, meant to run, with restart
//! policy `always`, is created again in the PoP by the placement policy,
//! with the next generation; the others are reported and left.
//!
//! A host that comes back (restarted, or reachable again after a network
//! partition) may still run copies of VMs that were created elsewhere
//! meanwhile. Every agent compares the VMs its PoP-mates' summaries list
//! with its own: for a VM both have, it asks the other for its copy, and
//! removes its own when the other's is current — a higher generation, or
//! the same one on a host whose name sorts first. A copy in the middle of
//! a move is left to the hand-off protocol. Once the summaries have gone
//! round, no VM runs twice.
//!
//! A domain marked as this host's with no intent (the state directory was
//! lost, or a copy outlived its move) is judged by the generation in its
//! mark against the overlay's record of its VM: the record names this host,
//! or an older generation than the domain's, and the domain is taken back
//! with the record's request; the record names a current copy elsewhere,
//! and the domain is removed. With no record (a deleted VM, or records not
//! reachable yet) it is left alone and looked up again later.

use super::{Event, Node, Origin, Output, Purpose, Step, Task, VmRecord};
use crate::cluster::{Liveness, PeerId, Transition, VmLocation};
use crate::hypervisor::{DomainSeen, HvCommand};
use crate::intent::{Desired, Handoff, VmIntent};
use crate::node::{ApiError, OutboundId, PeerRequest, PeerResponse, Reply};
use crate::request::RestartPolicy;
use std::time::{Duration, Instant};

/// A domain marked as this host's that has no intent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Orphan {
    /// The generation its mark carries (none for marks older than generations).
    generation: Option<u64>,
    /// Consecutive observations that listed it.
    samples: u32,
    /// When its record was last looked up.
    looked_up: Option<Instant>,
}

/// Heartbeats between two looks for copies while nothing changed: a VM
/// busy at the last look (created, moved) may be free to compare now.
const COPIES_AGAIN_EVERY: u64 = 20;

impl Node {
    /// Notes the domains marked as this host's that have no intent, and
    /// looks up their records. One listed by a single observation is not
    /// judged yet: that observation may predate a move this node has just
    /// finished, after which the domain is gone.
    pub(super) fn observe_orphans(
        &mut self,
        now: Instant,
        seen: impl Iterator<Item = DomainSeen>,
        full: bool,
    ) {
        let before = std::mem::take(&mut self.orphans);
        for d in seen {
            let known = before.get(&d.name);
            let orphan = Orphan {
                generation: d.generation,
                samples: known.map_or(0, |o| o.samples).saturating_add(1),
                looked_up: known.and_then(|o| o.looked_up),
            };
            if known.is_none() || full {
                self.event(Event::Orphan(d.name.clone()));
            }
            self.orphans.insert(d.name, orphan);
        }
        let due: Vec<String> = self
            .orphans
            .iter()
            .filter(|(_, o)| o.samples >= 2 && o.looked_up.is_none_or(|t| now >= t + VERIFY_EVERY))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            if let Some(o) = self.orphans.get_mut(&name) {
                o.looked_up = Some(now);
            }
            if self.verifying.insert(name.clone()) && !self.locating.contains_key(&name) {
                self.outputs.push_back(Output::Locate(name));
            }
        }
    }

    /// The record of an orphan's VM was looked up: the orphan is taken
    /// back if it is the current copy, removed if another is.
    fn judge_orphan(&mut self, name: &str, at: Option<VmLocation>) {
        // Gone since, or no record: left alone, looked up again later.
        let (Some(orphan), Some(at)) = (self.orphans.get(name).copied(), at) else { return };
        // By host name, as the mark is: the domain lives on this host whatever peer id its agent has now.
        let named_here = at.host == self.config.host.name;
        let current = match orphan.generation {
            Some(g) => named_here || g > at.generation,
            None => named_here,
        };
        if current && at.desired != Desired::Deleted {
            let generation = orphan.generation.unwrap_or(0).max(at.generation);
            if self.take_orphan(at.spec, at.desired, generation, None) {
                self.event(Event::Reclaimed { vm: name.to_owned(), generation });
                self.announce(name);
            }
            return;
        }
        // A mark without a generation says nothing against another host's record.
        let Some(generation) = orphan.generation else { return };
        self.event(Event::Stale {
            vm: name.to_owned(),
            current: at.host,
            generations: (generation, at.generation),
        });
        let task = Task::new(Purpose::Delete, Step::Destroy, None);
        if self.take_orphan(at.spec, Desired::Deleted, generation, Some(task)) {
            self.issue(name, Step::Destroy, HvCommand::Destroy(name.to_owned()));
        }
    }

    /// Gives an orphan an intent (written before anything is done to it).
    fn take_orphan(
        &mut self,
        spec: crate::VmRequest,
        desired: Desired,
        generation: u64,
        task: Option<Task>,
    ) -> bool {
        let name = spec.name.clone();
        self.orphans.remove(&name);
        let id = match self.model.record_placement(&spec, self.host) {
            Ok(id) => id,
            Err(e) => {
                self.event(Event::Failed { vm: name, error: format!("its orphaned domain: {e}") });
                return false;
            }
        };
        let mut intent = VmIntent::new(spec, desired);
        intent.generation = generation;
        let mut record = VmRecord::new(intent, id);
        record.task = task;
        self.vms.insert(name.clone(), record);
        self.persist(&name);
        true
    }

    /// A member was declared dead: its PoP's speaker looks up its VMs.
    pub(super) fn evacuate_dead(&mut self, now: Instant, t: &Transition) {
        if t.pop != self.config.pop.name || !self.membership.is_speaker() {
            return;
        }
        if !self.membership.in_majority(now) {
            // Cut off from most of the cluster, this host may be the one
            // that is away: the majority's side evacuates, not this one.
            let why =
                "this host sees fewer than half of the cluster's hosts alive; it may be the one cut off";
            for vm in &t.vms {
                let to = Err(why.to_owned());
                self.event(Event::Evacuated { vm: vm.clone(), from: t.host.clone(), to });
            }
            return;
        }
        for vm in &t.vms {
            if self.vms.contains_key(vm) {
                continue;
            }
            self.evacuating.insert(vm.clone(), t.host.clone());
            if !self.locating.contains_key(vm) {
                self.outputs.push_back(Output::Locate(vm.clone()));
            }
        }
    }

    /// The record of a dead host's VM was looked up.
    pub(super) fn evacuate(&mut self, vm: &str, dead: &str, at: Option<VmLocation>) {
        let skip = |why: String| Event::Evacuated { vm: vm.to_owned(), from: dead.to_owned(), to: Err(why) };
        let Some(at) = at else {
            return self.event(skip("the overlay has no record of it".into()));
        };
        if at.host != dead {
            // Moved (or created again) before its old host died.
            return;
        }
        let living = at.peer == self.config.peer
            || self.membership.members.get(&at.peer).is_some_and(|m| m.liveness == Liveness::Alive);
        if living {
            // Its host came back under a new peer id (its key was lost)
            // and recorded the VM again: it runs there.
            return;
        }
        if at.desired != Desired::Running || at.spec.restart != RestartPolicy::Always {
            return self.event(skip("its restart policy is never, or it was not meant to run".into()));
        }
        self.event(Event::Handed {
            vm: vm.to_owned(),
            to: format!("a host of PoP {}", self.config.pop.name),
            why: format!("its host {dead} is dead"),
        });
        let generation = at.generation + 1;
        self.evacuated_from.insert(vm.to_owned(), dead.to_owned());
        self.place_in_pop(Origin::Evacuation, Box::new(at.spec), Vec::new(), Vec::new(), generation);
    }

    /// A VM of a dead host was created again, or could not be.
    pub(super) fn evacuated(&mut self, result: Result<Reply, ApiError>) {
        match result {
            Ok(Reply::Vm(s)) => {
                let from = self.evacuated_from.remove(&s.name).unwrap_or_else(|| "?".into());
                self.event(Event::Evacuated { vm: s.name.clone(), from, to: Ok(s.host.clone()) });
            }
            Ok(_) => {}
            Err(e) => self.event(Event::Failed { vm: "(evacuation)".into(), error: e.message }),
        }
    }

    /// VMs of this host that a PoP-mate's summaries also list are compared
    /// with its copy (one question per VM at a time).
    pub(super) fn check_copies(&mut self, heartbeat: u64) {
        // A copy appears only when a PoP-mate's VMs or this host's changed,
        // or a PoP-mate came back; a VM busy then is looked at in a while.
        let seen = (self.membership.holders_version(), self.beacon.digest().version);
        if self.copies_seen == Some(seen) && !heartbeat.is_multiple_of(COPIES_AGAIN_EVERY) {
            return;
        }
        self.copies_seen = Some(seen);
        let shared: Vec<(PeerId, String)> = self
            .vms
            .iter()
            .filter(|(_, r)| r.intent.handoff.is_none() && r.task.is_none())
            .filter_map(|(n, _)| {
                let alive = |p: &&PeerId| {
                    self.membership.members.get(*p).is_some_and(|m| m.liveness == Liveness::Alive)
                };
                self.membership.holders(n).iter().find(alive).map(|p| (p.clone(), n.clone()))
            })
            .filter(|(_, n)| !self.conflicts.values().any(|c| c == n))
            .collect();
        for (peer, name) in shared {
            let id = self.request(peer, PeerRequest::Show(name.clone()));
            self.conflicts.insert(id, name);
        }
    }

    /// A PoP-mate described its copy: this host's goes if that one is current.
    pub(super) fn copy_answer(&mut self, id: OutboundId, result: &Result<PeerResponse, String>) -> bool {
        let Some(name) = self.conflicts.remove(&id) else { return false };
        let Ok(PeerResponse::Vm(theirs)) = result else { return true };
        let Some(mine) = self.vms.get(&name) else { return true };
        if theirs.handoff.is_some() || mine.intent.handoff.is_some() || mine.task.is_some() {
            return true;
        }
        let me = &self.config.host.name;
        let newer = theirs.generation > mine.intent.generation
            || (theirs.generation == mine.intent.generation && theirs.host < *me);
        if !newer {
            return true;
        }
        let (current, generation) = (theirs.host.clone(), theirs.generation);
        self.drop_stale(&name, current, generation);
        true
    }

    /// Looks up every VM of this host in the overlay's records, to find
    /// copies created elsewhere while this host was away (at start, and
    /// when PoP-mates come back into view); at most every few seconds.
    pub(super) fn verify_copies(&mut self, now: Instant) {
        if self.verified_at.is_some_and(|t| now < t + VERIFY_EVERY) {
            return;
        }
        self.verified_at = Some(now);
        let names: Vec<String> =
            self.vms.iter().filter(|(_, r)| r.intent.handoff.is_none()).map(|(n, _)| n.clone()).collect();
        for name in names {
            if self.verifying.insert(name.clone()) && !self.locating.contains_key(&name) {
                self.outputs.push_back(Output::Locate(name));
            }
        }
    }

    /// A VM's record was looked up: this host's copy goes if the record
    /// names a current one elsewhere.
    pub(super) fn verify_copy(&mut self, name: &str, at: Option<VmLocation>) {
        if !self.vms.contains_key(name) {
            return self.judge_orphan(name, at);
        }
        let Some(at) = at else { return };
        let Some(mine) = self.vms.get(name) else { return };
        let leaving = matches!(mine.intent.handoff, Some(Handoff::To { .. }));
        if leaving && mine.task.is_none() && at.generation > mine.intent.generation + 1 {
            // It left for its destination, and a later copy than the one
            // it became there runs now: the move is over, whatever the
            // destination did with it. What is left here goes.
            self.event(Event::Stale {
                vm: name.to_owned(),
                current: at.host,
                generations: (mine.intent.generation, at.generation),
            });
            if let Some(r) = self.vms.get_mut(name) {
                r.task = Some(Task::new(Purpose::MoveOut, Step::Undefine, None));
            }
            return self.issue(name, Step::Undefine, HvCommand::Undefine(name.to_owned()));
        }
        if at.peer == self.config.peer || mine.intent.handoff.is_some() || mine.task.is_some() {
            return;
        }
        let newer = at.generation > mine.intent.generation
            || (at.generation == mine.intent.generation && at.host < self.config.host.name);
        if newer {
            self.drop_stale(name, at.host, at.generation);
        } else {
            // This copy is the current one, but the record names another
            // (two sides of a partition each made one): the record is
            // put right, and the other copy goes at its next check.
            self.announce(name);
        }
    }

    /// Removes this host's stale copy of a VM (the domain, its disk, the intent).
    fn drop_stale(&mut self, name: &str, current: String, generation: u64) {
        let Some(mine) = self.vms.get(name) else { return };
        let name = name.to_owned();
        self.event(Event::Stale {
            vm: name.clone(),
            current,
            generations: (mine.intent.generation, generation),
        });
        if let Some(r) = self.vms.get_mut(&name) {
            r.intent.desired = Desired::Deleted;
            r.task = Some(super::Task::new(Purpose::Delete, Step::Destroy, None));
        }
        self.persist(&name);
        self.issue(&name, Step::Destroy, HvCommand::Destroy(name.clone()));
    }
}

/// Copies are looked up in the overlay at most this often.
const VERIFY_EVERY: Duration = Duration::from_secs(5);
/// And at least this often: a copy made on the other side of a partition
/// in another PoP is found even when nothing else says so.
pub(super) const VERIFY_AT_LEAST_EVERY: Duration = Duration::from_secs(30);
