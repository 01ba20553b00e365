//! Pure planning of a sink batch: which appends and tombstones to issue, in
//! which order, and how a replay is recognised on the target. Kept free of I/O
//! so it can be tested exhaustively.

use std::collections::HashMap;

use replicator_core::{ChangeKind, Event, Position};
use tracing::warn;
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
    for (event, fit) in sized(batch, max_append_bytes) {
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
            fit,
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
    for (event, fit) in sized(batch, max_append_bytes) {
        push_step(&mut steps, &mut open_bytes, event, fit, max_append_bytes);
    }
    steps
}

/// The writes of `batch`, each with the bytes that must fit in the append
/// before it for it to join that append: its own size, or, for the first
/// record of a commit of several ([`commits`]), the whole commit's. So a
/// commit that fits in an append is never cut by the cap; one that does not
/// is cut where the cap falls (logged).
fn sized(batch: &[Event], max_append_bytes: usize) -> Vec<(&Event, usize)> {
    let writes: Vec<&Event> = batch.iter().filter(|e| e.kind.is_write()).collect();
    let mut sized = Vec::with_capacity(writes.len());
    for commit in commits(&writes) {
        let total: usize = commit.iter().map(|e| append_size(e)).sum();
        if commit.len() > 1 && total > max_append_bytes {
            warn!(
                stream = %commit[0].stream,
                position = %commit[0].position,
                records = commit.len(),
                bytes = total,
                max_append_bytes,
                "A transaction is larger than one append may be: written in several appends"
            );
        }
        for (k, &event) in commit.iter().enumerate() {
            sized.push((event, if k == 0 { total } else { append_size(event) }));
        }
    }
    sized
}

/// Adds `event` (a write) to `steps`: to the last step when that is an append
/// of plain events to the same stream with room for `fit` bytes
/// (`open_bytes` is that step's size), else as a new step.
fn push_step<'a>(
    steps: &mut Vec<Step<'a>>,
    open_bytes: &mut usize,
    event: &'a Event,
    fit: usize,
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
                    && *open_bytes + fit <= max_append_bytes
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

/// Whether `next` is the record of `$all` after `previous` in the same commit
/// (an EventStoreDB v5 transaction: a shared commit position, each record at
/// its own prepare position).
pub(crate) fn in_one_commit(previous: &Event, next: &Event) -> bool {
    previous.more_in_commit
        && next.position.commit == previous.position.commit
        && next.position.prepare != next.position.commit
}

/// `events` cut where a commit ends: each piece one record, or one commit's
/// consecutive records ([`in_one_commit`]).
pub(crate) fn commits<'a, 'e>(events: &'a [&'e Event]) -> impl Iterator<Item = &'a [&'e Event]> {
    events.chunk_by(|a, b| in_one_commit(a, b))
}

/// The requests of a run in a replay region: one per commit (a record, or a
/// commit of several that fits in an append, which is always written whole),
/// one per record for a commit too large for one append (written in several,
/// so the target may hold part of it).
pub(crate) fn replay_parts<'a, 'e>(
    events: &'a [&'e Event],
    max_append_bytes: usize,
) -> Vec<&'a [&'e Event]> {
    let mut parts = Vec::with_capacity(events.len());
    for commit in commits(events) {
        let total: usize = commit.iter().map(|e| append_size(e)).sum();
        if commit.len() > 1 && total > max_append_bytes {
            parts.extend(commit.chunks(1));
        } else {
            parts.push(commit);
        }
    }
    parts
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
mod tests;
