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
//! Everything else (reads of pages and heads, plain appends, soft deletes,
//! metadata, verification) stays on the client: rare calls, and the client's
//! semantics are what the rest of the crate is written against. Errors are
//! turned into the client's [`eventstore::Error`] with its own
//! `Error::from_grpc`, so both paths are classified alike.

pub(crate) mod append;
pub(crate) mod channel;
pub(crate) mod proto;
pub(crate) mod read;
pub(crate) mod tombstone;
