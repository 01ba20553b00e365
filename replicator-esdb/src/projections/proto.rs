//! The Projections gRPC messages the command sends and reads
//! (`event_store.client.projections`, field numbers from the server's
//! `projections.proto`), as `prost` messages; protobuf skips the rest.

use crate::wire::proto::Empty;

/// `StatisticsReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatisticsReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<StatisticsOptions>,
}

impl StatisticsReq {
    /// Every projection (`all = 2` of the `mode` oneof).
    pub(crate) fn all() -> Self {
        StatisticsReq {
            options: Some(StatisticsOptions {
                all: Some(Empty {}),
            }),
        }
    }
}

/// `StatisticsReq.Options`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatisticsOptions {
    #[prost(message, optional, tag = "2")]
    pub all: Option<Empty>,
}

/// `StatisticsResp`: one per projection, on a stream.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct StatisticsResp {
    #[prost(message, optional, tag = "1")]
    pub details: Option<Details>,
}

/// `StatisticsResp.Details`, the fields the plan shows.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Details {
    #[prost(int64, tag = "2")]
    pub version: i64,
    #[prost(int64, tag = "3")]
    pub epoch: i64,
    #[prost(string, tag = "8")]
    pub status: String,
    #[prost(string, tag = "10")]
    pub name: String,
    #[prost(string, tag = "11")]
    pub mode: String,
    #[prost(string, tag = "12")]
    pub position: String,
    #[prost(string, tag = "14")]
    pub last_checkpoint: String,
}

/// `UpdateReq`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct UpdateReq {
    #[prost(message, optional, tag = "1")]
    pub options: Option<UpdateOptions>,
}

impl UpdateReq {
    /// Sets `name`'s query and emit setting.
    pub(crate) fn new(name: &str, query: &str, emit_enabled: bool) -> Self {
        UpdateReq {
            options: Some(UpdateOptions {
                name: name.to_owned(),
                query: query.to_owned(),
                emit_enabled: Some(emit_enabled),
            }),
        }
    }
}

/// `UpdateReq.Options`: `emit_enabled = 3` of the `emit_option` oneof.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct UpdateOptions {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub query: String,
    #[prost(bool, optional, tag = "3")]
    pub emit_enabled: Option<bool>,
}

/// `UpdateResp`: empty.
pub(crate) type UpdateResp = Empty;
