//! Starting the tasks of one run, and the reader task's loop.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::CheckpointError;
use crate::pipeline::checkpointer::{Checkpointer, Frontier, Stored};
use crate::pipeline::head::{poll_head, HeadSample};
use crate::pipeline::parcel::Parcel;
use crate::pipeline::transform::{transformed, Item};
use crate::pipeline::writer::{probe_idle_target, LastWrite, Writer, WriterMsg};
use crate::traits::{EventStream, Sink};

use super::Run;

/// How a spawned task ended.
pub(super) enum TaskEnd {
    Reader(ReaderEnd),
    Writer,
    Head,
    Probe,
    Checkpointer(Result<(), CheckpointError>),
}

/// How the reader task ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ReaderEnd {
    /// The stream ended: caught up, not running continuously.
    Ended,
    /// The stream yielded its final error, or the pipeline stopped reading.
    Stopped,
}

/// The tasks of one run, and the ends of their channels the dispatcher holds.
pub(super) struct Tasks {
    /// Dropping it (a crash, or the caller dropping the run) aborts them all.
    pub(super) set: JoinSet<TaskEnd>,
    pub(super) names: HashMap<Id, String>,
    /// To the checkpointer; `None` once the final frontier is handed over.
    pub(super) frontier: Option<watch::Sender<Option<Frontier>>>,
    /// From the checkpointer: what it stored.
    pub(super) stored: watch::Receiver<Stored>,
    pub(super) head: watch::Receiver<HeadSample>,
    pub(super) head_poller: Option<AbortHandle>,
    pub(super) idle_probe: AbortHandle,
    pub(super) read: mpsc::Receiver<Item>,
    pub(super) stop_reading: CancellationToken,
    pub(super) acks: mpsc::UnboundedReceiver<WriterMsg>,
    /// One per writer; cleared when dispatching stops, so that the writers
    /// empty them and exit.
    pub(super) queues: Vec<mpsc::Sender<Parcel>>,
}

impl Run {
    /// Starts the checkpointer, the head poller (with a probe), the reader,
    /// the idle-target probe and one writer per partition.
    pub(super) fn spawn(
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
