//! Test parts: a sink with scripted faults and an event builder.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use replicator_core::memory::{MemoryCheckpointStore, MemorySink, MemorySource};
use replicator_core::{
    ChangeKind, Event, Position, Progress, Sink, SinkError, SkipReason, WriteAck,
};
use tokio::sync::{watch, Notify};
use tokio::time::timeout;

/// Builds a record of `stream` at `position`.
pub fn event(stream: &str, revision: u64, position: u64, kind: ChangeKind) -> Event {
    let event_type = match kind {
        ChangeKind::StreamMetadata => "$metadata",
        ChangeKind::Skip(SkipReason::SystemEvent) => "$statsCollected",
        _ => "OrderPlaced",
    };
    Event::new(stream, event_type, format!("{{\"n\":{position}}}"))
        .with_revision(revision)
        .with_position(Position::at(position))
        .with_kind(kind)
}

/// A source of `n` user events spread over `streams` streams, 37 log bytes
/// apart.
pub fn source_with(n: u64, streams: u64) -> MemorySource {
    let source = MemorySource::new();
    for i in 0..n {
        source.push(event(
            &format!("s-{}", i % streams),
            i / streams,
            100 + i * 37,
            ChangeKind::Append,
        ));
    }
    source
}

/// What a scripted write does before and instead of succeeding.
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// Wait before writing anything.
    pub delay_ms: u64,
    /// Apply only this many events of the batch, then fail transiently.
    pub fail_after: Option<usize>,
}

/// Wraps a [`MemorySink`]: follows a script of faults, can signal a "crash"
/// after a number of writes, and checks that every replayed event lies after
/// the checkpoint stored at the time of the replay.
#[derive(Clone)]
pub struct ScriptedSink {
    pub inner: MemorySink,
    script: Arc<Vec<Fault>>,
    calls: Arc<AtomicUsize>,
    crash_at: Arc<AtomicUsize>,
    pub crash: Arc<Notify>,
    store: MemoryCheckpointStore,
    pub replays_outside_window: Arc<Mutex<Vec<String>>>,
    pub replays: Arc<AtomicUsize>,
    /// The positions of each write's batch, in call order.
    pub batches: Arc<Mutex<Vec<Vec<Position>>>>,
    /// [`Sink::pipelined_writes`]; with more than 1, writes apply in the
    /// order they were started, as an ordered target does.
    pipelined: usize,
    ordered: Arc<OrderedWrites>,
}

/// How a pipelining sink keeps order, as an EventStoreDB batch-append call
/// does: writes take turns in the order they start (a fair lock), and once a
/// write fails, the writes started with it (one "call") fail too, writing
/// nothing; writes started after the failure belong to a new call.
#[derive(Default)]
struct OrderedWrites {
    turn: tokio::sync::Mutex<()>,
    call: AtomicUsize,
    failed_call: AtomicUsize,
}

impl ScriptedSink {
    /// Lets `writes` writes be in flight at once, in order.
    pub fn with_pipelined(mut self, writes: usize) -> Self {
        self.pipelined = writes.max(1);
        self
    }

    pub fn new(inner: MemorySink, script: Vec<Fault>, store: MemoryCheckpointStore) -> Self {
        ScriptedSink {
            inner,
            script: Arc::new(script),
            calls: Arc::default(),
            crash_at: Arc::new(AtomicUsize::new(usize::MAX)),
            crash: Arc::new(Notify::new()),
            store,
            replays_outside_window: Arc::default(),
            replays: Arc::default(),
            batches: Arc::default(),
            pipelined: 1,
            ordered: Arc::default(),
        }
    }

    /// Signals [`ScriptedSink::crash`] once `writes` more events are applied.
    pub fn crash_after(&self, writes: usize) {
        let applied = self.inner.log().len();
        self.crash_at
            .store(applied.saturating_add(writes), Ordering::SeqCst);
    }

    fn apply(&self, event: &Event) -> Option<Position> {
        let seen = self.inner.log().iter().any(|e| e.id == event.id);
        if seen {
            self.replays.fetch_add(1, Ordering::SeqCst);
            let stored = self.store.current().map(|c| c.source);
            if stored.is_some_and(|s| event.position <= s) {
                self.replays_outside_window.lock().unwrap().push(format!(
                    "{} at {} replayed behind the stored checkpoint {:?}",
                    event.stream, event.position, stored
                ));
            }
        }
        let position = self.inner.apply(event);
        if self.inner.log().len() >= self.crash_at.load(Ordering::SeqCst) {
            self.crash_at.store(usize::MAX, Ordering::SeqCst);
            self.crash.notify_one();
        }
        position
    }
}

#[async_trait]
impl Sink for ScriptedSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        if self.pipelined > 1 {
            // The first poll takes the turn: batches apply in start order.
            let session = self.ordered.call.load(Ordering::SeqCst) + 1;
            let _turn = self.ordered.turn.lock().await;
            if self.ordered.failed_call.load(Ordering::SeqCst) == session {
                return Err(SinkError::transient("the call this write was on failed"));
            }
            let outcome = self.scripted_write(batch).await;
            if outcome.is_err() {
                self.ordered.failed_call.store(session, Ordering::SeqCst);
                self.ordered.call.fetch_add(1, Ordering::SeqCst);
            }
            return outcome;
        }
        self.scripted_write(batch).await
    }

    fn max_in_flight(&self) -> usize {
        self.inner.max_in_flight()
    }

    fn pipelined_writes(&self) -> usize {
        self.pipelined
    }
}

impl ScriptedSink {
    async fn scripted_write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.batches
            .lock()
            .unwrap()
            .push(batch.iter().map(|e| e.position).collect());
        let fault = if self.script.is_empty() {
            Fault {
                delay_ms: 0,
                fail_after: None,
            }
        } else {
            self.script[call % self.script.len()]
        };
        if fault.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(fault.delay_ms)).await;
        }
        let mut target_position = None;
        for (i, event) in batch.iter().enumerate() {
            if fault.fail_after == Some(i) {
                return Err(SinkError::transient(format!(
                    "injected failure at {}",
                    event.position
                )));
            }
            target_position = target_position.max(self.apply(event));
            // Let other partitions and a crash interleave inside a batch.
            tokio::task::yield_now().await;
        }
        if fault.fail_after.is_some_and(|n| n >= batch.len()) {
            return Err(SinkError::transient("injected failure after the batch"));
        }
        Ok(WriteAck { target_position })
    }
}

/// Generous bound on every wait: a condition not met by then fails the test.
pub const WAIT: Duration = Duration::from_secs(20);

/// Waits until `condition` holds for the progress; panics naming `what`
/// after [`WAIT`] or when the pipeline ends first.
pub async fn wait_for(
    progress: &mut watch::Receiver<Progress>,
    what: &str,
    condition: impl FnMut(&Progress) -> bool,
) -> Progress {
    let outcome = timeout(WAIT, progress.wait_for(condition))
        .await
        .map(|r| r.map(|p| p.clone()));
    match outcome {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => panic!("the pipeline ended before: {what}"),
        Err(_) => panic!(
            "not within {WAIT:?}: {what}; last progress: {:?}",
            *progress.borrow()
        ),
    }
}

/// Hands on `source`'s records in chunks: the first at once, each next one
/// when the test sends a release. Remembers when it handed on its last record.
pub struct ChunkedReader {
    pub source: MemorySource,
    pub chunks: Vec<usize>,
    pub release: Option<tokio::sync::mpsc::UnboundedReceiver<()>>,
    pub delivered_at: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

#[async_trait]
impl replicator_core::Reader for ChunkedReader {
    async fn read(
        &mut self,
        _from: replicator_core::StartFrom,
    ) -> Result<replicator_core::EventStream, replicator_core::ReaderError> {
        let mut events = self.source.events().into_iter();
        let chunks: Vec<Vec<Event>> = self
            .chunks
            .iter()
            .map(|&n| events.by_ref().take(n).collect())
            .collect();
        let release = self.release.take().expect("read once");
        let delivered_at = self.delivered_at.clone();
        let stream = futures::stream::unfold(
            (chunks.into_iter(), release, true),
            |(mut chunks, mut release, first)| async move {
                let chunk = chunks.next()?;
                if !first {
                    release.recv().await?;
                }
                Some((chunk, (chunks, release, false)))
            },
        )
        .flat_map(futures::stream::iter)
        .map(move |event| {
            *delivered_at.lock().unwrap() = Some(tokio::time::Instant::now());
            Ok(event)
        })
        // Nothing after the last chunk: the stream stays open, as a live
        // subscription's does.
        .chain(futures::stream::pending());
        Ok(stream.boxed())
    }

    fn head_probe(&self) -> Option<Arc<dyn replicator_core::HeadProbe>> {
        Some(Arc::new(self.source.clone()))
    }
}
