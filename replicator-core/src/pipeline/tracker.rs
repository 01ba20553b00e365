//! Sequence numbers of read records, folded back into source order.

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::model::Position;

pub(super) struct Slot {
    pub(super) position: Position,
    pub(super) created: SystemTime,
    done: bool,
}

/// Every record read gets a sequence number; writers acknowledge them in any
/// order, and the frontier only moves over a contiguous run of done records,
/// so a checkpoint never passes a record still in flight.
#[derive(Default)]
pub(super) struct Tracker {
    base: u64,
    slots: VecDeque<Slot>,
}

impl Tracker {
    pub(super) fn push(&mut self, position: Position, created: SystemTime) -> u64 {
        self.slots.push_back(Slot {
            position,
            created,
            done: false,
        });
        self.base + self.slots.len() as u64 - 1
    }

    pub(super) fn complete(&mut self, seq: u64) {
        // Only sequence numbers handed out and not yet popped can come back.
        let slot = &mut self.slots[(seq - self.base) as usize];
        debug_assert!(!slot.done, "sequence {seq} acknowledged twice");
        slot.done = true;
    }

    /// Pops the contiguous run of done slots; returns how many and the last one.
    pub(super) fn advance(&mut self) -> (u64, Option<Slot>) {
        let mut count = 0;
        let mut last = None;
        while self.slots.front().is_some_and(|s| s.done) {
            last = self.slots.pop_front();
            self.base += 1;
            count += 1;
        }
        (count, last)
    }

    /// Forgets the newest slot (a record read but never dispatched).
    pub(super) fn forget_last(&mut self) {
        self.slots.pop_back();
    }

    /// Forgets slot `seq` and every newer one (records read but never
    /// dispatched, and what was read after them); how many.
    pub(super) fn forget_from(&mut self, seq: u64) -> usize {
        let keep = usize::try_from(seq.saturating_sub(self.base)).unwrap_or(usize::MAX);
        let dropped = self.slots.len().saturating_sub(keep);
        self.slots.truncate(keep);
        dropped
    }

    /// Records read and not yet processed.
    pub(super) fn in_flight(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracker_advances_only_over_contiguous_done_slots() {
        let mut t = Tracker::default();
        let seqs: Vec<u64> = (0..4)
            .map(|i| t.push(Position::at(i * 10), SystemTime::UNIX_EPOCH))
            .collect();
        t.complete(seqs[1]);
        t.complete(seqs[3]);
        assert_eq!(t.advance().0, 0, "slot 0 is still in flight");
        t.complete(seqs[0]);
        let (n, last) = t.advance();
        assert_eq!((n, last.map(|s| s.position)), (2, Some(Position::at(10))));
        t.complete(seqs[2]);
        let (n, last) = t.advance();
        assert_eq!((n, last.map(|s| s.position)), (2, Some(Position::at(30))));
        assert_eq!(t.in_flight(), 0);
    }
}
