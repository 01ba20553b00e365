//! The PersistentSubscriptions gRPC messages the group commands send and
//! read (`event_store.client.persistent_subscriptions`, field numbers from
//! the server's `persistent.proto`), as `prost` messages. Only what is sent
//! or read is declared: protobuf skips the rest.

use crate::wire::proto::{AllPosition, Empty, StreamIdentifier};

/// `CreateReq` and `UpdateReq` (both `Options options = 1`).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CreateReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<CreateOptions>,
}

/// `CreateReq.Options`: `stream = 4` or `all = 5` of `stream_option`,
/// `group_name = 2`, `settings = 3`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct CreateOptions {
    #[prost(string, tag = "2")]
    pub group_name: String,
    #[prost(message, optional, tag = "3")]
    pub settings: Option<Settings>,
    #[prost(message, optional, tag = "4")]
    pub stream: Option<StreamOptions>,
    #[prost(message, optional, tag = "5")]
    pub all: Option<AllOptions>,
}

/// `StreamOptions`: the stream, then `revision = 2`, `start = 3` or `end = 4`.
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

/// `AllOptions`: `position = 1`, `start = 2` or `end = 3`; `filter = 4` or
/// `no_filter = 5`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct AllOptions {
    #[prost(message, optional, tag = "1")]
    pub position: Option<AllPosition>,
    #[prost(message, optional, tag = "2")]
    pub start: Option<Empty>,
    #[prost(message, optional, tag = "3")]
    pub end: Option<Empty>,
    #[prost(message, optional, tag = "4")]
    pub filter: Option<FilterOptions>,
    #[prost(message, optional, tag = "5")]
    pub no_filter: Option<Empty>,
}

/// `FilterOptions`: `stream_identifier = 1` or `event_type = 2`; the window
/// (`max = 3` or `count = 4`) and `checkpointIntervalMultiplier = 5`, which
/// the server's Create does not use but clients send.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct FilterOptions {
    #[prost(message, optional, tag = "1")]
    pub stream_identifier: Option<Expression>,
    #[prost(message, optional, tag = "2")]
    pub event_type: Option<Expression>,
    #[prost(uint32, optional, tag = "3")]
    pub max: Option<u32>,
    #[prost(uint32, tag = "5")]
    pub checkpoint_interval_multiplier: u32,
}

/// `FilterOptions.Expression`: a regex, or prefixes.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Expression {
    #[prost(string, tag = "1")]
    pub regex: String,
    #[prost(string, repeated, tag = "2")]
    pub prefix: Vec<String>,
}

/// `CreateReq.Settings` (the deprecated fields are left out but for the
/// consumer strategy enum, which servers without the string field read).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Settings {
    #[prost(bool, tag = "1")]
    pub resolve_links: bool,
    #[prost(bool, tag = "3")]
    pub extra_statistics: bool,
    #[prost(int32, tag = "5")]
    pub max_retry_count: i32,
    #[prost(int32, tag = "7")]
    pub min_checkpoint_count: i32,
    #[prost(int32, tag = "8")]
    pub max_checkpoint_count: i32,
    #[prost(int32, tag = "9")]
    pub max_subscriber_count: i32,
    #[prost(int32, tag = "10")]
    pub live_buffer_size: i32,
    #[prost(int32, tag = "11")]
    pub read_batch_size: i32,
    #[prost(int32, tag = "12")]
    pub history_buffer_size: i32,
    /// `ConsumerStrategy { DispatchToSingle = 0; RoundRobin = 1; Pinned = 2 }`.
    #[prost(int32, tag = "13")]
    pub named_consumer_strategy: i32,
    #[prost(int32, optional, tag = "14")]
    pub message_timeout_ms: Option<i32>,
    #[prost(int32, optional, tag = "15")]
    pub checkpoint_after_ms: Option<i32>,
    #[prost(string, tag = "16")]
    pub consumer_strategy: String,
}

/// `DeleteReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeleteReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<DeleteOptions>,
}

/// `DeleteReq.Options`: `stream_identifier = 1` or `all = 3`; `group_name = 2`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct DeleteOptions {
    #[prost(message, optional, tag = "1")]
    pub stream_identifier: Option<StreamIdentifier>,
    #[prost(string, tag = "2")]
    pub group_name: String,
    #[prost(message, optional, tag = "3")]
    pub all: Option<Empty>,
}

/// `ListReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<ListOptions>,
}

/// `ListReq.Options`: `list_all_subscriptions = 1`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListOptions {
    #[prost(message, optional, tag = "1")]
    pub list_all_subscriptions: Option<Empty>,
}

/// `ListResp`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct ListResp {
    #[prost(message, repeated, tag = "1")]
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// `SubscriptionInfo`: a group's settings and state as the server reports
/// them (not its filter).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct SubscriptionInfo {
    #[prost(string, tag = "1")]
    pub event_source: String,
    #[prost(string, tag = "2")]
    pub group_name: String,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(string, tag = "8")]
    pub last_checkpointed_event_position: String,
    #[prost(string, tag = "9")]
    pub last_known_event_position: String,
    #[prost(bool, tag = "10")]
    pub resolve_link_tos: bool,
    #[prost(string, tag = "11")]
    pub start_from: String,
    #[prost(int32, tag = "12")]
    pub message_timeout_milliseconds: i32,
    #[prost(bool, tag = "13")]
    pub extra_statistics: bool,
    #[prost(int32, tag = "14")]
    pub max_retry_count: i32,
    #[prost(int32, tag = "15")]
    pub live_buffer_size: i32,
    #[prost(int32, tag = "16")]
    pub buffer_size: i32,
    #[prost(int32, tag = "17")]
    pub read_batch_size: i32,
    #[prost(int32, tag = "18")]
    pub check_point_after_milliseconds: i32,
    #[prost(int32, tag = "19")]
    pub min_check_point_count: i32,
    #[prost(int32, tag = "20")]
    pub max_check_point_count: i32,
    #[prost(string, tag = "26")]
    pub named_consumer_strategy: String,
    #[prost(int32, tag = "27")]
    pub max_subscriber_count: i32,
}

/// `CreateResp`, `UpdateResp`, `DeleteResp`: empty.
pub(crate) type Done = Empty;
