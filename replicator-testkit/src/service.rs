//! The gRPC services: Streams (read, subscribe, append, batch append, delete,
//! tombstone), ServerFeatures and Gossip, translating between the wire messages and
//! [`crate::store::Store`].
//!
//! # How the real server answers failures
//!
//! Taken from the KurrentDB/EventStoreDB server source (`Services/Transport/Grpc`:
//! `RpcExceptions.cs`, `Status.cs`, `Streams.Append.cs`, `Streams.BatchAppend.cs`,
//! `Streams.Delete.cs`, `Streams.Read.cs`) and checked against the Python client's
//! error mapping (`kurrentdbclient`, which the conformance suite drives):
//!
//! - **Unary calls** (`Append`, `Delete`, `Tombstone`, `Read`) fail with a plain
//!   gRPC status and headers, never `grpc-status-details-bin`:
//!   - stream deleted (tombstoned): `FailedPrecondition`, `Event stream '<s>' is
//!     deleted.`, headers `exception: stream-deleted`, `stream-name`;
//!   - wrong expected version of a delete or tombstone: `FailedPrecondition`,
//!     `Delete failed due to WrongExpectedVersion. Stream: <s>, Expected version:
//!     <e>, Actual version: <a>` (the operation is `Delete` for tombstones too;
//!     `-1` no stream, `-2` any, `-4` stream exists), headers `exception:
//!     wrong-expected-version`, `stream-name`, `expected-version`, `actual-version`.
//!     The Python client parses this message (actual `-1`: `NotFoundError`);
//!   - an append's wrong expected version is not an error but the reply body
//!     `wrong_expected_version`, old (`…_20_6_0`, expected "no stream" as
//!     `u64::MAX`) and new fields both filled;
//!   - too large: `InvalidArgument`, `Maximum Append Size of <n> Exceeded.`,
//!     headers `exception: maximum-append-size-exceeded`, `maximum-append-size`;
//!   - access denied: `PermissionDenied`, `Access Denied`, header `exception:
//!     access-denied`;
//!   - a missing stream on a read is not an error: one `stream_not_found` message.
//! - **Batch appends** answer each failed batch with `BatchAppendResp.error`, a
//!   `google.rpc.Status` whose message is the name of the detail type and whose
//!   `details` is that message packed as `google.protobuf.Any` with type URL
//!   `type.googleapis.com/event_store.client.<Name>` (`shared.proto`):
//!   `WrongExpectedVersion` → `AlreadyExists`; `StreamDeleted` → `NotFound`;
//!   `AccessDenied` → `PermissionDenied`; `Timeout` → `DeadlineExceeded`;
//!   `MaximumAppendSizeExceeded{maxAppendSize}` → `InvalidArgument`;
//!   `BadRequest{message}` → `InvalidArgument`; `Unknown` → `Unknown`. A batch
//!   whose deadline (`options.deadline`, a duration) is already over gets
//!   `Timeout` at once; access is checked when its options arrive. The
//!   session goes on after an error; requests of a batch that is not pending
//!   (never opened, or already rejected) are ignored. The `eventstore` 4.0.0 client
//!   keeps only the code and message (`Error::Grpc`), so the replicator's sink
//!   still needs its plain-append fallback to learn the current revision.
//! - **Maximum append size**: 1 MiB (1,048,576) by default; an event counts its
//!   data, its custom metadata and twice its type's length (.NET `SizeOnDisk`),
//!   summed over the append. Batch appends check it as requests arrive and answer
//!   at once; `Append` fails while reading the request stream.
//! - **Filters** are .NET regular expressions matched with `Regex.IsMatch`:
//!   unanchored, look-around allowed (the Python client's default `$all` filter is
//!   `^(?!(\$.+$|PersistentConfig\d+$|Result$))` on the event type). An empty regex
//!   means the prefixes apply. Filtered reads (not only subscriptions) accept them.
//! - **Read messages**: `caught_up` is sent (empty) when a subscription catches up;
//!   `fell_behind` is never sent to clients. `first_stream_position` and
//!   `last_stream_position` go only to clients asking for `control_option.
//!   compatibility >= 1` on stream reads (the Rust client does and skips them;
//!   the Python client does not): `last_stream_position` (the stream's last
//!   revision) ends every successful stream read, forwards and backwards, and this
//!   server sends it too; `first_stream_position` comes only when a forward read's
//!   first page is empty, which this server does not reproduce.

// `tonic::Status` is the error type the generated service traits require; boxing it
// in the helpers would only add conversions at every call site.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use fancy_regex::Regex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::proto::google::rpc::Status as RpcStatus;
use crate::proto::gossip::{self, gossip_server::Gossip};
use crate::proto::server_features::{
    server_features_server::ServerFeatures, SupportedMethod, SupportedMethods,
};
use crate::proto::shared::{self, StreamIdentifier};
use crate::proto::streams::{
    append_req, append_resp, batch_append_req, batch_append_resp, delete_req, delete_resp,
    read_req, read_resp, streams_server::Streams, tombstone_req, tombstone_resp, AppendReq,
    AppendResp, BatchAppendReq, BatchAppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp,
    TombstoneReq, TombstoneResp,
};
use crate::security::{self, Access, Principal};
use crate::shared::Shared;
use crate::store::{Expected, Proposed, ReadFailure, Record, Store, WriteOutcome};

/// Records taken from the store per lock: large enough to stream fast, small enough
/// that writers never wait long.
const CHUNK: usize = 256;
/// Replies buffered per call before the sender waits for the client.
const CHANNEL: usize = 64;
/// Filtered subscriptions send a checkpoint every `window × multiplier` events
/// considered; the window when the client asks for `count` (the server default).
const DEFAULT_FILTER_WINDOW: u32 = 32;
/// Version reported when none is configured.
const DEFAULT_VERSION: &str = "24.10.0";

type ReplySender<T> = mpsc::Sender<Result<T, Status>>;

// ---------------------------------------------------------------- conversions

fn uuid_from_wire(uuid: Option<shared::Uuid>) -> Result<Uuid, Status> {
    use shared::uuid::Value;
    match uuid.and_then(|u| u.value) {
        Some(Value::Structured(s)) => {
            let high = u128::from(s.most_significant_bits as u64);
            let low = u128::from(s.least_significant_bits as u64);
            Ok(Uuid::from_u128((high << 64) | low))
        }
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| Status::invalid_argument(format!("event id {s:?} is not a UUID"))),
        None => Err(Status::invalid_argument("event id is missing")),
    }
}

fn uuid_to_wire(uuid: Uuid, structured: bool) -> shared::Uuid {
    use shared::uuid::{Structured, Value};
    let value = if structured {
        let bits = uuid.as_u128();
        Value::Structured(Structured {
            most_significant_bits: (bits >> 64) as u64 as i64,
            least_significant_bits: bits as u64 as i64,
        })
    } else {
        Value::String(uuid.hyphenated().to_string())
    };
    shared::Uuid { value: Some(value) }
}

fn stream_name(identifier: Option<StreamIdentifier>) -> Result<String, Status> {
    let identifier =
        identifier.ok_or_else(|| Status::invalid_argument("stream identifier is missing"))?;
    String::from_utf8(identifier.stream_name.to_vec())
        .map_err(|_| Status::invalid_argument("stream name is not UTF-8"))
}

fn identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

fn proposed(
    id: Option<shared::Uuid>,
    metadata: HashMap<String, String>,
    custom_metadata: Bytes,
    data: Bytes,
) -> Result<Proposed, Status> {
    let id = uuid_from_wire(id)?;
    let required = |key: &str| {
        metadata.get(key).cloned().ok_or_else(|| {
            Status::invalid_argument(format!("required metadata property {key:?} is missing"))
        })
    };
    Ok(Proposed {
        id,
        event_type: required("type")?,
        content_type: required("content-type")?,
        data,
        custom_metadata,
    })
}

fn recorded(record: &Record, structured: bool) -> read_resp::read_event::RecordedEvent {
    let metadata = HashMap::from([
        ("type".to_owned(), record.event_type.to_string()),
        ("content-type".to_owned(), record.content_type.to_string()),
        ("created".to_owned(), record.created_ticks.to_string()),
    ]);
    read_resp::read_event::RecordedEvent {
        id: Some(uuid_to_wire(record.id, structured)),
        stream_identifier: Some(identifier(&record.stream)),
        stream_revision: record.revision,
        prepare_position: record.position,
        commit_position: record.position,
        metadata,
        custom_metadata: record.custom_metadata.clone(),
        data: record.data.clone(),
    }
}

/// One event of a read: the record read, and what it resolves to when it is a link
/// and links are resolved.
struct Item {
    original: Record,
    resolved: Option<Record>,
    resolve: bool,
}

impl Item {
    fn new(store: &Store, original: Record, resolve_links: bool) -> Item {
        let resolve = resolve_links && original.is_link();
        let resolved = if resolve {
            store.resolve_link(&original)
        } else {
            None
        };
        Item {
            original,
            resolved,
            resolve,
        }
    }

    fn to_reply(&self, structured: bool) -> ReadResp {
        let (event, link) = if self.resolve {
            (
                self.resolved.as_ref().map(|r| recorded(r, structured)),
                Some(recorded(&self.original, structured)),
            )
        } else {
            (Some(recorded(&self.original, structured)), None)
        };
        ReadResp {
            content: Some(read_resp::Content::Event(read_resp::ReadEvent {
                event,
                link,
                position: Some(read_resp::read_event::Position::CommitPosition(
                    self.original.position,
                )),
            })),
        }
    }
}

fn status_with(code: Code, message: String, pairs: &[(&'static str, String)]) -> Status {
    let mut metadata = MetadataMap::new();
    for (key, value) in pairs {
        // Values that are not visible ASCII (unicode stream names) cannot travel as
        // headers; the client never needs them.
        if let Ok(value) = MetadataValue::try_from(value.as_str()) {
            metadata.insert(*key, value);
        }
    }
    Status::with_metadata(code, message, metadata)
}

/// The largest append (sum of [`append_size`] over its events) the real server
/// accepts unless configured otherwise (`MaxAppendSize`, 1 MiB).
pub(crate) const DEFAULT_MAX_APPEND_SIZE: usize = 1024 * 1024;

/// What one event counts towards the maximum append size on the real server
/// (`Event.SizeOnDisk`): data, plus custom metadata, plus the event type counted
/// twice per UTF-16 unit.
fn append_size(event: &Proposed) -> usize {
    event.data.len() + event.custom_metadata.len() + 2 * event.event_type.encode_utf16().count()
}

/// `message` packed as a `google.protobuf.Any` as .NET's `Any.Pack` does.
fn pack_detail(name: &str, message: &impl prost::Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/event_store.client.{name}"),
        value: message.encode_to_vec(),
    }
}

/// The error of one failed batch append, as the real server builds it: the
/// `google.rpc.Status` message is the detail's type name, the code depends on it.
fn batch_error(code: Code, name: &str, detail: &impl prost::Message) -> batch_append_resp::Result {
    batch_append_resp::Result::Error(RpcStatus {
        code: code as i32,
        message: name.to_owned(),
        details: Some(pack_detail(name, detail)),
    })
}

fn max_append_size_exceeded(max: usize) -> Status {
    status_with(
        Code::InvalidArgument,
        format!("Maximum Append Size of {max} Exceeded."),
        &[
            ("exception", "maximum-append-size-exceeded".to_owned()),
            ("maximum-append-size", max.to_string()),
        ],
    )
}

fn access_denied() -> Status {
    status_with(
        Code::PermissionDenied,
        "Access Denied".to_owned(),
        &[("exception", "access-denied".to_owned())],
    )
}

fn stream_deleted(stream: &str) -> Status {
    status_with(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[
            ("exception", "stream-deleted".to_owned()),
            ("stream-name", stream.to_owned()),
        ],
    )
}

/// A failed delete or tombstone (`operation` is `Delete` for both on the real
/// server); the Python client parses this message.
fn wrong_expected_status(
    operation: &str,
    stream: &str,
    current: Option<u64>,
    expected: Expected,
) -> Status {
    let current_text = current.map_or_else(|| "-1".to_owned(), |c| c.to_string());
    let expected_text = match expected {
        Expected::Any => "-2".to_owned(),
        Expected::NoStream => "-1".to_owned(),
        Expected::StreamExists => "-4".to_owned(),
        Expected::Exact(r) => r.to_string(),
    };
    status_with(
        Code::FailedPrecondition,
        format!(
            "{operation} failed due to WrongExpectedVersion. Stream: {stream}, Expected version: {expected_text}, Actual version: {current_text}"
        ),
        &[
            ("exception", "wrong-expected-version".to_owned()),
            ("stream-name", stream.to_owned()),
            ("expected-version", expected_text),
            ("actual-version", current_text),
        ],
    )
}

fn injected_unavailable() -> Status {
    Status::unavailable("Server unavailable (injected fault)")
}

fn shutting_down() -> Status {
    Status::unavailable("Server is shutting down or dropped the connection")
}

/// The reply stream of a read. A subscription must never end with OK (the client
/// then spins forever), so when its sender goes away without a final error, this
/// stream ends it with `Unavailable` itself.
pub(crate) struct ReplyStream<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    never_ok: bool,
    finished: bool,
}

impl<T> tokio_stream::Stream for ReplyStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.finished {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                self.finished = item.is_err();
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                self.finished = true;
                if self.never_ok {
                    Poll::Ready(Some(Err(shutting_down())))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

// ---------------------------------------------------------------- filters

struct Filter {
    on_stream: bool,
    regex: Option<Regex>,
    prefixes: Vec<String>,
    checkpoint_interval: u64,
}

impl Filter {
    fn from_wire(options: read_req::options::FilterOptions) -> Result<Filter, Status> {
        use read_req::options::filter_options::{Filter as Kind, Window};
        let (on_stream, expression) = match options.filter {
            Some(Kind::StreamIdentifier(e)) => (true, e),
            Some(Kind::EventType(e)) => (false, e),
            None => return Err(Status::invalid_argument("filter has no expression")),
        };
        let regex = if expression.regex.is_empty() {
            None
        } else {
            Some(Regex::new(&expression.regex).map_err(|error| {
                Status::invalid_argument(format!("invalid filter regex: {error}"))
            })?)
        };
        let window = match options.window {
            Some(Window::Max(max)) if max > 0 => max,
            _ => DEFAULT_FILTER_WINDOW,
        };
        let multiplier = options.checkpoint_interval_multiplier.max(1);
        Ok(Filter {
            on_stream,
            regex,
            prefixes: expression.prefix,
            checkpoint_interval: u64::from(window) * u64::from(multiplier),
        })
    }

    fn matches(&self, record: &Record) -> bool {
        let subject: &str = if self.on_stream {
            &record.stream
        } else {
            &record.event_type
        };
        if let Some(regex) = &self.regex {
            // .NET's `Regex.IsMatch`: unanchored. A match that exceeds the
            // backtracking limit counts as no match.
            return regex.is_match(subject).unwrap_or(false);
        }
        self.prefixes.is_empty()
            || self
                .prefixes
                .iter()
                .any(|p| subject.starts_with(p.as_str()))
    }
}

// ---------------------------------------------------------------- streams service

/// The `event_store.client.streams.Streams` service.
#[derive(Clone)]
pub(crate) struct StreamsService {
    shared: Arc<Shared>,
}

impl StreamsService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        StreamsService { shared }
    }
}

/// Sends one reply unless the client went away or the connection is being dropped
/// (then the reply is an `Unavailable`, best effort). Returns whether to go on.
async fn send<T>(tx: &ReplySender<T>, token: &CancellationToken, reply: T) -> bool {
    tokio::select! {
        sent = tx.send(Ok(reply)) => sent.is_ok(),
        () = token.cancelled() => {
            let _ = tx.try_send(Err(shutting_down()));
            false
        }
    }
}

/// Waits until replies are not paused; false if the connection is dropped meanwhile.
async fn unpaused(shared: &Shared, token: &CancellationToken) -> bool {
    tokio::select! {
        () = shared.faults.wait_unpaused() => true,
        () = token.cancelled() => false,
    }
}

enum Source {
    All(Option<read_req::options::all_options::AllOption>),
    Stream(
        String,
        Option<read_req::options::stream_options::RevisionOption>,
    ),
}

struct ReadPlan {
    source: Source,
    backwards: bool,
    resolve_links: bool,
    structured: bool,
    filter: Option<Filter>,
    /// `None` for a subscription.
    count: Option<u64>,
    /// `control_option.compatibility`: 1 or more asks for `last_stream_position`
    /// at the end of a stream read.
    compatibility: u32,
}

impl ReadPlan {
    fn from_wire(request: ReadReq) -> Result<ReadPlan, Status> {
        use read_req::options::{uuid_option, CountOption, FilterOption, StreamOption};
        let options = request
            .options
            .ok_or_else(|| Status::invalid_argument("read options are missing"))?;
        let backwards =
            options.read_direction == read_req::options::ReadDirection::Backwards as i32;
        let structured = matches!(
            options.uuid_option.and_then(|u| u.content),
            Some(uuid_option::Content::Structured(()))
        );
        let source = match options.stream_option {
            Some(StreamOption::All(all)) => Source::All(all.all_option),
            Some(StreamOption::Stream(stream)) => Source::Stream(
                stream_name(stream.stream_identifier)?,
                stream.revision_option,
            ),
            None => return Err(Status::invalid_argument("read has no stream option")),
        };
        let count = match options.count_option {
            Some(CountOption::Count(count)) => Some(count),
            Some(CountOption::Subscription(_)) => None,
            None => return Err(Status::invalid_argument("read has no count option")),
        };
        let filter = match options.filter_option {
            Some(FilterOption::Filter(filter)) => Some(Filter::from_wire(filter)?),
            _ => None,
        };
        if filter.is_some() && matches!(source, Source::Stream(..)) {
            return Err(Status::invalid_argument("filters apply to $all only"));
        }
        if count.is_none() && backwards {
            return Err(Status::invalid_argument("subscriptions read forwards only"));
        }
        Ok(ReadPlan {
            source,
            backwards,
            resolve_links: options.resolve_links,
            structured,
            filter,
            count,
            compatibility: options.control_option.map_or(0, |c| c.compatibility),
        })
    }
}

impl StreamsService {
    async fn count_read(
        &self,
        plan: ReadPlan,
        tx: ReplySender<ReadResp>,
        token: CancellationToken,
    ) {
        use read_req::options::all_options::AllOption;
        use read_req::options::stream_options::RevisionOption;
        let mut remaining = plan.count.unwrap_or(0);
        match &plan.source {
            Source::All(option) => {
                let len = self.shared.read(Store::len);
                // Forwards from a position is inclusive; backwards from one is not.
                let mut cursor = self.shared.read(|s| match option {
                    Some(AllOption::Position(p)) => s.index_at_or_after(p.commit_position),
                    Some(AllOption::End(())) => len,
                    Some(AllOption::Start(())) => 0,
                    None if plan.backwards => len,
                    None => 0,
                });
                while remaining > 0 {
                    let items: Vec<Item> = self.shared.read(|store| {
                        let records = if plan.backwards {
                            let from = cursor.saturating_sub(CHUNK);
                            let mut slice = store.log_slice(from, cursor - from);
                            slice.reverse();
                            cursor = from;
                            slice
                        } else {
                            let slice =
                                store.log_slice(cursor, CHUNK.min(len.saturating_sub(cursor)));
                            cursor += slice.len();
                            slice
                        };
                        records
                            .into_iter()
                            .filter(|r| plan.filter.as_ref().is_none_or(|f| f.matches(r)))
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect()
                    });
                    let exhausted = if plan.backwards {
                        cursor == 0
                    } else {
                        cursor >= len
                    };
                    for item in items {
                        if remaining == 0 {
                            break;
                        }
                        remaining -= 1;
                        if !send(&tx, &token, item.to_reply(plan.structured)).await {
                            return;
                        }
                    }
                    if exhausted {
                        break;
                    }
                }
            }
            Source::Stream(stream, option) => {
                let range = match self.shared.read(|s| s.readable(stream)) {
                    Ok(range) => range,
                    Err(ReadFailure::NotFound) => {
                        let reply = ReadResp {
                            content: Some(read_resp::Content::StreamNotFound(
                                read_resp::StreamNotFound {
                                    stream_identifier: Some(identifier(stream)),
                                },
                            )),
                        };
                        send(&tx, &token, reply).await;
                        return;
                    }
                    Err(ReadFailure::Deleted) => {
                        let _ = tx.send(Err(stream_deleted(stream))).await;
                        return;
                    }
                };
                // `next` is the next revision to send; backwards it counts down.
                let (mut next, end) = if plan.backwards {
                    let top = match option {
                        Some(RevisionOption::Revision(r)) => (*r).min(range.end - 1),
                        Some(RevisionOption::Start(())) => range.start,
                        _ => range.end - 1,
                    };
                    (top.saturating_add(1), range.start)
                } else {
                    let from = match option {
                        Some(RevisionOption::Revision(r)) => (*r).max(range.start),
                        Some(RevisionOption::End(())) => range.end,
                        _ => range.start,
                    };
                    (from, range.end)
                };
                while remaining > 0 {
                    let batch = remaining.min(CHUNK as u64);
                    let items: Vec<Item> = self.shared.read(|store| {
                        let records = if plan.backwards {
                            if next <= end || (next < range.start) {
                                return Vec::new();
                            }
                            let from = next.saturating_sub(batch).max(end);
                            let mut records = store.stream_records(stream, from..next);
                            records.reverse();
                            next = from;
                            records
                        } else {
                            if next >= end {
                                return Vec::new();
                            }
                            let to = next.saturating_add(batch).min(end);
                            let records = store.stream_records(stream, next..to);
                            next = to;
                            records
                        };
                        records
                            .into_iter()
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect()
                    });
                    if items.is_empty() {
                        break;
                    }
                    for item in items {
                        remaining = remaining.saturating_sub(1);
                        if !send(&tx, &token, item.to_reply(plan.structured)).await {
                            return;
                        }
                    }
                }
                // As the real server: the stream's last revision ends every
                // successful stream read of a client asking for it.
                if plan.compatibility >= 1 {
                    let reply = ReadResp {
                        content: Some(read_resp::Content::LastStreamPosition(range.end - 1)),
                    };
                    send(&tx, &token, reply).await;
                }
            }
        }
    }

    async fn subscription(
        &self,
        plan: ReadPlan,
        tx: ReplySender<ReadResp>,
        token: CancellationToken,
    ) {
        use read_req::options::all_options::AllOption;
        use read_req::options::stream_options::RevisionOption;
        let confirmation = ReadResp {
            content: Some(read_resp::Content::Confirmation(
                read_resp::SubscriptionConfirmation {
                    subscription_id: Uuid::new_v4().to_string(),
                },
            )),
        };
        // A stream subscription's cursor is a revision, an `$all` one a log index.
        let mut cursor: u64 = match &plan.source {
            Source::All(option) => self.shared.read(|s| match option {
                Some(AllOption::Position(p)) => s.index_after(p.commit_position),
                Some(AllOption::End(())) => s.len(),
                _ => 0,
            }) as u64,
            Source::Stream(stream, option) => {
                let start = self.shared.read(|s| match s.readable(stream) {
                    Err(ReadFailure::Deleted) => Err(()),
                    _ => Ok(match option {
                        Some(RevisionOption::Revision(r)) => r.saturating_add(1),
                        Some(RevisionOption::End(())) => {
                            s.last_revision(stream).map_or(0, |r| r + 1)
                        }
                        _ => 0,
                    }),
                });
                match start {
                    Ok(start) => start,
                    Err(()) => {
                        let _ = tx.send(Err(stream_deleted(stream))).await;
                        return;
                    }
                }
            }
        };
        if !send(&tx, &token, confirmation).await {
            return;
        }
        let mut appended = self.shared.appended.subscribe();
        let mut caught_up = false;
        let mut considered: u64 = 0;
        loop {
            if !unpaused(&self.shared, &token).await {
                let _ = tx.try_send(Err(shutting_down()));
                return;
            }
            appended.borrow_and_update();
            let chunk: Result<Vec<Item>, ()> = self.shared.read(|store| match &plan.source {
                Source::All(_) => {
                    let records = store.log_slice(cursor as usize, CHUNK);
                    cursor += records.len() as u64;
                    Ok(records
                        .into_iter()
                        .map(|r| Item::new(store, r, plan.resolve_links))
                        .collect())
                }
                Source::Stream(stream, _) => match store.readable(stream) {
                    Err(ReadFailure::Deleted) => Err(()),
                    Err(ReadFailure::NotFound) => Ok(Vec::new()),
                    Ok(range) => {
                        cursor = cursor.max(range.start);
                        let records = store.stream_records(stream, cursor..cursor + CHUNK as u64);
                        cursor += records.len() as u64;
                        Ok(records
                            .into_iter()
                            .map(|r| Item::new(store, r, plan.resolve_links))
                            .collect())
                    }
                },
            });
            let Ok(items) = chunk else {
                if let Source::Stream(stream, _) = &plan.source {
                    let _ = tx.send(Err(stream_deleted(stream))).await;
                }
                return;
            };
            if items.is_empty() {
                if !caught_up {
                    caught_up = true;
                    let reply = ReadResp {
                        content: Some(read_resp::Content::CaughtUp(read_resp::CaughtUp {})),
                    };
                    if !send(&tx, &token, reply).await {
                        return;
                    }
                }
                tokio::select! {
                    changed = appended.changed() => if changed.is_err() { return },
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down()));
                        return;
                    }
                    () = tx.closed() => return,
                }
                continue;
            }
            for item in items {
                let wanted = plan
                    .filter
                    .as_ref()
                    .is_none_or(|f| f.matches(&item.original));
                if wanted && !send(&tx, &token, item.to_reply(plan.structured)).await {
                    return;
                }
                if let Some(filter) = &plan.filter {
                    considered += 1;
                    if considered.is_multiple_of(filter.checkpoint_interval) {
                        let position = item.original.position;
                        let reply = ReadResp {
                            content: Some(read_resp::Content::Checkpoint(read_resp::Checkpoint {
                                commit_position: position,
                                prepare_position: position,
                            })),
                        };
                        if !send(&tx, &token, reply).await {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The caller of `metadata`'s request, or `Unauthenticated` for wrong
    /// credentials.
    fn principal(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let header = metadata.get("authorization").map(|v| v.as_bytes());
        security::principal(self.shared.options.users.as_deref(), header)
            .map_err(|_| Status::unauthenticated("Bad credentials: unknown user or wrong password"))
    }

    fn max_append_size(&self) -> usize {
        self.shared
            .options
            .max_append_size
            .unwrap_or(DEFAULT_MAX_APPEND_SIZE)
    }

    async fn write_delay(&self) {
        let latency = self.shared.options.append_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }

    async fn gate(&self) -> Result<CancellationToken, Status> {
        let token = self.shared.faults.token();
        if unpaused(&self.shared, &token).await {
            Ok(token)
        } else {
            Err(shutting_down())
        }
    }
}

fn expected_from_append(option: Option<append_req::options::ExpectedStreamRevision>) -> Expected {
    use append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Expected::Exact(r),
        Some(E::NoStream(())) => Expected::NoStream,
        Some(E::StreamExists(())) => Expected::StreamExists,
        Some(E::Any(())) | None => Expected::Any,
    }
}

fn append_reply(outcome: WriteOutcome, stream: &str) -> Result<AppendResp, Status> {
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
fn deletion_position(outcome: WriteOutcome, stream: &str) -> Result<Option<u64>, Status> {
    match outcome {
        WriteOutcome::Success { position, .. } => Ok(position),
        WriteOutcome::WrongExpected { current, expected } => {
            Err(wrong_expected_status("Delete", stream, current, expected))
        }
        WriteOutcome::StreamDeleted => Err(stream_deleted(stream)),
    }
}

macro_rules! deletion_expected {
    ($module:ident, $option:expr) => {{
        use $module::options::ExpectedStreamRevision as E;
        match $option {
            Some(E::Revision(r)) => Expected::Exact(r),
            Some(E::NoStream(())) => Expected::NoStream,
            Some(E::StreamExists(())) => Expected::StreamExists,
            Some(E::Any(())) | None => Expected::Any,
        }
    }};
}

#[tonic::async_trait]
impl Streams for StreamsService {
    type ReadStream = ReplyStream<ReadResp>;
    type BatchAppendStream = ReceiverStream<Result<BatchAppendResp, Status>>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let plan = ReadPlan::from_wire(request.into_inner())?;
        let target = match &plan.source {
            Source::All(_) => "$all",
            Source::Stream(stream, _) => stream.as_str(),
        };
        if !security::allowed(&principal, target, Access::Read) {
            return Err(access_denied());
        }
        let latency = self.shared.options.read_latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (tx, rx) = mpsc::channel(CHANNEL);
        let service = self.clone();
        let subscription = plan.count.is_none();
        tokio::spawn(async move {
            if plan.count.is_some() {
                service.count_read(plan, tx, token).await;
            } else {
                service.subscription(plan, tx, token).await;
            }
        });
        Ok(Response::new(ReplyStream {
            rx,
            never_ok: subscription,
            finished: false,
        }))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let token = self.gate().await?;
        self.shared
            .plain_appends
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let principal = self.principal(request.metadata())?;
        let mut messages = request.into_inner();
        let Some(first) = messages.message().await? else {
            return Err(Status::invalid_argument("append without options"));
        };
        let Some(append_req::Content::Options(options)) = first.content else {
            return Err(Status::invalid_argument("append must start with options"));
        };
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = expected_from_append(options.expected_stream_revision);
        let max_append_size = self.max_append_size();
        let mut events = Vec::new();
        let mut size = 0;
        while let Some(message) = messages.message().await? {
            match message.content {
                Some(append_req::Content::ProposedMessage(m)) => {
                    let event = proposed(m.id, m.metadata, m.custom_metadata, m.data)?;
                    size += append_size(&event);
                    if size > max_append_size {
                        return Err(max_append_size_exceeded(max_append_size));
                    }
                    events.push(event);
                }
                _ => return Err(Status::invalid_argument("options sent twice in one append")),
            }
        }
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await
            || !self.shared.faults.pass_gate(events.len(), &token).await
        {
            return Err(shutting_down());
        }
        if self.shared.faults.take_append_failure() {
            return Err(injected_unavailable());
        }
        let outcome = self
            .shared
            .write(|store| store.append(&stream, expected, events));
        append_reply(outcome, &stream).map(Response::new)
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("delete options are missing"))?;
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = deletion_expected!(delete_req, options.expected_stream_revision);
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await || !self.shared.faults.pass_gate(1, &token).await {
            return Err(shutting_down());
        }
        let outcome = self
            .shared
            .write(|store| store.soft_delete(&stream, expected));
        let position = deletion_position(outcome, &stream)?;
        Ok(Response::new(DeleteResp {
            position_option: Some(match position {
                Some(p) => delete_resp::PositionOption::Position(delete_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => delete_resp::PositionOption::NoPosition(()),
            }),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("tombstone options are missing"))?;
        let stream = stream_name(options.stream_identifier)?;
        if !security::allowed(&principal, &stream, Access::Write) {
            return Err(access_denied());
        }
        let expected = deletion_expected!(tombstone_req, options.expected_stream_revision);
        self.write_delay().await;
        if !unpaused(&self.shared, &token).await || !self.shared.faults.pass_gate(1, &token).await {
            return Err(shutting_down());
        }
        let outcome = self
            .shared
            .write(|store| store.tombstone(&stream, expected));
        let position = deletion_position(outcome, &stream)?;
        Ok(Response::new(TombstoneResp {
            position_option: Some(match position {
                Some(p) => tombstone_resp::PositionOption::Position(tombstone_resp::Position {
                    commit_position: p,
                    prepare_position: p,
                }),
                None => tombstone_resp::PositionOption::NoPosition(()),
            }),
        }))
    }

    async fn batch_append(
        &self,
        request: Request<Streaming<BatchAppendReq>>,
    ) -> Result<Response<Self::BatchAppendStream>, Status> {
        let token = self.gate().await?;
        let principal = self.principal(request.metadata())?;
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(CHANNEL);
        let service = self.clone();
        let calls = self.shared.faults.batch_calls.clone();
        calls.send_modify(|n| *n += 1);
        tokio::spawn(async move {
            // Counted until the call ends, however it ends.
            let _call = CallCount(calls);
            let mut pending: HashMap<Uuid, PendingBatch> = HashMap::new();
            loop {
                let next = tokio::select! {
                    next = requests.message() => next,
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(shutting_down()));
                        return;
                    }
                };
                let request = match next {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                service
                    .shared
                    .batch_requests
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reply = match service
                    .batch_step(&mut pending, request, &principal, &token)
                    .await
                {
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                // Requests on one batch-append stream are pipelined, as on a
                // real server: each is applied in arrival order at once and
                // answered `append_latency` later, without holding up the
                // requests behind it.
                let latency = service.shared.options.append_latency;
                if latency.is_zero() {
                    if !send(&tx, &token, reply).await {
                        return;
                    }
                } else {
                    let (tx, token) = (tx.clone(), token.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(latency).await;
                        send(&tx, &token, reply).await;
                    });
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// One batch-append call in [`crate::faults::FaultState`]'s count, until
/// dropped.
struct CallCount(tokio::sync::watch::Sender<usize>);

impl Drop for CallCount {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

struct PendingBatch {
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
    async fn batch_step(
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

// ---------------------------------------------------------------- features and gossip

/// `event_store.client.server_features.ServerFeatures`.
pub(crate) struct FeaturesService {
    shared: Arc<Shared>,
}

impl FeaturesService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        FeaturesService { shared }
    }
}

#[tonic::async_trait]
impl ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<()>,
    ) -> Result<Response<SupportedMethods>, Status> {
        let method = |service: &str, name: &str| SupportedMethod {
            method_name: name.to_owned(),
            service_name: service.to_owned(),
            features: Vec::new(),
        };
        let streams = "event_store.client.streams.streams";
        let methods = vec![
            method(streams, "read"),
            method(streams, "append"),
            method(streams, "delete"),
            method(streams, "tombstone"),
            method(streams, "batchappend"),
            method("event_store.client.gossip.gossip", "read"),
            method(
                "event_store.client.server_features.serverfeatures",
                "getsupportedmethods",
            ),
        ];
        let version = self
            .shared
            .options
            .server_version
            .clone()
            .unwrap_or_else(|| DEFAULT_VERSION.to_owned());
        Ok(Response::new(SupportedMethods {
            methods,
            event_store_server_version: version,
        }))
    }
}

/// `event_store.client.gossip.Gossip`: a one-member cluster whose only node, the
/// leader, is this server.
pub(crate) struct GossipService {
    shared: Arc<Shared>,
}

impl GossipService {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        GossipService { shared }
    }
}

#[tonic::async_trait]
impl Gossip for GossipService {
    async fn read(&self, _request: Request<()>) -> Result<Response<gossip::ClusterInfo>, Status> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let member = gossip::MemberInfo {
            instance_id: Some(uuid_to_wire(self.shared.instance_id, true)),
            time_stamp: i64::try_from(now.as_nanos() / 100).unwrap_or(i64::MAX),
            state: gossip::member_info::VNodeState::Leader as i32,
            is_alive: true,
            http_end_point: Some(gossip::EndPoint {
                address: self.shared.host.clone(),
                port: u32::from(self.shared.port.load(std::sync::atomic::Ordering::SeqCst)),
            }),
        };
        Ok(Response::new(gossip::ClusterInfo {
            members: vec![member],
        }))
    }
}
