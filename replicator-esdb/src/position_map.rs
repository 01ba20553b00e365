//! Where a consumer of the source resumes on the target: source `$all`
//! positions and stream revisions mapped to the target's, by event identity.
//!
//! # `$all` positions ([`map_position`])
//! A consumer's checkpoint `P` says it processed every source record up to
//! and including `P`. How it maps depends on the order the replicator wrote
//! the target in ([`MapOptions::order`], the sink's [`WriteOrder`]).
//!
//! ## Source order: exact ([`MapMode::Exact`])
//! The target's `$all` holds the replicated records in the source's order,
//! so a source position has one target position: that of the last
//! replicated record at or before `P` (a user event, stream metadata, a soft
//! delete or a tombstone, as [`classify`] decides). A subscription to the
//! target's `$all` after it delivers exactly the records that follow `P` on
//! the source, in the same order: nothing twice, nothing missed.
//!
//! The record is found by identity, never by counting: walking the source
//! backwards from `P`, each replicated record is looked up in its target
//! stream by id (at its source revision first, then among the stream's last
//! `window` events, for a renumbered stream). The first one found gives the
//! target position. Records passed over on the way (their target stream was
//! deleted or truncated since, a tombstone, whose id the target server
//! chooses, a record a filter or transform left out) are then searched for
//! in the target's `$all` right after that position, where source order
//! puts them: by id, or for a tombstone by its stream, for another
//! `$`-typed record (a `$tb` record the server wrote itself) by stream, type
//! and data. The search stops at the first replicated record that is none of
//! them (it follows `P` on the source) or after `window` records. The
//! mapping is the last record found. Nothing before `P` on the source maps to
//! the start of the target's `$all`.
//!
//! What this rests on is the sink's promise of source order; a target that
//! an earlier run wrote with stream order (in part) is mapped with
//! [`WriteOrder::Stream`] instead.
//!
//! ## Stream order: an anchor and a window ([`MapMode::Anchor`])
//! The target's `$all` is not the source's order: streams are hashed onto
//! `partitionCount` writers, and even one writer appends the streams of a
//! batch concurrently. Each stream keeps its order; different streams
//! interleave differently. The mapping finds the **anchor**: the last user
//! event at or before `P` that the target's stream still returns, and the
//! same event on the target (same id, in the same stream). Its target
//! position `T` is a first guess, but an event the consumer has not processed
//! (after `P`) can sit on the target *before* `T`, and processed ones after
//! it. The rule that loses nothing: resume just before the earliest target
//! record of any unprocessed event. The mapping reads the first `window` user
//! events after `P` on the source and the `window` target records before
//! `T`; the earliest of those events found there moves the resume point
//! before it. The consumer then sees again the processed events written to
//! the target after that point (the note counts those before `T`; processed
//! events of other streams written after `T` are possible too). Events are
//! reordered only while they are in flight together (one batch with
//! `partitionCount` 1; the buffer and the partitions' batches with more), so
//! a `window` above the records the replicator holds at once
//! (`sink.bufferSize` plus the partitions' batches) is enough. When no such
//! event precedes `T`, the mapping is `T` itself. When the consumer has
//! processed every user event of the source (the usual case at cutover,
//! writers stopped and consumers drained), it resumes at the end of the
//! target's `$all` and sees nothing twice.
//!
//! An anchor candidate the target does not return (its stream was deleted or
//! truncated there since) is passed over for the one before it: records
//! between may then be seen again, never lost.
//!
//! ## Both
//! A position past the stored checkpoint is refused (not all of it is on the
//! target yet).
//!
//! # Stream revisions ([`map_revision`])
//! A consumer of one stream resumes after the target revision of the last
//! source event at or before its revision: the same revision unless the target
//! stream was renumbered (a scavenged source, filtered events). Each stream
//! keeps its order in both write orders, so this is exact in both.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use eventstore::{Client, ReadAllOptions, ReadStreamOptions, ResolvedEvent, StreamPosition};
use futures::TryFutureExt as _;
use replicator_core::{ChangeKind, Position};
use serde::Serialize;
use uuid::Uuid;

use crate::classify::{classify, TOMBSTONE_EVENT_TYPE};
use crate::cluster::{head, within, ClientPosition as _, RequestError, SOURCE, TARGET};
use crate::verify::{request, settle, VerifyError};
use crate::WriteOrder;

/// How [`map_position`] maps.
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// The order the replicator wrote the target in: [`WriteOrder::Source`]
    /// maps exactly, [`WriteOrder::Stream`] finds an anchor and a window.
    pub order: WriteOrder,
    /// Records passed over on the source and searched for on the target
    /// (both orders); with stream order also the source events after the
    /// position, and target records before the anchor, examined for
    /// reordering.
    pub window: usize,
    /// The stored checkpoint: positions after it are not (all) on the target.
    pub replicated_until: Option<Position>,
    /// Deadline of each request.
    pub request_timeout: Duration,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            order: WriteOrder::Source,
            window: 10_000,
            replicated_until: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// How a mapping was found, from the order the target was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MapMode {
    /// Source order: the same record on the target; resuming after it,
    /// nothing is seen twice and nothing is missed.
    Exact,
    /// Stream order: before the earliest unprocessed event near the anchor;
    /// nothing is missed, processed events may be seen again.
    Anchor,
}

impl MapMode {
    /// The mode for a target written in `order`.
    pub fn of(order: WriteOrder) -> Self {
        match order {
            WriteOrder::Source => MapMode::Exact,
            WriteOrder::Stream => MapMode::Anchor,
        }
    }
}

/// The record a mapping rests on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anchor {
    /// Its stream (`$$stream` for stream metadata).
    pub stream: String,
    /// Its source revision.
    pub revision: u64,
    /// Its target revision.
    pub target_revision: u64,
    /// Its id (the source's: a tombstone's differs on the target).
    pub event_id: Uuid,
    /// Its source position.
    pub source_position: Position,
    /// Its target position.
    pub target_position: Position,
}

/// Where a consumer at a source position resumes on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The consumer's source position.
    pub source: Position,
    /// Resume strictly after this target position; `None`: see `resume`.
    pub target: Option<Position>,
    /// What `target: None` means.
    pub resume: Resume,
    /// Exact (source order) or an anchor and a window (stream order).
    pub mode: MapMode,
    /// The last replicated record at or before `source` found on the target.
    pub anchor: Option<Anchor>,
    /// For people: how the position was found and what a consumer may see twice.
    pub note: String,
}

/// How to resume when there is no target position.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resume {
    /// After `target`.
    After,
    /// From the start of the target's `$all`.
    FromStart,
    /// Not yet: the position is past what has been replicated.
    NotReplicatedYet,
}

/// A stream revision mapped to the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevisionMapping {
    /// The stream.
    pub stream: String,
    /// The consumer's source revision.
    pub revision: u64,
    /// Resume after this target revision; `None` from the stream's start.
    pub target_revision: Option<u64>,
    /// The last event at or before `revision` found on the target.
    pub event_id: Option<Uuid>,
    /// For people.
    pub note: String,
}

fn appended(event: &ResolvedEvent) -> bool {
    kind_of(event) == ChangeKind::Append
}

fn kind_of(event: &ResolvedEvent) -> ChangeKind {
    let e = event.get_original_event();
    classify(&e.stream_id, &e.event_type, &e.data)
}

/// `; {note}`, or nothing for an empty note.
fn and(note: &str) -> String {
    if note.is_empty() {
        String::new()
    } else {
        format!("; {note}")
    }
}

/// Maps a consumer's source `$all` position to the target; see the
/// [module docs](self).
///
/// # Errors
/// When a read fails or times out.
pub async fn map_position(
    source: &Client,
    target: &Client,
    position: Position,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let mode = MapMode::of(options.order);
    if let Some(until) = options.replicated_until {
        if position > until {
            return Ok(Mapping {
                source: position,
                target: None,
                resume: Resume::NotReplicatedYet,
                mode,
                anchor: None,
                note: format!(
                    "beyond what has been replicated (the checkpoint is at {until}): wait until \
                     the replicator has passed it, then map it again"
                ),
            });
        }
    }
    let walk = walk_back(source, target, position, mode, options).await?;
    match mode {
        MapMode::Exact => exact(target, position, walk, options).await,
        MapMode::Anchor => anchored(source, target, position, walk, options).await,
    }
}

/// A replicated source record between the found one and the position that
/// its target stream did not return.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Unlocated {
    id: Uuid,
    stream: String,
    revision: u64,
    event_type: String,
    /// Only for `$`-typed records, which are matched by content; empty otherwise.
    data: Bytes,
    position: Position,
}

impl Unlocated {
    fn of(event: &ResolvedEvent) -> Self {
        let e = event.get_original_event();
        Unlocated {
            id: e.id,
            stream: e.stream_id.clone(),
            revision: e.revision,
            event_type: e.event_type.clone(),
            data: if e.event_type.starts_with('$') {
                e.data.clone()
            } else {
                Bytes::new()
            },
            position: Position::of(event),
        }
    }
}

/// What the walk back from the position found.
struct Walk {
    /// The last candidate at or before the position that its target stream
    /// returns, and the same record there.
    found: Option<Anchor>,
    /// The candidates after it, passed over, in source order.
    passed_over: Vec<Unlocated>,
    /// The walk stopped after `window` candidates passed over, finding none.
    gave_up: bool,
}

/// Walks the source back from `position` (inclusive) to the last candidate
/// the target's stream returns: user events with [`MapMode::Anchor`], every
/// replicated record with [`MapMode::Exact`] (tombstones are not looked up:
/// the target server chose their ids).
async fn walk_back(
    source: &Client,
    target: &Client,
    position: Position,
    mode: MapMode,
    options: &MapOptions,
) -> Result<Walk, VerifyError> {
    let timeout = options.request_timeout;
    // Candidates, newest first: the record at the position (a forward read
    // is inclusive), then those before it (a backward read is not).
    let operation = || format!("reading $all at {position}");
    let at = ReadAllOptions::default()
        .position(StreamPosition::Position(position.to_client()))
        .max_count(1);
    let mut first = request(SOURCE, operation, timeout, source.read_all(&at)).await?;
    let at_position = request(SOURCE, operation, timeout, first.next()).await?;
    drop(first);
    let before = ReadAllOptions::default()
        .position(StreamPosition::Position(position.to_client()))
        .backwards()
        .max_count(usize::MAX);
    let mut backwards = request(SOURCE, operation, timeout, source.read_all(&before)).await?;
    let mut pending = at_position.into_iter();
    let mut walk = Walk {
        found: None,
        passed_over: Vec::new(),
        gave_up: false,
    };
    let mut previous: Option<Position> = None;
    loop {
        let event = match pending.next() {
            Some(event) => event,
            None => match request(SOURCE, operation, timeout, backwards.next()).await? {
                Some(event) => event,
                None => break,
            },
        };
        let here = Position::of(&event);
        if here > position || previous == Some(here) {
            continue;
        }
        previous = Some(here);
        let kind = kind_of(&event);
        let candidate = match mode {
            MapMode::Exact => kind.is_write(),
            MapMode::Anchor => kind == ChangeKind::Append,
        };
        if !candidate {
            continue;
        }
        if kind != ChangeKind::Tombstone {
            if let Some(found) = locate(target, &event, options).await? {
                walk.found = Some(found);
                break;
            }
        }
        walk.passed_over.push(Unlocated::of(&event));
        if walk.passed_over.len() >= options.window {
            walk.gave_up = true;
            break;
        }
    }
    walk.passed_over.reverse();
    Ok(walk)
}

/// Why [`search_after`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// Every record searched for was found.
    AllFound,
    /// At a replicated record that is none of them: it follows the position.
    Later,
    /// At the end of the target's `$all`.
    End,
    /// After `window` records.
    Window,
}

/// The records searched for, in source order, and how a target record is
/// recognised as one of them.
struct Sought<'a> {
    records: &'a [Unlocated],
    by_id: HashMap<Uuid, usize>,
    /// The first not found or passed yet.
    next: usize,
}

/// What a target record is to [`Sought`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// The copy of this sought record.
    Replica(usize),
    /// Not replicated from the source (a system record of the target's own).
    Other,
    /// A replicated record that is not sought: it comes after the position.
    Later,
}

impl<'a> Sought<'a> {
    fn new(records: &'a [Unlocated]) -> Self {
        let mut by_id = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            by_id.entry(r.id).or_insert(i);
        }
        Sought {
            records,
            by_id,
            next: 0,
        }
    }

    fn done(&self) -> bool {
        self.next == self.records.len()
    }

    /// Recognises a target record: by id, or (for `$`-typed records, whose id
    /// the target server may have chosen) a tombstone by its stream, another
    /// by stream, type and data. Records sought are passed in order: one
    /// found moves past those before it (not on the target).
    fn see(&mut self, id: Uuid, stream: &str, event_type: &str, data: &[u8]) -> Seen {
        let by_id = self.by_id.get(&id).copied().filter(|&i| i >= self.next);
        let found = by_id.or_else(|| {
            if !event_type.starts_with('$') {
                return None;
            }
            self.records[self.next..]
                .iter()
                .position(|r| {
                    r.event_type == event_type
                        && r.stream == stream
                        && (event_type == TOMBSTONE_EVENT_TYPE || r.data == data)
                })
                .map(|i| self.next + i)
        });
        match found {
            Some(i) => {
                self.next = i + 1;
                Seen::Replica(i)
            }
            None if classify(stream, event_type, data).is_write() => Seen::Later,
            None => Seen::Other,
        }
    }
}

/// What [`search_after`] found.
struct Search {
    /// The last record found, as an anchor.
    last: Option<Anchor>,
    /// How many were found.
    found: usize,
    stop: Stop,
}

/// Searches the target's `$all` after `after` (from its start for `None`)
/// for the records `sought`: with source order they sit there, before the
/// first replicated record that follows the position.
async fn search_after(
    target: &Client,
    after: Option<Position>,
    sought: &[Unlocated],
    options: &MapOptions,
) -> Result<Search, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || match after {
        Some(p) => format!("reading $all after {p}"),
        None => "reading $all from the start".to_owned(),
    };
    let read = ReadAllOptions::default()
        .position(after.map_or(StreamPosition::Start, |p| {
            StreamPosition::Position(p.to_client())
        }))
        .max_count(usize::MAX);
    let mut reader = request(TARGET, operation, timeout, target.read_all(&read)).await?;
    let mut sought = Sought::new(sought);
    let mut search = Search {
        last: None,
        found: 0,
        stop: Stop::AllFound,
    };
    let mut read = 0usize;
    search.stop = loop {
        if sought.done() {
            break Stop::AllFound;
        }
        let Some(event) = request(TARGET, operation, timeout, reader.next()).await? else {
            break Stop::End;
        };
        let here = Position::of(&event);
        if after.is_some_and(|a| here <= a) {
            continue;
        }
        if read == options.window {
            break Stop::Window;
        }
        read += 1;
        let r = event.get_original_event();
        match sought.see(r.id, &r.stream_id, &r.event_type, &r.data) {
            Seen::Replica(i) => {
                let u = &sought.records[i];
                search.found += 1;
                search.last = Some(Anchor {
                    stream: u.stream.clone(),
                    revision: u.revision,
                    target_revision: r.revision,
                    event_id: u.id,
                    source_position: u.position,
                    target_position: here,
                });
            }
            Seen::Other => {}
            Seen::Later => break Stop::Later,
        }
    };
    Ok(search)
}

/// [`MapMode::Exact`]: the last replicated record at or before the position,
/// on the target.
async fn exact(
    target: &Client,
    position: Position,
    walk: Walk,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let Walk {
        found,
        passed_over,
        gave_up,
    } = walk;
    let (anchor, missing, uncertain) = if passed_over.is_empty() {
        (found, 0, false)
    } else {
        let after = found.as_ref().map(|a| a.target_position);
        let search = search_after(target, after, &passed_over, options).await?;
        let missing = passed_over.len() - search.found;
        // Not found within the window: they may be after it. A walk that gave
        // up did not look at older records, which may be on the target.
        let uncertain = (search.stop == Stop::Window && missing > 0)
            || (gave_up && search.last.is_none() && search.stop != Stop::End);
        (search.last.or(found), missing, uncertain)
    };
    let guarantee = if uncertain {
        format!(
            "nothing is missed, but {missing} replicated records up to the position were not \
             found on the target (neither in their streams nor within {} records of $all) and \
             may be seen again",
            options.window
        )
    } else if missing > 0 {
        format!(
            "nothing is seen twice and nothing is missed ({missing} replicated records up to \
             the position are not in the target's $all: left out by a filter or a transform, \
             or scavenged there)"
        )
    } else {
        "nothing is seen twice and nothing is missed".to_owned()
    };
    let Some(anchor) = anchor else {
        let note = if passed_over.is_empty() {
            format!(
                "exact: before the first replicated record: resume from the start of the \
                 target's $all; {guarantee}"
            )
        } else {
            format!(
                "exact: no replicated record up to the position is on the target: resume from \
                 the start of the target's $all; {guarantee}"
            )
        };
        return Ok(Mapping {
            source: position,
            target: None,
            resume: Resume::FromStart,
            mode: MapMode::Exact,
            anchor: None,
            note,
        });
    };
    let note = if anchor.source_position == position {
        format!("exact: the same record on the target; resuming after it, {guarantee}")
    } else {
        format!(
            "exact: the last replicated record at or before the position (at {}), the same \
             record on the target; resuming after it, {guarantee}",
            anchor.source_position
        )
    };
    Ok(Mapping {
        source: position,
        target: Some(anchor.target_position),
        resume: Resume::After,
        mode: MapMode::Exact,
        anchor: Some(anchor),
        note,
    })
}

/// [`MapMode::Anchor`]: the anchor, then [`conservative`].
async fn anchored(
    source: &Client,
    target: &Client,
    position: Position,
    walk: Walk,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let passed_over = walk.passed_over.len();
    let Some(anchor) = walk.found else {
        return Ok(Mapping {
            source: position,
            target: None,
            resume: Resume::FromStart,
            mode: MapMode::Anchor,
            anchor: None,
            note: if passed_over == 0 {
                "before the first replicated event: resume from the start of the target's $all"
                    .to_owned()
            } else {
                format!(
                    "none of the {passed_over} events before it is readable on the target: \
                     resume from the start of the target's $all"
                )
            },
        });
    };
    let mut note = String::new();
    if passed_over > 0 {
        note = format!(
            "{passed_over} later events up to the position are no longer readable on the \
             target (deleted or truncated streams) and may be seen again"
        );
    }
    conservative(source, target, position, anchor, note, options).await
}

/// The rule that loses nothing: resume before the earliest target record of an event
/// not yet processed, when one precedes the anchor on the target.
async fn conservative(
    source: &Client,
    target: &Client,
    position: Position,
    anchor: Anchor,
    note: String,
    options: &MapOptions,
) -> Result<Mapping, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || format!("reading $all after {position}");
    let after = ReadAllOptions::default()
        .position(StreamPosition::Position(position.to_client()))
        .max_count(usize::MAX);
    let mut forward = request(SOURCE, operation, timeout, source.read_all(&after)).await?;
    let mut unprocessed: HashSet<Uuid> = HashSet::new();
    let mut source_exhausted = false;
    while unprocessed.len() < options.window {
        let Some(event) = request(SOURCE, operation, timeout, forward.next()).await? else {
            source_exhausted = true;
            break;
        };
        if Position::of(&event) > position && appended(&event) {
            unprocessed.insert(event.get_original_event().id);
        }
    }
    drop(forward);
    if unprocessed.is_empty() && source_exhausted {
        // Processed everything the source holds, and all of it is replicated
        // (the position is within the checkpoint): the whole target is
        // processed, resume at its end and see nothing twice.
        let operation = || "reading the end of $all".to_owned();
        if let Some(last) = request(TARGET, operation, timeout, head(target)).await? {
            let at_end = format!(
                "the consumer has processed every user event of the source: resume at the end \
                 of the target's $all ({last}), nothing is seen twice{}",
                and(&note)
            );
            return Ok(Mapping {
                source: position,
                target: Some(last.max(anchor.target_position)),
                resume: Resume::After,
                mode: MapMode::Anchor,
                anchor: Some(anchor),
                note: at_end,
            });
        }
    }

    let operation = || format!("reading $all before {}", anchor.target_position);
    let before = ReadAllOptions::default()
        .position(StreamPosition::Position(anchor.target_position.to_client()))
        .backwards()
        .max_count(usize::MAX);
    let mut backwards = request(TARGET, operation, timeout, target.read_all(&before)).await?;
    // Records read since the earliest unprocessed one (processed ones among
    // them are seen twice), and the record before it (the resume point).
    let mut earliest: Option<(Position, usize)> = None;
    let mut resume_after: Option<Option<Position>> = None;
    let mut processed_since = 0usize;
    let mut read = 0usize;
    while read < options.window {
        let Some(event) = request(TARGET, operation, timeout, backwards.next()).await? else {
            if earliest.is_some() && resume_after.is_none() {
                resume_after = Some(None);
            }
            break;
        };
        let here = Position::of(&event);
        if here >= anchor.target_position {
            continue;
        }
        read += 1;
        if resume_after.is_none() && earliest.is_some() {
            resume_after = Some(Some(here));
        }
        let id = event.get_original_event().id;
        if unprocessed.contains(&id) {
            earliest = Some((here, processed_since));
            resume_after = None;
        } else if appended(&event) {
            processed_since += 1;
        }
    }
    drop(backwards);
    let (target_position, resume, note) = match (earliest, resume_after) {
        (None, _) => (
            Some(anchor.target_position),
            Resume::After,
            format!(
                "after the anchor: no event after the position precedes it within {} target \
                 records; events of other streams written concurrently may sit after it and \
                 are then seen again{}",
                options.window,
                and(&note)
            ),
        ),
        (Some((at, repeated)), resume_after) => {
            let (target, resume) = match resume_after.flatten() {
                Some(p) => (Some(p), Resume::After),
                None => (None, Resume::FromStart),
            };
            (
                target,
                resume,
                format!(
                    "an unprocessed event sits at {at} on the target, before the anchor {} \
                     (streams written concurrently): resuming before it; {} processed events \
                     between are seen again{}",
                    anchor.target_position,
                    repeated + 1,
                    and(&note)
                ),
            )
        }
    };
    Ok(Mapping {
        source: position,
        target: target_position,
        resume,
        mode: MapMode::Anchor,
        anchor: Some(anchor),
        note,
    })
}

/// The source event `event` on the target, by id in its stream: at the same
/// revision, else among the last `window` events of the target stream.
async fn locate(
    target: &Client,
    event: &ResolvedEvent,
    options: &MapOptions,
) -> Result<Option<Anchor>, VerifyError> {
    let e = event.get_original_event();
    let Some((target_revision, target_position)) =
        find_in_target_stream(target, &e.stream_id, e.revision, e.id, options).await?
    else {
        return Ok(None);
    };
    Ok(Some(Anchor {
        stream: e.stream_id.clone(),
        revision: e.revision,
        target_revision,
        event_id: e.id,
        source_position: Position::of(event),
        target_position,
    }))
}

async fn find_in_target_stream(
    target: &Client,
    stream: &str,
    revision: u64,
    id: Uuid,
    options: &MapOptions,
) -> Result<Option<(u64, Position)>, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || format!("reading stream {stream:?}");
    for read_options in [
        ReadStreamOptions::default()
            .position(StreamPosition::Position(revision))
            .max_count(1),
        ReadStreamOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .max_count(options.window.max(1)),
    ] {
        let mut reader = match within(
            timeout,
            target.read_stream(stream, &read_options).err_into(),
        )
        .await
        {
            Err(RequestError::Failed(
                eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
            )) => return Ok(None),
            other => settle(TARGET, operation, other)?,
        };
        loop {
            let next = match within(timeout, reader.next().err_into()).await {
                Err(RequestError::Failed(
                    eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
                )) => return Ok(None),
                other => settle(TARGET, operation, other)?,
            };
            let Some(found) = next else { break };
            let r = found.get_original_event();
            if r.id == id {
                return Ok(Some((r.revision, Position::of(&found))));
            }
        }
    }
    Ok(None)
}

/// Maps a consumer's revision in `stream` to the target; see the
/// [module docs](self).
///
/// # Errors
/// When a read fails or times out.
pub async fn map_revision(
    source: &Client,
    target: &Client,
    stream: &str,
    revision: u64,
    options: &MapOptions,
) -> Result<RevisionMapping, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || format!("reading stream {stream:?}");
    let read_options = ReadStreamOptions::default()
        .position(StreamPosition::Position(revision))
        .backwards()
        .max_count(options.window.max(1));
    let mut reader = match within(
        timeout,
        source.read_stream(stream, &read_options).err_into(),
    )
    .await
    {
        Err(RequestError::Failed(eventstore::Error::ResourceNotFound)) => None,
        other => Some(settle(SOURCE, operation, other)?),
    };
    let mut passed_over = 0usize;
    while let Some(stream_reader) = reader.as_mut() {
        let next = match within(timeout, stream_reader.next().err_into()).await {
            Err(RequestError::Failed(eventstore::Error::ResourceNotFound)) => None,
            other => settle(SOURCE, operation, other)?,
        };
        let Some(event) = next else { break };
        let e = event.get_original_event();
        if e.revision > revision || !appended(&event) {
            continue;
        }
        if let Some((target_revision, _)) =
            find_in_target_stream(target, stream, e.revision, e.id, options).await?
        {
            let note = if target_revision == e.revision {
                "same revision on the target".to_owned()
            } else {
                format!(
                    "renumbered on the target: source revision {} is target revision \
                     {target_revision}",
                    e.revision
                )
            };
            return Ok(RevisionMapping {
                stream: stream.to_owned(),
                revision,
                target_revision: Some(target_revision),
                event_id: Some(e.id),
                note,
            });
        }
        passed_over += 1;
    }
    Ok(RevisionMapping {
        stream: stream.to_owned(),
        revision,
        target_revision: None,
        event_id: None,
        note: if passed_over == 0 {
            "no event at or before this revision: resume from the start of the target stream"
                .to_owned()
        } else {
            format!(
                "none of the {passed_over} events at or before it is on the target: resume \
                 from the start of the target stream"
            )
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::METADATA_EVENT_TYPE as METADATA;

    fn record(stream: &str, event_type: &str, data: &[u8], at: u64) -> Unlocated {
        Unlocated {
            id: Uuid::new_v4(),
            stream: stream.to_owned(),
            revision: 0,
            event_type: event_type.to_owned(),
            data: Bytes::copy_from_slice(data),
            position: Position::at(at),
        }
    }

    #[test]
    fn sought_records_are_found_by_id_in_order_passing_over_absent_ones() {
        let records = [
            record("a", "Placed", b"", 1),
            record("b", "Placed", b"", 2),
            record("c", "Placed", b"", 3),
        ];
        let mut sought = Sought::new(&records);
        // The target's own records are passed by.
        assert_eq!(
            sought.see(Uuid::new_v4(), "$stats-1", "$statsCollected", b"{}"),
            Seen::Other
        );
        // "a" is not on the target: "b" is found, and "a" is passed.
        assert_eq!(
            sought.see(records[1].id, "b", "Placed", b""),
            Seen::Replica(1)
        );
        assert!(!sought.done());
        // Seen again (out of order): not a replica of something sought.
        assert_eq!(sought.see(records[0].id, "a", "Placed", b""), Seen::Later);
        assert_eq!(
            sought.see(records[2].id, "c-renamed", "Placed", b""),
            Seen::Replica(2)
        );
        assert!(sought.done());
    }

    #[test]
    fn a_user_record_not_sought_comes_after_the_position() {
        let records = [record("a", "Placed", b"", 1)];
        let mut sought = Sought::new(&records);
        assert_eq!(sought.see(Uuid::new_v4(), "a", "Placed", b""), Seen::Later);
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$a", METADATA, b"{\"$maxCount\":3}"),
            Seen::Later
        );
        assert_eq!(sought.next, 0);
    }

    #[test]
    fn records_the_server_writes_itself_are_found_by_content() {
        let records = [
            record("a", TOMBSTONE_EVENT_TYPE, b"", 1),
            record("$$b", METADATA, b"{\"$tb\":4}", 2),
        ];
        let mut sought = Sought::new(&records);
        // A tombstone of another stream, then metadata with other data: not these.
        assert_eq!(
            sought.see(Uuid::new_v4(), "z", TOMBSTONE_EVENT_TYPE, b""),
            Seen::Later
        );
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$b", METADATA, b"{\"$tb\":5}"),
            Seen::Later
        );
        // The target's own tombstone of "a" (other id, whatever its data).
        assert_eq!(
            sought.see(Uuid::new_v4(), "a", TOMBSTONE_EVENT_TYPE, b"x"),
            Seen::Replica(0)
        );
        assert_eq!(
            sought.see(Uuid::new_v4(), "$$b", METADATA, b"{\"$tb\":4}"),
            Seen::Replica(1)
        );
        assert!(sought.done());
    }
}
