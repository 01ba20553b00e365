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
//!
//! A stream of links that each cluster's own projections write (`$ce-…`,
//! `$et-…`; links are not replicated) has link records of its own on each
//! side, at revisions that need not match. A link maps to the target link to
//! the same event: the event it points to (`k@stream`) is found on the
//! target by id, then the link with that data in the target's stream.
//!
//! # Where it lives
//! This file holds the public API: the options, the mappings and
//! [`map_position`], which walks back from the position on the source
//! (`walk.rs`, looking each record up in its target stream: `locate.rs`),
//! then maps exactly (`exact.rs`) or from an anchor (`anchored.rs`).
//! [`map_revision`] is in `revision.rs`.

use std::time::Duration;

use replicator_core::{ChangeKind, Position};
use serde::Serialize;
use uuid::Uuid;

use crate::classify::classify;
use crate::cluster::{ClusterRead, Record};
use crate::verify::VerifyError;
use crate::WriteOrder;

mod anchored;
mod exact;
mod locate;
mod revision;
mod walk;

pub use revision::map_revision;

use anchored::anchored;
use exact::exact;
use walk::walk_back;

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

fn appended(record: &Record) -> bool {
    kind_of(record) == ChangeKind::Append
}

fn kind_of(record: &Record) -> ChangeKind {
    classify(&record.stream, &record.event_type, &record.data)
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
/// [module docs](self). Each cluster is read through [`ClusterRead`]: the
/// gRPC [`eventstore::Client`], or a v5 source's
/// [`TcpSource`](crate::tcp::TcpSource).
///
/// # Errors
/// When a read fails or times out.
pub async fn map_position<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
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
