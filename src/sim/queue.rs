//! The simulators' event queue: events ordered by simulated time, and
//! events due at the same time in the order they were scheduled, so that a
//! seed replays exactly.
//!
//! What it does: keeps each event in a slot and only a small key
//! `(time, order, slot)` in the binary heap, so that the heap's sifts move
//! 24 bytes instead of whole events (messages with their entries): the
//! heap's moves were a tenth of a consensus seed's time.
//!
//! What it does not do: cancel events (a stale one is recognised by its
//! receiver, by incarnation) or bound its length (`sim::over_budget` does).
//!
//! Invariants: every key in the heap names an occupied slot; a slot is
//! occupied by exactly one key; `free` lists exactly the empty slots.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Reverse<(u64, u64, u32)>>,
    slots: Vec<Option<E>>,
    free: Vec<u32>,
    scheduled_total: u64,
}

impl<E> EventQueue<E> {
    pub(crate) fn new() -> EventQueue<E> {
        EventQueue {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            scheduled_total: 0,
        }
    }

    /// Schedules `event` at simulated time `at_us`, after every event
    /// already scheduled at that time.
    pub(crate) fn push(&mut self, at_us: u64, event: E) {
        let slot = match self.free.pop() {
            Some(slot) => {
                assert!(self.slots[slot as usize].is_none(), "a free slot is empty");
                self.slots[slot as usize] = Some(event);
                slot
            }
            None => {
                let slot = u32::try_from(self.slots.len()).expect("fewer than 2^32 events pending");
                self.slots.push(Some(event));
                slot
            }
        };
        self.scheduled_total += 1;
        self.heap.push(Reverse((at_us, self.scheduled_total, slot)));
    }

    /// The earliest event and its time.
    pub(crate) fn pop(&mut self) -> Option<(u64, E)> {
        let Reverse((at_us, _, slot)) = self.heap.pop()?;
        let event = self.slots[slot as usize]
            .take()
            .expect("a scheduled slot holds its event");
        self.free.push(slot);
        Some((at_us, event))
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn clear(&mut self) {
        self.heap.clear();
        self.slots.clear();
        self.free.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::EventQueue;

    #[test]
    fn events_leave_by_time_then_by_the_order_they_came() {
        let mut q = EventQueue::new();
        q.push(20, "b");
        q.push(10, "a");
        q.push(20, "c");
        assert_eq!(q.pop(), Some((10, "a")));
        // A freed slot is reused, and order still follows scheduling.
        q.push(20, "d");
        q.push(5, "first");
        assert_eq!(q.len(), 4);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, vec![(5, "first"), (20, "b"), (20, "c"), (20, "d")]);
        q.push(1, "x");
        q.clear();
        assert_eq!(q.pop(), None);
    }
}
