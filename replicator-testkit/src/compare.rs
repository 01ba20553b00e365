//! Compares what two servers hold, through the real client, to prove a replication
//! complete and exact: an adapter over the project's one comparison engine,
//! [`replicator_esdb::verify`] (the same code `replicator verify` and `replicator
//! demo` run), keeping this module's report shape for the tests that use it.
//!
//! # What is compared
//! Exactly what a replicator is supposed to copy: **user streams** (names not starting
//! with `$`) with their readable events, their stream metadata and their deletion
//! state. In detail, for every user stream found in either server's `$all` (by its
//! events or by a `$$stream` metadata event; only those starting with
//! [`CompareOptions::stream_prefix`] when it is set):
//! - **deletion state**: tombstoned (reads fail with stream-deleted) or not;
//! - **events**: a forward read of the stream as the server answers it, so events
//!   hidden by `$tb`, `$maxCount`, `$maxAge` or a soft delete are not compared, and
//!   a soft-deleted stream compares as having no events. Events whose type starts with
//!   `$` (links `$>`, `$metadata`, `$streamDeleted`…) are left out, since a replicator
//!   does not copy them. Events are compared in stream order by id, type, content type
//!   (JSON or not), data and user metadata; revisions only when
//!   [`CompareOptions::compare_revisions`] is set (a replicator that copies the whole
//!   history reproduces them, one that starts late does not);
//! - **stream metadata**: the latest `$metadata` event of `$$stream`, compared as JSON
//!   (as raw bytes if it is not JSON). Not compared for tombstoned streams.
//!
//! - **order** (unless [`CompareOptions::check_order`] is off): the user events
//!   both servers hold must be in the same order in both `$all`s, as a replicator
//!   writing in source order (`sink.order: source`) promises; the first pair in
//!   another order is [`CompareReport::order`] and one [`Difference`] (field
//!   `order`). See "Order" in [`replicator_esdb::verify`] for the rule and its
//!   look-ahead bound.
//!
//! Not compared: system streams (`$…`), positions (other than for the order),
//! `created` timestamps, metadata event ids, and events that are only in `$all` but
//! not readable from their stream.

use std::fmt;

use eventstore::Client;
use replicator_esdb::verify::{self, DifferenceKind, OrderDifference, VerifyError, VerifyOptions};

use crate::TestkitError;

/// How [`compare_with`] compares.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// Also require equal event revisions.
    pub compare_revisions: bool,
    /// Stop recording differences after this many (the counts stay exact).
    pub max_differences: usize,
    /// Streams read at once per server.
    pub concurrency: usize,
    /// Compare only the user streams whose names start with this (empty, the default:
    /// all of them). With the same [`crate::workload::WorkloadSpec::stream_prefix`],
    /// compares one workload on clusters that also hold other data.
    pub stream_prefix: String,
    /// Also require the user events in the same `$all` order on both servers
    /// (the default): right for a replication in source order (`sink.order:
    /// source`), wrong for `sink.order: stream`, which keeps only each stream's.
    pub check_order: bool,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            compare_revisions: false,
            max_differences: 1_000,
            concurrency: 16,
            stream_prefix: String::new(),
            check_order: true,
        }
    }
}

/// One difference between source and target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The user stream.
    pub stream: String,
    /// Revision of the source event (or target event when the source has none).
    pub revision: Option<u64>,
    /// What differs: `deleted` (tombstone or soft delete), `event id` (a missing,
    /// extra, duplicate or different event), `event type`, `content type`, `data`,
    /// `metadata`, `revision`, `stream metadata`, `order` (the stream is the one of
    /// the event the source has first).
    pub field: String,
    /// The source side, human-readable.
    pub source: String,
    /// The target side, human-readable.
    pub target: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {:?}", self.stream)?;
        if let Some(revision) = self.revision {
            write!(f, " revision {revision}")?;
        }
        write!(
            f,
            ": {} differs: source {} / target {}",
            self.field, self.source, self.target
        )
    }
}

/// Result of a comparison.
#[derive(Clone, Debug, Default)]
pub struct CompareReport {
    /// Differences found (at most [`CompareOptions::max_differences`]).
    pub differences: Vec<Difference>,
    /// Differences found in total, recorded or not.
    pub difference_count: usize,
    /// User streams compared.
    pub streams_compared: usize,
    /// Comparable events on the source.
    pub source_events: usize,
    /// Comparable events on the target.
    pub target_events: usize,
    /// The first pair of user events in another `$all` order on the target (also
    /// counted and listed as a difference), when [`CompareOptions::check_order`].
    pub order: Option<OrderDifference>,
}

impl CompareReport {
    /// No difference at all (in the order either, when checked).
    pub fn is_identical(&self) -> bool {
        self.difference_count == 0 && self.order.is_none()
    }
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} streams, {} source events, {} target events, {} differences",
            self.streams_compared, self.source_events, self.target_events, self.difference_count
        )?;
        for difference in &self.differences {
            writeln!(f, "  {difference}")?;
        }
        if self.difference_count > self.differences.len() {
            writeln!(
                f,
                "  … and {} more",
                self.difference_count - self.differences.len()
            )?;
        }
        Ok(())
    }
}

/// Compares `source` and `target` with default options.
///
/// # Errors
/// [`TestkitError::Client`] when a read fails for another reason than a missing or
/// deleted stream.
pub async fn compare(source: &Client, target: &Client) -> Result<CompareReport, TestkitError> {
    compare_with(source, target, &CompareOptions::default()).await
}

/// Compares `source` and `target`; see the [module docs](self) for what is compared.
///
/// # Errors
/// [`TestkitError::Client`] when a read fails for another reason than a missing or
/// deleted stream, or gets no answer (then with the client's `DeadlineExceeded`).
pub async fn compare_with(
    source: &Client,
    target: &Client,
    options: &CompareOptions,
) -> Result<CompareReport, TestkitError> {
    let engine = VerifyOptions {
        compare_revisions: options.compare_revisions,
        concurrency: options.concurrency.max(1),
        stream_prefix: options.stream_prefix.clone(),
        max_per_stream: options.max_differences,
        max_streams: options.max_differences,
        check_order: options.check_order,
        ..VerifyOptions::default()
    };
    let report = verify::verify(source, target, &engine)
        .await
        .map_err(|error| match error {
            VerifyError::Read {
                side,
                operation,
                source,
                ..
            } => TestkitError::Client {
                operation: format!("{side}: {operation}"),
                source,
            },
            other => TestkitError::Client {
                operation: other.to_string(),
                source: eventstore::Error::DeadlineExceeded,
            },
        })?;
    let mut differences = Vec::new();
    if let Some(order) = report
        .order
        .as_ref()
        .filter(|_| options.max_differences > 0)
    {
        let (a, b) = (&order.first, &order.second);
        differences.push(Difference {
            stream: a.stream.clone(),
            revision: None,
            field: "order".to_owned(),
            source: format!(
                "{} ({:?}, {}) before {} ({:?}, {})",
                a.id, a.stream, a.source_position, b.id, b.stream, b.source_position
            ),
            target: format!(
                "{} at {} before {} at {}",
                b.id, b.target_position, a.id, a.target_position
            ),
        });
    }
    for stream in &report.streams {
        for d in &stream.differences {
            if differences.len() >= options.max_differences {
                break;
            }
            let field = match d.kind {
                DifferenceKind::Deletion => "deleted".to_owned(),
                DifferenceKind::Metadata => "stream metadata".to_owned(),
                DifferenceKind::Missing | DifferenceKind::Extra | DifferenceKind::Duplicate => {
                    "event id".to_owned()
                }
                DifferenceKind::Content => d.field.clone(),
            };
            let side = |text: &str| match d.kind {
                DifferenceKind::Missing | DifferenceKind::Extra | DifferenceKind::Duplicate
                    if text == "none" =>
                {
                    "missing".to_owned()
                }
                _ => text.to_owned(),
            };
            differences.push(Difference {
                stream: stream.stream.clone(),
                revision: d.revision,
                field,
                source: side(&d.source),
                target: side(&d.target),
            });
        }
    }
    Ok(CompareReport {
        differences,
        difference_count: report.differences as usize + usize::from(report.order.is_some()),
        streams_compared: report.streams_compared as usize,
        source_events: report.source_events as usize,
        target_events: report.target_events as usize,
        order: report.order,
    })
}
