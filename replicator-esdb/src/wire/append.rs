//! A batch-append session: one bidirectional `BatchAppend` call carrying
//! every append of the sink, each request encoded by hand from the pipeline's
//! [`Event`]s.
//!
//! The `eventstore` client builds an `EventData` per event (a string map of
//! system metadata, the JSON data serialised again), then a protobuf message
//! with another map, and encodes it field by field. Here each request is
//! written in one pass into one buffer: the same bytes on the wire.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{BufMut, Bytes};
use eventstore::ExpectedRevision;
use prost::encoding::encoded_len_varint;
use replicator_core::{Event, Position};
use tokio::sync::{mpsc, oneshot};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use tracing::{debug, warn};
use uuid::Uuid;

use super::channel::WireChannel;
use super::proto::BatchAppendResp;
use crate::encode::json_text;

/// How far ahead the deadline each request carries for the server lies.
///
/// Far, unlike the client's 10 s: a server refuses at once, writing
/// nothing, a request whose deadline has passed when it arrives (queued
/// behind large requests, or a server clock ahead of ours), and goes on with
/// the requests after it, which would then pass it: the source's order
/// would be lost. The server caps how long it waits for a write's commit
/// with its own write timeout whatever this says, and the sink bounds its
/// wait for an answer with its request timeout.
const SERVER_DEADLINE: Duration = Duration::from_secs(3600);

/// What a successful append reports: the position of its last event and the
/// stream's revision after it, when the server says.
pub(crate) type Appended = (Option<Position>, Option<u64>);

type Waiting = oneshot::Sender<Result<Appended, eventstore::Error>>;

/// Appends in flight, by correlation id, and why the session ended if it did.
#[derive(Default)]
struct Pending {
    waiting: HashMap<Uuid, Waiting>,
    ended: Option<eventstore::Error>,
}

/// One open batch-append call. Appends may run concurrently on it; each is
/// answered by its correlation id. Dropping the last handle ends the call.
pub(crate) struct BatchSession {
    requests: mpsc::UnboundedSender<Bytes>,
    pending: Arc<Mutex<Pending>>,
    /// The call's task: aborted when the session is dropped, which resets
    /// the call, so the server skips what it has not written yet (as when
    /// the process dies), instead of writing it later.
    call: tokio::task::AbortHandle,
    /// The channel the call is on, for other calls to the same node.
    channel: WireChannel,
}

impl Drop for BatchSession {
    fn drop(&mut self) {
        self.call.abort();
    }
}

impl BatchSession {
    /// Starts the call on `channel`. Returns at once: a server answers the
    /// call's headers only with its first reply, so the call runs in a task
    /// of its own. A server without batch append fails the first append with
    /// [`eventstore::Error::UnsupportedFeature`].
    pub(crate) fn open(channel: &WireChannel) -> Self {
        let (requests, receiver) = mpsc::unbounded_channel::<Bytes>();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let outgoing = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|request| (request, receiver))
        });
        let request = channel.request(outgoing);
        let call_channel = channel.clone();
        let answers = Arc::clone(&pending);
        let call = tokio::spawn(async move {
            let ended = match run(&call_channel, request, &answers).await {
                Ok(()) => eventstore::Error::ServerError("the batch-append call ended".to_owned()),
                Err(error) => error,
            };
            debug!(%ended, "Batch-append session over");
            let mut pending = answers.lock().unwrap_or_else(|e| e.into_inner());
            for (_, waiting) in pending.waiting.drain() {
                let _ = waiting.send(Err(ended.clone()));
            }
            pending.ended = Some(ended);
        });
        BatchSession {
            requests,
            pending,
            call: call.abort_handle(),
            channel: channel.clone(),
        }
    }

    /// Whether the call has ended: every request sent on it fails.
    pub(crate) fn has_ended(&self) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ended
            .is_some()
    }

    /// The channel the session's call is on.
    pub(crate) fn channel(&self) -> &WireChannel {
        &self.channel
    }

    /// Appends `events` to `stream` at `expected`, as one request.
    pub(crate) async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: &[&Event],
    ) -> Result<Appended, eventstore::Error> {
        self.send(stream, expected, events)?.answer().await
    }

    /// Sends `events` to `stream` at `expected` as one request, at once, and
    /// returns its answer to wait for. Requests reach the server in the order
    /// of the `send` calls, which is the order a leader writes them in (see
    /// ARCHITECTURE.md, "Source order").
    ///
    /// # Errors
    /// When the session has ended.
    pub(crate) fn send(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: &[&Event],
    ) -> Result<PendingAppend<'_>, eventstore::Error> {
        let correlation = Uuid::new_v4();
        let request = encode_request(correlation, stream, expected, events, SystemTime::now());
        let (answer, answered) = oneshot::channel();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(ended) = &pending.ended {
                return Err(ended.clone());
            }
            pending.waiting.insert(correlation, answer);
        }
        if self.requests.send(request).is_err() {
            self.forget(correlation);
            return Err(eventstore::Error::ConnectionClosed);
        }
        Ok(PendingAppend {
            forget: Forget(self, correlation),
            answered,
        })
    }

    fn forget(&self, correlation: Uuid) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.waiting.remove(&correlation);
    }
}

/// The answer to a request sent by [`BatchSession::send`]. Dropping it
/// before the answer came forgets the request (the server may still write
/// it).
pub(crate) struct PendingAppend<'s> {
    forget: Forget<'s>,
    answered: oneshot::Receiver<Result<Appended, eventstore::Error>>,
}

impl PendingAppend<'_> {
    /// Waits for the server's answer.
    pub(crate) async fn answer(self) -> Result<Appended, eventstore::Error> {
        let PendingAppend { forget, answered } = self;
        let answer = answered
            .await
            .unwrap_or(Err(eventstore::Error::ConnectionClosed));
        std::mem::forget(forget);
        answer
    }
}

/// Removes an append that is no longer awaited from the waiting list.
struct Forget<'s>(&'s BatchSession, Uuid);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

/// Makes the call and hands each answer to its waiting append until the call
/// ends.
async fn run(
    channel: &WireChannel,
    request: tonic::Request<impl futures::Stream<Item = Bytes> + Send + 'static>,
    pending: &Mutex<Pending>,
) -> Result<(), eventstore::Error> {
    let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
    let path =
        http::uri::PathAndQuery::from_static("/event_store.client.streams.Streams/BatchAppend");
    let mut answers = grpc
        .streaming(request, path, AppendCodec)
        .await
        .map_err(|s| channel.error(s))?
        .into_inner();
    while let Some(answer) = answers.message().await.map_err(|s| channel.error(s))? {
        let Some(correlation) = answer.correlation_id.as_ref().and_then(|id| id.to_uuid()) else {
            warn!("A batch-append answer without a correlation id: ignored");
            continue;
        };
        let result = match (answer.success, answer.error) {
            (Some(success), _) => Ok((
                success.position.map(Position::from),
                success.current_revision,
            )),
            (None, Some(error)) => Err(eventstore::Error::Grpc {
                code: tonic::Code::from(error.code),
                message: error.message,
            }),
            (None, None) => Err(eventstore::Error::ServerError(
                "a batch-append answer without a result".to_owned(),
            )),
        };
        let waiting = pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiting
            .remove(&correlation);
        if let Some(waiting) = waiting {
            let _ = waiting.send(result);
        }
    }
    Ok(())
}

/// Sends requests already encoded; decodes answers with `prost` (one per
/// request, not per event).
struct AppendCodec;

impl Codec for AppendCodec {
    type Encode = Bytes;
    type Decode = BatchAppendResp;
    type Encoder = Encoded;
    type Decoder = AnswerDecoder;

    fn encoder(&mut self) -> Encoded {
        Encoded
    }

    fn decoder(&mut self) -> AnswerDecoder {
        AnswerDecoder
    }
}

struct Encoded;

impl Encoder for Encoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

struct AnswerDecoder;

impl Decoder for AnswerDecoder {
    type Item = BatchAppendResp;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<BatchAppendResp>, Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("a batch-append answer cannot be read: {e}")))
    }
}

const JSON: &[u8] = b"application/json";
const BINARY: &[u8] = b"application/octet-stream";

/// Encodes a final `BatchAppendReq` (`streams.proto`) for `events`, with the
/// same content as the `eventstore` client sends: each event's id, type,
/// content type, user metadata and data; the request's correlation id,
/// stream, expected revision and a deadline [`SERVER_DEADLINE`] after `now`.
///
/// Data marked JSON that is not UTF-8 goes as binary, as with the client
/// path ([`json_text`]).
pub(crate) fn encode_request(
    correlation: Uuid,
    stream: &str,
    expected: ExpectedRevision,
    events: &[&Event],
    now: SystemTime,
) -> Bytes {
    let deadline = now
        .checked_add(SERVER_DEADLINE)
        .and_then(|d| d.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default();
    let content_types: Vec<&[u8]> = events.iter().map(|e| content_type(e)).collect();

    let identifier_len = bytes_field_len(3, stream.len());
    let expected_len = match expected {
        ExpectedRevision::Exact(revision) => 1 + encoded_len_varint(revision),
        _ => 2,
    };
    let deadline_body = varint_field_len(1, deadline.as_secs())
        + varint_field_len(2, u64::from(deadline.subsec_nanos()));
    let options_len =
        bytes_field_len(1, identifier_len) + expected_len + bytes_field_len(7, deadline_body);
    let message_lens: Vec<usize> = events
        .iter()
        .zip(&content_types)
        .map(|(event, content_type)| proposed_len(event, content_type))
        .collect();
    let total = bytes_field_len(1, uuid_len(correlation))
        + bytes_field_len(2, options_len)
        + message_lens
            .iter()
            .map(|len| bytes_field_len(3, *len))
            .sum::<usize>()
        + 2;

    // A `Vec`, not a `BytesMut`: `prost`'s varint writer puts a `BytesMut`
    // one byte at a time through `put_slice`, each a `memcpy` call.
    let mut buf = Vec::with_capacity(total);
    put_uuid(1, correlation, &mut buf);
    put_len(2, options_len, &mut buf);
    put_len(1, identifier_len, &mut buf);
    put_bytes(3, stream.as_bytes(), &mut buf);
    match expected {
        ExpectedRevision::Exact(revision) => {
            buf.push(key(2, VARINT));
            put_raw_varint(revision, &mut buf);
        }
        ExpectedRevision::NoStream => put_len(3, 0, &mut buf),
        ExpectedRevision::Any => put_len(4, 0, &mut buf),
        ExpectedRevision::StreamExists => put_len(5, 0, &mut buf),
    }
    put_len(7, deadline_body, &mut buf);
    put_varint(1, deadline.as_secs(), &mut buf);
    put_varint(2, u64::from(deadline.subsec_nanos()), &mut buf);
    for ((event, content_type), len) in events.iter().zip(&content_types).zip(&message_lens) {
        put_len(3, *len, &mut buf);
        put_uuid(1, event.id, &mut buf);
        put_len(2, entry_len(b"type", event.event_type.len()), &mut buf);
        put_bytes(1, b"type", &mut buf);
        put_bytes(2, event.event_type.as_bytes(), &mut buf);
        put_len(2, entry_len(b"content-type", content_type.len()), &mut buf);
        put_bytes(1, b"content-type", &mut buf);
        put_bytes(2, content_type, &mut buf);
        if !event.metadata.is_empty() {
            put_bytes(3, &event.metadata, &mut buf);
        }
        if !event.data.is_empty() {
            put_bytes(4, &event.data, &mut buf);
        }
    }
    // is_final = true
    buf.push(key(4, VARINT));
    buf.push(1);
    debug_assert_eq!(buf.len(), total);
    Bytes::from(buf)
}

fn content_type(event: &Event) -> &'static [u8] {
    match json_text(event) {
        Some(_) => JSON,
        None => BINARY,
    }
}

fn uuid_body(id: Uuid) -> (u64, u64, usize) {
    let (most, least) = id.as_u64_pair();
    let structured = varint_field_len(1, most) + varint_field_len(2, least);
    (most, least, structured)
}

/// Length of `UUID { structured = 1 { most = 1, least = 2 } }`, the form the
/// client sends.
fn uuid_len(id: Uuid) -> usize {
    let (_, _, structured) = uuid_body(id);
    bytes_field_len(1, structured)
}

fn put_uuid(tag: u8, id: Uuid, buf: &mut Vec<u8>) {
    let (most, least, structured) = uuid_body(id);
    put_len(tag, bytes_field_len(1, structured), buf);
    put_len(1, structured, buf);
    put_varint(1, most, buf);
    put_varint(2, least, buf);
}

fn proposed_len(event: &Event, content_type: &[u8]) -> usize {
    let mut len = bytes_field_len(1, uuid_len(event.id))
        + bytes_field_len(2, entry_len(b"type", event.event_type.len()))
        + bytes_field_len(2, entry_len(b"content-type", content_type.len()));
    if !event.metadata.is_empty() {
        len += bytes_field_len(3, event.metadata.len());
    }
    if !event.data.is_empty() {
        len += bytes_field_len(4, event.data.len());
    }
    len
}

fn entry_len(key: &[u8], value_len: usize) -> usize {
    bytes_field_len(1, key.len()) + bytes_field_len(2, value_len)
}

/// Key, length and payload of a length-delimited field (every tag here is
/// below 16: its key takes one byte).
fn bytes_field_len(_tag: u8, len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn varint_field_len(_tag: u8, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        1 + encoded_len_varint(value)
    }
}

const VARINT: u8 = 0;
const LEN: u8 = 2;

fn key(tag: u8, wire_type: u8) -> u8 {
    debug_assert!(tag < 16);
    tag << 3 | wire_type
}

fn put_raw_varint(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn put_len(tag: u8, len: usize, buf: &mut Vec<u8>) {
    buf.push(key(tag, LEN));
    put_raw_varint(len as u64, buf);
}

fn put_bytes(tag: u8, bytes: &[u8], buf: &mut Vec<u8>) {
    put_len(tag, bytes.len(), buf);
    buf.extend_from_slice(bytes);
}

/// A varint field; zero is left out, as proto3 does.
fn put_varint(tag: u8, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        buf.push(key(tag, VARINT));
        put_raw_varint(value, buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use replicator_core::{ChangeKind, ContentType};
    use replicator_testkit::proto::streams::batch_append_req::options::{
        DeadlineOption, ExpectedStreamPosition,
    };
    use replicator_testkit::proto::{shared, streams};

    fn event(event_type: &str, content_type: ContentType, data: &[u8], metadata: &[u8]) -> Event {
        Event {
            id: Uuid::new_v4(),
            stream: "orders-1".into(),
            revision: 0,
            event_type: event_type.into(),
            data: Bytes::copy_from_slice(data),
            metadata: Bytes::copy_from_slice(metadata),
            content_type,
            created: SystemTime::UNIX_EPOCH,
            position: Position {
                commit: 1,
                prepare: 1,
            },
            kind: ChangeKind::Append,
            more_in_commit: false,
        }
    }

    fn uuid_of(wire: Option<shared::Uuid>) -> Uuid {
        match wire.and_then(|u| u.value) {
            Some(shared::uuid::Value::Structured(s)) => Uuid::from_u64_pair(
                s.most_significant_bits as u64,
                s.least_significant_bits as u64,
            ),
            other => panic!("not a structured UUID: {other:?}"),
        }
    }

    /// Decodes with the server's generated code and checks every field.
    fn check(expected: ExpectedRevision, events: &[Event]) {
        let correlation = Uuid::new_v4();
        let now = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let refs: Vec<&Event> = events.iter().collect();
        let bytes = encode_request(correlation, "orders-1", expected, &refs, now);
        let request = streams::BatchAppendReq::decode(bytes).unwrap();
        assert!(request.is_final);
        assert_eq!(uuid_of(request.correlation_id), correlation);
        let options = request.options.unwrap();
        assert_eq!(
            &options.stream_identifier.unwrap().stream_name[..],
            b"orders-1"
        );
        let wire_expected = options.expected_stream_position.unwrap();
        match (expected, wire_expected) {
            (ExpectedRevision::Exact(r), ExpectedStreamPosition::StreamPosition(w)) => {
                assert_eq!(r, w)
            }
            (ExpectedRevision::NoStream, ExpectedStreamPosition::NoStream(())) => {}
            (ExpectedRevision::Any, ExpectedStreamPosition::Any(())) => {}
            (ExpectedRevision::StreamExists, ExpectedStreamPosition::StreamExists(())) => {}
            (ours, theirs) => panic!("{ours:?} sent as {theirs:?}"),
        }
        match options.deadline_option.unwrap() {
            DeadlineOption::Deadline(d) => {
                assert_eq!((d.seconds, d.nanos), (1_700_003_600, 123_456_789))
            }
            other => panic!("deadline sent as {other:?}"),
        }
        assert_eq!(request.proposed_messages.len(), events.len());
        for (sent, event) in request.proposed_messages.into_iter().zip(events) {
            assert_eq!(uuid_of(sent.id), event.id);
            assert_eq!(sent.metadata.get("type").unwrap(), &event.event_type);
            let json =
                event.content_type == ContentType::Json && std::str::from_utf8(&event.data).is_ok();
            let content_type = if json {
                "application/json"
            } else {
                "application/octet-stream"
            };
            assert_eq!(sent.metadata.get("content-type").unwrap(), content_type);
            assert_eq!(sent.metadata.len(), 2);
            assert_eq!(sent.data, event.data);
            assert_eq!(sent.custom_metadata, event.metadata);
        }
    }

    #[test]
    fn a_request_holds_what_the_client_would_send() {
        let events = [
            event("OrderPlaced", ContentType::Json, br#"{"a":1}"#, b"{}"),
            event("Binary", ContentType::Binary, b"\x00\xff", b""),
            event("Empty", ContentType::Json, b"", b""),
            event("NotUtf8", ContentType::Json, b"\xff\xfe", b"m"),
        ];
        check(ExpectedRevision::Exact(0), &events);
        check(ExpectedRevision::Exact(u64::MAX - 1), &events);
        check(ExpectedRevision::NoStream, &events[..1]);
        check(ExpectedRevision::Any, &events[..2]);
        check(ExpectedRevision::StreamExists, &events);
        check(ExpectedRevision::NoStream, &[]);
    }

    proptest! {
        #[test]
        fn any_batch_is_encoded_exactly(
            batch in proptest::collection::vec(
                (
                    "[a-zA-Z$-]{0,40}",
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..400),
                    proptest::collection::vec(any::<u8>(), 0..200),
                ),
                0..12,
            ),
            revision in any::<u64>(),
        ) {
            let events: Vec<Event> = batch
                .iter()
                .map(|(t, json, data, meta)| {
                    let content_type = if *json { ContentType::Json } else { ContentType::Binary };
                    event(t, content_type, data, meta)
                })
                .collect();
            check(ExpectedRevision::Exact(revision), &events);
        }
    }
}
