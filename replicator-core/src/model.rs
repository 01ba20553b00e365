//! The data the pipeline carries: positions, events and checkpoints.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A position in a cluster's `$all` stream.
///
/// Positions are ordered first by `commit`, then by `prepare`, like the server
/// orders them. They are byte offsets in the transaction log: they increase but
/// have gaps, so never compute a "next" position by adding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Commit position of the transaction that holds the event.
    pub commit: u64,
    /// Prepare position of the event's own record.
    pub prepare: u64,
}

impl Position {
    /// The start of `$all`.
    pub const START: Position = Position {
        commit: 0,
        prepare: 0,
    };

    /// A position whose commit and prepare parts are equal, as they are for every
    /// event written outside an explicit transaction (and as the C# replicator
    /// stored them).
    pub const fn at(log_position: u64) -> Self {
        Position {
            commit: log_position,
            prepare: log_position,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "C:{}/P:{}", self.commit, self.prepare)
    }
}

/// Reads a position as people write it: `COMMIT`, `COMMIT/PREPARE` or
/// `C:COMMIT/P:PREPARE` (as [`Display`](fmt::Display) prints it), with
/// surrounding whitespace ignored. A lone `COMMIT` is [`Position::at`].
impl FromStr for Position {
    type Err = ParsePositionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let (commit, prepare) = match trimmed.split_once('/') {
            Some((commit, prepare)) => (
                commit.strip_prefix("C:").unwrap_or(commit),
                Some(prepare.strip_prefix("P:").unwrap_or(prepare)),
            ),
            None => (trimmed.strip_prefix("C:").unwrap_or(trimmed), None),
        };
        let number = |part: &str| {
            part.trim().parse::<u64>().map_err(|_| ParsePositionError {
                text: text.to_owned(),
                reason: ParsePositionReason::NotNumbers,
            })
        };
        let commit = number(commit)?;
        let prepare = prepare.map_or(Ok(commit), number)?;
        if prepare > commit {
            return Err(ParsePositionError {
                text: text.to_owned(),
                reason: ParsePositionReason::PrepareAfterCommit,
            });
        }
        Ok(Position { commit, prepare })
    }
}

/// Text that is not a [`Position`]; the message quotes it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a position: {reason}")]
pub struct ParsePositionError {
    text: String,
    reason: ParsePositionReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParsePositionReason {
    NotNumbers,
    PrepareAfterCommit,
}

impl fmt::Display for ParsePositionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParsePositionReason::NotNumbers => {
                "expected COMMIT, COMMIT/PREPARE or C:COMMIT/P:PREPARE (non-negative integers)"
            }
            ParsePositionReason::PrepareAfterCommit => "the prepare part is after the commit part",
        })
    }
}

/// How an event's data is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ContentType {
    /// `application/json`.
    Json,
    /// `application/octet-stream`: anything else.
    Binary,
}

/// Why a record read from the source is not written to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The record belongs to a `$`-prefixed system stream (other than a `$$`
    /// metadata stream).
    SystemStream,
    /// The record has a `$`-prefixed system event type.
    SystemEvent,
    /// A link event (`$>`): it points at an event that is replicated on its own.
    Link,
    /// A user-configured filter rejected it.
    Filtered,
    /// The scavenge filter: a scavenge of the source would remove it (deleted
    /// stream, truncated, past `$maxAge` or `$maxCount`).
    Scavenged,
    /// A transform dropped it (a script or HTTP service returned nothing).
    Dropped,
}

/// What a record read from the source means for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// Append the event to its stream.
    Append,
    /// Set the metadata of [`Event::target_stream`]; the event's `data` is the
    /// metadata document (JSON). The record itself lives in the `$$stream`.
    StreamMetadata,
    /// Soft-delete [`Event::target_stream`]: reads then say "not found" and a
    /// later append revives the stream.
    SoftDelete,
    /// Tombstone (hard-delete) [`Event::target_stream`]: it can never be written
    /// again.
    Tombstone,
    /// Nothing to write, but the record still advances the checkpoint.
    Skip(SkipReason),
}

impl ChangeKind {
    /// Whether a sink has anything to do for this change.
    pub fn is_write(self) -> bool {
        !matches!(self, ChangeKind::Skip(_))
    }
}

/// One record read from the source `$all`, with what it means for the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event id, preserved on the target (it is what makes replays idempotent).
    pub id: Uuid,
    /// The stream the record was read from (`$$orders-1` for a metadata record).
    pub stream: String,
    /// The record's revision in `stream`.
    pub revision: u64,
    /// The event type.
    pub event_type: String,
    /// The event's data. May be empty.
    pub data: Bytes,
    /// The user's metadata. May be empty.
    pub metadata: Bytes,
    /// How `data` is encoded.
    pub content_type: ContentType,
    /// When the source created it. Target servers set their own time on append.
    pub created: SystemTime,
    /// The record's position in the source `$all`.
    pub position: Position,
    /// What to do with it on the target.
    pub kind: ChangeKind,
    /// The next record of the source's `$all` belongs to the same commit as
    /// this one (an EventStoreDB v5 transaction's records share their commit
    /// position, each at its own prepare position) and the reader delivers it
    /// right behind this one, without waiting for the source.
    ///
    /// The pipeline hands a commit's records to the sink in one batch, so a
    /// transaction lands on the target in one append. A reader that cannot
    /// tell leaves it `false` (every record a commit of its own); a reader
    /// that sets it must deliver the commit's next record promptly, since
    /// the batch waits for it.
    pub more_in_commit: bool,
}

impl Event {
    /// An event of `event_type` to append to `stream`, with JSON `data`: a new
    /// id, revision 0, no metadata, created now, at the start of `$all`.
    ///
    /// Readers fill in every field from what they read; this and the `with_…`
    /// methods are for events made up by hand (tests, examples, memory
    /// sources):
    ///
    /// ```
    /// use replicator_core::{ChangeKind, ContentType, Event, Position};
    ///
    /// let event = Event::new("orders-1", "OrderPlaced", r#"{"total":3}"#)
    ///     .with_revision(7)
    ///     .with_position(Position::at(1_234));
    /// assert_eq!(event.kind, ChangeKind::Append);
    /// assert_eq!(event.content_type, ContentType::Json);
    /// assert!(event.metadata.is_empty());
    /// ```
    pub fn new(
        stream: impl Into<String>,
        event_type: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Self {
        Event {
            id: Uuid::new_v4(),
            stream: stream.into(),
            revision: 0,
            event_type: event_type.into(),
            data: data.into(),
            metadata: Bytes::new(),
            content_type: ContentType::Json,
            created: SystemTime::now(),
            position: Position::START,
            kind: ChangeKind::Append,
            more_in_commit: false,
        }
    }

    /// The same event with id `id`.
    #[must_use]
    pub fn with_id(self, id: Uuid) -> Self {
        Event { id, ..self }
    }

    /// The same event at `revision` of its stream.
    #[must_use]
    pub fn with_revision(self, revision: u64) -> Self {
        Event { revision, ..self }
    }

    /// The same event with the user metadata `metadata`.
    #[must_use]
    pub fn with_metadata(self, metadata: impl Into<Bytes>) -> Self {
        Event {
            metadata: metadata.into(),
            ..self
        }
    }

    /// The same event with its data encoded as `content_type`.
    #[must_use]
    pub fn with_content_type(self, content_type: ContentType) -> Self {
        Event {
            content_type,
            ..self
        }
    }

    /// The same event created at `created`.
    #[must_use]
    pub fn with_created(self, created: SystemTime) -> Self {
        Event { created, ..self }
    }

    /// The same event at `position` in the source `$all`.
    #[must_use]
    pub fn with_position(self, position: Position) -> Self {
        Event { position, ..self }
    }

    /// The same record meaning `kind` for the target.
    #[must_use]
    pub fn with_kind(self, kind: ChangeKind) -> Self {
        Event { kind, ..self }
    }

    /// The target stream this change affects: the stream itself, or for a
    /// `$$stream` metadata record the stream whose metadata it is.
    ///
    /// The pipeline keeps every change of one target stream in source order, so a
    /// stream's metadata, deletes and events never overtake each other.
    pub fn target_stream(&self) -> &str {
        match self.kind {
            ChangeKind::StreamMetadata | ChangeKind::SoftDelete => {
                self.stream.strip_prefix("$$").unwrap_or(&self.stream)
            }
            _ => &self.stream,
        }
    }

    /// Size of the payload in bytes (data plus metadata), used to cap batches.
    pub fn payload_len(&self) -> usize {
        self.data.len() + self.metadata.len()
    }
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The beginning of `$all`.
    Beginning,
    /// Strictly after this position: it is the last one already replicated.
    After(Position),
    /// At this position, inclusive: the event there is the first to replicate
    /// (a seed such as a backup's `chaser.chk`).
    At(Position),
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Beginning => f.write_str("the beginning of $all"),
            StartFrom::After(p) => write!(f, "after {p} (the stored checkpoint)"),
            StartFrom::At(p) => write!(f, "at {p} (a seed, inclusive)"),
        }
    }
}

/// The replication progress a [`crate::CheckpointStore`] keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The source `$all` position replication resumes from. Normally the last
    /// source record fully processed (resume strictly after it); for a seed, the
    /// first record still to replicate (see [`Checkpoint::seed`]).
    pub source: Position,
    /// The target `$all` position of the last event written, when known: the
    /// position consumers of the target use at cutover in place of `source`.
    pub target: Option<Position>,
    /// When the checkpoint was taken.
    pub taken_at: SystemTime,
    /// `true` when `source` is a seed that is itself still to be replicated,
    /// written by seeding (`chaser.chk`) before any event was processed.
    pub seed: bool,
}

impl Checkpoint {
    /// A checkpoint after `source` was processed.
    pub fn processed(source: Position, target: Option<Position>) -> Self {
        Checkpoint {
            source,
            target,
            taken_at: SystemTime::now(),
            seed: false,
        }
    }

    /// A seed: replication starts at `source`, inclusive.
    pub fn seeded(source: Position) -> Self {
        Checkpoint {
            source,
            target: None,
            taken_at: SystemTime::now(),
            seed: true,
        }
    }

    /// A checkpoint that knows only the commit position of the last record
    /// processed, as the C# replicator stores it. Replication starts again at
    /// that commit's first record (a seed at `C:commit/P:0`): a commit of
    /// several records (an EventStoreDB v5 transaction, each record at
    /// `C:commit/P:its own`) may have been processed only in part, and
    /// resuming after `C:commit/P:commit`, as the C# replicator does, would
    /// skip the rest of it. What the target already holds of the commit is
    /// recognised as replays.
    pub fn of_commit(commit: u64) -> Self {
        Checkpoint::seeded(Position { commit, prepare: 0 })
    }

    /// Where a reader resumes from this checkpoint.
    pub fn start_from(&self) -> StartFrom {
        if self.seed {
            StartFrom::At(self.source)
        } else {
            StartFrom::After(self.source)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_in_every_printed_form() {
        assert_eq!("42".parse(), Ok(Position::at(42)));
        assert_eq!(
            "42/40".parse(),
            Ok(Position {
                commit: 42,
                prepare: 40
            })
        );
        assert_eq!(
            " C:42/P:40 ".parse(),
            Ok(Position {
                commit: 42,
                prepare: 40
            })
        );
        assert_eq!("C:7".parse(), Ok(Position::at(7)));
        let printed = Position {
            commit: 9,
            prepare: 3,
        };
        assert_eq!(printed.to_string().parse(), Ok(printed));
    }

    #[test]
    fn a_bad_position_is_named() {
        for bad in ["", "x", "-1", "1/2", "3/y"] {
            let error = bad.parse::<Position>().unwrap_err().to_string();
            assert!(error.contains(&format!("`{bad}`")), "{error}");
        }
    }

    #[test]
    fn positions_order_by_commit_then_prepare() {
        let a = Position {
            commit: 10,
            prepare: 90,
        };
        let b = Position {
            commit: 11,
            prepare: 5,
        };
        let c = Position {
            commit: 11,
            prepare: 6,
        };
        assert!(a < b && b < c);
    }

    #[test]
    fn metadata_and_soft_delete_target_the_stream_not_its_metadata_stream() {
        let mut e = Event::new("$$orders-1", "$metadata", Bytes::new())
            .with_kind(ChangeKind::StreamMetadata);
        assert_eq!(e.target_stream(), "orders-1");
        e.kind = ChangeKind::SoftDelete;
        assert_eq!(e.target_stream(), "orders-1");
        e.kind = ChangeKind::Skip(SkipReason::SystemStream);
        assert_eq!(e.target_stream(), "$$orders-1");
    }

    #[test]
    fn a_seed_resumes_inclusively_a_processed_checkpoint_exclusively() {
        let p = Position::at(42);
        assert_eq!(Checkpoint::seeded(p).start_from(), StartFrom::At(p));
        assert_eq!(
            Checkpoint::processed(p, None).start_from(),
            StartFrom::After(p)
        );
    }
}
