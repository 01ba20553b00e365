//! The replicator's own gRPC calls for its hot path, beside the `eventstore`
//! client that makes every other call.
//!
//! Per event, the client's own work was about 90 % of the replicator's
//! instructions (callgrind): decoding each record into maps and copies, then
//! into its own types. The calls made for every event go through
//! [`channel::WireChannel`] instead, with messages read and written by hand
//! from and into the pipeline's [`replicator_core::Event`]:
//! - the `$all` subscription of the reader ([`read::AllSubscription`]);
//! - the sink's batch-append session ([`append::BatchSession`]) and its
//!   tombstones ([`tombstone::tombstone`]), which with source order the whole
//!   pipeline waits for.
//!
//! Every other call (reads of pages, heads and streams, plain appends,
//! tombstones, stream metadata, verification's reads) goes through
//! [`client::GrpcClient`], on the same kind of channel: so every request of
//! the replicator carries the channel's headers. Errors are the `eventstore`
//! client's [`eventstore::Error`], made with its own `Error::from_grpc`, so
//! that the rest of the crate classifies them as before.

pub(crate) mod append;
pub(crate) mod channel;
pub(crate) mod client;
pub(crate) mod proto;
pub(crate) mod read;
pub(crate) mod token;
pub(crate) mod tombstone;
