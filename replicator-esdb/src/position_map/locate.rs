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
    let timeout = options.request_timeout;
    let operation = || format!("reading stream {stream:?}");
    for (from, direction, max) in [
        (StreamFrom::Revision(revision), Direction::Forwards, 1),
        (StreamFrom::End, Direction::Backwards, options.window.max(1)),
    ] {
        let mut records = target.stream_records(stream, from, direction, max);
        loop {
            let next = match next_within(timeout, &mut records).await {
                Err(ReadError::NotFound | ReadError::Deleted) => return Ok(None),
                other => settle(TARGET, operation, other)?,
            };
            let Some(found) = next else { break };
            if found.id == id {
                // The target is read over gRPC, whose stream reads carry
                // positions.
                let Some(position) = found.position else {
                    return Ok(None);
                };
                return Ok(Some((found.revision, position)));
            }
        }
    }
    Ok(None)
}
