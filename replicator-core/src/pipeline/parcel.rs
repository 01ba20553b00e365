//! What a writer's queue carries: one record, or the records of one commit,
//! which a writer never splits between batches.
//!
//! An EventStoreDB v5 transaction is one commit of several records (they
//! share a commit position). The reader marks every record but a commit's
//! last with [`Event::more_in_commit`]; the dispatcher gathers a commit's
//! records (`Commit`) and hands them to their writer as one item, so the
//! writer sees all of them or none, and puts them in one batch. The sinks
//! keep a batch's consecutive records of a stream in one append, so a
//! transaction lands on the target in one append, as it was written.

use std::mem;

use crate::model::Event;

/// One item of a writer's queue.
pub(super) enum Parcel {
    /// A record and its sequence number: the common case.
    One(u64, Event),
    /// The records of one commit that go to this writer, in source order.
    Commit(Vec<(u64, Event)>),
}

impl Parcel {
    /// One record, or several as one commit.
    pub(super) fn of(mut records: Vec<(u64, Event)>) -> Self {
        if records.len() == 1 {
            let (seq, event) = records.pop().expect("one record");
            return Parcel::One(seq, event);
        }
        Parcel::Commit(records)
    }

    /// How many records.
    pub(super) fn len(&self) -> usize {
        match self {
            Parcel::One(..) => 1,
            Parcel::Commit(records) => records.len(),
        }
    }

    /// Their payload bytes ([`Event::payload_len`]).
    pub(super) fn payload_len(&self) -> usize {
        match self {
            Parcel::One(_, event) => event.payload_len(),
            Parcel::Commit(records) => records.iter().map(|(_, e)| e.payload_len()).sum(),
        }
    }

    /// The lowest sequence number (the first record's).
    pub(super) fn first_seq(&self) -> u64 {
        match self {
            Parcel::One(seq, _) => *seq,
            Parcel::Commit(records) => records.first().map_or(u64::MAX, |r| r.0),
        }
    }

    /// Moves the records, in order, to the ends of `seqs` and `events`.
    pub(super) fn unpack(self, seqs: &mut Vec<u64>, events: &mut Vec<Event>) {
        match self {
            Parcel::One(seq, event) => {
                seqs.push(seq);
                events.push(event);
            }
            Parcel::Commit(records) => {
                seqs.reserve(records.len());
                events.reserve(records.len());
                for (seq, event) in records {
                    seqs.push(seq);
                    events.push(event);
                }
            }
        }
    }
}

/// A commit whose last record the dispatcher has not seen yet: its records,
/// per partition, in source order.
pub(super) struct OpenCommit {
    /// The commit position its records share.
    pub(super) commit: u64,
    parts: Vec<(usize, Vec<(u64, Event)>)>,
}

impl OpenCommit {
    pub(super) fn new(commit: u64) -> Self {
        OpenCommit {
            commit,
            parts: Vec::new(),
        }
    }

    /// Adds a record bound for `partition`.
    pub(super) fn push(&mut self, partition: usize, seq: u64, event: Event) {
        match self.parts.iter_mut().find(|(p, _)| *p == partition) {
            Some((_, records)) => records.push((seq, event)),
            None => self.parts.push((partition, vec![(seq, event)])),
        }
    }

    /// The lowest sequence number held, if any.
    pub(super) fn first_seq(&self) -> Option<u64> {
        self.parts
            .iter()
            .filter_map(|(_, r)| r.first())
            .map(|r| r.0)
            .min()
    }

    /// The parcels to hand over: one per partition.
    pub(super) fn close(&mut self) -> impl Iterator<Item = (usize, Parcel)> {
        mem::take(&mut self.parts)
            .into_iter()
            .map(|(partition, records)| (partition, Parcel::of(records)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Position;

    fn record(seq: u64) -> (u64, Event) {
        (
            seq,
            Event::new("s", "T", "{}").with_position(Position::at(seq)),
        )
    }

    #[test]
    fn a_commit_is_one_parcel_per_partition_in_order() {
        let mut open = OpenCommit::new(9);
        let (s1, e1) = record(1);
        let (s2, e2) = record(2);
        let (s3, e3) = record(3);
        open.push(0, s1, e1);
        open.push(1, s2, e2);
        open.push(0, s3, e3);
        assert_eq!(open.first_seq(), Some(1));
        let parcels: Vec<_> = open.close().collect();
        assert_eq!(parcels.len(), 2);
        let (mut seqs, mut events) = (Vec::new(), Vec::new());
        for (partition, parcel) in parcels {
            seqs.push(partition as u64 * 100 + parcel.len() as u64);
            parcel.unpack(&mut Vec::new(), &mut events);
        }
        assert_eq!(seqs, [2, 101]);
        let positions: Vec<u64> = events.iter().map(|e| e.position.commit).collect();
        assert_eq!(positions, [1, 3, 2]);
        assert_eq!(open.first_seq(), None);
    }
}
