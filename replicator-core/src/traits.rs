//! The three extension points: where events come from, where they go, and where
//! progress is kept.

use async_trait::async_trait;
use futures::stream::BoxStream;

use std::sync::Arc;

use crate::error::{CheckpointError, ReaderError, SinkError};
use crate::health::HealthReporter;
use crate::model::{Checkpoint, Event, Position, StartFrom};

/// The events a [`Reader`] hands on, in source order.
pub type EventStream = BoxStream<'static, Result<Event, ReaderError>>;

/// Reads the source's `$all` in order.
///
/// # Contract
/// - [`Reader::read`] returns the source's records in `$all` order: strictly
///   after the position for [`StartFrom::After`], at and after it for
///   [`StartFrom::At`]. Positions must strictly increase; the pipeline stops
///   with [`crate::PipelineError::OutOfOrder`] otherwise.
/// - Catch-up then live: the stream stays open and yields new records as the
///   source writes them. It ends (`None`) only when the reader is configured to
///   stop once caught up.
/// - Every record is handed on, including those that need no write (their
///   [`crate::ChangeKind::Skip`] kind): they still advance the checkpoint.
/// - Transient failures (the source restarting, a dropped connection) are the
///   reader's to handle: reconnect and resume after the last record handed on,
///   with neither gap nor repeat. A yielded `Err` is final: the pipeline drains
///   what it has, stores its checkpoint and stops with that error.
/// - Dropping the stream stops reading; it is how the pipeline cancels.
/// - Backpressure: the pipeline polls the stream only when it has room.
/// - Health (optional): a reader that retries transient failures itself should
///   tell the pipeline, or the pipeline cannot tell "the source is down" from
///   "the source is idle". [`Reader::report_health_to`] hands it the source's
///   [`HealthReporter`]: call [`HealthReporter::failure`] on each failed attempt
///   and [`HealthReporter::success`] once reading works again. The reporter
///   does the logging of a lasting failure (the first at WARN, then one line a
///   minute), so the reader need not log each retry.
/// - Head (optional): [`Reader::head_probe`] lets the pipeline ask where the
///   source's `$all` ends, independently of the stream, every few seconds. With
///   it the pipeline reports the gap, percent, ETA and lag, and notices a
///   stream that stopped delivering while the source has more (a hung
///   subscription): the source turns unhealthy.
#[async_trait]
pub trait Reader: Send {
    /// Starts reading from `from`.
    ///
    /// # Errors
    /// When the source cannot be read at all (bad address, bad credentials).
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError>;

    /// Receives the reporter of the source's health, before [`Reader::read`].
    /// The default ignores it.
    fn report_health_to(&mut self, health: HealthReporter) {
        let _ = health;
    }

    /// A probe of the source's `$all` head, usable while the stream runs. The
    /// default has none.
    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        None
    }
}

/// A boxed reader is a reader: one chosen at run time (a gRPC or a TCP source)
/// goes wherever a [`Reader`] does.
#[async_trait]
impl<R: Reader + ?Sized> Reader for Box<R> {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        (**self).read(from).await
    }

    fn report_health_to(&mut self, health: HealthReporter) {
        (**self).report_health_to(health);
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        (**self).head_probe()
    }
}

/// Asks the source where its `$all` ends. See [`Reader::head_probe`].
///
/// # Contract
/// - Returns the position of the last record of `$all`, or `None` when `$all`
///   is empty. It must not disturb the reader's stream (use its own request).
/// - The pipeline calls it every [`crate::PipelineConfig::head_interval`] with
///   a deadline of [`crate::PipelineConfig::call_timeout`]; an error or a
///   timeout marks the source unhealthy until a probe succeeds.
#[async_trait]
pub trait HeadProbe: Send + Sync {
    /// The position of the last record of the source's `$all`.
    ///
    /// # Errors
    /// When the source cannot be asked.
    async fn head(&self) -> Result<Option<Position>, ReaderError>;
}

/// What a sink reports for a written batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteAck {
    /// The highest target `$all` position the batch produced, when the target
    /// has such positions. Stored in the checkpoint for the cutover.
    pub target_position: Option<Position>,
}

/// Writes events to the target.
///
/// # Contract
/// - The pipeline hashes each event's [`Event::target_stream`] onto one of
///   [`Sink::max_in_flight`] partitions and calls [`Sink::write`] at most once at
///   a time per partition, so there may be that many calls in flight at once,
///   each with a batch of whole events in source order. Every change of one
///   target stream goes through the same partition, in source order.
/// - A sink must apply a batch's changes of any one stream in the order given.
///   Changes of different streams in a batch may be applied in any order or
///   concurrently, unless the sink keeps the source's order (below).
/// - **Order across streams**: with [`Sink::max_in_flight`] 1, there is one
///   writer: batches come in source order, each after the previous one was
///   acknowledged. A sink that applies each batch's changes in the order given
///   (each change after the one before it, as the target orders writes)
///   leaves the target with the source's order across streams too; the
///   EventStoreDB sink does so by default.
/// - `Ok` means every change of the batch is durably written. The pipeline then
///   counts the batch as done and may store a checkpoint past it.
/// - `Err` with [`SinkError::is_transient`] makes the pipeline retry the same
///   batch, with backoff, until it succeeds or the pipeline is cancelled. A
///   permanent error stops the pipeline after the checkpoint of everything
///   already acknowledged is stored.
/// - **Replays**: after a transient error, a crash or a restart from an older
///   checkpoint, a sink receives changes it has already written (part of a batch,
///   or whole batches). A sink that makes a replay a no-op (for EventStoreDB:
///   expected revisions and event ids) gives exactly-once results; one that does
///   not duplicates at most what lies after the stored checkpoint.
/// - Deadlines and cancellation: a `write` that takes longer than
///   [`crate::PipelineConfig::call_timeout`] is dropped and retried as after a
///   transient error (a hung target is never waited on forever), and the
///   pipeline may drop a `write` future at shutdown once its deadline passes.
///   Either way what the dropped call wrote is replayed.
/// - Health: the pipeline reports the target's health from the outcome of
///   each `write`; a sink need do nothing for it.
/// - Start-up: [`Sink::check`] is called once before anything is read, so a
///   target that cannot work (bad credentials, no such host) stops the run in
///   seconds instead of after the first read.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// Writes one batch. `batch` is never empty.
    ///
    /// # Errors
    /// A [`SinkError`] whose kind says whether retrying can help; its message
    /// names the stream and event that failed.
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError>;

    /// How many [`Sink::write`] calls may be in flight at once (at least 1).
    fn max_in_flight(&self) -> usize {
        1
    }

    /// How many [`Sink::write`] calls one writer may have in flight at once,
    /// in order (at least 1; the default 1: each call after the last one
    /// returned). With more, a writer starts each call, polling its future
    /// once, only after it started the previous one, in batch order; a sink
    /// that keeps order must fix a batch's place among the target's writes
    /// during that first poll (take a turn in a fair queue, or send it). When
    /// a call fails, the writer lets the others in flight finish and then
    /// writes the failed batches again, one at a time, in order.
    fn pipelined_writes(&self) -> usize {
        1
    }

    /// Checks that the target can be reached and written, before replication
    /// starts. A permanent error stops the run; a transient one is retried
    /// (the target reported unhealthy meanwhile). The default does nothing.
    ///
    /// # Errors
    /// When the target cannot be used.
    async fn check(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Keeps the replication progress between runs.
///
/// # Contract
/// - [`CheckpointStore::load`] returns what the last successful
///   [`CheckpointStore::store`] stored, or `None` when nothing is stored (or after
///   [`CheckpointStore::delete`]). An unreadable or corrupt checkpoint is an
///   error naming where it is, never `None`: that would restart the replication
///   from the beginning and duplicate everything.
/// - `store` is atomic: after a crash, `load` gives either the old or the new
///   checkpoint, never a mix. The pipeline never stores a position behind one it
///   stored before in the same run.
/// - Transient failures may be retried inside the store, briefly; a transient
///   error returned by `store` makes the pipeline keep the position and try
///   again with backoff; a permanent one stops the pipeline. Replication does
///   not wait for the store: it goes on while the store is retried, which only
///   widens what a crash would replay. The pipeline reports the store's health
///   from each call's outcome and gives each call
///   [`crate::PipelineConfig::call_timeout`].
/// - Start-up: [`CheckpointStore::check`] is called before anything is read,
///   so a store that cannot be written fails the run before it replicates.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The stored checkpoint, if any.
    ///
    /// # Errors
    /// When the store cannot be read or holds something that is not a checkpoint.
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError>;

    /// Replaces the stored checkpoint.
    ///
    /// # Errors
    /// When the checkpoint could not be made durable.
    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError>;

    /// Removes the stored checkpoint, so the next run starts from scratch (or
    /// from a seed).
    ///
    /// # Errors
    /// When the store cannot be changed.
    async fn delete(&self) -> Result<(), CheckpointError>;

    /// Checks that `store` can work (the file's directory exists and is
    /// writable, the database accepts writes) without changing what is
    /// stored. The default does nothing.
    ///
    /// # Errors
    /// A permanent error when the store cannot work as configured.
    async fn check(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
}

#[async_trait]
impl<T: CheckpointStore + ?Sized> CheckpointStore for std::sync::Arc<T> {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        (**self).load().await
    }
    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        (**self).store(checkpoint).await
    }
    async fn delete(&self) -> Result<(), CheckpointError> {
        (**self).delete().await
    }
    async fn check(&self) -> Result<(), CheckpointError> {
        (**self).check().await
    }
}

#[async_trait]
impl<T: Sink + ?Sized> Sink for std::sync::Arc<T> {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        (**self).write(batch).await
    }
    fn max_in_flight(&self) -> usize {
        (**self).max_in_flight()
    }
    fn pipelined_writes(&self) -> usize {
        (**self).pipelined_writes()
    }
    async fn check(&self) -> Result<(), SinkError> {
        (**self).check().await
    }
}
