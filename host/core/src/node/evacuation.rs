//! VMs of dead hosts, and the copies they leave behind.
//!
//! When a PoP-mate is declared dead, the PoP's speaker (its alive member
//! with the smallest peer id: one agent, so each VM is decided once) looks
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

use super::{Event, Node, Origin, Output, Purpose, Step};
use crate::cluster::{PeerId, Transition, VmLocation};
use crate::hypervisor::HvCommand;
use crate::intent::Desired;
use crate::node::{ApiError, OutboundId, PeerRequest, PeerResponse, Reply};
use crate::request::RestartPolicy;
use std::time::{Duration, Instant};

impl Node {
    /// A member was declared dead: its PoP's speaker looks up its VMs.
    pub(super) fn evacuate_dead(&mut self, t: &Transition) {
        if t.pop != self.config.pop.name || !self.membership.is_speaker() {
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

    /// A PoP-mate lists VMs: those this host also has are compared.
    pub(super) fn check_copies(&mut self, peer: &PeerId, names: &[String]) {
        let shared: Vec<String> = names
            .iter()
            .filter(|n| self.vms.get(*n).is_some_and(|r| r.intent.handoff.is_none() && r.task.is_none()))
            .filter(|n| !self.conflicts.values().any(|c| c == *n))
            .cloned()
            .collect();
        for name in shared {
            let id = self.request(peer.clone(), PeerRequest::Show(name.clone()));
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
        let Some(at) = at else { return };
        let Some(mine) = self.vms.get(name) else { return };
        if at.peer == self.config.peer || mine.intent.handoff.is_some() || mine.task.is_some() {
            return;
        }
        let newer = at.generation > mine.intent.generation
            || (at.generation == mine.intent.generation && at.host < self.config.host.name);
        if newer {
            self.drop_stale(name, at.host, at.generation);
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
