//! A deterministic, seeded workload written through the real `eventstore` client.
//!
//! The same [`WorkloadSpec`] always produces the same history: the same streams, event
//! ids, types, data, metadata, stream metadata, deletions and order of writes. Two
//! servers given the same spec therefore hold the same user data (positions and
//! `created` timestamps aside), which is what `replicator_esdb::verify` checks.
//!
//! The history mixes what a replicator meets in production:
//! - many streams written interleaved, with plain names, unicode names and names of
//!   several hundred characters;
//! - JSON and binary events, empty data, empty, JSON and binary user metadata,
//!   sizes from zero bytes to just under 1 MiB, the largest append a real server
//!   accepts by default (a few, see [`WorkloadSpec::large_events`]);
//! - stream metadata (`$maxCount`, `$maxAge`, `$tb`, `$acl`, custom keys);
//! - soft deletes followed by appends that revive the stream;
//! - tombstones (hard deletes);
//! - link events (`$>`, data `"N@stream"`) in `$ce-` and `$et-` streams, and system
//!   events (`$`-prefixed types in `$`-prefixed streams).
//!
//! Writes go through batch appends, pipelined ([`WorkloadSpec::pipeline`] in flight)
//! but applied in plan order, so `$all` order is deterministic too.

use std::collections::HashMap;

use bytes::Bytes;
use eventstore::{
    BatchAppendClient, BatchAppendOptions, BatchWriteResult, Client, DeleteStreamOptions,
    EventData, ExpectedRevision, Position, TombstoneStreamOptions,
};
use futures::stream::{FuturesOrdered, StreamExt as _};
use futures::FutureExt as _;
use uuid::Uuid;

use crate::TestkitError;

/// Default size of the workload's large events: 4 KiB under the real server's
/// default maximum append size (1 MiB, counting data, metadata and twice the
/// event type), so a server with default settings takes them, and an append
/// of one cannot take much else. A larger size needs a server configured with
/// a larger `MaxAppendSize` (in the testkit, `ServerOptions::max_append_size`).
pub const LARGE_EVENT_SIZE: usize = 1024 * 1024 - 4096;

/// What to generate. Build with [`WorkloadSpec::new`] and adjust the knobs.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    /// Seed of the generator: same seed, same history.
    pub seed: u64,
    /// User events to append (links, system events and metadata come on top).
    pub events: usize,
    /// User streams to spread them over; `None`: one per 25 events (at least 1,
    /// at most 10,000).
    pub streams: Option<usize>,
    /// Largest number of events in one append.
    pub max_batch: usize,
    /// Large events to include (at most one per 10 events), each alone in its
    /// append.
    pub large_events: usize,
    /// Size of those events in bytes; default [`LARGE_EVENT_SIZE`].
    pub large_event_size: usize,
    /// Write stream metadata (`$maxCount`, `$maxAge`, `$tb`, `$acl`).
    pub stream_metadata: bool,
    /// Soft-delete some streams, then revive them with further appends.
    pub soft_deletes: bool,
    /// Tombstone some streams.
    pub tombstones: bool,
    /// Write link events to `$ce-…`/`$et-…` streams.
    pub links: bool,
    /// Write system events (`$`-typed, in `$`-streams).
    pub system_events: bool,
    /// Batch appends in flight at once.
    pub pipeline: usize,
    /// Put in front of every user stream name (empty by default), so that several
    /// workloads can share a cluster: a test against a real, persistent cluster uses
    /// a fresh prefix per run and compares with the same `stream_prefix` of
    /// `replicator_esdb::verify::VerifyOptions`.
    pub stream_prefix: String,
}

impl WorkloadSpec {
    /// A spec with every feature on, for `events` user events.
    pub fn new(seed: u64, events: usize) -> Self {
        WorkloadSpec {
            seed,
            events,
            ..WorkloadSpec::default()
        }
    }
}

impl Default for WorkloadSpec {
    fn default() -> Self {
        WorkloadSpec {
            seed: 0,
            events: 1_000,
            streams: None,
            max_batch: 20,
            large_events: 2,
            large_event_size: LARGE_EVENT_SIZE,
            stream_metadata: true,
            soft_deletes: true,
            tombstones: true,
            links: true,
            system_events: true,
            pipeline: 32,
            stream_prefix: String::new(),
        }
    }
}

/// What [`generate`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// User events appended (to non-`$` streams, with non-`$` types).
    pub events_written: usize,
    /// User streams created.
    pub streams: usize,
    /// `$metadata` writes.
    pub metadata_writes: usize,
    /// Soft deletes.
    pub soft_deletes: usize,
    /// Soft-deleted streams later appended to again.
    pub revived_streams: usize,
    /// Tombstones.
    pub tombstones: usize,
    /// Link events written.
    pub links: usize,
    /// System events written.
    pub system_events: usize,
    /// Events over 1 MiB.
    pub large_events: usize,
    /// Position of the last write.
    pub last_position: Option<Position>,
}

/// SplitMix64: tiny, fast, and identical everywhere, which is all determinism
/// needs. Public so tests that draw random moments stay reproducible from a seed.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn text(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] =
            b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 -_";
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }

    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&self.bytes(16));
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

const CATEGORIES: [&str; 5] = ["order", "customer", "invoice", "cart", "user_profile"];
const EVENT_TYPES: [&str; 6] = [
    "Created",
    "Updated",
    "ItemAdded",
    "ItemRemoved",
    "Snapshot",
    "Événement-reçu",
];

fn stream_name(index: usize) -> String {
    match index % 10 {
        3 => format!("ünïcødé-流れ-{index}"),
        7 => format!("long-{index}-{}", "x".repeat(200 + (index % 5) * 100)),
        _ => format!("{}-{index}", CATEGORIES[index % CATEGORIES.len()]),
    }
}

#[derive(Default)]
struct StreamPlan {
    /// Revision the next appended event gets.
    next_revision: u64,
    soft_deleted: bool,
    tombstoned: bool,
}

enum Op {
    Append {
        stream: String,
        expected: ExpectedRevision,
        events: Vec<EventData>,
    },
    SoftDelete(String),
    Tombstone(String),
}

struct Planner {
    rng: Rng,
    spec: WorkloadSpec,
    names: Vec<String>,
    streams: Vec<StreamPlan>,
    /// Written user events as (revision, stream index), for link targets.
    written: Vec<(u64, usize)>,
    summary: WorkloadSummary,
}

impl Planner {
    fn user_event(&mut self, large: bool) -> EventData {
        let event_type = EVENT_TYPES[self.rng.below(EVENT_TYPES.len())];
        let id = self.rng.uuid();
        let roll = self.rng.below(100);
        let event = if large {
            let data = self.rng.bytes(self.spec.large_event_size);
            EventData::binary(event_type, Bytes::from(data))
        } else if roll < 60 {
            let text_len = self.rng.below(200);
            let body = serde_json::json!({
                "seq": self.summary.events_written,
                "text": self.rng.text(text_len),
                "amount": self.rng.below(1_000_000),
                "nested": { "flag": self.rng.chance(500), "tags": ["a", "β", "🙂"] },
            });
            // Serialising a `Value` cannot fail.
            EventData::json(event_type, &body)
                .unwrap_or_else(|_| EventData::binary(event_type, Bytes::new()))
        } else if roll < 85 {
            let len = self.rng.below(2048);
            EventData::binary(event_type, Bytes::from(self.rng.bytes(len)))
        } else if roll < 92 {
            EventData::binary(event_type, Bytes::new())
        } else {
            let len = 4096 + self.rng.below(60 * 1024);
            EventData::binary(event_type, Bytes::from(self.rng.bytes(len)))
        };
        let event = event.id(id);
        match self.rng.below(10) {
            0..=5 => event,
            6..=8 => {
                let meta = serde_json::json!({
                    "correlationId": self.rng.uuid().to_string(),
                    "causationId": self.rng.uuid().to_string(),
                });
                event.metadata(Bytes::from(meta.to_string()))
            }
            _ => {
                let len = 1 + self.rng.below(64);
                event.metadata(Bytes::from(self.rng.bytes(len)))
            }
        }
    }

    fn metadata_body(&mut self, stream: usize) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        if self.rng.chance(500) {
            body.insert("$maxCount".into(), (50 + self.rng.below(1000)).into());
        }
        if self.rng.chance(400) {
            // A year: long enough that nothing expires while tests run.
            body.insert("$maxAge".into(), 31_536_000.into());
        }
        if self.rng.chance(300) {
            body.insert(
                "$acl".into(),
                serde_json::json!({ "$r": "$all", "$w": ["$admins", "ops"], "$d": "$admins" }),
            );
        }
        let next = self.streams[stream].next_revision;
        if next > 2 && self.rng.chance(250) {
            body.insert("$tb".into(), (1 + self.rng.below(next as usize / 2)).into());
        }
        body.insert("owner".into(), format!("team-{}", self.rng.below(7)).into());
        serde_json::Value::Object(body)
    }

    fn link_op(&mut self) -> Option<Op> {
        if self.written.is_empty() {
            return None;
        }
        let (revision, target) = self.written[self.rng.below(self.written.len())];
        let name = &self.names[target];
        let link_stream = if self.rng.chance(500) {
            format!("$ce-{}", name.split('-').next().unwrap_or("x"))
        } else {
            "$et-linked".to_owned()
        };
        let link =
            EventData::binary("$>", Bytes::from(format!("{revision}@{name}"))).id(self.rng.uuid());
        self.summary.links += 1;
        Some(Op::Append {
            stream: link_stream,
            expected: ExpectedRevision::Any,
            events: vec![link],
        })
    }

    fn system_op(&mut self) -> Op {
        let body = serde_json::json!({ "proc-cpu": self.rng.below(100), "sys-freeMem": self.rng.below(1 << 30) });
        let event = EventData::json("$statsCollected", &body)
            .unwrap_or_else(|_| EventData::binary("$statsCollected", Bytes::new()))
            .id(self.rng.uuid());
        self.summary.system_events += 1;
        Op::Append {
            stream: "$stats-127.0.0.1:2113".to_owned(),
            expected: ExpectedRevision::Any,
            events: vec![event],
        }
    }

    /// The next operation, or `None` when the spec is fulfilled.
    fn next_op(&mut self) -> Option<Op> {
        let target = self.spec.events;
        let done = self.summary.events_written;
        if done >= target {
            return None;
        }
        let live: Vec<usize> = (0..self.streams.len())
            .filter(|&i| !self.streams[i].tombstoned)
            .collect();
        if live.is_empty() {
            // Everything tombstoned (tiny workloads): open a fresh stream.
            let name = format!(
                "{}{}",
                self.spec.stream_prefix,
                stream_name(self.names.len())
            );
            self.names.push(name);
            self.streams.push(StreamPlan::default());
            return self.next_op();
        }
        let stream = live[self.rng.below(live.len())];
        let has_events = self.streams[stream].next_revision > 0;
        let special = target >= 20;
        // Deterministic milestones make sure every feature appears at least once.
        let milestone = |fraction: usize| special && done >= target * fraction / 100;
        if self.spec.soft_deletes
            && has_events
            && !self.streams[stream].soft_deleted
            && (self.rng.chance(5) || (milestone(30) && self.summary.soft_deletes == 0))
        {
            self.streams[stream].soft_deleted = true;
            self.summary.soft_deletes += 1;
            return Some(Op::SoftDelete(self.names[stream].clone()));
        }
        if self.spec.tombstones
            && has_events
            && live.len() > 1
            && (self.rng.chance(2) || (milestone(60) && self.summary.tombstones == 0))
        {
            self.streams[stream].tombstoned = true;
            self.summary.tombstones += 1;
            return Some(Op::Tombstone(self.names[stream].clone()));
        }
        if self.spec.stream_metadata
            && (self.rng.chance(20) || (milestone(10) && self.summary.metadata_writes == 0))
        {
            let body = self.metadata_body(stream);
            let event = EventData::json("$metadata", &body)
                .unwrap_or_else(|_| EventData::binary("$metadata", Bytes::new()))
                .id(self.rng.uuid());
            self.summary.metadata_writes += 1;
            return Some(Op::Append {
                stream: format!("$${}", self.names[stream]),
                expected: ExpectedRevision::Any,
                events: vec![event],
            });
        }
        if self.spec.links && (self.rng.chance(20) || (milestone(50) && self.summary.links == 0)) {
            if let Some(op) = self.link_op() {
                return Some(op);
            }
        }
        if self.spec.system_events
            && (self.rng.chance(10) || (milestone(40) && self.summary.system_events == 0))
        {
            return Some(self.system_op());
        }
        // Large events spread evenly through the history, one per append.
        let large_total = self.spec.large_events.min(target / 10);
        let large_due = large_total > self.summary.large_events
            && done >= target * (self.summary.large_events + 1) / (large_total + 1);
        let count = if large_due {
            1
        } else {
            (1 + self.rng.below(self.spec.max_batch.max(1))).min(target - done)
        };
        let mut events = Vec::with_capacity(count);
        for _ in 0..count {
            events.push(self.user_event(large_due));
        }
        if large_due {
            self.summary.large_events += 1;
        }
        let plan = &mut self.streams[stream];
        let expected = match plan.next_revision {
            0 => ExpectedRevision::NoStream,
            next => ExpectedRevision::Exact(next - 1),
        };
        if plan.soft_deleted {
            plan.soft_deleted = false;
            self.summary.revived_streams += 1;
        }
        for offset in 0..count as u64 {
            self.written.push((plan.next_revision + offset, stream));
        }
        plan.next_revision += count as u64;
        self.summary.events_written += count;
        Some(Op::Append {
            stream: self.names[stream].clone(),
            expected,
            events,
        })
    }
}

type Pending = futures::future::BoxFuture<'static, eventstore::Result<BatchWriteResult>>;

/// Writes the workload described by `spec` through `client` and says what it wrote.
///
/// # Errors
/// [`TestkitError::InvalidSpec`] for a spec that cannot be generated (zero
/// `max_batch` or `pipeline`), [`TestkitError::Client`] when a write fails.
pub async fn generate(
    client: &Client,
    spec: &WorkloadSpec,
) -> Result<WorkloadSummary, TestkitError> {
    if spec.max_batch == 0 || spec.pipeline == 0 {
        return Err(TestkitError::InvalidSpec(
            "max_batch and pipeline must be at least 1".to_owned(),
        ));
    }
    let stream_count = spec.streams.unwrap_or(spec.events / 25).clamp(1, 10_000);
    let mut planner = Planner {
        rng: Rng(spec.seed),
        spec: spec.clone(),
        names: (0..stream_count)
            .map(|i| format!("{}{}", spec.stream_prefix, stream_name(i)))
            .collect(),
        streams: (0..stream_count).map(|_| StreamPlan::default()).collect(),
        written: Vec::new(),
        summary: WorkloadSummary::default(),
    };
    let batch = std::sync::Arc::new(
        client
            .batch_append(&BatchAppendOptions::default())
            .await
            .map_err(TestkitError::client("opening a batch append"))?,
    );
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut last_position = None;
    let mut touched: HashMap<String, ()> = HashMap::new();
    while let Some(op) = planner.next_op() {
        match op {
            Op::Append {
                stream,
                expected,
                events,
            } => {
                if !stream.starts_with('$') {
                    touched.insert(stream.clone(), ());
                }
                let batch: std::sync::Arc<BatchAppendClient> = std::sync::Arc::clone(&batch);
                let mut write: Pending =
                    async move { batch.append_to_stream(stream, expected, events).await }.boxed();
                // Poll once now so the request is queued in plan order before the
                // next one; the reply is awaited later.
                if let std::task::Poll::Ready(result) = futures::poll!(&mut write) {
                    in_flight.push_back(futures::future::ready(result).boxed());
                } else {
                    in_flight.push_back(write);
                }
                while in_flight.len() >= spec.pipeline {
                    last_position = settle(in_flight.next().await, last_position)?;
                }
            }
            Op::SoftDelete(stream) => {
                while let Some(result) = in_flight.next().await {
                    last_position = settle(Some(result), last_position)?;
                }
                let position = client
                    .delete_stream(stream.as_str(), &DeleteStreamOptions::default())
                    .await
                    .map_err(TestkitError::client(format!("soft delete of {stream}")))?;
                last_position = position.or(last_position);
            }
            Op::Tombstone(stream) => {
                while let Some(result) = in_flight.next().await {
                    last_position = settle(Some(result), last_position)?;
                }
                let position = client
                    .tombstone_stream(stream.as_str(), &TombstoneStreamOptions::default())
                    .await
                    .map_err(TestkitError::client(format!("tombstone of {stream}")))?;
                last_position = position.or(last_position);
            }
        }
    }
    while let Some(result) = in_flight.next().await {
        last_position = settle(Some(result), last_position)?;
    }
    let mut summary = planner.summary;
    summary.streams = touched.len();
    summary.last_position = last_position;
    Ok(summary)
}

fn settle(
    result: Option<eventstore::Result<BatchWriteResult>>,
    last: Option<Position>,
) -> Result<Option<Position>, TestkitError> {
    match result {
        None => Ok(last),
        Some(Ok(written)) => Ok(written.current_position().or(last)),
        Some(Err(source)) => Err(TestkitError::Client {
            operation: "batch append".to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_fingerprint(spec: &WorkloadSpec) -> Vec<String> {
        let count = spec.streams.unwrap_or(spec.events / 25).clamp(1, 10_000);
        let mut planner = Planner {
            rng: Rng(spec.seed),
            spec: spec.clone(),
            names: (0..count).map(stream_name).collect(),
            streams: (0..count).map(|_| StreamPlan::default()).collect(),
            written: Vec::new(),
            summary: WorkloadSummary::default(),
        };
        let mut out = Vec::new();
        while let Some(op) = planner.next_op() {
            out.push(match op {
                Op::Append {
                    stream,
                    events,
                    expected,
                } => format!("{stream} {expected:?} {}", events.len()),
                Op::SoftDelete(s) => format!("delete {s}"),
                Op::Tombstone(s) => format!("tombstone {s}"),
            });
        }
        out
    }

    #[test]
    fn same_seed_same_plan_other_seed_other_plan() {
        let a = plan_fingerprint(&WorkloadSpec::new(1, 500));
        assert_eq!(a, plan_fingerprint(&WorkloadSpec::new(1, 500)));
        assert_ne!(a, plan_fingerprint(&WorkloadSpec::new(2, 500)));
    }

    #[test]
    fn every_feature_appears_in_a_modest_workload() {
        let spec = WorkloadSpec::new(3, 300);
        let ops = plan_fingerprint(&spec);
        assert!(ops.iter().any(|o| o.starts_with("delete ")));
        assert!(ops.iter().any(|o| o.starts_with("tombstone ")));
        assert!(ops.iter().any(|o| o.starts_with("$$")));
        assert!(ops
            .iter()
            .any(|o| o.starts_with("$ce-") || o.starts_with("$et-")));
        assert!(ops.iter().any(|o| o.starts_with("$stats-")));
    }
}
