//! The scavenge filter (`replicator.scavenge: true`): leaves out the events a
//! scavenge of the source would remove.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use replicator_core::retry::Backoff;
use replicator_core::secret::ConnectionString;
use replicator_core::{
    ChangeKind, ErrorKind, Event, HealthReporter, Position, ReaderError, SkipReason, Transform,
    TransformError,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::classify::{METADATA_EVENT_TYPE, TOMBSTONE_EVENT_TYPE};
use crate::cluster::{
    self, head, next, next_within, within, AllFrom, ClusterRead, Direction, ReadError, StreamFrom,
};
use crate::connection::{ClientCell, REQUEST_TIMEOUT};
use crate::retention::{Catalog, Verdict};
use crate::tcp::TcpSource;
use crate::wire::client::GrpcClient;
use crate::wire::read::ReadItem;
use crate::wire::token::BearerToken;

/// How long [`ScavengeFilter::apply`] waits for the start-up pass before
/// answering with a transient "still reading" error (the pipeline retries it,
/// reporting the `transform` component as not ready meanwhile). Well under
/// the pipeline's call deadline, so the answer names the cause.
const PASS_WAIT: Duration = Duration::from_secs(5);

/// Records in [`Transform::apply`] at once (see [`Transform::concurrency`]).
const CONCURRENCY: usize = 16;

/// Server-side filter of the start-up pass: metadata records and tombstones
/// (event types `$metadata` and `$streamDeleted`) and nothing else.
const PASS_FILTER: &str = r"^\$(metadata|streamDeleted)$";

/// Leaves out ([`SkipReason::Scavenged`]) the events a scavenge of the source
/// would remove; the [`Transform`] behind `replicator.scavenge: true`.
///
/// # What is left out
/// An appended event ([`ChangeKind::Append`]) is skipped, and still
/// checkpointed, when at the time it passes:
/// - its stream is tombstoned, or soft-deleted (`$tb` = `i64::MAX`) and not
///   recreated since;
/// - its revision is below the stream's `$tb` (a recreated stream's old
///   events included);
/// - it is older than the stream's `$maxAge` (its source creation time,
///   which the client gives in whole seconds);
/// - it is not among the stream's last `$maxCount` events. A server keeps
///   exactly the last `$maxCount`; the C# tool kept one more
///   (`EventNumber < LastEventNumber - MaxCount`).
///
/// A server's scavenge physically keeps a stream's last event even when
/// `$maxAge` or `$tb` expired it (to remember the stream's last revision),
/// but no read returns it; the filter leaves it out like the others.
///
/// Metadata records, soft deletes and tombstones always pass: a deleted
/// stream ends on the target deleted the same way (soft-deleted or
/// tombstoned), with its metadata and none of its events, which reads the
/// same as the source. Every decision uses the latest metadata known, like a
/// scavenge run now would; an event is never taken back once written.
///
/// Revisions: only a prefix of a stream is ever left out, so the filter
/// [keeps revisions](Transform::keeps_revisions); the sink renumbers a stream
/// whose first source revisions never reach the target.
///
/// # Knowing the metadata ahead, in bounded memory
/// The metadata that decides an early event is often written later in `$all`.
/// So before the first decision the filter makes one pass over the source's
/// metadata records and tombstones: a catch-up subscription to `$all` with a
/// server-side event-type filter (`$metadata`, `$streamDeleted`), from the
/// start to the `$all` head read when the pass begins. It keeps only streams
/// whose metadata limits something (`$tb`, `$maxCount`, `$maxAge`, a soft
/// delete) and tombstoned streams, so its memory grows with those streams
/// alone ([`ScavengeFilter::tracked_streams`]), and it costs no request per
/// stream. (The C# tool read every stream's metadata into unbounded maps and
/// ran out of memory with many streams, its issue #41.) Afterwards the
/// metadata records and tombstones passing through the pipeline past the end
/// of the pass keep it current, and each event of a `$maxCount` stream moves
/// that stream's last revision on. A stream with `$maxCount` costs one
/// backward read of its last event, the first time one of its events passes.
///
/// # Failures
/// - The pass retries transient failures (source down, timeouts) with the
///   workspace [`Backoff`], resuming after the last record it saw. While it
///   has not finished, [`Transform::apply`] answers with a transient error
///   saying why (the pipeline holds the record and reports the transform
///   component failing); a permanent failure (access denied: the connection
///   string's user must be allowed to read `$all`) is a permanent error that
///   stops the run with that message. (The C# tool crashed on a metadata read
///   that failed, its issue #54.)
/// - A backward read that fails is a transient or permanent error of
///   [`Transform::apply`] naming the stream, handled the same way.
///
/// # A v5 source (TCP)
/// Built with [`ScavengeFilter::over_tcp`], it reads the same through the
/// legacy TCP protocol ([`TcpSource`]): v5 has no server-side filter, so the
/// pass reads every record of `$all` up to the head, in pages, and keeps the
/// metadata records and tombstones (the same catalog, one `$all` read at
/// start-up); the last revision of a `$maxCount` stream is one
/// ReadStreamEventsBackward.
///
/// # Use
/// Build it with [`ScavengeFilter::new`] from the source's connection string,
/// then call [`ScavengeFilter::prepare`] before the pipeline starts: the pass
/// over a large `$all` can take longer than the pipeline's call deadline. If
/// `apply` comes first it starts the same pass and waits for it at most 5 s
/// per call; a cancelled call never restarts it. Dropping the filter stops
/// the pass.
pub struct ScavengeFilter {
    shared: Arc<Shared>,
    pass: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    connection_string: ConnectionString,
    request_timeout: Duration,
    /// What the pass and the backward reads read the source through.
    source: Source,
    catalog: Mutex<Catalog>,
    /// Streams whose last revision is being read, so that concurrent events
    /// of one stream cost one read.
    reads: Mutex<HashMap<Box<str>, Arc<tokio::sync::Mutex<()>>>>,
    status: watch::Sender<PassStatus>,
    /// Told about each failed and the successful attempt of the pass.
    health: Mutex<Option<HealthReporter>>,
}

/// How the source is read.
enum Source {
    /// gRPC: the pass and the backward reads each take a client from here.
    Grpc(ClientCell),
    /// The legacy TCP protocol of v5.
    Tcp(TcpSource),
}

/// Where the start-up pass is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PassStatus {
    /// Reading; `failure` is the last attempt's error, if it failed.
    Running {
        records: u64,
        at: Option<Position>,
        failure: Option<String>,
    },
    /// Done: every metadata record and tombstone up to `covered` is in the
    /// catalog (`None`: `$all` was empty).
    Done { covered: Option<Position> },
    /// Failed permanently.
    Failed(String),
}

impl fmt::Debug for ScavengeFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScavengeFilter")
            .field("source", &self.shared.connection_string)
            .field("status", &*self.shared.status.borrow())
            .finish_non_exhaustive()
    }
}

impl ScavengeFilter {
    /// A filter reading the source's metadata through `connection_string`
    /// (the reader's). Nothing connects until [`ScavengeFilter::prepare`] or
    /// the first [`Transform::apply`].
    ///
    /// # Errors
    /// A permanent [`ReaderError`] when the connection string does not parse.
    pub fn new(connection_string: impl Into<ConnectionString>) -> Result<Self, ReaderError> {
        let connection_string = connection_string.into();
        let settings = cluster::settings(&connection_string)
            .map_err(|e| ReaderError::permanent(format!("scavenge filter: {e}")))?;
        Ok(Self::with_source(
            connection_string,
            Source::Grpc(ClientCell::new(settings)),
        ))
    }

    /// A filter reading the metadata of a v5 source over the legacy TCP
    /// protocol through `connection_string` (the TCP reader's, `ConnectTo=tcp://…`).
    /// Nothing connects until [`ScavengeFilter::prepare`] or the first
    /// [`Transform::apply`].
    ///
    /// # Errors
    /// A permanent [`ReaderError`] naming the setting when the connection
    /// string cannot be used.
    pub fn over_tcp(connection_string: impl Into<ConnectionString>) -> Result<Self, ReaderError> {
        let connection_string = connection_string.into();
        let source = TcpSource::new(&connection_string)
            .map_err(|e| ReaderError::permanent(format!("scavenge filter: {e}")))?;
        Ok(Self::with_source(connection_string, Source::Tcp(source)))
    }

    fn with_source(connection_string: ConnectionString, source: Source) -> Self {
        let (status, _) = watch::channel(PassStatus::Running {
            records: 0,
            at: None,
            failure: None,
        });
        ScavengeFilter {
            shared: Arc::new(Shared {
                source,
                connection_string,
                request_timeout: REQUEST_TIMEOUT,
                catalog: Mutex::new(Catalog::default()),
                reads: Mutex::new(HashMap::new()),
                status,
                health: Mutex::new(None),
            }),
            pass: Mutex::new(None),
        }
    }

    /// Authenticates every gRPC call to the source with `token` (when given),
    /// `authorization: Bearer`, instead of the connection string's
    /// credentials (the reader's token); a token file is read again whenever
    /// it changes. Call it right after [`ScavengeFilter::new`]: once the
    /// pass has started it changes nothing.
    #[must_use]
    pub fn with_bearer_token(mut self, token: Option<BearerToken>) -> Self {
        // Only before the pass started (it holds the other reference).
        if let Some(Shared {
            source: Source::Grpc(cell),
            ..
        }) = Arc::get_mut(&mut self.shared)
        {
            cell.set_token(token);
        }
        self
    }

    /// Sets the deadline of each request to the source (10 s by default, at
    /// least 1 ms): a backward read, the set-up of the pass's subscription,
    /// and each wait for its next record or checkpoint. Call it right after
    /// [`ScavengeFilter::new`]: once the pass has started it changes nothing.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        // Only before the pass started (it holds the other reference).
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.request_timeout = timeout.max(Duration::from_millis(1));
        }
        self
    }

    /// Reports the start-up pass's attempts to `health` (the source's: the
    /// pass reads the source), so that a source that cannot be read while the
    /// pass waits shows as failing, as it would while replicating. Each
    /// failed attempt is a failure, the finished pass a success, a permanent
    /// error fatal.
    pub fn report_health_to(&self, health: HealthReporter) {
        *self.shared.health.lock().unwrap_or_else(|e| e.into_inner()) = Some(health);
    }

    /// Reads the source's stream metadata and tombstones (the start-up pass,
    /// see [`ScavengeFilter`]), waiting until it is done. Transient failures
    /// are retried inside, with backoff, and logged; calling it again after
    /// it returned `Ok` returns at once.
    ///
    /// # Errors
    /// A permanent [`TransformError`] when the source refuses the read
    /// (access denied, a request it rejects).
    pub async fn prepare(&self) -> Result<(), TransformError> {
        self.start();
        let mut status = self.shared.status.subscribe();
        let status = status
            .wait_for(|s| !matches!(s, PassStatus::Running { .. }))
            .await
            .map_err(|_| TransformError::permanent("scavenge filter: the metadata pass ended"))?;
        match &*status {
            PassStatus::Failed(message) => Err(TransformError::permanent(message.clone())),
            _ => Ok(()),
        }
    }

    /// How many streams the filter holds metadata for: those whose metadata
    /// limits what a scavenge keeps, and tombstoned streams. Streams without
    /// such metadata cost nothing.
    pub fn tracked_streams(&self) -> usize {
        self.shared.catalog().len()
    }

    /// Starts the pass unless it runs or ran.
    fn start(&self) {
        let mut pass = self.pass.lock().unwrap_or_else(|e| e.into_inner());
        if pass.is_none() {
            let shared = Arc::clone(&self.shared);
            *pass = Some(tokio::spawn(async move { shared.run_pass().await }));
        }
    }

    /// Waits for the pass (at most [`PASS_WAIT`]); `Ok(covered)` once done.
    async fn ready(&self) -> Result<Option<Position>, TransformError> {
        match &*self.shared.status.borrow() {
            PassStatus::Done { covered } => return Ok(*covered),
            PassStatus::Failed(message) => return Err(TransformError::permanent(message.clone())),
            PassStatus::Running { .. } => {}
        }
        self.start();
        let mut watcher = self.shared.status.subscribe();
        let wait = watcher.wait_for(|s| !matches!(s, PassStatus::Running { failure: None, .. }));
        // Timing out is one of the answers: the status says which.
        let _ = tokio::time::timeout(PASS_WAIT, wait).await;
        drop(watcher);
        let status = self.shared.status.borrow().clone();
        match status {
            PassStatus::Done { covered } => Ok(covered),
            PassStatus::Failed(message) => Err(TransformError::permanent(message)),
            PassStatus::Running {
                records,
                at,
                failure,
            } => Err(TransformError::transient(format!(
                "scavenge filter: still reading the source's stream metadata ({records} records \
                 so far, at {}){}",
                at.map_or_else(|| "the start of $all".to_owned(), |p| p.to_string()),
                failure.map_or_else(String::new, |f| format!("; the last attempt failed: {f}"))
            ))),
        }
    }
}

impl Drop for ScavengeFilter {
    fn drop(&mut self) {
        if let Some(pass) = self.pass.lock().unwrap_or_else(|e| e.into_inner()).take() {
            pass.abort();
        }
    }
}

#[async_trait]
impl Transform for ScavengeFilter {
    fn name(&self) -> String {
        "scavenge filter".to_owned()
    }

    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        let covered = self.ready().await?;
        // Records the pass already saw are in the catalog, with anything
        // later up to where it ended: applying them again would go back to
        // older metadata.
        let news = covered.is_none_or(|covered| event.position > covered);
        match event.kind {
            ChangeKind::StreamMetadata | ChangeKind::SoftDelete => {
                if news {
                    self.shared
                        .catalog()
                        .set_metadata(event.target_stream(), &event.data);
                }
            }
            ChangeKind::Tombstone => {
                if news {
                    self.shared.catalog().tombstone(event.target_stream());
                }
            }
            ChangeKind::Append => {
                if self.shared.removes(&event).await? {
                    event.kind = ChangeKind::Skip(SkipReason::Scavenged);
                }
            }
            ChangeKind::Skip(_) => {}
        }
        Ok(event)
    }

    /// Most records are judged at once from memory; the first event of a
    /// `$maxCount` stream waits for one read from the source. Several records
    /// at once let those reads overlap. Decisions stay right in any order:
    /// each uses the latest metadata known when it is made.
    fn concurrency(&self) -> usize {
        CONCURRENCY
    }

    fn keeps_revisions(&self) -> bool {
        true
    }
}

/// Why one attempt of the pass failed.
struct PassFailure {
    doing: &'static str,
    error: ReadError,
}

impl fmt::Display for PassFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            ReadError::TimedOut(_) | ReadError::Grpc(eventstore::Error::DeadlineExceeded) => {
                write!(f, "{}: no answer within the deadline", self.doing)
            }
            ReadError::AccessDenied | ReadError::Tcp(crate::tcp::TcpError::AccessDenied { .. }) => {
                write!(
                    f,
                    "{}: access denied (the source connection string's user must be allowed to \
                 read $all)",
                    self.doing
                )
            }
            error => write!(f, "{}: {error}", self.doing),
        }
    }
}

impl Shared {
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health(&self) -> Option<HealthReporter> {
        self.health
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The start-up pass, retried until done or failed permanently.
    async fn run_pass(&self) {
        let mut backoff = Backoff::default();
        let mut resume: Option<Position> = None;
        let mut records = 0_u64;
        let mut end: Option<Option<Position>> = None;
        loop {
            let attempt = self.pass_attempt(&mut resume, &mut records, &mut end).await;
            let failure = match attempt {
                Ok(covered) => {
                    info!(
                        records,
                        tracked_streams = self.catalog().len(),
                        covered = %covered.map_or_else(|| "none".to_owned(), |p| p.to_string()),
                        "Scavenge filter: read the source's stream metadata"
                    );
                    if let Some(health) = self.health() {
                        health.success();
                    }
                    self.status.send_replace(PassStatus::Done { covered });
                    return;
                }
                Err(failure) => failure,
            };
            if failure.error.kind() == ErrorKind::Permanent {
                let message = format!(
                    "scavenge filter: reading the source's stream metadata failed: {failure}"
                );
                warn!(%message, "Scavenge filter cannot work");
                if let Some(health) = self.health() {
                    health.fatal(&message);
                }
                self.status.send_replace(PassStatus::Failed(message));
                return;
            }
            let delay = backoff.next_delay();
            warn!(
                %failure,
                attempt = backoff.attempts(),
                retry_in = ?delay,
                "Scavenge filter: reading the source's stream metadata failed; retrying"
            );
            if let Some(health) = self.health() {
                health.failure(&format_args!(
                    "scavenge filter: reading the source's stream metadata: {failure}"
                ));
            }
            self.status.send_replace(PassStatus::Running {
                records,
                at: resume,
                failure: Some(failure.to_string()),
            });
            if let Source::Grpc(cell) = &self.source {
                if let Ok((generation, _)) = cell.get() {
                    cell.discard(generation);
                }
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: reads after `resume` until the end of the pass. Returns
    /// the position the catalog covers.
    async fn pass_attempt(
        &self,
        resume: &mut Option<Position>,
        records: &mut u64,
        end: &mut Option<Option<Position>>,
    ) -> Result<Option<Position>, PassFailure> {
        match &self.source {
            Source::Grpc(cell) => {
                let (_, client) = cell
                    .get()
                    .map_err(|e| failed("creating the source client")(e.into()))?;
                self.grpc_pass_attempt(&client, resume, records, end).await
            }
            Source::Tcp(source) => self.tcp_pass_attempt(source, resume, records, end).await,
        }
    }

    /// One attempt over TCP: v5 has no server-side filter, so `$all` is read
    /// in pages after `resume` up to the head read at the pass's start,
    /// keeping the metadata records and tombstones.
    async fn tcp_pass_attempt(
        &self,
        source: &TcpSource,
        resume: &mut Option<Position>,
        records: &mut u64,
        end: &mut Option<Option<Position>>,
    ) -> Result<Option<Position>, PassFailure> {
        let end = match end {
            Some(end) => *end,
            None => {
                let mut last = source.all_records(AllFrom::End, Direction::Backwards, 1);
                let head = next_within(self.request_timeout, &mut last)
                    .await
                    .map_err(failed("reading where the source's $all ends"))?
                    .map(|(position, _)| position);
                *end = Some(head);
                head
            }
        };
        let Some(end) = end else {
            return Ok(None);
        };
        if resume.is_some_and(|at| at >= end) {
            return Ok(*resume);
        }
        let from = resume.map_or(AllFrom::Start, AllFrom::Position);
        let mut all = source.all_records(from, Direction::Forwards, usize::MAX);
        let reading = failed("reading the source's stream metadata and tombstones");
        let mut read = 0_u64;
        loop {
            let Some((position, record)) = within(self.request_timeout, next(&mut all))
                .await
                .map_err(reading)?
            else {
                return Ok(*resume);
            };
            if resume.is_some_and(|at| position <= at) {
                continue;
            }
            if record.event_type == METADATA_EVENT_TYPE || record.event_type == TOMBSTONE_EVENT_TYPE
            {
                *records += 1;
                self.learn(&record.stream, &record.event_type, &record.data);
            }
            *resume = Some(position);
            if position >= end {
                return Ok(Some(position));
            }
            read += 1;
            if read.is_multiple_of(1024) {
                self.status.send_replace(PassStatus::Running {
                    records: *records,
                    at: *resume,
                    failure: None,
                });
            }
        }
    }

    /// One attempt over gRPC: subscribes after `resume` with a server-side
    /// filter and reads until the end of the pass.
    async fn grpc_pass_attempt(
        &self,
        client: &GrpcClient,
        resume: &mut Option<Position>,
        records: &mut u64,
        end: &mut Option<Option<Position>>,
    ) -> Result<Option<Position>, PassFailure> {
        let failed = |doing| move |error: eventstore::Error| failed(doing)(error.into());
        let end = match end {
            Some(end) => *end,
            None => {
                let head = within(self.request_timeout, head(client))
                    .await
                    .map_err(failed("reading where the source's $all ends"))?;
                *end = Some(head);
                head
            }
        };
        let Some(end) = end else {
            return Ok(None);
        };
        if resume.is_some_and(|at| at >= end) {
            return Ok(*resume);
        }
        // A checkpoint at least every 32 records searched (the servers'
        // default, stated so the quiet rule below holds).
        debug!(?resume, %end, "Scavenge filter: reading the source's stream metadata");
        let reading = failed("reading the source's stream metadata and tombstones");
        let mut subscription = within(
            self.request_timeout,
            client.subscribe_to_all_filtered(*resume, PASS_FILTER, 32),
        )
        .await
        .map_err(reading)?;
        let mut confirmed = false;
        loop {
            // The subscription stays alive across iterations: a timed-out wait
            // drops only the `next` future, and the attempt then ends anyway.
            let next = match within(self.request_timeout, subscription.next()).await {
                Ok(next) => next,
                // Servers before 23.10 send no `caught_up`, and a filtered
                // subscription sends a checkpoint every window of records it
                // searched: one that stays quiet for a whole request timeout
                // after its confirmation is live, unless the server itself
                // is gone. Claim only what was seen: were it not live after
                // all, the records past it still update the catalog as they
                // pass through the pipeline.
                Err(eventstore::Error::DeadlineExceeded) if confirmed => {
                    within(self.request_timeout, head(client))
                        .await
                        .map_err(failed("reading where the source's $all ends"))?;
                    debug!(
                        ?resume,
                        "Scavenge filter: the metadata pass is quiet: caught up"
                    );
                    return Ok(*resume);
                }
                Err(error) => return Err(reading(error)),
            };
            match next {
                ReadItem::Confirmed(_) => confirmed = true,
                ReadItem::Event(record) => {
                    let position = record.position;
                    *records += 1;
                    self.learn(&record.stream, &record.event_type, &record.data);
                    *resume = Some(position);
                    if position >= end {
                        return Ok(Some(position));
                    }
                    if records.is_multiple_of(1024) {
                        self.status.send_replace(PassStatus::Running {
                            records: *records,
                            at: *resume,
                            failure: None,
                        });
                    }
                }
                ReadItem::Checkpoint(at) => {
                    if resume.is_none_or(|r| at > r) {
                        *resume = Some(at);
                    }
                    if at >= end {
                        return Ok(Some(at));
                    }
                }
                ReadItem::CaughtUp => return Ok(Some(resume.map_or(end, |r| r.max(end)))),
                ReadItem::FellBehind | ReadItem::StreamNotFound | ReadItem::Other => {}
            }
        }
    }

    /// Takes one record of the pass into the catalog.
    fn learn(&self, stream: &str, event_type: &str, data: &[u8]) {
        if event_type == METADATA_EVENT_TYPE {
            if let Some(target) = stream.strip_prefix("$$") {
                if !target.is_empty() && !target.starts_with('$') {
                    self.catalog().set_metadata(target, data);
                }
            }
        } else if event_type == TOMBSTONE_EVENT_TYPE && !stream.starts_with('$') {
            self.catalog().tombstone(stream);
        }
    }

    /// Whether a scavenge would remove `event`, reading the stream's last
    /// revision from the source when its `$maxCount` needs it.
    async fn removes(&self, event: &Event) -> Result<bool, TransformError> {
        let now = SystemTime::now();
        let verdict = self
            .catalog()
            .verdict(&event.stream, event.revision, event.created, now);
        let verdict = match verdict {
            Verdict::NeedLastRevision => self.read_last_revision(event, now).await?,
            verdict => verdict,
        };
        match verdict {
            Verdict::Remove(why) => {
                debug!(
                    stream = event.stream,
                    revision = event.revision,
                    ?why,
                    "Scavenge filter: skipping"
                );
                Ok(true)
            }
            Verdict::Keep | Verdict::NeedLastRevision => Ok(false),
        }
    }

    /// Reads the last revision of the event's stream (one request per
    /// stream: concurrent events of the same stream wait for the first
    /// one's read), then judges the event.
    async fn read_last_revision(
        &self,
        event: &Event,
        now: SystemTime,
    ) -> Result<Verdict, TransformError> {
        let stream = event.stream.as_str();
        let lock = Arc::clone(
            self.reads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(stream.into())
                .or_default(),
        );
        let _reading = lock.lock().await;
        let verdict = self
            .catalog()
            .verdict(stream, event.revision, event.created, now);
        if verdict != Verdict::NeedLastRevision {
            return Ok(verdict);
        }
        let read = self.last_revision(stream).await;
        self.reads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(stream);
        match read? {
            LastRevision::Tombstoned => self.catalog().tombstone(stream),
            LastRevision::At(last) => self.catalog().saw_last_revision(stream, last),
            LastRevision::Unknown => self.catalog().saw_last_revision(stream, event.revision),
        }
        Ok(self
            .catalog()
            .verdict(stream, event.revision, event.created, now))
    }

    /// The source's last revision of `stream`: one backward read.
    async fn last_revision(&self, stream: &str) -> Result<LastRevision, TransformError> {
        let doing = || format!("scavenge filter: reading the last revision of `{stream}`");
        let (generation, client);
        let (reads, generation): (&dyn ClusterRead, _) = match &self.source {
            Source::Grpc(cell) => {
                (generation, client) = cell.get().map_err(|error| {
                    TransformError::transient(format!("{}: {error}", doing())).with_source(error)
                })?;
                (&*client, Some(generation))
            }
            Source::Tcp(source) => (source, None),
        };
        let mut read = reads.stream_records(stream, StreamFrom::End, Direction::Backwards, 1);
        match next_within(self.request_timeout, &mut read).await {
            Ok(Some(record)) => Ok(LastRevision::At(record.revision)),
            Ok(None) | Err(ReadError::NotFound) => Ok(LastRevision::Unknown),
            Err(ReadError::Deleted) => Ok(LastRevision::Tombstoned),
            Err(error) => {
                let message = match &error {
                    ReadError::TimedOut(_) => {
                        format!("{}: no answer within the deadline", doing())
                    }
                    other => format!("{}: {other}", doing()),
                };
                Err(match error.kind() {
                    ErrorKind::Transient => {
                        if let (Source::Grpc(cell), Some(generation)) = (&self.source, generation) {
                            cell.discard(generation);
                        }
                        TransformError::transient(message)
                    }
                    ErrorKind::Permanent => TransformError::permanent(message),
                }
                .with_source(error))
            }
        }
    }
}

/// What a backward read of a stream found.
enum LastRevision {
    At(u64),
    /// Not found, or nothing readable (soft-deleted, all past `$maxAge`).
    Unknown,
    Tombstoned,
}

/// Wraps an error of the pass with what it was doing.
fn failed(doing: &'static str) -> impl Fn(ReadError) -> PassFailure + Copy {
    move |error| PassFailure { doing, error }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_connection_string_is_named() {
        let err = ScavengeFilter::new("http://admin:secret@host").unwrap_err();
        assert!(err.message().contains("scavenge filter"), "{err}");
        assert!(!err.message().contains("secret"), "{err}");
    }

    #[tokio::test]
    async fn a_pass_that_failed_for_good_fails_every_record_with_its_reason() {
        let filter = ScavengeFilter::new("esdb://localhost:1?tls=false").expect("filter");
        filter.shared.status.send_replace(PassStatus::Failed(
            "scavenge filter: reading the source's stream metadata failed: access denied".into(),
        ));
        let event = Event {
            id: uuid::Uuid::new_v4(),
            stream: "orders-1".into(),
            revision: 0,
            event_type: "Placed".into(),
            data: Default::default(),
            metadata: Default::default(),
            content_type: replicator_core::ContentType::Json,
            created: SystemTime::now(),
            position: Position::at(4096),
            kind: ChangeKind::Append,
            more_in_commit: false,
        };
        for _ in 0..2 {
            let error = filter.apply(event.clone()).await.expect_err("failed pass");
            assert!(!error.is_transient(), "{error}");
            assert!(error.message().contains("access denied"), "{error}");
        }
        let error = filter.prepare().await.expect_err("failed pass");
        assert!(error.message().contains("access denied"), "{error}");
    }

    #[test]
    fn access_denied_says_what_the_user_needs() {
        let failure = PassFailure {
            doing: "reading the source's stream metadata and tombstones",
            error: eventstore::Error::AccessDenied.into(),
        };
        assert_eq!(failure.error.kind(), ErrorKind::Permanent);
        assert!(failure.to_string().contains("read $all"), "{failure}");
    }
}
