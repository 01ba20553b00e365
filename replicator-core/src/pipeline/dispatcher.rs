//! One [`super::Pipeline::run`]: the dispatcher loop and the tasks it
//! watches over (reader, writers, checkpointer, head poller).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinError, JoinSet};
use tokio::time::{interval, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::checkpointer::{Checkpointer, Frontier, Stored};
use super::head::{poll_head, HeadSample};
use super::progress::Meters;
use super::tracker::Tracker;
use super::transform::{transformed, Item, Partitions};
use super::writer::{probe_idle_target, LastWrite, Writer, WriterMsg};
use super::{PipelineConfig, PipelineState, Progress, RunSummary};
use crate::error::{CheckpointError, PipelineError};
use crate::health::{merge, short, Component, Health, HealthReporter};
use crate::model::{ChangeKind, Checkpoint, Event, Position, StartFrom};
use crate::traits::{CheckpointStore, EventStream, HeadProbe, Sink};
use crate::transform::{Partitioner, Transform};

/// What [`Run::new`] is built from.
pub(super) struct Parts {
    pub(super) sink: Arc<dyn Sink>,
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) config: PipelineConfig,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) health: Health,
    pub(super) probe: Option<Arc<dyn HeadProbe>>,
    pub(super) probe_health: HealthReporter,
    pub(super) loaded: Option<Checkpoint>,
    pub(super) from: StartFrom,
    pub(super) transforms: Vec<Arc<dyn Transform>>,
    pub(super) partitioner: Option<Arc<dyn Partitioner>>,
}

/// How a spawned task ended.
enum TaskEnd {
    Reader(ReaderEnd),
    Writer,
    Head,
    Probe,
    Checkpointer(Result<(), CheckpointError>),
}

/// How the reader task ended.
#[derive(Debug, PartialEq, Eq)]
enum ReaderEnd {
    /// The stream ended: caught up, not running continuously.
    Ended,
    /// The stream yielded its final error, or the pipeline stopped reading.
    Stopped,
}

/// The tasks of one run, and the ends of their channels the dispatcher holds.
struct Tasks {
    /// Dropping it (a crash, or the caller dropping the run) aborts them all.
    set: JoinSet<TaskEnd>,
    names: HashMap<Id, String>,
    /// To the checkpointer; `None` once the final frontier is handed over.
    frontier: Option<watch::Sender<Option<Frontier>>>,
    /// From the checkpointer: what it stored.
    stored: watch::Receiver<Stored>,
    head: watch::Receiver<HeadSample>,
    head_poller: Option<AbortHandle>,
    idle_probe: AbortHandle,
    read: mpsc::Receiver<Item>,
    stop_reading: CancellationToken,
    acks: mpsc::UnboundedReceiver<WriterMsg>,
    /// One per writer; cleared when dispatching stops, so that the writers
    /// empty them and exit.
    queues: Vec<mpsc::Sender<(u64, Event)>>,
}

/// Where the dispatcher loop stands.
struct Dispatch {
    /// Read and sequenced, waiting for room in its partition's queue.
    pending: Option<(usize, u64, Event)>,
    /// The reader's stream ended (caught up, not running continuously).
    reader_ended: bool,
    /// The reader task's failure, reported once what it delivered is
    /// dispatched.
    reader_broke: Option<PipelineError>,
    /// The reader's queue may still hold or get records.
    read_open: bool,
    /// The reader ended and everything it delivered was dispatched.
    completed: bool,
    /// The first failure: what the run returns.
    failure: Option<PipelineError>,
    /// When draining gives up; set once the run is stopping.
    deadline: Option<Instant>,
    stop_writing: CancellationToken,
    /// How long draining may take ([`PipelineConfig::shutdown_deadline`]).
    grace: Duration,
}

/// What a failure does to the writes already handed to the writers.
#[derive(Debug, Clone, Copy)]
enum Writers {
    /// They are written and checkpointed before the run stops: the failure
    /// comes after them in the source (the reader, a transform, the
    /// partitioner).
    Finish,
    /// The writers stop retrying now: the target or a task failed.
    Stop,
}

/// How the dispatcher loop ended.
enum LoopEnd {
    /// Every writer exited: everything dispatched is settled.
    Drained,
    /// The shutdown deadline passed with writes in flight.
    DeadlinePassed,
}

impl Dispatch {
    fn new(grace: Duration) -> Self {
        Dispatch {
            pending: None,
            reader_ended: false,
            reader_broke: None,
            read_open: true,
            completed: false,
            failure: None,
            deadline: None,
            stop_writing: CancellationToken::new(),
            grace,
        }
    }

    /// Stopping, on a deadline or because the reader completed: nothing more
    /// is read or dispatched.
    fn closing(&self) -> bool {
        self.deadline.is_some() || self.completed
    }

    /// Stops the run on `error`: the first failure is the one the run
    /// returns, and what is in flight drains until the shutdown deadline.
    fn fail(&mut self, error: PipelineError, writers: Writers) {
        self.failure.get_or_insert(error);
        if let Writers::Stop = writers {
            self.stop_writing.cancel();
        }
        let grace = self.grace;
        self.deadline.get_or_insert_with(|| Instant::now() + grace);
    }
}

/// The state of one [`super::Pipeline::run`].
pub(super) struct Run {
    sink: Arc<dyn Sink>,
    store: Arc<dyn CheckpointStore>,
    config: PipelineConfig,
    progress: watch::Sender<Progress>,
    health: Health,
    probe: Option<Arc<dyn HeadProbe>>,
    probe_health: HealthReporter,
    /// Reports a reader that delivers nothing while the source has more.
    stall_health: HealthReporter,
    /// Reports the checks of an idle target.
    idle_target_health: HealthReporter,
    tracker: Tracker,
    /// Frontier of processed records and the target position that goes with it.
    frontier: Option<Position>,
    target: Option<Position>,
    /// Records processed in this run.
    processed: u64,
    /// [`Run::processed`] when the frontier was last handed to the checkpointer.
    frontier_sent: u64,
    last_read: Option<Position>,
    last_read_at: Instant,
    /// The first position the reader may hand on, and whether it is inclusive.
    lower_bound: Option<(Position, bool)>,
    retrying: Vec<Option<(u32, String)>>,
    stats: Progress,
    /// Rates, lag and the distance to the source head.
    meters: Meters,
    loaded: Option<Checkpoint>,
    transforms: Vec<Arc<dyn Transform>>,
    /// One reporter per transform, merged into the `transform` component.
    transform_health: Vec<HealthReporter>,
    partitions: Partitions,
}

impl Run {
    pub(super) fn new(parts: Parts) -> Self {
        let lower_bound = match parts.from {
            StartFrom::Beginning => None,
            StartFrom::After(p) => Some((p, false)),
            StartFrom::At(p) => Some((p, true)),
        };
        let stored = parts.loaded.as_ref().filter(|c| !c.seed).map(|c| c.source);
        let partitions = parts.sink.max_in_flight().max(1);
        let mut stats = Progress {
            state: PipelineState::Running,
            stored: parts.loaded.clone(),
            ..Progress::default()
        };
        stats.processed = stored;
        Run {
            sink: parts.sink,
            store: parts.store,
            config: parts.config,
            progress: parts.progress,
            health: parts.health,
            probe: parts.probe,
            probe_health: parts.probe_health,
            stall_health: HealthReporter::labelled(Component::Source, "Source reader (stalled)"),
            idle_target_health: HealthReporter::labelled(Component::Target, "Target (idle check)"),
            tracker: Tracker::default(),
            frontier: stored,
            target: parts.loaded.as_ref().and_then(|c| c.target),
            processed: 0,
            frontier_sent: 0,
            last_read: None,
            last_read_at: Instant::now(),
            lower_bound,
            retrying: vec![None; partitions],
            stats,
            meters: Meters::default(),
            loaded: parts.loaded,
            transform_health: parts
                .transforms
                .iter()
                .map(|_| HealthReporter::labelled(Component::Transform, "Transform"))
                .collect(),
            transforms: parts.transforms,
            partitions: Partitions::new(partitions, parts.partitioner),
        }
    }

    pub(super) async fn drive(
        &mut self,
        stream: EventStream,
        cancel: CancellationToken,
    ) -> Result<RunSummary, PipelineError> {
        let mut dispatch = Dispatch::new(self.config.shutdown_deadline);
        let mut tasks = self.spawn(stream, &cancel, &dispatch.stop_writing);
        self.publish(&tasks.stored);
        match self.dispatch(&mut tasks, &mut dispatch, &cancel).await? {
            LoopEnd::Drained => self.finish(tasks, dispatch).await,
            LoopEnd::DeadlinePassed => Err(self.abandon(tasks, dispatch).await),
        }
    }

    /// Starts the checkpointer, the head poller (with a probe), the reader,
    /// the idle-target probe and one writer per partition.
    fn spawn(
        &self,
        stream: EventStream,
        cancel: &CancellationToken,
        stop_writing: &CancellationToken,
    ) -> Tasks {
        let config = &self.config;
        let partitions = self.retrying.len();
        let mut set: JoinSet<TaskEnd> = JoinSet::new();
        let mut names: HashMap<Id, String> = HashMap::new();

        let (frontier_tx, frontier_rx) = watch::channel(None::<Frontier>);
        let (stored_tx, stored_rx) = watch::channel(Stored {
            checkpoint: self.loaded.clone(),
            ..Stored::default()
        });
        let checkpointer = Checkpointer {
            store: self.store.clone(),
            config: config.clone(),
            health: self.health.checkpoint.clone(),
            stored: stored_tx,
        };
        let handle =
            set.spawn(async move { TaskEnd::Checkpointer(checkpointer.run(frontier_rx).await) });
        names.insert(handle.id(), "checkpointer".into());

        let (head_tx, head_rx) = watch::channel::<HeadSample>(None);
        let head_poller = self.probe.clone().map(|probe| {
            let task = poll_head(probe, config.clone(), self.probe_health.clone(), head_tx);
            let handle = set.spawn(async move {
                task.await;
                TaskEnd::Head
            });
            names.insert(handle.id(), "source head poller".into());
            handle
        });

        let stop_reading = cancel.child_token();
        let (read_tx, read_rx) = mpsc::channel(config.buffer_size);
        let items = transformed(stream, &self.transforms, config, &self.transform_health);
        let handle = set.spawn({
            let stop = stop_reading.clone();
            async move { TaskEnd::Reader(read_loop(items, read_tx, stop).await) }
        });
        names.insert(handle.id(), "reader".into());

        let last_write: LastWrite = Arc::new(std::sync::Mutex::new(Instant::now()));
        let idle_probe = set.spawn({
            let probe = probe_idle_target(
                self.sink.clone(),
                config.clone(),
                self.idle_target_health.clone(),
                last_write.clone(),
            );
            async move {
                probe.await;
                TaskEnd::Probe
            }
        });
        names.insert(idle_probe.id(), "target idle probe".into());

        let (ack_tx, ack_rx) = mpsc::unbounded_channel();
        let mut queues = Vec::with_capacity(partitions);
        for partition in 0..partitions {
            // Room for the batches a writer may have in flight at once.
            let depth = self.sink.pipelined_writes().max(1);
            let (tx, rx) = mpsc::channel(config.max_batch_events * depth);
            queues.push(tx);
            let writer = Writer {
                partition,
                sink: self.sink.clone(),
                acks: ack_tx.clone(),
                config: config.clone(),
                stop: stop_writing.clone(),
                health: self.health.target.clone(),
                last_write: last_write.clone(),
            };
            let handle = set.spawn(async move {
                writer.run(rx).await;
                TaskEnd::Writer
            });
            names.insert(handle.id(), format!("writer {partition}"));
        }
        // Only writers hold senders now: `acks` ends when the last writer exits.
        drop(ack_tx);

        Tasks {
            set,
            names,
            frontier: Some(frontier_tx),
            stored: stored_rx,
            head: head_rx,
            head_poller,
            idle_probe,
            read: read_rx,
            stop_reading,
            acks: ack_rx,
            queues,
        }
    }

    /// The dispatcher loop: hands what the reader delivers to the writers,
    /// takes their acknowledgements, watches the tasks and publishes the
    /// progress, until every writer has exited or the shutdown deadline
    /// passes.
    ///
    /// # Errors
    /// A record out of order ends the run at once (dropping the tasks aborts
    /// them); every other failure drains first (see [`Dispatch::fail`]).
    async fn dispatch(
        &mut self,
        t: &mut Tasks,
        d: &mut Dispatch,
        cancel: &CancellationToken,
    ) -> Result<LoopEnd, PipelineError> {
        let mut ticker = interval(self.config.publish_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if d.reader_ended && !d.read_open {
                d.completed = true;
            }
            let closing = d.closing();
            if closing && !t.queues.is_empty() {
                self.stop_dispatching(t, d);
            }
            // Borrowed apart from `t` and `d`, which the other branches use.
            let (queues, pending) = (&t.queues, &d.pending);

            tokio::select! {
                biased;
                msg = t.acks.recv() => match msg {
                    Some(msg) => self.on_writer(msg, t, d),
                    // Every writer has exited: everything dispatched is settled.
                    None => return Ok(LoopEnd::Drained),
                },
                Some(joined) = t.set.join_next(), if !t.set.is_empty() => self.on_task(joined, t, d),
                _ = cancel.cancelled(), if d.deadline.is_none() => {
                    info!("Cancellation requested; draining in-flight writes");
                    d.deadline = Some(Instant::now() + d.grace);
                    self.stats.state = PipelineState::Draining;
                    self.publish(&t.stored);
                }
                _ = sleep_until(d.deadline.unwrap_or_else(Instant::now)), if d.deadline.is_some() => {
                    return Ok(LoopEnd::DeadlinePassed);
                }
                permit = async { queues[pending.as_ref().map_or(0, |p| p.0)].reserve().await }, if pending.is_some() && !closing => {
                    self.on_room(permit, d);
                }
                item = t.read.recv(), if d.read_open && d.pending.is_none() && !closing => {
                    self.on_read(item, t, d)?;
                }
                _ = ticker.tick() => {
                    self.take_head(&mut t.head);
                    self.on_tick(t, d);
                }
            }
        }
    }

    /// Stops dispatching: drops what was read but not handed to a writer (it
    /// is re-read next run) and lets the writers empty their queues.
    fn stop_dispatching(&mut self, t: &mut Tasks, d: &mut Dispatch) {
        if let Some((_, _, event)) = d.pending.take() {
            debug!(position = %event.position, "Dropping undispatched event");
            self.tracker.forget_last();
        }
        t.queues.clear();
        t.stop_reading.cancel();
    }

    /// A writer's report: a batch written, a write being retried, or a
    /// permanent failure.
    fn on_writer(&mut self, msg: WriterMsg, t: &Tasks, d: &mut Dispatch) {
        match msg {
            WriterMsg::Written {
                seqs,
                target,
                partition,
                bytes,
                latency,
            } => {
                self.retrying[partition] = None;
                for &seq in &seqs {
                    self.partitions.written(seq);
                }
                self.stats.batch_size.observe(seqs.len() as f64);
                self.stats.append_latency.observe(latency.as_secs_f64());
                self.stats.bytes_written += bytes;
                self.on_written(&seqs, target);
                self.send_frontier(t.frontier.as_ref(), false);
            }
            WriterMsg::Retrying {
                partition,
                attempts,
                error,
            } => {
                self.stats.sink_retries += 1;
                self.retrying[partition] = Some((attempts, error));
                self.publish(&t.stored);
            }
            WriterMsg::Failed(error) => {
                warn!(%error, "Sink failed permanently; draining");
                let error = PipelineError::Sink {
                    last_processed: None,
                    source: error,
                };
                d.fail(error, Writers::Stop);
            }
        }
    }

    /// A task ended: the reader's end is noted; any other failure stops the
    /// run.
    fn on_task(&mut self, joined: Result<TaskEnd, JoinError>, t: &Tasks, d: &mut Dispatch) {
        match self.on_task_end(joined, &t.names) {
            Ok(Some(ReaderEnd::Ended)) => d.reader_ended = true,
            Ok(_) => {}
            // Like a final `Err` from the stream: first replicate what the
            // reader delivered before it broke.
            Err(error) if d.read_open && is_reader(&error) => d.reader_broke = Some(error),
            Err(error) => {
                warn!(%error, "Stopping; draining what is in flight");
                d.fail(error, Writers::Stop);
            }
        }
    }

    /// Room in the queue of the pending record's partition: hands it over.
    fn on_room(
        &mut self,
        permit: Result<mpsc::Permit<'_, (u64, Event)>, mpsc::error::SendError<()>>,
        d: &mut Dispatch,
    ) {
        match permit {
            Ok(permit) => {
                let (partition, seq, event) =
                    d.pending.take().expect("guarded by pending.is_some()");
                self.partitions.sent(seq, &event, partition);
                permit.send((seq, event));
            }
            Err(_) => {
                // The writer is gone without a word: its task end says why (a
                // panic); never spin on its queue.
                let partition = d.pending.as_ref().map_or(0, |p| p.0);
                let error = PipelineError::TaskEnded {
                    task: format!("writer {partition}"),
                    reason: "its queue closed while replicating".into(),
                };
                d.fail(error, Writers::Stop);
            }
        }
    }

    /// What the reader delivered: its end, its final error (or a transform's
    /// permanent one), or a record.
    ///
    /// # Errors
    /// A record out of order.
    fn on_read(
        &mut self,
        item: Option<Item>,
        t: &Tasks,
        d: &mut Dispatch,
    ) -> Result<(), PipelineError> {
        match item {
            None => {
                d.read_open = false;
                if let Some(error) = d.reader_broke.take() {
                    warn!(%error, "Stopping; draining what is in flight");
                    d.fail(error, Writers::Finish);
                }
            }
            // What came before the error is written and checkpointed.
            Some(Err(error)) => {
                warn!(%error, "Reading or transforming failed; draining");
                d.fail(error, Writers::Finish);
            }
            Some(Ok(event)) => self.on_event(event, t, d)?,
        }
        Ok(())
    }

    /// Sequences a record, then skips it or hands it to its partition's
    /// writer (or holds it until that writer's queue has room).
    ///
    /// # Errors
    /// A record out of order.
    fn on_event(&mut self, event: Event, t: &Tasks, d: &mut Dispatch) -> Result<(), PipelineError> {
        self.check_order(&event)?;
        let seq = self.tracker.push(event.position, event.created);
        self.stats.read += 1;
        match event.kind {
            ChangeKind::Skip(reason) => {
                self.stats.skipped += 1;
                self.stats.skipped_by_reason.add(reason);
                self.tracker.complete(seq);
                self.on_processed();
                self.send_frontier(t.frontier.as_ref(), false);
            }
            _ => match self.partitions.choose(&event) {
                // Room in the partition's queue (the common case): handed
                // over now rather than on the next turn of the loop.
                Ok(partition) => match t.queues[partition].try_reserve() {
                    Ok(permit) => {
                        self.partitions.sent(seq, &event, partition);
                        permit.send((seq, event));
                    }
                    Err(_) => d.pending = Some((partition, seq, event)),
                },
                Err(error) => {
                    // Not dispatched: the checkpoint stays before it.
                    self.tracker.forget_last();
                    warn!(%error, "Partitioner failed; draining");
                    d.fail(error, Writers::Finish);
                }
            },
        }
        Ok(())
    }

    /// Takes the head poller's latest sample, if there is a new one.
    fn take_head(&mut self, head: &mut watch::Receiver<HeadSample>) {
        if head.has_changed().unwrap_or(false) {
            if let Some((at, head)) = *head.borrow_and_update() {
                self.meters.head(at, head);
                self.stats.source_head = head;
                self.stats.source_head_at = Some(SystemTime::now() - at.elapsed());
            }
        }
    }

    /// The publish interval (after [`Run::take_head`]): checks for a stalled
    /// reader, hands the frontier over and publishes.
    fn on_tick(&mut self, t: &Tasks, d: &Dispatch) {
        self.check_stall(d.read_open && d.pending.is_none() && !d.closing() && t.read.is_empty());
        self.send_frontier(t.frontier.as_ref(), true);
        self.publish(&t.stored);
    }

    /// Hands the checkpointer the final frontier and closes its channel: it
    /// stores that and ends.
    fn last_frontier(&mut self, t: &mut Tasks) {
        self.send_frontier(t.frontier.as_ref(), true);
        drop(t.frontier.take());
    }

    /// Every writer has exited: stops the reader and the pollers, lets the
    /// checkpointer store the final frontier until the deadline, and says
    /// how the run ended.
    ///
    /// # Errors
    /// The first failure of the run, else of the tasks' ends.
    async fn finish(&mut self, mut t: Tasks, d: Dispatch) -> Result<RunSummary, PipelineError> {
        t.stop_reading.cancel();
        if let Some(handle) = &t.head_poller {
            handle.abort();
        }
        t.idle_probe.abort();
        self.last_frontier(&mut t);
        let until = d.deadline.unwrap_or_else(|| Instant::now() + d.grace);
        let settled = self.settle(&mut t.set, &t.names, until, &t.stored).await;
        self.publish(&t.stored);
        // The checkpointer's channel starts with the loaded checkpoint, so
        // this is the last stored one or the loaded one.
        let stored = t.stored.borrow().checkpoint.clone();
        match d.failure.or(settled.err()) {
            Some(error) => {
                let last_processed = stored.as_ref().filter(|c| !c.seed).map(|c| c.source);
                Err(with_last_processed(error, last_processed))
            }
            None => Ok(RunSummary {
                read: self.stats.read,
                written: self.stats.written,
                skipped: self.stats.skipped,
                checkpoint: stored,
                completed: d.completed,
            }),
        }
    }

    /// The shutdown deadline passed: abandons the writes in flight and gives
    /// the checkpointer one call deadline to store what was acknowledged.
    /// Returns the first failure of the run, else of the tasks' ends, else
    /// [`PipelineError::ShutdownTimeout`].
    async fn abandon(&mut self, mut t: Tasks, d: Dispatch) -> PipelineError {
        d.stop_writing.cancel();
        t.stop_reading.cancel();
        let in_flight = self.tracker.in_flight();
        warn!(
            in_flight,
            "Shutdown deadline passed; abandoning in-flight writes"
        );
        // Keep only the checkpointer: it gets one call deadline to store what
        // was acknowledged.
        self.last_frontier(&mut t);
        let until = Instant::now() + self.config.call_timeout;
        let stored = self.settle(&mut t.set, &t.names, until, &t.stored).await;
        self.publish(&t.stored);
        d.failure
            .or(stored.err())
            .unwrap_or(PipelineError::ShutdownTimeout { in_flight })
    }

    /// Waits for the remaining tasks (the checkpointer's final store above
    /// all) until `until`; the first failure among them is returned.
    async fn settle(
        &mut self,
        tasks: &mut JoinSet<TaskEnd>,
        names: &HashMap<Id, String>,
        until: Instant,
        stored: &watch::Receiver<Stored>,
    ) -> Result<(), PipelineError> {
        let mut first_error = None;
        loop {
            match timeout(
                until.saturating_duration_since(Instant::now()),
                tasks.join_next(),
            )
            .await
            {
                Ok(None) => break,
                Ok(Some(joined)) => {
                    if let Err(error) = self.on_task_end(joined, names) {
                        first_error.get_or_insert(error);
                    }
                }
                Err(_) => {
                    let unstored = self.processed - stored.borrow().processed;
                    warn!(unstored, "The final checkpoint could not be stored in time");
                    tasks.abort_all();
                    first_error.get_or_insert(PipelineError::ShutdownTimeout {
                        in_flight: self.tracker.in_flight(),
                    });
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What a task's end means: `Ok(Some(end))` for the reader, an error for
    /// a panic, a permanent store failure or an end nobody asked for.
    fn on_task_end(
        &mut self,
        joined: Result<TaskEnd, JoinError>,
        names: &HashMap<Id, String>,
    ) -> Result<Option<ReaderEnd>, PipelineError> {
        match joined {
            Ok(TaskEnd::Reader(end)) => Ok(Some(end)),
            Ok(TaskEnd::Writer) => Ok(None),
            Ok(TaskEnd::Head | TaskEnd::Probe) => Ok(None),
            Ok(TaskEnd::Checkpointer(Ok(()))) => Ok(None),
            Ok(TaskEnd::Checkpointer(Err(error))) => Err(PipelineError::StoreCheckpoint(error)),
            Err(error) if error.is_cancelled() => Ok(None),
            Err(error) => {
                let task = names
                    .get(&error.id())
                    .cloned()
                    .unwrap_or_else(|| "a task".into());
                let reason = match error.try_into_panic() {
                    Ok(payload) => format!("panicked: {}", panic_message(&*payload)),
                    Err(error) => error.to_string(),
                };
                Err(PipelineError::TaskEnded { task, reason })
            }
        }
    }

    /// Hands the frontier to the checkpointer when `checkpoint_after` records
    /// passed since the last hand-over, or when `now` and it moved at all.
    fn send_frontier(&mut self, tx: Option<&watch::Sender<Option<Frontier>>>, now: bool) {
        let Some(tx) = tx else { return };
        let moved = self.processed - self.frontier_sent;
        if moved == 0 || !(now || moved >= self.config.checkpoint_after) {
            return;
        }
        if let Some(source) = self.frontier {
            tx.send_replace(Some(Frontier {
                source,
                target: self.target,
                processed: self.processed,
            }));
            self.frontier_sent = self.processed;
        }
    }

    /// Reports the source unhealthy when it has records after the last one
    /// read but the reader delivered nothing for a call deadline while the
    /// pipeline was waiting for it.
    fn check_stall(&mut self, waiting_for_reader: bool) {
        let Some(head) = self.stats.source_head else {
            self.stall_health.success();
            return;
        };
        let behind = match self.last_read.or(self.lower_bound.map(|(p, _)| p)) {
            None => true,
            Some(last) => head > last,
        };
        let quiet = self.last_read_at.elapsed();
        if behind && waiting_for_reader && quiet >= self.config.call_timeout {
            let after = self
                .last_read
                .map_or("the start".to_owned(), |p| p.to_string());
            self.stall_health.failure(&format!(
                "the source's $all goes on to {head}, but the reader has delivered nothing after {after} for {}",
                short(quiet)
            ));
        } else if !behind || quiet < self.config.call_timeout {
            self.stall_health.success();
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
        self.last_read_at = Instant::now();
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
            self.processed += count;
        }
    }

    fn publish(&mut self, stored: &watch::Receiver<Stored>) {
        let now = Instant::now();
        let stats = &mut self.stats;
        stats.heartbeat = now;
        stats.in_flight = self.tracker.in_flight();
        stats.processed = self.frontier;
        stats.target = self.target;
        {
            let stored = stored.borrow();
            if stored.stores > 0 {
                stats.stored.clone_from(&stored.checkpoint);
            }
            stats.checkpoints_stored = stored.stores;
            stats.unstored = self.processed - stored.processed;
        }
        let start = self.lower_bound.map_or(0, |(p, _)| p.commit);
        self.meters.measure(stats, now, self.processed, start);
        if matches!(
            stats.state,
            PipelineState::Running | PipelineState::Retrying { .. }
        ) {
            stats.state = match self.retrying.iter().flatten().max_by_key(|r| r.0) {
                Some((attempts, error)) => PipelineState::Retrying {
                    attempts: *attempts,
                    error: error.clone(),
                },
                None => PipelineState::Running,
            };
        }
        stats.components = self.health.snapshot();
        stats.components.target = merge(&[
            stats.components.target.clone(),
            self.idle_target_health.snapshot(),
        ]);
        stats.components.source = merge(&[
            stats.components.source.clone(),
            self.probe_health.snapshot(),
            self.stall_health.snapshot(),
        ]);
        let mut transform = vec![stats.components.transform.clone()];
        transform.extend(self.transform_health.iter().map(HealthReporter::snapshot));
        stats.components.transform = merge(&transform);
        let stats = &self.stats;
        self.progress.send_modify(|p| p.clone_from(stats));
    }
}

/// `error` with the source position of the last stored checkpoint, for the
/// errors that carry one.
fn with_last_processed(error: PipelineError, last_processed: Option<Position>) -> PipelineError {
    match error {
        PipelineError::Reader { source, .. } => PipelineError::Reader {
            last_processed,
            source,
        },
        PipelineError::Sink { source, .. } => PipelineError::Sink {
            last_processed,
            source,
        },
        PipelineError::Transform {
            stream,
            revision,
            event_id,
            position,
            source,
            ..
        } => PipelineError::Transform {
            stream,
            revision,
            event_id,
            position,
            last_processed,
            source,
        },
        other => other,
    }
}

fn is_reader(error: &PipelineError) -> bool {
    matches!(error, PipelineError::TaskEnded { task, .. } if task == "reader")
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

async fn read_loop(
    mut stream: futures::stream::BoxStream<'static, Item>,
    tx: mpsc::Sender<Item>,
    stop: CancellationToken,
) -> ReaderEnd {
    // One wait for the stop, made once: a new one per record cost more than
    // the record's hand-over.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            () = &mut stopped => return ReaderEnd::Stopped,
            item = stream.next() => item,
        };
        let Some(item) = item else {
            return ReaderEnd::Ended;
        };
        let last = item.is_err();
        // Room in the queue (the common case while the dispatcher keeps up):
        // handed over at once; the next turn checks the stop first.
        let item = match tx.try_send(item) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => return ReaderEnd::Stopped,
            Err(mpsc::error::TrySendError::Full(item)) => Some(item),
        };
        if let Some(item) = item {
            tokio::select! {
                biased;
                () = &mut stopped => return ReaderEnd::Stopped,
                sent = tx.send(item) => if sent.is_err() { return ReaderEnd::Stopped },
            }
        }
        if last {
            return ReaderEnd::Stopped;
        }
    }
}
