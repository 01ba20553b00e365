//! In-memory [`Reader`], [`Sink`] and [`CheckpointStore`]: for tests, examples
//! and trying the pipeline without servers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use futures::stream;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{CheckpointError, ReaderError, SinkError};
use crate::model::{Checkpoint, Event, Position, StartFrom};
use crate::traits::{CheckpointStore, EventStream, HeadProbe, Reader, Sink, WriteAck};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave these simple structures
    // half-updated in a way that matters to tests; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An in-memory `$all`: a log of events that readers follow live.
#[derive(Clone)]
pub struct MemorySource {
    events: Arc<Mutex<Vec<Event>>>,
    revisions: Arc<Mutex<HashMap<String, u64>>>,
    len: Arc<watch::Sender<usize>>,
}

impl Default for MemorySource {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        MemorySource {
            events: Arc::default(),
            revisions: Arc::default(),
            len: Arc::new(watch::channel(0).0),
        }
    }

    /// Appends a record. Its position must be after the last one's.
    ///
    /// # Panics
    /// When the position does not increase: a source log never goes backwards.
    pub fn push(&self, event: Event) {
        let mut events = lock(&self.events);
        if let Some(last) = events.last() {
            assert!(
                event.position > last.position,
                "positions must increase: {} after {}",
                event.position,
                last.position
            );
        }
        let mut revisions = lock(&self.revisions);
        let next = revisions.entry(event.stream.clone()).or_default();
        *next = (*next).max(event.revision + 1);
        events.push(event);
        self.len.send_replace(events.len());
    }

    /// Appends a JSON user event to `stream`, at the next revision and a
    /// position a gap after the last one. Returns the event.
    pub fn append_user_event(&self, stream: &str, data: Vec<u8>) -> Event {
        let revision = lock(&self.revisions).get(stream).copied().unwrap_or(0);
        let position = lock(&self.events)
            .last()
            .map_or(128, |e| e.position.commit + 64 + e.payload_len() as u64);
        let event = Event::new(stream, "Event", data)
            .with_revision(revision)
            .with_position(Position::at(position));
        self.push(event.clone());
        event
    }

    /// Every record, in order.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// The position of the last record, `None` when empty.
    pub fn head(&self) -> Option<Position> {
        lock(&self.events).last().map(|e| e.position)
    }
}

#[async_trait]
impl HeadProbe for MemorySource {
    async fn head(&self) -> Result<Option<Position>, ReaderError> {
        Ok(MemorySource::head(self))
    }
}

/// Reads a [`MemorySource`]: catch-up, then live when `continuous`.
pub struct MemoryReader {
    source: MemorySource,
    continuous: bool,
}

impl MemoryReader {
    /// A reader of `source`; with `continuous` off the stream ends once caught up.
    pub fn new(source: MemorySource, continuous: bool) -> Self {
        MemoryReader { source, continuous }
    }
}

#[async_trait]
impl Reader for MemoryReader {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        let start = {
            let events = lock(&self.source.events);
            match from {
                StartFrom::Beginning => 0,
                StartFrom::After(p) => events.partition_point(|e| e.position <= p),
                StartFrom::At(p) => events.partition_point(|e| e.position < p),
            }
        };
        let state = (
            self.source.clone(),
            self.source.len.subscribe(),
            start,
            self.continuous,
        );
        Ok(Box::pin(stream::unfold(
            state,
            |(source, mut len, next, continuous)| async move {
                loop {
                    let event = lock(&source.events).get(next).cloned();
                    if let Some(event) = event {
                        return Some((Ok(event), (source, len, next + 1, continuous)));
                    }
                    if !continuous || len.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )))
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        Some(Arc::new(self.source.clone()))
    }
}

#[derive(Default)]
struct SinkState {
    streams: HashMap<String, Vec<Event>>,
    ids: HashMap<String, HashSet<Uuid>>,
    log: Vec<Event>,
    next_position: u64,
}

/// A target held in memory. Every change of a target stream (appends, metadata,
/// deletes) is kept in that stream's list, in write order.
///
/// By default it is idempotent like an EventStoreDB target written with event
/// ids: a change whose id the stream already holds is acknowledged without
/// being applied again. [`MemorySink::naive`] turns that off, to model a sink
/// that duplicates replays.
#[derive(Clone)]
pub struct MemorySink {
    state: Arc<Mutex<SinkState>>,
    partitions: usize,
    idempotent: bool,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySink {
    /// An idempotent sink with one partition.
    pub fn new() -> Self {
        MemorySink {
            state: Arc::default(),
            partitions: 1,
            idempotent: true,
        }
    }

    /// Allows `partitions` writes in flight at once.
    pub fn with_partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Applies replays again instead of recognising them.
    pub fn naive(mut self) -> Self {
        self.idempotent = false;
        self
    }

    /// The changes applied to `stream`, in order.
    pub fn stream(&self, stream: &str) -> Vec<Event> {
        lock(&self.state)
            .streams
            .get(stream)
            .cloned()
            .unwrap_or_default()
    }

    /// Every target stream with its changes.
    pub fn streams(&self) -> HashMap<String, Vec<Event>> {
        lock(&self.state).streams.clone()
    }

    /// Every change applied, in the order applied (replays included for a naive
    /// sink).
    pub fn log(&self) -> Vec<Event> {
        lock(&self.state).log.clone()
    }

    /// Applies one change; returns the target position it got, if applied.
    pub fn apply(&self, event: &Event) -> Option<Position> {
        let mut state = lock(&self.state);
        let stream = event.target_stream().to_owned();
        let fresh = state
            .ids
            .entry(stream.clone())
            .or_default()
            .insert(event.id);
        if !fresh && self.idempotent {
            return None;
        }
        state.next_position += 100 + event.payload_len() as u64;
        let position = Position::at(state.next_position);
        state.streams.entry(stream).or_default().push(event.clone());
        state.log.push(event.clone());
        Some(position)
    }
}

#[async_trait]
impl Sink for MemorySink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        let mut target_position = None;
        for event in batch {
            target_position = target_position.max(self.apply(event));
        }
        Ok(WriteAck { target_position })
    }

    fn max_in_flight(&self) -> usize {
        self.partitions
    }
}

#[derive(Default)]
struct StoreState {
    current: Option<Checkpoint>,
    history: Vec<Checkpoint>,
    fail_next: usize,
}

/// A checkpoint store in memory that remembers every checkpoint stored.
#[derive(Clone, Default)]
pub struct MemoryCheckpointStore {
    state: Arc<Mutex<StoreState>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The stored checkpoint.
    pub fn current(&self) -> Option<Checkpoint> {
        lock(&self.state).current.clone()
    }

    /// Every checkpoint stored, oldest first (deletes are not recorded).
    pub fn history(&self) -> Vec<Checkpoint> {
        lock(&self.state).history.clone()
    }

    /// Makes the next `n` calls to `store` fail with a transient error.
    pub fn fail_next_stores(&self, n: usize) {
        lock(&self.state).fail_next = n;
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(self.current())
    }

    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let mut state = lock(&self.state);
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Err(CheckpointError::transient("injected store failure"));
        }
        state.current = Some(checkpoint.clone());
        state.history.push(checkpoint.clone());
        Ok(())
    }

    async fn delete(&self) -> Result<(), CheckpointError> {
        lock(&self.state).current = None;
        Ok(())
    }
}
