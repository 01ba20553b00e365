//! The few v5 `ClientMessageDtos.proto` messages the reader sends or reads
//! (proto2, package `EventStore.Client.Messages`; field numbers from
//! docs/tcp-protocol.md §3), as hand-written `prost` messages. `required`
//! fields are always written: the .NET server's protobuf-net refuses a
//! message without them. Enums are read as plain `int32`.

use replicator_core::Position;
use uuid::Uuid;

use super::connection::TcpError;

/// `EventRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EventRecord {
    #[prost(string, required, tag = "1")]
    pub event_stream_id: String,
    #[prost(int64, required, tag = "2")]
    pub event_number: i64,
    /// .NET GUID byte order.
    #[prost(bytes = "bytes", required, tag = "3")]
    pub event_id: bytes::Bytes,
    #[prost(string, required, tag = "4")]
    pub event_type: String,
    /// 1: JSON, 0: binary.
    #[prost(int32, required, tag = "5")]
    pub data_content_type: i32,
    #[prost(int32, required, tag = "6")]
    pub metadata_content_type: i32,
    #[prost(bytes = "bytes", required, tag = "7")]
    pub data: bytes::Bytes,
    #[prost(bytes = "bytes", optional, tag = "8")]
    pub metadata: Option<bytes::Bytes>,
    /// .NET `DateTime.ToBinary()`.
    #[prost(int64, optional, tag = "9")]
    pub created: Option<i64>,
    /// Milliseconds since the Unix epoch.
    #[prost(int64, optional, tag = "10")]
    pub created_epoch: Option<i64>,
}

/// `ResolvedEvent`, one record of a `$all` read. `event` is `optional`
/// (proto2 says `required`): an unresolvable link may leave it out.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResolvedEvent {
    #[prost(message, optional, tag = "1")]
    pub event: Option<EventRecord>,
    #[prost(message, optional, tag = "2")]
    pub link: Option<EventRecord>,
    #[prost(int64, required, tag = "3")]
    pub commit_position: i64,
    #[prost(int64, required, tag = "4")]
    pub prepare_position: i64,
}

/// `ResolvedIndexedEvent`, one record of a stream read. `event` is
/// `optional` (proto2 says `required`), as in [`ResolvedEvent`].
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ResolvedIndexedEvent {
    #[prost(message, optional, tag = "1")]
    pub event: Option<EventRecord>,
    #[prost(message, optional, tag = "2")]
    pub link: Option<EventRecord>,
}

/// `ReadStreamEvents`, sent with ReadStreamEventsForward (0xB2) and
/// Backward (0xB4).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadStreamEvents {
    #[prost(string, required, tag = "1")]
    pub event_stream_id: String,
    /// Backwards, -1 is the stream's last event.
    #[prost(int64, required, tag = "2")]
    pub from_event_number: i64,
    #[prost(int32, required, tag = "3")]
    pub max_count: i32,
    #[prost(bool, required, tag = "4")]
    pub resolve_link_tos: bool,
    #[prost(bool, required, tag = "5")]
    pub require_master: bool,
}

/// `ReadStreamEventsCompleted.ReadStreamResult`.
pub(crate) mod read_stream_result {
    pub(crate) const SUCCESS: i32 = 0;
    pub(crate) const NO_STREAM: i32 = 1;
    pub(crate) const STREAM_DELETED: i32 = 2;
    pub(crate) const NOT_MODIFIED: i32 = 3;
    pub(crate) const ERROR: i32 = 4;
    pub(crate) const ACCESS_DENIED: i32 = 5;
}

/// `ReadStreamEventsCompleted`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadStreamEventsCompleted {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<ResolvedIndexedEvent>,
    #[prost(int32, required, tag = "2")]
    pub result: i32,
    #[prost(int64, required, tag = "3")]
    pub next_event_number: i64,
    #[prost(int64, required, tag = "4")]
    pub last_event_number: i64,
    #[prost(bool, required, tag = "5")]
    pub is_end_of_stream: bool,
    #[prost(int64, required, tag = "6")]
    pub last_commit_position: i64,
    #[prost(string, optional, tag = "7")]
    pub error: Option<String>,
}

/// `ReadAllEvents`, sent with ReadAllEventsForward (0xB6) and Backward (0xB8).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct ReadAllEvents {
    #[prost(int64, required, tag = "1")]
    pub commit_position: i64,
    #[prost(int64, required, tag = "2")]
    pub prepare_position: i64,
    #[prost(int32, required, tag = "3")]
    pub max_count: i32,
    #[prost(bool, required, tag = "4")]
    pub resolve_link_tos: bool,
    #[prost(bool, required, tag = "5")]
    pub require_master: bool,
}

/// `ReadAllEventsCompleted.ReadAllResult`.
pub(crate) mod read_all_result {
    pub(crate) const SUCCESS: i32 = 0;
    pub(crate) const NOT_MODIFIED: i32 = 1;
    pub(crate) const ERROR: i32 = 2;
    pub(crate) const ACCESS_DENIED: i32 = 3;
}

/// `ReadAllEventsCompleted`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadAllEventsCompleted {
    #[prost(int64, required, tag = "1")]
    pub commit_position: i64,
    #[prost(int64, required, tag = "2")]
    pub prepare_position: i64,
    #[prost(message, repeated, tag = "3")]
    pub events: Vec<ResolvedEvent>,
    #[prost(int64, required, tag = "4")]
    pub next_commit_position: i64,
    #[prost(int64, required, tag = "5")]
    pub next_prepare_position: i64,
    /// Absent means Success.
    #[prost(int32, optional, tag = "6")]
    pub result: Option<i32>,
    #[prost(string, optional, tag = "7")]
    pub error: Option<String>,
}

/// `NotHandled`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NotHandled {
    /// NotReady = 0, TooBusy = 1, NotMaster = 2 (KurrentDB: NotLeader),
    /// IsReadOnly = 3 (KurrentDB).
    #[prost(int32, required, tag = "1")]
    pub reason: i32,
    #[prost(bytes = "bytes", optional, tag = "2")]
    pub additional_info: Option<bytes::Bytes>,
}

/// `NotHandled.MasterInfo` (KurrentDB: `LeaderInfo`): the leader's
/// endpoints, in `NotHandled.additional_info` when the reason is NotMaster.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MasterInfo {
    #[prost(string, required, tag = "1")]
    pub external_tcp_address: String,
    #[prost(int32, required, tag = "2")]
    pub external_tcp_port: i32,
    #[prost(string, required, tag = "3")]
    pub external_http_address: String,
    #[prost(int32, required, tag = "4")]
    pub external_http_port: i32,
    #[prost(string, optional, tag = "5")]
    pub external_secure_tcp_address: Option<String>,
    #[prost(int32, optional, tag = "6")]
    pub external_secure_tcp_port: Option<i32>,
}

/// `IdentifyClient`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct IdentifyClient {
    /// 1: 64-bit event numbers (docs §3.6).
    #[prost(int32, required, tag = "1")]
    pub version: i32,
    #[prost(string, optional, tag = "2")]
    pub connection_name: Option<String>,
}

/// `SubscribeToStream` (`""`: `$all`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SubscribeToStream {
    #[prost(string, required, tag = "1")]
    pub event_stream_id: String,
    #[prost(bool, required, tag = "2")]
    pub resolve_link_tos: bool,
}

/// A position the node sent; negative parts are not positions of records.
pub(crate) fn position(commit: i64, prepare: i64) -> Result<Position, TcpError> {
    match (u64::try_from(commit), u64::try_from(prepare)) {
        (Ok(commit), Ok(prepare)) => Ok(Position { commit, prepare }),
        _ => Err(TcpError::Protocol(format!(
            "the position C:{commit}/P:{prepare}"
        ))),
    }
}

/// A part of a position as the wire carries it: positions beyond
/// `i64::MAX` do not exist on a node, so it is clamped.
pub(crate) fn as_wire(part: u64) -> i64 {
    i64::try_from(part).unwrap_or(i64::MAX)
}

impl EventRecord {
    /// The event id, from .NET GUID byte order (docs/tcp-protocol.md §4.9).
    pub(crate) fn id(&self) -> Result<Uuid, TcpError> {
        Uuid::from_slice_le(&self.event_id).map_err(|_| {
            TcpError::Protocol(format!("an event id of {} bytes", self.event_id.len()))
        })
    }

    /// The event number as a revision (never negative for a record).
    pub(crate) fn revision(&self) -> Result<u64, TcpError> {
        u64::try_from(self.event_number)
            .map_err(|_| TcpError::Protocol(format!("the event number {}", self.event_number)))
    }
}

/// A JSON record of stream `s` at revision 3 whose id, in .NET GUID byte
/// order, is 3cd53ad8-54d3-4f4a-b116-1f09957af330: what the readers' tests
/// decode.
#[cfg(test)]
pub(crate) fn sample_record() -> EventRecord {
    let wire = [
        0xd8, 0x3a, 0xd5, 0x3c, 0xd3, 0x54, 0x4a, 0x4f, 0xb1, 0x16, 0x1f, 0x09, 0x95, 0x7a, 0xf3,
        0x30,
    ];
    EventRecord {
        event_stream_id: "s".into(),
        event_number: 3,
        event_id: bytes::Bytes::copy_from_slice(&wire),
        event_type: "T".into(),
        data_content_type: 1,
        metadata_content_type: 1,
        data: bytes::Bytes::from_static(b"{}"),
        metadata: None,
        created: None,
        created_epoch: None,
    }
}
