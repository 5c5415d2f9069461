//! The PoP-wide bound on concurrent migrations: the book of slots a PoP's
//! speaker grants.
//!
//! A move takes a slot from its PoP's speaker before it starts and gives it
//! back when it ends. The speaker counts the moves of each host as the
//! union of the slots it granted that host and the moves the host's latest
//! summary reports holding: grants cover the heartbeat before a summary
//! shows a new move, and summaries cover what a grant's lease, a lost
//! release or a new speaker (the old one died) would forget. While agents
//! disagree about who speaks (a membership change under way) each grants
//! from its own book, so the bound may be passed for that long; a move
//! never waits on a speaker that does not answer.

use crate::cluster::PeerId;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long a grant counts without being given back: by then the holder's
/// summaries report the move, if it still runs.
pub(super) const LEASE: Duration = Duration::from_secs(5);

/// Slots granted by this agent as its PoP's speaker.
#[derive(Debug, Default)]
pub(super) struct SlotBook {
    /// Per host, the VMs it was granted a slot for, and when.
    granted: BTreeMap<PeerId, BTreeMap<String, Instant>>,
}

impl SlotBook {
    /// Grants `peer` a slot to move `vm` if fewer than `max` moves are under
    /// way in the PoP; `reported` holds each alive host's own list of moves.
    /// Asking again for the same VM renews its grant. On refusal, how many
    /// are under way.
    pub(super) fn grant(
        &mut self,
        now: Instant,
        peer: &PeerId,
        vm: &str,
        max: u32,
        reported: &BTreeMap<PeerId, Vec<String>>,
    ) -> Result<(), u32> {
        self.expire(now);
        let counted = |vm: &str| {
            self.granted.get(peer).is_some_and(|g| g.contains_key(vm))
                || reported.get(peer).is_some_and(|r| r.iter().any(|v| v == vm))
        };
        if !counted(vm) {
            let in_use = self.in_use(reported);
            if in_use >= max {
                return Err(in_use);
            }
        }
        self.granted.entry(peer.clone()).or_default().insert(vm.to_owned(), now);
        Ok(())
    }

    /// `peer`'s move of `vm` ended.
    pub(super) fn release(&mut self, peer: &PeerId, vm: &str) {
        if let Some(g) = self.granted.get_mut(peer) {
            g.remove(vm);
            if g.is_empty() {
                self.granted.remove(peer);
            }
        }
    }

    /// Moves under way in the PoP.
    pub(super) fn in_use(&self, reported: &BTreeMap<PeerId, Vec<String>>) -> u32 {
        let hosts: BTreeSet<&PeerId> = self.granted.keys().chain(reported.keys()).collect();
        let moves = hosts.into_iter().map(|h| {
            let granted = self.granted.get(h).into_iter().flat_map(|g| g.keys());
            let own = reported.get(h).into_iter().flatten();
            granted.chain(own).collect::<BTreeSet<_>>().len()
        });
        u32::try_from(moves.sum::<usize>()).unwrap_or(u32::MAX)
    }

    fn expire(&mut self, now: Instant) {
        for g in self.granted.values_mut() {
            g.retain(|_, at| now.saturating_duration_since(*at) < LEASE);
        }
        self.granted.retain(|_, g| !g.is_empty());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(p: &str) -> PeerId {
        PeerId::from(p)
    }

    #[test]
    fn grants_up_to_the_bound_and_again_once_a_slot_is_given_back() {
        let now = Instant::now();
        let mut book = SlotBook::default();
        let none = BTreeMap::new();
        assert_eq!(book.grant(now, &peer("a"), "v1", 2, &none), Ok(()));
        assert_eq!(book.grant(now, &peer("b"), "v2", 2, &none), Ok(()));
        assert_eq!(book.grant(now, &peer("c"), "v3", 2, &none), Err(2));
        // Asking again for a VM that holds a slot is no new move.
        assert_eq!(book.grant(now, &peer("a"), "v1", 2, &none), Ok(()));
        book.release(&peer("a"), "v1");
        assert_eq!(book.grant(now, &peer("c"), "v3", 2, &none), Ok(()));
    }

    #[test]
    fn a_move_in_a_summary_and_in_the_book_counts_once() {
        let now = Instant::now();
        let mut book = SlotBook::default();
        let mut reported = BTreeMap::new();
        assert_eq!(book.grant(now, &peer("a"), "v1", 2, &reported), Ok(()));
        reported.insert(peer("a"), vec!["v1".to_owned()]);
        assert_eq!(book.in_use(&reported), 1);
        assert_eq!(book.grant(now, &peer("b"), "v2", 2, &reported), Ok(()));
        assert_eq!(book.in_use(&reported), 2);
    }

    #[test]
    fn a_new_speaker_counts_the_moves_summaries_report() {
        // The old speaker died with its book: the summaries still say what
        // runs, so the bound holds.
        let now = Instant::now();
        let mut book = SlotBook::default();
        let reported: BTreeMap<PeerId, Vec<String>> =
            [(peer("a"), vec!["v1".to_owned()]), (peer("b"), vec!["v2".to_owned()])].into();
        assert_eq!(book.grant(now, &peer("c"), "v3", 2, &reported), Err(2));
    }

    #[test]
    fn a_grant_never_given_back_lapses_after_its_lease() {
        let now = Instant::now();
        let mut book = SlotBook::default();
        let none = BTreeMap::new();
        assert_eq!(book.grant(now, &peer("a"), "v1", 1, &none), Ok(()));
        assert_eq!(book.grant(now + LEASE / 2, &peer("b"), "v2", 1, &none), Err(1));
        assert_eq!(book.grant(now + LEASE, &peer("b"), "v2", 1, &none), Ok(()));
    }
}
