//! The simulator's due events, in the order they happen: by virtual time,
//! and among those due at the same time, in the order they were scheduled.
//!
//! A timing wheel: nearly every event is due within a few seconds (a
//! message's delivery, a heartbeat, a sample), so it goes into the slot
//! of its time on a ring of slots, unsorted, in O(1); when time reaches a
//! slot, its events (a few hundred at 10,000 hosts) are sorted once, and
//! those pushed for the current slot meanwhile (a message between
//! PoP-mates arrives within it) wait in a small heap beside them.
//! The few events due later than the ring reaches wait in a map until it
//! does. A heap of the hundreds of thousands of events waiting at 10,000
//! hosts walked its height, a cache miss at every level, on every push
//! and pop; a radix heap moved each event between buckets several times.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

/// Virtual time a slot spans: 2^`SLOT_BITS` µs (about half a millisecond).
const SLOT_BITS: u32 = 9;
/// Slots on the ring: with [`SLOT_BITS`], about four seconds ahead.
const SLOTS: u64 = 1 << 13;

/// An event's place in the order: its time in the high 64 bits and its
/// push's number in the low ones.
type Key = u128;

fn time(key: Key) -> u64 {
    (key >> 64) as u64
}

fn slot(key: Key) -> u64 {
    time(key) >> SLOT_BITS
}

/// An event in the current slot's heap, which pops the earliest first.
struct Entry<T>(Key, T);

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other.0.cmp(&self.0)
    }
}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

impl<T> Eq for Entry<T> {}

/// Events waiting for their time.
pub struct Queue<T> {
    seq: u64,
    /// The slot time has reached: every event of it or earlier is in `now`.
    slot: u64,
    /// The events of `slot` pushed before time reached it, sorted latest
    /// first (the next is at the end).
    now: Vec<(Key, T)>,
    /// The events of `slot` and earlier pushed since.
    late: BinaryHeap<Entry<T>>,
    /// Slot `s` in (`slot`, `slot + SLOTS`) at `s % SLOTS`, unsorted.
    wheel: Vec<Vec<(Key, T)>>,
    /// Events on the wheel.
    on_wheel: usize,
    /// Events of slots the wheel does not reach yet, in order.
    far: BTreeMap<Key, T>,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.now.len() + self.late.len() + self.on_wheel + self.far.len();
        f.debug_struct("Queue").field("len", &len).finish()
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            seq: 0,
            slot: 0,
            now: Vec::new(),
            late: BinaryHeap::new(),
            wheel: (0..SLOTS).map(|_| Vec::new()).collect(),
            on_wheel: 0,
            far: BTreeMap::new(),
        }
    }
}

impl<T> Queue<T> {
    /// `item` happens at `at_us`. An event earlier than one already
    /// popped would come next, out of time: the world never pushes one.
    pub fn push(&mut self, at_us: u64, item: T) {
        self.seq += 1;
        let key = (Key::from(at_us) << 64) | Key::from(self.seq);
        self.place(key, item);
    }

    fn place(&mut self, key: Key, item: T) {
        let s = slot(key);
        if s <= self.slot {
            self.late.push(Entry(key, item));
        } else if s < self.slot + SLOTS {
            self.wheel[(s % SLOTS) as usize].push((key, item));
            self.on_wheel += 1;
        } else {
            self.far.insert(key, item);
        }
    }

    /// The next event due no later than `until_us`, with its time.
    pub fn pop_until(&mut self, until_us: u64) -> Option<(u64, T)> {
        while self.now.is_empty() && self.late.is_empty() {
            // Time moves to the next slot with events, unless it starts
            // after `until_us`: an event pushed meanwhile may come before.
            let next = self.next_slot()?;
            if next << SLOT_BITS > until_us {
                return None;
            }
            self.advance(next);
        }
        let sorted = self.now.last().map(|(key, _)| *key);
        let late = self.late.peek().map(|Entry(key, _)| *key);
        match (sorted, late) {
            (Some(key), l) if l.is_none_or(|l| key < l) => {
                (time(key) <= until_us).then(|| self.now.pop()).flatten().map(|(key, item)| (time(key), item))
            }
            (_, Some(key)) => (time(key) <= until_us)
                .then(|| self.late.pop())
                .flatten()
                .map(|Entry(key, item)| (time(key), item)),
            (_, None) => None,
        }
    }

    /// The first slot after `slot` that has events.
    fn next_slot(&self) -> Option<u64> {
        if self.on_wheel > 0 {
            (self.slot + 1..self.slot + SLOTS).find(|s| !self.wheel[(s % SLOTS) as usize].is_empty())
        } else {
            self.far.first_key_value().map(|(key, _)| slot(*key))
        }
    }

    /// Time reaches slot `to` (`now` and `late` are empty): its events
    /// become `now`, and the wheel takes the far events it now reaches.
    fn advance(&mut self, to: u64) {
        self.slot = to;
        let at = (to % SLOTS) as usize;
        // The slot starts again empty: a burst (every host's first
        // heartbeat) must not leave its capacity to every slot after.
        self.now = std::mem::take(&mut self.wheel[at]);
        self.on_wheel -= self.now.len();
        while let Some(entry) = self.far.first_entry() {
            let s = slot(*entry.key());
            if s >= to + SLOTS {
                break;
            }
            let (key, item) = entry.remove_entry();
            match s == to {
                true => self.now.push((key, item)),
                false => self.place(key, item),
            }
        }
        self.now.sort_unstable_by_key(|(key, _)| std::cmp::Reverse(*key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a sorted map: pushes from near to beyond the wheel's
        /// reach, at the time last popped or later, and pops with limits.
        #[test]
        fn pops_in_the_order_of_a_sorted_map(
            ops in prop::collection::vec((any::<bool>(), 0u64..3, 0u64..20_000_000), 1..400),
        ) {
            let (mut q, mut model) = (Queue::default(), BTreeMap::new());
            let (mut now, mut seq) = (0u64, 0u64);
            for (push, scale, n) in ops {
                // Within a slot, within the wheel, or up to 20 s ahead.
                let ahead = [n % 500, n % 4_000_000, n][scale as usize];
                if push {
                    seq += 1;
                    q.push(now + ahead, seq);
                    model.insert((now + ahead, seq), ());
                } else {
                    let until = now + ahead;
                    let want = model.first_key_value().map(|(k, _)| *k).filter(|(at, _)| *at <= until);
                    if let Some(k) = want {
                        model.remove(&k);
                        now = k.0;
                    }
                    prop_assert_eq!(q.pop_until(until), want);
                }
            }
            while let Some((k, ())) = model.pop_first() {
                prop_assert_eq!(q.pop_until(u64::MAX), Some(k));
            }
            prop_assert_eq!(q.pop_until(u64::MAX), None);
        }
    }

    #[test]
    fn events_come_by_time_then_by_the_order_they_were_scheduled() {
        let mut q = Queue::default();
        q.push(30, "c");
        q.push(20, "timeout-1");
        q.push(10, "a");
        q.push(20, "b");
        q.push(25, "timeout-2");
        q.push(20, "b2");
        assert_eq!(q.pop_until(5), None, "nothing due yet");
        assert_eq!(q.pop_until(10), Some((10, "a")));
        q.push(10, "a2");
        let mut order = vec![];
        while let Some((at, e)) = q.pop_until(100) {
            order.push((at, e));
        }
        assert_eq!(
            order,
            [(10, "a2"), (20, "timeout-1"), (20, "b"), (20, "b2"), (25, "timeout-2"), (30, "c")]
        );
        assert_eq!(q.pop_until(100), None);
    }

    #[test]
    fn an_event_pushed_between_runs_before_one_found_not_due_comes_first() {
        let mut q = Queue::default();
        q.push(50, "later");
        assert_eq!(q.pop_until(10), None, "looked at, not due");
        q.push(10, "now");
        q.push(30, "soon");
        q.push(60, "last");
        assert_eq!(q.pop_until(20), Some((10, "now")));
        assert_eq!(q.pop_until(20), None);
        q.push(20, "also now");
        let mut order = vec![];
        while let Some(e) = q.pop_until(100) {
            order.push(e);
        }
        assert_eq!(order, [(20, "also now"), (30, "soon"), (50, "later"), (60, "last")]);
    }
}
