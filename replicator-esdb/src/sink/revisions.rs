//! What the sink remembers of target revisions: the renumbering offset of
//! streams that do not line up with the source ([`RevisionMode::FromSource`]),
//! the last revision of tracked target streams ([`RevisionMode::Tracked`]),
//! and the guess each append run starts from.

use replicator_core::Event;

use super::{EsdbSink, RevisionMode};
use crate::plan::{Done, Guess};

/// Renumbered streams remembered at most (the map holds only those).
const MAX_REMEMBERED_OFFSETS: usize = 100_000;

/// Target streams whose last revision [`RevisionMode::Tracked`] remembers at
/// most (about 100 bytes each).
const MAX_TRACKED_STREAMS: usize = 100_000;

impl EsdbSink {
    pub(super) fn offset(&self, stream: &str) -> i64 {
        let offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        offsets.get(stream).copied().unwrap_or(0)
    }

    pub(super) fn remember_offset(&self, stream: &str, offset: i64) {
        let mut offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if offset == 0 {
            offsets.remove(stream);
            return;
        }
        if offsets.len() >= MAX_REMEMBERED_OFFSETS {
            // Only a cache: forgetting costs a lookup on the next write.
            offsets.clear();
        }
        offsets.insert(stream.to_owned(), offset);
    }

    /// Whether `stream`'s revisions are tracked ([`RevisionMode::Tracked`];
    /// `$$` metadata streams never are).
    pub(super) fn is_tracked(&self, stream: &str) -> bool {
        self.revisions == RevisionMode::Tracked && !stream.starts_with("$$")
    }

    /// Where `events` (a run of `stream`) most likely go on the target, and
    /// the renumbering offset that guess used.
    pub(super) fn guess(&self, stream: &str, events: &[&Event], tracked: bool) -> (Guess, i64) {
        if tracked {
            let guess = self.tracked_next(stream).map(Guess::At);
            // Not known: a run that starts its source stream most likely
            // starts the target stream too (no read for a fresh stream).
            let guess = guess.unwrap_or(match events[0].revision {
                0 => Guess::New,
                _ => Guess::Unknown,
            });
            (guess, 0)
        } else {
            let offset = self.offset(stream);
            // A negative result cannot come from offsets we computed: start
            // over from the source revision.
            let revision =
                u64::try_from(events[0].revision as i64 + offset).unwrap_or(events[0].revision);
            (Guess::At(revision), offset)
        }
    }

    /// A tracked stream's next target revision as the target last confirmed.
    pub(super) fn tracked_next(&self, stream: &str) -> Option<u64> {
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .map(|last| last + 1)
    }

    /// Remembers what a finished run taught about its target stream: the
    /// last revision of a tracked stream, the renumbering offset of another.
    pub(super) fn learn(
        &self,
        stream: &str,
        events: &[&Event],
        done: Done,
        tracked: bool,
        offset: i64,
    ) {
        if tracked {
            self.remember_last(stream, done);
        } else if let Some(last) = done.last_revision {
            let last_source = events[events.len() - 1].revision;
            let learnt = last as i64 - last_source as i64;
            if learnt != offset {
                self.remember_offset(stream, learnt);
            }
        }
    }

    /// Forgets the tracked revisions of `batch`'s target streams, after a
    /// failed write: the streams written before the failure are ahead of
    /// the batch's records, and its retry must find them on the target as
    /// replays instead of appending them after themselves.
    pub(super) fn forget_tracked(&self, batch: &[Event]) {
        if self.revisions != RevisionMode::Tracked {
            return;
        }
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        for event in batch {
            tracked.remove(event.target_stream());
        }
    }

    /// Remembers where a tracked target stream ends after a run.
    fn remember_last(&self, stream: &str, done: Done) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        match done.last_revision {
            Some(last) if !done.deleted => {
                if tracked.len() >= MAX_TRACKED_STREAMS && !tracked.contains_key(stream) {
                    // Only a cache: a forgotten stream costs one failed
                    // append and a tail read on its next write. Forget half
                    // (an arbitrary half: the map's order).
                    let mut keep = false;
                    tracked.retain(|_, _| {
                        keep = !keep;
                        keep
                    });
                }
                tracked.insert(stream.to_owned(), last);
            }
            _ => {
                tracked.remove(stream);
            }
        }
    }
}
