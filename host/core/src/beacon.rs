//! What this agent publishes on the overlay at each heartbeat, if anything.
//!
//! Gossip is heard by every subscriber of its topic, so its cost grows with
//! the topic: a PoP's summaries with the PoP's hosts, the global topic's
//! with every host of the cluster. Both stay quiet while nothing changes:
//!
//! - on its PoP's topic, a host publishes its [`HostSummary`] when
//!   something its PoP-mates act on changed (its allocations, state, VMs,
//!   or its CPU demand by a twentieth of its capacity), when it refutes a
//!   suspicion or a PoP-mate came into view, at every heartbeat of its
//!   first [`STARTUP_HEARTBEATS`] (while the overlay's mesh forms), and
//!   every [`REFRESH_EVERY`] heartbeats.
//!   Liveness needs no more (see [`crate::cluster`]): probes carry the
//!   number of the latest summary, so a PoP-mate that missed one knows and
//!   asks for it;
//! - on the global topic, a PoP's speaker publishes the [`PopSummary`]
//!   when a member's liveness changed or a PoP it did not know came into
//!   view (agents that join ask a peer for every PoP instead), when it
//!   changed otherwise (at most every
//!   [`POP_SUMMARY_EVERY`](crate::cluster::POP_SUMMARY_EVERY) heartbeats, fewer with many PoPs:
//!   [`pop_change_every`]), and every
//!   [`POP_REFRESH_EVERY`](crate::cluster::POP_REFRESH_EVERY) heartbeats (more with many PoPs).

use crate::cluster::{Gossip, HostSummary, PopSummary, REFRESH_EVERY, VmDigest, VmLog, pop_change_every};
use std::sync::Arc;

/// Heartbeats after start at which the summary goes out whatever changed:
/// gossip published before the overlay's mesh has formed is lost.
pub const STARTUP_HEARTBEATS: u64 = 10;

/// The heartbeat from which an agent may speak for its PoP. Before, it
/// may not have heard the PoP-mates before it in peer-id order yet (each
/// summarizes itself at every early heartbeat): when a whole PoP starts at
/// once, every agent would speak, each counting a different share of the
/// PoP alive, and every other PoP would hear them all.
pub const SPEAK_FROM_HEARTBEAT: u64 = 4;

/// What this agent has said, to decide what it says next.
#[derive(Debug, Default)]
pub struct Beacon {
    /// Its VMs as its summaries told them.
    vms: VmLog,
    /// The version of the agent's set of VMs its latest summary told.
    vms_version: u64,
    /// Its latest summary (its `seq` counts them).
    last: Option<Arc<HostSummary>>,
    /// Heartbeats since `last`.
    since: u64,
    /// Summarize at the next heartbeat, changed or not: a PoP-mate suspects
    /// this host, or one came into view that has not heard it yet.
    again: bool,
    /// Heartbeats since the agent started.
    heartbeats: u64,
    /// The latest PoP summary it published while speaker.
    pop_last: Option<std::sync::Arc<PopSummary>>,
    /// Heartbeats since `pop_last`.
    pop_since: u64,
    /// Publish the PoP's summary at the next paced heartbeat, changed or not.
    pop_again: bool,
    /// `pop_last` was numbered knowing no number of its PoP's (it started
    /// speaking before any summary of its PoP reached it).
    pop_blind: bool,
}

impl Beacon {
    /// What to say on the PoP's topic at this heartbeat: `own` (whose VMs
    /// are filled in from `vms`: the agent's VMs, with a version that
    /// moves whenever the set does) when it changed, is due or refutes a
    /// suspicion; else nothing.
    pub fn host<'a>(
        &mut self,
        own: HostSummary,
        vms: (u64, impl IntoIterator<Item = &'a String>),
    ) -> Option<Gossip> {
        self.since += 1;
        self.heartbeats += 1;
        let due = match &self.last {
            None => true,
            Some(last) => {
                self.again
                    || self.heartbeats <= STARTUP_HEARTBEATS
                    || self.since >= REFRESH_EVERY
                    || differs(last, &own)
                    || vms.0 != self.vms_version
            }
        };
        if !due {
            return None;
        }
        Some(self.publish(own, vms))
    }

    /// What to say on the PoP's topic now, between heartbeats: `own` when
    /// its allocation changed (a VM placed or gone). PoP-mates place by
    /// it, and a burst of creates would herd onto the host every view
    /// showed emptiest until the next heartbeat.
    pub fn placed<'a>(
        &mut self,
        own: HostSummary,
        vms: (u64, impl IntoIterator<Item = &'a String>),
    ) -> Option<Gossip> {
        let last = self.last.as_ref()?;
        (last.allocated != own.allocated).then(|| self.publish(own, vms))
    }

    fn publish<'a>(
        &mut self,
        mut own: HostSummary,
        (version, vms): (u64, impl IntoIterator<Item = &'a String>),
    ) -> Gossip {
        own.vms = self.vms.publish(vms);
        self.vms_version = version;
        own.seq = self.seq() + 1;
        self.since = 0;
        self.again = false;
        let own = Arc::new(own);
        self.last = Some(own.clone());
        Gossip::Host(own)
    }

    /// The number of the latest summary published (0 before the first).
    pub fn seq(&self) -> u64 {
        self.last.as_ref().map_or(0, |l| l.seq)
    }

    /// The next heartbeat summarizes this host, changed or not: a PoP-mate
    /// suspects it, or one came into view that has not heard it yet.
    pub fn again(&mut self) {
        self.again = true;
    }

    /// The latest summary published, as a PoP-mate that missed it asks.
    pub fn last(&self) -> Option<&HostSummary> {
        self.last.as_deref()
    }

    /// Its VMs as last published, with their version.
    pub fn vms(&self) -> (u64, Vec<String>) {
        self.vms.full()
    }

    /// The digest of its VMs as last published, without their changes.
    pub fn digest(&self) -> VmDigest {
        self.vms.head()
    }

    /// Whether to publish `summary` on the global topic at this heartbeat,
    /// speaking for the PoP; `news` when a member's liveness just changed;
    /// `refresh_every`: heartbeats at most between two, changed or not;
    /// `known`: the highest [`PopSummary::version`] known of the PoP, which
    /// the summary published is numbered one past.
    pub fn pop(&mut self, summary: PopSummary, news: bool, refresh_every: u64, known: u64) -> Option<Gossip> {
        if self.heartbeats < SPEAK_FROM_HEARTBEAT {
            return None;
        }
        self.pop_since += 1;
        let due = match &self.pop_last {
            None => true,
            Some(last) => {
                news || self.pop_since >= refresh_every
                    || (self.pop_since >= pop_change_every(refresh_every)
                        && (self.pop_again || pop_differs(last, &summary)))
            }
        };
        if !due {
            return None;
        }
        self.pop_since = 0;
        self.pop_again = false;
        self.pop_blind = known == 0;
        let summary = std::sync::Arc::new(PopSummary { version: known + 1, ..summary });
        self.pop_last = Some(summary.clone());
        Some(Gossip::Pop(summary))
    }

    /// Another member speaks for the PoP: once this one does again, it
    /// publishes at once.
    pub fn not_speaker(&mut self) {
        self.pop_last = None;
    }

    /// The PoP's summary goes out at the next paced heartbeat, changed or
    /// not: a PoP this agent did not know came into view, which may not
    /// know this one either.
    pub fn pop_again(&mut self) {
        self.pop_again = true;
    }

    /// Its PoP's summaries reached number `known`. A speaker that spoke
    /// before it knew any (it restarted, and the peer it asked for the
    /// PoPs had not answered yet) numbered its summary 1, which every
    /// agent that knows a later one drops as old: when `known` is past
    /// it, it speaks again at the next paced heartbeat, numbered past
    /// `known`, rather than at its next change or refresh (minutes with
    /// many PoPs). Once only: a speaker that knew a number and is
    /// overtaken is not the rightful one, or it will hear so.
    pub fn pop_numbered(&mut self, known: u64) {
        if self.pop_blind && self.pop_last.as_ref().is_some_and(|l| l.version < known) {
            self.pop_blind = false;
            self.pop_again = true;
        }
    }
}

/// Whether `now` says something other PoPs act on that `last` did not:
/// the free room summed over the PoP moves with every VM and only informs
/// (a request goes where one host can take it), so it rides along.
fn pop_differs(last: &PopSummary, now: &PopSummary) -> bool {
    let free = |s: &PopSummary| PopSummary { free: crate::node::Size::default(), version: 0, ..s.clone() };
    free(last) != free(now)
}

/// Whether `now` says something PoP-mates act on that `last` did not. The
/// VMs are compared apart; CPU demand moves with every sample, and counts
/// when it moved by a twentieth of the host's capacity.
fn differs(last: &HostSummary, now: &HostSummary) -> bool {
    let HostSummary {
        peer,
        host,
        pop,
        capacity,
        allocated,
        cpu_milli,
        load_cpu_milli,
        load_state,
        watts,
        up,
        draining,
        standby,
        standby_watts,
        moving,
        vms: _,
        images,
        seq: _,
    } = now;
    let step = (*cpu_milli / 20).max(1);
    *peer != last.peer
        || *host != last.host
        || *pop != last.pop
        || *capacity != last.capacity
        || *allocated != last.allocated
        || *cpu_milli != last.cpu_milli
        || load_cpu_milli.abs_diff(last.load_cpu_milli) >= step
        || *load_state != last.load_state
        || *watts != last.watts
        || *up != last.up
        || *draining != last.draining
        || *standby != last.standby
        || *standby_watts != last.standby_watts
        || *moving != last.moving
        || *images != last.images
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{POP_REFRESH_EVERY, POP_SUMMARY_EVERY};
    use crate::node::Size;

    /// A host of 8 vCPUs, nothing allocated, before its first summary.
    fn own() -> HostSummary {
        let mut s = crate::cluster::tests::summary("a", "p");
        (s.allocated, s.vms, s.seq) = (Size::default(), VmDigest::default(), 0);
        s
    }

    /// A host's VMs with their version: the lists here only grow, so
    /// their length serves.
    fn v(vms: &[String]) -> (u64, &[String]) {
        (vms.len() as u64, vms)
    }

    /// Whether `b` summarized the host at this heartbeat, and its latest summary's number.
    fn said(b: &mut Beacon, own: HostSummary, vms: &[String]) -> (bool, u64) {
        let full = match b.host(own, v(vms)) {
            Some(Gossip::Host(s)) => Some(s.seq),
            None => None,
            Some(other) => panic!("{other:?} on the PoP's topic"),
        };
        if let Some(seq) = full {
            assert_eq!(seq, b.seq());
        }
        (full.is_some(), b.seq())
    }

    #[test]
    fn a_host_summarizes_itself_when_it_changes_refutes_or_is_due_and_is_quiet_otherwise() {
        let mut b = Beacon::default();
        let none: Vec<String> = vec![];
        for k in 1..=STARTUP_HEARTBEATS {
            assert_eq!(said(&mut b, own(), &none), (true, k), "starting: at every heartbeat");
        }
        let n = STARTUP_HEARTBEATS;
        assert_eq!(said(&mut b, own(), &none), (false, n), "unchanged: nothing");

        let mut busier = own();
        busier.load_cpu_milli = 300;
        assert_eq!(said(&mut b, busier.clone(), &none), (false, n), "demand moved by less than 5 %");
        busier.load_cpu_milli = 400;
        assert_eq!(said(&mut b, busier.clone(), &none), (true, n + 1), "by a twentieth of 8 CPUs");

        let vms = vec!["x".to_owned()];
        match b.host(busier.clone(), v(&vms)) {
            Some(Gossip::Host(s)) => assert_eq!((s.seq, s.vms.count, s.vms.changes.len()), (n + 2, 1, 1)),
            other => panic!("a VM came: {other:?}"),
        }
        assert_eq!(b.vms(), (1, vms.clone()));
        let mut allocated = busier.clone();
        allocated.allocated.vcpus = 2;
        assert_eq!(said(&mut b, allocated.clone(), &vms), (true, n + 3));
        assert_eq!(b.last().map(|s| s.allocated.vcpus), Some(2), "what a PoP-mate that missed it gets");
        b.again();
        assert_eq!(said(&mut b, allocated.clone(), &vms), (true, n + 4), "suspected: a newer summary");

        let quiet: Vec<bool> = (0..REFRESH_EVERY).map(|_| said(&mut b, allocated.clone(), &vms).0).collect();
        assert_eq!(quiet.iter().filter(|&&full| full).count(), 1, "one refresh in {REFRESH_EVERY}");
        assert!(quiet[quiet.len() - 1], "the refresh comes on time");

        // Between heartbeats: only a change of allocation is said at once.
        let mut busy = allocated.clone();
        busy.load_cpu_milli = 4000;
        assert!(b.placed(busy.clone(), v(&vms)).is_none(), "demand waits for the heartbeat");
        let more = vec!["x".to_owned(), "y".to_owned()];
        busy.allocated.vcpus = 3;
        match b.placed(busy.clone(), v(&more)) {
            Some(Gossip::Host(s)) => assert_eq!((s.seq, s.allocated.vcpus, s.vms.count), (n + 6, 3, 2)),
            other => panic!("a VM placed: {other:?}"),
        }
        assert!(b.placed(busy.clone(), v(&more)).is_none(), "said already");
        assert_eq!(said(&mut b, busy, &more), (false, n + 6), "nor again at the heartbeat");
    }

    fn pop(free: u32) -> PopSummary {
        PopSummary {
            pop: "p".into(),
            jurisdiction: "FR".into(),
            location: crate::Location { lat: 48.9, lon: 2.4 },
            renewable_watts: 0,
            carbon_g_per_kwh: 0,
            free: Size { vcpus: free, memory_mib: 0, disk_gib: 0 },
            largest_free_memory_mib: 0,
            largest_free_vcpus: free,
            hosts: 1,
            alive: 1,
            contacts: vec![],
            dead: vec![],
            version: 0,
        }
    }

    #[test]
    fn a_speaker_summarizes_its_pop_on_news_at_once_on_change_at_a_pace_and_else_rarely() {
        let mut b = Beacon::default();
        for _ in 1..SPEAK_FROM_HEARTBEAT {
            b.host(own(), v(&[]));
            assert!(b.pop(pop(8), true, POP_REFRESH_EVERY, 0).is_none(), "too early to speak");
        }
        b.host(own(), v(&[]));
        let numbered = |g: Option<Gossip>| match g {
            Some(Gossip::Pop(s)) => s.version,
            other => panic!("a PoP summary: {other:?}"),
        };
        assert_eq!(numbered(b.pop(pop(8), false, POP_REFRESH_EVERY, 0)), 1, "first: at once");
        assert!(b.pop(pop(8), false, POP_REFRESH_EVERY, 0).is_none());
        assert_eq!(
            numbered(b.pop(pop(8), true, POP_REFRESH_EVERY, 41)),
            42,
            "a member's liveness changed: at once"
        );
        let rides: Vec<bool> = (0..POP_REFRESH_EVERY - 1)
            .map(|_| {
                let mut fuller = pop(8);
                fuller.free.vcpus = 3;
                b.pop(fuller, false, POP_REFRESH_EVERY, 0).is_some()
            })
            .collect();
        assert!(rides.iter().all(|&s| !s), "only the sum of free room moved: it waits for the refresh");
        assert!(b.pop(pop(8), false, POP_REFRESH_EVERY, 0).is_some(), "the refresh");
        let changed: Vec<bool> =
            (0..POP_SUMMARY_EVERY).map(|_| b.pop(pop(6), false, POP_REFRESH_EVERY, 0).is_some()).collect();
        assert_eq!(changed.iter().filter(|&&s| s).count(), 1);
        assert!(changed[changed.len() - 1], "a change waits for the pace");
        let quiet: Vec<bool> =
            (0..POP_REFRESH_EVERY).map(|_| b.pop(pop(6), false, POP_REFRESH_EVERY, 0).is_some()).collect();
        assert_eq!(quiet.iter().filter(|&&s| s).count(), 1, "unchanged: once per refresh");
        b.not_speaker();
        assert!(b.pop(pop(6), false, POP_REFRESH_EVERY, 0).is_some(), "speaking again: at once");
        b.pop_again();
        let again: Vec<bool> =
            (0..POP_SUMMARY_EVERY).map(|_| b.pop(pop(6), false, POP_REFRESH_EVERY, 0).is_some()).collect();
        assert_eq!(again, [false, false, false, true], "another PoP came: at the pace");
        let many: Vec<bool> = (0..313).map(|_| b.pop(pop(6), false, 313, 0).is_some()).collect();
        assert_eq!(many.iter().filter(|&&s| s).count(), 1, "with 313 PoPs, a refresh every 313");
        let changing: Vec<bool> = (0..40).map(|k| b.pop(pop(k), false, 313, 0).is_some()).collect();
        assert_eq!(changing.iter().filter(|&&s| s).count(), 2, "changes every 20th heartbeat with 313 PoPs");
        assert!(b.pop(pop(1), true, 313, 0).is_some(), "a liveness change at once, however many PoPs");
    }

    #[test]
    fn a_speaker_that_spoke_before_knowing_its_pops_number_speaks_again_once_it_knows() {
        let mut b = Beacon::default();
        for _ in 0..SPEAK_FROM_HEARTBEAT {
            b.host(own(), v(&[]));
        }
        let version = |g: Option<Gossip>| g.map(|g| if let Gossip::Pop(s) = g { s.version } else { 0 });
        assert_eq!(version(b.pop(pop(8), false, POP_REFRESH_EVERY, 0)), Some(1), "restarted: numbered 1");
        b.pop_numbered(1);
        let own = (0..POP_SUMMARY_EVERY).filter_map(|_| b.pop(pop(8), false, POP_REFRESH_EVERY, 1)).count();
        assert_eq!(own, 0, "its own number (a fresh PoP's first summary) is no cue");
        // The book comes: its PoP reached 41 before the restart.
        b.pop_numbered(41);
        let again: Vec<Option<u64>> =
            (0..POP_SUMMARY_EVERY).map(|_| version(b.pop(pop(8), false, POP_REFRESH_EVERY, 41))).collect();
        assert_eq!(
            again,
            [Some(42), None, None, None],
            "unchanged, yet again (the pace has passed), past 41"
        );
        b.pop_numbered(45);
        let quiet =
            (0..POP_SUMMARY_EVERY).filter_map(|_| b.pop(pop(8), false, POP_REFRESH_EVERY, 45)).count();
        assert_eq!(quiet, 0, "it knew a number when it spoke: another speaker's is not its cue");
    }
}
