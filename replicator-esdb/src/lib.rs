//! EventStoreDB / KurrentDB [`Reader`](replicator_core::Reader) and
//! [`Sink`](replicator_core::Sink) for replicator, on the `eventstore` gRPC
//! client.
//!
//! - [`EsdbReader`] reads the source `$all` (catch-up reads, then a live
//!   subscription), classifies each record with [`classify()`] and survives
//!   source outages by reconnecting and resuming after the last record it
//!   handed on.
//! - [`EsdbSink`] writes to the target: batched appends per stream,
//!   concurrent across streams, with expected revisions and event ids so that
//!   replays leave the target unchanged.
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

mod classify;
mod connection;
mod plan;
mod reader;
mod sink;

pub use classify::{
    classify, to_event, LINK_EVENT_TYPE, METADATA_EVENT_TYPE, SOFT_DELETE_TRUNCATE_BEFORE,
    TOMBSTONE_EVENT_TYPE,
};
pub use connection::redact;
pub use reader::{EsdbReader, EsdbReaderConfig};
pub use sink::{to_event_data, EsdbSink, EsdbSinkConfig, DEFAULT_MAX_APPEND_BYTES};
