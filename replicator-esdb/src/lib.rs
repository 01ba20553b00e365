//! EventStoreDB / KurrentDB [`Reader`](replicator_core::Reader) and
//! [`Sink`](replicator_core::Sink) for replicator, every gRPC call on a channel
//! of the crate's own (the `eventstore` crate parses connection strings and
//! names errors).
//!
//! - [`EsdbReader`] reads the source `$all` (one catch-up subscription, then
//!   live), classifies each record with [`classify()`] and survives source
//!   outages by reconnecting and resuming after the last record it handed on,
//!   reporting the source's health meanwhile. It also offers the pipeline a
//!   probe of the source's `$all` head.
//! - [`TcpReader`] reads the `$all` of an EventStoreDB v5 source over the
//!   legacy TCP protocol ([`tcp`]), in pages, classifying each record as
//!   [`EsdbReader`] does.
//! - [`EsdbSink`] writes to the target: batched appends per stream,
//!   concurrent across streams, with expected revisions and event ids so that
//!   replays leave the target unchanged.
//! - [`ScavengeFilter`] leaves out the events a scavenge of the source would
//!   remove (`replicator.scavenge: true`), from the source's stream metadata
//!   read once ahead and kept current.
//! - [`StreamCheckpointStore`] keeps the checkpoint in a stream of the
//!   target cluster (`checkpoint.type: stream`), one per instance id.
//! - [`cluster`] is how each of them, and the CLI's commands, reach a
//!   cluster: a client from a connection string, the head of `$all`, our
//!   positions to and from the client's, and [`cluster::ClusterRead`], the
//!   stream and `$all` reads that [`verify`], [`position_map`] and the
//!   scavenge filter make over gRPC or, for a v5 source, over TCP
//!   ([`tcp::TcpSource`]).
//! - [`subscriptions`] re-creates the source's persistent subscription
//!   groups on the target, each starting where its consumers stopped.
//!
//! - [`projections`] plans and applies the re-creation of the source's user
//!   projections on the target, stopped (`replicator projections`).
//!
//! Every request either makes has a deadline (10 s by default), so a hung
//! server is noticed and retried, never waited on forever.
//!
//! ```no_run
//! use replicator_esdb::{EsdbReader, EsdbReaderConfig, EsdbSink, EsdbSinkConfig};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let reader = EsdbReader::new(EsdbReaderConfig::new("esdb://source:2113?tls=false"))?;
//! let sink = EsdbSink::new(EsdbSinkConfig::new("esdb://target:2113?tls=false"))?;
//! // Hand both to `replicator_core::Pipeline::builder(reader, sink, store)`.
//! # let _ = (reader, sink);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

mod checkpoint;
mod classify;
pub mod cluster;
mod connection;
mod encode;
mod plan;
pub mod position_map;
pub mod projections;
mod reader;
mod retention;
mod scavenge;
mod sink;
pub mod subscriptions;
pub mod tcp;
pub mod verify;
mod wire;

pub use checkpoint::{
    StreamCheckpointStore, CHECKPOINT_EVENT_TYPE, CHECKPOINT_MAX_COUNT, CHECKPOINT_STREAM_PREFIX,
    DELETED_EVENT_TYPE,
};
pub use classify::{
    classify, to_event, LINK_EVENT_TYPE, METADATA_EVENT_TYPE, SOFT_DELETE_TRUNCATE_BEFORE,
    TOMBSTONE_EVENT_TYPE,
};
pub use encode::to_event_data;
pub use reader::{EsdbReader, EsdbReaderConfig};
pub use scavenge::ScavengeFilter;
pub use sink::{
    EsdbSink, EsdbSinkConfig, RevisionMode, WriteOrder, DEFAULT_MAX_APPEND_BYTES,
    DEFAULT_REPLAY_SEARCH_DEPTH, WRITE_CHECK_STREAM,
};
pub use tcp::{TcpReader, TcpReaderConfig};
