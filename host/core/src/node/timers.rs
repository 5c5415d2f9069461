//! Every deadline a node keeps, in one table with the reason for each. The
//! node asks to be woken at the earliest one and, when woken, takes the
//! ones that are due; a deadline whose reason went away is cancelled, so
//! a wake-up always has something to do.

use super::DecisionId;
use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

/// Why the node must wake.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// Publish this host's summary and judge the members' liveness.
    Heartbeat,
    /// The guest of this VM was asked to shut down; if it still runs now,
    /// it is powered off.
    StopDeadline(String),
    /// The policy's answer to this placement has not come; the fallback
    /// decides.
    Decision(DecisionId),
    /// This VM is arriving and nothing was heard of it for a while: its
    /// source is asked where the move stands.
    Arrival(String),
    /// The rebalancing event this host leads reaches its deadline, or its
    /// membership of another's partition its lease's end.
    Rebalance,
}

/// The table: at most one deadline per reason.
#[derive(Debug, Default)]
pub(super) struct Timers {
    by_time: BTreeSet<(Instant, Timer)>,
    at: HashMap<Timer, Instant>,
}

impl Timers {
    /// Sets `timer` to fire at `at`, replacing its earlier deadline.
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        if let Some(old) = self.at.insert(timer.clone(), at) {
            self.by_time.remove(&(old, timer.clone()));
        }
        self.by_time.insert((at, timer));
    }

    /// Forgets `timer`, if it is set.
    pub(super) fn cancel(&mut self, timer: &Timer) {
        if let Some(at) = self.at.remove(timer) {
            self.by_time.remove(&(at, timer.clone()));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.by_time.first().map(|(at, _)| *at)
    }

    /// Removes and returns a timer due at `now`, earliest first.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let (at, _) = self.by_time.first()?;
        if *at > now {
            return None;
        }
        let (_, timer) = self.by_time.pop_first()?;
        self.at.remove(&timer);
        Some(timer)
    }

    /// How many are set.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn fires_in_order_once_and_honours_resets_and_cancels() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut t = Timers::default();
        t.set(Timer::Heartbeat, ms(30));
        t.set(Timer::StopDeadline("a".into()), ms(10));
        t.set(Timer::Decision(DecisionId(1)), ms(20));
        t.set(Timer::Decision(DecisionId(2)), ms(5));
        assert_eq!(t.next(), Some(ms(5)));
        t.cancel(&Timer::Decision(DecisionId(2)));
        t.set(Timer::Heartbeat, ms(15)); // moved earlier: the old deadline is gone
        assert_eq!(t.len(), 3);
        assert_eq!(t.pop_due(ms(9)), None);
        assert_eq!(t.pop_due(ms(16)), Some(Timer::StopDeadline("a".into())));
        assert_eq!(t.pop_due(ms(16)), Some(Timer::Heartbeat));
        assert_eq!(t.pop_due(ms(16)), None);
        assert_eq!(t.next(), Some(ms(20)));
        assert_eq!(t.pop_due(ms(100)), Some(Timer::Decision(DecisionId(1))));
        assert_eq!((t.next(), t.len()), (None, 0));
    }
}
