//! The gRPC services: Streams (read, subscribe, append, batch append, delete,
//! tombstone), PersistentSubscriptions (`persistent`), Projections (with its HTTP routes), ServerFeatures and Gossip, translating between the wire messages and
//! [`crate::store::Store`].
//!
//! # How the real server answers failures
//!
//! Taken from the KurrentDB/EventStoreDB server source (`Services/Transport/Grpc`:
//! `RpcExceptions.cs`, `Status.cs`, `Streams.Append.cs`, `Streams.BatchAppend.cs`,
//! `Streams.Delete.cs`, `Streams.Read.cs`) and checked against the Python client's
//! error mapping (`kurrentdbclient`, which the conformance suite drives):
//!
//! - **Unary calls** (`Append`, `Delete`, `Tombstone`, `Read`) fail with a plain
//!   gRPC status and headers, never `grpc-status-details-bin`:
//!   - stream deleted (tombstoned): `FailedPrecondition`, `Event stream '<s>' is
//!     deleted.`, headers `exception: stream-deleted`, `stream-name`;
//!   - wrong expected version of a delete or tombstone: `FailedPrecondition`,
//!     `Delete failed due to WrongExpectedVersion. Stream: <s>, Expected version:
//!     <e>, Actual version: <a>` (the operation is `Delete` for tombstones too;
//!     `-1` no stream, `-2` any, `-4` stream exists), headers `exception:
//!     wrong-expected-version`, `stream-name`, `expected-version`, `actual-version`.
//!     The Python client parses this message (actual `-1`: `NotFoundError`);
//!   - an append's wrong expected version is not an error but the reply body
//!     `wrong_expected_version`, old (`…_20_6_0`, expected "no stream" as
//!     `u64::MAX`) and new fields both filled;
//!   - too large: `InvalidArgument`, `Maximum Append Size of <n> Exceeded.`,
//!     headers `exception: maximum-append-size-exceeded`, `maximum-append-size`;
//!   - access denied: `PermissionDenied`, `Access Denied`, header `exception:
//!     access-denied`;
//!   - a missing stream on a read is not an error: one `stream_not_found` message.
//! - **Batch appends** answer each failed batch with `BatchAppendResp.error`, a
//!   `google.rpc.Status` whose message is the name of the detail type and whose
//!   `details` is that message packed as `google.protobuf.Any` with type URL
//!   `type.googleapis.com/event_store.client.<Name>` (`shared.proto`):
//!   `WrongExpectedVersion` → `AlreadyExists`; `StreamDeleted` → `NotFound`;
//!   `AccessDenied` → `PermissionDenied`; `Timeout` → `DeadlineExceeded`;
//!   `MaximumAppendSizeExceeded{maxAppendSize}` → `InvalidArgument`;
//!   `BadRequest{message}` → `InvalidArgument`; `Unknown` → `Unknown`. A batch
//!   whose deadline (`options.deadline`, a duration) is already over gets
//!   `Timeout` at once; access is checked when its options arrive. The
//!   session goes on after an error; requests of a batch that is not pending
//!   (never opened, or already rejected) are ignored. The `eventstore` 4.0.0 client
//!   keeps only the code and message (`Error::Grpc`), so the replicator's sink
//!   still needs its plain-append fallback to learn the current revision.
//! - **Maximum append size**: 1 MiB (1,048,576) by default; an event counts its
//!   data, its custom metadata and twice its type's length (.NET `SizeOnDisk`),
//!   summed over the append. Batch appends check it as requests arrive and answer
//!   at once; `Append` fails while reading the request stream.
//! - **Filters** are .NET regular expressions matched with `Regex.IsMatch`:
//!   unanchored, look-around allowed (the Python client's default `$all` filter is
//!   `^(?!(\$.+$|PersistentConfig\d+$|Result$))` on the event type). An empty regex
//!   means the prefixes apply. Filtered reads (not only subscriptions) accept them.
//! - **Read messages**: `caught_up` is sent (empty) when a subscription catches up;
//!   `fell_behind` is never sent to clients. `first_stream_position` and
//!   `last_stream_position` go only to clients asking for `control_option.
//!   compatibility >= 1` on stream reads (the Rust client does and skips them;
//!   the Python client does not): `last_stream_position` (the stream's last
//!   revision) ends every successful stream read, forwards and backwards, and this
//!   server sends it too; `first_stream_position` comes only when a forward read's
//!   first page is empty, which this server does not reproduce.

// `tonic::Status` is the error type the generated service traits require; boxing it
// in the helpers would only add conversions at every call site.
#![allow(clippy::result_large_err)]

mod append;
mod batch;
mod convert;
mod features;
mod persistent;
mod projections;
mod read;
mod status;
mod streams;

pub(crate) use features::{FeaturesService, GossipService};
pub(crate) use persistent::PersistentService;
pub(crate) use projections::{http_answer, is_projection_path, ProjectionsService};
pub(crate) use streams::StreamsService;

/// The caller of a gRPC request with `metadata` on a server with `options`
/// (its users and bearer tokens), or `Unauthenticated` for credentials or a
/// token it does not accept: what every gRPC service checks first.
pub(crate) fn grpc_caller(
    options: &crate::ServerOptions,
    metadata: &tonic::metadata::MetadataMap,
) -> Result<crate::security::Principal, tonic::Status> {
    let header = metadata.get("authorization").map(|v| v.as_bytes());
    crate::security::principal_with(
        options.users.as_deref(),
        options.bearer_tokens.as_ref(),
        header,
    )
    .map_err(|_| {
        tonic::Status::unauthenticated(
            "Bad credentials: unknown user, wrong password or a token not accepted",
        )
    })
}
