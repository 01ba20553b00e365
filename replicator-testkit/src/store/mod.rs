//! The in-memory database behind [`crate::EsdbServer`]: one transaction log (`$all`),
//! an index per stream, and the write rules of the real server (expected revisions,
//! idempotent appends, soft delete and revival, tombstones, stream metadata).
//!
//! Kept free of gRPC so the rules can be read (and tested) on their own.
//!
//! # Memory
//!
//! Scale runs hold tens of millions of small events in two servers at once, so a
//! stored event costs about 140 bytes beyond its payload, plus about 170 bytes per
//! stream (`tests/server/memory.rs` holds the bound; `examples/store_memory.rs`
//! measures it):
//! - a payload is copied into a shared 1 MiB chunk ([`Arena`]): the `Bytes` a
//!   request was decoded into (tonic splits them off its receive buffer) would keep
//!   that whole buffer alive, and an allocation per event costs the allocator's
//!   header and rounding;
//! - stream names, event types and content types are stored once and referred to by
//!   number ([`Slot`]); reads rebuild a [`Record`] with shared names;
//! - the log and the stream table grow in fixed segments ([`Segmented`]), never by
//!   doubling (a doubled `Vec` holds up to twice what it uses);
//! - log indexes are `u32`, which caps a store at 2³² records.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use uuid::Uuid;

mod memory;
mod transactions;

use transactions::Pending;
pub(crate) use transactions::TransactionOutcome;

use memory::{Arena, Segmented};

/// `$tb` value the server writes on a soft delete (the .NET `long.MaxValue`).
pub(crate) const SOFT_DELETED_TB: u64 = i64::MAX as u64;
/// Revision of a tombstone (`$streamDeleted`) record.
pub(crate) const TOMBSTONE_REVISION: u64 = i64::MAX as u64;
/// Log position of the first record: real logs never start user data at 0, and a
/// subscription "after position 0" must still see the first event.
const FIRST_POSITION: u64 = 4_096;
/// Bytes of fixed per-record overhead, so positions advance like a real log's byte
/// offsets (by the record size), never by one.
const RECORD_OVERHEAD: u64 = 96;
/// Size of a transaction's commit record (and of its TransactionEnd prepare): no
/// stream, no data.
const COMMIT_RECORD: u64 = RECORD_OVERHEAD;

/// Content type of JSON events.
pub(crate) const JSON: &str = "application/json";
/// Content type of everything else.
pub(crate) const BINARY: &str = "application/octet-stream";

/// One record of the log, as reads see it. Built on demand from a [`Slot`]; cheap to
/// build and to clone (shared names, shared payload).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub stream: Arc<str>,
    pub revision: u64,
    pub id: Uuid,
    pub event_type: Arc<str>,
    pub content_type: Arc<str>,
    pub data: Bytes,
    pub custom_metadata: Bytes,
    /// 100 ns ticks since the Unix epoch, as the real server sends `created`.
    pub created_ticks: i64,
    /// Commit position: the position of the transaction's commit record, or for an
    /// ordinary append ("commit-alike") the record's own position.
    pub commit_position: u64,
    /// Prepare position: the record's own position in the log.
    pub prepare_position: u64,
    /// Where the record ends (and the next one in the log starts).
    pub prepare_end: u64,
    /// Where the commit record ends: for an ordinary append, `prepare_end`.
    pub commit_end: u64,
}

impl Record {
    pub(crate) fn is_link(&self) -> bool {
        &*self.event_type == "$>"
    }

    /// Whether an explicit transaction wrote it (commit ≠ prepare).
    pub(crate) fn in_transaction(&self) -> bool {
        self.commit_position != self.prepare_position
    }
}

/// One record of the log as stored.
#[derive(Debug)]
struct Slot {
    id: Uuid,
    /// Data, then custom metadata.
    payload: Bytes,
    revision: u64,
    /// Prepare position: where the record itself sits in the log.
    position: u64,
    /// Commit position: `position` for an ordinary append, the commit record's for an
    /// explicit transaction's events.
    commit: u64,
    created_ticks: i64,
    /// Number of the stream in [`Store::streams`].
    stream: u32,
    /// Length of the data at the start of `payload`.
    data_len: u32,
    /// Numbers in [`Store::names`].
    event_type: u32,
    content_type: u32,
}

/// An event proposed by a client.
#[derive(Debug, Clone)]
pub(crate) struct Proposed {
    pub id: Uuid,
    pub event_type: String,
    pub content_type: String,
    pub data: Bytes,
    pub custom_metadata: Bytes,
}

/// The expected revision of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expected {
    Any,
    NoStream,
    StreamExists,
    Exact(u64),
}

/// Outcome of an append, delete or tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriteOutcome {
    /// Written (or recognised as an idempotent repeat).
    Success {
        /// Revision of the stream's last event after the write.
        current: Option<u64>,
        /// Position of the last record written; `None` when nothing was written.
        position: Option<u64>,
    },
    /// The expected revision did not hold.
    WrongExpected {
        current: Option<u64>,
        expected: Expected,
    },
    /// The stream is tombstoned.
    StreamDeleted,
}

/// Why a stream cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadFailure {
    /// Never written, or soft-deleted.
    NotFound,
    /// Tombstoned.
    Deleted,
}

/// The parts of a stream's metadata that change what the server does.
#[derive(Debug, Clone, Default)]
pub(crate) struct StreamMeta {
    pub json: serde_json::Map<String, serde_json::Value>,
    pub truncate_before: Option<u64>,
    pub max_count: Option<u64>,
    pub max_age_secs: Option<u64>,
}

impl StreamMeta {
    fn parse(data: &[u8]) -> Option<StreamMeta> {
        let serde_json::Value::Object(json) = serde_json::from_slice(data).ok()? else {
            return None;
        };
        let number = |key: &str| json.get(key).and_then(serde_json::Value::as_u64);
        Some(StreamMeta {
            truncate_before: number("$tb"),
            max_count: number("$maxCount"),
            max_age_secs: number("$maxAge"),
            json,
        })
    }

    fn is_soft_deleted(&self) -> bool {
        self.truncate_before == Some(SOFT_DELETED_TB)
    }
}

#[derive(Debug)]
struct StreamState {
    name: Arc<str>,
    /// Log indexes of this stream's events; index `i` holds revision `i` (a tombstone,
    /// when present, is the last entry).
    entries: Vec<u32>,
    tombstoned: bool,
    /// Latest parsed `$metadata` of this stream (written to `$$name`); boxed because
    /// few streams have any.
    meta: Option<Box<StreamMeta>>,
}

impl StreamState {
    fn last_revision(&self) -> Option<u64> {
        let live = self.entries.len() - usize::from(self.tombstoned);
        (live > 0).then(|| live as u64 - 1)
    }
}

/// The database.
#[derive(Debug)]
pub(crate) struct Store {
    log: Segmented<Slot>,
    streams: Segmented<StreamState>,
    /// Stream name → number in `streams`.
    stream_numbers: HashMap<Arc<str>, u32>,
    /// Event and content types, stored once each.
    names: Vec<Arc<str>>,
    name_numbers: HashMap<Arc<str>, u32>,
    /// First log index of every event id, for idempotency checks with `Any`.
    ids: HashMap<Uuid, u32>,
    payloads: Arena,
    next_position: u64,
    /// Pending transactions by id (the position of their TransactionBegin record).
    transactions: HashMap<u64, Pending>,
    /// The log index of each write's first record, ascending: where the real
    /// log's prepares carry the TransactionBegin flag (one per append, one per
    /// committed transaction).
    write_starts: Vec<u32>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            log: Segmented::default(),
            streams: Segmented::default(),
            stream_numbers: HashMap::new(),
            names: Vec::new(),
            name_numbers: HashMap::new(),
            ids: HashMap::new(),
            payloads: Arena::default(),
            next_position: FIRST_POSITION,
            transactions: HashMap::new(),
            write_starts: Vec::new(),
        }
    }
}

/// `$$name` → `name`.
pub(crate) fn metastream_of(stream: &str) -> Option<&str> {
    stream.strip_prefix("$$")
}

fn now_ticks() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos() / 100).unwrap_or(i64::MAX)
}

/// A table index as stored: the store's tables are capped at 2³² entries.
fn number(index: usize) -> u32 {
    u32::try_from(index).expect("the testkit store holds at most 2^32 records and streams")
}

impl Store {
    /// Number of records in the log.
    pub(crate) fn len(&self) -> usize {
        self.log.len()
    }

    /// Size of a record in the log, from what it holds.
    fn size(&self, slot: &Slot) -> u64 {
        record_size(
            &self.streams[slot.stream as usize].name,
            &self.names[slot.event_type as usize],
            slot.payload.len(),
        )
    }

    /// (commit end, prepare end) of a record: where a backward read of `$all` from
    /// just past it starts.
    fn ends(&self, slot: &Slot) -> (u64, u64) {
        let prepare_end = slot.position + self.size(slot);
        if slot.commit == slot.position {
            (prepare_end, prepare_end)
        } else {
            (slot.commit + COMMIT_RECORD, prepare_end)
        }
    }

    fn record(&self, slot: &Slot) -> Record {
        let data_len = slot.data_len as usize;
        let (commit_end, prepare_end) = self.ends(slot);
        Record {
            stream: Arc::clone(&self.streams[slot.stream as usize].name),
            revision: slot.revision,
            id: slot.id,
            event_type: Arc::clone(&self.names[slot.event_type as usize]),
            content_type: Arc::clone(&self.names[slot.content_type as usize]),
            data: slot.payload.slice(..data_len),
            custom_metadata: slot.payload.slice(data_len..),
            created_ticks: slot.created_ticks,
            commit_position: slot.commit,
            prepare_position: slot.position,
            prepare_end,
            commit_end,
        }
    }

    /// Records `from..from+max` of the log.
    pub(crate) fn log_slice(&self, from: usize, max: usize) -> Vec<Record> {
        self.log
            .iter_from(from)
            .take(max)
            .map(|slot| self.record(slot))
            .collect()
    }

    /// Position just past the last record: the writer checkpoint.
    pub(crate) fn end_position(&self) -> u64 {
        self.next_position
    }

    /// First log index whose (commit, prepare) position is `>= (commit, prepare)`.
    /// The log is in `$all` order: by commit position, then prepare position.
    pub(crate) fn index_at_or_after(&self, commit: u64, prepare: u64) -> usize {
        self.log
            .partition_point(|r| (r.commit, r.position) < (commit, prepare))
    }

    /// First log index whose (commit, prepare) position is `> (commit, prepare)`.
    pub(crate) fn index_after(&self, commit: u64, prepare: u64) -> usize {
        self.log
            .partition_point(|r| (r.commit, r.position) <= (commit, prepare))
    }

    /// First log index whose (commit end, prepare end) is `> (commit, prepare)`:
    /// a backward read of `$all` from (commit, prepare) returns the records before
    /// it (v5 `AllReader.ReadAllEventsBackward` compares record ends).
    pub(crate) fn index_ending_after(&self, commit: u64, prepare: u64) -> usize {
        self.log
            .partition_point(|r| self.ends(r) <= (commit, prepare))
    }

    fn stream(&self, stream: &str) -> Option<&StreamState> {
        let &number = self.stream_numbers.get(stream)?;
        self.streams.get(number as usize)
    }

    /// The number of `stream`, added to the table if new.
    fn stream_number(&mut self, stream: &str) -> u32 {
        if let Some(&number) = self.stream_numbers.get(stream) {
            return number;
        }
        let name: Arc<str> = Arc::from(stream);
        let number = number(self.streams.len());
        self.streams.push(StreamState {
            name: Arc::clone(&name),
            entries: Vec::new(),
            tombstoned: false,
            meta: None,
        });
        self.stream_numbers.insert(name, number);
        number
    }

    fn stream_mut(&mut self, stream: &str) -> &mut StreamState {
        let number = self.stream_number(stream) as usize;
        self.streams
            .get_mut(number)
            .expect("a stream's number indexes the stream table")
    }

    /// The number of the event or content type `name`, added to the table if new.
    fn name_number(&mut self, name: &str) -> u32 {
        if let Some(&number) = self.name_numbers.get(name) {
            return number;
        }
        let shared: Arc<str> = Arc::from(name);
        let number = number(self.names.len());
        self.names.push(Arc::clone(&shared));
        self.name_numbers.insert(shared, number);
        number
    }

    fn tombstoned(&self, stream: &str) -> bool {
        let base = metastream_of(stream).unwrap_or(stream);
        self.stream(base).is_some_and(|s| s.tombstoned)
    }

    fn meta(&self, stream: &str) -> Option<&StreamMeta> {
        self.stream(stream).and_then(|s| s.meta.as_deref())
    }

    fn soft_deleted(&self, stream: &str) -> bool {
        metastream_of(stream).is_none()
            && self.meta(stream).is_some_and(StreamMeta::is_soft_deleted)
    }

    /// Revision of the stream's last event (ignoring deletion and truncation).
    pub(crate) fn last_revision(&self, stream: &str) -> Option<u64> {
        self.stream(stream).and_then(StreamState::last_revision)
    }

    /// The range of revisions a read of `stream` may return, or why it cannot be read.
    pub(crate) fn readable(&self, stream: &str) -> Result<std::ops::Range<u64>, ReadFailure> {
        if self.tombstoned(stream) {
            return Err(ReadFailure::Deleted);
        }
        let Some(state) = self.stream(stream) else {
            return Err(ReadFailure::NotFound);
        };
        let Some(last) = state.last_revision() else {
            return Err(ReadFailure::NotFound);
        };
        let end = last + 1;
        let Some(meta) = state
            .meta
            .as_deref()
            .filter(|_| metastream_of(stream).is_none())
        else {
            return Ok(0..end);
        };
        if meta.is_soft_deleted() {
            return Err(ReadFailure::NotFound);
        }
        let mut start = meta.truncate_before.unwrap_or(0).min(end);
        if let Some(max_count) = meta.max_count {
            start = start.max(end.saturating_sub(max_count));
        }
        if let Some(max_age) = meta.max_age_secs {
            let oldest = now_ticks().saturating_sub(
                i64::try_from(max_age).unwrap_or(i64::MAX / 20_000_000) * 10_000_000,
            );
            while start < end
                && self.log[state.entries[start as usize] as usize].created_ticks < oldest
            {
                start += 1;
            }
        }
        Ok(start..end)
    }

    /// Records of `stream` with revisions in `revisions` (clamped to what exists).
    pub(crate) fn stream_records(
        &self,
        stream: &str,
        revisions: std::ops::Range<u64>,
    ) -> Vec<Record> {
        let Some(state) = self.stream(stream) else {
            return Vec::new();
        };
        let live = state.entries.len() - usize::from(state.tombstoned);
        let start = usize::try_from(revisions.start)
            .unwrap_or(usize::MAX)
            .min(live);
        let end = usize::try_from(revisions.end)
            .unwrap_or(usize::MAX)
            .min(live);
        state.entries[start..end.max(start)]
            .iter()
            .map(|&i| self.record(&self.log[i as usize]))
            .collect()
    }

    /// The event a link (`$>`, data `"N@stream"`) points to, if it can be read.
    pub(crate) fn resolve_link(&self, link: &Record) -> Option<Record> {
        let text = std::str::from_utf8(&link.data).ok()?;
        let (revision, stream) = text.split_once('@')?;
        let revision: u64 = revision.trim().parse().ok()?;
        let range = self.readable(stream).ok()?;
        if !range.contains(&revision) {
            return None;
        }
        self.stream_records(stream, revision..revision + 1).pop()
    }

    fn check_expected(&self, stream: &str, expected: Expected) -> Result<(), WriteOutcome> {
        let current = self.last_revision(stream);
        let soft_deleted = self.soft_deleted(stream);
        let ok = match expected {
            Expected::Any => true,
            // A soft-deleted stream may be recreated as if it did not exist.
            Expected::NoStream => current.is_none() || soft_deleted,
            Expected::StreamExists => current.is_some() && !soft_deleted,
            Expected::Exact(revision) => current == Some(revision),
        };
        if ok {
            Ok(())
        } else {
            Err(WriteOutcome::WrongExpected { current, expected })
        }
    }

    /// If `events` repeat a write already in `stream` (same ids at the same place),
    /// the outcome the original write had.
    fn idempotent_repeat(
        &self,
        stream: &str,
        expected: Expected,
        events: &[Proposed],
    ) -> Option<WriteOutcome> {
        let first = events.first()?;
        let state = self.stream(stream)?;
        let start_revision = match expected {
            Expected::Exact(revision) => revision.checked_add(1)?,
            Expected::NoStream => 0,
            Expected::Any | Expected::StreamExists => {
                let &index = self.ids.get(&first.id)?;
                let slot = &self.log[index as usize];
                if &*self.streams[slot.stream as usize].name != stream
                    || slot.revision == TOMBSTONE_REVISION
                {
                    return None;
                }
                slot.revision
            }
        };
        let start = usize::try_from(start_revision).ok()?;
        let live = state.entries.len() - usize::from(state.tombstoned);
        if start.checked_add(events.len())? > live {
            return None;
        }
        let all_match = events
            .iter()
            .zip(&state.entries[start..])
            .all(|(event, &index)| self.log[index as usize].id == event.id);
        if !all_match {
            return None;
        }
        let last = &self.log[state.entries[start + events.len() - 1] as usize];
        Some(WriteOutcome::Success {
            current: Some(last.revision),
            position: Some(last.commit),
        })
    }

    /// Appends `events` to `stream` if `expected` holds, following the real server's
    /// rules. Returns the outcome and whether anything was written.
    pub(crate) fn append(
        &mut self,
        stream: &str,
        expected: Expected,
        events: Vec<Proposed>,
    ) -> WriteOutcome {
        if self.tombstoned(stream) {
            return WriteOutcome::StreamDeleted;
        }
        if let Some(repeat) = self.idempotent_repeat(stream, expected, &events) {
            return repeat;
        }
        if let Err(outcome) = self.check_expected(stream, expected) {
            return outcome;
        }
        if events.is_empty() {
            return WriteOutcome::Success {
                current: self.last_revision(stream),
                position: None,
            };
        }
        if self.soft_deleted(stream) {
            // The first write after a soft delete revives the stream: the server keeps
            // the metadata but moves `$tb` to the first new revision.
            let recreate_from = self.last_revision(stream).map_or(0, |r| r + 1);
            self.rewrite_truncate_before(stream, recreate_from);
        }
        self.begin_write();
        let mut position = 0;
        for event in events {
            position = self.push(stream, event);
        }
        WriteOutcome::Success {
            current: self.last_revision(stream),
            position: Some(position),
        }
    }

    /// Notes that the next record written begins a write.
    pub(super) fn begin_write(&mut self) {
        self.write_starts.push(number(self.log.len()));
    }

    /// How many records each write to `stream` carried, in the order written.
    /// A record continues the write before it when it is the next record of
    /// the log and no write began at it.
    pub(crate) fn write_sizes(&self, stream: &str) -> Vec<usize> {
        let Some(&n) = self.stream_numbers.get(stream) else {
            return Vec::new();
        };
        let entries = &self.streams[n as usize].entries;
        let mut sizes: Vec<usize> = Vec::new();
        let mut previous: Option<u32> = None;
        for &index in entries {
            let continues = previous.is_some_and(|p| p + 1 == index)
                && self.write_starts.binary_search(&index).is_err();
            match sizes.last_mut() {
                Some(size) if continues => *size += 1,
                _ => sizes.push(1),
            }
            previous = Some(index);
        }
        sizes
    }

    /// Soft delete: checks `expected`, then writes `{"$tb": i64::MAX}` to `$$stream`.
    pub(crate) fn soft_delete(&mut self, stream: &str, expected: Expected) -> WriteOutcome {
        if self.tombstoned(stream) {
            return WriteOutcome::StreamDeleted;
        }
        if let Err(outcome) = self.check_expected(stream, expected) {
            return outcome;
        }
        let body = serde_json::json!({ "$tb": SOFT_DELETED_TB });
        self.begin_write();
        let position = self.push(&format!("$${stream}"), metadata_event(&body));
        WriteOutcome::Success {
            current: self.last_revision(stream),
            position: Some(position),
        }
    }

    /// Hard delete: checks `expected`, then writes a `$streamDeleted` record.
    pub(crate) fn tombstone(&mut self, stream: &str, expected: Expected) -> WriteOutcome {
        if self.tombstoned(stream) {
            return WriteOutcome::StreamDeleted;
        }
        if let Err(outcome) = self.check_expected(stream, expected) {
            return outcome;
        }
        let current = self.last_revision(stream);
        self.begin_write();
        let position = self.push(
            stream,
            Proposed {
                id: Uuid::new_v4(),
                event_type: "$streamDeleted".to_owned(),
                content_type: BINARY.to_owned(),
                data: Bytes::new(),
                custom_metadata: Bytes::new(),
            },
        );
        WriteOutcome::Success {
            current,
            position: Some(position),
        }
    }

    fn rewrite_truncate_before(&mut self, stream: &str, truncate_before: u64) {
        let mut json = self
            .meta(stream)
            .map(|m| m.json.clone())
            .unwrap_or_default();
        json.insert("$tb".to_owned(), truncate_before.into());
        self.push(
            &format!("$${stream}"),
            metadata_event(&serde_json::Value::Object(json)),
        );
    }

    /// Writes one record at the end of the log and maintains the indexes.
    fn push(&mut self, stream: &str, event: Proposed) -> u64 {
        let position = self.reserve(record_size(
            stream,
            &event.event_type,
            event.data.len() + event.custom_metadata.len(),
        ));
        if let Some((base, parsed)) = self.push_at(stream, event, position, position) {
            self.apply_metadata(&base, parsed);
        }
        position
    }

    /// Takes `size` bytes of the log: the position of a record written there.
    fn reserve(&mut self, size: u64) -> u64 {
        let position = self.next_position;
        self.next_position += size;
        position
    }

    /// Writes one record, whose place in the log is already reserved at `position`
    /// (its prepare position) and which is committed at `commit`, at the end of the
    /// log, and maintains the indexes. A `$metadata` record returns the metadata
    /// for the caller to apply (after the rest of its transaction: applying it may
    /// write a record, which must not come between a transaction's records).
    fn push_at(
        &mut self,
        stream: &str,
        event: Proposed,
        position: u64,
        commit: u64,
    ) -> Option<(String, Option<StreamMeta>)> {
        let tombstone = event.event_type == "$streamDeleted" && metastream_of(stream).is_none();
        let index = number(self.log.len());
        let stream_number = self.stream_number(stream);
        let event_type = self.name_number(&event.event_type);
        let content_type = self.name_number(&event.content_type);
        let state = self
            .streams
            .get_mut(stream_number as usize)
            .expect("a stream's number indexes the stream table");
        let revision = if tombstone {
            TOMBSTONE_REVISION
        } else {
            state.entries.len() as u64
        };
        state.entries.push(index);
        state.tombstoned |= tombstone;
        self.ids.entry(event.id).or_insert(index);
        let metadata_of = (event.event_type == "$metadata")
            .then(|| metastream_of(stream))
            .flatten()
            .map(str::to_owned);
        let parsed = metadata_of
            .as_ref()
            .and_then(|_| StreamMeta::parse(&event.data));
        self.log.push(Slot {
            id: event.id,
            payload: self
                .payloads
                .store([&event.data[..], &event.custom_metadata[..]]),
            revision,
            position,
            commit,
            created_ticks: now_ticks(),
            stream: stream_number,
            data_len: number(event.data.len()),
            event_type,
            content_type,
        });
        metadata_of.map(|base| (base, parsed))
    }

    fn apply_metadata(&mut self, stream: &str, parsed: Option<StreamMeta>) {
        let was_soft_deleted = self.soft_deleted(stream);
        let state = self.stream_mut(stream);
        let recreate_from = state.last_revision().map_or(0, |r| r + 1);
        // Metadata that is not a JSON object counts as no metadata (as on the server).
        let Some(meta) = parsed else {
            state.meta = None;
            return;
        };
        let needs_tb = was_soft_deleted && meta.truncate_before.is_none();
        state.meta = Some(Box::new(meta));
        if needs_tb {
            // New metadata on a soft-deleted stream recreates it without resurrecting
            // the deleted events: the server adds `$tb` in a further metadata event.
            self.rewrite_truncate_before(stream, recreate_from);
        }
    }
}

/// Size of a prepare record in the log: fixed overhead plus what it holds.
fn record_size(stream: &str, event_type: &str, payload: usize) -> u64 {
    RECORD_OVERHEAD + (stream.len() + event_type.len() + payload) as u64
}

fn metadata_event(body: &serde_json::Value) -> Proposed {
    Proposed {
        id: Uuid::new_v4(),
        event_type: "$metadata".to_owned(),
        content_type: JSON.to_owned(),
        data: Bytes::from(body.to_string()),
        custom_metadata: Bytes::new(),
    }
}

#[cfg(test)]
mod tests;
