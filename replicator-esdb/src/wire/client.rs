//! The crate's gRPC client for every call that is not on the hot path:
//! stream and `$all` reads, plain appends, tombstones, stream metadata and
//! the scavenge filter's filtered subscription, on a [`WireChannel`].
//!
//! It replaces the `eventstore` 4.0.0 `Client`, which rebuilds every
//! request's headers itself and offers no way to send others (a bearer
//! token): every call of the replicator now carries the headers of its own
//! channel. What the client did, this does alike: the node is chosen once
//! (seeds, gossip, `nodePreference`) and again after an error that says the
//! node is gone or not the leader (then the leader it names); reads carry no
//! deadline for the server, other requests `defaultDeadline` (10 s); errors
//! are the client's ([`eventstore::Error::from_grpc`]).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use eventstore::{ClientSettings, CurrentRevision, Endpoint, ExpectedRevision, WriteResult};
use replicator_core::{Event, Position};
use uuid::Uuid;

use super::channel::{self, WireChannel};
use super::proto::{
    AllOptions, AllPosition, AppendOptions, AppendReq, AppendResp, ControlOption, Empty,
    ProposedMessage, ReadOptions, ReadReq, StreamIdentifier, StreamOptions, StructuredUuid,
    UuidOption, WireUuid,
};
use super::read::{read_call, AllSubscription, ReadItem};
use super::token::BearerToken;
use crate::cluster::{AllFrom, Direction, StreamFrom};
use crate::encode::json_text;

/// A gRPC client of one cluster, built from a parsed connection string. It
/// connects on its first call (which needs a tokio runtime, and the
/// cluster's gossip when there are several seeds).
pub struct GrpcClient {
    /// Boxed: the settings are large, and the client is moved about in
    /// enums beside small values.
    inner: Box<Inner>,
}

struct Inner {
    settings: ClientSettings,
    token: Option<BearerToken>,
    /// The `grpc-timeout` of requests other than reads.
    server_deadline: Duration,
    node: Mutex<Node>,
}

#[derive(Default)]
struct Node {
    channel: Option<WireChannel>,
    /// The leader a `not-leader` answer named: the next channel goes there.
    leader: Option<Endpoint>,
}

impl std::fmt::Debug for GrpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcClient").finish_non_exhaustive()
    }
}

/// What a read reads.
#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadOf<'a> {
    /// A stream, from a revision.
    Stream(&'a str, StreamFrom),
    /// `$all`, from a position.
    All(AllFrom),
}

/// The records of one read, in the order read.
pub(crate) struct ReadStream {
    answers: tonic::Streaming<ReadItem>,
}

impl ReadStream {
    /// The next record; `None` at the end of the read.
    ///
    /// # Errors
    /// [`eventstore::Error::ResourceNotFound`] for a stream that does not
    /// exist (or is soft-deleted), else the client's errors.
    pub(crate) async fn next(&mut self) -> Result<Option<Event>, eventstore::Error> {
        loop {
            match self
                .answers
                .message()
                .await
                .map_err(eventstore::Error::from_grpc)?
            {
                Some(ReadItem::Event(event)) => return Ok(Some(event)),
                Some(ReadItem::StreamNotFound) => return Err(eventstore::Error::ResourceNotFound),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }
}

/// An event to append: what the server stores of it.
#[derive(Clone, Debug)]
pub(crate) struct Proposed {
    pub(crate) id: Uuid,
    pub(crate) event_type: String,
    pub(crate) json: bool,
    pub(crate) data: Bytes,
    pub(crate) metadata: Bytes,
}

impl Proposed {
    /// `event` as the sink writes it: every byte kept, JSON when marked JSON
    /// and UTF-8 ([`json_text`]).
    pub(crate) fn of(event: &Event) -> Self {
        Proposed {
            id: event.id,
            event_type: event.event_type.clone(),
            json: json_text(event).is_some(),
            data: event.data.clone(),
            metadata: event.metadata.clone(),
        }
    }

    /// A JSON event of `event_type` holding `value`, with a new id.
    pub(crate) fn json(
        event_type: &str,
        value: &impl serde::Serialize,
    ) -> serde_json::Result<Self> {
        Ok(Proposed {
            id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            json: true,
            data: serde_json::to_vec(value)?.into(),
            metadata: Bytes::new(),
        })
    }

    fn message(self) -> ProposedMessage {
        let (most, least) = self.id.as_u64_pair();
        let content_type = if self.json {
            "application/json"
        } else {
            "application/octet-stream"
        };
        ProposedMessage {
            id: Some(WireUuid {
                structured: Some(StructuredUuid {
                    most_significant_bits: most as i64,
                    least_significant_bits: least as i64,
                }),
                string: None,
            }),
            metadata: [
                ("type".to_owned(), self.event_type),
                ("content-type".to_owned(), content_type.to_owned()),
            ]
            .into_iter()
            .collect(),
            custom_metadata: self.metadata,
            data: self.data,
        }
    }
}

impl GrpcClient {
    /// A client of the cluster `settings` describe. Nothing connects yet.
    ///
    /// # Errors
    /// [`eventstore::Error::InitializationError`] for TLS files that cannot
    /// be read.
    pub(crate) fn new(settings: ClientSettings) -> Result<Self, eventstore::Error> {
        channel::check(&settings)?;
        Ok(GrpcClient {
            inner: Box::new(Inner {
                server_deadline: channel::server_deadline(&settings),
                settings,
                token: None,
                node: Mutex::new(Node::default()),
            }),
        })
    }

    /// The client, its calls authenticated with `token` (when given) instead
    /// of the connection string's credentials: `authorization: Bearer`, the
    /// token file read again whenever it changes.
    pub fn with_bearer_token(mut self, token: Option<BearerToken>) -> Self {
        self.inner.token = token;
        // A channel made before would carry the old credentials.
        self.node().channel = None;
        self
    }

    fn node(&self) -> std::sync::MutexGuard<'_, Node> {
        self.inner.node.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The channel to the chosen node, chosen now when there is none.
    pub(crate) async fn channel(&self) -> Result<WireChannel, eventstore::Error> {
        let leader = {
            let mut node = self.node();
            if let Some(channel) = &node.channel {
                return Ok(channel.clone());
            }
            node.leader.take()
        };
        let channel = WireChannel::connect(&self.inner.settings, leader)
            .await?
            .with_token(self.inner.token.clone());
        Ok(self.node().channel.get_or_insert(channel).clone())
    }

    /// Chooses the node again for the next call after an error saying this
    /// one is gone or not the leader, as the `eventstore` client does.
    fn observed<T>(&self, result: Result<T, eventstore::Error>) -> Result<T, eventstore::Error> {
        if let Err(error) = &result {
            match error {
                eventstore::Error::NotLeaderException(leader) => {
                    let mut node = self.node();
                    node.leader = Some(leader.clone());
                    node.channel = None;
                }
                eventstore::Error::ServerError(_)
                | eventstore::Error::ConnectionClosed
                | eventstore::Error::GrpcConnectionError(_) => self.node().channel = None,
                _ => {}
            }
        }
        result
    }

    /// Reads up to `max` records (`usize::MAX`: all) of `of` in `direction`;
    /// links are not resolved. Returns once the server answered the call.
    pub(crate) async fn read(
        &self,
        of: ReadOf<'_>,
        direction: Direction,
        max: usize,
        requires_leader: bool,
    ) -> Result<ReadStream, eventstore::Error> {
        let uuid_option = Some(UuidOption {
            string: Some(Empty {}),
        });
        let (stream, all, control_option) = match of {
            ReadOf::Stream(name, from) => (
                Some(StreamOptions {
                    stream_identifier: Some(StreamIdentifier {
                        stream_name: name.as_bytes().to_vec(),
                    }),
                    revision: match from {
                        StreamFrom::Revision(r) => Some(r),
                        _ => None,
                    },
                    start: matches!(from, StreamFrom::Start).then_some(Empty {}),
                    end: matches!(from, StreamFrom::End).then_some(Empty {}),
                }),
                None,
                // As the client sends on stream reads.
                Some(ControlOption { compatibility: 1 }),
            ),
            ReadOf::All(from) => (
                None,
                Some(AllOptions {
                    position: match from {
                        AllFrom::Position(p) => Some(AllPosition::from(p)),
                        _ => None,
                    },
                    start: matches!(from, AllFrom::Start).then_some(Empty {}),
                    end: matches!(from, AllFrom::End).then_some(Empty {}),
                }),
                None,
            ),
        };
        let request = ReadReq {
            options: Some(ReadOptions {
                stream,
                all,
                read_direction: match direction {
                    Direction::Forwards => 0,
                    Direction::Backwards => 1,
                },
                resolve_links: false,
                count: Some(max as u64),
                subscription: None,
                filter: None,
                no_filter: Some(Empty {}),
                uuid_option,
                control_option,
            }),
        };
        let result = async {
            let channel = self.channel().await?;
            read_call(&channel, request, requires_leader).await
        }
        .await;
        self.observed(result).map(|answers| ReadStream { answers })
    }

    /// Appends `events` to `stream` at `expected`, as one request.
    ///
    /// # Errors
    /// [`eventstore::Error::WrongExpectedVersion`] when the stream is not at
    /// `expected`, else the client's errors.
    pub(crate) async fn append(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        events: Vec<Proposed>,
    ) -> Result<WriteResult, eventstore::Error> {
        let mut options = AppendOptions {
            stream_identifier: Some(StreamIdentifier {
                stream_name: stream.as_bytes().to_vec(),
            }),
            ..AppendOptions::default()
        };
        match expected {
            ExpectedRevision::Exact(r) => options.revision = Some(r),
            ExpectedRevision::NoStream => options.no_stream = Some(Empty {}),
            ExpectedRevision::Any => options.any = Some(Empty {}),
            ExpectedRevision::StreamExists => options.stream_exists = Some(Empty {}),
        }
        let requests: Vec<AppendReq> = std::iter::once(AppendReq {
            options: Some(options),
            proposed_message: None,
        })
        .chain(events.into_iter().map(|event| AppendReq {
            options: None,
            proposed_message: Some(event.message()),
        }))
        .collect();
        let result = async {
            let channel = self.channel().await?;
            let mut grpc = channel.grpc().await.map_err(|s| channel.error(s))?;
            let mut request = channel.request(futures::stream::iter(requests));
            request.set_timeout(self.inner.server_deadline);
            let path =
                http::uri::PathAndQuery::from_static("/event_store.client.streams.Streams/Append");
            let codec = tonic::codec::ProstCodec::<AppendReq, AppendResp>::default();
            grpc.client_streaming(request, path, codec)
                .await
                .map_err(|s| channel.error(s))
        }
        .await;
        let answer = self.observed(result)?.into_inner();
        match (answer.success, answer.wrong_expected_version) {
            (Some(success), _) => Ok(WriteResult {
                next_expected_version: success.current_revision.unwrap_or(0),
                position: success
                    .position
                    .map(|p| eventstore::Position {
                        commit: p.commit_position,
                        prepare: p.prepare_position,
                    })
                    .unwrap_or(eventstore::Position {
                        commit: 0,
                        prepare: 0,
                    }),
            }),
            (None, Some(wrong)) => Err(eventstore::Error::WrongExpectedVersion {
                current: match wrong.current_revision.or(wrong.current_revision_20_6_0) {
                    Some(r) => CurrentRevision::Current(r),
                    None => CurrentRevision::NoStream,
                },
                expected: match wrong.expected_revision {
                    Some(r) => ExpectedRevision::Exact(r),
                    None if wrong.expected_no_stream.is_some() => ExpectedRevision::NoStream,
                    None if wrong.expected_stream_exists.is_some() => {
                        ExpectedRevision::StreamExists
                    }
                    None => ExpectedRevision::Any,
                },
            }),
            (None, None) => Err(eventstore::Error::ServerError(
                "the server answered an append with neither success nor failure".to_owned(),
            )),
        }
    }

    /// Tombstones `stream` whatever its revision; the position of the
    /// tombstone when the server says.
    pub(crate) async fn tombstone(
        &self,
        stream: &str,
    ) -> Result<Option<Position>, eventstore::Error> {
        let result = async {
            let channel = self.channel().await?;
            super::tombstone::tombstone(&channel, stream, Some(self.inner.server_deadline)).await
        }
        .await;
        self.observed(result)
    }

    /// The metadata of `stream` (its last `$metadata` record in `$$stream`);
    /// `None` when there is none, or the stream is tombstoned.
    pub(crate) async fn stream_metadata(
        &self,
        stream: &str,
        requires_leader: bool,
    ) -> Result<Option<eventstore::StreamMetadata>, eventstore::Error> {
        let metastream = format!("$${stream}");
        let read = async {
            let mut read = self
                .read(
                    ReadOf::Stream(&metastream, StreamFrom::End),
                    Direction::Backwards,
                    1,
                    requires_leader,
                )
                .await?;
            read.next().await
        }
        .await;
        match read {
            Ok(Some(record)) => serde_json::from_slice(&record.data)
                .map(Some)
                .map_err(|e| eventstore::Error::InternalParsingError(e.to_string())),
            Ok(None)
            | Err(eventstore::Error::ResourceNotFound)
            | Err(eventstore::Error::ResourceDeleted) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Sets the metadata of `stream`: a `$metadata` record appended to
    /// `$$stream` at `expected`.
    pub(crate) async fn set_stream_metadata(
        &self,
        stream: &str,
        expected: ExpectedRevision,
        metadata: &eventstore::StreamMetadata,
    ) -> Result<WriteResult, eventstore::Error> {
        let event = Proposed::json("$metadata", metadata)
            .map_err(|e| eventstore::Error::InternalParsingError(e.to_string()))?;
        self.append(&format!("$${stream}"), expected, vec![event])
            .await
    }

    /// A catch-up subscription to `$all` strictly after `after` (from the
    /// start when `None`), of the records whose event type matches `regex`,
    /// with a checkpoint every `window` records searched.
    pub(crate) async fn subscribe_to_all_filtered(
        &self,
        after: Option<Position>,
        regex: &str,
        window: u32,
    ) -> Result<AllSubscription, eventstore::Error> {
        let result = async {
            let channel = self.channel().await?;
            AllSubscription::start_filtered(&channel, after, Some((regex, window))).await
        }
        .await;
        self.observed(result)
    }
}
