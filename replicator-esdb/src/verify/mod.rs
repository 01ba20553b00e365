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
//! only source records up to that position must be on the target. Which
//! source records those are is learnt from the listing (below): for each
//! stream, the last revision of its events, and of its metadata stream's
//! records, in the source's `$all` up to `until`. A stream's revisions grow
//! with its `$all` positions, so a record is covered when its revision is at
//! most that; this holds for a v5 source read over TCP too, whose stream
//! reads carry no positions. Events of
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
//!   Names (with the two revisions above, for the source) are collected in
//!   a sorted in-memory set of at most
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
//! # Protocols
//! Each side is read through [`ClusterRead`]: the gRPC
//! [`eventstore::Client`], or a v5 source's [`TcpSource`](crate::tcp::TcpSource)
//! (`reader.protocol: tcp`). The comparison is the same either way.
//!
//! # Filters and transforms
//! [`VerifyOptions::expect`] maps each source event to what the target should
//! hold for it (`None`: nothing, it is filtered out). The default is the
//! identity: what an unfiltered replication produces. The configured filters
//! and transforms plug in there.

//!
//! # Where it lives
//! This file is the engine: listing the streams, comparing them in turn, the
//! order check beside. The options are in `options.rs`, the report in
//! `report.rs`, the external sort of the stream names in `sort.rs`, one
//! stream's comparison in `stream.rs` (reading each side through `side.rs`,
//! its metadata through `metadata.rs`), the order check in `order.rs`.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use replicator_core::ChangeKind;

use crate::classify::classify;
use crate::cluster::{
    next, within, AllFrom, ClusterRead, Direction, ReadError, Records, SOURCE, TARGET,
};

mod metadata;
mod options;
mod order;
mod report;
mod side;
mod sort;
mod stream;

pub use options::{Expect, Until, VerifiedEvent, VerifyOptions, VerifyProgress};
pub use order::{OrderDifference, OrderedEvent};
pub use report::{Difference, DifferenceKind, StreamDifferences, VerifyReport};

use sort::{Listed, NameSet};
use stream::compare_stream;

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
        /// The error, shortened.
        message: String,
        /// The error (of the gRPC client or the TCP connection).
        #[source]
        source: ReadError,
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
/// Each side is read through [`ClusterRead`]: the gRPC
/// [`eventstore::Client`], or for a v5 source its
/// [`TcpSource`](crate::tcp::TcpSource) (or either as a
/// [`SourceClient`](crate::cluster::SourceClient)).
///
/// # Errors
/// [`VerifyError`] when a read fails (other than for a missing or deleted
/// stream) or times out, or the temporary files fail. Differences are not
/// errors: they are in the report.
pub async fn verify<S: ClusterRead, T: ClusterRead>(
    source: &S,
    target: &T,
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
pub async fn verify_pooled<S: ClusterRead, T: ClusterRead>(
    sources: &[S],
    targets: &[T],
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
async fn compare_streams<S: ClusterRead, T: ClusterRead>(
    sources: &[S],
    targets: &[T],
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
    let mut outcomes = futures::stream::iter(merged.enumerate())
        .map(|(index, entry)| async move {
            let source = &sources[index % sources.len()];
            let target = &targets[index % targets.len()];
            let (name, listed) = entry.map_err(VerifyError::Spill)?;
            let outcome = compare_stream(source, target, &name, listed, options).await?;
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

async fn list_streams<C: ClusterRead>(
    client: &C,
    side: &'static str,
    options: &VerifyOptions,
    progress: &VerifyProgress,
    names: &mut NameSet,
) -> Result<(), VerifyError> {
    let operation = || "reading $all to list its streams".to_owned();
    let mut records = client.all_records(AllFrom::Start, Direction::Forwards, usize::MAX);
    while let Some((position, record)) =
        request(side, operation, options.request_timeout, next(&mut records)).await?
    {
        if side == SOURCE {
            if !options.until.covers(position) {
                break;
            }
            progress.records_listed.fetch_add(1, Ordering::Relaxed);
        }
        let Some((name, kind)) = user_stream_of(&record.stream, &record.event_type, &record.data)
        else {
            continue;
        };
        if !name.starts_with(&options.stream_prefix) {
            continue;
        }
        let revision = Some(record.revision);
        let listed = match (side, kind) {
            (SOURCE, ChangeKind::Tombstone) => Listed {
                flags: ON_SOURCE | TOMBSTONED_BY_UNTIL,
                ..Listed::default()
            },
            (SOURCE, ChangeKind::Append) => {
                progress.source_events_found.fetch_add(1, Ordering::Relaxed);
                Listed {
                    flags: ON_SOURCE,
                    events_until: revision,
                    metadata_until: None,
                }
            }
            (SOURCE, _) => Listed {
                flags: ON_SOURCE,
                events_until: None,
                metadata_until: revision,
            },
            _ => Listed {
                flags: ON_TARGET,
                ..Listed::default()
            },
        };
        if names.insert(name, listed).map_err(VerifyError::Spill)? {
            progress.streams_found.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// Awaits one read with a deadline ([`within`]), naming the side and
/// operation when it fails.
pub(crate) async fn request<T>(
    side: &'static str,
    operation: impl FnOnce() -> String,
    timeout: Duration,
    future: impl std::future::Future<Output = Result<T, ReadError>>,
) -> Result<T, VerifyError> {
    settle(side, operation, within(timeout, future).await)
}

/// The outcome of a read awaited [`within`] a deadline, as [`request`]
/// names it (for callers that first look at some outcomes themselves).
pub(crate) fn settle<T>(
    side: &'static str,
    operation: impl FnOnce() -> String,
    outcome: Result<T, ReadError>,
) -> Result<T, VerifyError> {
    match outcome {
        Ok(value) => Ok(value),
        Err(ReadError::TimedOut(timed_out)) => Err(VerifyError::Timeout {
            side,
            operation: operation(),
            timeout: timed_out.limit,
        }),
        Err(source) => Err(VerifyError::Read {
            side,
            operation: operation(),
            message: source.to_string(),
            source,
        }),
    }
}

/// The next record of `records` within `timeout`, named as [`request`] names it.
pub(crate) async fn next_record<T>(
    side: &'static str,
    operation: impl FnOnce() -> String,
    timeout: Duration,
    records: &mut Records<'_, T>,
) -> Result<Option<T>, VerifyError> {
    request(side, operation, timeout, next(records)).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
