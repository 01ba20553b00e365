//! Stream revisions mapped to the target ([`map_revision`]).

use super::locate::find_in_target_stream;
use super::{appended, MapOptions, RevisionMapping};
use crate::cluster::{next_within, ClusterRead, Direction, ReadError, StreamFrom, SOURCE};
use crate::verify::{settle, VerifyError};

/// Maps a consumer's revision in `stream` to the target; see the
/// [module docs](super).
///
/// # Errors
/// When a read fails or times out.
pub async fn map_revision<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    stream: &str,
    revision: u64,
    options: &MapOptions,
) -> Result<RevisionMapping, VerifyError> {
    let timeout = options.request_timeout;
    let operation = || format!("reading stream {stream:?}");
    let mut records = source.stream_records(
        stream,
        StreamFrom::Revision(revision),
        Direction::Backwards,
        options.window.max(1),
    );
    let mut passed_over = 0usize;
    loop {
        let next = match next_within(timeout, &mut records).await {
            Err(ReadError::NotFound) => None,
            other => settle(SOURCE, operation, other)?,
        };
        let Some(e) = next else { break };
        if e.revision > revision || !appended(&e) {
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
