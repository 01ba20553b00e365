//! A tombstone (hard delete) on a [`WireChannel`].
//!
//! The `eventstore` 4.0.0 client's tombstone waits about 40 ms for a delayed
//! ACK (no `TCP_NODELAY`). With source order a tombstone is a point every
//! write before it must be answered by, and every write after it waits for:
//! the whole pipeline waits for it, so it goes on the sink's own channel,
//! the one its batch-append session uses.

use replicator_core::Position;

use super::channel::WireChannel;
use super::proto::{Empty, StreamIdentifier, TombstoneOptions, TombstoneReq, TombstoneResp};

/// Tombstones `stream` whatever its revision; the position of the tombstone
/// record when the server says. `server_deadline`, when given, is sent for
/// the server to act on (`grpc-timeout`). Errors are the client's
/// ([`eventstore::Error::from_grpc`]): a stream already tombstoned is
/// [`eventstore::Error::ResourceDeleted`].
pub(crate) async fn tombstone(
    channel: &WireChannel,
    stream: &str,
    server_deadline: Option<std::time::Duration>,
) -> Result<Option<Position>, eventstore::Error> {
    let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
    let mut request = channel.request(TombstoneReq {
        options: Some(TombstoneOptions {
            stream_identifier: Some(StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
            any: Some(Empty {}),
        }),
    });
    if let Some(deadline) = server_deadline {
        request.set_timeout(deadline);
    }
    let path =
        http::uri::PathAndQuery::from_static("/event_store.client.streams.Streams/Tombstone");
    let codec = tonic::codec::ProstCodec::<TombstoneReq, TombstoneResp>::default();
    let answer = grpc
        .unary(request, path, codec)
        .await
        .map_err(|s| channel.error(s))?
        .into_inner();
    Ok(answer.position.map(Position::from))
}
