//! The pipeline: reader → bounded buffer → partitioned, batching writers → sink,
//! with acknowledgements folded back into source order for the checkpointer.
//!
//! ```text
//!  Reader ──► buffer (bounded) ──► dispatcher ──► partition 0 queue ──► writer 0 ──► Sink::write
//!                                    │    ▲   ──► partition 1 queue ──► writer 1 ──► Sink::write
//!                                    │    └──────── acknowledgements ◄──────┘
//!                                    ▼
//!                         in-order tracker ──► CheckpointStore::store
//! ```
//!
//! Every event gets a sequence number as it is read. Writers acknowledge whole
//! batches; the tracker marks their sequence numbers done and moves the
//! checkpoint frontier only over a contiguous run of done events, so a stored
//! checkpoint never passes an event that is still in flight, whatever order the
//! partitions finish in.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::{CheckpointError, PipelineError, ReaderError, SinkError};
use crate::model::{Checkpoint, Event, Position, StartFrom};
use crate::traits::{CheckpointStore, Reader, Sink};

/// Tunables of a [`Pipeline`]. The defaults suit a replication between two
/// EventStoreDB clusters.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// Store a checkpoint after this many processed (written or skipped) events.
    /// 1 stores after every acknowledgement. Must be at least 1.
    pub checkpoint_after: u64,
    /// Unstored progress is stored at the latest this long after it was made,
    /// so a quiet or trickling source does not leave the checkpoint behind.
    pub checkpoint_interval: Duration,
    /// How many events may be read ahead of the writers (the bounded buffer
    /// between reader and sink). The reader waits when it is full.
    pub buffer_size: usize,
    /// Most events in one [`Sink::write`] call.
    pub max_batch_events: usize,
    /// Most payload bytes (data plus metadata) in one [`Sink::write`] call; a
    /// single larger event still goes alone.
    pub max_batch_bytes: usize,
    /// First wait before retrying a transient sink or checkpoint error; doubles
    /// on each attempt up to `retry_max`.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// On cancellation, how long in-flight writes may take to finish before
    /// they are abandoned (and replayed next run).
    pub shutdown_deadline: Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            checkpoint_after: 1000,
            checkpoint_interval: Duration::from_secs(1),
            buffer_size: 1000,
            max_batch_events: 500,
            max_batch_bytes: 4 * 1024 * 1024,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            shutdown_deadline: Duration::from_secs(30),
        }
    }
}

/// What the pipeline is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PipelineState {
    /// Loading the checkpoint and opening the reader.
    #[default]
    Starting,
    /// Replicating.
    Running,
    /// A write keeps failing with transient errors and is being retried; nothing
    /// past it is checkpointed until it succeeds.
    Retrying {
        /// Consecutive failed attempts of the oldest retrying write.
        attempts: u32,
        /// The last error.
        error: String,
    },
    /// Finishing in-flight writes before stopping.
    Draining,
    /// Stopped after a clean drain.
    Stopped,
    /// Stopped on an error.
    Failed(String),
}

/// A snapshot of the pipeline's progress, published on every change.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// What the pipeline is doing.
    pub state: PipelineState,
    /// Records read from the source in this run.
    pub read: u64,
    /// Events acknowledged by the sink in this run.
    pub written: u64,
    /// Records skipped (they advance the checkpoint without a write).
    pub skipped: u64,
    /// Position of the last record read.
    pub last_read: Option<Position>,
    /// The checkpoint frontier: every record up to here is processed.
    pub processed: Option<Position>,
    /// Highest target position acknowledged by the sink.
    pub target: Option<Position>,
    /// When the last processed record was created on the source (for lag).
    pub processed_created: Option<SystemTime>,
    /// The last stored checkpoint.
    pub stored: Option<Checkpoint>,
    /// Checkpoints stored in this run.
    pub checkpoints_stored: u64,
    /// Records read but not yet processed.
    pub in_flight: usize,
    /// Transient sink errors retried in this run.
    pub sink_retries: u64,
}

impl Progress {
    /// How far the processed frontier trails the source's clock: the age of the
    /// last processed record. Only meaningful while the source is being written.
    pub fn lag(&self) -> Option<Duration> {
        self.processed_created
            .and_then(|c| SystemTime::now().duration_since(c).ok())
    }

    /// `false` while a write is being retried or after a failure: what a health
    /// check should report, so a stalled replication is never "OK".
    pub fn is_healthy(&self) -> bool {
        matches!(
            self.state,
            PipelineState::Starting
                | PipelineState::Running
                | PipelineState::Draining
                | PipelineState::Stopped
        )
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Records read.
    pub read: u64,
    /// Events written.
    pub written: u64,
    /// Records skipped.
    pub skipped: u64,
    /// The checkpoint stored last, if any was stored in this run.
    pub checkpoint: Option<Checkpoint>,
    /// Whether the reader ended by itself (caught up with `run_continuously`
    /// off) rather than by cancellation.
    pub completed: bool,
}

/// Builds a [`Pipeline`].
pub struct PipelineBuilder {
    reader: Box<dyn Reader>,
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
}

impl PipelineBuilder {
    /// Replaces every tunable at once.
    pub fn config(mut self, config: PipelineConfig) -> Self {
        self.config = config;
        self
    }

    /// See [`PipelineConfig::checkpoint_after`].
    pub fn checkpoint_after(mut self, events: u64) -> Self {
        self.config.checkpoint_after = events;
        self
    }

    /// See [`PipelineConfig::buffer_size`].
    pub fn buffer_size(mut self, events: usize) -> Self {
        self.config.buffer_size = events;
        self
    }

    /// Builds the pipeline. Zero sizes are raised to 1.
    pub fn build(self) -> Pipeline {
        let mut config = self.config;
        config.checkpoint_after = config.checkpoint_after.max(1);
        config.buffer_size = config.buffer_size.max(1);
        config.max_batch_events = config.max_batch_events.max(1);
        config.max_batch_bytes = config.max_batch_bytes.max(1);
        let (progress, _) = watch::channel(Progress::default());
        Pipeline {
            reader: self.reader,
            sink: self.sink,
            store: self.store,
            config,
            progress,
        }
    }
}

/// Replicates from a [`Reader`] to a [`Sink`], checkpointing into a
/// [`CheckpointStore`].
///
/// ```
/// use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
/// use replicator_core::Pipeline;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio_test::block_on(async {
/// let source = MemorySource::new();
/// source.append_user_event("orders-1", b"{}".to_vec());
/// let sink = MemorySink::new();
/// let store = MemoryCheckpointStore::new();
/// let pipeline = Pipeline::builder(MemoryReader::new(source.clone(), false), sink.clone(), store.clone())
///     .checkpoint_after(100)
///     .build();
/// let summary = pipeline.run(CancellationToken::new()).await.unwrap();
/// assert_eq!(summary.written, 1);
/// assert_eq!(sink.stream("orders-1").len(), 1);
/// # });
/// ```
pub struct Pipeline {
    reader: Box<dyn Reader>,
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    progress: watch::Sender<Progress>,
}

impl Pipeline {
    /// Starts building a pipeline from its three parts.
    pub fn builder(
        reader: impl Reader + 'static,
        sink: impl Sink,
        store: impl CheckpointStore + 'static,
    ) -> PipelineBuilder {
        PipelineBuilder {
            reader: Box::new(reader),
            sink: Arc::new(sink),
            store: Arc::new(store),
            config: PipelineConfig::default(),
        }
    }

    /// A live view of the progress, updated as the pipeline runs.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Runs until the reader ends, `cancel` fires, or a permanent error.
    ///
    /// Resumes after the stored checkpoint (or at a stored seed), or from the
    /// beginning when none is stored. On cancellation it stops reading, lets
    /// in-flight writes finish within [`PipelineConfig::shutdown_deadline`] and
    /// stores a final checkpoint. Dropping the future instead stops at once
    /// without a final checkpoint (like a crash: the next run replays from the
    /// last stored checkpoint).
    ///
    /// # Errors
    /// [`PipelineError`]: the checkpoint cannot be loaded or stored, the reader
    /// or sink failed permanently, or the shutdown deadline passed. Progress up to
    /// the last acknowledged event is stored before a reader or sink error is
    /// returned.
    pub async fn run(self, cancel: CancellationToken) -> Result<RunSummary, PipelineError> {
        let Pipeline {
            mut reader,
            sink,
            store,
            config,
            progress,
        } = self;
        let loaded = store.load().await.map_err(PipelineError::LoadCheckpoint)?;
        let from = loaded
            .as_ref()
            .map_or(StartFrom::Beginning, Checkpoint::start_from);
        info!(%from, "Starting replication");
        let stream = match reader.read(from).await {
            Ok(stream) => stream,
            Err(source) => {
                progress.send_modify(|p| p.state = PipelineState::Failed(source.to_string()));
                return Err(PipelineError::Reader {
                    last_processed: loaded.map(|c| c.source),
                    source,
                });
            }
        };
        drop(reader);
        let mut run = Run::new(sink, store, config, progress, loaded, from);
        let result = run.drive(stream, cancel).await;
        run.progress.send_modify(|p| {
            p.state = match &result {
                Ok(_) => PipelineState::Stopped,
                Err(e) => PipelineState::Failed(e.to_string()),
            }
        });
        result
    }
}

/// A batch acknowledgement or failure, from a writer back to the dispatcher.
enum WriterMsg {
    Written {
        seqs: Vec<u64>,
        target: Option<Position>,
        partition: usize,
    },
    Retrying {
        partition: usize,
        attempts: u32,
        error: String,
    },
    Failed(SinkError),
}

struct Slot {
    position: Position,
    created: SystemTime,
    done: bool,
}

/// Sequence numbers of read events, folded back into source order.
struct Tracker {
    base: u64,
    slots: VecDeque<Slot>,
}

impl Tracker {
    fn push(&mut self, position: Position, created: SystemTime) -> u64 {
        self.slots.push_back(Slot {
            position,
            created,
            done: false,
        });
        self.base + self.slots.len() as u64 - 1
    }

    fn complete(&mut self, seq: u64) {
        // Only sequence numbers handed out and not yet popped can come back.
        let slot = &mut self.slots[(seq - self.base) as usize];
        debug_assert!(!slot.done, "sequence {seq} acknowledged twice");
        slot.done = true;
    }

    /// Pops the contiguous run of done slots; returns how many and the last one.
    fn advance(&mut self) -> (u64, Option<Slot>) {
        let mut count = 0;
        let mut last = None;
        while self.slots.front().is_some_and(|s| s.done) {
            last = self.slots.pop_front();
            self.base += 1;
            count += 1;
        }
        (count, last)
    }

    /// Forgets the newest slot (an event read but never dispatched).
    fn forget_last(&mut self) {
        self.slots.pop_back();
    }
}

/// The state of one [`Pipeline::run`].
struct Run {
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    progress: watch::Sender<Progress>,
    tracker: Tracker,
    /// Frontier of processed records and the target position that goes with it.
    frontier: Option<Position>,
    target: Option<Position>,
    stored: Option<Position>,
    since_store: u64,
    unstored_since: Option<Instant>,
    last_read: Option<Position>,
    /// The first position the reader may hand on, and whether it is inclusive.
    lower_bound: Option<(Position, bool)>,
    retrying: Vec<Option<(u32, String)>>,
    stats: Progress,
}

impl Run {
    fn new(
        sink: Arc<dyn Sink>,
        store: Arc<dyn CheckpointStore>,
        config: PipelineConfig,
        progress: watch::Sender<Progress>,
        loaded: Option<Checkpoint>,
        from: StartFrom,
    ) -> Self {
        let lower_bound = match from {
            StartFrom::Beginning => None,
            StartFrom::After(p) => Some((p, false)),
            StartFrom::At(p) => Some((p, true)),
        };
        let stored = loaded.as_ref().filter(|c| !c.seed).map(|c| c.source);
        let partitions = sink.max_in_flight().max(1);
        Run {
            sink,
            store,
            config,
            progress,
            tracker: Tracker {
                base: 0,
                slots: VecDeque::new(),
            },
            frontier: stored,
            target: loaded.as_ref().and_then(|c| c.target),
            stored,
            since_store: 0,
            unstored_since: None,
            last_read: None,
            lower_bound,
            retrying: vec![None; partitions],
            stats: Progress {
                state: PipelineState::Running,
                stored: loaded,
                ..Progress::default()
            },
        }
    }

    async fn drive(
        &mut self,
        stream: crate::traits::EventStream,
        cancel: CancellationToken,
    ) -> Result<RunSummary, PipelineError> {
        let config = self.config.clone();
        let partitions = self.retrying.len();
        // Dropping `tasks` (a crash, or the caller dropping `run`) aborts them all.
        let mut tasks = JoinSet::new();
        let stop_reading = cancel.child_token();
        let (read_tx, mut read_rx) = mpsc::channel(config.buffer_size);
        tasks.spawn(read_loop(stream, read_tx, stop_reading.clone()));

        let (ack_tx, mut ack_rx) = mpsc::unbounded_channel();
        let stop_writing = CancellationToken::new();
        let mut queues = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            let (tx, rx) = mpsc::channel(config.max_batch_events);
            queues.push(tx);
            tasks.spawn(write_loop(
                partition,
                rx,
                self.sink.clone(),
                ack_tx.clone(),
                config.clone(),
                stop_writing.clone(),
            ));
        }
        // Only writers hold senders now: `ack_rx` ends when the last writer exits.
        drop(ack_tx);

        let mut pending: Option<(usize, u64, Event)> = None;
        let mut completed = false;
        let mut failure: Option<PipelineError> = None;
        let mut deadline: Option<Instant> = None;
        self.publish();

        loop {
            let closing = deadline.is_some() || completed;
            if closing && !queues.is_empty() {
                // Stop dispatching: drop what was read but not handed to a writer
                // (it is re-read next run) and let the writers empty their queues.
                if let Some((_, _, event)) = pending.take() {
                    debug!(position = %event.position, "Dropping undispatched event");
                    self.tracker.forget_last();
                }
                queues.clear();
                stop_reading.cancel();
            }
            let flush_at = self.unstored_since.map(|t| t + config.checkpoint_interval);

            tokio::select! {
                biased;
                msg = ack_rx.recv() => match msg {
                    Some(WriterMsg::Written { seqs, target, partition }) => {
                        self.retrying[partition] = None;
                        self.on_written(&seqs, target);
                        self.maybe_store(false).await?;
                    }
                    Some(WriterMsg::Retrying { partition, attempts, error }) => {
                        self.stats.sink_retries += 1;
                        self.retrying[partition] = Some((attempts, error));
                    }
                    Some(WriterMsg::Failed(error)) => {
                        warn!(%error, "Sink failed permanently; draining");
                        failure.get_or_insert(PipelineError::Sink { last_processed: None, source: error });
                        stop_writing.cancel();
                        deadline.get_or_insert_with(|| Instant::now() + config.shutdown_deadline);
                    }
                    // Every writer has exited: everything dispatched is settled.
                    None => break,
                },
                _ = cancel.cancelled(), if deadline.is_none() => {
                    info!("Cancellation requested; draining in-flight writes");
                    deadline = Some(Instant::now() + config.shutdown_deadline);
                    self.stats.state = PipelineState::Draining;
                }
                _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    stop_writing.cancel();
                    tasks.abort_all();
                    let in_flight = self.tracker.slots.len();
                    warn!(in_flight, "Shutdown deadline passed; abandoning in-flight writes");
                    self.final_store(deadline).await?;
                    return Err(failure.unwrap_or(PipelineError::ShutdownTimeout { in_flight }));
                }
                permit = async { queues[pending.as_ref().map_or(0, |p| p.0)].reserve().await }, if pending.is_some() && !closing => {
                    // A writer only drops its queue after a permanent failure,
                    // which is handled through `ack_rx`.
                    if let Ok(permit) = permit {
                        let (_, seq, event) = pending.take().expect("guarded by pending.is_some()");
                        permit.send((seq, event));
                    }
                }
                item = read_rx.recv(), if pending.is_none() && !closing => match item {
                    None => completed = true,
                    Some(Err(error)) => {
                        warn!(%error, "Reader failed; draining");
                        failure = Some(PipelineError::Reader { last_processed: None, source: error });
                        deadline = Some(Instant::now() + config.shutdown_deadline);
                    }
                    Some(Ok(event)) => {
                        self.check_order(&event)?;
                        let seq = self.tracker.push(event.position, event.created);
                        self.stats.read += 1;
                        if event.kind.is_write() {
                            pending = Some((partition_of(event.target_stream(), partitions), seq, event));
                        } else {
                            self.stats.skipped += 1;
                            self.tracker.complete(seq);
                            self.on_processed();
                            self.maybe_store(false).await?;
                        }
                    }
                },
                _ = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.maybe_store(true).await?;
                }
            }
            self.publish();
        }

        self.final_store(deadline).await?;
        self.publish();
        match failure {
            Some(PipelineError::Reader { source, .. }) => Err(PipelineError::Reader {
                last_processed: self.stored,
                source,
            }),
            Some(PipelineError::Sink { source, .. }) => Err(PipelineError::Sink {
                last_processed: self.stored,
                source,
            }),
            Some(other) => Err(other),
            None => Ok(RunSummary {
                read: self.stats.read,
                written: self.stats.written,
                skipped: self.stats.skipped,
                checkpoint: self.stats.stored.clone(),
                completed,
            }),
        }
    }

    fn check_order(&mut self, event: &Event) -> Result<(), PipelineError> {
        let previous = self.last_read.or(self.lower_bound.map(|(p, _)| p));
        let inclusive = self.last_read.is_none() && self.lower_bound.is_some_and(|(_, i)| i);
        if let Some(previous) = previous {
            let in_order = if inclusive {
                event.position >= previous
            } else {
                event.position > previous
            };
            if !in_order {
                return Err(PipelineError::OutOfOrder {
                    previous,
                    position: event.position,
                });
            }
        }
        self.last_read = Some(event.position);
        self.stats.last_read = Some(event.position);
        Ok(())
    }

    fn on_written(&mut self, seqs: &[u64], target: Option<Position>) {
        for &seq in seqs {
            self.tracker.complete(seq);
        }
        self.stats.written += seqs.len() as u64;
        if target > self.target {
            self.target = target;
        }
        self.on_processed();
    }

    fn on_processed(&mut self) {
        let (count, last) = self.tracker.advance();
        if let Some(slot) = last {
            self.frontier = Some(slot.position);
            self.stats.processed_created = Some(slot.created);
            self.since_store += count;
            self.unstored_since.get_or_insert_with(Instant::now);
        }
    }

    /// Stores the frontier when `checkpoint_after` events passed, or when
    /// `force` and anything is unstored. A transient failure is logged and left
    /// for the next opportunity: the frontier only moves forward, so nothing is
    /// lost by storing it later.
    async fn maybe_store(&mut self, force: bool) -> Result<(), PipelineError> {
        if self.since_store == 0 || !(force || self.since_store >= self.config.checkpoint_after) {
            return Ok(());
        }
        match self.store_frontier().await {
            Err(error) if error.is_transient() => {
                warn!(%error, "Storing the checkpoint failed; will retry");
                // Retry on the next flush tick rather than on every event.
                self.unstored_since = Some(Instant::now());
                Ok(())
            }
            other => other.map_err(PipelineError::StoreCheckpoint),
        }
    }

    async fn store_frontier(&mut self) -> Result<(), CheckpointError> {
        let Some(source) = self.frontier else {
            return Ok(());
        };
        let checkpoint = Checkpoint::processed(source, self.target);
        self.store.store(&checkpoint).await?;
        debug!(%source, "Checkpoint stored");
        self.stored = Some(source);
        self.since_store = 0;
        self.unstored_since = None;
        self.stats.checkpoints_stored += 1;
        self.stats.stored = Some(checkpoint);
        Ok(())
    }

    /// The last store of a run: retried on transient errors until the deadline.
    async fn final_store(&mut self, deadline: Option<Instant>) -> Result<(), PipelineError> {
        let config = self.config.clone();
        let deadline = deadline.unwrap_or_else(|| Instant::now() + config.shutdown_deadline);
        let mut wait = config.retry_initial;
        while self.since_store > 0 {
            match self.store_frontier().await {
                Ok(()) => break,
                Err(error) if error.is_transient() && Instant::now() + wait < deadline => {
                    warn!(%error, "Storing the final checkpoint failed; retrying");
                    sleep(wait).await;
                    wait = (wait * 2).min(config.retry_max);
                }
                Err(error) => return Err(PipelineError::StoreCheckpoint(error)),
            }
        }
        Ok(())
    }

    fn publish(&mut self) {
        self.stats.in_flight = self.tracker.slots.len();
        self.stats.processed = self.frontier;
        self.stats.target = self.target;
        if matches!(
            self.stats.state,
            PipelineState::Running | PipelineState::Retrying { .. }
        ) {
            self.stats.state = match self.retrying.iter().flatten().max_by_key(|r| r.0) {
                Some((attempts, error)) => PipelineState::Retrying {
                    attempts: *attempts,
                    error: error.clone(),
                },
                None => PipelineState::Running,
            };
        }
        let stats = &self.stats;
        self.progress.send_modify(|p| p.clone_from(stats));
    }
}

fn partition_of(stream: &str, partitions: usize) -> usize {
    if partitions == 1 {
        return 0;
    }
    // SipHash with fixed keys: the same stream maps to the same partition in
    // every run, which keeps logs and metrics comparable.
    let mut hasher = DefaultHasher::new();
    stream.hash(&mut hasher);
    (hasher.finish() % partitions as u64) as usize
}

async fn read_loop(
    mut stream: crate::traits::EventStream,
    tx: mpsc::Sender<Result<Event, ReaderError>>,
    stop: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            item = stream.next() => item,
        };
        let Some(item) = item else { return };
        let last = item.is_err();
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            sent = tx.send(item) => if sent.is_err() { return },
        }
        if last {
            return;
        }
    }
}

async fn write_loop(
    partition: usize,
    mut queue: mpsc::Receiver<(u64, Event)>,
    sink: Arc<dyn Sink>,
    acks: mpsc::UnboundedSender<WriterMsg>,
    config: PipelineConfig,
    stop: CancellationToken,
) {
    let mut carry: Option<(u64, Event)> = None;
    let mut seqs = Vec::new();
    let mut batch = Vec::new();
    loop {
        let first = match carry.take() {
            Some(item) => item,
            None => match queue.recv().await {
                Some(item) => item,
                None => return,
            },
        };
        let mut bytes = first.1.payload_len();
        seqs.push(first.0);
        batch.push(first.1);
        while batch.len() < config.max_batch_events {
            let Ok(item) = queue.try_recv() else { break };
            if bytes + item.1.payload_len() > config.max_batch_bytes {
                carry = Some(item);
                break;
            }
            bytes += item.1.payload_len();
            seqs.push(item.0);
            batch.push(item.1);
        }

        let mut attempts = 0u32;
        let mut wait = config.retry_initial;
        let target = loop {
            match sink.write(&batch).await {
                Ok(ack) => break ack.target_position,
                Err(error) if error.is_transient() => {
                    attempts += 1;
                    warn!(%error, partition, attempts, "Sink write failed; retrying");
                    let _ = acks.send(WriterMsg::Retrying {
                        partition,
                        attempts,
                        error: error.to_string(),
                    });
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = sleep(wait) => {}
                    }
                    wait = (wait * 2).min(config.retry_max);
                }
                Err(error) => {
                    let _ = acks.send(WriterMsg::Failed(error));
                    return;
                }
            }
        };
        batch.clear();
        let seqs = std::mem::take(&mut seqs);
        if acks
            .send(WriterMsg::Written {
                seqs,
                target,
                partition,
            })
            .is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitioning_is_stable_and_in_range() {
        for p in 1..8 {
            let a = partition_of("orders-42", p);
            assert!(a < p);
            assert_eq!(a, partition_of("orders-42", p));
        }
    }

    #[test]
    fn tracker_advances_only_over_contiguous_done_slots() {
        let mut t = Tracker {
            base: 0,
            slots: VecDeque::new(),
        };
        let seqs: Vec<u64> = (0..4)
            .map(|i| t.push(Position::at(i * 10), SystemTime::UNIX_EPOCH))
            .collect();
        t.complete(seqs[1]);
        t.complete(seqs[3]);
        assert_eq!(t.advance().0, 0, "slot 0 is still in flight");
        t.complete(seqs[0]);
        let (n, last) = t.advance();
        assert_eq!((n, last.map(|s| s.position)), (2, Some(Position::at(10))));
        t.complete(seqs[2]);
        let (n, last) = t.advance();
        assert_eq!((n, last.map(|s| s.position)), (2, Some(Position::at(30))));
    }
}
