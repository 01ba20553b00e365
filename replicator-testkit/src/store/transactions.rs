//! Explicit transactions (the legacy TCP protocol's TransactionStart, Write and
//! Commit): prepares that hold log positions but stay out of every read until
//! the commit, then enter `$all` with commit ≠ prepare.

use super::*;

/// An explicit transaction started and not yet committed: its prepares hold
/// positions in the log but are kept out of it (and out of every read) until the
/// commit.
#[derive(Debug)]
pub(super) struct Pending {
    stream: String,
    expected: Expected,
    /// The events written so far, each with its prepare position.
    events: Vec<(Proposed, u64)>,
}

/// Outcome of a transaction request that names a transaction id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TransactionOutcome {
    /// The id is not that of a pending transaction (never started, or already
    /// committed): v5's `InvalidTransaction`.
    Unknown,
    /// The transaction's outcome.
    Done(WriteOutcome),
}

impl Store {
    /// TransactionStart: writes the TransactionBegin record and returns its
    /// position, the transaction's id. Nothing is checked yet: v5 checks the
    /// expected version at the commit.
    pub(crate) fn start_transaction(&mut self, stream: &str, expected: Expected) -> u64 {
        let id = self.reserve(record_size(stream, "", 0));
        self.transactions.insert(
            id,
            Pending {
                stream: stream.to_owned(),
                expected,
                events: Vec::new(),
            },
        );
        id
    }

    /// TransactionWrite: writes the events' prepares, which take their places in
    /// the log but stay invisible until the commit. `false` when `id` is not a
    /// pending transaction.
    pub(crate) fn write_transaction(&mut self, id: u64, events: Vec<Proposed>) -> bool {
        let Some(stream) = self.transactions.get(&id).map(|t| t.stream.clone()) else {
            return false;
        };
        let placed: Vec<(Proposed, u64)> = events
            .into_iter()
            .map(|event| {
                let size = record_size(
                    &stream,
                    &event.event_type,
                    event.data.len() + event.custom_metadata.len(),
                );
                let position = self.reserve(size);
                (event, position)
            })
            .collect();
        if let Some(pending) = self.transactions.get_mut(&id) {
            pending.events.extend(placed);
        }
        true
    }

    /// Number of events written so far to the pending transaction `id` (0 when
    /// there is none).
    pub(crate) fn pending_events(&self, id: u64) -> usize {
        self.transactions.get(&id).map_or(0, |t| t.events.len())
    }

    /// TransactionCommit: checks the expected version against the stream as it is
    /// now, then writes the TransactionEnd prepare and the commit record at C, and
    /// moves the transaction's events into the log, each committed at C with its
    /// own prepare position, so `$all` holds them after everything committed
    /// before C. The outcome's position is C. The transaction is over whatever
    /// the outcome.
    pub(crate) fn commit_transaction(&mut self, id: u64) -> TransactionOutcome {
        let Some(Pending {
            stream,
            expected,
            events,
        }) = self.transactions.remove(&id)
        else {
            return TransactionOutcome::Unknown;
        };
        if self.tombstoned(&stream) {
            return TransactionOutcome::Done(WriteOutcome::StreamDeleted);
        }
        let proposed: Vec<Proposed> = events.iter().map(|(event, _)| event.clone()).collect();
        if let Some(repeat) = self.idempotent_repeat(&stream, expected, &proposed) {
            return TransactionOutcome::Done(repeat);
        }
        if let Err(outcome) = self.check_expected(&stream, expected) {
            return TransactionOutcome::Done(outcome);
        }
        if !events.is_empty() && self.soft_deleted(&stream) {
            // Revived as by an append; the metadata record lies before the commit.
            let recreate_from = self.last_revision(&stream).map_or(0, |r| r + 1);
            self.rewrite_truncate_before(&stream, recreate_from);
        }
        self.reserve(record_size(&stream, "", 0));
        let commit = self.reserve(COMMIT_RECORD);
        self.begin_write();
        let metadata: Vec<_> = events
            .into_iter()
            .filter_map(|(event, prepare)| self.push_at(&stream, event, prepare, commit))
            .collect();
        for (base, parsed) in metadata {
            self.apply_metadata(&base, parsed);
        }
        TransactionOutcome::Done(WriteOutcome::Success {
            current: self.last_revision(&stream),
            position: Some(commit),
        })
    }
}
