//! Pure planning of a sink batch: which appends and tombstones to issue, in
//! which order, and how a replay is recognised on the target. Kept free of I/O
//! so it can be tested exhaustively.

use std::collections::HashMap;

use replicator_core::{ChangeKind, Event, Position};
use uuid::Uuid;

/// Fixed per-event allowance (ids, type, protobuf framing) added to the payload
/// when capping an append's size.
const EVENT_OVERHEAD: usize = 128;

/// One operation on the target.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// Append these records, in order, to `stream` (a user stream, or a `$$`
    /// metadata stream: metadata and soft deletes are metadata records).
    Append {
        /// The stream records go to: the record's own stream.
        stream: &'a str,
        /// Records of `stream`, consecutive in source order.
        events: Vec<&'a Event>,
    },
    /// Tombstone the record's target stream.
    Tombstone(&'a Event),
}

/// The steps of one target stream, to apply strictly in order.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct StreamPlan<'a> {
    /// The target stream every step affects.
    pub(crate) target_stream: &'a str,
    /// What to do, in source order.
    pub(crate) steps: Vec<Step<'a>>,
}

/// Splits a batch into per-target-stream plans.
///
/// Plans of different target streams are independent and may run
/// concurrently. Within one plan, consecutive records of the same stream are
/// merged into one append of at most `max_append_bytes` (but always at least
/// one record); metadata records and tombstones are steps of their own.
/// Skipped records produce nothing.
pub(crate) fn plan(batch: &[Event], max_append_bytes: usize) -> Vec<StreamPlan<'_>> {
    let mut plans: Vec<StreamPlan<'_>> = Vec::new();
    // Per plan, the size of its last step when that is an append still open
    // to more records (kept here, not summed again per record).
    let mut open_bytes: Vec<usize> = Vec::new();
    // Plan index by target stream; consecutive records of one stream (the
    // common case) skip the lookup.
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut last: Option<usize> = None;
    for event in batch {
        if !event.kind.is_write() {
            continue;
        }
        let target = event.target_stream();
        let i = match last {
            Some(i) if plans[i].target_stream == target => i,
            _ => *index.entry(target).or_insert_with(|| {
                plans.push(StreamPlan {
                    target_stream: target,
                    steps: Vec::new(),
                });
                open_bytes.push(0);
                plans.len() - 1
            }),
        };
        last = Some(i);
        push_step(
            &mut plans[i].steps,
            &mut open_bytes[i],
            event,
            max_append_bytes,
        );
    }
    plans
}

/// A batch's steps in source order, for a sink that keeps the source's
/// `$all` order: consecutive records of one stream merged into one append of
/// at most `max_append_bytes` (at least one record), metadata records and
/// tombstones steps of their own, skipped records left out. Applied one
/// after the other, the steps put the records on the target in the batch's
/// order.
pub(crate) fn sequence(batch: &[Event], max_append_bytes: usize) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    let mut open_bytes = 0;
    for event in batch.iter().filter(|e| e.kind.is_write()) {
        push_step(&mut steps, &mut open_bytes, event, max_append_bytes);
    }
    steps
}

/// Adds `event` (a write) to `steps`: to the last step when that is an append
/// of plain events to the same stream with room for it (`open_bytes` is that
/// step's size), else as a new step.
fn push_step<'a>(
    steps: &mut Vec<Step<'a>>,
    open_bytes: &mut usize,
    event: &'a Event,
    max_append_bytes: usize,
) {
    match event.kind {
        ChangeKind::Tombstone => steps.push(Step::Tombstone(event)),
        ChangeKind::Append | ChangeKind::StreamMetadata | ChangeKind::SoftDelete => {
            // A metadata record goes alone: writing one can make the server
            // write a record of its own right after it (the `$tb` that
            // revives a soft-deleted stream), which would land in the middle
            // of a longer append.
            let alone = event.kind != ChangeKind::Append;
            let size = append_size(event);
            if let Some(Step::Append { stream, events }) = steps.last_mut() {
                if !alone
                    && events[0].kind == ChangeKind::Append
                    && *stream == event.stream
                    && *open_bytes + size <= max_append_bytes
                {
                    events.push(event);
                    *open_bytes += size;
                    return;
                }
            }
            steps.push(Step::Append {
                stream: &event.stream,
                events: vec![event],
            });
            *open_bytes = size;
        }
        ChangeKind::Skip(_) => unreachable!("only writes are planned"),
    }
}

fn append_size(event: &Event) -> usize {
    event.payload_len() + event.event_type.len() + EVENT_OVERHEAD
}

/// A record as the target holds it, for replay detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TargetRecord {
    /// Its revision in the target stream.
    pub(crate) revision: u64,
    /// Its event id.
    pub(crate) id: Uuid,
    /// Its event type.
    pub(crate) event_type: String,
    /// Its data.
    pub(crate) data: bytes::Bytes,
    /// Its position in the target `$all`.
    pub(crate) position: Position,
}

/// How much of an append run the target already holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Replay {
    /// The first `written` records are on the target already (visible, or
    /// hidden by truncation or a soft delete); append the rest after the
    /// target's current revision. `position` is the target position of the
    /// last one seen, when it was visible.
    Written {
        /// How many leading records are already written.
        written: usize,
        /// Target position of the last written record that could be read.
        position: Option<Position>,
    },
    /// The target holds another record where `events[index]` belongs.
    Diverged {
        /// Index in the run of the record that does not match.
        index: usize,
        /// What the target has there.
        found: Uuid,
    },
}

/// Compares a run of records (meant for target revisions `first_target..`)
/// with what the target holds from `first_target` on (`target`, as read
/// forwards with at most `events.len()` records) and its current last
/// revision (`last`, `None` when the stream does not exist).
///
/// A revision the target has (`<= last`) but did not return is hidden by
/// truncation (`$tb`, `$maxCount`) or a soft delete: it is taken as written,
/// because the target's metadata mirrors the source's. A metadata record with
/// the same type and data counts as written even under another id: a server
/// writes such a record itself when a soft-deleted stream is appended to.
pub(crate) fn match_replay(
    events: &[&Event],
    first_target: u64,
    target: &[TargetRecord],
    last: Option<u64>,
    is_metadata_stream: bool,
) -> Replay {
    let mut position = None;
    for (index, event) in events.iter().enumerate() {
        let revision = first_target + index as u64;
        if last.is_none_or(|last| revision > last) {
            return Replay::Written {
                written: index,
                position,
            };
        }
        match target.iter().find(|r| r.revision == revision) {
            Some(record)
                if record.id == event.id
                    || (is_metadata_stream
                        && record.event_type == event.event_type
                        && same_but_truncate_before(&record.data, &event.data)) =>
            {
                position = Some(record.position);
            }
            Some(record) => {
                return Replay::Diverged {
                    index,
                    found: record.id,
                }
            }
            None => {}
        }
    }
    Replay::Written {
        written: events.len(),
        position,
    }
}

/// Appends made for one run (each after learning more about the target)
/// before giving up with [`Action::Unsettled`].
pub(crate) const MAX_APPENDS: usize = 8;

/// Where the sink expects a run's first record on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Guess {
    /// At this target revision: the source revision (plus a renumbering
    /// offset), or the tracked last revision of the target stream plus one.
    At(u64),
    /// Not known, but the run starts its source stream (source revision 0):
    /// most likely a new target stream, so append as to a new stream, and
    /// learn from the reply otherwise.
    New,
    /// Not known: ask the target where the stream ends first (an append
    /// expecting [`PROBE_REVISION`], which it refuses saying so), then search
    /// its tail. Not "no stream": a soft-deleted stream accepts that, and
    /// would take a replay of records it hides as new ones.
    Unknown,
}

/// An expected revision no stream has: an append stating it is refused with
/// the stream's current revision. Far below `i64::MAX`, which servers use as
/// a marker (a tombstone's revision).
pub(crate) const PROBE_REVISION: u64 = (i64::MAX - 1) as u64;

/// The expected revision an append states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    /// The stream does not exist (or is soft-deleted).
    NoStream,
    /// The stream's last revision is this one.
    Exact(u64),
}

impl Expected {
    /// What to expect when appending at target revision `revision`.
    pub(crate) fn before(revision: u64) -> Self {
        match revision {
            0 => Expected::NoStream,
            n => Expected::Exact(n - 1),
        }
    }

    /// The target revision the first record appended with this goes to.
    pub(crate) fn next_revision(self) -> u64 {
        match self {
            Expected::NoStream => 0,
            Expected::Exact(last) => last + 1,
        }
    }

    /// Whether an append stating this succeeds on a stream whose last
    /// revision is `current` (`None`: no such stream).
    pub(crate) fn matches(self, current: Option<u64>) -> bool {
        match (self, current) {
            (Expected::NoStream, None) => true,
            (Expected::Exact(n), Some(c)) => n == c,
            _ => false,
        }
    }
}

/// What the sink should do next for a run; see [`AppendRun`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Append the run's records from index `from` on with `expected`, then
    /// report [`Reply::Appended`], [`Reply::WrongExpected`] or
    /// [`Reply::Deleted`].
    Append {
        /// Index in the run of the first record to append.
        from: usize,
        /// The expected revision to state.
        expected: Expected,
        /// Something worth logging about this append.
        note: Option<Note>,
    },
    /// Read up to `count` records of the stream forwards from `revision`,
    /// then report [`Reply::Records`] (or [`Reply::Deleted`]).
    Read {
        /// First revision to read.
        revision: u64,
        /// How many records at most.
        count: usize,
    },
    /// Read the stream's last records backwards from its end (the sink's
    /// search depth), then report [`Reply::Records`] (or [`Reply::Deleted`]).
    SearchTail,
    /// The run is on the target.
    Done(Done),
    /// The target holds other records where the run's belong: permanent.
    Diverged(Divergence),
    /// The target stream kept changing while the run was matched (someone
    /// else writes to it): worth a retry. `index` is the record in the run.
    Unsettled {
        /// Index in the run of the first record not known to be written.
        index: usize,
    },
}

/// What the target said about the last [`Action`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The append succeeded; `last` is the stream's last revision after it,
    /// when the reply said.
    Appended {
        /// Target position of the write.
        position: Option<Position>,
        /// The target stream's last revision after the write.
        last: Option<u64>,
    },
    /// The append's expected revision was wrong; `current` is the stream's
    /// last revision (`None`: no such stream).
    WrongExpected {
        /// The stream's last revision.
        current: Option<u64>,
    },
    /// The stream is tombstoned.
    Deleted,
    /// The records a [`Action::Read`] or [`Action::SearchTail`] returned, in
    /// any order. A missing or soft-deleted stream returns none.
    Records(Vec<TargetRecord>),
}

/// Worth logging about an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Note {
    /// The first records are on the target already (a replay); appending
    /// the rest.
    Replayed {
        /// How many leading records of the run are already written.
        written: usize,
    },
    /// The run's records are not on the target, which ends before the
    /// guessed revision: appending after its end instead.
    Renumbered {
        /// The revision the records were expected at.
        guessed: u64,
        /// The revision they go to.
        target: u64,
    },
}

/// How a run ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Done {
    /// Target position of the last record written or seen, when known.
    pub(crate) position: Option<Position>,
    /// Target revision of the run's last record, when known (not when the
    /// stream is tombstoned).
    pub(crate) last_revision: Option<u64>,
    /// The target stream is tombstoned: everything counts as written.
    pub(crate) deleted: bool,
}

/// The target holds another record where one of the run's belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Divergence {
    /// Index in the run of the record that does not match.
    pub(crate) index: usize,
    /// The id the target holds there.
    pub(crate) found: Uuid,
    /// The target revision.
    pub(crate) revision: u64,
}

/// What the machine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Append,
    Read(u64),
    Tail,
    Finished,
}

/// The replay decision for one run (consecutive records of one stream),
/// as a state machine free of I/O: the sink performs each [`Action`] and
/// hands the target's answer back with [`AppendRun::step`].
///
/// The run is appended at the guessed revision. When the target disagrees:
/// - it is at or past the guess: the records there are read and compared by
///   event id ([`match_replay`]); those already written are skipped, the
///   rest appended after them;
/// - it is behind the guess, or the guess is unknown, or the comparison
///   found other records: the stream's tail is searched for the run's
///   records by event id. Found: they are matched in order from there (the
///   target holds a prefix of what this run sends, since one writer appends
///   each target stream in source order), the written ones skipped.
///   Not found: the run is appended after the target's end, unless the
///   target, at or past the guess, held other records there
///   ([`Action::Diverged`]).
///
/// The tail is searched at most once per run, and at most [`MAX_APPENDS`]
/// appends are made.
#[derive(Debug)]
pub(crate) struct AppendRun<'r, 'e> {
    events: &'r [&'e Event],
    is_metadata_stream: bool,
    /// `events[..done]` are on the target.
    done: usize,
    /// The target revision `events[done]` is expected at.
    first: Option<u64>,
    /// The stream's last revision, as the last wrong-expected reply said.
    current: Option<u64>,
    waiting: Waiting,
    searched: bool,
    /// A comparison that found other records, kept while the tail is
    /// searched.
    diverged: Option<Divergence>,
    position: Option<Position>,
    appends: usize,
    /// Start with a probe ([`Guess::Unknown`]).
    probe: bool,
    /// An append of the run succeeded.
    appended: bool,
}

impl<'r, 'e> AppendRun<'r, 'e> {
    /// A run of `events` (never empty) of one stream, expected at `guess`.
    pub(crate) fn new(events: &'r [&'e Event], guess: Guess, is_metadata_stream: bool) -> Self {
        assert!(!events.is_empty(), "a run has records");
        AppendRun {
            events,
            is_metadata_stream,
            done: 0,
            first: match guess {
                Guess::At(revision) => Some(revision),
                Guess::New | Guess::Unknown => None,
            },
            probe: guess == Guess::Unknown,
            current: None,
            waiting: Waiting::Finished,
            searched: false,
            diverged: None,
            position: None,
            appends: 0,
            appended: false,
        }
    }

    /// The first action: append everything at the guess.
    pub(crate) fn start(&mut self) -> Action {
        match self.first {
            Some(first) => self.append_at(first, None),
            None => {
                self.appends += 1;
                self.waiting = Waiting::Append;
                Action::Append {
                    from: 0,
                    expected: if self.probe {
                        Expected::Exact(PROBE_REVISION)
                    } else {
                        Expected::NoStream
                    },
                    note: None,
                }
            }
        }
    }

    /// Whether an append of the run succeeded: not all of its records were
    /// on the target already.
    pub(crate) fn appended(&self) -> bool {
        self.appended
    }

    /// The run's record at `index`.
    pub(crate) fn event(&self, index: usize) -> &'e Event {
        self.events[index]
    }

    /// The record the next action is about (for error messages).
    pub(crate) fn current_event(&self) -> &'e Event {
        self.events[self.done.min(self.events.len() - 1)]
    }

    /// The next action, given the target's reply to the last one.
    ///
    /// # Panics
    /// When `reply` cannot answer the last action (a bug in the caller).
    pub(crate) fn step(&mut self, reply: Reply) -> Action {
        match (self.waiting, reply) {
            (Waiting::Finished, reply) => panic!("{reply:?} after the run ended"),
            (_, Reply::Deleted) => self.finish(None, true),
            (Waiting::Append, Reply::Appended { position, last }) => {
                self.position = self.position.max(position);
                let remaining = (self.events.len() - self.done) as u64;
                // The revision of the run's last record. The stream's last
                // revision may be past it: a server adds a `$tb` record of its
                // own after metadata written to a soft-deleted stream. Only
                // an append as to a new stream needs the reply to know.
                let last = match self.first {
                    Some(first) => Some(first + remaining - 1),
                    None => last,
                };
                self.done = self.events.len();
                self.appended = true;
                self.finish(last, false)
            }
            (Waiting::Append, Reply::WrongExpected { current }) => self.wrong_expected(current),
            (Waiting::Read(revision), Reply::Records(records)) => self.compare(revision, &records),
            (Waiting::Tail, Reply::Records(records)) => self.locate(&records),
            (waiting, reply) => panic!("{reply:?} does not answer {waiting:?}"),
        }
    }

    fn pending(&self) -> &'r [&'e Event] {
        &self.events[self.done..]
    }

    fn finish(&mut self, last_revision: Option<u64>, deleted: bool) -> Action {
        self.waiting = Waiting::Finished;
        Action::Done(Done {
            position: self.position,
            last_revision,
            deleted,
        })
    }

    fn append_at(&mut self, revision: u64, note: Option<Note>) -> Action {
        if self.appends == MAX_APPENDS {
            self.waiting = Waiting::Finished;
            return Action::Unsettled { index: self.done };
        }
        self.appends += 1;
        self.first = Some(revision);
        self.waiting = Waiting::Append;
        Action::Append {
            from: self.done,
            expected: Expected::before(revision),
            note,
        }
    }

    fn search_tail(&mut self) -> Action {
        self.searched = true;
        self.waiting = Waiting::Tail;
        Action::SearchTail
    }

    fn wrong_expected(&mut self, current: Option<u64>) -> Action {
        self.current = current;
        match (self.first, current) {
            // The target is at or past where the records belong: are they ours?
            (Some(first), Some(last)) if last >= first => {
                self.waiting = Waiting::Read(first);
                Action::Read {
                    revision: first,
                    count: self.pending().len(),
                }
            }
            // Behind the guess, or no guess: find the records by id.
            (_, Some(_)) if !self.searched => self.search_tail(),
            // Nothing of them there: append after the target's end.
            (first, current) => {
                let target = current.map_or(0, |c| c + 1);
                let note = first
                    .filter(|&f| f != target)
                    .map(|guessed| Note::Renumbered { guessed, target });
                self.append_at(target, note)
            }
        }
    }

    /// After reading forwards from `revision`, where `pending()[0]` belongs.
    fn compare(&mut self, revision: u64, records: &[TargetRecord]) -> Action {
        match match_replay(
            self.pending(),
            revision,
            records,
            self.current,
            self.is_metadata_stream,
        ) {
            Replay::Written { written, position } => self.skip(revision, written, position),
            Replay::Diverged { index, found } => {
                let divergence = Divergence {
                    index: self.done + index,
                    found,
                    revision: revision + index as u64,
                };
                if self.searched {
                    self.waiting = Waiting::Finished;
                    Action::Diverged(divergence)
                } else {
                    self.diverged = Some(divergence);
                    self.search_tail()
                }
            }
        }
    }

    /// `written` records from `revision` on are on the target: skip them.
    fn skip(&mut self, revision: u64, written: usize, position: Option<Position>) -> Action {
        self.position = self.position.max(position);
        self.done += written;
        let next = revision + written as u64;
        if self.done == self.events.len() {
            return self.finish(Some(next - 1), false);
        }
        let note = (written > 0).then_some(Note::Replayed { written });
        self.append_at(next, note)
    }

    /// After reading the stream's tail: where are the pending records?
    fn locate(&mut self, tail: &[TargetRecord]) -> Action {
        let last = tail.iter().map(|r| r.revision).max().max(self.current);
        let found = self.pending().iter().enumerate().find_map(|(i, event)| {
            tail.iter()
                .find(|r| r.id == event.id)
                .map(|r| (i, r.revision))
        });
        match found {
            Some((index, revision)) => {
                let Some(first) = revision.checked_sub(index as u64) else {
                    // Found at a revision too low to hold the records before
                    // it: the target is not what this run continues.
                    self.waiting = Waiting::Finished;
                    return Action::Diverged(Divergence {
                        index: self.done,
                        found: tail
                            .iter()
                            .min_by_key(|r| r.revision)
                            .map_or(self.pending()[0].id, |r| r.id),
                        revision: 0,
                    });
                };
                self.current = last;
                self.diverged = None;
                self.searched = true;
                self.compare(first, tail)
            }
            None => match self.diverged.take() {
                Some(divergence) => {
                    self.waiting = Waiting::Finished;
                    Action::Diverged(divergence)
                }
                None => {
                    let target = last.map_or(0, |l| l + 1);
                    let note = self
                        .first
                        .filter(|&f| f != target)
                        .map(|guessed| Note::Renumbered { guessed, target });
                    self.append_at(target, note)
                }
            },
        }
    }
}

/// Whether two metadata documents are the same, or differ only in the
/// value of `$tb`.
///
/// A server writes a `$tb` record of its own when metadata is set on a
/// soft-deleted stream, pointing after the stream's last revision. The source
/// did the same, and its record is replicated; on the target the server has
/// already written one at that revision, with the target's revision (which
/// differs when the target's revisions do not follow the source's: events
/// left out, renumbered streams). The target's is the right one there.
fn same_but_truncate_before(target: &[u8], source: &[u8]) -> bool {
    if target == source {
        return true;
    }
    let parse = |data: &[u8]| {
        let mut document: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(data).ok()?;
        document.remove("$tb")?;
        Some(document)
    };
    match (parse(target), parse(source)) {
        (Some(target), Some(source)) => target == source,
        _ => false,
    }
}

/// The metadata document `data` with its truncate-before (`$tb`) moved by
/// `offset` (`target revision - source revision` of a renumbered stream), or
/// `None` when nothing changes: no offset, not a JSON object, no `$tb`, or the
/// soft-delete value `i64::MAX` (which means "everything", on any stream).
///
/// A source that lost a stream's first events (scavenged, or left out by the
/// scavenge filter) has them renumbered on the target; its `$tb` counts in
/// source revisions, so copied unchanged it would hide the very events that
/// were kept. Keys keep their meaning but not their order.
pub(crate) fn shift_truncate_before(data: &[u8], offset: i64) -> Option<bytes::Bytes> {
    if offset == 0 {
        return None;
    }
    let mut document: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(data).ok()?;
    let tb = document.get("$tb")?.as_u64()?;
    if tb >= i64::MAX as u64 {
        return None;
    }
    let shifted = (tb as i64).saturating_add(offset).max(0);
    document.insert("$tb".to_owned(), shifted.into());
    serde_json::to_vec(&document).ok().map(bytes::Bytes::from)
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bytes::Bytes;
    use replicator_core::{ContentType, SkipReason};

    use super::*;

    #[test]
    fn a_truncate_before_moves_with_a_renumbered_stream() {
        let shifted = |data: &str, offset| {
            shift_truncate_before(data.as_bytes(), offset)
                .map(|b| serde_json::from_slice::<serde_json::Value>(&b).unwrap())
        };
        assert_eq!(
            shifted(r#"{"$tb":7,"owner":"x"}"#, -5),
            Some(serde_json::json!({"$tb": 2, "owner": "x"}))
        );
        assert_eq!(
            shifted(r#"{"$tb":3}"#, -5),
            Some(serde_json::json!({"$tb": 0}))
        );
        assert_eq!(
            shifted(r#"{"$tb":3}"#, 2),
            Some(serde_json::json!({"$tb": 5}))
        );
        assert_eq!(shifted(r#"{"$tb":3}"#, 0), None, "not renumbered");
        assert_eq!(
            shifted(r#"{"$tb":9223372036854775807}"#, -5),
            None,
            "a soft delete"
        );
        assert_eq!(shifted(r#"{"$maxCount":3}"#, -5), None);
        assert_eq!(shifted("not json", -5), None);
    }

    fn event(stream: &str, revision: u64, kind: ChangeKind, data: &[u8]) -> Event {
        Event {
            id: Uuid::new_v4(),
            stream: stream.to_owned(),
            revision,
            event_type: match kind {
                ChangeKind::StreamMetadata | ChangeKind::SoftDelete => "$metadata".into(),
                ChangeKind::Tombstone => "$streamDeleted".into(),
                _ => "Happened".into(),
            },
            data: Bytes::copy_from_slice(data),
            metadata: Bytes::new(),
            content_type: ContentType::Json,
            created: SystemTime::UNIX_EPOCH,
            position: Position::at(revision),
            kind,
        }
    }

    fn ids(step: &Step<'_>) -> Vec<Uuid> {
        match step {
            Step::Append { events, .. } => events.iter().map(|e| e.id).collect(),
            Step::Tombstone(e) => vec![e.id],
        }
    }

    #[test]
    fn consecutive_records_of_a_stream_become_one_append_per_stream() {
        let batch = vec![
            event("a", 0, ChangeKind::Append, b"1"),
            event("b", 0, ChangeKind::Append, b"2"),
            event("a", 1, ChangeKind::Append, b"3"),
            event("$stats", 9, ChangeKind::Skip(SkipReason::SystemStream), b""),
            event("b", 1, ChangeKind::Append, b"4"),
            event("a", 2, ChangeKind::Append, b""),
        ];
        let plans = plan(&batch, 1 << 20);
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[0].target_stream, "a");
        assert_eq!(plans[0].steps.len(), 1);
        assert_eq!(
            ids(&plans[0].steps[0]),
            vec![batch[0].id, batch[2].id, batch[5].id]
        );
        assert_eq!(plans[1].target_stream, "b");
        assert_eq!(ids(&plans[1].steps[0]), vec![batch[1].id, batch[4].id]);
    }

    #[test]
    fn metadata_deletes_and_tombstones_keep_their_place_in_the_stream() {
        let batch = vec![
            event("a", 0, ChangeKind::Append, b"1"),
            event("$$a", 0, ChangeKind::StreamMetadata, br#"{"$maxCount":3}"#),
            event("a", 1, ChangeKind::Append, b"2"),
            event(
                "$$a",
                1,
                ChangeKind::SoftDelete,
                br#"{"$tb":9223372036854775807}"#,
            ),
            event("$$a", 2, ChangeKind::StreamMetadata, br#"{"$tb":2}"#),
            event("a", 2, ChangeKind::Append, b"3"),
            event("a", i64::MAX as u64, ChangeKind::Tombstone, b""),
        ];
        let plans = plan(&batch, 1 << 20);
        assert_eq!(plans.len(), 1, "all of them affect stream a");
        let steps = &plans[0].steps;
        let streams: Vec<_> = steps
            .iter()
            .map(|s| match s {
                Step::Append { stream, .. } => *stream,
                Step::Tombstone(_) => "tombstone",
            })
            .collect();
        assert_eq!(streams, ["a", "$$a", "a", "$$a", "$$a", "a", "tombstone"]);
        assert!(steps[..6].iter().all(|s| ids(s).len() == 1));
    }

    #[test]
    fn appends_are_capped_in_bytes_but_hold_at_least_one_record() {
        let big = vec![7u8; 600];
        let batch: Vec<Event> = (0..5)
            .map(|r| event("a", r, ChangeKind::Append, &big))
            .collect();
        let plans = plan(&batch, 1_500);
        let sizes: Vec<usize> = plans[0].steps.iter().map(|s| ids(s).len()).collect();
        assert_eq!(sizes, [2, 2, 1]);

        let plans = plan(&batch, 10);
        assert_eq!(plans[0].steps.len(), 5, "an oversized record still goes");
    }

    fn record(event: &Event, revision: u64) -> TargetRecord {
        TargetRecord {
            revision,
            id: event.id,
            event_type: event.event_type.clone(),
            data: event.data.clone(),
            position: Position::at(1000 + revision),
        }
    }

    #[test]
    fn a_replay_is_recognised_by_event_ids_at_matching_revisions() {
        let batch: Vec<Event> = (3..7)
            .map(|r| event("a", r, ChangeKind::Append, b"{}"))
            .collect();
        let run: Vec<&Event> = batch.iter().collect();

        // Target holds the first two of the run: append the other two.
        let target = vec![record(&batch[0], 3), record(&batch[1], 4)];
        assert_eq!(
            match_replay(&run, 3, &target, Some(4), false),
            Replay::Written {
                written: 2,
                position: Some(Position::at(1004))
            }
        );

        // Target holds all of it and more.
        let target: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(i, e)| record(e, 3 + i as u64))
            .collect();
        assert_eq!(
            match_replay(&run, 3, &target, Some(20), false),
            Replay::Written {
                written: 4,
                position: Some(Position::at(1006))
            }
        );

        // Target holds something else at revision 4.
        let stranger = event("a", 4, ChangeKind::Append, b"{}");
        let target = vec![record(&batch[0], 3), record(&stranger, 4)];
        assert_eq!(
            match_replay(&run, 3, &target, Some(4), false),
            Replay::Diverged {
                index: 1,
                found: stranger.id
            }
        );

        // Target stream missing: nothing written.
        assert_eq!(
            match_replay(&run, 3, &[], None, false),
            Replay::Written {
                written: 0,
                position: None
            }
        );
    }

    #[test]
    fn hidden_revisions_count_as_written() {
        let batch: Vec<Event> = (0..3)
            .map(|r| event("a", r, ChangeKind::Append, b"{}"))
            .collect();
        let run: Vec<&Event> = batch.iter().collect();
        // Soft-deleted then revived at revision 2: revisions 0 and 1 are hidden.
        let target = vec![record(&batch[2], 2)];
        assert_eq!(
            match_replay(&run, 0, &target, Some(2), false),
            Replay::Written {
                written: 3,
                position: Some(Position::at(1002))
            }
        );
        // Soft-deleted, nothing readable.
        assert_eq!(
            match_replay(&run, 0, &[], Some(1), false),
            Replay::Written {
                written: 2,
                position: None
            }
        );
    }

    #[test]
    fn a_server_written_metadata_record_with_the_same_content_counts_as_written() {
        let ours = event("$$a", 2, ChangeKind::StreamMetadata, br#"{"$tb":2}"#);
        let mut theirs = record(&ours, 2);
        theirs.id = Uuid::new_v4();
        assert_eq!(
            match_replay(&[&ours], 2, std::slice::from_ref(&theirs), Some(2), true),
            Replay::Written {
                written: 1,
                position: Some(Position::at(1002))
            }
        );
        // Not in a user stream: ids decide there.
        assert_eq!(
            match_replay(&[&ours], 2, &[theirs.clone()], Some(2), false),
            Replay::Diverged {
                index: 0,
                found: theirs.id
            }
        );
    }

    // The run state machine, step by step.

    fn user_run(stream: &str, revisions: std::ops::Range<u64>) -> Vec<Event> {
        revisions
            .map(|r| event(stream, r, ChangeKind::Append, b"{}"))
            .collect()
    }

    fn other(revision: u64) -> TargetRecord {
        record(&event("x", revision, ChangeKind::Append, b"{}"), revision)
    }

    fn appended(last: Option<u64>) -> Reply {
        Reply::Appended {
            position: Some(Position::at(77)),
            last,
        }
    }

    fn done(last_revision: Option<u64>, position: Option<Position>) -> Action {
        Action::Done(Done {
            position,
            last_revision,
            deleted: false,
        })
    }

    fn append(from: usize, expected: Expected, note: Option<Note>) -> Action {
        Action::Append {
            from,
            expected,
            note,
        }
    }

    #[test]
    fn a_run_where_it_belongs_is_one_append() {
        let batch = user_run("a", 0..3);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::At(0), false);
        assert_eq!(machine.start(), append(0, Expected::NoStream, None));
        assert_eq!(
            machine.step(appended(Some(2))),
            done(Some(2), Some(Position::at(77)))
        );

        let mut machine = AppendRun::new(&run, Guess::At(5), false);
        assert_eq!(machine.start(), append(0, Expected::Exact(4), None));
        // The run's own revisions, not the stream's end the reply gives (a
        // server may add a record of its own after metadata).
        assert_eq!(
            machine.step(appended(Some(9))),
            done(Some(7), Some(Position::at(77)))
        );
    }

    #[test]
    fn a_stream_that_starts_on_the_source_is_appended_as_new_and_learns_its_end_from_the_reply() {
        let batch = user_run("a", 4..6);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::New, false);
        assert_eq!(machine.start(), append(0, Expected::NoStream, None));
        // Revived soft-deleted stream: its revisions continue.
        assert_eq!(
            machine.step(appended(Some(12))),
            done(Some(12), Some(Position::at(77)))
        );
    }

    #[test]
    fn a_replay_at_the_guessed_revisions_is_skipped_and_the_rest_appended() {
        let batch = user_run("a", 3..7);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::At(3), false);
        machine.start();
        assert_eq!(
            machine.step(Reply::WrongExpected { current: Some(4) }),
            Action::Read {
                revision: 3,
                count: 4
            }
        );
        let target = vec![record(&batch[0], 3), record(&batch[1], 4)];
        assert_eq!(
            machine.step(Reply::Records(target)),
            append(2, Expected::Exact(4), Some(Note::Replayed { written: 2 }))
        );
        assert_eq!(
            machine.step(appended(Some(6))),
            done(
                Some(6),
                Some(Position::at(1004)).max(Some(Position::at(77)))
            )
        );

        // All of it there already, and more after it.
        let mut machine = AppendRun::new(&run, Guess::At(3), false);
        machine.start();
        machine.step(Reply::WrongExpected { current: Some(20) });
        let target: Vec<_> = (0..4).map(|i| record(&batch[i], 3 + i as u64)).collect();
        assert_eq!(
            machine.step(Reply::Records(target)),
            done(Some(6), Some(Position::at(1006)))
        );
    }

    #[test]
    fn other_records_at_the_guessed_revisions_are_a_divergence_unless_ours_are_in_the_tail() {
        let batch = user_run("a", 0..2);
        let run: Vec<&Event> = batch.iter().collect();
        let stranger = other(0);
        let mut machine = AppendRun::new(&run, Guess::At(0), false);
        machine.start();
        machine.step(Reply::WrongExpected { current: Some(1) });
        assert_eq!(
            machine.step(Reply::Records(vec![stranger.clone()])),
            Action::SearchTail
        );
        assert_eq!(
            machine.step(Reply::Records(vec![other(1), stranger.clone()])),
            Action::Diverged(Divergence {
                index: 0,
                found: stranger.id,
                revision: 0
            })
        );

        // Renumbered by an earlier run: found lower down, matched from there.
        let batch = user_run("a", 5..7);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::At(5), false);
        machine.start();
        machine.step(Reply::WrongExpected { current: Some(6) });
        assert_eq!(
            machine.step(Reply::Records(vec![other(5), other(6)])),
            Action::SearchTail
        );
        let tail = vec![
            other(6),
            other(5),
            other(4),
            record(&batch[1], 3),
            record(&batch[0], 2),
        ];
        assert_eq!(
            machine.step(Reply::Records(tail)),
            done(Some(3), Some(Position::at(1003)))
        );
    }

    #[test]
    fn a_target_behind_the_guess_is_searched_once_then_appended_after_its_end() {
        let batch = user_run("a", 5..7);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::At(5), false);
        machine.start();
        assert_eq!(
            machine.step(Reply::WrongExpected { current: Some(1) }),
            Action::SearchTail
        );
        assert_eq!(
            machine.step(Reply::Records(vec![other(1), other(0)])),
            append(
                0,
                Expected::Exact(1),
                Some(Note::Renumbered {
                    guessed: 5,
                    target: 2
                })
            )
        );
        // Someone else appended meanwhile: no second search.
        assert_eq!(
            machine.step(Reply::WrongExpected { current: Some(0) }),
            append(
                0,
                Expected::Exact(0),
                Some(Note::Renumbered {
                    guessed: 2,
                    target: 1
                })
            )
        );

        // No such stream: nothing to search.
        let mut machine = AppendRun::new(&run, Guess::At(5), false);
        machine.start();
        assert_eq!(
            machine.step(Reply::WrongExpected { current: None }),
            append(
                0,
                Expected::NoStream,
                Some(Note::Renumbered {
                    guessed: 5,
                    target: 0
                })
            )
        );
    }

    #[test]
    fn an_unknown_stream_is_asked_for_first_and_appended_as_new_when_missing() {
        let batch = user_run("a", 4..6);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        assert_eq!(
            machine.start(),
            append(0, Expected::Exact(PROBE_REVISION), None)
        );
        assert_eq!(
            machine.step(Reply::WrongExpected { current: None }),
            append(0, Expected::NoStream, None)
        );
        assert_eq!(
            machine.step(appended(Some(1))),
            done(Some(1), Some(Position::at(77)))
        );
    }

    #[test]
    fn an_unknown_stream_that_exists_is_searched_by_id() {
        let batch = user_run("a", 0..3);
        let run: Vec<&Event> = batch.iter().collect();
        let fresh = |machine: &mut AppendRun<'_, '_>, current| {
            assert_eq!(
                machine.start(),
                append(0, Expected::Exact(PROBE_REVISION), None)
            );
            assert_eq!(
                machine.step(Reply::WrongExpected {
                    current: Some(current)
                }),
                Action::SearchTail
            );
        };

        // Nothing of ours there: append after the end, no renumbering.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 9);
        assert_eq!(
            machine.step(Reply::Records(vec![other(9), other(8)])),
            append(0, Expected::Exact(9), None)
        );
        assert_eq!(
            machine.step(appended(Some(12))),
            done(Some(12), Some(Position::at(77)))
        );

        // The first two there: skip them.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 11);
        let tail = vec![record(&batch[1], 11), record(&batch[0], 10), other(9)];
        assert_eq!(
            machine.step(Reply::Records(tail)),
            append(2, Expected::Exact(11), Some(Note::Replayed { written: 2 }))
        );

        // All there, and records of later runs after them.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 13);
        let tail = vec![
            other(13),
            record(&batch[2], 12),
            record(&batch[1], 11),
            record(&batch[0], 10),
        ];
        assert_eq!(
            machine.step(Reply::Records(tail)),
            done(Some(12), Some(Position::at(1012)))
        );

        // Ours, then something else where the next belongs.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 11);
        let stranger = other(11);
        let tail = vec![stranger.clone(), record(&batch[0], 10)];
        assert_eq!(
            machine.step(Reply::Records(tail)),
            Action::Diverged(Divergence {
                index: 1,
                found: stranger.id,
                revision: 11
            })
        );

        // A later record of ours visible, an earlier one hidden (truncated):
        // the hidden one counts as written.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 11);
        assert_eq!(
            machine.step(Reply::Records(vec![record(&batch[1], 11)])),
            append(2, Expected::Exact(11), Some(Note::Replayed { written: 2 }))
        );

        // A later record of ours where an earlier one is visible with another
        // id: not a prefix of what this run sends.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 11);
        let stranger = other(10);
        assert_eq!(
            machine.step(Reply::Records(vec![
                record(&batch[1], 11),
                stranger.clone()
            ])),
            Action::Diverged(Divergence {
                index: 0,
                found: stranger.id,
                revision: 10
            })
        );

        // Found too low to hold the records before it.
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        fresh(&mut machine, 3);
        assert!(matches!(
            machine.step(Reply::Records(vec![record(&batch[2], 1)])),
            Action::Diverged(_)
        ));
    }

    #[test]
    fn a_tombstoned_stream_counts_as_written_at_any_step() {
        let batch = user_run("a", 0..2);
        let run: Vec<&Event> = batch.iter().collect();
        let deleted = Action::Done(Done {
            position: None,
            last_revision: None,
            deleted: true,
        });
        let mut machine = AppendRun::new(&run, Guess::At(0), false);
        machine.start();
        assert_eq!(machine.step(Reply::Deleted), deleted);
        let mut machine = AppendRun::new(&run, Guess::Unknown, false);
        machine.start();
        machine.step(Reply::WrongExpected { current: Some(4) });
        assert_eq!(machine.step(Reply::Deleted), deleted);
    }

    /// Runs `run` from `guess` against a target that refuses every append
    /// as if the stream did not exist, although "no stream" was what it
    /// expected (something deletes and recreates the stream all the time):
    /// the final action and the appends made.
    fn against_a_stream_that_keeps_changing(run: &[&Event], guess: Guess) -> (Action, usize) {
        let mut machine = AppendRun::new(run, guess, false);
        let mut action = machine.start();
        let mut appends = 0;
        while let Action::Append { .. } = action {
            appends += 1;
            action = machine.step(Reply::WrongExpected { current: None });
        }
        (action, appends)
    }

    #[test]
    fn a_stream_that_keeps_changing_is_given_up_as_unsettled() {
        let batch = user_run("a", 3..5);
        let run: Vec<&Event> = batch.iter().collect();
        let (action, appends) = against_a_stream_that_keeps_changing(&run, Guess::At(3));
        assert_eq!(action, Action::Unsettled { index: 0 });
        assert_eq!(appends, MAX_APPENDS);
    }

    #[test]
    fn a_new_stream_that_keeps_changing_is_given_up_after_as_many_appends() {
        // The run starts a stream (no guessed revision): the first append
        // counts like every other.
        let batch = user_run("a", 0..2);
        let run: Vec<&Event> = batch.iter().collect();
        let (action, appends) = against_a_stream_that_keeps_changing(&run, Guess::New);
        assert_eq!(action, Action::Unsettled { index: 0 });
        assert_eq!(appends, MAX_APPENDS);
    }

    #[test]
    fn a_server_written_truncate_before_may_hold_the_targets_own_revision() {
        let ours = event(
            "$$a",
            3,
            ChangeKind::StreamMetadata,
            br#"{"$tb":9,"owner":"x"}"#,
        );
        let mut theirs = record(&ours, 3);
        theirs.id = Uuid::new_v4();
        theirs.data = Bytes::from_static(br#"{"owner":"x","$tb":4}"#);
        assert_eq!(
            match_replay(&[&ours], 3, std::slice::from_ref(&theirs), Some(3), true),
            Replay::Written {
                written: 1,
                position: Some(Position::at(1003))
            }
        );
        // Anything else differing is another record.
        theirs.data = Bytes::from_static(br#"{"owner":"y","$tb":4}"#);
        assert!(matches!(
            match_replay(&[&ours], 3, std::slice::from_ref(&theirs), Some(3), true),
            Replay::Diverged { index: 0, .. }
        ));
        // Without `$tb` on both sides, the documents must be equal.
        theirs.data = Bytes::from_static(br#"{"owner":"x"}"#);
        assert!(matches!(
            match_replay(&[&ours], 3, &[theirs], Some(3), true),
            Replay::Diverged { index: 0, .. }
        ));
    }

    #[test]
    fn metadata_a_server_wrote_at_the_guessed_revision_counts_as_written() {
        let ours = event("$$a", 2, ChangeKind::StreamMetadata, br#"{"$tb":2}"#);
        let mut theirs = record(&ours, 2);
        theirs.id = Uuid::new_v4();
        let run = [&ours];
        let mut machine = AppendRun::new(&run, Guess::At(2), true);
        machine.start();
        machine.step(Reply::WrongExpected { current: Some(2) });
        assert_eq!(
            machine.step(Reply::Records(vec![theirs])),
            done(Some(2), Some(Position::at(1002)))
        );
    }

    #[test]
    #[should_panic(expected = "does not answer")]
    fn a_reply_that_answers_another_action_is_a_bug() {
        let batch = user_run("a", 0..1);
        let run: Vec<&Event> = batch.iter().collect();
        let mut machine = AppendRun::new(&run, Guess::At(0), false);
        machine.start();
        machine.step(Reply::Records(vec![]));
    }

    /// A target stream as the server keeps it, for driving [`AppendRun`]
    /// against: revisions are indexes; records below `hidden_below` are
    /// truncated; a soft-deleted stream reads as empty and is revived by an
    /// append, which hides what it held.
    struct FakeStream {
        records: Vec<TargetRecord>,
        hidden_below: u64,
        soft_deleted: bool,
        tombstoned: bool,
        depth: usize,
    }

    impl FakeStream {
        fn last(&self) -> Option<u64> {
            (self.records.len() as u64).checked_sub(1)
        }

        fn visible(&self) -> impl DoubleEndedIterator<Item = &TargetRecord> {
            let hidden = if self.soft_deleted {
                u64::MAX
            } else {
                self.hidden_below
            };
            self.records.iter().filter(move |r| r.revision >= hidden)
        }

        fn answer(&mut self, events: &[&Event], action: &Action) -> Reply {
            if self.tombstoned {
                return Reply::Deleted;
            }
            match *action {
                Action::Append { from, expected, .. } => {
                    // A repeat of a write already there (same ids from the
                    // expected revision on) succeeds without writing, as on
                    // the server.
                    let at = match expected {
                        Expected::NoStream => 0,
                        Expected::Exact(n) => n as usize + 1,
                    };
                    let repeat = &events[from..];
                    if self.records.len() >= at + repeat.len()
                        && repeat
                            .iter()
                            .zip(&self.records[at..])
                            .all(|(e, r)| e.id == r.id)
                    {
                        let last = (at + repeat.len() - 1) as u64;
                        return Reply::Appended {
                            position: Some(Position::at(1000 + last)),
                            last: Some(last),
                        };
                    }
                    let ok = match expected {
                        Expected::NoStream => self.last().is_none() || self.soft_deleted,
                        Expected::Exact(n) => self.last() == Some(n),
                    };
                    if !ok {
                        return Reply::WrongExpected {
                            current: self.last(),
                        };
                    }
                    if self.soft_deleted {
                        self.soft_deleted = false;
                        self.hidden_below = self.records.len() as u64;
                    }
                    for event in &events[from..] {
                        let revision = self.records.len() as u64;
                        self.records.push(record(event, revision));
                    }
                    Reply::Appended {
                        position: self.last().map(|l| Position::at(1000 + l)),
                        last: self.last(),
                    }
                }
                Action::Read { revision, count } => Reply::Records(
                    self.visible()
                        .filter(|r| r.revision >= revision)
                        .take(count)
                        .cloned()
                        .collect(),
                ),
                Action::SearchTail => {
                    let tail: Vec<_> = self.visible().rev().take(self.depth).cloned().collect();
                    if tail.is_empty() {
                        // The sink then searches the target's `$all`, which
                        // holds hidden records too.
                        Reply::Records(
                            self.records
                                .iter()
                                .rev()
                                .take(self.depth)
                                .cloned()
                                .collect(),
                        )
                    } else {
                        Reply::Records(tail)
                    }
                }
                ref other => panic!("{other:?} is not a request"),
            }
        }
    }

    #[derive(Debug, Clone, Copy)]
    enum Hide {
        Nothing,
        Below(u64),
        SoftDeleted,
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Whatever part of what a run sends is on the target already (a
        /// prefix, in order, after other records), the run ends with each of
        /// its records there exactly once, in order, with the guess a
        /// source revision or tracked cache gives, or with no guess at all.
        #[test]
        fn a_run_leaves_each_record_on_the_target_exactly_once(
            others in 0usize..4,
            total in 1usize..7,
            start in 0usize..6,
            len in 1usize..6,
            written in 0usize..7,
            guessed in any::<bool>(),
            hide in prop_oneof![
                Just(Hide::Nothing),
                (0u64..12).prop_map(Hide::Below),
                Just(Hide::SoftDeleted),
            ],
            tombstoned in proptest::bool::weighted(0.05),
        ) {
            let start = start.min(total - 1);
            let len = len.min(total - start);
            // What this run and the ones before it (`ours[..start]`, all
            // written) send to the stream; the target holds a prefix.
            let mut written = written.clamp(start, total);
            if matches!(hide, Hide::SoftDeleted) && written < start + len {
                // A soft delete is written after every record before it: the
                // run is all there (it came before the delete) or not at all
                // (it revives the stream).
                written = start;
            }
            let ours = user_run("a", 0..total as u64);
            let mut target = FakeStream {
                records: Vec::new(),
                hidden_below: 0,
                soft_deleted: matches!(hide, Hide::SoftDeleted),
                tombstoned,
                depth: others + total,
            };
            for i in 0..others {
                target.records.push(other(i as u64));
            }
            for event in &ours[..written] {
                let revision = target.records.len() as u64;
                target.records.push(record(event, revision));
            }
            if let Hide::Below(below) = hide {
                target.hidden_below = below;
            }
            // The documented limits, with no guess: a replay of records the
            // target hides (all of the run's that it holds) while it shows
            // others cannot be found by id; a stream soft-deleted after
            // other records and then ours accepts ours again as new.
            let replayed = &ours[start..written.min(start + len)];
            let replayed_hidden = !replayed.is_empty()
                && target.visible().next().is_some()
                && target.visible().all(|r| replayed.iter().all(|e| e.id != r.id));
            prop_assume!(guessed || !replayed_hidden);
            prop_assume!(
                guessed || start > 0 || !target.soft_deleted || others == 0 || replayed.is_empty()
            );

            let run: Vec<&Event> = ours[start..start + len].iter().collect();
            // As the sink guesses in tracked mode on a cache miss.
            let guess = match (guessed, start) {
                (true, _) => Guess::At((others + start) as u64),
                (false, 0) => Guess::New,
                (false, _) => Guess::Unknown,
            };
            let mut machine = AppendRun::new(&run, guess, false);
            let mut action = machine.start();
            for _ in 0..20 {
                if let Action::Done(_) | Action::Diverged(_) | Action::Unsettled { .. } = action {
                    break;
                }
                let reply = target.answer(&run, &action);
                action = machine.step(reply);
            }
            let Action::Done(done) = action else {
                panic!("ended with {action:?}");
            };
            prop_assert_eq!(done.deleted, tombstoned);
            let mut want: Vec<Uuid> = target.records[..others].iter().map(|r| r.id).collect();
            if tombstoned {
                want.extend(ours[..written].iter().map(|e| e.id));
            } else {
                want.extend(ours[..written.max(start + len)].iter().map(|e| e.id));
                prop_assert_eq!(done.last_revision, Some((others + start + len - 1) as u64));
            }
            let got: Vec<Uuid> = target.records.iter().map(|r| r.id).collect();
            prop_assert_eq!(got, want);
        }
    }
}
