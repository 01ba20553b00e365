//! Where a consumer of the source resumes on the target: source `$all`
//! positions and stream revisions mapped to the target's, by event identity.
//!
//! # `$all` positions ([`map_position`])
//! A consumer's checkpoint `P` says it processed every source record up to
//! `P`. The mapping finds the **anchor**: the last event at or before `P` that
//! the replicator appended (a user event, as [`classify`] decides) and that the
//! target's stream still returns, and the same event on the target (same id,
//! in the same stream). Its target position `T` is where the consumer resumes
//! (a subscription from `T` delivers what comes strictly after it).
//!
//! The target's `$all` is not exactly the source's order: streams are hashed
//! onto `partitionCount` writers, and even one writer appends the streams of a
//! batch concurrently (the sink's speed comes from that). Each stream keeps
//! its order; different streams interleave differently. So an event the
//! consumer has not processed (after `P`) can sit on the target *before* `T`,
//! and processed ones after it. The rule that loses nothing: resume just
//! before the earliest target record of any unprocessed event. The mapping
//! reads the first `window` user events after `P` on the source and the
//! `window` target records before `T`; the earliest of those events found
//! there moves the resume point before it. The consumer then sees again the
//! processed events written to the target after that point (the note counts
//! those before `T`; processed events of other streams written after `T` are
//! possible too). Events are reordered only while they are in flight
//! together (one batch with `partitionCount` 1; the buffer and the
//! partitions' batches with more), so a `window` above the records the
//! replicator holds at once (`sink.bufferSize` plus the partitions' batches)
//! is enough. When no such event precedes `T`, the mapping is `T` itself.
//! When the consumer has processed every user event of the source (the usual
//! case at cutover, writers stopped and consumers drained), it resumes at the
//! end of the target's `$all` and sees nothing twice.
//!
//! An anchor candidate the target does not return (its stream was deleted or
//! truncated there since) is passed over for the one before it: records
//! between may then be seen again, never lost. A position past the stored
//! checkpoint is refused (not all of it is on the target yet); one before the
//! first replicated event maps to the start of the target's `$all`.
//!
//! # Stream revisions ([`map_revision`])
//! A consumer of one stream resumes after the target revision of the last
//! source event at or before its revision: the same revision unless the target
//! stream was renumbered (a scavenged source, filtered events).

use std::collections::HashSet;
use std::time::Duration;

use eventstore::{Client, ReadAllOptions, ReadStreamOptions, ResolvedEvent, StreamPosition};
use replicator_core::{ChangeKind, Position};
use serde::Serialize;
use uuid::Uuid;

use crate::classify::classify;
use crate::verify::{request, settle, VerifyError};

/// How [`map_position`] maps.
#[derive(Clone, Debug)]
pub struct MapOptions {
    /// Source events after the position, and target records before the
    /// anchor, examined for reordering.
    pub window: usize,
    /// The stored checkpoint: positions after it are not (all) on the target.
    pub replicated_until: Option<Position>,
    /// Deadline of each request.
    pub request_timeout: Duration,
}

impl Default for MapOptions {
    fn default() -> Self {
        MapOptions {
            window: 10_000,
            replicated_until: None,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The event a mapping rests on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Anchor {
    /// Its stream.
    pub stream: String,
    /// Its source revision.
    pub revision: u64,
    /// Its target revision.
    pub target_revision: u64,
    /// Its id.
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
    /// The last replicated event at or before `source`.
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

const SOURCE: &str = "source";
const TARGET: &str = "target";

fn position_of(event: &ResolvedEvent) -> Position {
    let p = event.get_original_event().position;
    Position {
        commit: p.commit,
        prepare: p.prepare,
    }
}

fn appended(event: &ResolvedEvent) -> bool {
    let e = event.get_original_event();
    classify(&e.stream_id, &e.event_type, &e.data) == ChangeKind::Append
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
    let timeout = options.request_timeout;
    if let Some(until) = options.replicated_until {
        if position > until {
            return Ok(Mapping {
                source: position,
                target: None,
                resume: Resume::NotReplicatedYet,
                anchor: None,
                note: format!(
                    "beyond what has been replicated (the checkpoint is at {until}): wait until \
                     the replicator has passed it, then map it again"
                ),
            });
        }
    }
    // Candidates, newest first: the record at the position (a forward read
    // is inclusive), then those before it (a backward read is not).
    let operation = || format!("reading $all at {position}");
    let at = ReadAllOptions::default()
        .position(StreamPosition::Position(eventstore::Position {
            commit: position.commit,
            prepare: position.prepare,
        }))
        .max_count(1);
    let mut first = request(SOURCE, operation, timeout, source.read_all(&at)).await?;
    let mut candidates_at = Vec::new();
    if let Some(event) = request(SOURCE, operation, timeout, first.next()).await? {
        if position_of(&event) == position && appended(&event) {
            candidates_at.push(event);
        }
    }
    drop(first);
    let before = ReadAllOptions::default()
        .position(StreamPosition::Position(eventstore::Position {
            commit: position.commit,
            prepare: position.prepare,
        }))
        .backwards()
        .max_count(usize::MAX);
    let mut backwards = request(SOURCE, operation, timeout, source.read_all(&before)).await?;
    let mut passed_over = 0usize;
    let mut anchor = None;
    let mut pending = candidates_at.into_iter();
    loop {
        let event = match pending.next() {
            Some(event) => event,
            None => match request(SOURCE, operation, timeout, backwards.next()).await? {
                Some(event) => event,
                None => break,
            },
        };
        if position_of(&event) > position || !appended(&event) {
            continue;
        }
        if let Some(found) = locate(target, &event, options).await? {
            anchor = Some(found);
            break;
        }
        passed_over += 1;
        if passed_over >= options.window {
            break;
        }
    }
    drop(backwards);
    let Some(anchor) = anchor else {
        return Ok(Mapping {
            source: position,
            target: None,
            resume: Resume::FromStart,
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
        .position(StreamPosition::Position(eventstore::Position {
            commit: position.commit,
            prepare: position.prepare,
        }))
        .max_count(usize::MAX);
    let mut forward = request(SOURCE, operation, timeout, source.read_all(&after)).await?;
    let mut unprocessed: HashSet<Uuid> = HashSet::new();
    let mut source_exhausted = false;
    while unprocessed.len() < options.window {
        let Some(event) = request(SOURCE, operation, timeout, forward.next()).await? else {
            source_exhausted = true;
            break;
        };
        if position_of(&event) > position && appended(&event) {
            unprocessed.insert(event.get_original_event().id);
        }
    }
    drop(forward);
    if unprocessed.is_empty() && source_exhausted {
        // Processed everything the source holds, and all of it is replicated
        // (the position is within the checkpoint): the whole target is
        // processed, resume at its end and see nothing twice.
        let operation = || "reading the end of $all".to_owned();
        let end = ReadAllOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .max_count(1);
        let mut reader = request(TARGET, operation, timeout, target.read_all(&end)).await?;
        if let Some(last) = request(TARGET, operation, timeout, reader.next()).await? {
            let last = position_of(&last);
            let at_end = format!(
                "the consumer has processed every user event of the source: resume at the end \
                 of the target's $all ({last}), nothing is seen twice{}",
                if note.is_empty() {
                    String::new()
                } else {
                    format!("; {note}")
                }
            );
            return Ok(Mapping {
                source: position,
                target: Some(last.max(anchor.target_position)),
                resume: Resume::After,
                anchor: Some(anchor),
                note: at_end,
            });
        }
    }

    let operation = || format!("reading $all before {}", anchor.target_position);
    let before = ReadAllOptions::default()
        .position(StreamPosition::Position(eventstore::Position {
            commit: anchor.target_position.commit,
            prepare: anchor.target_position.prepare,
        }))
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
        let here = position_of(&event);
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
                if note.is_empty() {
                    String::new()
                } else {
                    format!("; {note}")
                }
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
                    if note.is_empty() {
                        String::new()
                    } else {
                        format!("; {note}")
                    }
                ),
            )
        }
    };
    Ok(Mapping {
        source: position,
        target: target_position,
        resume,
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
        source_position: position_of(event),
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
        let mut reader =
            match tokio::time::timeout(timeout, target.read_stream(stream, &read_options)).await {
                Ok(Err(
                    eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
                )) => return Ok(None),
                other => settle(TARGET, operation, timeout, other)?,
            };
        loop {
            let next = match tokio::time::timeout(timeout, reader.next()).await {
                Ok(Err(
                    eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
                )) => return Ok(None),
                other => settle(TARGET, operation, timeout, other)?,
            };
            let Some(found) = next else { break };
            let r = found.get_original_event();
            if r.id == id {
                return Ok(Some((r.revision, position_of(&found))));
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
    let mut reader =
        match tokio::time::timeout(timeout, source.read_stream(stream, &read_options)).await {
            Ok(Err(eventstore::Error::ResourceNotFound)) => None,
            other => Some(settle(SOURCE, operation, timeout, other)?),
        };
    let mut passed_over = 0usize;
    while let Some(stream_reader) = reader.as_mut() {
        let next = match tokio::time::timeout(timeout, stream_reader.next()).await {
            Ok(Err(eventstore::Error::ResourceNotFound)) => None,
            other => settle(SOURCE, operation, timeout, other)?,
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
