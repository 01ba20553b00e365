//! The few EventStoreDB gRPC messages the wire calls send, and the gossip
//! answer they read, as `prost` messages (field numbers from the server's
//! `streams.proto`, `shared.proto` and `gossip.proto`). Only what is sent or
//! needed is declared: protobuf skips the rest.
//!
//! The hot answer, a `$all` read's `ReadResp`, is not here: it is decoded by
//! hand in [`super::read`], straight into the pipeline's
//! [`replicator_core::Event`].

/// `event_store.client.Empty`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct Empty {}

/// `event_store.client.streams.ReadReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<ReadOptions>,
}

/// `ReadReq.Options`, for a subscription or a read of `$all` or a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ReadOptions {
    /// `stream = 1` of the `stream_option` oneof.
    #[prost(message, optional, tag = "1")]
    pub stream: Option<StreamOptions>,
    /// `all = 2` of the `stream_option` oneof.
    #[prost(message, optional, tag = "2")]
    pub all: Option<AllOptions>,
    /// `Forwards = 0`.
    #[prost(int32, tag = "3")]
    pub read_direction: i32,
    #[prost(bool, tag = "4")]
    pub resolve_links: bool,
    /// `count = 5` of the `count_option` oneof.
    #[prost(uint64, optional, tag = "5")]
    pub count: Option<u64>,
    /// `subscription = 6` of the `count_option` oneof.
    #[prost(message, optional, tag = "6")]
    pub subscription: Option<Empty>,
    /// `filter = 7` of the `filter_option` oneof.
    #[prost(message, optional, tag = "7")]
    pub filter: Option<FilterOptions>,
    /// `no_filter = 8` of the `filter_option` oneof.
    #[prost(message, optional, tag = "8")]
    pub no_filter: Option<Empty>,
    #[prost(message, optional, tag = "9")]
    pub uuid_option: Option<UuidOption>,
    /// Sent by the client on stream reads (`compatibility = 1`).
    #[prost(message, optional, tag = "10")]
    pub control_option: Option<ControlOption>,
}

/// `ReadReq.Options.StreamOptions`: the stream, and `revision = 2`,
/// `start = 3` or `end = 4`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StreamOptions {
    #[prost(message, optional, tag = "1")]
    pub stream_identifier: Option<StreamIdentifier>,
    #[prost(uint64, optional, tag = "2")]
    pub revision: Option<u64>,
    #[prost(message, optional, tag = "3")]
    pub start: Option<Empty>,
    #[prost(message, optional, tag = "4")]
    pub end: Option<Empty>,
}

/// `ReadReq.Options.FilterOptions`, on event types only (`event_type = 2`),
/// with a checkpoint every `max = 3` records searched.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FilterOptions {
    #[prost(message, optional, tag = "2")]
    pub event_type: Option<FilterExpression>,
    #[prost(uint32, optional, tag = "3")]
    pub max: Option<u32>,
    #[prost(uint32, tag = "5")]
    pub checkpoint_interval_multiplier: u32,
}

/// `FilterOptions.Expression` (a regular expression; no prefixes).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FilterExpression {
    #[prost(string, tag = "1")]
    pub regex: String,
}

/// `ReadReq.Options.ControlOption`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct ControlOption {
    #[prost(uint32, tag = "1")]
    pub compatibility: u32,
}

/// `ReadReq.Options.AllOptions`: `position = 1`, `start = 2` or `end = 3`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct AllOptions {
    #[prost(message, optional, tag = "1")]
    pub position: Option<AllPosition>,
    #[prost(message, optional, tag = "2")]
    pub start: Option<Empty>,
    #[prost(message, optional, tag = "3")]
    pub end: Option<Empty>,
}

/// `ReadReq.Options.Position`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct AllPosition {
    #[prost(uint64, tag = "1")]
    pub commit_position: u64,
    #[prost(uint64, tag = "2")]
    pub prepare_position: u64,
}

/// `ReadReq.Options.UUIDOption`: `structured = 1` or `string = 2`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct UuidOption {
    #[prost(message, optional, tag = "2")]
    pub string: Option<Empty>,
}

/// `event_store.client.gossip.ClusterInfo`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ClusterInfo {
    #[prost(message, repeated, tag = "1")]
    pub members: Vec<MemberInfo>,
}

/// `event_store.client.gossip.MemberInfo` (the instance id and time stamp are
/// not needed).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct MemberInfo {
    #[prost(int32, tag = "3")]
    pub state: i32,
    #[prost(bool, tag = "4")]
    pub is_alive: bool,
    #[prost(message, optional, tag = "5")]
    pub http_end_point: Option<EndPoint>,
}

/// `event_store.client.gossip.EndPoint`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct EndPoint {
    #[prost(string, tag = "1")]
    pub address: String,
    #[prost(uint32, tag = "2")]
    pub port: u32,
}

/// `MemberInfo.VNodeState` values the node choice looks at.
pub(crate) mod node_state {
    pub const FOLLOWER: i32 = 6;
    pub const LEADER: i32 = 8;
    pub const MANAGER: i32 = 9;
    pub const SHUTTING_DOWN: i32 = 10;
    pub const SHUTDOWN: i32 = 11;
    pub const READ_ONLY_LEADERLESS: i32 = 12;
    pub const PRE_READ_ONLY_REPLICA: i32 = 13;
    pub const READ_ONLY_REPLICA: i32 = 14;
}

/// `event_store.client.streams.BatchAppendResp` (the stream name and the
/// expected position it echoes are not needed).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct BatchAppendResp {
    #[prost(message, optional, tag = "1")]
    pub correlation_id: Option<WireUuid>,
    #[prost(message, optional, tag = "2")]
    pub error: Option<RpcStatus>,
    #[prost(message, optional, tag = "3")]
    pub success: Option<BatchSuccess>,
}

/// `google.rpc.Status` (its details are not read).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

/// `BatchAppendResp.Success`: `current_revision = 1` or `no_stream = 2`,
/// `position = 3` or `no_position = 4`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct BatchSuccess {
    #[prost(uint64, optional, tag = "1")]
    pub current_revision: Option<u64>,
    #[prost(message, optional, tag = "3")]
    pub position: Option<AllPosition>,
}

/// `event_store.client.UUID`: `structured = 1` or `string = 2`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct WireUuid {
    #[prost(message, optional, tag = "1")]
    pub structured: Option<StructuredUuid>,
    #[prost(string, optional, tag = "2")]
    pub string: Option<String>,
}

/// `UUID.Structured`: the two big-endian halves.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct StructuredUuid {
    #[prost(int64, tag = "1")]
    pub most_significant_bits: i64,
    #[prost(int64, tag = "2")]
    pub least_significant_bits: i64,
}

impl WireUuid {
    pub(crate) fn to_uuid(&self) -> Option<uuid::Uuid> {
        match (&self.structured, &self.string) {
            (Some(s), _) => Some(uuid::Uuid::from_u64_pair(
                s.most_significant_bits as u64,
                s.least_significant_bits as u64,
            )),
            (None, Some(text)) => text.parse().ok(),
            (None, None) => None,
        }
    }
}

/// `event_store.client.StreamIdentifier`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StreamIdentifier {
    #[prost(bytes = "vec", tag = "3")]
    pub stream_name: Vec<u8>,
}

/// `event_store.client.streams.TombstoneReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TombstoneReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<TombstoneOptions>,
}

/// `TombstoneReq.Options`, with `any = 4` of the expected revision oneof
/// (the only one the sink states).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TombstoneOptions {
    #[prost(message, optional, tag = "1")]
    pub stream_identifier: Option<StreamIdentifier>,
    #[prost(message, optional, tag = "4")]
    pub any: Option<Empty>,
}

/// `event_store.client.streams.TombstoneResp`: `position = 1` or
/// `no_position = 2`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct TombstoneResp {
    #[prost(message, optional, tag = "1")]
    pub position: Option<AllPosition>,
}

/// `event_store.client.streams.AppendReq`: the options first, then one
/// proposed message per event (`content` oneof).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AppendReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<AppendOptions>,
    #[prost(message, optional, tag = "2")]
    pub proposed_message: Option<ProposedMessage>,
}

/// `AppendReq.Options`: the stream and its expected revision, `revision = 2`,
/// `no_stream = 3`, `any = 4` or `stream_exists = 5`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AppendOptions {
    #[prost(message, optional, tag = "1")]
    pub stream_identifier: Option<StreamIdentifier>,
    #[prost(uint64, optional, tag = "2")]
    pub revision: Option<u64>,
    #[prost(message, optional, tag = "3")]
    pub no_stream: Option<Empty>,
    #[prost(message, optional, tag = "4")]
    pub any: Option<Empty>,
    #[prost(message, optional, tag = "5")]
    pub stream_exists: Option<Empty>,
}

/// `AppendReq.ProposedMessage`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ProposedMessage {
    #[prost(message, optional, tag = "1")]
    pub id: Option<WireUuid>,
    #[prost(map = "string, string", tag = "2")]
    pub metadata: std::collections::HashMap<String, String>,
    #[prost(bytes = "bytes", tag = "3")]
    pub custom_metadata: bytes::Bytes,
    #[prost(bytes = "bytes", tag = "4")]
    pub data: bytes::Bytes,
}

/// `event_store.client.streams.AppendResp`: `success = 1` or
/// `wrong_expected_version = 2`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AppendResp {
    #[prost(message, optional, tag = "1")]
    pub success: Option<AppendSuccess>,
    #[prost(message, optional, tag = "2")]
    pub wrong_expected_version: Option<WrongExpectedVersion>,
}

/// `AppendResp.Success`: `current_revision = 1` or `no_stream = 2`,
/// `position = 3` or `no_position = 4`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct AppendSuccess {
    #[prost(uint64, optional, tag = "1")]
    pub current_revision: Option<u64>,
    #[prost(message, optional, tag = "3")]
    pub position: Option<AllPosition>,
}

/// `AppendResp.WrongExpectedVersion`: the stream's current revision
/// (`current_revision = 6` or `current_no_stream = 7`, and the 20.6.0 forms
/// `1`/`2` older servers send) and the expected one (`8` to `11`).
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub(crate) struct WrongExpectedVersion {
    #[prost(uint64, optional, tag = "1")]
    pub current_revision_20_6_0: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub current_revision: Option<u64>,
    #[prost(message, optional, tag = "7")]
    pub current_no_stream: Option<Empty>,
    #[prost(uint64, optional, tag = "8")]
    pub expected_revision: Option<u64>,
    #[prost(message, optional, tag = "9")]
    pub expected_any: Option<Empty>,
    #[prost(message, optional, tag = "10")]
    pub expected_stream_exists: Option<Empty>,
    #[prost(message, optional, tag = "11")]
    pub expected_no_stream: Option<Empty>,
}
