//! A source event looked up on the target, by id in its stream.

use replicator_core::Position;
use uuid::Uuid;

use super::{Anchor, MapOptions};
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, Record, StreamFrom, TARGET};
use crate::verify::{settle, VerifyError};

/// The source record `e` (at `position` on the source) on the target, by id
/// in its stream: at the same revision, else among the last `window` events
/// of the target stream.
pub(super) async fn locate<T: ClusterRead>(
    target: &T,
    position: Position,
    e: &Record,
    options: &MapOptions,
) -> Result<Option<Anchor>, VerifyError> {
    let Some((target_revision, target_position)) =
        find_in_target_stream(target, &e.stream, e.revision, e.id, options).await?
    else {
        return Ok(None);
    };
    Ok(Some(Anchor {
        stream: e.stream.clone(),
        revision: e.revision,
        target_revision,
        event_id: e.id,
        source_position: position,
        target_position,
    }))
}

/// The target revision and position of the event `id` of `stream`.
pub(super) async fn find_in_target_stream<T: ClusterRead>(
    target: &T,
    stream: &str,
    revision: u64,
    id: Uuid,
    options: &MapOptions,
) -> Result<Option<(u64, Position)>, VerifyError> {
    for (from, direction, max) in [
        (StreamFrom::Revision(revision), Direction::Forwards, 1),
        (StreamFrom::End, Direction::Backwards, options.window.max(1)),
    ] {
        let is_it = |found: &Record| found.id == id;
        if let Some(found) =
            first_record(target, TARGET, stream, from, direction, max, options, is_it).await?
        {
            // The target is read over gRPC, whose stream reads carry
            // positions.
            return Ok(found.position.map(|position| (found.revision, position)));
        }
    }
    Ok(None)
}

/// The first record of a read of `stream` that `wanted` accepts; `None`
/// when none does or the stream does not exist.
#[allow(clippy::too_many_arguments)]
pub(super) async fn first_record<C: ClusterRead>(
    cluster: &C,
    side: &'static str,
    stream: &str,
    from: StreamFrom,
    direction: Direction,
    max: usize,
    options: &MapOptions,
    wanted: impl Fn(&Record) -> bool,
) -> Result<Option<Record>, VerifyError> {
    let mut records = cluster.stream_records(stream, from, direction, max);
    loop {
        let next = match next_within(options.request_timeout, &mut records).await {
            Err(ReadError::NotFound | ReadError::Deleted) => return Ok(None),
            other => settle(side, || format!("reading stream {stream:?}"), other)?,
        };
        match next {
            Some(record) if wanted(&record) => return Ok(Some(record)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}
