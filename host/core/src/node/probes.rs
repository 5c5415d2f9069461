//! The probes this agent sends its PoP-mates, SWIM's failure detector (see
//! [`crate::cluster`]): which turn it is, and which probes still wait for
//! their answer.

use super::OutboundId;
use crate::cluster::PeerId;
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub(super) struct Probes {
    /// Heartbeats so far: picks the PoP-mate probed next.
    turn: u64,
    /// Probes sent and not answered yet: to whom, and when.
    waiting: Vec<(OutboundId, PeerId, Instant)>,
}

impl Probes {
    /// The next heartbeat's turn.
    pub(super) fn next_turn(&mut self) -> u64 {
        self.turn += 1;
        self.turn
    }

    /// Whether a probe of `peer` still waits.
    pub(super) fn waiting_for(&self, peer: &PeerId) -> bool {
        self.waiting.iter().any(|(_, p, _)| p == peer)
    }

    pub(super) fn sent(&mut self, id: OutboundId, peer: PeerId, now: Instant) {
        self.waiting.push((id, peer, now));
    }

    /// The PoP-mate a probe was sent to, when `id` is one still waiting.
    pub(super) fn answered(&mut self, id: OutboundId) -> Option<PeerId> {
        let k = self.waiting.iter().position(|(i, ..)| *i == id)?;
        Some(self.waiting.swap_remove(k).1)
    }

    /// The PoP-mates whose probes waited `timeout` unanswered; they are
    /// not waited for any longer.
    pub(super) fn overdue(&mut self, now: Instant, timeout: Duration) -> Vec<PeerId> {
        let late = |at: &Instant| now.saturating_duration_since(*at) >= timeout;
        let overdue = self.waiting.iter().filter(|(_, _, at)| late(at)).map(|(_, p, _)| p.clone()).collect();
        self.waiting.retain(|(_, _, at)| !late(at));
        overdue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_is_answered_once_or_overdue_once() {
        let t0 = Instant::now();
        let mut p = Probes::default();
        let (a, b) = (PeerId::new("a"), PeerId::new("b"));
        p.sent(OutboundId(1), a.clone(), t0);
        p.sent(OutboundId(2), b.clone(), t0 + Duration::from_millis(500));
        assert!(p.waiting_for(&a) && p.waiting_for(&b));
        assert_eq!(p.answered(OutboundId(2)), Some(b.clone()));
        assert_eq!(p.answered(OutboundId(2)), None, "answered already");
        assert!(p.overdue(t0 + Duration::from_millis(1000), Duration::from_millis(1500)).is_empty());
        assert_eq!(
            p.overdue(t0 + Duration::from_millis(1500), Duration::from_millis(1500)),
            std::slice::from_ref(&a)
        );
        assert_eq!(p.answered(OutboundId(1)), None, "overdue: its late answer is not a probe's");
        assert!(!p.waiting_for(&a));
        assert_eq!((p.next_turn(), p.next_turn()), (1, 2));
    }
}
