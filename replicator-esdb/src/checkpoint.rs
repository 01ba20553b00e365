//! The checkpoint kept in a stream of the target cluster
//! (`checkpoint.type: stream`): a run needs no volume and no database of its
//! own.

use std::fmt;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use eventstore::{CurrentRevision, ExpectedRevision, StreamMetadataBuilder};
use replicator_core::health::short;
use replicator_core::secret::{ConnectionString, Scrubber};
use replicator_core::{Checkpoint, CheckpointError, CheckpointStore, ErrorKind, Position};
use serde::{Deserialize, Serialize};

use crate::cluster::{self, within, Direction, StreamFrom};
use crate::connection::{
    describe, error_kind, is_refused_token, needs_new_client, ClientCell, REQUEST_TIMEOUT,
};
use crate::wire::client::{GrpcClient as Client, Proposed, ReadOf};
use crate::wire::token::BearerToken;

/// The name of an instance's checkpoint stream is this prefix and the
/// instance id.
///
/// `$`-prefixed on purpose: a replicator (this one or another) reading the
/// target as its source classifies every record of a `$` stream, and of its
/// `$$$…` metadata stream, as a system record
/// ([`classify`](crate::classify())): skipped, never copied on, so a
/// checkpoint of one replication never becomes an event of the next.
pub const CHECKPOINT_STREAM_PREFIX: &str = "$replicator-checkpoint-";

/// The `$maxCount` set on the checkpoint stream: only the last event counts,
/// a few more are kept to look at, the rest is scavenged.
pub const CHECKPOINT_MAX_COUNT: u64 = 10;

/// Event type of a stored checkpoint.
pub const CHECKPOINT_EVENT_TYPE: &str = "ReplicatorCheckpoint";

/// Event type that marks the checkpoint deleted (`replicator checkpoint
/// delete`): `load` gives `None` while it is the last event.
pub const DELETED_EVENT_TYPE: &str = "ReplicatorCheckpointDeleted";

/// The format version of the event data this replicator writes.
const FORMAT_VERSION: u64 = 1;

/// A checkpoint kept in one stream of the target cluster per instance id,
/// [`CHECKPOINT_STREAM_PREFIX`]`<instance id>` (`$replicator-checkpoint-default`).
///
/// Each `store` appends one JSON event of type [`CHECKPOINT_EVENT_TYPE`],
/// with the fields and format version of the file store's format:
///
/// ```json
/// {"version":1,"source":{"commit":1200,"prepare":1200},"target":null,
///  "taken_at":{"secs_since_epoch":1767225600,"nanos_since_epoch":0},"seed":false}
/// ```
///
/// `load` reads the stream's last event (from the leader). The stream's
/// metadata gets `$maxCount` [`CHECKPOINT_MAX_COUNT`] before this store's
/// first write (once: it is read first and left alone when already set).
/// `delete` appends a [`DELETED_EVENT_TYPE`] event, so the stream keeps one
/// line of revisions.
///
/// # One writer
/// Every append carries the revision this store last saw (read or wrote): an
/// append by anyone else in between (another process with the same instance
/// id) makes the next one fail with a permanent error naming the stream,
/// never an interleaving. A store whose position is before the checkpoint
/// this store last *read* (another process got further) is refused the same
/// way: the checkpoint never moves backwards. After a failure whose outcome
/// is unknown (a timeout: the append may have landed), the next call reads
/// the stream again first. Calls of one store are serialised.
///
/// # Failures and deadlines
/// Each request has the request deadline (10 s by default; the CLI gives it
/// half of `callTimeoutInSeconds`): a target that is down or frozen is a
/// transient error naming the stream and the cluster (password hidden), which
/// the pipeline retries, reporting the `checkpoint` component unhealthy. Access
/// denied (the user may not write `$` streams: by default only admins may)
/// and unreadable events are permanent. `check` (before anything is
/// replicated) appends no events to the stream, which the server authorises
/// as a write of that stream and which changes nothing.
pub struct StreamCheckpointStore {
    cell: ClientCell,
    stream: String,
    /// The stream and the cluster, for messages; no password.
    location: String,
    scrubber: Scrubber,
    request_timeout: Duration,
    state: tokio::sync::Mutex<State>,
}

impl fmt::Debug for StreamCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamCheckpointStore")
            .field("location", &self.location)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// What this store knows of its stream between calls.
#[derive(Default)]
struct State {
    /// The stream's last revision as this store last saw it (`Some(None)`: no
    /// stream); `None`: unknown, read it before writing.
    last: Option<Last>,
    /// Whether `$maxCount` is known to be set.
    metadata_set: bool,
}

#[derive(Clone, Copy)]
struct Last {
    revision: Option<u64>,
    /// The checkpoint at that revision when it was read, not written, by this
    /// store: a store must not go before it.
    read: Option<Position>,
}

/// The event data, version 1.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventV1 {
    version: u64,
    source: Position,
    target: Option<Position>,
    taken_at: SystemTime,
    seed: bool,
}

/// The stream's last event, decoded.
enum Stored {
    Checkpoint(Checkpoint),
    Deleted,
}

impl StreamCheckpointStore {
    /// A store for `instance_id` in the cluster of `connection_string` (the
    /// target's). Nothing is contacted until the first call.
    ///
    /// # Errors
    /// Permanent: the instance id is empty or the connection string does not
    /// parse (named without its password).
    pub fn new(
        connection_string: impl Into<ConnectionString>,
        instance_id: &str,
    ) -> Result<Self, CheckpointError> {
        let connection_string = connection_string.into();
        if instance_id.trim().is_empty() {
            return Err(CheckpointError::permanent(
                "the checkpoint instance id is empty",
            ));
        }
        let settings = cluster::settings(&connection_string).map_err(|error| {
            CheckpointError::permanent(format!("no client for the checkpoint stream: {error}"))
        })?;
        let stream = format!("{CHECKPOINT_STREAM_PREFIX}{instance_id}");
        Ok(StreamCheckpointStore {
            cell: ClientCell::new(settings),
            location: format!("checkpoint stream `{stream}` on the target {connection_string}"),
            scrubber: Scrubber::of([&connection_string]),
            stream,
            request_timeout: REQUEST_TIMEOUT,
            state: tokio::sync::Mutex::new(State::default()),
        })
    }

    /// Sets the deadline of each request (10 s by default).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Authenticates every call with `token` (when given), `authorization:
    /// Bearer`, instead of the connection string's credentials (the target's
    /// token, as the sink's); a token file is read again whenever it
    /// changes. Refused by [`CheckpointStore::check`], it is a permanent
    /// error; refused later (expired), a transient one.
    pub fn with_bearer_token(mut self, token: Option<BearerToken>) -> Self {
        self.cell.set_token(token);
        self
    }

    /// The stream the checkpoint is kept in.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    fn client(&self) -> Result<(u64, std::sync::Arc<Client>), CheckpointError> {
        self.cell
            .get()
            .map_err(|error| self.error("create a client for", &error))
    }

    /// The error of a failed request, doing `doing`; the client is rebuilt
    /// when it cannot recover by itself.
    fn failed(&self, generation: u64, doing: &str, error: &eventstore::Error) -> CheckpointError {
        if needs_new_client(error) {
            self.cell.discard(generation);
        }
        self.error(doing, error)
    }

    fn error(&self, doing: &str, error: &eventstore::Error) -> CheckpointError {
        let (detail, hint) = match error {
            eventstore::Error::DeadlineExceeded => (
                format!("no answer within {}", short(self.request_timeout)),
                "",
            ),
            eventstore::Error::AccessDenied => (
                describe(error),
                ": the sink's user must be allowed to write `$` streams (admins are, by default)",
            ),
            _ => (describe(error), ""),
        };
        let message = format!(
            "cannot {doing} the {}: {}{hint}",
            self.location,
            self.scrubber.scrub(&detail)
        );
        match error_kind(error) {
            ErrorKind::Transient => CheckpointError::transient(message),
            ErrorKind::Permanent => CheckpointError::permanent(message),
        }
    }

    fn corrupt(&self, revision: u64, problem: impl fmt::Display) -> CheckpointError {
        CheckpointError::permanent(format!(
            "the last event (revision {revision}) of the {} {problem}; run `replicator \
             checkpoint delete` to replicate from the start (or from a seed) again",
            self.location
        ))
    }

    fn decode(
        &self,
        revision: u64,
        event_type: &str,
        data: &[u8],
    ) -> Result<Stored, CheckpointError> {
        match event_type {
            DELETED_EVENT_TYPE => return Ok(Stored::Deleted),
            CHECKPOINT_EVENT_TYPE => {}
            other => {
                return Err(self.corrupt(
                    revision,
                    format_args!("has type {other:?}, not {CHECKPOINT_EVENT_TYPE:?}"),
                ))
            }
        }
        let value: serde_json::Value = serde_json::from_slice(data)
            .map_err(|error| self.corrupt(revision, format_args!("is not valid JSON ({error})")))?;
        let version = value
            .get("version")
            .ok_or_else(|| self.corrupt(revision, "has no format \"version\""))?;
        if version.as_u64() != Some(FORMAT_VERSION) {
            return Err(self.corrupt(
                revision,
                format_args!(
                    "has format version {version}, but this replicator reads only version \
                     {FORMAT_VERSION} (was it written by a newer replicator?)"
                ),
            ));
        }
        let event: EventV1 = serde_json::from_value(value).map_err(|error| {
            self.corrupt(
                revision,
                format_args!("is not a valid version {FORMAT_VERSION} checkpoint ({error})"),
            )
        })?;
        Ok(Stored::Checkpoint(Checkpoint {
            source: event.source,
            target: event.target,
            taken_at: event.taken_at,
            seed: event.seed,
        }))
    }

    /// The stream's last revision and what it holds; `None` when there is no
    /// stream (or it was deleted by other means than ours).
    async fn read_last(&self) -> Result<Option<(u64, Stored)>, CheckpointError> {
        let doing = "read";
        let (generation, client) = self.client()?;
        let outcome = async {
            let read = client.read(
                ReadOf::Stream(self.stream.as_str(), StreamFrom::End),
                Direction::Backwards,
                1,
                true,
            );
            let mut reader = within(self.request_timeout, read).await?;
            within(self.request_timeout, reader.next()).await
        }
        .await;
        let event = match outcome {
            Ok(Some(event)) => event,
            Ok(None) | Err(eventstore::Error::ResourceNotFound) => return Ok(None),
            Err(eventstore::Error::ResourceDeleted) => {
                return Err(CheckpointError::permanent(format!(
                    "the {} is tombstoned (hard-deleted): it can never be written again; \
                     choose another checkpoint.instanceId",
                    self.location
                )))
            }
            Err(error) => return Err(self.failed(generation, doing, &error)),
        };
        let stored = self.decode(event.revision, &event.event_type, &event.data)?;
        Ok(Some((event.revision, stored)))
    }

    /// What this store knows of the stream, read when unknown.
    async fn known(&self, state: &mut State) -> Result<Last, CheckpointError> {
        if let Some(last) = state.last {
            return Ok(last);
        }
        let last = last_of(self.read_last().await?);
        state.last = Some(last);
        Ok(last)
    }

    /// Sets `$maxCount` unless it is set already.
    async fn ensure_metadata(&self, state: &mut State) -> Result<(), CheckpointError> {
        if state.metadata_set {
            return Ok(());
        }
        let (generation, client) = self.client()?;
        let current = within(
            self.request_timeout,
            client.stream_metadata(self.stream.as_str(), true),
        )
        .await
        .map_err(|error| self.failed(generation, "read the metadata of", &error))?;
        let set = matches!(&current, Some(m) if m.max_count == Some(CHECKPOINT_MAX_COUNT));
        if !set {
            let metadata = StreamMetadataBuilder::new()
                .max_count(CHECKPOINT_MAX_COUNT)
                .build();
            within(
                self.request_timeout,
                client.set_stream_metadata(self.stream.as_str(), ExpectedRevision::Any, &metadata),
            )
            .await
            .map_err(|error| self.failed(generation, "set $maxCount on", &error))?;
        }
        state.metadata_set = true;
        Ok(())
    }

    /// Appends one event after revision `last`; the state stays unknown
    /// unless the append is known to have landed.
    async fn append(
        &self,
        state: &mut State,
        last: Last,
        event: Proposed,
        doing: &str,
    ) -> Result<(), CheckpointError> {
        let expected = match last.revision {
            Some(revision) => ExpectedRevision::Exact(revision),
            None => ExpectedRevision::NoStream,
        };
        // Unknown until it is known to have landed: a timeout, or the
        // pipeline dropping this call, may leave it either way.
        state.last = None;
        let (generation, client) = self.client()?;
        match within(
            self.request_timeout,
            client.append(self.stream.as_str(), expected, vec![event]),
        )
        .await
        {
            Ok(written) => {
                state.last = Some(Last {
                    revision: written.next_expected_version.into(),
                    read: None,
                });
                Ok(())
            }
            Err(eventstore::Error::WrongExpectedVersion { current, .. }) => {
                let now = match current {
                    CurrentRevision::Current(revision) => format!("at revision {revision}"),
                    CurrentRevision::NoStream => "gone".to_owned(),
                };
                let was = match last.revision {
                    Some(revision) => format!("at revision {revision}"),
                    None => "absent".to_owned(),
                };
                Err(CheckpointError::permanent(format!(
                    "cannot {doing} the {}: someone else wrote it (it was {was} when this \
                     replicator last saw it, it is {now}): is another replicator running with \
                     the same checkpoint.instanceId? Two must never share one",
                    self.location
                )))
            }
            Err(error) => Err(self.failed(generation, doing, &error)),
        }
    }
}

fn last_of(read: Option<(u64, Stored)>) -> Last {
    match read {
        None => Last {
            revision: None,
            read: None,
        },
        Some((revision, Stored::Deleted)) => Last {
            revision: Some(revision),
            read: None,
        },
        Some((revision, Stored::Checkpoint(checkpoint))) => Last {
            revision: Some(revision),
            read: Some(checkpoint.source),
        },
    }
}

#[async_trait]
impl CheckpointStore for StreamCheckpointStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        let mut state = self.state.lock().await;
        let read = self.read_last().await?;
        let loaded = match &read {
            Some((_, Stored::Checkpoint(checkpoint))) => Some(checkpoint.clone()),
            _ => None,
        };
        state.last = Some(last_of(read));
        Ok(loaded)
    }

    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let data = EventV1 {
            version: FORMAT_VERSION,
            source: checkpoint.source,
            target: checkpoint.target,
            taken_at: checkpoint.taken_at,
            seed: checkpoint.seed,
        };
        let event = Proposed::json(CHECKPOINT_EVENT_TYPE, &data).map_err(|error| {
            CheckpointError::permanent(format!(
                "cannot encode the checkpoint for the {} ({error})",
                self.location
            ))
        })?;
        let mut state = self.state.lock().await;
        self.ensure_metadata(&mut state).await?;
        let last = self.known(&mut state).await?;
        if let Some(stored) = last.read {
            if checkpoint.source < stored {
                return Err(CheckpointError::permanent(format!(
                    "refusing to store {} in the {}: it holds {stored}, which is further (did \
                     another replicator with the same checkpoint.instanceId get there?); a \
                     checkpoint never moves backwards. `replicator checkpoint delete` first to \
                     start over",
                    checkpoint.source, self.location
                )));
            }
        }
        self.append(&mut state, last, event, "store the checkpoint in")
            .await
    }

    async fn delete(&self) -> Result<(), CheckpointError> {
        let mut state = self.state.lock().await;
        // Read afresh: a delete is rare, and must not miss a checkpoint
        // another process stored.
        state.last = None;
        let read = self.read_last().await?;
        let last = match read {
            None | Some((_, Stored::Deleted)) => {
                state.last = Some(last_of(read));
                return Ok(());
            }
            Some(read) => last_of(Some(read)),
        };
        let marker = Proposed::json(
            DELETED_EVENT_TYPE,
            &serde_json::json!({ "version": FORMAT_VERSION }),
        )
        .map_err(|error| {
            CheckpointError::permanent(format!("cannot encode a delete marker ({error})"))
        })?;
        self.append(&mut state, last, marker, "delete the checkpoint in")
            .await
    }

    /// An append of no events: authorised and acknowledged as a write of the
    /// stream, it writes nothing (see [`StreamCheckpointStore`]).
    async fn check(&self) -> Result<(), CheckpointError> {
        let (generation, client) = self.client()?;
        match within(
            self.request_timeout,
            client.append(self.stream.as_str(), ExpectedRevision::Any, Vec::new()),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(eventstore::Error::ResourceDeleted) => Err(CheckpointError::permanent(format!(
                "the {} is tombstoned (hard-deleted): it can never be written again; choose \
                 another checkpoint.instanceId",
                self.location
            ))),
            // Refused from the start: no renewal is on its way.
            Err(error) if is_refused_token(&error) => Err(CheckpointError::permanent(format!(
                "cannot write (an append of nothing) to the {}: {}",
                self.location,
                describe(&error)
            ))),
            Err(error) => Err(self.failed(generation, "write (an append of nothing) to", &error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify;
    use replicator_core::{ChangeKind, SkipReason};

    #[test]
    fn the_checkpoint_stream_is_never_replicated() {
        let stream = format!("{CHECKPOINT_STREAM_PREFIX}default");
        assert_eq!(
            classify(&stream, CHECKPOINT_EVENT_TYPE, b"{}"),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
        // Its metadata ($maxCount) is not either.
        assert_eq!(
            classify(&format!("$${stream}"), "$metadata", b"{\"$maxCount\":10}"),
            ChangeKind::Skip(SkipReason::SystemStream)
        );
    }

    #[test]
    fn the_location_names_the_stream_and_cluster_without_the_password() {
        let store = StreamCheckpointStore::new("esdb://admin:s3cr3t@target:2113?tls=false", "blue")
            .unwrap();
        let shown = format!("{store:?}");
        assert!(shown.contains("$replicator-checkpoint-blue"), "{shown}");
        assert!(shown.contains("target:2113"), "{shown}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(StreamCheckpointStore::new("esdb://target:2113", " ").is_err());
    }
}
