//! Reads and subscriptions (`Streams.Read`), with their answers decoded
//! straight into the pipeline's [`Event`]: the `$all` subscription of the
//! reader, and every other read of the crate ([`super::client`]).
//!
//! The `eventstore` client decodes every record into a message holding a
//! `HashMap<String, String>` of system metadata, then into its own
//! `RecordedEvent`, which the reader turned into an [`Event`]: about half the
//! replicator's instructions per event. Here one pass over the message's
//! bytes picks out what an [`Event`] needs; the data and user metadata are
//! slices of the received buffer, not copies.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use replicator_core::{ContentType, Event, Position};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;
use uuid::Uuid;

use super::channel::WireChannel;
use super::proto::{
    AllOptions, AllPosition, Empty, FilterExpression, FilterOptions, ReadOptions, ReadReq,
    UuidOption,
};
use crate::classify::classify;

/// One answer of a `$all` subscription.
#[derive(Debug)]
pub(crate) enum ReadItem {
    /// A record (the link itself for a link event: links are not resolved).
    Event(Event),
    /// The server set the subscription up.
    Confirmed(String),
    /// The subscription reached the end of `$all` and follows it live.
    CaughtUp,
    /// The subscription fell behind and catches up from the log again.
    FellBehind,
    /// A filtered subscription searched `$all` up to here.
    Checkpoint(Position),
    /// The stream read does not exist (or is soft-deleted).
    StreamNotFound,
    /// Anything else (positions, a read event without a record): nothing to
    /// hand on.
    Other,
}

/// A catch-up subscription to `$all` on a [`WireChannel`].
pub(crate) struct AllSubscription {
    stream: tonic::Streaming<ReadItem>,
}

impl AllSubscription {
    /// Subscribes to `$all` strictly after `after` (from the start when
    /// `None`). Returns once the server has answered the call; the first item
    /// is normally [`ReadItem::Confirmed`].
    pub(crate) async fn start(
        channel: &WireChannel,
        after: Option<Position>,
    ) -> Result<Self, eventstore::Error> {
        Self::start_filtered(channel, after, None).await
    }

    /// As [`AllSubscription::start`], with only the records whose event type
    /// matches `filter` (a regular expression) and a
    /// [`ReadItem::Checkpoint`] every `window` records searched.
    pub(crate) async fn start_filtered(
        channel: &WireChannel,
        after: Option<Position>,
        filter: Option<(&str, u32)>,
    ) -> Result<Self, eventstore::Error> {
        let all = match after {
            Some(position) => AllOptions {
                position: Some(AllPosition::from(position)),
                start: None,
                end: None,
            },
            None => AllOptions {
                position: None,
                start: Some(Empty {}),
                end: None,
            },
        };
        let filter = filter.map(|(regex, window)| FilterOptions {
            event_type: Some(FilterExpression {
                regex: regex.to_owned(),
            }),
            max: Some(window),
            checkpoint_interval_multiplier: 1,
        });
        let request = ReadReq {
            options: Some(ReadOptions {
                stream: None,
                all: Some(all),
                read_direction: 0,
                resolve_links: false,
                count: None,
                subscription: Some(Empty {}),
                no_filter: filter.is_none().then_some(Empty {}),
                filter,
                // Ids as text, as the client asks for them (asking for
                // the structured form saved nothing measurable).
                uuid_option: Some(UuidOption {
                    string: Some(Empty {}),
                }),
                control_option: None,
            }),
        };
        Ok(AllSubscription {
            stream: read_call(channel, request, false).await?,
        })
    }

    /// The next answer. The server ending the call, however, is an error: a
    /// subscription to `$all` has no end.
    pub(crate) async fn next(&mut self) -> Result<ReadItem, eventstore::Error> {
        match self.stream.message().await {
            Ok(Some(item)) => Ok(item),
            Ok(None) => Err(eventstore::Error::ServerError(
                "the server ended the subscription".to_owned(),
            )),
            Err(status) => Err(eventstore::Error::from_grpc(status)),
        }
    }
}

/// The position of the last record in `$all` (`None`: empty), read
/// backwards from its end on `channel`: without the `eventstore` client's
/// delayed ACK, which the sink would wait for at the start of every replay
/// region.
pub(crate) async fn last_position(
    channel: &WireChannel,
) -> Result<Option<Position>, eventstore::Error> {
    let request = ReadReq {
        options: Some(ReadOptions {
            stream: None,
            all: Some(AllOptions {
                position: None,
                start: None,
                end: Some(Empty {}),
            }),
            // Backwards.
            read_direction: 1,
            resolve_links: false,
            count: Some(1),
            subscription: None,
            filter: None,
            no_filter: Some(Empty {}),
            uuid_option: Some(UuidOption {
                string: Some(Empty {}),
            }),
            control_option: None,
        }),
    };
    let mut answers = read_call(channel, request, false).await?;
    while let Some(item) = answers.message().await.map_err(|s| channel.error(s))? {
        if let ReadItem::Event(event) = item {
            return Ok(Some(event.position));
        }
    }
    Ok(None)
}

/// Makes a `Streams.Read` call; returns once the server has answered it.
/// `requires_leader` asks a node other than the leader to refuse it (the
/// channel asks that of every call when `nodePreference` is the leader).
pub(crate) async fn read_call(
    channel: &WireChannel,
    request: ReadReq,
    requires_leader: bool,
) -> Result<tonic::Streaming<ReadItem>, eventstore::Error> {
    let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
    let path = http::uri::PathAndQuery::from_static("/event_store.client.streams.Streams/Read");
    let mut request = channel.request(request);
    if requires_leader {
        request.metadata_mut().insert(
            "requires-leader",
            tonic::metadata::MetadataValue::from_static("true"),
        );
    }
    Ok(grpc
        .server_streaming(request, path, ReadCodec)
        .await
        .map_err(|s| channel.error(s))?
        .into_inner())
}

/// Sends a `ReadReq`, decodes `ReadResp`s into [`ReadItem`]s.
struct ReadCodec;

impl Codec for ReadCodec {
    type Encode = ReadReq;
    type Decode = ReadItem;
    type Encoder = ReadReqEncoder;
    type Decoder = ReadRespDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ReadReqEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ReadRespDecoder
    }
}

struct ReadReqEncoder;

impl Encoder for ReadReqEncoder {
    type Item = ReadReq;
    type Error = Status;

    fn encode(&mut self, item: ReadReq, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        prost::Message::encode(&item, dst).map_err(|e| Status::internal(e.to_string()))
    }
}

struct ReadRespDecoder;

impl Decoder for ReadRespDecoder {
    type Item = ReadItem;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ReadItem>, Status> {
        use bytes::Buf;
        // The whole message as one `Bytes`: a split of tonic's buffer, not a
        // copy.
        let message = src.copy_to_bytes(src.remaining());
        decode_read_resp(&message).map(Some).map_err(|problem| {
            Status::internal(format!("a read's answer cannot be read: {problem}"))
        })
    }
}

/// Decodes one `ReadResp` (`streams.proto`).
pub(crate) fn decode_read_resp(message: &Bytes) -> Result<ReadItem, &'static str> {
    let mut item = ReadItem::Other;
    let mut fields = Fields::new(message);
    while let Some(field) = fields.next()? {
        item = match field {
            // event = 1: ReadEvent { event = 1, link = 2, ... }
            (1, Value::Len(range)) => {
                let read_event = message.slice(range);
                let mut event = None;
                let mut link = None;
                let mut inner = Fields::new(&read_event);
                while let Some(field) = inner.next()? {
                    match field {
                        (1, Value::Len(r)) => event = Some(r),
                        (2, Value::Len(r)) => link = Some(r),
                        _ => {}
                    }
                }
                match link.or(event) {
                    Some(range) => ReadItem::Event(decode_record(&read_event.slice(range))?),
                    None => ReadItem::Other,
                }
            }
            // confirmation = 2: SubscriptionConfirmation { subscription_id = 1 }
            (2, Value::Len(range)) => {
                let confirmation = message.slice(range);
                let mut id = String::new();
                let mut inner = Fields::new(&confirmation);
                while let Some(field) = inner.next()? {
                    if let (1, Value::Len(r)) = field {
                        id = String::from_utf8_lossy(&confirmation[r]).into_owned();
                    }
                }
                ReadItem::Confirmed(id)
            }
            // checkpoint = 3: Checkpoint { commit_position = 1, prepare_position = 2 }
            (3, Value::Len(range)) => {
                let checkpoint = &message[range];
                let mut at = Position {
                    commit: 0,
                    prepare: 0,
                };
                let mut inner = Fields::new(checkpoint);
                while let Some(field) = inner.next()? {
                    match field {
                        (1, Value::Varint(v)) => at.commit = v,
                        (2, Value::Varint(v)) => at.prepare = v,
                        _ => {}
                    }
                }
                ReadItem::Checkpoint(at)
            }
            (4, Value::Len(_)) => ReadItem::StreamNotFound,
            (8, Value::Len(_)) => ReadItem::CaughtUp,
            (9, Value::Len(_)) => ReadItem::FellBehind,
            // The rest of the `content` oneof: nothing to hand on.
            (5..=7, _) => ReadItem::Other,
            // A field this decoder does not know (a newer server's, outside
            // the oneof) leaves what was read before it alone: prost, and so
            // the client, ignores it too. Replacing the event would lose it.
            _ => continue,
        };
    }
    Ok(item)
}

/// Decodes a `ReadResp.ReadEvent.RecordedEvent` into an [`Event`], as the
/// `eventstore` client reads one: a missing type is empty, the content type
/// is JSON only for `application/json`, `created` (ticks of 100 ns since the
/// Unix epoch) is kept to the second, an invalid UTF-8 stream name is
/// repaired.
fn decode_record(record: &Bytes) -> Result<Event, &'static str> {
    let mut id = Uuid::nil();
    let mut stream: Option<std::ops::Range<usize>> = None;
    let mut revision = 0;
    let mut prepare = 0;
    let mut commit = 0;
    let mut event_type = String::new();
    let mut is_json = false;
    let mut created_ticks: u64 = 0;
    let mut metadata = Bytes::new();
    let mut data = Bytes::new();
    let mut fields = Fields::new(record);
    while let Some(field) = fields.next()? {
        match field {
            (1, Value::Len(r)) => id = decode_uuid(&record[r])?,
            (2, Value::Len(r)) => {
                // StreamIdentifier { stream_name = 3 }
                let identifier = &record[r.clone()];
                let mut inner = Fields::new(identifier);
                while let Some(field) = inner.next()? {
                    if let (3, Value::Len(name)) = field {
                        stream = Some(r.start + name.start..r.start + name.end);
                    }
                }
            }
            (3, Value::Varint(v)) => revision = v,
            (4, Value::Varint(v)) => prepare = v,
            (5, Value::Varint(v)) => commit = v,
            (6, Value::Len(r)) => {
                // map<string, string> entry { key = 1, value = 2 }
                let entry = &record[r];
                let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
                let mut inner = Fields::new(entry);
                while let Some(field) = inner.next()? {
                    match field {
                        (1, Value::Len(k)) => key = &entry[k],
                        (2, Value::Len(v)) => value = &entry[v],
                        _ => {}
                    }
                }
                match key {
                    b"type" => {
                        event_type = std::str::from_utf8(value)
                            .map_err(|_| "an event type is not UTF-8")?
                            .to_owned()
                    }
                    b"content-type" => is_json = value == b"application/json",
                    b"created" => created_ticks = parse_ticks(value),
                    _ => {}
                }
            }
            (7, Value::Len(r)) => metadata = record.slice(r),
            (8, Value::Len(r)) => data = record.slice(r),
            _ => {}
        }
    }
    let stream = match stream {
        Some(r) => String::from_utf8_lossy(&record[r]).into_owned(),
        None => return Err("a record has no stream"),
    };
    let kind = classify(&stream, &event_type, &data);
    Ok(Event {
        id,
        kind,
        revision,
        content_type: if is_json {
            ContentType::Json
        } else {
            ContentType::Binary
        },
        created: SystemTime::UNIX_EPOCH + Duration::from_secs(created_ticks / 10_000_000),
        position: Position { commit, prepare },
        stream,
        event_type,
        data,
        metadata,
        more_in_commit: false,
    })
}

/// Decimal ticks, as `str::parse::<u64>` reads them; 0 when they are not a
/// number (the client's fallback).
fn parse_ticks(digits: &[u8]) -> u64 {
    let mut ticks: u64 = 0;
    let digits = match digits {
        [b'+', rest @ ..] => rest,
        all => all,
    };
    if digits.is_empty() {
        return 0;
    }
    // Up to 19 digits cannot overflow: no checks per digit (ticks since
    // 1970 have 17 digits for centuries).
    if digits.len() <= 19 {
        for &d in digits {
            let d = d.wrapping_sub(b'0');
            if d > 9 {
                return 0;
            }
            ticks = ticks * 10 + u64::from(d);
        }
        return ticks;
    }
    for &d in digits {
        if !d.is_ascii_digit() {
            return 0;
        }
        match ticks
            .checked_mul(10)
            .and_then(|t| t.checked_add(u64::from(d - b'0')))
        {
            Some(t) => ticks = t,
            None => return 0,
        }
    }
    ticks
}

/// `event_store.client.UUID`: `structured = 1` (two big-endian halves) or
/// `string = 2`; nil when absent.
fn decode_uuid(uuid: &[u8]) -> Result<Uuid, &'static str> {
    let mut fields = Fields::new(uuid);
    let mut id = Uuid::nil();
    while let Some(field) = fields.next()? {
        match field {
            (1, Value::Len(r)) => {
                let (mut most, mut least) = (0u64, 0u64);
                let mut inner = Fields::new(&uuid[r.clone()]);
                while let Some(field) = inner.next()? {
                    match field {
                        (1, Value::Varint(v)) => most = v,
                        (2, Value::Varint(v)) => least = v,
                        _ => {}
                    }
                }
                id = Uuid::from_u64_pair(most, least);
            }
            (2, Value::Len(r)) => {
                id = std::str::from_utf8(&uuid[r])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("an event id is not a UUID")?;
            }
            _ => {}
        }
    }
    Ok(id)
}

/// A field's value: a varint, or the range of a length-delimited payload
/// within the message. Fixed-width values are skipped (none is needed).
enum Value {
    Varint(u64),
    Len(std::ops::Range<usize>),
    Fixed,
}

/// The fields of one protobuf message, in order.
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    #[inline]
    fn varint(&mut self) -> Result<u64, &'static str> {
        // One byte: tags, lengths of short fields, small numbers.
        if let Some(&byte) = self.bytes.get(self.at) {
            if byte < 0x80 {
                self.at += 1;
                return Ok(u64::from(byte));
            }
        }
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or("a message ends inside a number")?;
            self.at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("a number is longer than ten bytes")
    }

    #[inline]
    fn skip(&mut self, len: usize) -> Result<std::ops::Range<usize>, &'static str> {
        let start = self.at;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("a field runs past the end of its message")?;
        self.at = end;
        Ok(start..end)
    }

    /// The next field number and value, `None` at the end.
    #[inline]
    fn next(&mut self) -> Result<Option<(u32, Value)>, &'static str> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = u32::try_from(key >> 3).map_err(|_| "a field number is too large")?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.skip(8)?;
                Value::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "a field is too long")?;
                Value::Len(self.skip(len)?)
            }
            5 => {
                self.skip(4)?;
                Value::Fixed
            }
            _ => return Err("a field has an unknown wire type"),
        };
        Ok(Some((number, value)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message;
    use replicator_core::ChangeKind;
    use replicator_testkit::proto::{shared, streams};
    use streams::read_resp::{self, read_event};

    /// A `ReadResp` as the server encodes it (the testkit's generated code).
    fn server_record(
        stream: &[u8],
        system: &[(&str, &str)],
        id: shared::uuid::Value,
        data: &[u8],
        metadata: &[u8],
        (revision, commit, prepare): (u64, u64, u64),
    ) -> read_event::RecordedEvent {
        read_event::RecordedEvent {
            id: Some(shared::Uuid { value: Some(id) }),
            stream_identifier: Some(shared::StreamIdentifier {
                stream_name: stream.to_vec().into(),
            }),
            stream_revision: revision,
            prepare_position: prepare,
            commit_position: commit,
            metadata: system
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            custom_metadata: metadata.to_vec().into(),
            data: data.to_vec().into(),
        }
    }

    fn encoded(content: read_resp::Content) -> Bytes {
        streams::ReadResp {
            content: Some(content),
        }
        .encode_to_vec()
        .into()
    }

    fn event_of(
        record: read_event::RecordedEvent,
        link: Option<read_event::RecordedEvent>,
    ) -> Event {
        let message = encoded(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(record),
            link,
            position: Some(read_event::Position::CommitPosition(1)),
        }));
        match decode_read_resp(&message).unwrap() {
            ReadItem::Event(event) => event,
            other => panic!("not an event: {other:?}"),
        }
    }

    #[test]
    fn a_record_keeps_every_field_the_pipeline_copies() {
        let id = Uuid::new_v4();
        let record = server_record(
            b"orders-1",
            &[
                ("type", "OrderPlaced"),
                ("content-type", "application/json"),
                ("created", "17000000001234567"),
            ],
            shared::uuid::Value::String(id.to_string()),
            br#"{"a":1}"#,
            b"\x00\xffmeta",
            (7, 300, 299),
        );
        let event = event_of(record, None);
        assert_eq!(event.id, id);
        assert_eq!(event.stream, "orders-1");
        assert_eq!(event.revision, 7);
        assert_eq!(
            event.position,
            Position {
                commit: 300,
                prepare: 299
            }
        );
        assert_eq!(event.event_type, "OrderPlaced");
        assert_eq!(event.content_type, ContentType::Json);
        assert_eq!(&event.data[..], br#"{"a":1}"#);
        assert_eq!(&event.metadata[..], b"\x00\xffmeta");
        assert_eq!(event.kind, ChangeKind::Append);
        assert_eq!(
            event.created,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
        );
    }

    #[test]
    fn binary_content_structured_ids_links_and_system_records_are_read_as_the_client_reads_them() {
        let id = Uuid::new_v4();
        let (most, least) = id.as_u64_pair();
        let record = server_record(
            b"$$orders-1",
            &[
                ("type", "$metadata"),
                ("content-type", "application/octet-stream"),
            ],
            shared::uuid::Value::Structured(shared::uuid::Structured {
                most_significant_bits: most as i64,
                least_significant_bits: least as i64,
            }),
            br#"{"$tb":9223372036854775807}"#,
            b"",
            (0, 5, 5),
        );
        let event = event_of(record.clone(), None);
        assert_eq!(event.id, id);
        assert_eq!(event.content_type, ContentType::Binary);
        assert_eq!(event.kind, ChangeKind::SoftDelete);
        assert_eq!(event.created, SystemTime::UNIX_EPOCH);

        // A link, when present, is the record handed on.
        let link = server_record(
            b"$ce-orders",
            &[("type", "$>")],
            shared::uuid::Value::String(Uuid::new_v4().to_string()),
            b"0@orders-1",
            b"",
            (3, 9, 9),
        );
        let event = event_of(record, Some(link));
        assert_eq!(event.stream, "$ce-orders");
        assert_eq!(
            event.position,
            Position {
                commit: 9,
                prepare: 9
            }
        );
    }

    #[test]
    fn created_ticks_are_read_as_the_client_reads_them() {
        for text in [
            "0",
            "17000000001234567",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "12a",
            "-1",
            " 1",
        ] {
            assert_eq!(
                parse_ticks(text.as_bytes()),
                text.parse::<u64>().unwrap_or(0),
                "{text:?}"
            );
        }
    }

    #[test]
    fn confirmations_and_notices_are_told_apart() {
        let confirmed = encoded(read_resp::Content::Confirmation(
            read_resp::SubscriptionConfirmation {
                subscription_id: "sub-1".into(),
            },
        ));
        assert!(
            matches!(decode_read_resp(&confirmed), Ok(ReadItem::Confirmed(id)) if id == "sub-1")
        );
        let caught_up = encoded(read_resp::Content::CaughtUp(read_resp::CaughtUp {}));
        assert!(matches!(
            decode_read_resp(&caught_up),
            Ok(ReadItem::CaughtUp)
        ));
        let behind = encoded(read_resp::Content::FellBehind(read_resp::FellBehind {}));
        assert!(matches!(
            decode_read_resp(&behind),
            Ok(ReadItem::FellBehind)
        ));
        let checkpoint = encoded(read_resp::Content::Checkpoint(read_resp::Checkpoint {
            commit_position: 1,
            prepare_position: 1,
        }));
        assert!(matches!(
            decode_read_resp(&checkpoint),
            Ok(ReadItem::Checkpoint(Position {
                commit: 1,
                prepare: 1
            }))
        ));
        let not_found = encoded(read_resp::Content::StreamNotFound(
            read_resp::StreamNotFound {
                stream_identifier: None,
            },
        ));
        assert!(matches!(
            decode_read_resp(&not_found),
            Ok(ReadItem::StreamNotFound)
        ));
    }

    /// A `ReadResp` holding one event of `orders-1` with `data`.
    fn one_event(data: &[u8]) -> Bytes {
        let record = server_record(
            b"orders-1",
            &[("type", "E")],
            shared::uuid::Value::String(Uuid::new_v4().to_string()),
            data,
            b"",
            (0, 1, 1),
        );
        encoded(read_resp::Content::Event(read_resp::ReadEvent {
            event: Some(record),
            link: None,
            position: None,
        }))
    }

    #[test]
    fn an_unknown_field_after_an_event_keeps_the_event() {
        let mut message = one_event(b"x").to_vec();
        // Field 20, a varint, and field 21, a string: what a newer server
        // could add beside the oneof.
        message.extend_from_slice(&[20 << 3, 1, 21 << 3 | 2, 2, b'h', b'i']);
        let item = decode_read_resp(&Bytes::from(message)).unwrap();
        assert!(matches!(item, ReadItem::Event(e) if e.stream == "orders-1"));
    }

    #[test]
    fn a_cut_message_is_an_error_not_an_event() {
        let message = one_event(b"0123456789");
        for cut in 1..message.len() {
            let short = message.slice(..cut);
            assert!(
                !matches!(decode_read_resp(&short), Ok(ReadItem::Event(_))),
                "cut at {cut} of {} still decoded",
                message.len()
            );
        }
    }

    proptest! {
        #[test]
        fn any_record_decodes_to_what_the_server_sent(
            stream in "[a-z$][a-zA-Z0-9$-]{0,20}",
            event_type in "[a-zA-Z$>]{0,12}",
            json in any::<bool>(),
            data in proptest::collection::vec(any::<u8>(), 0..300),
            metadata in proptest::collection::vec(any::<u8>(), 0..50),
            revision in any::<u64>(),
            commit in any::<u64>(),
            prepare in any::<u64>(),
            extra in "[a-z]{1,8}",
        ) {
            let id = Uuid::new_v4();
            let content_type = if json { "application/json" } else { "application/octet-stream" };
            let record = server_record(
                stream.as_bytes(),
                &[("type", &event_type), ("content-type", content_type), (&extra, "x")],
                shared::uuid::Value::String(id.to_string()),
                &data,
                &metadata,
                (revision, commit, prepare),
            );
            let event = event_of(record, None);
            prop_assert_eq!(event.id, id);
            prop_assert_eq!(&event.stream, &stream);
            prop_assert_eq!(&event.event_type, &event_type);
            prop_assert_eq!(event.content_type == ContentType::Json, json);
            prop_assert_eq!(&event.data[..], &data[..]);
            prop_assert_eq!(&event.metadata[..], &metadata[..]);
            prop_assert_eq!(event.revision, revision);
            prop_assert_eq!(event.position, Position { commit, prepare });
            prop_assert_eq!(event.kind, classify(&stream, &event_type, &data));
        }
    }
}
