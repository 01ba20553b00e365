//! Appends, deletes and tombstones: the maximum append size, expected
//! revisions and the replies.

use tonic::Status;

use super::status::{stream_deleted, wrong_expected_status};
use crate::proto::streams::{append_req, append_resp, AppendResp};
use crate::store::{Expected, Proposed, WriteOutcome};

/// The largest append (sum of [`append_size`] over its events) the real server
/// accepts unless configured otherwise (`MaxAppendSize`, 1 MiB).
pub(crate) const DEFAULT_MAX_APPEND_SIZE: usize = 1024 * 1024;

/// What one event counts towards the maximum append size on the real server
/// (`Event.SizeOnDisk`): data, plus custom metadata, plus the event type counted
/// twice per UTF-16 unit.
pub(super) fn append_size(event: &Proposed) -> usize {
    event.data.len() + event.custom_metadata.len() + 2 * event.event_type.encode_utf16().count()
}

pub(super) fn expected_from_append(
    option: Option<append_req::options::ExpectedStreamRevision>,
) -> Expected {
    use append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Expected::Exact(r),
        Some(E::NoStream(())) => Expected::NoStream,
        Some(E::StreamExists(())) => Expected::StreamExists,
        Some(E::Any(())) | None => Expected::Any,
    }
}

pub(super) fn append_reply(outcome: WriteOutcome, stream: &str) -> Result<AppendResp, Status> {
    use append_resp::wrong_expected_version as wev;
    let result = match outcome {
        WriteOutcome::Success { current, position } => {
            append_resp::Result::Success(append_resp::Success {
                current_revision_option: Some(match current {
                    Some(r) => append_resp::success::CurrentRevisionOption::CurrentRevision(r),
                    None => append_resp::success::CurrentRevisionOption::NoStream(()),
                }),
                position_option: Some(match position {
                    Some(p) => {
                        append_resp::success::PositionOption::Position(append_resp::Position {
                            commit_position: p,
                            prepare_position: p,
                        })
                    }
                    None => append_resp::success::PositionOption::NoPosition(()),
                }),
            })
        }
        WriteOutcome::WrongExpected { current, expected } => {
            append_resp::Result::WrongExpectedVersion(append_resp::WrongExpectedVersion {
                current_revision_option_20_6_0: Some(match current {
                    Some(r) => wev::CurrentRevisionOption2060::CurrentRevision2060(r),
                    None => wev::CurrentRevisionOption2060::NoStream2060(()),
                }),
                expected_revision_option_20_6_0: Some(match expected {
                    Expected::Exact(r) => wev::ExpectedRevisionOption2060::ExpectedRevision2060(r),
                    Expected::StreamExists => wev::ExpectedRevisionOption2060::StreamExists2060(()),
                    Expected::Any => wev::ExpectedRevisionOption2060::Any2060(()),
                    // The real server's encoding of "no stream" in the old fields.
                    Expected::NoStream => {
                        wev::ExpectedRevisionOption2060::ExpectedRevision2060(u64::MAX)
                    }
                }),
                current_revision_option: Some(match current {
                    Some(r) => wev::CurrentRevisionOption::CurrentRevision(r),
                    None => wev::CurrentRevisionOption::CurrentNoStream(()),
                }),
                expected_revision_option: Some(match expected {
                    Expected::Exact(r) => wev::ExpectedRevisionOption::ExpectedRevision(r),
                    Expected::Any => wev::ExpectedRevisionOption::ExpectedAny(()),
                    Expected::StreamExists => wev::ExpectedRevisionOption::ExpectedStreamExists(()),
                    Expected::NoStream => wev::ExpectedRevisionOption::ExpectedNoStream(()),
                }),
            })
        }
        WriteOutcome::StreamDeleted => return Err(stream_deleted(stream)),
    };
    Ok(AppendResp {
        result: Some(result),
    })
}

/// Delete and tombstone replies share a shape; this is the part they have in common.
pub(super) fn deletion_position(
    outcome: WriteOutcome,
    stream: &str,
) -> Result<Option<u64>, Status> {
    match outcome {
        WriteOutcome::Success { position, .. } => Ok(position),
        WriteOutcome::WrongExpected { current, expected } => {
            Err(wrong_expected_status("Delete", stream, current, expected))
        }
        WriteOutcome::StreamDeleted => Err(stream_deleted(stream)),
    }
}
