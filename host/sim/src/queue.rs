//! The simulator's due events, in the order they happen: by virtual time,
//! and among those due at the same time, in the order they were scheduled.
//!
//! Most events go into a binary heap. Those that all wait the same time
//! (a peer request's timeout) come due in the order they were made, so
//! they wait in a plain FIFO instead: most are answered long before and
//! skipped when popped, and a heap full of them would make every other
//! event dearer.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// A due event: when, its place among those due at the same time, and what.
#[derive(Debug)]
struct Entry<T> {
    at_us: u64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key(&self) -> (u64, u64) {
        (self.at_us, self.seq)
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// Events waiting for their time.
#[derive(Debug)]
pub struct Queue<T> {
    seq: u64,
    heap: BinaryHeap<Reverse<Entry<T>>>,
    /// Events pushed by [`Queue::push_in_order`], earliest first.
    fifo: VecDeque<Entry<T>>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue { seq: 0, heap: BinaryHeap::new(), fifo: VecDeque::new() }
    }
}

impl<T> Queue<T> {
    /// `item` happens at `at_us`.
    pub fn push(&mut self, at_us: u64, item: T) {
        self.seq += 1;
        self.heap.push(Reverse(Entry { at_us, seq: self.seq, item }));
    }

    /// `item` happens at `at_us`, which is no earlier than that of any item
    /// pushed this way before (each waits the same time from now).
    pub fn push_in_order(&mut self, at_us: u64, item: T) {
        self.seq += 1;
        let at_us = self.fifo.back().map_or(at_us, |last| at_us.max(last.at_us));
        self.fifo.push_back(Entry { at_us, seq: self.seq, item });
    }

    /// The next event due no later than `until_us`, with its time.
    pub fn pop_until(&mut self, until_us: u64) -> Option<(u64, T)> {
        let heap = self.heap.peek().map(|Reverse(e)| e.key());
        let fifo = self.fifo.front().map(Entry::key);
        let from_fifo = match (heap, fifo) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(h), Some(f)) => f < h,
        };
        let entry = if from_fifo {
            if self.fifo.front()?.at_us > until_us {
                return None;
            }
            self.fifo.pop_front()?
        } else {
            let Reverse(top) = self.heap.peek()?;
            if top.at_us > until_us {
                return None;
            }
            self.heap.pop()?.0
        };
        Some((entry.at_us, entry.item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_by_time_then_by_the_order_they_were_scheduled_from_both_lines() {
        let mut q = Queue::default();
        q.push(30, "c");
        q.push_in_order(20, "timeout-1");
        q.push(10, "a");
        q.push(20, "b");
        q.push_in_order(25, "timeout-2");
        q.push(20, "b2");
        assert_eq!(q.pop_until(5), None, "nothing due yet");
        let mut order = vec![];
        while let Some((at, e)) = q.pop_until(100) {
            order.push((at, e));
        }
        assert_eq!(
            order,
            [(10, "a"), (20, "timeout-1"), (20, "b"), (20, "b2"), (25, "timeout-2"), (30, "c")]
        );
    }

    #[test]
    fn an_in_order_event_never_comes_before_one_pushed_earlier_that_way() {
        let mut q = Queue::default();
        q.push_in_order(50, 1);
        q.push_in_order(40, 2);
        assert_eq!(q.pop_until(45), None);
        assert_eq!(q.pop_until(50), Some((50, 1)));
        assert_eq!(q.pop_until(50), Some((50, 2)));
    }
}
