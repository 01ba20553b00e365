//! The EventStoreDB [`Sink`]: batched, idempotent appends, in the source's
//! order ([`ordered`]) or concurrently per stream.

mod ordered;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventstore::{
    AppendToStreamOptions, Client, CurrentRevision, EventData, ExpectedRevision, ReadAllOptions,
    ReadStreamOptions, StreamPosition, TombstoneStreamOptions,
};
use futures::{FutureExt, StreamExt};
use replicator_core::health::short;
use replicator_core::secret::ConnectionString;
use replicator_core::{ChangeKind, ErrorKind, Event, Position, Sink, SinkError, WriteAck};
use tracing::{debug, warn};

use crate::cluster::{self, within, ClientPosition as _};
use crate::connection::{describe, error_kind, needs_new_client, ClientCell, REQUEST_TIMEOUT};
use crate::encode::to_event_data;
use crate::plan::{
    plan, shift_truncate_before, Action, AppendRun, Divergence, Done, Expected, Guess, Note, Reply,
    Step, TargetRecord, PROBE_REVISION,
};
use crate::wire::append::BatchSession;
use crate::wire::channel::WireChannel;

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

/// Renumbered streams remembered at most (the map holds only those).
const MAX_REMEMBERED_OFFSETS: usize = 100_000;

/// Target streams whose last revision [`RevisionMode::Tracked`] remembers at
/// most (about 100 bytes each).
const MAX_TRACKED_STREAMS: usize = 100_000;

/// Configuration of an [`EsdbSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EsdbSinkConfig {
    /// Connection string of the target, e.g.
    /// `esdb://admin:changeit@target:2113?tls=false` (printed without its
    /// password).
    pub connection_string: ConnectionString,
    /// With [`WriteOrder::Stream`], how many batches may be written at once
    /// (at least 1): streams are hashed onto this many partitions; each
    /// stream keeps its order. With write latencies of a few milliseconds, 8
    /// to 32 keep a target busy. Not used with [`WriteOrder::Source`].
    pub partition_count: usize,
    /// How the target revision of each append is found: predicted from the
    /// source revision (the default), or tracked per target stream, which a
    /// transform that renames streams or drops events from the middle of a
    /// stream needs. See [`RevisionMode`].
    pub revisions: RevisionMode,
    /// Whether the target's `$all` keeps the source's order (the default),
    /// or only each stream's. See [`WriteOrder`].
    pub order: WriteOrder,
}

/// The order an [`EsdbSink`] writes in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteOrder {
    /// The target's `$all` holds the records in the source's `$all` order:
    /// one writer ([`Sink::max_in_flight`] is 1) sends each batch's appends
    /// in order on one batch-append call to the leader, many at once. A
    /// consumer's source position maps to the target position of the same
    /// event. [`EsdbSinkConfig::partition_count`] is not used.
    #[default]
    Source,
    /// Only each stream's order is kept: streams are hashed onto
    /// [`EsdbSinkConfig::partition_count`] writers, and the streams of a
    /// batch are appended concurrently, so records of different streams
    /// land in another interleaving than on the source. A consumer of
    /// `$all` or of a category sees cross-stream history in another order
    /// after the cutover.
    Stream,
}

impl fmt::Display for WriteOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteOrder::Source => "source",
            WriteOrder::Stream => "stream",
        })
    }
}

/// How an [`EsdbSink`] knows the revision each append expects, and so how it
/// recognises a replay. See "Replays" on [`EsdbSink`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RevisionMode {
    /// Target revision = source revision (for a stream the source lost the
    /// first events of, plus a renumbering offset). Right when every record
    /// keeps its stream and no event is left out from the middle of a stream:
    /// no transform, or only transforms whose
    /// [`keeps_revisions`](replicator_core::Transform::keeps_revisions) is
    /// true.
    #[default]
    FromSource,
    /// The sink tracks each target stream's last revision itself (learnt from
    /// its own appends and, on a miss, from the target) and recognises replays
    /// by event id in the target stream's tail. Needed when a transform drops
    /// events from the middle of a stream or renames (and so may merge)
    /// streams. `$$` metadata streams, which transforms do not rename, keep
    /// [`RevisionMode::FromSource`].
    Tracked,
}

impl EsdbSinkConfig {
    /// A configuration with the recommended 8 partitions.
    pub fn new(connection_string: impl Into<ConnectionString>) -> Self {
        EsdbSinkConfig {
            connection_string: connection_string.into(),
            partition_count: 8,
            revisions: RevisionMode::FromSource,
            order: WriteOrder::Source,
        }
    }
}

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

    async fn write_stream_plan(&self, steps: &[Step<'_>]) -> Result<Option<Position>, SinkError> {
        let mut highest = None;
        for step in steps {
            let position = match step {
                Step::Append { stream, events } => match self.shifted_metadata(events) {
                    Some(shifted) => self.append_run(stream, &[&shifted]).await?,
                    None => self.append_run(stream, events).await?,
                },
                Step::Tombstone(event) => Box::pin(self.tombstone(event)).await?,
            };
            highest = highest.max(position);
        }
        Ok(highest)
    }

    /// A stream-metadata record whose `$tb` must move because its stream is
    /// renumbered on the target ([`shift_truncate_before`]), with the moved
    /// value; `None` for anything else. Only [`RevisionMode::FromSource`]
    /// knows the offset, and only for a stream this sink renumbered (or found
    /// renumbered) since it started.
    fn shifted_metadata(&self, events: &[&Event]) -> Option<Event> {
        let [event] = events else { return None };
        if event.kind != ChangeKind::StreamMetadata || self.revisions != RevisionMode::FromSource {
            return None;
        }
        let data = shift_truncate_before(&event.data, self.offset(event.target_stream()))?;
        debug!(
            stream = event.target_stream(),
            "Moving a renumbered stream's $tb to its target revisions"
        );
        Some(Event {
            data,
            ..(*event).clone()
        })
    }

    /// Counts a failed operation and drops the client when it cannot recover
    /// by itself, or after several failures in a row.
    fn failed(&self, generation: u64, error: &eventstore::Error) {
        use std::sync::atomic::Ordering;
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if needs_new_client(error) || failures.is_multiple_of(CLIENT_REBUILD_AFTER) {
            debug!(failures, "Rebuilding the target client");
            self.client.discard(generation);
        }
    }

    fn succeeded(&self) {
        self.failures.store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn offset(&self, stream: &str) -> i64 {
        let offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        offsets.get(stream).copied().unwrap_or(0)
    }

    fn remember_offset(&self, stream: &str, offset: i64) {
        let mut offsets = self.offsets.lock().unwrap_or_else(|e| e.into_inner());
        if offset == 0 {
            offsets.remove(stream);
            return;
        }
        if offsets.len() >= MAX_REMEMBERED_OFFSETS {
            // Only a cache: forgetting costs a lookup on the next write.
            offsets.clear();
        }
        offsets.insert(stream.to_owned(), offset);
    }

    /// Appends records of one stream, recognising a replay.
    async fn append_run(
        &self,
        stream: &str,
        events: &[&Event],
    ) -> Result<Option<Position>, SinkError> {
        self.append_run_reporting(stream, events)
            .await
            .map(|(done, _)| done.position)
    }

    /// [`EsdbSink::append_run`], also saying whether anything was appended
    /// (not every record was on the target already).
    async fn append_run_reporting(
        &self,
        stream: &str,
        events: &[&Event],
    ) -> Result<(Done, bool), SinkError> {
        let (generation, client) = self.client()?;
        let tracked = self.is_tracked(stream);
        let (guess, offset) = self.guess(stream, events, tracked);
        match self
            .append_run_with(generation, &client, stream, events, guess, tracked)
            .await
        {
            Ok((done, appended)) => {
                self.succeeded();
                self.learn(stream, events, done, tracked, offset);
                Ok((done, appended))
            }
            Err(error) => Err(self.run_error(generation, stream, error)),
        }
    }

    /// Whether `stream`'s revisions are tracked ([`RevisionMode::Tracked`];
    /// `$$` metadata streams never are).
    fn is_tracked(&self, stream: &str) -> bool {
        self.revisions == RevisionMode::Tracked && !stream.starts_with("$$")
    }

    /// Where `events` (a run of `stream`) most likely go on the target, and
    /// the renumbering offset that guess used.
    fn guess(&self, stream: &str, events: &[&Event], tracked: bool) -> (Guess, i64) {
        if tracked {
            let guess = self.tracked_next(stream).map(Guess::At);
            // Not known: a run that starts its source stream most likely
            // starts the target stream too (no read for a fresh stream).
            let guess = guess.unwrap_or(match events[0].revision {
                0 => Guess::New,
                _ => Guess::Unknown,
            });
            (guess, 0)
        } else {
            let offset = self.offset(stream);
            // A negative result cannot come from offsets we computed: start
            // over from the source revision.
            let revision =
                u64::try_from(events[0].revision as i64 + offset).unwrap_or(events[0].revision);
            (Guess::At(revision), offset)
        }
    }

    /// A tracked stream's next target revision as the target last confirmed.
    fn tracked_next(&self, stream: &str) -> Option<u64> {
        self.tracked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(stream)
            .map(|last| last + 1)
    }

    /// Remembers what a finished run taught about its target stream: the
    /// last revision of a tracked stream, the renumbering offset of another.
    fn learn(&self, stream: &str, events: &[&Event], done: Done, tracked: bool, offset: i64) {
        if tracked {
            self.remember_last(stream, done);
        } else if let Some(last) = done.last_revision {
            let last_source = events[events.len() - 1].revision;
            let learnt = last as i64 - last_source as i64;
            if learnt != offset {
                self.remember_offset(stream, learnt);
            }
        }
    }

    /// The [`SinkError`] for a failed run of `stream`.
    fn run_error(&self, generation: u64, stream: &str, error: RunError<'_>) -> SinkError {
        match error {
            RunError::Client(error, event) => {
                self.failed(generation, &error);
                sink_error(error, &format!("appending to `{stream}`"), event)
            }
            RunError::Diverged(message) => {
                SinkError::permanent(format!("appending to `{stream}`: {message}"))
            }
            RunError::Unsettled(event) => SinkError::transient(format!(
                "appending to `{stream}` (event {}, source position {}): the target stream \
                 kept changing while its replayed records were checked; is something else \
                 writing to it?",
                event.id, event.position
            )),
        }
    }

    /// Performs the actions of an [`AppendRun`] (the decisions are in
    /// `plan.rs`; this is only the I/O). Also says whether anything was
    /// appended.
    async fn append_run_with<'e>(
        &self,
        generation: u64,
        client: &Client,
        stream: &str,
        events: &[&'e Event],
        guess: Guess,
        tracked: bool,
    ) -> Result<(Done, bool), RunError<'e>> {
        let mut run = AppendRun::new(events, guess, stream.starts_with("$$"));
        let mut action = run.start();
        loop {
            let reply = match action {
                Action::Append {
                    from,
                    expected,
                    note,
                } => {
                    log_note(stream, events[from], note, tracked);
                    match self
                        .append_events(generation, client, stream, expected.into(), &events[from..])
                        .await
                    {
                        Ok((position, last)) => Reply::Appended { position, last },
                        Err(e) => refusal(e).map_err(|e| RunError::Client(e, events[from]))?,
                    }
                }
                Action::Done(done) => {
                    if done.deleted {
                        debug!(
                            stream,
                            "Target stream is tombstoned: records already written"
                        );
                    }
                    return Ok((done, run.appended()));
                }
                action => self.settle_action(client, stream, action, &run).await?,
            };
            action = run.step(reply);
        }
    }

    /// Performs a read of an [`AppendRun`], or turns its end in failure into
    /// the error. `action` is neither an append nor done.
    async fn settle_action<'e>(
        &self,
        client: &Client,
        stream: &str,
        action: Action,
        run: &AppendRun<'_, 'e>,
    ) -> Result<Reply, RunError<'e>> {
        match action {
            Action::Read { revision, count } => {
                let options = ReadStreamOptions::default()
                    .forwards()
                    .position(StreamPosition::Position(revision))
                    .max_count(count);
                Box::pin(self.read_reply(client, stream, &options, run.current_event())).await
            }
            Action::SearchTail => {
                let options = ReadStreamOptions::default()
                    .backwards()
                    .position(StreamPosition::End)
                    .max_count(self.search_depth);
                match Box::pin(self.read_reply(client, stream, &options, run.current_event()))
                    .await?
                {
                    // Records hidden (soft-deleted, truncated by `$tb` or
                    // `$maxCount`): none readable although the stream has
                    // some, or none below the first readable one. `$all`
                    // still holds them, and a replay may be among them.
                    Reply::Records(mut records)
                        if records.iter().map(|r| r.revision).min() != Some(0)
                            && records.len() < self.search_depth =>
                    {
                        let hidden = Box::pin(self.search_all(client, stream))
                            .await
                            .map_err(|e| RunError::Client(e, run.current_event()))?;
                        if let Reply::Records(hidden) = hidden {
                            let readable: std::collections::HashSet<u64> =
                                records.iter().map(|r| r.revision).collect();
                            records.extend(
                                hidden
                                    .into_iter()
                                    .filter(|r| !readable.contains(&r.revision)),
                            );
                        }
                        Ok(Reply::Records(records))
                    }
                    reply => Ok(reply),
                }
            }
            Action::Diverged(Divergence {
                index,
                found,
                revision,
            }) => {
                let event = run.event(index);
                Err(RunError::Diverged(format!(
                    "the target holds event {found} at revision {revision} where source \
                     event {} (source revision {}, position {}) belongs: the target \
                     stream is not a replica of the source",
                    event.id, event.revision, event.position,
                )))
            }
            Action::Unsettled { index } => Err(RunError::Unsettled(run.event(index))),
            Action::Append { .. } | Action::Done(_) => {
                unreachable!("appends and ends are the caller's")
            }
        }
    }

    async fn read_reply<'e>(
        &self,
        client: &Client,
        stream: &str,
        options: &ReadStreamOptions,
        event: &'e Event,
    ) -> Result<Reply, RunError<'e>> {
        match read_records(client, stream, options, self.request_timeout).await {
            Ok(records) => Ok(Reply::Records(records)),
            Err(eventstore::Error::ResourceDeleted) => Ok(Reply::Deleted),
            Err(e) => Err(RunError::Client(e, event)),
        }
    }

    /// The records of `stream` among the target's last records in `$all`
    /// (as many as the search depth), hidden ones included.
    async fn search_all(&self, client: &Client, stream: &str) -> Result<Reply, eventstore::Error> {
        let options = ReadAllOptions::default()
            .backwards()
            .position(StreamPosition::End)
            .max_count(self.search_depth);
        let mut reader = within(self.request_timeout, client.read_all(&options)).await?;
        let mut records = Vec::new();
        while let Some(resolved) = within(self.request_timeout, reader.next()).await? {
            if let Some(record) = resolved.event {
                if record.stream_id == stream {
                    records.push(TargetRecord {
                        revision: record.revision,
                        id: record.id,
                        event_type: record.event_type,
                        data: record.data,
                        position: Position::from_client(record.position),
                    });
                }
            }
        }
        Ok(Reply::Records(records))
    }

    /// Forgets the tracked revisions of `batch`'s target streams, after a
    /// failed write: the streams written before the failure are ahead of
    /// the batch's records, and its retry must find them on the target as
    /// replays instead of appending them after themselves.
    pub(super) fn forget_tracked(&self, batch: &[Event]) {
        if self.revisions != RevisionMode::Tracked {
            return;
        }
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        for event in batch {
            tracked.remove(event.target_stream());
        }
    }

    /// Remembers where a tracked target stream ends after a run.
    fn remember_last(&self, stream: &str, done: Done) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|e| e.into_inner());
        match done.last_revision {
            Some(last) if !done.deleted => {
                if tracked.len() >= MAX_TRACKED_STREAMS && !tracked.contains_key(stream) {
                    // Only a cache: a forgotten stream costs one failed
                    // append and a tail read on its next write. Forget half
                    // (an arbitrary half: the map's order).
                    let mut keep = false;
                    tracked.retain(|_, _| {
                        keep = !keep;
                        keep
                    });
                }
                tracked.insert(stream.to_owned(), last);
            }
            _ => {
                tracked.remove(stream);
            }
        }
    }

    async fn tombstone(&self, event: &Event) -> Result<Option<Position>, SinkError> {
        let stream = event.target_stream();
        let (generation, client) = self.client()?;
        if self.revisions == RevisionMode::Tracked {
            // Appends to it will say it is tombstoned; nothing to remember.
            self.tracked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(stream);
        }
        // On the batch-append session's channel when there is one: no
        // delayed ACK (`wire::tombstone`), and the same node.
        let session = self.batch_session(generation).await;
        let answer = match &session {
            Some(session) => {
                within(
                    self.request_timeout,
                    crate::wire::tombstone::tombstone(session.channel(), stream),
                )
                .await
            }
            None => {
                let options =
                    TombstoneStreamOptions::default().expected_revision(ExpectedRevision::Any);
                within(
                    self.request_timeout,
                    client.tombstone_stream(stream, &options),
                )
                .await
                .map(|position| position.map(Position::from_client))
            }
        };
        match answer {
            Ok(position) => {
                self.succeeded();
                Ok(position)
            }
            Err(eventstore::Error::ResourceDeleted) => Ok(None),
            Err(error) => {
                self.failed(generation, &error);
                Err(sink_error(error, &format!("tombstoning `{stream}`"), event))
            }
        }
    }

    /// Appends `events` to `stream` at `expected`.
    ///
    /// Goes through one batch-append session shared by every append of the
    /// sink, on a channel of the sink's own ([`crate::wire`]): with the
    /// `eventstore` 4.0.0 client each plain append waits about 40 ms for a
    /// delayed ACK (the client does not set `TCP_NODELAY` and sends a request
    /// in several writes), while requests on the open bidirectional
    /// batch-append stream are answered at once. A batch-append
    /// error carries no details (and ends the session), so on any error the
    /// session is dropped and the append is made again as a plain append, whose
    /// wrong-expected-version reply the replay logic needs. Replaying an append
    /// that did go through is safe: it is recognised by event ids. A batch
    /// append past its deadline is not tried again plainly: the target does
    /// not answer, and the write fails at once.
    async fn append_events(
        &self,
        generation: u64,
        client: &Client,
        stream: &str,
        expected: ExpectedRevision,
        events: &[&Event],
    ) -> Result<(Option<Position>, Option<u64>), eventstore::Error> {
        // A probe is refused by design, and a refusal ends the shared
        // session, failing every append in flight on it: with many streams
        // unknown to `Tracked` mode, that made every batch start over.
        let probe = matches!(expected, ExpectedRevision::Exact(r) if r == PROBE_REVISION);
        let batch = match probe {
            true => None,
            false => self.batch_session(generation).await,
        };
        if let Some(batch) = batch {
            let result = within(self.request_timeout, batch.append(stream, expected, events)).await;
            match result {
                Ok(appended) => return Ok(appended),
                Err(error) => {
                    match &error {
                        eventstore::Error::UnsupportedFeature => {
                            warn!("The target does not offer batch append; using plain appends");
                            self.no_batch_append.store(true, Ordering::Relaxed);
                        }
                        eventstore::Error::NotLeaderException(leader) => {
                            *self.batch_leader.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(leader.clone());
                        }
                        _ => {}
                    }
                    debug!(%error, stream, "Batch append failed; appending plainly");
                    // A refusal (wrong expected version, deleted, too large)
                    // leaves our session usable; anything else may not.
                    if error_kind(&error) == ErrorKind::Transient
                        || matches!(
                            error,
                            eventstore::Error::UnsupportedFeature
                                | eventstore::Error::NotLeaderException(_)
                        )
                    {
                        self.drop_session(&batch);
                    }
                    if matches!(error, eventstore::Error::DeadlineExceeded) {
                        return Err(error);
                    }
                }
            }
        }
        Box::pin(within(
            self.request_timeout,
            append(client, stream, expected, events),
        ))
        .await
        .map(|(position, last)| (Some(position), Some(last)))
    }

    /// Forgets `session` if it is the current one, so the next append opens
    /// another.
    fn drop_session(&self, session: &Arc<BatchSession>) {
        let mut current = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|(_, b)| Arc::ptr_eq(b, session))
        {
            *current = None;
        }
    }

    /// The shared batch-append session of the client of `generation`, opened
    /// when there is none; `None` when the target does not offer batch append
    /// or the session cannot be opened now (the plain append reports why).
    async fn batch_session(&self, generation: u64) -> Option<Arc<BatchSession>> {
        if self.no_batch_append.load(Ordering::Relaxed) {
            return None;
        }
        if let Some((g, batch)) = self
            .batch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if *g == generation {
                return Some(batch.clone());
            }
        }
        Box::pin(self.open_batch_session(generation)).await
    }

    /// Opens a batch-append session (boxed by the caller: it is rare, and
    /// its state would otherwise grow every append's future, which is moved
    /// into a box for every stream of every batch).
    async fn open_batch_session(&self, generation: u64) -> Option<Arc<BatchSession>> {
        let leader = self
            .batch_leader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let channel = match within(
            self.request_timeout,
            WireChannel::connect(self.client.settings(), leader),
        )
        .await
        {
            Ok(channel) => channel,
            Err(error) => {
                debug!(%error, "Cannot open a batch-append session");
                return None;
            }
        };
        let batch = Arc::new(BatchSession::open(&channel));
        let mut current = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        match current.as_ref() {
            // Another append opened one meanwhile: share it.
            Some((g, existing)) if *g == generation => Some(existing.clone()),
            _ => {
                *current = Some((generation, batch.clone()));
                Some(batch)
            }
        }
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

/// What a refused append tells an [`AppendRun`]; other errors are returned.
fn refusal(error: eventstore::Error) -> Result<Reply, eventstore::Error> {
    match error {
        eventstore::Error::ResourceDeleted => Ok(Reply::Deleted),
        eventstore::Error::WrongExpectedVersion { current, .. } => Ok(Reply::WrongExpected {
            current: match current {
                CurrentRevision::Current(n) => Some(n),
                CurrentRevision::NoStream => None,
            },
        }),
        error => Err(error),
    }
}

impl From<Expected> for ExpectedRevision {
    fn from(expected: Expected) -> Self {
        match expected {
            Expected::NoStream => ExpectedRevision::NoStream,
            Expected::Exact(n) => ExpectedRevision::Exact(n),
        }
    }
}

/// Why an append run failed.
enum RunError<'e> {
    /// The client failed on this event's run.
    Client(eventstore::Error, &'e Event),
    /// The target holds other records where the source's belong.
    Diverged(String),
    /// The target stream kept changing while the sink worked out what it
    /// already holds (someone else writes to it): worth a retry.
    Unsettled(&'e Event),
}

fn log_note(stream: &str, event: &Event, note: Option<Note>, tracked: bool) {
    match note {
        None => {}
        Some(Note::Replayed { written }) => {
            debug!(stream, written, "Replay: appending the rest");
        }
        // Tracked streams have no revisions to keep; metadata streams keep
        // one record by default, so on a scavenged source this is routine.
        Some(Note::Renumbered { guessed, target }) if tracked || stream.starts_with("$$") => {
            debug!(
                stream,
                guessed,
                target_revision = target,
                "Appending after the target stream's last revision"
            );
        }
        Some(Note::Renumbered { target, .. }) => {
            warn!(
                stream,
                source_revision = event.revision,
                target_revision = target,
                "Source revisions do not start where the target stream ends (events \
                 removed by scavenging on the source?): appending after the target's last \
                 revision"
            );
        }
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
        let options = AppendToStreamOptions::default().expected_revision(ExpectedRevision::Any);
        let nothing: Vec<EventData> = Vec::new();
        let result = within(
            self.request_timeout,
            client.append_to_stream(WRITE_CHECK_STREAM, &options, nothing),
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

async fn append(
    client: &Client,
    stream: &str,
    expected: ExpectedRevision,
    events: &[&Event],
) -> Result<(Position, u64), eventstore::Error> {
    let data: Vec<EventData> = events.iter().map(|e| to_event_data(e)).collect();
    let options = AppendToStreamOptions::default().expected_revision(expected);
    let result = client.append_to_stream(stream, &options, data).await?;
    Ok((
        Position::from_client(result.position),
        result.next_expected_version,
    ))
}

/// Reads `stream` with `options`, with a deadline on the request and on each
/// record (not on the whole read: a long read that keeps moving is fine).
async fn read_records(
    client: &Client,
    stream: &str,
    options: &ReadStreamOptions,
    timeout: Duration,
) -> Result<Vec<TargetRecord>, eventstore::Error> {
    let mut records = Vec::new();
    let mut reader = match within(timeout, client.read_stream(stream, options)).await {
        Ok(reader) => reader,
        Err(eventstore::Error::ResourceNotFound) => return Ok(records),
        Err(e) => return Err(e),
    };
    loop {
        match within(timeout, reader.next()).await {
            Ok(Some(resolved)) => {
                if let Some(record) = resolved.event {
                    records.push(TargetRecord {
                        revision: record.revision,
                        id: record.id,
                        event_type: record.event_type,
                        data: record.data,
                        position: Position::from_client(record.position),
                    });
                }
            }
            Ok(None) => return Ok(records),
            Err(eventstore::Error::ResourceNotFound) => return Ok(records),
            Err(e) => return Err(e),
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
    match error_kind(&error) {
        ErrorKind::Transient => SinkError::transient(message),
        ErrorKind::Permanent => SinkError::permanent(message),
    }
    .with_source(error)
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

    #[test]
    fn the_config_debug_output_hides_the_password() {
        let config = EsdbSinkConfig::new("esdb://admin:changeit@h:2113?tls=false");
        assert!(!format!("{config:?}").contains("changeit"));
    }
}
