//! Stream revisions mapped to the target ([`map_revision`]).

use super::locate::{find_in_target_stream, first_record};
use super::{appended, MapOptions, RevisionMapping};
use crate::classify::LINK_EVENT_TYPE;
use crate::cluster::{
    next_within, ClusterRead, Direction, ReadError, Record, StreamFrom, SOURCE, TARGET,
};
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
        if e.revision > revision {
            continue;
        }
        if e.event_type == LINK_EVENT_TYPE {
            if let Some(found) = find_link_in_target(source, target, stream, &e, options).await? {
                return Ok(found);
            }
            passed_over += 1;
            continue;
        }
        if !appended(&e) {
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

/// The target revision of the link `e` of `stream` (a stream of links the
/// target's own projections write, such as `$ce-orders`, whose link records
/// have ids of their own on each cluster): the target link to the same event.
/// The event it points to (`k@linked`) is found on the target by id
/// (`k'@linked`: the same revision unless renumbered), then the link with
/// that data in the target's `stream`: at the same revision first, else
/// among its last `window` records.
async fn find_link_in_target<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
    stream: &str,
    e: &Record,
    options: &MapOptions,
) -> Result<Option<RevisionMapping>, VerifyError> {
    let Some((linked_revision, linked)) = std::str::from_utf8(&e.data)
        .ok()
        .and_then(|text| text.split_once('@'))
        .and_then(|(n, s)| Some((n.parse::<u64>().ok()?, s.to_owned())))
    else {
        return Ok(None);
    };
    let Some(pointed) = first_record(
        source,
        SOURCE,
        &linked,
        StreamFrom::Revision(linked_revision),
        Direction::Forwards,
        1,
        options,
        |r| r.revision == linked_revision,
    )
    .await?
    else {
        return Ok(None);
    };
    let Some((target_linked_revision, _)) =
        find_in_target_stream(target, &linked, linked_revision, pointed.id, options).await?
    else {
        return Ok(None);
    };
    let data = format!("{target_linked_revision}@{linked}");
    let is_it = |r: &Record| r.event_type == LINK_EVENT_TYPE && r.data.as_ref() == data.as_bytes();
    for (from, direction, max) in [
        (StreamFrom::Revision(e.revision), Direction::Forwards, 1),
        (StreamFrom::End, Direction::Backwards, options.window.max(1)),
    ] {
        if let Some(found) =
            first_record(target, TARGET, stream, from, direction, max, options, is_it).await?
        {
            return Ok(Some(RevisionMapping {
                stream: stream.to_owned(),
                revision: e.revision,
                target_revision: Some(found.revision),
                event_id: Some(pointed.id),
                note: format!(
                    "a link to {linked_revision}@{linked}: target revision {} links to the \
                     same event ({data})",
                    found.revision
                ),
            }));
        }
    }
    Ok(None)
}
