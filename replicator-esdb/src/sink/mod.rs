//! The EventStoreDB [`Sink`]: batched, idempotent appends, in the source's
//! order ([`ordered`]) or concurrently per stream.

//!
//! This file holds the sink itself: its construction, the [`Sink`]
//! implementation and the error it reports. Its configuration is in
//! `config.rs`, the I/O of a stream plan (append runs, tombstones) in
//! `run.rs`, the batch-append session appends go through in `session.rs`,
//! what it remembers of target revisions in `revisions.rs`, the source-order
//! writer in `ordered.rs`.

mod config;
mod ordered;
mod revisions;
mod run;
mod session;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventstore::ExpectedRevision;
use futures::{FutureExt, StreamExt};
use replicator_core::health::short;
use replicator_core::{ErrorKind, Event, Position, Sink, SinkError, WriteAck};
use tracing::debug;

use crate::cluster::{self, within};
use crate::connection::{
    describe, error_kind, is_refused_token, needs_new_client, ClientCell, REQUEST_TIMEOUT,
};
use crate::plan::plan;
use crate::wire::append::BatchSession;
use crate::wire::client::GrpcClient as Client;
use crate::wire::token::BearerToken;

pub use config::{EsdbSinkConfig, RevisionMode, WriteOrder};

/// Default cap on the payload of one append request.
pub const DEFAULT_MAX_APPEND_BYTES: usize = 1024 * 1024;

/// How many stream plans of one batch run at once.
const STREAMS_IN_FLIGHT: usize = 32;

/// Default of [`EsdbSink::with_replay_search_depth`]: how many of a target
/// stream's last records are searched for a run's records by event id.
pub const DEFAULT_REPLAY_SEARCH_DEPTH: usize = 4096;

/// The stream [`EsdbSink::check`] appends nothing to. An append of no events
/// writes nothing, whatever the stream holds, but is authenticated and
/// authorised as a write.
pub const WRITE_CHECK_STREAM: &str = "replicator-write-check";

/// Failed operations in a row after which the client is rebuilt anyway.
const CLIENT_REBUILD_AFTER: u32 = 8;

/// Writes events to an EventStoreDB / KurrentDB target.
///
/// # What is preserved
/// Per event: id, type, data, user metadata and content type, byte for byte,
/// and, with [`RevisionMode::FromSource`], each stream's revisions (target
/// revision = source revision for every stream the source still holds from
/// its first event). JSON data is sent as
/// is, never parsed and re-encoded. Stream metadata and soft deletes are
/// replicated as the `$metadata` records the source holds (a soft delete *is*
/// such a record, `$tb` = `i64::MAX`), so their ids and bytes match too.
///
/// Not preserved: the created time (the server stamps its own; the source's
/// is on [`Event::created`] for anyone who needs it), `$all` positions (the
/// target has its own log; [`WriteAck::target_position`] reports them), and
/// the ids of records a server writes by itself: tombstones, and the `$tb`
/// metadata record it adds when metadata is set on a soft-deleted stream. The
/// target writes those too, with the same content; the sink recognises them
/// (same type and data at the same revision) instead of writing them twice.
///
/// JSON-marked data that is not UTF-8 cannot be sent as JSON by the client:
/// it is written as binary, with a warning.
///
/// # Speed
/// Consecutive records of one stream in a batch go in one append (up to
/// [`DEFAULT_MAX_APPEND_BYTES`]); the streams of a batch are written
/// concurrently, and the pipeline keeps [`EsdbSinkConfig::partition_count`]
/// batches in flight.
///
/// # Replays
/// Each append states the revision the sink expects its first record at, a
/// *guess*: with [`RevisionMode::FromSource`] the source revision (plus the
/// offset of a renumbered stream), with [`RevisionMode::Tracked`] the last
/// revision the sink saw for that target stream, plus one. When the target
/// refuses the append (wrong expected revision), the sink works out what it
/// already holds, the same way in both modes (the state machine in
/// `plan.rs`):
/// - the target is at or past the guess: the records there are read and
///   compared by event id; those already written are skipped (a replay after
///   a crash, a retried batch, an old checkpoint) and the rest appended after
///   them. Revisions the target has but does not return (hidden by `$tb`,
///   `$maxCount` or a soft delete, which the target's copied metadata
///   mirrors) count as written;
/// - the target is behind the guess, or there is no guess (a tracked stream
///   the sink has not written since it started, or that it forgot: the cache
///   holds 100,000 streams), or the records at the guess are not ours: the
///   target stream's last records are searched for the run's event ids. What
///   the target holds of a replay is a prefix, in order, of what this run
///   sends to that stream after the checkpoint (each target stream is written
///   by one writer in source order), so from the first record found the
///   following ones must match in order: they are skipped and the rest
///   appended after the target's end. Nothing found: the records are new and
///   go after the target's end (with `FromSource`, a stream the source lost
///   the first events of, scavenged or truncated, is so renumbered, with a
///   warning).
///
/// A tracked stream the sink does not know yet: when the run starts its
/// source stream (source revision 0) it is appended as a new stream
/// (expected: no stream), so a stream created fresh costs no read.
/// Otherwise the sink first asks the target where the stream ends (an append
/// stating a revision no stream has, which the target refuses saying where
/// the stream is), not "no stream": a soft-deleted stream would accept that,
/// and take a replay of the records it hides as new ones. An existing stream
/// so costs one refused append and one read of its tail, once per run of the
/// replicator. When the stream's tail reads as empty although it has
/// records (soft-deleted, or all truncated), the target's last records in
/// `$all`, which still holds them, are searched instead (same depth).
///
/// Appending to a tombstoned target stream counts as written: a tombstone on
/// the target can only come from the source. A target stream holding other
/// records where the source's belong is a permanent error naming the stream
/// and event: the target is not a replica of this source.
///
/// **The bound.** The tail search reads at most
/// [`EsdbSink::with_replay_search_depth`] records ([`DEFAULT_REPLAY_SEARCH_DEPTH`],
/// 4096). It finds a replay as long as fewer records of that target stream
/// were written after the first replayed one than that: with
/// [`RevisionMode::Tracked`], as long as one target stream did not receive
/// more records than that between the stored checkpoint and the crash
/// (`checkpointAfter` bounds this unless the checkpoint store was down for
/// long). Past it, the replayed records are not found and are written a
/// second time. With [`RevisionMode::FromSource`] the search only serves
/// renumbered streams; other replays are found at their revisions, whatever
/// their number.
///
/// **Hidden records.** When a target stream hides some of its records (a
/// `$maxCount`, a `$tb` or a soft delete, which the copied metadata mirrors),
/// the tail search also looks through the target's last records in `$all`
/// (as many as the search depth), which still hold them: a replay of records
/// the target hides by now is found there. Past that bound they are written
/// again. And the `$tb` (truncate before) of copied stream metadata
/// is a source revision: on a stream whose target revisions differ (events
/// left out from the middle, merged streams, renumbered streams) it is copied
/// unchanged and so hides a different set of events than on the source.
///
/// # Deadlines and failures
/// Every request has a deadline ([`EsdbSink::with_request_timeout`], 10 s by
/// default): each append, tombstone, batch-append request, and each step of
/// the reads that recognise a replay. The `eventstore` 4.0.0 client enforces
/// none itself (its `grpc-timeout` header only asks the server), so a frozen
/// or partitioned target would otherwise be waited on until HTTP/2 keepalive
/// closes the connection (about 20 s, see [`crate::EsdbReader`]). A request
/// past its deadline fails the write with a transient error and the client is
/// rebuilt, so the retry uses a new connection. The sink does not retry by
/// itself: the pipeline retries transient errors with backoff and reports
/// the target's health.
///
/// [`Sink::check`] makes an append of no events to [`WRITE_CHECK_STREAM`] before
/// replication starts: it writes nothing, but proves that the target answers,
/// that the credentials are valid and that writes are allowed. Access denied
/// is permanent; an unreachable target is transient.
pub struct EsdbSink {
    client: ClientCell,
    partition_count: usize,
    max_append_bytes: usize,
    request_timeout: Duration,
    /// Consecutive failed operations; every few, the client is rebuilt in
    /// case it is stuck in a state it cannot leave by itself.
    failures: std::sync::atomic::AtomicU32,
    /// `target revision - source revision` of streams that do not line up
    /// (the source lost their first events to scavenging or truncation).
    offsets: Mutex<HashMap<String, i64>>,
    revisions: RevisionMode,
    /// [`RevisionMode::Tracked`]: the last revision of target streams
    /// written (a bounded cache; a miss is learnt from the target).
    tracked: Mutex<HashMap<String, u64>>,
    search_depth: usize,
    /// The batch-append session appends go through, with the generation of
    /// the client it belongs to; see [`EsdbSink::append_events`].
    batch: Mutex<Option<(u64, Arc<BatchSession>)>>,
    /// The leader a session's `not-leader` answer named: the next session's
    /// channel goes there instead of asking the same node again.
    batch_leader: Mutex<Option<eventstore::Endpoint>>,
    /// Set when the target does not offer batch append.
    no_batch_append: AtomicBool,
    order: WriteOrder,
    /// [`WriteOrder::Source`]: what the ordered writer knows of the target.
    order_state: Mutex<ordered::OrderState>,
    /// [`WriteOrder::Source`]: the pipelined batches' turns.
    turns: ordered::Turns,
}

impl fmt::Debug for EsdbSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsdbSink")
            .field("partition_count", &self.partition_count)
            .field("max_append_bytes", &self.max_append_bytes)
            .finish_non_exhaustive()
    }
}

impl EsdbSink {
    /// Creates the sink. Nothing connects until the first write.
    ///
    /// # Errors
    /// A permanent [`SinkError`] when the connection string does not parse or
    /// `partition_count` is 0.
    pub fn new(config: EsdbSinkConfig) -> Result<Self, SinkError> {
        let settings = cluster::settings(&config.connection_string)
            .map_err(|e| SinkError::permanent(format!("sink: {e}")))?;
        if config.partition_count == 0 {
            return Err(SinkError::permanent(
                "sink: partitionCount must be at least 1",
            ));
        }
        if config.order == WriteOrder::Source
            && settings.node_preference() != eventstore::NodePreference::Leader
        {
            return Err(SinkError::permanent(format!(
                "sink: nodePreference={:?} with source order: a node other than the leader \
                 forwards each write on its own, which can reorder them; remove \
                 nodePreference from the sink's connection string (writes go to the leader), \
                 or set sink.order: stream",
                settings.node_preference()
            )));
        }
        Ok(EsdbSink {
            client: ClientCell::new(settings),
            partition_count: config.partition_count,
            max_append_bytes: DEFAULT_MAX_APPEND_BYTES,
            request_timeout: REQUEST_TIMEOUT,
            failures: std::sync::atomic::AtomicU32::new(0),
            offsets: Mutex::new(HashMap::new()),
            revisions: config.revisions,
            tracked: Mutex::new(HashMap::new()),
            search_depth: DEFAULT_REPLAY_SEARCH_DEPTH,
            batch: Mutex::new(None),
            batch_leader: Mutex::new(None),
            no_batch_append: AtomicBool::new(false),
            order: config.order,
            order_state: Mutex::default(),
            turns: ordered::Turns::default(),
        })
    }

    /// Changes the cap on one append's payload (at least one event is always
    /// sent, whatever its size).
    pub fn with_max_append_bytes(mut self, bytes: usize) -> Self {
        self.max_append_bytes = bytes.max(1);
        self
    }

    /// Sets how many of a target stream's last records are searched, by event
    /// id, for the records of an append the target refused
    /// ([`DEFAULT_REPLAY_SEARCH_DEPTH`] by default; at least 1). See "The
    /// bound" under "Replays" on [`EsdbSink`].
    pub fn with_replay_search_depth(mut self, records: usize) -> Self {
        self.search_depth = records.max(1);
        self
    }

    /// Sets the deadline of each request to the target (10 s by default; at
    /// least 1 ms). Keep it below the pipeline's call deadline, so that a
    /// hung request fails with an error saying which one.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Authenticates every call to the target with `token` (when given),
    /// `authorization: Bearer`, instead of the connection string's
    /// credentials; a token file is read again whenever it changes. A token
    /// refused by [`Sink::check`] is a permanent error; refused later
    /// (expired), writes fail as transient (the target reported unhealthy
    /// while the pipeline retries), until the file holds a token the target
    /// accepts.
    pub fn with_bearer_token(mut self, token: Option<BearerToken>) -> Self {
        self.client.set_token(token);
        self
    }

    /// Counts a failed operation and drops the client when it cannot recover
    /// by itself, or after several failures in a row.
    fn failed(&self, generation: u64, error: &eventstore::Error) {
        use std::sync::atomic::Ordering;
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if is_refused_token(error) {
            // The batch-append call was opened with the same token: a
            // server may refuse its next request only. The next write opens
            // one with the token of then.
            *self.batch.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
        if needs_new_client(error) || failures.is_multiple_of(CLIENT_REBUILD_AFTER) {
            debug!(failures, "Rebuilding the target client");
            self.client.discard(generation);
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn client(&self) -> Result<(u64, Arc<Client>), SinkError> {
        self.client.get().map_err(|e| {
            let kind = error_kind(&e);
            let message = format!("cannot create the target client: {e}");
            match kind {
                ErrorKind::Transient => SinkError::transient(message),
                ErrorKind::Permanent => SinkError::permanent(message),
            }
            .with_source(e)
        })
    }
}

#[async_trait]
impl Sink for EsdbSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        if self.order == WriteOrder::Source {
            return self.write_in_order(batch).await;
        }
        let plans = plan(batch, self.max_append_bytes);
        // Boxed up front: a closure inside the stream combinators trips the
        // compiler's `Send` inference for the trait's boxed future.
        let writes: Vec<_> = plans
            .iter()
            .map(|p| self.write_stream_plan(&p.steps).boxed())
            .collect();
        let results: Vec<Result<Option<Position>, SinkError>> = futures::stream::iter(writes)
            .buffer_unordered(STREAMS_IN_FLIGHT)
            .collect()
            .await;
        // Let every stream finish before reporting, so a retry replays as
        // little as possible; a permanent error wins over a transient one.
        let mut target_position = None;
        let mut failure: Option<SinkError> = None;
        for result in results {
            match result {
                Ok(position) => target_position = target_position.max(position),
                Err(error) => {
                    let replace = match &failure {
                        None => true,
                        Some(previous) => previous.is_transient() && !error.is_transient(),
                    };
                    if replace {
                        failure = Some(error);
                    }
                }
            }
        }
        match failure {
            Some(error) => {
                self.forget_tracked(batch);
                Err(error)
            }
            None => Ok(WriteAck { target_position }),
        }
    }

    fn max_in_flight(&self) -> usize {
        match self.order {
            WriteOrder::Source => 1,
            WriteOrder::Stream => self.partition_count,
        }
    }

    /// With source order, 4 batches in flight, sent in order on one call
    /// (one with [`RevisionMode::Tracked`]: with several, a case with a cut
    /// connection and crashes was found to diverge; see ARCHITECTURE.md).
    fn pipelined_writes(&self) -> usize {
        match (self.order, self.revisions) {
            (WriteOrder::Source, RevisionMode::FromSource) => ordered::PIPELINED_BATCHES,
            (WriteOrder::Source, RevisionMode::Tracked) | (WriteOrder::Stream, _) => 1,
        }
    }

    /// Appends no events to [`WRITE_CHECK_STREAM`] (expected revision: any). Nothing
    /// is written, but the target must answer, accept the credentials and
    /// allow the write.
    ///
    /// # Errors
    /// Permanent when access is denied (bad credentials, no write
    /// permission) or the connection string cannot be used; transient when
    /// the target cannot be reached or does not answer within the request
    /// deadline.
    async fn check(&self) -> Result<(), SinkError> {
        let (generation, client) = self.client()?;
        let result = within(
            self.request_timeout,
            client.append(WRITE_CHECK_STREAM, ExpectedRevision::Any, Vec::new()),
        )
        .await;
        match result {
            // A tombstoned check stream still proves that we got through.
            Ok(_) | Err(eventstore::Error::ResourceDeleted) => {
                self.succeeded();
                Ok(())
            }
            Err(error) => {
                self.failed(generation, &error);
                let (doing, hint) = match &error {
                    eventstore::Error::DeadlineExceeded => (
                        format!("no answer within {}", short(self.request_timeout)),
                        "",
                    ),
                    eventstore::Error::AccessDenied => (
                        describe(&error),
                        ": check the sink's credentials and its permission to write",
                    ),
                    _ => (describe(&error), ""),
                };
                if is_refused_token(&error) {
                    // Refused from the start: no renewal is on its way.
                    // The message says it all (the client's text for the
                    // status would add nothing but noise).
                    return Err(SinkError::permanent(format!(
                        "the target refused the sink's bearer token: {doing}"
                    )));
                }
                let message = format!(
                    "the target cannot be written (an empty append to `{WRITE_CHECK_STREAM}`, which \
                     writes nothing, failed): {doing}{hint}"
                );
                Err(match error_kind(&error) {
                    ErrorKind::Transient => SinkError::transient(message),
                    ErrorKind::Permanent => SinkError::permanent(message),
                }
                .with_source(error))
            }
        }
    }
}

/// A [`SinkError`] naming what was done, the stream and the event.
fn sink_error(error: eventstore::Error, doing: &str, event: &Event) -> SinkError {
    let hint = match error {
        eventstore::Error::AccessDenied => {
            ": check the sink's credentials and the target's access control"
        }
        eventstore::Error::DeadlineExceeded => ": the target did not answer within the deadline",
        _ => "",
    };
    let message = format!(
        "{doing} (event {}, source position {}) failed: {}{hint}",
        event.id,
        event.position,
        describe(&error)
    );
    let sink_error = match error_kind(&error) {
        ErrorKind::Transient => SinkError::transient(message),
        ErrorKind::Permanent => SinkError::permanent(message),
    };
    // A refused token's message is all there is to say.
    if is_refused_token(&error) {
        return sink_error;
    }
    sink_error.with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_configuration_is_named() {
        let err = EsdbSink::new(EsdbSinkConfig {
            partition_count: 0,
            ..EsdbSinkConfig::new("esdb://localhost:2113?tls=false")
        })
        .unwrap_err();
        assert!(err.message().contains("partitionCount"), "{err}");
        assert!(!err.is_transient());

        let err = EsdbSink::new(EsdbSinkConfig::new("nonsense://x:secret@y")).unwrap_err();
        assert!(err.message().contains("invalid connection string"), "{err}");
        assert!(!err.message().contains("secret"), "{err}");
    }
}
