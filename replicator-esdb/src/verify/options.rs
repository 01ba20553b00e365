//! What [`verify`](super::verify) is asked: up to where, how much at once,
//! and the hook mapping a source event to what the target should hold.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use replicator_core::Position;
use serde::Serialize;
use uuid::Uuid;

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
    /// Its `$all` position on its own cluster, when the read gave one: not
    /// from the stream reads of a v5 source over TCP, which carry none.
    pub position: Option<Position>,
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
/// target should not hold it (filtered out). See [module docs](super).
pub type Expect = Arc<dyn Fn(VerifiedEvent) -> Option<VerifiedEvent> + Send + Sync>;

/// Counters a caller can poll while [`verify`](super::verify) runs (for a
/// progress bar).
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

/// How [`verify`](super::verify) compares.
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
    /// target (see "Order" in the [module docs](super)). Right when the
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_covers_as_its_bound_says() {
        let p = Position::at(100);
        assert!(Until::End.covers(p));
        assert!(Until::Including(p).covers(p));
        assert!(!Until::Including(Position::at(99)).covers(p));
        assert!(!Until::Before(p).covers(p));
        assert!(Until::Before(Position::at(101)).covers(p));
    }
}
