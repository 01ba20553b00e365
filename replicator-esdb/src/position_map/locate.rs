//! A source event looked up on the target, by id in its stream.

use eventstore::{Client, ReadStreamOptions, ResolvedEvent, StreamPosition};
use futures::TryFutureExt as _;
use replicator_core::Position;
use uuid::Uuid;

use super::{Anchor, MapOptions};
use crate::cluster::{within, ClientPosition as _, RequestError, TARGET};
use crate::verify::{settle, VerifyError};

/// The source event `event` on the target, by id in its stream: at the same
/// revision, else among the last `window` events of the target stream.
pub(super) async fn locate(
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

pub(super) async fn find_in_target_stream(
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
