//! Stream revisions mapped to the target ([`map_revision`]).

use eventstore::{Client, ReadStreamOptions, StreamPosition};
use futures::TryFutureExt as _;

use super::locate::find_in_target_stream;
use super::{appended, MapOptions, RevisionMapping};
use crate::cluster::{within, RequestError, SOURCE};
use crate::verify::{settle, VerifyError};

/// Maps a consumer's revision in `stream` to the target; see the
/// [module docs](super).
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
