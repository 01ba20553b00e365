//! Compares what two servers hold, through the real client, to prove a replication
//! complete and exact.
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
//! Not compared: system streams (`$…`), positions, `created` timestamps, metadata
//! event ids, and events that are only in `$all` but not readable from their stream.

use std::collections::BTreeSet;
use std::fmt;

use eventstore::{Client, ReadAllOptions, ReadStreamOptions, StreamPosition};
use futures::stream::{self, StreamExt as _};

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
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            compare_revisions: false,
            max_differences: 1_000,
            concurrency: 16,
            stream_prefix: String::new(),
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
    /// What differs: `deleted`, `event count`, `event id`, `event type`, `content type`,
    /// `data`, `metadata`, `revision`, `stream metadata`.
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
}

impl CompareReport {
    /// No difference at all.
    pub fn is_identical(&self) -> bool {
        self.difference_count == 0
    }

    fn push(&mut self, max: usize, difference: Difference) {
        self.difference_count += 1;
        if self.differences.len() < max {
            self.differences.push(difference);
        }
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

/// A comparable event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    revision: u64,
    id: uuid::Uuid,
    event_type: String,
    is_json: bool,
    data: bytes::Bytes,
    metadata: bytes::Bytes,
}

#[derive(Debug)]
struct StreamView {
    tombstoned: bool,
    events: Vec<Event>,
    metadata: Option<MetadataBody>,
}

#[derive(Debug, PartialEq)]
enum MetadataBody {
    Json(serde_json::Value),
    Raw(bytes::Bytes),
}

impl fmt::Display for MetadataBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataBody::Json(value) => write!(f, "{value}"),
            MetadataBody::Raw(bytes) => write!(f, "{} raw bytes", bytes.len()),
        }
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
/// deleted stream.
pub async fn compare_with(
    source: &Client,
    target: &Client,
    options: &CompareOptions,
) -> Result<CompareReport, TestkitError> {
    let mut names = user_streams(source).await?;
    names.extend(user_streams(target).await?);
    names.retain(|name| name.starts_with(&options.stream_prefix));
    let concurrency = options.concurrency.max(1);
    let views: Vec<Result<(String, StreamView, StreamView), TestkitError>> = stream::iter(names)
        .map(|name| async move {
            let (a, b) = futures::join!(view(source, &name), view(target, &name));
            Ok((name, a?, b?))
        })
        .buffered(concurrency)
        .collect()
        .await;
    let mut report = CompareReport::default();
    for entry in views {
        let (name, a, b) = entry?;
        report.streams_compared += 1;
        report.source_events += a.events.len();
        report.target_events += b.events.len();
        diff_stream(&mut report, options, &name, &a, &b);
    }
    Ok(report)
}

fn diff_stream(
    report: &mut CompareReport,
    options: &CompareOptions,
    name: &str,
    a: &StreamView,
    b: &StreamView,
) {
    let max = options.max_differences;
    let difference =
        |revision: Option<u64>, field: &str, source: String, target: String| Difference {
            stream: name.to_owned(),
            revision,
            field: field.to_owned(),
            source,
            target,
        };
    if a.tombstoned != b.tombstoned {
        let state = |t: bool| if t { "tombstoned" } else { "not tombstoned" }.to_owned();
        report.push(
            max,
            difference(None, "deleted", state(a.tombstoned), state(b.tombstoned)),
        );
        return;
    }
    if a.tombstoned {
        return;
    }
    if a.metadata != b.metadata {
        let show = |m: &Option<MetadataBody>| {
            m.as_ref()
                .map_or_else(|| "none".to_owned(), ToString::to_string)
        };
        report.push(
            max,
            difference(
                None,
                "stream metadata",
                show(&a.metadata),
                show(&b.metadata),
            ),
        );
    }
    if a.events.len() != b.events.len() {
        report.push(
            max,
            difference(
                None,
                "event count",
                a.events.len().to_string(),
                b.events.len().to_string(),
            ),
        );
    }
    for (x, y) in a.events.iter().zip(&b.events) {
        let revision = Some(x.revision);
        if x.id != y.id {
            report.push(
                max,
                difference(revision, "event id", x.id.to_string(), y.id.to_string()),
            );
            // Misaligned streams would report every later field too; ids say enough.
            continue;
        }
        if options.compare_revisions && x.revision != y.revision {
            report.push(
                max,
                difference(
                    revision,
                    "revision",
                    x.revision.to_string(),
                    y.revision.to_string(),
                ),
            );
        }
        if x.event_type != y.event_type {
            report.push(
                max,
                difference(
                    revision,
                    "event type",
                    x.event_type.clone(),
                    y.event_type.clone(),
                ),
            );
        }
        if x.is_json != y.is_json {
            let kind = |json: bool| {
                if json {
                    "application/json"
                } else {
                    "application/octet-stream"
                }
                .to_owned()
            };
            report.push(
                max,
                difference(revision, "content type", kind(x.is_json), kind(y.is_json)),
            );
        }
        if x.data != y.data {
            report.push(
                max,
                difference(revision, "data", describe(&x.data), describe(&y.data)),
            );
        }
        if x.metadata != y.metadata {
            report.push(
                max,
                difference(
                    revision,
                    "metadata",
                    describe(&x.metadata),
                    describe(&y.metadata),
                ),
            );
        }
    }
    let longer = if a.events.len() > b.events.len() {
        &a.events
    } else {
        &b.events
    };
    let side = if a.events.len() > b.events.len() {
        "source"
    } else {
        "target"
    };
    for extra in longer.iter().skip(a.events.len().min(b.events.len())) {
        let (source, target) = if side == "source" {
            (extra.id.to_string(), "missing".to_owned())
        } else {
            ("missing".to_owned(), extra.id.to_string())
        };
        report.push(
            max,
            difference(Some(extra.revision), "event id", source, target),
        );
    }
}

fn describe(bytes: &[u8]) -> String {
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

/// Names of the user streams that appear in `$all`.
async fn user_streams(client: &Client) -> Result<BTreeSet<String>, TestkitError> {
    let options = ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = client
        .read_all(&options)
        .await
        .map_err(TestkitError::client("reading $all"))?;
    let mut names = BTreeSet::new();
    while let Some(event) = reader
        .next()
        .await
        .map_err(TestkitError::client("reading $all"))?
    {
        let stream = &event.get_original_event().stream_id;
        let user = stream.strip_prefix("$$").unwrap_or(stream);
        if !user.starts_with('$') && !names.contains(user) {
            names.insert(user.to_owned());
        }
    }
    Ok(names)
}

async fn view(client: &Client, stream: &str) -> Result<StreamView, TestkitError> {
    let options = ReadStreamOptions::default().max_count(usize::MAX);
    let read = async {
        let mut reader = client.read_stream(stream, &options).await?;
        let mut events = Vec::new();
        while let Some(event) = reader.next().await? {
            let e = event.get_original_event();
            if e.event_type.starts_with('$') {
                continue;
            }
            events.push(Event {
                revision: e.revision,
                id: e.id,
                event_type: e.event_type.clone(),
                is_json: e.is_json,
                data: e.data.clone(),
                metadata: e.custom_metadata.clone(),
            });
        }
        Ok::<_, eventstore::Error>(events)
    };
    let events = match read.await {
        Ok(events) => events,
        Err(eventstore::Error::ResourceNotFound) => Vec::new(),
        Err(eventstore::Error::ResourceDeleted) => {
            return Ok(StreamView {
                tombstoned: true,
                events: Vec::new(),
                metadata: None,
            })
        }
        Err(source) => {
            return Err(TestkitError::Client {
                operation: format!("reading stream {stream:?}"),
                source,
            })
        }
    };
    let metadata = latest_metadata(client, stream).await?;
    Ok(StreamView {
        tombstoned: false,
        events,
        metadata,
    })
}

async fn latest_metadata(
    client: &Client,
    stream: &str,
) -> Result<Option<MetadataBody>, TestkitError> {
    let metastream = format!("$${stream}");
    let options = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    let read = async {
        let mut reader = client.read_stream(metastream.as_str(), &options).await?;
        reader.next().await
    };
    match read.await {
        Ok(Some(event)) => {
            let data = event.get_original_event().data.clone();
            Ok(Some(match serde_json::from_slice(&data) {
                Ok(value) => MetadataBody::Json(value),
                Err(_) => MetadataBody::Raw(data),
            }))
        }
        Ok(None)
        | Err(eventstore::Error::ResourceNotFound | eventstore::Error::ResourceDeleted) => Ok(None),
        Err(source) => Err(TestkitError::Client {
            operation: format!("reading metadata of {stream:?}"),
            source,
        }),
    }
}
