//! The walk back on the source from a position to the last replicated
//! record its target stream returns, and the records passed over on the way.

use bytes::Bytes;
use replicator_core::{ChangeKind, Position};
use uuid::Uuid;

use super::locate::locate;
use super::{kind_of, Anchor, MapMode, MapOptions};
use crate::cluster::{AllFrom, ClusterRead, Direction, Record, SOURCE};
use crate::verify::{next_record, VerifyError};

/// A replicated source record between the found one and the position that
/// its target stream did not return.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unlocated {
    pub(super) id: Uuid,
    pub(super) stream: String,
    pub(super) revision: u64,
    pub(super) event_type: String,
    /// Only for `$`-typed records, which are matched by content; empty otherwise.
    pub(super) data: Bytes,
    pub(super) position: Position,
}

impl Unlocated {
    fn of(position: Position, e: &Record) -> Self {
        Unlocated {
            id: e.id,
            stream: e.stream.clone(),
            revision: e.revision,
            event_type: e.event_type.clone(),
            data: if e.event_type.starts_with('$') {
                e.data.clone()
            } else {
                Bytes::new()
            },
            position,
        }
    }
}

/// What the walk back from the position found.
pub(super) struct Walk {
    /// The last candidate at or before the position that its target stream
    /// returns, and the same record there.
    pub(super) found: Option<Anchor>,
    /// The candidates after it, passed over, in source order.
    pub(super) passed_over: Vec<Unlocated>,
    /// The walk stopped after `window` candidates passed over, finding none.
    pub(super) gave_up: bool,
}

/// Walks the source back from `position` (inclusive) to the last candidate
/// the target's stream returns: user events with [`MapMode::Anchor`], every
/// replicated record with [`MapMode::Exact`] (tombstones are not looked up:
/// the target server chose their ids).
pub(super) async fn walk_back<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    position: Position,
    mode: MapMode,
    options: &MapOptions,
) -> Result<Walk, VerifyError> {
    let timeout = options.request_timeout;
    // Candidates, newest first: the record at the position (a forward read
    // is inclusive), then those before it (a backward read is not).
    let operation = || format!("reading $all at {position}");
    let mut first = source.all_records(AllFrom::Position(position), Direction::Forwards, 1);
    let at_position = next_record(SOURCE, operation, timeout, &mut first).await?;
    drop(first);
    let mut backwards = source.all_records(
        AllFrom::Position(position),
        Direction::Backwards,
        usize::MAX,
    );
    let mut pending = at_position.into_iter();
    let mut walk = Walk {
        found: None,
        passed_over: Vec::new(),
        gave_up: false,
    };
    let mut previous: Option<Position> = None;
    loop {
        let (here, record) = match pending.next() {
            Some(item) => item,
            None => match next_record(SOURCE, operation, timeout, &mut backwards).await? {
                Some(item) => item,
                None => break,
            },
        };
        if here > position || previous == Some(here) {
            continue;
        }
        previous = Some(here);
        let kind = kind_of(&record);
        let candidate = match mode {
            MapMode::Exact => kind.is_write(),
            MapMode::Anchor => kind == ChangeKind::Append,
        };
        if !candidate {
            continue;
        }
        if kind != ChangeKind::Tombstone {
            if let Some(found) = locate(target, here, &record, options).await? {
                walk.found = Some(found);
                break;
            }
        }
        walk.passed_over.push(Unlocated::of(here, &record));
        if walk.passed_over.len() >= options.window {
            walk.gave_up = true;
            break;
        }
    }
    walk.passed_over.reverse();
    Ok(walk)
}
