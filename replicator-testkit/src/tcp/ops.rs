//! The requests of the TCP service that touch the store: writes, deletes, reads
//! and subscriptions, each answered as the v5 server answers it (sources in
//! docs/tcp-protocol.md, named at each rule).

use std::fmt::Display;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::frame::{command, Frame};
use crate::gossip::Role;
use crate::proto::tcp::{
    not_handled::{MasterInfo, NotHandledReason},
    read_all_events_completed::ReadAllResult,
    read_event_completed::ReadEventResult,
    read_stream_events_completed::ReadStreamResult,
    subscription_dropped::SubscriptionDropReason,
    DeleteStream, DeleteStreamCompleted, EventRecord, NewEvent, NotHandled, OperationResult,
    ReadAllEvents, ReadAllEventsCompleted, ReadEvent, ReadEventCompleted, ReadStreamEvents,
    ReadStreamEventsCompleted, ResolvedEvent, ResolvedIndexedEvent, StreamEventAppeared,
    SubscribeToStream, SubscriptionConfirmation, SubscriptionDropped, TransactionCommit,
    TransactionCommitCompleted, TransactionStart, TransactionStartCompleted, TransactionWrite,
    TransactionWriteCompleted, WriteEvents, WriteEventsCompleted,
};
use crate::security::{self, Access, Principal};
use crate::shared::Shared;
use crate::store::{
    Expected, Proposed, ReadFailure, Record, Store, TransactionOutcome, WriteOutcome, BINARY, JSON,
};

/// v5's `EventNumber.Invalid` (`int.MinValue`): the event numbers of a failed write.
const INVALID_EVENT_NUMBER: i64 = i32::MIN as i64;
/// v5's `EventNumber.DeletedStream`: the last event number of a tombstoned stream.
const DELETED_STREAM: i64 = i64::MAX;
/// v5's `MaxPageSize` of reads.
const MAX_PAGE: i32 = 4096;
/// .NET ticks from 0001-01-01 to the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;
/// `DateTimeKind.Utc` as `DateTime.ToBinary()` marks it.
const KIND_UTC: i64 = 1 << 62;
/// Log records a subscription takes from the store per lock.
const CHUNK: usize = 256;

/// The answer to a request whose body cannot be decoded (or a command this
/// server does not handle): BadRequest with the request's correlation id; the
/// connection stays open (ES5 `ClientTcpDispatcher`).
pub(super) fn unwrap_failed(request: &Frame, error: impl Display) -> Frame {
    Frame::reply(
        request,
        command::BAD_REQUEST,
        format!(
            "Could not unwrap network package for command {}.\n{error}",
            command::name(request.command)
        ),
    )
}

/// A follower's answer to a request with `require_master = true` (ES5
/// `ClusterVNodeController.HandleAsNonMaster`): NotMaster naming the leader;
/// with no leader known, NotReady for reads and NotMaster naming this node
/// for writes (`_master ?? _nodeInfo`). `None`: the request is served (a
/// leader, no `require_master`, a subscription, a body that does not decode).
pub(super) fn not_handled(shared: &Shared, request: &Frame) -> Option<Frame> {
    let leader = match &shared.view().role {
        Role::Leader => return None,
        Role::Follower { leader } => leader.clone(),
    };
    let body = request.body.clone();
    let (require_master, write) = match request.command {
        command::READ_EVENT => (ReadEvent::decode(body).ok()?.require_master, false),
        command::READ_STREAM_FORWARD | command::READ_STREAM_BACKWARD => {
            (ReadStreamEvents::decode(body).ok()?.require_master, false)
        }
        command::READ_ALL_FORWARD | command::READ_ALL_BACKWARD => {
            (ReadAllEvents::decode(body).ok()?.require_master, false)
        }
        command::WRITE_EVENTS => (WriteEvents::decode(body).ok()?.require_master, true),
        command::DELETE_STREAM => (DeleteStream::decode(body).ok()?.require_master, true),
        command::TRANSACTION_START => (TransactionStart::decode(body).ok()?.require_master, true),
        command::TRANSACTION_WRITE => (TransactionWrite::decode(body).ok()?.require_master, true),
        command::TRANSACTION_COMMIT => (TransactionCommit::decode(body).ok()?.require_master, true),
        _ => return None,
    };
    if !require_master {
        return None;
    }
    let master = match leader {
        Some(leader) => leader,
        None if write => shared.own_member(),
        None => {
            return Some(reply(
                request,
                command::NOT_HANDLED,
                &NotHandled {
                    reason: NotHandledReason::NotReady as i32,
                    additional_info: None,
                },
            ))
        }
    };
    let info = MasterInfo {
        external_tcp_address: master.tcp.ip().to_string(),
        external_tcp_port: i32::from(master.tcp.port()),
        external_http_address: master.http.ip().to_string(),
        external_http_port: i32::from(master.http.port()),
        external_secure_tcp_address: master.secure_tcp.map(|s| s.ip().to_string()),
        external_secure_tcp_port: master.secure_tcp.map(|s| i32::from(s.port())),
    };
    Some(reply(
        request,
        command::NOT_HANDLED,
        &NotHandled {
            reason: NotHandledReason::NotMaster as i32,
            additional_info: Some(info.encode_to_vec().into()),
        },
    ))
}

fn reply(request: &Frame, command: u8, message: &impl Message) -> Frame {
    Frame::reply(request, command, message.encode_to_vec())
}

fn number(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX)
}

fn position(position: u64) -> i64 {
    i64::try_from(position).unwrap_or(i64::MAX)
}

/// The v5 expected version of `request`: -2 any, -1 no stream, -4 stream
/// exists, else exact; any other negative number is the request's BadRequest.
fn expected(request: &Frame, version: i64) -> Result<Expected, Frame> {
    match version {
        -2 => Ok(Expected::Any),
        -1 => Ok(Expected::NoStream),
        -4 => Ok(Expected::StreamExists),
        n => u64::try_from(n)
            .map(Expected::Exact)
            .map_err(|_| unwrap_failed(request, format!("invalid expected version {n}"))),
    }
}

/// A stored record as v5 sends it (ES5 `TcpClientMessageDtoExtensions`): both
/// content types 1 for JSON, `created` as .NET `DateTime.ToBinary()` (UTC),
/// `created_epoch` in milliseconds, the id in .NET GUID byte order.
pub(super) fn event_record(record: &Record) -> EventRecord {
    let json = i32::from(&*record.content_type == JSON);
    EventRecord {
        event_stream_id: record.stream.to_string(),
        event_number: number(record.revision),
        event_id: Bytes::copy_from_slice(&record.id.to_bytes_le()),
        event_type: record.event_type.to_string(),
        data_content_type: json,
        metadata_content_type: json,
        data: record.data.clone(),
        metadata: Some(record.custom_metadata.clone()),
        created: Some((record.created_ticks + UNIX_EPOCH_TICKS) | KIND_UTC),
        created_epoch: Some(record.created_ticks / 10_000),
    }
}

/// `record`, and with `resolve` set a link (`$>`) becomes its target plus the link.
fn resolved(
    store: &Store,
    record: &Record,
    resolve: bool,
) -> (Option<EventRecord>, Option<EventRecord>) {
    if resolve && record.is_link() {
        (
            store.resolve_link(record).as_ref().map(event_record),
            Some(event_record(record)),
        )
    } else {
        (Some(event_record(record)), None)
    }
}

fn resolved_event(store: &Store, record: &Record, resolve: bool) -> ResolvedEvent {
    let (event, link) = resolved(store, record, resolve);
    ResolvedEvent {
        event,
        link,
        // Equal for an ordinary write ("commit-alike"); a transaction's events
        // carry the commit record's position and their own.
        commit_position: position(record.commit_position),
        prepare_position: position(record.prepare_position),
    }
}

/// The commit position of the last record in the log (v5's `LastCommitPosition`),
/// -1 when the log is empty.
fn last_commit_position(store: &Store) -> i64 {
    store
        .len()
        .checked_sub(1)
        .and_then(|last| store.log_slice(last, 1).pop())
        .map_or(-1, |r| position(r.commit_position))
}

async fn delay(latency: std::time::Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

/// The events of a write as the store takes them; ids arrive in .NET order.
fn proposed(events: Vec<NewEvent>) -> Result<Vec<Proposed>, &'static str> {
    events
        .into_iter()
        .map(|event| {
            let Ok(id) = <[u8; 16]>::try_from(&event.event_id[..]) else {
                return Err("an event id is not 16 bytes");
            };
            Ok(Proposed {
                id: Uuid::from_bytes_le(id),
                event_type: event.event_type,
                content_type: if event.data_content_type == 1 {
                    JSON
                } else {
                    BINARY
                }
                .to_owned(),
                data: event.data,
                custom_metadata: event.metadata.unwrap_or_default(),
            })
        })
        .collect()
}

/// WriteEvents → WriteEventsCompleted.
pub(super) async fn write_events(shared: &Shared, principal: &Principal, request: &Frame) -> Frame {
    let dto = match WriteEvents::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let expected = match expected(request, dto.expected_version) {
        Ok(expected) => expected,
        Err(bad_request) => return bad_request,
    };
    let failed =
        |result: OperationResult, message: &str, current: Option<i64>| WriteEventsCompleted {
            result: result as i32,
            message: Some(message.to_owned()),
            first_event_number: INVALID_EVENT_NUMBER,
            last_event_number: INVALID_EVENT_NUMBER,
            prepare_position: None,
            commit_position: None,
            current_version: current,
        };
    let done = |completed: WriteEventsCompleted| {
        reply(request, command::WRITE_EVENTS_COMPLETED, &completed)
    };
    let stream = dto.event_stream_id;
    if !security::allowed(principal, &stream, Access::Write) {
        return done(failed(
            OperationResult::AccessDenied,
            "Access denied.",
            None,
        ));
    }
    let events = match proposed(dto.events) {
        Ok(events) => events,
        Err(error) => return unwrap_failed(request, error),
    };
    let count = events.len() as i64;
    delay(shared.options.append_latency).await;
    let outcome = shared.write(|store| store.append(&stream, expected, events));
    done(match outcome {
        WriteOutcome::Success {
            current,
            position: at,
        } => {
            let last = current.map_or(-1, number);
            // Nothing written (no events): -1, as v5 answers an idempotent repeat.
            let at = at.map_or(-1, position);
            WriteEventsCompleted {
                result: OperationResult::Success as i32,
                message: None,
                first_event_number: last - count + 1,
                last_event_number: last,
                prepare_position: Some(at),
                commit_position: Some(at),
                current_version: None,
            }
        }
        WriteOutcome::WrongExpected { current, .. } => failed(
            OperationResult::WrongExpectedVersion,
            "Wrong expected version.",
            Some(current.map_or(-1, number)),
        ),
        WriteOutcome::StreamDeleted => {
            failed(OperationResult::StreamDeleted, "Stream deleted.", None)
        }
    })
}

/// TransactionStart → TransactionStartCompleted: Success with the transaction
/// id (the position of its TransactionBegin record, as v5's), or AccessDenied.
/// Access is checked here, for the stream the transaction writes to: the later
/// requests name only the id. The expected version is checked at the commit.
pub(super) async fn transaction_start(
    shared: &Shared,
    principal: &Principal,
    request: &Frame,
) -> Frame {
    let dto = match TransactionStart::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let expected = match expected(request, dto.expected_version) {
        Ok(expected) => expected,
        Err(bad_request) => return bad_request,
    };
    let stream = dto.event_stream_id;
    let completed = if security::allowed(principal, &stream, Access::Write) {
        delay(shared.options.append_latency).await;
        let id = shared.write(|store| store.start_transaction(&stream, expected));
        TransactionStartCompleted {
            transaction_id: position(id),
            result: OperationResult::Success as i32,
            message: None,
        }
    } else {
        TransactionStartCompleted {
            transaction_id: -1,
            result: OperationResult::AccessDenied as i32,
            message: Some("Access denied.".to_owned()),
        }
    };
    reply(request, command::TRANSACTION_START_COMPLETED, &completed)
}

/// A transaction id as the store keys it; a negative one names no transaction.
fn transaction_id(id: i64) -> Option<u64> {
    u64::try_from(id).ok()
}

/// TransactionWrite → TransactionWriteCompleted: Success, or InvalidTransaction
/// for an id that is not a pending transaction. The events stay invisible until
/// the commit.
pub(super) async fn transaction_write(shared: &Shared, request: &Frame) -> Frame {
    let dto = match TransactionWrite::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let events = match proposed(dto.events) {
        Ok(events) => events,
        Err(error) => return unwrap_failed(request, error),
    };
    delay(shared.options.append_latency).await;
    let known = transaction_id(dto.transaction_id)
        .is_some_and(|id| shared.write(|store| store.write_transaction(id, events)));
    let completed = TransactionWriteCompleted {
        transaction_id: dto.transaction_id,
        result: if known {
            OperationResult::Success
        } else {
            OperationResult::InvalidTransaction
        } as i32,
        message: (!known).then(|| "Invalid transaction.".to_owned()),
    };
    reply(request, command::TRANSACTION_WRITE_COMPLETED, &completed)
}

/// TransactionCommit → TransactionCommitCompleted: Success with first/last event
/// numbers and prepare = commit = the commit record's position (docs/tcp-protocol.md
/// §4.4); WrongExpectedVersion (checked now, against the stream as it is);
/// StreamDeleted; InvalidTransaction for an id that is not a pending transaction.
pub(super) async fn transaction_commit(shared: &Shared, request: &Frame) -> Frame {
    let dto = match TransactionCommit::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let failed = |result: OperationResult, message: &str| TransactionCommitCompleted {
        transaction_id: dto.transaction_id,
        result: result as i32,
        message: Some(message.to_owned()),
        first_event_number: INVALID_EVENT_NUMBER,
        last_event_number: INVALID_EVENT_NUMBER,
        prepare_position: None,
        commit_position: None,
    };
    delay(shared.options.append_latency).await;
    let outcome = match transaction_id(dto.transaction_id) {
        Some(id) => shared.write(|store| {
            let count = store.pending_events(id);
            (store.commit_transaction(id), count)
        }),
        None => (TransactionOutcome::Unknown, 0),
    };
    let completed = match outcome {
        (TransactionOutcome::Unknown, _) => {
            failed(OperationResult::InvalidTransaction, "Invalid transaction.")
        }
        (
            TransactionOutcome::Done(WriteOutcome::Success {
                current,
                position: at,
            }),
            count,
        ) => {
            let last = current.map_or(-1, number);
            let at = at.map_or(-1, position);
            TransactionCommitCompleted {
                transaction_id: dto.transaction_id,
                result: OperationResult::Success as i32,
                message: None,
                first_event_number: last - count as i64 + 1,
                last_event_number: last,
                prepare_position: Some(at),
                commit_position: Some(at),
            }
        }
        (TransactionOutcome::Done(WriteOutcome::WrongExpected { .. }), _) => failed(
            OperationResult::WrongExpectedVersion,
            "Wrong expected version.",
        ),
        (TransactionOutcome::Done(WriteOutcome::StreamDeleted), _) => {
            failed(OperationResult::StreamDeleted, "Stream deleted.")
        }
    };
    reply(request, command::TRANSACTION_COMMIT_COMPLETED, &completed)
}

/// DeleteStream → DeleteStreamCompleted: a soft delete, or with `hard_delete` a
/// tombstone.
pub(super) async fn delete_stream(
    shared: &Shared,
    principal: &Principal,
    request: &Frame,
) -> Frame {
    let dto = match DeleteStream::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let expected = match expected(request, dto.expected_version) {
        Ok(expected) => expected,
        Err(bad_request) => return bad_request,
    };
    let failed = |result: OperationResult, message: &str| DeleteStreamCompleted {
        result: result as i32,
        message: Some(message.to_owned()),
        prepare_position: None,
        commit_position: None,
    };
    let stream = dto.event_stream_id;
    let completed = if security::allowed(principal, &stream, Access::Write) {
        delay(shared.options.append_latency).await;
        let hard = dto.hard_delete.unwrap_or(false);
        let outcome = shared.write(|store| {
            if hard {
                store.tombstone(&stream, expected)
            } else {
                store.soft_delete(&stream, expected)
            }
        });
        match outcome {
            WriteOutcome::Success { position: at, .. } => {
                let at = at.map_or(-1, position);
                DeleteStreamCompleted {
                    result: OperationResult::Success as i32,
                    message: None,
                    prepare_position: Some(at),
                    commit_position: Some(at),
                }
            }
            WriteOutcome::WrongExpected { .. } => failed(
                OperationResult::WrongExpectedVersion,
                "Wrong expected version.",
            ),
            WriteOutcome::StreamDeleted => {
                failed(OperationResult::StreamDeleted, "Stream deleted.")
            }
        }
    } else {
        failed(OperationResult::AccessDenied, "Access denied.")
    };
    reply(request, command::DELETE_STREAM_COMPLETED, &completed)
}

/// ReadEvent → ReadEventCompleted; event number -1 is the stream's last event.
pub(super) async fn read_event(shared: &Shared, principal: &Principal, request: &Frame) -> Frame {
    let dto = match ReadEvent::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let completed =
        |result: ReadEventResult, found: Option<(Option<EventRecord>, Option<EventRecord>)>| {
            let (event, link) = found.unwrap_or_default();
            ReadEventCompleted {
                result: result as i32,
                event: ResolvedIndexedEvent { event, link },
                error: None,
            }
        };
    let stream = dto.event_stream_id;
    let answer = if security::allowed(principal, &stream, Access::Read) {
        delay(shared.options.read_latency).await;
        shared.read(|store| match store.readable(&stream) {
            Err(ReadFailure::Deleted) => completed(ReadEventResult::StreamDeleted, None),
            Err(ReadFailure::NotFound) => completed(ReadEventResult::NoStream, None),
            Ok(range) => {
                let wanted = if dto.event_number == -1 {
                    Some(range.end - 1)
                } else {
                    u64::try_from(dto.event_number).ok()
                };
                match wanted
                    .filter(|n| range.contains(n))
                    .and_then(|n| store.stream_records(&stream, n..n + 1).pop())
                {
                    Some(record) => completed(
                        ReadEventResult::Success,
                        Some(resolved(store, &record, dto.resolve_link_tos)),
                    ),
                    None => completed(ReadEventResult::NotFound, None),
                }
            }
        })
    } else {
        completed(ReadEventResult::AccessDenied, None)
    };
    reply(request, command::READ_EVENT_COMPLETED, &answer)
}

/// ReadStreamEventsForward/Backward → …Completed, paged as v5's `IndexReader`
/// (docs/tcp-protocol.md §4.3a).
pub(super) async fn read_stream(
    shared: &Shared,
    principal: &Principal,
    request: &Frame,
    forward: bool,
) -> Frame {
    let dto = match ReadStreamEvents::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let answer_command = if forward {
        command::READ_STREAM_FORWARD_COMPLETED
    } else {
        command::READ_STREAM_BACKWARD_COMPLETED
    };
    let stream = dto.event_stream_id.clone();
    let completed = if !security::allowed(principal, &stream, Access::Read) {
        stream_failure(ReadStreamResult::AccessDenied, -1, -1, None)
    } else if dto.max_count > MAX_PAGE {
        let error = format!("Read size too big, should be less than {MAX_PAGE} items");
        stream_failure(ReadStreamResult::Error, -1, -1, Some(error))
    } else if dto.max_count <= 0 || (forward && dto.from_event_number < 0) {
        let error = "maxCount must be positive and a forward read's start non-negative";
        stream_failure(ReadStreamResult::Error, -1, -1, Some(error.to_owned()))
    } else {
        delay(shared.options.read_latency).await;
        shared.read(|store| page_stream(store, &dto, forward))
    };
    reply(request, answer_command, &completed)
}

fn stream_failure(
    result: ReadStreamResult,
    last_event_number: i64,
    last_commit_position: i64,
    error: Option<String>,
) -> ReadStreamEventsCompleted {
    ReadStreamEventsCompleted {
        events: Vec::new(),
        result: result as i32,
        next_event_number: -1,
        last_event_number,
        is_end_of_stream: true,
        last_commit_position,
        error,
    }
}

fn page_stream(store: &Store, dto: &ReadStreamEvents, forward: bool) -> ReadStreamEventsCompleted {
    let stream = dto.event_stream_id.as_str();
    let last_commit = last_commit_position(store);
    let range = match store.readable(stream) {
        Ok(range) => range,
        Err(ReadFailure::Deleted) => {
            return stream_failure(
                ReadStreamResult::StreamDeleted,
                DELETED_STREAM,
                last_commit,
                None,
            )
        }
        Err(ReadFailure::NotFound) => {
            let last = store.last_revision(stream).map_or(-1, number);
            return stream_failure(ReadStreamResult::NoStream, last, last_commit, None);
        }
    };
    let (min, last) = (number(range.start), number(range.end - 1));
    let max = i64::from(dto.max_count);
    let from = dto.from_event_number;
    let page = |events: Vec<Record>, next: i64, is_end: bool| ReadStreamEventsCompleted {
        events: events
            .iter()
            .map(|record| {
                let (event, link) = resolved(store, record, dto.resolve_link_tos);
                ResolvedIndexedEvent { event, link }
            })
            .collect(),
        result: ReadStreamResult::Success as i32,
        next_event_number: next,
        last_event_number: last,
        is_end_of_stream: is_end,
        last_commit_position: last_commit,
        error: None,
    };
    let records = |start: i64, end: i64| {
        let (start, end) = (start.max(0) as u64, end.min(last).max(-1) + 1);
        store.stream_records(stream, start..(end.max(0) as u64).max(start))
    };
    if forward {
        let end = from.saturating_add(max - 1);
        if end < min {
            return page(Vec::new(), min, false);
        }
        let start = from.max(min);
        if start > last {
            return page(Vec::new(), last + 1, true);
        }
        let events = records(start, end);
        let next = events
            .last()
            .map_or((end + 1).min(last + 1), |r| number(r.revision) + 1);
        page(events, next, end >= last)
    } else {
        let end = if from < 0 { last } else { from };
        let mut start = (end - max + 1).max(0);
        if end < min {
            return page(Vec::new(), -1, true);
        }
        let mut is_end = false;
        if start <= min {
            is_end = true;
            start = min;
        }
        let mut events = records(start, end);
        events.reverse();
        is_end = is_end
            || start == 0
            || (start <= last && events.last().is_none_or(|r| number(r.revision) != start));
        let next = if is_end { -1 } else { (start - 1).min(last) };
        page(events, next, is_end)
    }
}

/// ReadAllEventsForward/Backward → …Completed, paged as v5's `AllReader`
/// (docs/tcp-protocol.md §4.3).
pub(super) async fn read_all(
    shared: &Shared,
    principal: &Principal,
    request: &Frame,
    forward: bool,
) -> Frame {
    let dto = match ReadAllEvents::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => return unwrap_failed(request, error),
    };
    let answer_command = if forward {
        command::READ_ALL_FORWARD_COMPLETED
    } else {
        command::READ_ALL_BACKWARD_COMPLETED
    };
    let failure = |commit: i64, prepare: i64, result: ReadAllResult, error: Option<&str>| {
        ReadAllEventsCompleted {
            commit_position: commit,
            prepare_position: prepare,
            events: Vec::new(),
            next_commit_position: -1,
            next_prepare_position: -1,
            result: Some(result as i32),
            error: error.map(str::to_owned),
        }
    };
    let (c, p) = (dto.commit_position, dto.prepare_position);
    let completed = if !security::allowed(principal, "$all", Access::Read) {
        failure(c, p, ReadAllResult::AccessDenied, None)
    } else if dto.max_count > MAX_PAGE {
        let error = format!("Read size too big, should be less than {MAX_PAGE} items");
        failure(c, p, ReadAllResult::Error, Some(&error))
    } else if dto.max_count <= 0 {
        failure(
            c,
            p,
            ReadAllResult::Error,
            Some("maxCount must be positive"),
        )
    } else if (c, p) != (-1, -1) && (c < 0 || p < 0) {
        failure(c, p, ReadAllResult::Error, Some("Invalid position."))
    } else {
        delay(shared.options.read_latency).await;
        shared.read(|store| page_all(store, &dto, forward))
    };
    reply(request, answer_command, &completed)
}

fn page_all(store: &Store, dto: &ReadAllEvents, forward: bool) -> ReadAllEventsCompleted {
    // (-1, -1) is the head: the writer checkpoint (a forward read there is empty).
    let (c, p) = if (dto.commit_position, dto.prepare_position) == (-1, -1) {
        let head = position(store.end_position());
        (head, head)
    } else {
        (dto.commit_position, dto.prepare_position)
    };
    let max = usize::try_from(dto.max_count).unwrap_or(0);
    let (cu, pu) = (c as u64, p as u64);
    let (records, next) = if forward {
        // Inclusive: (commit, prepare) >= (c, p).
        let first = store.index_at_or_after(cu, pu);
        let records = store.log_slice(first, max);
        // After a commit-alike record at P: (its end, 0); after a transaction's
        // record: (its commit, its end), so the rest of the transaction follows.
        let next = records.last().map(|r| {
            if r.in_transaction() {
                (position(r.commit_position), position(r.prepare_end))
            } else {
                (position(r.prepare_end), 0)
            }
        });
        (records, next)
    } else {
        // Records whose (commit end, prepare end) <= (c, p), newest first.
        let top = store.index_ending_after(cu, pu);
        let from = top.saturating_sub(max);
        let mut records = store.log_slice(from, top - from);
        records.reverse();
        // Before the oldest record returned: (P, P) for a commit-alike one, (its
        // commit end, its own position) for a transaction's.
        let next = records.last().map(|r| {
            if r.in_transaction() {
                (position(r.commit_end), position(r.prepare_position))
            } else {
                (position(r.prepare_position), position(r.prepare_position))
            }
        });
        (records, next)
    };
    let (next_commit, next_prepare) = next.unwrap_or((c, p));
    ReadAllEventsCompleted {
        commit_position: c,
        prepare_position: p,
        events: records
            .iter()
            .map(|record| resolved_event(store, record, dto.resolve_link_tos))
            .collect(),
        next_commit_position: next_commit,
        next_prepare_position: next_prepare,
        result: Some(ReadAllResult::Success as i32),
        error: None,
    }
}

/// SubscribeToStream: the confirmation (or SubscriptionDropped(AccessDenied)) is
/// sent before this returns, so a write the same connection sends next is live
/// for the subscription; the live events follow from a task of their own until
/// `token` is cancelled (Unsubscribe: SubscriptionDropped(Unsubscribed)) or the
/// connection goes.
pub(super) async fn subscribe(
    shared: &Arc<Shared>,
    principal: &Principal,
    request: &Frame,
    out: &mpsc::Sender<Frame>,
    token: CancellationToken,
) {
    let dto = match SubscribeToStream::decode(request.body.clone()) {
        Ok(dto) => dto,
        Err(error) => {
            let _ = out.send(unwrap_failed(request, error)).await;
            return;
        }
    };
    // "" (or absent, from a proto3 client) is `$all`.
    let stream = (!dto.event_stream_id.is_empty()).then_some(dto.event_stream_id);
    let target = stream.as_deref().unwrap_or("$all");
    if !security::allowed(principal, target, Access::Read) {
        let dropped = SubscriptionDropped {
            reason: Some(SubscriptionDropReason::AccessDenied as i32),
        };
        let _ = out
            .send(reply(request, command::SUBSCRIPTION_DROPPED, &dropped))
            .await;
        return;
    }
    let (confirmation, mut cursor) = shared.read(|store| {
        let confirmation = SubscriptionConfirmation {
            last_commit_position: last_commit_position(store),
            last_event_number: stream
                .as_deref()
                .map(|s| store.last_revision(s).map_or(-1, number)),
        };
        (confirmation, store.len())
    });
    if out
        .send(reply(
            request,
            command::SUBSCRIPTION_CONFIRMATION,
            &confirmation,
        ))
        .await
        .is_err()
    {
        return;
    }
    let (shared, out, request) = (Arc::clone(shared), out.clone(), request.clone());
    let resolve = dto.resolve_link_tos;
    tokio::spawn(async move {
        let dropped = SubscriptionDropped {
            reason: Some(SubscriptionDropReason::Unsubscribed as i32),
        };
        let dropped = reply(&request, command::SUBSCRIPTION_DROPPED, &dropped);
        let mut appended = shared.appended.subscribe();
        loop {
            if token.is_cancelled() {
                let _ = out.send(dropped).await;
                return;
            }
            appended.borrow_and_update();
            let events: Vec<ResolvedEvent> = shared.read(|store| {
                let records = store.log_slice(cursor, CHUNK);
                cursor += records.len();
                records
                    .iter()
                    .filter(|r| stream.as_deref().is_none_or(|s| *r.stream == *s))
                    .map(|r| resolved_event(store, r, resolve))
                    .collect()
            });
            let caught_up = events.is_empty();
            for event in events {
                let appeared = StreamEventAppeared { event };
                if out
                    .send(reply(&request, command::STREAM_EVENT_APPEARED, &appeared))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if caught_up {
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = token.cancelled() => {
                        let _ = out.send(dropped).await;
                        return;
                    }
                }
            }
        }
    });
}
