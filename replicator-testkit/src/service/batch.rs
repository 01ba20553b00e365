//! Batch appends: one call carries many batches, each answered when its
//! last request arrives.

use std::collections::HashMap;

use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};
use uuid::Uuid;

use super::append::append_size;
use super::convert::{identifier, proposed, stream_name, uuid_from_wire};
use super::status::{batch_error, injected_unavailable, shutting_down};
use super::streams::{unpaused, StreamsService};
use crate::proto::shared;
use crate::proto::streams::{batch_append_req, batch_append_resp, BatchAppendReq, BatchAppendResp};
use crate::security::{self, Access, Principal};
use crate::store::{Expected, Proposed, WriteOutcome};

/// One batch-append call in [`crate::faults::FaultState`]'s count, until
/// dropped.
pub(super) struct CallCount(pub(super) tokio::sync::watch::Sender<usize>);

impl Drop for CallCount {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

pub(super) struct PendingBatch {
    wire_id: shared::Uuid,
    stream: String,
    expected: Expected,
    wire_expected: Option<batch_append_resp::ExpectedStreamPosition>,
    events: Vec<Proposed>,
    /// The events' total [`append_size`].
    size: usize,
}

impl StreamsService {
    /// Takes one batch-append request; answers when its batch is final.
    pub(super) async fn batch_step(
        &self,
        pending: &mut HashMap<Uuid, PendingBatch>,
        request: BatchAppendReq,
        principal: &Principal,
        token: &CancellationToken,
    ) -> Result<Option<BatchAppendResp>, Status> {
        use batch_append_req::options::ExpectedStreamPosition as E;
        use batch_append_resp::ExpectedStreamPosition as R;
        let wire_id = request
            .correlation_id
            .ok_or_else(|| Status::invalid_argument("batch append without correlation id"))?;
        let id = uuid_from_wire(Some(wire_id.clone()))?;
        let batch = match pending.entry(id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Like the real server, requests of a batch that is not pending
                // (never opened, or already rejected as too large) are ignored.
                let Some(options) = request.options else {
                    return Ok(None);
                };
                let stream = stream_name(options.stream_identifier.clone())?;
                if !security::allowed(principal, &stream, Access::Write) {
                    // Answered at once; the batch is not opened, so the rest of
                    // its requests are ignored.
                    return Ok(Some(BatchAppendResp {
                        correlation_id: Some(wire_id),
                        result: Some(batch_error(
                            Code::PermissionDenied,
                            "AccessDenied",
                            &shared::AccessDenied {},
                        )),
                        stream_identifier: Some(identifier(&stream)),
                        expected_stream_position: None,
                    }));
                }
                if deadline_passed(options.deadline_option.as_ref()) {
                    // The real server answers a batch whose deadline is already
                    // over with `Timeout` at once, and opens nothing.
                    return Ok(Some(BatchAppendResp {
                        correlation_id: Some(wire_id),
                        result: Some(batch_error(
                            Code::DeadlineExceeded,
                            "Timeout",
                            &shared::Timeout {},
                        )),
                        stream_identifier: Some(identifier(&stream)),
                        expected_stream_position: None,
                    }));
                }
                let (expected, wire_expected) = match options.expected_stream_position {
                    Some(E::StreamPosition(r)) => (Expected::Exact(r), R::StreamPosition(r)),
                    Some(E::NoStream(())) => (Expected::NoStream, R::NoStream(())),
                    Some(E::StreamExists(())) => (Expected::StreamExists, R::StreamExists(())),
                    Some(E::Any(())) | None => (Expected::Any, R::Any(())),
                };
                entry.insert(PendingBatch {
                    wire_id,
                    stream: stream_name(options.stream_identifier)?,
                    expected,
                    wire_expected: Some(wire_expected),
                    events: Vec::new(),
                    size: 0,
                })
            }
        };
        for m in request.proposed_messages {
            let event = proposed(m.id, m.metadata, m.custom_metadata, m.data)?;
            batch.size += append_size(&event);
            batch.events.push(event);
        }
        let max_append_size = self.max_append_size();
        if batch.size > max_append_size {
            // Answered at once, and the rest of the batch is ignored.
            let batch = pending
                .remove(&id)
                .ok_or_else(|| Status::internal("batch vanished"))?;
            let detail = shared::MaximumAppendSizeExceeded {
                max_append_size: u32::try_from(max_append_size).unwrap_or(u32::MAX),
            };
            return Ok(Some(BatchAppendResp {
                correlation_id: Some(batch.wire_id),
                result: Some(batch_error(
                    Code::InvalidArgument,
                    "MaximumAppendSizeExceeded",
                    &detail,
                )),
                stream_identifier: Some(identifier(&batch.stream)),
                expected_stream_position: batch.wire_expected,
            }));
        }
        if !request.is_final {
            return Ok(None);
        }
        let batch = pending
            .remove(&id)
            .ok_or_else(|| Status::internal("batch vanished"))?;
        // The append latency is applied to the reply (see `batch_append`).
        if !unpaused(&self.shared, token).await
            || !self
                .shared
                .faults
                .pass_gate(batch.events.len(), token)
                .await
        {
            return Err(shutting_down());
        }
        if self.shared.faults.take_append_failure() {
            // The whole call ends, as when a server names another leader or
            // the connection is cut. (A real server can also refuse one
            // request as not ready during a leader change and write the
            // ones after it; this fault is not that.)
            return Err(injected_unavailable());
        }
        let stream = batch.stream.clone();
        let outcome = self
            .shared
            .write(|store| store.append(&stream, batch.expected, batch.events));
        let result = batch_result(outcome, &batch.stream);
        Ok(Some(BatchAppendResp {
            correlation_id: Some(batch.wire_id),
            result: Some(result),
            stream_identifier: Some(identifier(&batch.stream)),
            expected_stream_position: batch.wire_expected,
        }))
    }
}

/// Whether a batch's deadline (a duration from now, or the older absolute
/// timestamp) is already over. Batches here are answered as soon as they are
/// final, so a deadline that is still ahead never expires.
fn deadline_passed(deadline: Option<&batch_append_req::options::DeadlineOption>) -> bool {
    use batch_append_req::options::DeadlineOption;
    match deadline {
        Some(DeadlineOption::Deadline(duration)) => {
            duration.seconds < 0 || (duration.seconds == 0 && duration.nanos <= 0)
        }
        Some(DeadlineOption::Deadline21100(at)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let now_seconds = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
            (at.seconds, at.nanos) <= (now_seconds, i32::try_from(now.subsec_nanos()).unwrap_or(0))
        }
        None => false,
    }
}

fn batch_result(outcome: WriteOutcome, stream: &str) -> batch_append_resp::Result {
    use batch_append_resp::success::{CurrentRevisionOption, PositionOption};
    match outcome {
        WriteOutcome::Success { current, position } => {
            batch_append_resp::Result::Success(batch_append_resp::Success {
                current_revision_option: Some(match current {
                    Some(r) => CurrentRevisionOption::CurrentRevision(r),
                    None => CurrentRevisionOption::NoStream(()),
                }),
                position_option: Some(match position {
                    Some(p) => PositionOption::Position(shared::AllStreamPosition {
                        commit_position: p,
                        prepare_position: p,
                    }),
                    None => PositionOption::NoPosition(()),
                }),
            })
        }
        WriteOutcome::WrongExpected { current, expected } => {
            use shared::wrong_expected_version::{
                CurrentStreamRevisionOption as C, ExpectedStreamPositionOption as E,
            };
            let detail = shared::WrongExpectedVersion {
                current_stream_revision_option: Some(match current {
                    Some(r) => C::CurrentStreamRevision(r),
                    None => C::CurrentNoStream(()),
                }),
                expected_stream_position_option: Some(match expected {
                    Expected::Exact(r) => E::ExpectedStreamPosition(r),
                    Expected::Any => E::ExpectedAny(()),
                    Expected::StreamExists => E::ExpectedStreamExists(()),
                    Expected::NoStream => E::ExpectedNoStream(()),
                }),
            };
            batch_error(Code::AlreadyExists, "WrongExpectedVersion", &detail)
        }
        WriteOutcome::StreamDeleted => batch_error(
            Code::NotFound,
            "StreamDeleted",
            &shared::StreamDeleted {
                stream_identifier: Some(identifier(stream)),
            },
        ),
    }
}
