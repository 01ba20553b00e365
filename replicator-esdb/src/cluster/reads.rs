//! Reading a cluster's streams and `$all` whatever the protocol: the one
//! interface `verify`, `map-position` and the scavenge filter read through,
//! so that each works with a source reached over gRPC or over the legacy v5
//! TCP protocol (`reader.protocol: tcp`) alike.
//!
//! [`ClusterRead`] has two implementations: the gRPC [`GrpcClient`] and the
//! v5 [`TcpSource`]. [`SourceClient`] is either, chosen from the
//! configuration.

use std::time::Duration;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt as _;
use replicator_core::{ContentType, ErrorKind, Event, Position};
use uuid::Uuid;

use super::TimedOut;
use crate::connection::{describe, error_kind};
use crate::tcp::{TcpError, TcpSource};
use crate::wire::client::{GrpcClient, ReadOf};

/// A record as stored: for a link, the link record itself (`$>`), never the
/// event it points to (links are not resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its stream.
    pub stream: String,
    /// Its revision (event number) in that stream.
    pub revision: u64,
    /// Its id (on TCP, turned from .NET GUID byte order into the UUID the
    /// .NET client shows).
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// `application/json` (true) or binary.
    pub is_json: bool,
    /// Payload.
    pub data: Bytes,
    /// User metadata.
    pub metadata: Bytes,
    /// Its `$all` position: always given by `$all` reads; by stream reads
    /// only over gRPC (the v5 TCP protocol's stream reads carry none).
    pub position: Option<Position>,
}

/// Where a read of `$all` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllFrom {
    /// The first record.
    Start,
    /// The end (a backward read starts with the last record).
    End,
    /// This position: a forward read includes the record there, a backward
    /// read starts with the record before it.
    Position(Position),
}

/// Where a read of a stream starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFrom {
    /// Its first event.
    Start,
    /// Its last event (for backward reads).
    End,
    /// This revision, included either way.
    Revision(u64),
}

/// The direction of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Oldest first.
    Forwards,
    /// Newest first.
    Backwards,
}

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream does not exist: never written, or soft-deleted.
    #[error("the stream does not exist")]
    NotFound,
    /// The stream is tombstoned.
    #[error("the stream is deleted (tombstoned)")]
    Deleted,
    /// The user may not read it.
    #[error("access denied")]
    AccessDenied,
    /// No answer within the caller's deadline.
    #[error(transparent)]
    TimedOut(#[from] TimedOut),
    /// The gRPC client's error.
    #[error("{}", describe(.0))]
    Grpc(#[source] eventstore::Error),
    /// The TCP connection's error.
    #[error(transparent)]
    Tcp(#[from] TcpError),
}

impl ReadError {
    /// Transient: the connection or the node's state (worth trying again).
    /// Permanent: credentials, access, a request the node rejects, and the
    /// answers about the stream itself.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ReadError::NotFound | ReadError::Deleted | ReadError::AccessDenied => {
                ErrorKind::Permanent
            }
            ReadError::TimedOut(_) => ErrorKind::Transient,
            ReadError::Grpc(error) => error_kind(error),
            ReadError::Tcp(error) => error.kind(),
        }
    }
}

impl From<eventstore::Error> for ReadError {
    fn from(error: eventstore::Error) -> Self {
        match error {
            eventstore::Error::ResourceNotFound => ReadError::NotFound,
            eventstore::Error::ResourceDeleted => ReadError::Deleted,
            eventstore::Error::AccessDenied => ReadError::AccessDenied,
            other => ReadError::Grpc(other),
        }
    }
}

/// Records read lazily, one request (or page) at a time as they are polled.
/// A read that fails yields the error and ends.
pub type Records<'a, T> = BoxStream<'a, Result<T, ReadError>>;

/// What `verify`, `map-position` and the scavenge filter read of a cluster.
///
/// Both reads are lazy: nothing is asked before the first poll, and each
/// poll reads at most one page. They carry no deadline: the caller puts one
/// around each poll (dropping a poll abandons its request). A stream that
/// does not exist yields [`ReadError::NotFound`] (a soft-deleted one too), a
/// tombstoned one [`ReadError::Deleted`], each as its first item. Links are
/// not resolved.
pub trait ClusterRead: Send + Sync {
    /// Up to `max` records of `stream` from `from` in `direction`
    /// (`usize::MAX`: to its end or start). Records hidden by `$tb`,
    /// `$maxCount` or `$maxAge` are not returned, as the server answers.
    fn stream_records<'a>(
        &'a self,
        stream: &'a str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'a, Record>;

    /// Up to `max` records of `$all` from `from` in `direction`, each with
    /// its position, in (commit, prepare) order.
    fn all_records(
        &self,
        from: AllFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'_, (Position, Record)>;
}

/// The next item of `records`, as a result.
pub(crate) async fn next<T>(records: &mut Records<'_, T>) -> Result<Option<T>, ReadError> {
    records.next().await.transpose()
}

/// The next item of `records` within `limit`.
pub(crate) async fn next_within<T>(
    limit: Duration,
    records: &mut Records<'_, T>,
) -> Result<Option<T>, ReadError> {
    super::within(limit, next(records)).await
}

/// A record a gRPC read returned (the link itself, for a link).
fn grpc_record(event: &Event) -> Record {
    Record {
        stream: event.stream.clone(),
        revision: event.revision,
        id: event.id,
        event_type: event.event_type.clone(),
        is_json: event.content_type == ContentType::Json,
        data: event.data.clone(),
        metadata: event.metadata.clone(),
        position: Some(event.position),
    }
}

/// The records of a gRPC read of `of`, opened at the first poll, each turned
/// into an item by `item`: the one way both reads stream.
fn grpc_records<'a, T: Send + 'a>(
    client: &'a GrpcClient,
    of: ReadOf<'a>,
    direction: Direction,
    max: usize,
    item: fn(&Event) -> T,
) -> Records<'a, T> {
    if max == 0 {
        return futures::stream::empty().boxed();
    }
    let open = async move { client.read(of, direction, max, false).await };
    futures::stream::once(open)
        .flat_map(move |opened| match opened {
            Err(error) => futures::stream::once(async move { Err(error.into()) }).boxed(),
            // Boxed: the unfold state moves at each record.
            Ok(reader) => {
                futures::stream::unfold(Some(Box::new(reader)), move |reader| async move {
                    let mut reader = reader?;
                    match reader.next().await {
                        Ok(Some(event)) => Some((Ok(item(&event)), Some(reader))),
                        Ok(None) => None,
                        Err(error) => Some((Err(error.into()), None)),
                    }
                })
                .boxed()
            }
        })
        .boxed()
}

impl ClusterRead for GrpcClient {
    fn stream_records<'a>(
        &'a self,
        stream: &'a str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'a, Record> {
        grpc_records(
            self,
            ReadOf::Stream(stream, from),
            direction,
            max,
            grpc_record,
        )
    }

    fn all_records(
        &self,
        from: AllFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'_, (Position, Record)> {
        grpc_records(self, ReadOf::All(from), direction, max, |event| {
            (event.position, grpc_record(event))
        })
    }
}

/// The client of a source, over the protocol the configuration names
/// (`reader.protocol`): what `replicator verify` and `map-position` read the
/// source with.
pub enum SourceClient {
    /// gRPC (v20+).
    Grpc(GrpcClient),
    /// The legacy TCP protocol (v5).
    Tcp(TcpSource),
}

impl std::fmt::Debug for SourceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceClient::Grpc(_) => f.write_str("SourceClient::Grpc"),
            SourceClient::Tcp(source) => f.debug_tuple("SourceClient::Tcp").field(source).finish(),
        }
    }
}

impl ClusterRead for SourceClient {
    fn stream_records<'a>(
        &'a self,
        stream: &'a str,
        from: StreamFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'a, Record> {
        match self {
            SourceClient::Grpc(client) => client.stream_records(stream, from, direction, max),
            SourceClient::Tcp(source) => source.stream_records(stream, from, direction, max),
        }
    }

    fn all_records(
        &self,
        from: AllFrom,
        direction: Direction,
        max: usize,
    ) -> Records<'_, (Position, Record)> {
        match self {
            SourceClient::Grpc(client) => client.all_records(from, direction, max),
            SourceClient::Tcp(source) => source.all_records(from, direction, max),
        }
    }
}
