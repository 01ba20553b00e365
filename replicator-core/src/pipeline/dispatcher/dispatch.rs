//! The dispatcher loop: its state, and one handler per `select!` branch.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinError;
use tokio::time::{interval, sleep_until, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::error::PipelineError;
use crate::model::{ChangeKind, Event};
use crate::pipeline::head::HeadSample;
use crate::pipeline::parcel::{OpenCommit, Parcel};
use crate::pipeline::transform::Item;
use crate::pipeline::writer::WriterMsg;
use crate::pipeline::PipelineState;

use super::finish::is_reader;
use super::spawn::{ReaderEnd, TaskEnd, Tasks};
use super::Run;

/// Where the dispatcher loop stands.
pub(super) struct Dispatch {
    /// Read and sequenced, waiting in order for room in their partitions'
    /// queues (nothing more is read meanwhile).
    pub(super) pending: VecDeque<(usize, Parcel)>,
    /// A commit whose last record is still to come: its records wait here
    /// so that their writer gets all of them at once (`parcel.rs`).
    pub(super) open_commit: Option<OpenCommit>,
    /// The reader's stream ended (caught up, not running continuously).
    pub(super) reader_ended: bool,
    /// The reader task's failure, reported once what it delivered is
    /// dispatched.
    pub(super) reader_broke: Option<PipelineError>,
    /// The reader's queue may still hold or get records.
    pub(super) read_open: bool,
    /// The reader ended and everything it delivered was dispatched.
    pub(super) completed: bool,
    /// The first failure: what the run returns.
    pub(super) failure: Option<PipelineError>,
    /// When draining gives up; set once the run is stopping.
    pub(super) deadline: Option<Instant>,
    pub(super) stop_writing: CancellationToken,
    /// How long draining may take
    /// ([`PipelineConfig::shutdown_deadline`](crate::pipeline::PipelineConfig::shutdown_deadline)).
    pub(super) grace: Duration,
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
pub(super) enum LoopEnd {
    /// Every writer exited: everything dispatched is settled.
    Drained,
    /// The shutdown deadline passed with writes in flight.
    DeadlinePassed,
}

impl Dispatch {
    pub(super) fn new(grace: Duration) -> Self {
        Dispatch {
            pending: VecDeque::new(),
            open_commit: None,
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

impl Run {
    /// The dispatcher loop: hands what the reader delivers to the writers,
    /// takes their acknowledgements, watches the tasks and publishes the
    /// progress, until every writer has exited or the shutdown deadline
    /// passes.
    ///
    /// # Errors
    /// A record out of order ends the run at once (dropping the tasks aborts
    /// them); every other failure drains first (see [`Dispatch::fail`]).
    pub(super) async fn dispatch(
        &mut self,
        t: &mut Tasks,
        d: &mut Dispatch,
        cancel: &CancellationToken,
    ) -> Result<LoopEnd, PipelineError> {
        let mut ticker = interval(self.config.publish_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if d.reader_ended && !d.read_open && d.pending.is_empty() {
                d.completed = true;
            }
            let closing = d.closing();
            if closing && !t.queues.is_empty() {
                self.stop_dispatching(t, d);
            }
            // Borrowed apart from `t` and `d`, which the other branches use.
            let (queues, waiting) = (&t.queues, d.pending.front().map_or(0, |p| p.0));

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
                permit = async { queues[waiting].reserve().await }, if !d.pending.is_empty() && !closing => {
                    self.on_room(permit, t, d);
                }
                item = t.read.recv(), if d.read_open && d.pending.is_empty() && !closing => {
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
        let open = d.open_commit.take();
        let first = d
            .pending
            .iter()
            .map(|(_, parcel)| parcel.first_seq())
            .chain(open.as_ref().and_then(OpenCommit::first_seq))
            .min();
        if let Some(first) = first {
            let dropped = self.tracker.forget_from(first);
            debug!(dropped, "Dropping undispatched records");
        }
        d.pending.clear();
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

    /// Room in the queue of the first pending parcel's partition: hands it
    /// over, and the ones behind it that find room at once.
    fn on_room(
        &mut self,
        permit: Result<mpsc::Permit<'_, Parcel>, mpsc::error::SendError<()>>,
        t: &Tasks,
        d: &mut Dispatch,
    ) {
        match permit {
            Ok(permit) => {
                let (_, parcel) = d.pending.pop_front().expect("guarded by a pending parcel");
                permit.send(parcel);
                self.hand_over(t, d);
            }
            Err(_) => {
                // The writer is gone without a word: its task end says why (a
                // panic); never spin on its queue.
                let partition = d.pending.front().map_or(0, |p| p.0);
                let error = PipelineError::TaskEnded {
                    task: format!("writer {partition}"),
                    reason: "its queue closed while replicating".into(),
                };
                d.fail(error, Writers::Stop);
            }
        }
    }

    /// Hands the pending parcels over, in order, while their queues have
    /// room; the rest wait for [`Run::on_room`].
    fn hand_over(&mut self, t: &Tasks, d: &mut Dispatch) {
        while let Some(&(partition, _)) = d.pending.front() {
            let Ok(permit) = t.queues[partition].try_reserve() else {
                return;
            };
            let (_, parcel) = d.pending.pop_front().expect("a front parcel");
            permit.send(parcel);
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
                } else if d.open_commit.is_some() {
                    // The reader ended by itself: what it delivered is
                    // written, even a commit it promised more of.
                    warn!("The reader ended inside a commit");
                    self.close_commit(d);
                    self.hand_over(t, d);
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
    /// writer (or holds it until that writer's queue has room). A commit's
    /// records ([`Event::more_in_commit`]) are held until its last one, then
    /// handed over together.
    ///
    /// # Errors
    /// A record out of order.
    fn on_event(&mut self, event: Event, t: &Tasks, d: &mut Dispatch) -> Result<(), PipelineError> {
        self.check_order(&event)?;
        let seq = self.tracker.push(event.position, event.created);
        self.stats.read += 1;
        let commit = event.position.commit;
        if d.open_commit
            .as_ref()
            .is_some_and(|open| open.commit != commit)
        {
            // The reader promised more of the commit and went on: hand over
            // what there is rather than hold it.
            warn!(position = %event.position, "A commit ended without its last record");
            self.close_commit(d);
        }
        let more = event.more_in_commit;
        match event.kind {
            ChangeKind::Skip(reason) => {
                self.stats.skipped += 1;
                self.stats.skipped_by_reason.add(reason);
                self.tracker.complete(seq);
                self.on_processed();
                self.send_frontier(t.frontier.as_ref(), false);
            }
            _ => match self.partitions.choose(&event) {
                Ok(partition) => {
                    self.partitions.sent(seq, &event, partition);
                    if more || d.open_commit.is_some() {
                        d.open_commit
                            .get_or_insert_with(|| OpenCommit::new(commit))
                            .push(partition, seq, event);
                    } else {
                        d.pending.push_back((partition, Parcel::One(seq, event)));
                    }
                }
                Err(error) => {
                    // Not dispatched: the checkpoint stays before it.
                    self.tracker.forget_last();
                    warn!(%error, "Partitioner failed; draining");
                    d.fail(error, Writers::Finish);
                    return Ok(());
                }
            },
        }
        if !more {
            self.close_commit(d);
        }
        self.hand_over(t, d);
        Ok(())
    }

    /// Queues the open commit's records, one parcel per partition.
    fn close_commit(&mut self, d: &mut Dispatch) {
        if let Some(mut open) = d.open_commit.take() {
            d.pending.extend(open.close());
        }
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
        self.check_stall(d.read_open && d.pending.is_empty() && !d.closing() && t.read.is_empty());
        self.send_frontier(t.frontier.as_ref(), true);
        self.publish(&t.stored);
    }
}
