//! The simulator's due events, in the order they happen: by virtual time,
//! and among those due at the same time, in the order they were scheduled.
//!
//! A monotone queue (a radix heap): every event is pushed at the time
//! now or later, so a push is O(1) and a pop moves events between a few
//! buckets of plain vectors, where a binary heap of the hundreds of
//! thousands of events waiting at 10,000 hosts walked its whole height,
//! a cache miss at every level, on every push and pop.

use radix_heap::RadixHeapMap;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// Events waiting for their time.
pub struct Queue<T> {
    seq: u64,
    /// By time, then by the order they were pushed: the key is the time
    /// in the high 64 bits and the push's number in the low ones, and the
    /// max-heap pops the smallest first through `Reverse`.
    heap: RadixHeapMap<Reverse<u128>, T>,
    /// The event [`Queue::pop_until`] found not due yet, out of the heap:
    /// popping it made its key the heap's top, below which the heap takes
    /// nothing more.
    held: Option<(u128, T)>,
    /// Events pushed since, due before `held` (between runs, by a test or
    /// a tool driving the world by hand; never while a run goes).
    early: BTreeMap<u128, T>,
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue").field("len", &self.heap.len()).finish()
    }
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { seq: 0, heap: RadixHeapMap::new(), held: None, early: BTreeMap::new() }
    }
}

impl<T> Queue<T> {
    /// `item` happens at `at_us`: no earlier than the last event popped
    /// (a monotone queue requires it, and panics).
    pub fn push(&mut self, at_us: u64, item: T) {
        self.seq += 1;
        let key = (u128::from(at_us) << 64) | u128::from(self.seq);
        match &self.held {
            Some((held, _)) if key < *held => drop(self.early.insert(key, item)),
            _ => self.heap.push(Reverse(key), item),
        }
    }

    /// The next event due no later than `until_us`, with its time.
    pub fn pop_until(&mut self, until_us: u64) -> Option<(u64, T)> {
        let due = |key: u128| (key >> 64) as u64 <= until_us;
        if let Some((&key, _)) = self.early.first_key_value() {
            // Before `held`, and so before everything in the heap.
            return due(key)
                .then(|| self.early.pop_first())
                .flatten()
                .map(|(key, item)| ((key >> 64) as u64, item));
        }
        let (key, item) = match self.held.take() {
            Some(held) => held,
            None => self.heap.pop().map(|(Reverse(key), item)| (key, item))?,
        };
        if !due(key) {
            self.held = Some((key, item));
            return None;
        }
        Some(((key >> 64) as u64, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
