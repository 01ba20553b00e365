//! An independent comparison of a source and a target cluster through the
//! client: does the target hold what replicating the source's `$all` should
//! have produced?
//!
//! [`verify`] is the one comparison engine of the project: `replicator verify`,
//! `replicator demo` and the testkit's `compare` all call it.
//!
//! # What is compared
//! What the replicator copies, decided by the same [`classify`] the reader
//! uses: **user streams** (names not starting with `$`), for each
//! - **deletion state**: tombstoned (reads fail with stream-deleted) and
//!   soft-deleted (the latest stream metadata has `$tb` = `i64::MAX`). When it
//!   differs nothing else of the stream is compared;
//! - **stream metadata**: the latest `$$stream` `$metadata` record, as JSON
//!   (raw bytes when it is not JSON);
//! - **events**: a forward read of the stream as the server answers it (events
//!   hidden by `$tb`, `$maxCount` or a soft delete are not compared), keeping
//!   the records [`classify`] appends (links and `$`-typed events are left
//!   out, as the replicator skips them), compared in stream order by id, type,
//!   content type, data and user metadata; revisions only with
//!   [`VerifyOptions::compare_revisions`] (a target renumbered because the
//!   source was scavenged, or a filtered one, has other revisions).
//!
//! System streams (`$…`), positions, `created` times and the ids of metadata
//! records are not compared.
//!
//! # Order
//! With [`VerifyOptions::check_order`] (the default; the CLI turns it off for
//! `sink.order: stream`, which promises only each stream's order), the user
//! events (the records [`classify`] appends, in user streams starting with
//! [`VerifyOptions::stream_prefix`], on the source as
//! [`VerifyOptions::expect`] maps them and up to `until`) must be in the same
//! order in the target's `$all` as in the source's. Events are told apart by
//! stream and event id. Events on one side only (missing, extra, scavenged on
//! the source, filtered out, in flight past `until`) are not order
//! differences: the check looks at the order of the events both sides hold.
//!
//! Both `$all`s are read forward at once, beside the stream comparison,
//! through a look-ahead window of at most [`VerifyOptions::order_window`]
//! events per side. Equal heads match. When the heads differ and each is in
//! the other side's window, the source has its head before the target's and
//! the target the other way round: that pair is the first order difference,
//! reported in [`VerifyReport::order`] (both events' streams, ids and
//! positions on both sides), and the check stops. Otherwise the head not in
//! the other side's window is taken as on its side only and skipped (both,
//! when neither is). **The bound:** a pair further apart than the window
//! (an event the target has more than `order_window` events away from where
//! the source has it) is taken as missing and extra, not as an order
//! difference; those show in the stream comparison only if they really are
//! missing or extra. The matching is a pure state machine
//! (`verify/order.rs`).
//!
//! # `until`: verifying a pair that is still replicating
//! With [`Until::Including`] (the stored checkpoint, by default, in the CLI)
//! only source records up to that position must be on the target. Events of
//! the source after it may be on the target already (in flight): a target
//! event equal to the next source event is accepted whether or not the source
//! event is covered; a covered source event the target lacks is *missing*; a
//! target event that matches no source event is *extra*. A tombstone or soft
//! delete the source received after `until` makes the stream unreadable on the
//! source: such a stream is counted in [`VerifyReport::streams_changed_after_until`]
//! and its events are not compared.
//!
//! # Memory
//! Bounded, whatever the size of the clusters:
//! - **Stream names.** Both clusters' `$all` are read once (the source up to
//!   `until`) to list the user streams (a stream may exist on one side only).
//!   Names are collected in a sorted in-memory set of at most
//!   [`VerifyOptions::names_in_memory`] names; a full set is written to an
//!   anonymous temporary file as a sorted run, and the runs are merged
//!   (deduplicated) while streaming them to the comparison. So memory holds at
//!   most that many names (100,000 by default, a few MiB), the disk holds each
//!   distinct name about once per run it appeared in. `$all` is read rather
//!   than the `$streams` system projection, which is often off and lists no
//!   metadata-only streams.
//! - **Events.** A stream is read through one streaming read per side; at
//!   most [`VerifyOptions::page_events`] events or [`VerifyOptions::page_bytes`]
//!   bytes are held per side (the look-ahead that tells a missing event from an
//!   extra one), and [`VerifyOptions::concurrency`] streams are compared at
//!   once. Peak: `concurrency × 2 × page_bytes` plus one event, whatever the
//!   number of events.
//! - **Order.** [`VerifyOptions::order_window`] events per side (stream name,
//!   id and position each), 100,000 by default: a few tens of MiB at most.
//! - **Report.** At most [`VerifyOptions::max_per_stream`] differences per
//!   stream and [`VerifyOptions::max_streams`] differing streams are kept; the
//!   totals stay exact.
//!
//! # Filters and transforms
//! [`VerifyOptions::expect`] maps each source event to what the target should
//! hold for it (`None`: nothing, it is filtered out). The default is the
//! identity: what an unfiltered replication produces. The configured filters
//! and transforms plug in there.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read as _, Seek as _, Write as _};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventstore::{Client, ReadAllOptions, ReadStreamOptions, StreamPosition};
use futures::stream::{self, StreamExt as _};
use futures::TryFutureExt as _;
use replicator_core::{ChangeKind, Position};
use serde::Serialize;
use uuid::Uuid;

use crate::classify::{classify, METADATA_EVENT_TYPE};
use crate::cluster::{within, ClientPosition as _, RequestError, TimedOut, SOURCE, TARGET};
use crate::connection::describe;

mod order;

pub use order::{OrderDifference, OrderedEvent};

/// Up to where the source must be on the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "position", rename_all = "snake_case")]
pub enum Until {
    /// Everything the source holds when the comparison reads its `$all`.
    End,
    /// Source records at or before this position (a stored checkpoint).
    Including(Position),
    /// Source records strictly before this position (a seed: the record at
    /// the seed is the first not yet replicated).
    Before(Position),
}

impl Until {
    /// Whether the record at `position` must be on the target.
    pub fn covers(&self, position: Position) -> bool {
        match self {
            Until::End => true,
            Until::Including(until) => position <= *until,
            Until::Before(until) => position < *until,
        }
    }
}

impl fmt::Display for Until {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Until::End => write!(f, "the source's end"),
            Until::Including(p) => write!(f, "{p} (inclusive)"),
            Until::Before(p) => write!(f, "{p} (exclusive)"),
        }
    }
}

/// An event as the comparison sees it: what the target must reproduce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedEvent {
    /// Its stream.
    pub stream: String,
    /// Its revision in that stream.
    pub revision: u64,
    /// Its `$all` position on its own cluster.
    pub position: Position,
    /// Event id.
    pub id: Uuid,
    /// Event type.
    pub event_type: String,
    /// `application/json` (true) or binary.
    pub is_json: bool,
    /// Payload.
    pub data: Bytes,
    /// User metadata.
    pub metadata: Bytes,
}

/// Maps a source event to what the target should hold for it: `None` when the
/// target should not hold it (filtered out). See [module docs](self).
pub type Expect = Arc<dyn Fn(VerifiedEvent) -> Option<VerifiedEvent> + Send + Sync>;

/// Counters a caller can poll while [`verify`] runs (for a progress bar).
#[derive(Debug, Default)]
pub struct VerifyProgress {
    /// Source records of `$all` read while listing streams.
    pub records_listed: AtomicU64,
    /// Whether listing is done (then comparing has begun).
    pub listed: AtomicBool,
    /// User streams found.
    pub streams_found: AtomicU64,
    /// User events of the source found (up to `until`) while listing.
    pub source_events_found: AtomicU64,
    /// Streams compared so far.
    pub streams_compared: AtomicU64,
    /// Source events compared so far.
    pub events_compared: AtomicU64,
}

/// How [`verify`] compares.
#[derive(Clone)]
pub struct VerifyOptions {
    /// Up to where the source must be on the target.
    pub until: Until,
    /// Streams compared at once.
    pub concurrency: usize,
    /// Events held per side and stream at most (the look-ahead).
    pub page_events: usize,
    /// Bytes of event data held per side and stream at most (one event more
    /// when a single event is larger).
    pub page_bytes: usize,
    /// Differences kept per stream (the counts stay exact).
    pub max_per_stream: usize,
    /// Differing streams kept (the counts stay exact).
    pub max_streams: usize,
    /// Stream names held in memory before a sorted run goes to a temporary file.
    pub names_in_memory: usize,
    /// How many of a stream's last matched event ids are remembered to name a
    /// repeated target event a duplicate rather than an extra one.
    pub duplicate_window: usize,
    /// Also require equal revisions.
    pub compare_revisions: bool,
    /// Compare only user streams whose names start with this (empty: all).
    pub stream_prefix: String,
    /// Deadline of each request (a read, or the next page of one).
    pub request_timeout: Duration,
    /// The filter/transform hook; `None` is the identity.
    pub expect: Option<Expect>,
    /// Counters updated as the comparison goes.
    pub progress: Option<Arc<VerifyProgress>>,
    /// Also require the user events in the source's `$all` order on the
    /// target (see "Order" in the [module docs](self)). Right when the
    /// replicator writes in source order (`sink.order: source`), wrong for
    /// `sink.order: stream`, which keeps only each stream's order.
    pub check_order: bool,
    /// Events held per side at most by the order check: a pair of events
    /// further apart than this is taken as missing and extra.
    pub order_window: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            until: Until::End,
            concurrency: 16,
            page_events: 500,
            page_bytes: 4 * 1024 * 1024,
            max_per_stream: 10,
            max_streams: 1_000,
            names_in_memory: 100_000,
            duplicate_window: 1_000,
            compare_revisions: false,
            stream_prefix: String::new(),
            request_timeout: Duration::from_secs(30),
            expect: None,
            progress: None,
            check_order: true,
            order_window: 100_000,
        }
    }
}

impl fmt::Debug for VerifyOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyOptions")
            .field("until", &self.until)
            .field("concurrency", &self.concurrency)
            .field("page_events", &self.page_events)
            .field("page_bytes", &self.page_bytes)
            .field("compare_revisions", &self.compare_revisions)
            .field("stream_prefix", &self.stream_prefix)
            .field("expect", &self.expect.as_ref().map(|_| "custom"))
            .field("check_order", &self.check_order)
            .field("order_window", &self.order_window)
            .finish_non_exhaustive()
    }
}

/// What differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DifferenceKind {
    /// A source event the target lacks.
    Missing,
    /// A target event no source event accounts for.
    Extra,
    /// A target event repeating one already matched in its stream.
    Duplicate,
    /// Same place, different event: id, type, content type, data, user
    /// metadata (or revision, when compared).
    Content,
    /// Different stream metadata.
    Metadata,
    /// Different deletion state (tombstoned, soft-deleted).
    Deletion,
}

impl DifferenceKind {
    /// The word the report uses.
    pub fn name(self) -> &'static str {
        match self {
            DifferenceKind::Missing => "missing",
            DifferenceKind::Extra => "extra",
            DifferenceKind::Duplicate => "duplicate",
            DifferenceKind::Content => "content",
            DifferenceKind::Metadata => "metadata",
            DifferenceKind::Deletion => "deletion",
        }
    }
}

impl fmt::Display for DifferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One difference in a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// What differs.
    pub kind: DifferenceKind,
    /// The source revision where it shows (the target revision for extra and
    /// duplicate events); `None` for the stream as a whole.
    pub revision: Option<u64>,
    /// The field that differs, for `content`: `event id`, `event type`,
    /// `content type`, `data`, `metadata`, `revision`; empty otherwise.
    pub field: String,
    /// The source side, human-readable.
    pub source: String,
    /// The target side, human-readable.
    pub target: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.name())?;
        if let Some(revision) = self.revision {
            write!(f, " at revision {revision}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, " (source {}, target {})", self.source, self.target)
    }
}

/// The differences of one stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StreamDifferences {
    /// The stream.
    pub stream: String,
    /// The first revision that differs (`None` when the stream differs as a
    /// whole: metadata, deletion).
    pub first_revision: Option<u64>,
    /// All differences found in it.
    pub count: u64,
    /// The first [`VerifyOptions::max_per_stream`] of them.
    pub differences: Vec<Difference>,
}

/// What [`verify`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Up to where the source was required.
    pub until: Option<Until>,
    /// User streams compared.
    pub streams_compared: u64,
    /// Streams with differences.
    pub streams_differing: u64,
    /// Differences in total.
    pub differences: u64,
    /// Differences by kind.
    pub by_kind: BTreeMap<DifferenceKind, u64>,
    /// Source events compared (covered by `until`).
    pub source_events: u64,
    /// Bytes (data and user metadata) of the source events compared.
    pub source_bytes: u64,
    /// Target events compared.
    pub target_events: u64,
    /// Streams tombstoned or soft-deleted on the source after `until`, whose
    /// events could not be compared.
    pub streams_changed_after_until: u64,
    /// The first [`VerifyOptions::max_streams`] differing streams, by name.
    pub streams: Vec<StreamDifferences>,
    /// How long the comparison took, in seconds.
    pub seconds: f64,
    /// Of which listing the streams (reading both `$all`).
    pub listing_seconds: f64,
    /// Whether the order of the user events in `$all` was checked
    /// ([`VerifyOptions::check_order`]).
    pub order_checked: bool,
    /// The first pair of user events the target's `$all` holds in another
    /// order than the source's, when checked.
    pub order: Option<OrderDifference>,
}

impl VerifyReport {
    /// No difference at all: none in the streams, none in the order.
    pub fn is_identical(&self) -> bool {
        self.differences == 0 && self.order.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for stream in &self.streams {
            write!(f, "stream {:?}: {} difference", stream.stream, stream.count)?;
            if stream.count != 1 {
                write!(f, "s")?;
            }
            if let Some(first) = stream.first_revision {
                write!(f, ", first at revision {first}")?;
            }
            writeln!(f)?;
            for difference in &stream.differences {
                writeln!(f, "  {difference}")?;
            }
            let shown = stream.differences.len() as u64;
            if stream.count > shown {
                writeln!(f, "  … and {} more", stream.count - shown)?;
            }
        }
        let shown = self.streams.len() as u64;
        if self.streams_differing > shown {
            writeln!(
                f,
                "… and {} more differing streams",
                self.streams_differing - shown
            )?;
        }
        if let Some(order) = &self.order {
            writeln!(f, "{order}")?;
        }
        write!(
            f,
            "{} streams, {} source events, {} target events compared",
            self.streams_compared, self.source_events, self.target_events
        )?;
        if self.is_identical() {
            write!(f, ": identical")?;
        } else {
            let mut found = Vec::new();
            if self.differences > 0 {
                let kinds: Vec<String> = self
                    .by_kind
                    .iter()
                    .map(|(kind, n)| format!("{n} {kind}"))
                    .collect();
                found.push(format!(
                    "{} differences in {} streams ({})",
                    self.differences,
                    self.streams_differing,
                    kinds.join(", ")
                ));
            }
            if self.order.is_some() {
                found.push("the order differs".to_owned());
            }
            write!(f, ": {}", found.join("; "))?;
        }
        if !self.order_checked {
            write!(f, "; order not checked")?;
        }
        if self.streams_changed_after_until > 0 {
            write!(
                f,
                "; {} streams deleted on the source after {} not compared",
                self.streams_changed_after_until,
                self.until.unwrap_or(Until::End)
            )?;
        }
        Ok(())
    }
}

/// Why a comparison could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A read failed.
    #[error("{side}: {operation} failed: {message}")]
    Read {
        /// `source` or `target`.
        side: &'static str,
        /// What was being read.
        operation: String,
        /// The client's error, shortened.
        message: String,
        /// The client's error.
        #[source]
        source: eventstore::Error,
    },
    /// A read got no answer within the request deadline.
    #[error("{side}: {operation} got no answer within {timeout:?} (is the cluster reachable?)")]
    Timeout {
        /// `source` or `target`.
        side: &'static str,
        /// What was being read.
        operation: String,
        /// The deadline.
        timeout: Duration,
    },
    /// The temporary files holding stream names failed.
    #[error("cannot use a temporary file for the stream names")]
    Spill(#[source] io::Error),
}

/// Compares `source` and `target`; see the [module docs](self).
///
/// # Errors
/// [`VerifyError`] when a read fails (other than for a missing or deleted
/// stream) or times out, or the temporary files fail. Differences are not
/// errors: they are in the report.
pub async fn verify(
    source: &Client,
    target: &Client,
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    verify_pooled(
        std::slice::from_ref(source),
        std::slice::from_ref(target),
        options,
    )
    .await
}

/// [`verify`] over several clients (connections) per side, streams spread
/// over them in turn.
///
/// Why: the `eventstore` 4.0.0 client sends a request in several writes
/// without `TCP_NODELAY`, so each request on a connection waits for the
/// server's delayed ACK (~40 ms on Linux); requests on separate connections
/// wait side by side. Comparing many small streams is request-bound, so a
/// few connections per side multiply the rate.
///
/// # Errors
/// As [`verify`].
///
/// # Panics
/// When `sources` or `targets` is empty.
pub async fn verify_pooled(
    sources: &[Client],
    targets: &[Client],
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    assert!(
        !sources.is_empty() && !targets.is_empty(),
        "verify_pooled needs a client per side"
    );
    let started = Instant::now();
    // The order check reads both `$all`s beside the stream comparison, on the
    // last connection of each side (the listing reads on the first).
    let order = async {
        if options.check_order {
            let (source, target) = (&sources[sources.len() - 1], &targets[targets.len() - 1]);
            order::check_order(source, target, options).await.map(Some)
        } else {
            Ok(None)
        }
    };
    let (mut report, order) =
        futures::try_join!(compare_streams(sources, targets, options), order)?;
    report.order_checked = options.check_order;
    report.order = order.flatten();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Lists the user streams of both sides and compares them stream by stream.
async fn compare_streams(
    sources: &[Client],
    targets: &[Client],
    options: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let (source, target) = (&sources[0], &targets[0]);
    let started = Instant::now();
    let progress = options.progress.clone().unwrap_or_default();
    let mut names = NameSet::new(options.names_in_memory.max(1));
    list_streams(source, SOURCE, options, &progress, &mut names).await?;
    list_streams(target, TARGET, options, &progress, &mut names).await?;
    progress.listed.store(true, Ordering::Relaxed);
    let listing_seconds = started.elapsed().as_secs_f64();
    let merged = names.into_sorted().map_err(VerifyError::Spill)?;
    let progress_ref = &progress;
    let mut outcomes = stream::iter(merged.enumerate())
        .map(|(index, entry)| async move {
            let source = &sources[index % sources.len()];
            let target = &targets[index % targets.len()];
            let (name, flags) = entry.map_err(VerifyError::Spill)?;
            let outcome = compare_stream(source, target, &name, flags, options).await?;
            progress_ref
                .streams_compared
                .fetch_add(1, Ordering::Relaxed);
            Ok::<_, VerifyError>((name, outcome))
        })
        .buffer_unordered(options.concurrency.max(1));
    let mut report = VerifyReport {
        until: Some(options.until),
        listing_seconds,
        ..VerifyReport::default()
    };
    while let Some(result) = outcomes.next().await {
        let (name, outcome) = result?;
        report.streams_compared += 1;
        report.source_events += outcome.source_events;
        report.source_bytes += outcome.source_bytes;
        report.target_events += outcome.target_events;
        if outcome.changed_after_until {
            report.streams_changed_after_until += 1;
        }
        if outcome.count > 0 {
            report.streams_differing += 1;
            report.differences += outcome.count;
            for (kind, n) in &outcome.by_kind {
                *report.by_kind.entry(*kind).or_default() += n;
            }
            if report.streams.len() < options.max_streams {
                report.streams.push(StreamDifferences {
                    stream: name,
                    first_revision: outcome.first_revision,
                    count: outcome.count,
                    differences: outcome.differences,
                });
            }
        }
    }
    report.streams.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(report)
}

/// Flags of a stream name: where it was seen.
const ON_SOURCE: u8 = 1;
const ON_TARGET: u8 = 2;
/// Its tombstone is in the source's `$all` within `until`.
const TOMBSTONED_BY_UNTIL: u8 = 4;

/// The user stream a `$all` record belongs to, with what it says about it.
fn user_stream_of(stream: &str, event_type: &str, data: &[u8]) -> Option<(String, ChangeKind)> {
    let kind = classify(stream, event_type, data);
    let name = match kind {
        ChangeKind::Append | ChangeKind::Tombstone => stream,
        ChangeKind::StreamMetadata | ChangeKind::SoftDelete => stream.strip_prefix("$$")?,
        _ => return None,
    };
    Some((name.to_owned(), kind))
}

async fn list_streams(
    client: &Client,
    side: &'static str,
    options: &VerifyOptions,
    progress: &VerifyProgress,
    names: &mut NameSet,
) -> Result<(), VerifyError> {
    let operation = || "reading $all to list its streams".to_owned();
    let read_options = ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = request(
        side,
        operation,
        options.request_timeout,
        client.read_all(&read_options),
    )
    .await?;
    while let Some(event) = request(side, operation, options.request_timeout, reader.next()).await?
    {
        let record = event.get_original_event();
        let position = Position::from_client(record.position);
        if side == SOURCE {
            if !options.until.covers(position) {
                break;
            }
            progress.records_listed.fetch_add(1, Ordering::Relaxed);
        }
        let Some((name, kind)) =
            user_stream_of(&record.stream_id, &record.event_type, &record.data)
        else {
            continue;
        };
        if !name.starts_with(&options.stream_prefix) {
            continue;
        }
        let flags = match (side, kind) {
            (SOURCE, ChangeKind::Tombstone) => ON_SOURCE | TOMBSTONED_BY_UNTIL,
            (SOURCE, ChangeKind::Append) => {
                progress.source_events_found.fetch_add(1, Ordering::Relaxed);
                ON_SOURCE
            }
            (SOURCE, _) => ON_SOURCE,
            _ => ON_TARGET,
        };
        if names.insert(name, flags).map_err(VerifyError::Spill)? {
            progress.streams_found.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Awaits one client request with a deadline ([`within`]), naming the side
/// and operation when it fails.
pub(crate) async fn request<T>(
    side: &'static str,
    operation: impl FnOnce() -> String,
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, eventstore::Error>>,
) -> Result<T, VerifyError> {
    settle(side, operation, within(timeout, future.err_into()).await)
}

/// The outcome of a request awaited [`within`] a deadline, as [`request`]
/// names it (for callers that first look at some outcomes themselves).
pub(crate) fn settle<T>(
    side: &'static str,
    operation: impl FnOnce() -> String,
    outcome: Result<T, RequestError>,
) -> Result<T, VerifyError> {
    match outcome {
        Ok(value) => Ok(value),
        Err(RequestError::Failed(source)) => Err(VerifyError::Read {
            side,
            operation: operation(),
            message: describe(&source),
            source,
        }),
        Err(RequestError::TimedOut(TimedOut { limit })) => Err(VerifyError::Timeout {
            side,
            operation: operation(),
            timeout: limit,
        }),
    }
}

/// The stream names seen, sorted and deduplicated, in bounded memory: sorted
/// runs of at most `limit` names spill to anonymous temporary files and are
/// merged at the end.
struct NameSet {
    limit: usize,
    current: BTreeMap<String, u8>,
    runs: Vec<std::fs::File>,
}

impl NameSet {
    fn new(limit: usize) -> Self {
        NameSet {
            limit,
            current: BTreeMap::new(),
            runs: Vec::new(),
        }
    }

    /// Adds `name` with `flags`; true when it is new to the current run (an
    /// estimate of new names once runs spilled, exact before).
    fn insert(&mut self, name: String, flags: u8) -> io::Result<bool> {
        if let Some(existing) = self.current.get_mut(&name) {
            *existing |= flags;
            return Ok(false);
        }
        if self.current.len() >= self.limit {
            self.spill()?;
        }
        self.current.insert(name, flags);
        Ok(true)
    }

    fn spill(&mut self) -> io::Result<()> {
        let file = tempfile::tempfile()?;
        let mut writer = BufWriter::new(file);
        for (name, flags) in std::mem::take(&mut self.current) {
            writer.write_all(&(name.len() as u32).to_le_bytes())?;
            writer.write_all(name.as_bytes())?;
            writer.write_all(&[flags])?;
        }
        let mut file = writer.into_inner().map_err(|e| e.into_error())?;
        file.rewind()?;
        self.runs.push(file);
        Ok(())
    }

    /// Every name once, sorted, with the union of its flags.
    fn into_sorted(mut self) -> io::Result<SortedNames> {
        if self.runs.is_empty() {
            return Ok(SortedNames::Memory(self.current.into_iter()));
        }
        if !self.current.is_empty() {
            self.spill()?;
        }
        let mut runs: Vec<BufReader<std::fs::File>> =
            self.runs.into_iter().map(BufReader::new).collect();
        let mut heap = BinaryHeap::new();
        for (index, run) in runs.iter_mut().enumerate() {
            if let Some((name, flags)) = read_entry(run)? {
                heap.push(Reverse((name, index, flags)));
            }
        }
        Ok(SortedNames::Merge { runs, heap })
    }
}

fn read_entry(reader: &mut BufReader<std::fs::File>) -> io::Result<Option<(String, u8)>> {
    let mut len = [0u8; 4];
    match reader.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut name = vec![0u8; u32::from_le_bytes(len) as usize];
    reader.read_exact(&mut name)?;
    let mut flags = [0u8; 1];
    reader.read_exact(&mut flags)?;
    let name =
        String::from_utf8(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((name, flags[0])))
}

enum SortedNames {
    Memory(std::collections::btree_map::IntoIter<String, u8>),
    Merge {
        runs: Vec<BufReader<std::fs::File>>,
        heap: BinaryHeap<Reverse<(String, usize, u8)>>,
    },
}

impl Iterator for SortedNames {
    type Item = io::Result<(String, u8)>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SortedNames::Memory(entries) => entries.next().map(Ok),
            SortedNames::Merge { runs, heap } => {
                let Reverse((name, index, mut flags)) = heap.pop()?;
                let mut refill = vec![index];
                while let Some(Reverse((next, _, _))) = heap.peek() {
                    if *next != name {
                        break;
                    }
                    let Reverse((_, other, other_flags)) = heap.pop().expect("peeked");
                    flags |= other_flags;
                    refill.push(other);
                }
                for index in refill {
                    match read_entry(&mut runs[index]) {
                        Ok(Some((next, next_flags))) => {
                            heap.push(Reverse((next, index, next_flags)));
                        }
                        Ok(None) => {}
                        Err(e) => return Some(Err(e)),
                    }
                }
                Some(Ok((name, flags)))
            }
        }
    }
}

/// What comparing one stream found.
#[derive(Debug, Default)]
struct StreamOutcome {
    source_events: u64,
    source_bytes: u64,
    target_events: u64,
    changed_after_until: bool,
    count: u64,
    first_revision: Option<u64>,
    by_kind: BTreeMap<DifferenceKind, u64>,
    differences: Vec<Difference>,
}

impl StreamOutcome {
    fn push(&mut self, max: usize, difference: Difference) {
        self.count += 1;
        *self.by_kind.entry(difference.kind).or_default() += 1;
        if let Some(revision) = difference.revision {
            self.first_revision = Some(self.first_revision.map_or(revision, |r| r.min(revision)));
        }
        if self.differences.len() < max {
            self.differences.push(difference);
        }
    }
}

/// One side of a stream, read lazily with a bounded look-ahead.
struct Side<'a> {
    side: &'static str,
    stream: &'a str,
    reader: Option<eventstore::ReadStream>,
    buffer: VecDeque<VerifiedEvent>,
    buffered_bytes: usize,
    exhausted: bool,
    tombstoned: bool,
    timeout: Duration,
    expect: Option<&'a Expect>,
}

impl<'a> Side<'a> {
    async fn open(
        client: &Client,
        side: &'static str,
        stream: &'a str,
        options: &'a VerifyOptions,
    ) -> Result<Side<'a>, VerifyError> {
        let mut this = Side {
            side,
            stream,
            reader: None,
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            exhausted: false,
            tombstoned: false,
            timeout: options.request_timeout,
            expect: if side == SOURCE {
                options.expect.as_ref()
            } else {
                None
            },
        };
        let read_options = ReadStreamOptions::default().max_count(usize::MAX);
        let opened = within(
            this.timeout,
            client.read_stream(stream, &read_options).err_into(),
        );
        match opened.await {
            Ok(reader) => this.reader = Some(reader),
            Err(RequestError::Failed(error)) => this.end_with(error)?,
            Err(timed_out) => {
                return settle(
                    side,
                    || format!("reading stream {stream:?}"),
                    Err(timed_out),
                )
            }
        }
        // The first page says whether the stream is there at all.
        this.fill(1).await?;
        Ok(this)
    }

    /// A missing stream reads as empty, a tombstoned one as tombstoned; any
    /// other error stops the comparison.
    fn end_with(&mut self, error: eventstore::Error) -> Result<(), VerifyError> {
        self.reader = None;
        self.exhausted = true;
        match error {
            eventstore::Error::ResourceNotFound => Ok(()),
            eventstore::Error::ResourceDeleted => {
                self.tombstoned = true;
                Ok(())
            }
            source => Err(VerifyError::Read {
                side: self.side,
                operation: format!("reading stream {:?}", self.stream),
                message: describe(&source),
                source,
            }),
        }
    }

    /// Reads until `n` events are buffered, the page's bytes are reached, or
    /// the stream ends.
    async fn fill_to(&mut self, n: usize, max_bytes: usize) -> Result<(), VerifyError> {
        while self.buffer.len() < n && !self.exhausted {
            if !self.buffer.is_empty() && self.buffered_bytes >= max_bytes {
                return Ok(());
            }
            let Some(reader) = self.reader.as_mut() else {
                self.exhausted = true;
                break;
            };
            let next = match within(self.timeout, reader.next().err_into()).await {
                Ok(next) => Ok(next),
                Err(RequestError::Failed(error)) => Err(error),
                Err(timed_out) => {
                    return settle(
                        self.side,
                        || format!("reading stream {:?}", self.stream),
                        Err(timed_out),
                    )
                }
            };
            match next {
                Ok(Some(resolved)) => {
                    let record = resolved.get_original_event();
                    if classify(&record.stream_id, &record.event_type, &record.data)
                        != ChangeKind::Append
                    {
                        continue;
                    }
                    let event = VerifiedEvent {
                        stream: record.stream_id.clone(),
                        revision: record.revision,
                        position: Position::from_client(record.position),
                        id: record.id,
                        event_type: record.event_type.clone(),
                        is_json: record.is_json,
                        data: record.data.clone(),
                        metadata: record.custom_metadata.clone(),
                    };
                    let event = match self.expect {
                        Some(expect) => match expect(event) {
                            Some(event) => event,
                            None => continue,
                        },
                        None => event,
                    };
                    self.buffered_bytes += event.data.len() + event.metadata.len();
                    self.buffer.push_back(event);
                }
                Ok(None) => {
                    self.exhausted = true;
                    self.reader = None;
                }
                Err(error) => self.end_with(error)?,
            }
        }
        Ok(())
    }

    async fn fill(&mut self, n: usize) -> Result<(), VerifyError> {
        self.fill_to(n, usize::MAX).await
    }

    async fn peek(&mut self) -> Result<Option<&VerifiedEvent>, VerifyError> {
        self.fill(1).await?;
        Ok(self.buffer.front())
    }

    fn pop(&mut self) -> Option<VerifiedEvent> {
        let event = self.buffer.pop_front()?;
        self.buffered_bytes -= event.data.len() + event.metadata.len();
        Some(event)
    }

    /// Where `id` is in the look-ahead (reading up to a page), if it is.
    async fn find_ahead(
        &mut self,
        id: Uuid,
        options: &VerifyOptions,
    ) -> Result<Option<usize>, VerifyError> {
        self.fill_to(options.page_events.max(2), options.page_bytes)
            .await?;
        Ok(self.buffer.iter().position(|e| e.id == id))
    }
}

/// The latest stream metadata of a side: at the end, and the latest one
/// within `until` (they differ while metadata is in flight).
#[derive(Debug, Default)]
struct Metadata {
    latest: Option<MetadataBody>,
    latest_covered: Option<MetadataBody>,
}

#[derive(Debug, Clone, PartialEq)]
enum MetadataBody {
    Json(serde_json::Value),
    Raw(Bytes),
}

impl MetadataBody {
    fn parse(data: &Bytes) -> Self {
        match serde_json::from_slice(data) {
            Ok(value) => MetadataBody::Json(value),
            Err(_) => MetadataBody::Raw(data.clone()),
        }
    }

    fn is_soft_delete(&self) -> bool {
        match self {
            MetadataBody::Json(value) => {
                let data = serde_json::to_vec(value).unwrap_or_default();
                classify("$$x", METADATA_EVENT_TYPE, &data) == ChangeKind::SoftDelete
            }
            MetadataBody::Raw(_) => false,
        }
    }
}

fn show_metadata(metadata: Option<&MetadataBody>) -> String {
    match metadata {
        None => "none".to_owned(),
        Some(MetadataBody::Json(value)) => value.to_string(),
        Some(MetadataBody::Raw(bytes)) => format!("{} raw bytes", bytes.len()),
    }
}

/// Metadata records read backwards at most, looking for the latest one within `until`.
const METADATA_LOOKBACK: usize = 100;

async fn read_metadata(
    client: &Client,
    side: &'static str,
    stream: &str,
    options: &VerifyOptions,
) -> Result<Metadata, VerifyError> {
    let metastream = format!("$${stream}");
    let read_options = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(METADATA_LOOKBACK);
    let operation = || format!("reading the metadata of {stream:?}");
    let timeout = options.request_timeout;
    let mut metadata = Metadata::default();
    let mut reader = match within(
        timeout,
        client
            .read_stream(metastream.as_str(), &read_options)
            .err_into(),
    )
    .await
    {
        Err(RequestError::Failed(
            eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
        )) => return Ok(metadata),
        outcome => settle(side, operation, outcome)?,
    };
    loop {
        let next = match within(timeout, reader.next().err_into()).await {
            Err(RequestError::Failed(
                eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted,
            )) => return Ok(metadata),
            outcome => settle(side, operation, outcome)?,
        };
        let Some(resolved) = next else {
            return Ok(metadata);
        };
        let record = resolved.get_original_event();
        if record.event_type != METADATA_EVENT_TYPE {
            continue;
        }
        let body = MetadataBody::parse(&record.data);
        let position = Position::from_client(record.position);
        if metadata.latest.is_none() {
            metadata.latest = Some(body.clone());
        }
        if side == TARGET || options.until.covers(position) {
            metadata.latest_covered = Some(body);
            return Ok(metadata);
        }
    }
}

fn describe_bytes(bytes: &[u8]) -> String {
    const SHOWN: usize = 60;
    match std::str::from_utf8(bytes) {
        Ok(text) if text.len() <= SHOWN => format!("{text:?}"),
        Ok(text) => {
            let cut = (0..=SHOWN)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            format!("{:?}… ({} bytes)", &text[..cut], bytes.len())
        }
        Err(_) => format!("{} binary bytes", bytes.len()),
    }
}

fn content_type(is_json: bool) -> String {
    if is_json {
        "application/json"
    } else {
        "application/octet-stream"
    }
    .to_owned()
}

fn difference(
    kind: DifferenceKind,
    revision: Option<u64>,
    field: &str,
    source: String,
    target: String,
) -> Difference {
    Difference {
        kind,
        revision,
        field: field.to_owned(),
        source,
        target,
    }
}

async fn compare_stream(
    source_client: &Client,
    target_client: &Client,
    name: &str,
    flags: u8,
    options: &VerifyOptions,
) -> Result<StreamOutcome, VerifyError> {
    let max = options.max_per_stream;
    let mut out = StreamOutcome::default();
    let (source, target, source_meta, target_meta) = futures::try_join!(
        Side::open(source_client, SOURCE, name, options),
        Side::open(target_client, TARGET, name, options),
        read_metadata(source_client, SOURCE, name, options),
        read_metadata(target_client, TARGET, name, options),
    )?;
    let (mut source, mut target) = (source, target);

    // Deletion: tombstones first.
    let tombstone_covered = flags & TOMBSTONED_BY_UNTIL != 0 || options.until == Until::End;
    let state = |t: bool| if t { "tombstoned" } else { "not tombstoned" }.to_owned();
    match (source.tombstoned, target.tombstoned) {
        (true, true) => return Ok(out),
        (true, false) if !tombstone_covered => {
            // Tombstoned on the source after `until`: nothing left to compare.
            out.changed_after_until = true;
            return Ok(out);
        }
        (true, false) | (false, true) => {
            out.push(
                max,
                difference(
                    DifferenceKind::Deletion,
                    None,
                    "",
                    state(source.tombstoned),
                    state(target.tombstoned),
                ),
            );
            return Ok(out);
        }
        (false, false) => {}
    }

    // Soft deletes and metadata. Target metadata equal to the source's latest
    // (newer than `until`) is in flight, not a difference.
    let source_soft = source_meta
        .latest_covered
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    let source_soft_now = source_meta
        .latest
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    let target_soft = target_meta
        .latest
        .as_ref()
        .is_some_and(MetadataBody::is_soft_delete);
    if source_soft_now && !source_soft {
        // Soft-deleted on the source after `until`: its events no longer read.
        out.changed_after_until = true;
        return Ok(out);
    }
    let in_flight = target_meta.latest.is_some() && target_meta.latest == source_meta.latest;
    if source_soft != target_soft && !in_flight {
        let state = |s: bool| {
            if s {
                "soft-deleted"
            } else {
                "not soft-deleted"
            }
            .to_owned()
        };
        out.push(
            max,
            difference(
                DifferenceKind::Deletion,
                None,
                "",
                state(source_soft),
                state(target_soft),
            ),
        );
        return Ok(out);
    }
    if target_meta.latest != source_meta.latest_covered && !in_flight {
        out.push(
            max,
            difference(
                DifferenceKind::Metadata,
                None,
                "stream metadata",
                show_metadata(source_meta.latest_covered.as_ref()),
                show_metadata(target_meta.latest.as_ref()),
            ),
        );
    }

    // Events, in stream order.
    let progress = options.progress.as_deref();
    let mut recent: VecDeque<Uuid> = VecDeque::new();
    let mut recent_set: HashSet<Uuid> = HashSet::new();
    let remember = |id: Uuid, recent: &mut VecDeque<Uuid>, set: &mut HashSet<Uuid>| {
        if options.duplicate_window == 0 {
            return;
        }
        if recent.len() >= options.duplicate_window {
            if let Some(old) = recent.pop_front() {
                set.remove(&old);
            }
        }
        recent.push_back(id);
        set.insert(id);
    };
    let covered = |e: &VerifiedEvent| options.until.covers(e.position);
    let count_source = |out: &mut StreamOutcome, e: &VerifiedEvent| {
        out.source_events += 1;
        out.source_bytes += (e.data.len() + e.metadata.len()) as u64;
        if let Some(p) = progress {
            p.events_compared.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        let s = source.peek().await?.cloned();
        let t = target.peek().await?.cloned();
        match (s, t) {
            (None, None) => break,
            (Some(s), None) => {
                source.pop();
                if covered(&s) {
                    count_source(&mut out, &s);
                    out.push(
                        max,
                        difference(
                            DifferenceKind::Missing,
                            Some(s.revision),
                            "",
                            s.id.to_string(),
                            "none".to_owned(),
                        ),
                    );
                }
            }
            (None, Some(t)) => {
                target.pop();
                out.target_events += 1;
                out.push(max, extra_or_duplicate(&t, &recent_set));
            }
            (Some(s), Some(t)) if s.id == t.id => {
                source.pop();
                target.pop();
                if covered(&s) {
                    count_source(&mut out, &s);
                }
                out.target_events += 1;
                compare_events(&mut out, options, &s, &t);
                remember(s.id, &mut recent, &mut recent_set);
            }
            (Some(s), Some(t)) => {
                if recent_set.contains(&t.id) {
                    target.pop();
                    out.target_events += 1;
                    out.push(max, extra_or_duplicate(&t, &recent_set));
                } else if let Some(k) = source.find_ahead(t.id, options).await? {
                    // The source events before the target's are not on the target.
                    for _ in 0..k {
                        let missing = source.pop().expect("found ahead");
                        count_source(&mut out, &missing);
                        out.push(
                            max,
                            difference(
                                DifferenceKind::Missing,
                                Some(missing.revision),
                                "",
                                missing.id.to_string(),
                                "none".to_owned(),
                            ),
                        );
                    }
                } else if let Some(l) = target.find_ahead(s.id, options).await? {
                    for _ in 0..l {
                        let extra = target.pop().expect("found ahead");
                        out.target_events += 1;
                        out.push(max, extra_or_duplicate(&extra, &recent_set));
                    }
                } else if !covered(&s) {
                    // The source's event is in flight; the target's is unknown.
                    target.pop();
                    out.target_events += 1;
                    out.push(max, extra_or_duplicate(&t, &recent_set));
                } else {
                    source.pop();
                    target.pop();
                    count_source(&mut out, &s);
                    out.target_events += 1;
                    out.push(
                        max,
                        difference(
                            DifferenceKind::Content,
                            Some(s.revision),
                            "event id",
                            s.id.to_string(),
                            t.id.to_string(),
                        ),
                    );
                }
            }
        }
    }
    Ok(out)
}

fn extra_or_duplicate(t: &VerifiedEvent, recent: &HashSet<Uuid>) -> Difference {
    let kind = if recent.contains(&t.id) {
        DifferenceKind::Duplicate
    } else {
        DifferenceKind::Extra
    };
    difference(
        kind,
        Some(t.revision),
        "",
        "none".to_owned(),
        format!("{} {}", t.id, t.event_type),
    )
}

fn compare_events(
    out: &mut StreamOutcome,
    options: &VerifyOptions,
    s: &VerifiedEvent,
    t: &VerifiedEvent,
) {
    let max = options.max_per_stream;
    let revision = Some(s.revision);
    let mut content = |field: &str, a: String, b: String| {
        out.push(
            max,
            difference(DifferenceKind::Content, revision, field, a, b),
        );
    };
    if options.compare_revisions && s.revision != t.revision {
        content("revision", s.revision.to_string(), t.revision.to_string());
    }
    if s.event_type != t.event_type {
        content("event type", s.event_type.clone(), t.event_type.clone());
    }
    if s.is_json != t.is_json {
        content(
            "content type",
            content_type(s.is_json),
            content_type(t.is_json),
        );
    }
    if s.data != t.data {
        content("data", describe_bytes(&s.data), describe_bytes(&t.data));
    }
    if s.metadata != t.metadata {
        content(
            "metadata",
            describe_bytes(&s.metadata),
            describe_bytes(&t.metadata),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_spill_to_sorted_runs_and_merge_once_each_with_all_flags() {
        let mut set = NameSet::new(3);
        let names = ["d", "a", "c", "b", "a", "e", "c", "f", "a", "g"];
        for (i, name) in names.iter().enumerate() {
            let flags = if i % 2 == 0 { ON_SOURCE } else { ON_TARGET };
            set.insert((*name).to_owned(), flags).unwrap();
        }
        assert!(set.runs.len() >= 2, "the test must spill");
        let merged: Vec<(String, u8)> = set.into_sorted().unwrap().map(Result::unwrap).collect();
        let want = [
            ("a", ON_SOURCE | ON_TARGET),
            ("b", ON_TARGET),
            ("c", ON_SOURCE),
            ("d", ON_SOURCE),
            ("e", ON_TARGET),
            ("f", ON_TARGET),
            ("g", ON_TARGET),
        ];
        let want: Vec<(String, u8)> = want.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect();
        assert_eq!(merged, want);
    }

    #[test]
    fn names_stay_in_memory_below_the_limit() {
        let mut set = NameSet::new(10);
        assert!(set.insert("b".into(), ON_SOURCE).unwrap());
        assert!(!set.insert("b".into(), ON_TARGET).unwrap());
        assert!(set.insert("a\nnewline".into(), ON_TARGET).unwrap());
        assert!(set.runs.is_empty());
        let merged: Vec<(String, u8)> = set.into_sorted().unwrap().map(Result::unwrap).collect();
        assert_eq!(
            merged,
            vec![
                ("a\nnewline".to_owned(), ON_TARGET),
                ("b".to_owned(), ON_SOURCE | ON_TARGET)
            ]
        );
    }

    #[test]
    fn until_covers_as_its_bound_says() {
        let p = Position::at(100);
        assert!(Until::End.covers(p));
        assert!(Until::Including(p).covers(p));
        assert!(!Until::Including(Position::at(99)).covers(p));
        assert!(!Until::Before(p).covers(p));
        assert!(Until::Before(Position::at(101)).covers(p));
    }

    #[test]
    fn user_streams_are_named_by_their_events_metadata_and_tombstones() {
        assert_eq!(
            user_stream_of("orders", "Placed", b"{}"),
            Some(("orders".to_owned(), ChangeKind::Append))
        );
        assert_eq!(
            user_stream_of("$$orders", "$metadata", b"{}"),
            Some(("orders".to_owned(), ChangeKind::StreamMetadata))
        );
        assert_eq!(
            user_stream_of("orders", "$streamDeleted", b""),
            Some(("orders".to_owned(), ChangeKind::Tombstone))
        );
        assert_eq!(user_stream_of("$ce-orders", "Placed", b"{}"), None);
        assert_eq!(user_stream_of("orders", "$>", b"0@x"), None);
    }

    #[test]
    fn soft_deletes_are_recognised_in_parsed_metadata() {
        let soft = MetadataBody::parse(&Bytes::from_static(br#"{"$tb":9223372036854775807}"#));
        assert!(soft.is_soft_delete());
        let plain = MetadataBody::parse(&Bytes::from_static(br#"{"$maxCount":3}"#));
        assert!(!plain.is_soft_delete());
        assert!(!MetadataBody::parse(&Bytes::from_static(b"\xff")).is_soft_delete());
    }

    #[test]
    fn the_report_names_each_stream_and_the_totals() {
        let mut outcome = StreamOutcome::default();
        for revision in [5, 3, 9] {
            outcome.push(
                2,
                difference(
                    DifferenceKind::Missing,
                    Some(revision),
                    "",
                    "x".into(),
                    "none".into(),
                ),
            );
        }
        assert_eq!(outcome.first_revision, Some(3));
        assert_eq!(outcome.differences.len(), 2);
        let report = VerifyReport {
            until: Some(Until::End),
            streams_compared: 4,
            streams_differing: 1,
            differences: outcome.count,
            by_kind: outcome.by_kind.clone(),
            streams: vec![StreamDifferences {
                stream: "orders-1".into(),
                first_revision: outcome.first_revision,
                count: outcome.count,
                differences: outcome.differences,
            }],
            ..VerifyReport::default()
        };
        let text = report.to_string();
        assert!(
            text.contains("stream \"orders-1\": 3 differences, first at revision 3"),
            "{text}"
        );
        assert!(text.contains("missing at revision 5"), "{text}");
        assert!(text.contains("… and 1 more"), "{text}");
        assert!(
            text.contains("3 differences in 1 streams (3 missing)"),
            "{text}"
        );
        assert!(!report.is_identical());
    }

    #[test]
    fn an_order_difference_alone_makes_the_report_differ_and_is_named() {
        let event = |stream: &str, id: u128, source: u64, target: u64| OrderedEvent {
            stream: stream.into(),
            id: Uuid::from_u128(id),
            source_position: Position::at(source),
            target_position: Position::at(target),
        };
        let mut report = VerifyReport {
            streams_compared: 2,
            order_checked: true,
            order: Some(OrderDifference {
                first: event("a", 1, 100, 900),
                second: event("b", 2, 200, 800),
            }),
            ..VerifyReport::default()
        };
        assert!(!report.is_identical());
        let text = report.to_string();
        assert!(text.starts_with("order differs: source has "), "{text}");
        assert!(text.ends_with("compared: the order differs"), "{text}");
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["order"]["first"]["stream"], "a", "{json}");
        assert_eq!(
            json["order"]["second"]["target_position"]["commit"], 800,
            "{json}"
        );

        report.order = None;
        assert!(report.is_identical());
        assert!(report.to_string().ends_with(": identical"));
        report.order_checked = false;
        assert!(
            report
                .to_string()
                .ends_with(": identical; order not checked"),
            "{report}"
        );
    }
}
