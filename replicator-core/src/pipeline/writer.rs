//! Partition writers: batch what their queue holds and write it through the
//! sink, retrying transient failures and hung calls.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::parcel::Parcel;
use super::PipelineConfig;
use crate::error::SinkError;
use crate::health::{short, HealthReporter};
use crate::model::{Event, Position};
use crate::traits::{Sink, WriteAck};

/// A batch acknowledgement or failure, from a writer back to the dispatcher.
pub(super) enum WriterMsg {
    Written {
        seqs: Vec<u64>,
        target: Option<Position>,
        partition: usize,
        bytes: u64,
        latency: Duration,
    },
    Retrying {
        partition: usize,
        attempts: u32,
        error: String,
    },
    Failed(SinkError),
}

/// The partition of a target stream: each stream always goes to one writer,
/// which keeps its order.
pub(super) fn partition_of(stream: &str, partitions: usize) -> usize {
    if partitions == 1 {
        return 0;
    }
    // A hash we own (std's `DefaultHasher` does not promise its algorithm):
    // the same stream maps to the same partition in every run and with every
    // Rust version, which keeps logs, metrics and tests comparable.
    (fnv1a64(stream.as_bytes()) % partitions as u64) as usize
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |hash, &b| (hash ^ u64::from(b)).wrapping_mul(PRIME))
}

/// When a write last succeeded, shared by the writers and the idle probe.
pub(super) type LastWrite = Arc<std::sync::Mutex<Instant>>;

/// Checks an idle target: every `idle_probe_interval`, when no write
/// succeeded for that long, [`Sink::check`] with the call deadline. Writes
/// that succeed prove the target works, so a probe failure is cleared by them
/// too.
pub(super) async fn probe_idle_target(
    sink: Arc<dyn Sink>,
    config: PipelineConfig,
    health: HealthReporter,
    last_write: LastWrite,
) {
    let every = config.idle_probe_interval;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let quiet = last_write
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        if quiet < every {
            health.success();
            continue;
        }
        match timeout(config.call_timeout, sink.check()).await {
            Ok(Ok(())) => health.success(),
            Ok(Err(error)) => health.failure(&error),
            Err(_) => health.failure(&format!(
                "the target did not answer a check within {} (no write for {})",
                short(config.call_timeout),
                short(quiet)
            )),
        }
    }
}

pub(super) struct Writer {
    pub(super) partition: usize,
    pub(super) sink: Arc<dyn Sink>,
    pub(super) acks: mpsc::UnboundedSender<WriterMsg>,
    pub(super) config: PipelineConfig,
    pub(super) stop: CancellationToken,
    pub(super) health: HealthReporter,
    pub(super) last_write: LastWrite,
}

/// A batch taken from a writer's queue.
struct Batch {
    seqs: Vec<u64>,
    events: Vec<Event>,
    bytes: usize,
}

/// What a pipelined write gives back: its batch, the outcome, how long it took.
type Written = (Batch, Result<WriteAck, SinkError>, Duration);

impl Writer {
    pub(super) async fn run(self, mut queue: mpsc::Receiver<Parcel>) {
        let depth = self.sink.pipelined_writes().max(1);
        let mut carry: Option<Parcel> = None;
        if depth > 1 {
            return self.run_pipelined(queue, depth).await;
        }
        loop {
            let first = match carry.take() {
                Some(item) => item,
                None => match queue.recv().await {
                    Some(item) => item,
                    None => return,
                },
            };
            let batch = self.take_batch(first, &mut queue, &mut carry);
            let Some((target, latency)) = self.write(&batch.events).await else {
                return;
            };
            if !self.acknowledge(batch, target, latency) {
                return;
            }
        }
    }

    /// A batch: `first` and what the queue holds behind it, up to the
    /// batch limits; a parcel that does not fit is left in `carry`.
    fn take_batch(
        &self,
        first: Parcel,
        queue: &mut mpsc::Receiver<Parcel>,
        carry: &mut Option<Parcel>,
    ) -> Batch {
        let mut batch = Batch {
            seqs: Vec::with_capacity(first.len()),
            events: Vec::with_capacity(first.len()),
            bytes: 0,
        };
        self.add_to_batch(&mut batch, first, queue, carry);
        batch
    }

    /// Reports a written batch; false when nobody listens any more.
    fn acknowledge(&self, batch: Batch, target: Option<Position>, latency: Duration) -> bool {
        let written = WriterMsg::Written {
            seqs: batch.seqs,
            target,
            partition: self.partition,
            bytes: batch.bytes as u64,
            latency,
        };
        self.acks.send(written).is_ok()
    }

    /// [`Writer::run`] for a sink that takes up to `depth` writes at once in
    /// order ([`Sink::pipelined_writes`]): each write is started (its future
    /// polled once) before the next is, in batch order. A batch starts when
    /// nothing is in flight, or when it is full: while writes are in flight
    /// the next batch fills up instead of going out small. After a failure
    /// the writes in flight are let finish, then the failed batches are
    /// written again one at a time, in order, before the pipeline goes on.
    async fn run_pipelined(self, mut queue: mpsc::Receiver<Parcel>, depth: usize) {
        // Set by a write that fails, as it completes: an earlier write's
        // result may still be awaited in order, and a batch started now
        // would pass the failed one (the sink has ended its call; this one
        // would go on a new call) before it is written again.
        let failed = Arc::new(AtomicBool::new(false));
        let mut carry: Option<Parcel> = None;
        let mut building: Option<Batch> = None;
        let mut in_flight: FuturesOrdered<BoxFuture<'static, Written>> = FuturesOrdered::new();
        let mut open = true;
        loop {
            if building.is_none() {
                if let Some(first) = carry.take() {
                    building = Some(self.take_batch(first, &mut queue, &mut carry));
                }
            }
            let full = building
                .as_ref()
                .is_some_and(|b| b.events.len() >= self.config.max_batch_events || carry.is_some());
            if in_flight.len() < depth
                && !failed.load(Ordering::SeqCst)
                && (full || (in_flight.is_empty() && building.is_some()))
            {
                if let Some(batch) = building.take() {
                    let mut write = self.start(batch, &failed);
                    // Started now, in batch order: the sink fixes the
                    // batch's place during this first poll.
                    let write: BoxFuture<'static, Written> = match futures::poll!(&mut write) {
                        std::task::Poll::Ready(done) => Box::pin(std::future::ready(done)),
                        std::task::Poll::Pending => write,
                    };
                    in_flight.push_back(write);
                    continue;
                }
            }
            if !open && in_flight.is_empty() && building.is_none() && carry.is_none() {
                return;
            }
            let next = tokio::select! {
                biased;
                done = in_flight.next(), if !in_flight.is_empty() => Err(done),
                item = queue.recv(), if open && !full => Ok(item),
            };
            match next {
                Ok(Some(item)) => match building.as_mut() {
                    None => building = Some(self.take_batch(item, &mut queue, &mut carry)),
                    Some(batch) => self.add_to_batch(batch, item, &mut queue, &mut carry),
                },
                Ok(None) => open = false,
                Err(Some((batch, Ok(ack), latency))) => {
                    self.health.success();
                    *self.last_write.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    if !self.acknowledge(batch, ack.target_position, latency) {
                        return;
                    }
                }
                Err(Some((batch, Err(error), _))) => {
                    if !self.recover(batch, error, &mut in_flight).await {
                        return;
                    }
                    failed.store(false, Ordering::SeqCst);
                }
                Err(None) => unreachable!("polled only while writes are in flight"),
            }
        }
    }

    /// Adds `item` and what the queue holds behind it to `batch`, up to the
    /// batch limits; a parcel that does not fit is left in `carry`. An empty
    /// batch takes any parcel whole: a commit is never split.
    fn add_to_batch(
        &self,
        batch: &mut Batch,
        item: Parcel,
        queue: &mut mpsc::Receiver<Parcel>,
        carry: &mut Option<Parcel>,
    ) {
        let config = &self.config;
        let mut next = Some(item);
        while let Some(parcel) = next.take() {
            let bytes = parcel.payload_len();
            if !batch.events.is_empty()
                && (batch.bytes + bytes > config.max_batch_bytes
                    || batch.events.len() + parcel.len() > config.max_batch_events)
            {
                *carry = Some(parcel);
                return;
            }
            batch.bytes += bytes;
            parcel.unpack(&mut batch.seqs, &mut batch.events);
            if batch.events.len() < config.max_batch_events {
                next = queue.try_recv().ok();
            }
        }
    }

    /// After `batch` failed with `error`: lets the writes in flight finish,
    /// then writes the failed batches again, one at a time, in order. False
    /// when the writer must stop (a permanent error, reported, or stopped).
    async fn recover(
        &self,
        batch: Batch,
        error: SinkError,
        in_flight: &mut FuturesOrdered<BoxFuture<'static, Written>>,
    ) -> bool {
        if !error.is_transient() {
            self.health.fatal(&error);
            let _ = self.acks.send(WriterMsg::Failed(error));
            return false;
        }
        self.health.failure(&error);
        let _ = self.acks.send(WriterMsg::Retrying {
            partition: self.partition,
            attempts: 1,
            error: error.to_string(),
        });
        let mut failed = vec![batch];
        while let Some((batch, outcome, latency)) = in_flight.next().await {
            match outcome {
                Ok(ack) => {
                    if !self.acknowledge(batch, ack.target_position, latency) {
                        return false;
                    }
                }
                Err(error) if error.is_transient() => failed.push(batch),
                Err(error) => {
                    self.health.fatal(&error);
                    let _ = self.acks.send(WriterMsg::Failed(error));
                    return false;
                }
            }
        }
        for batch in failed {
            let Some((target, latency)) = self.write(&batch.events).await else {
                return false;
            };
            if !self.acknowledge(batch, target, latency) {
                return false;
            }
        }
        true
    }

    /// One attempt at writing `batch`, with the call deadline, as a future
    /// that owns what it needs.
    fn start(&self, batch: Batch, failed: &Arc<AtomicBool>) -> BoxFuture<'static, Written> {
        let sink = Arc::clone(&self.sink);
        let call_timeout = self.config.call_timeout;
        let failed = Arc::clone(failed);
        Box::pin(async move {
            let started = Instant::now();
            let outcome = match timeout(call_timeout, sink.write(&batch.events)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(timed_out(&batch.events, call_timeout)),
            };
            if outcome.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            (batch, outcome, started.elapsed())
        })
    }

    /// Writes one batch until it succeeds; `None` when stopped or failed
    /// permanently (reported through `acks`).
    async fn write(&self, batch: &[Event]) -> Option<(Option<Position>, Duration)> {
        let mut backoff = self.config.backoff();
        loop {
            let started = Instant::now();
            let outcome = match timeout(self.config.call_timeout, self.sink.write(batch)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(timed_out(batch, self.config.call_timeout)),
            };
            match outcome {
                Ok(ack) => {
                    self.health.success();
                    *self.last_write.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
                    return Some((ack.target_position, started.elapsed()));
                }
                Err(error) if error.is_transient() => {
                    self.health.failure(&error);
                    let delay = backoff.next_delay();
                    let _ = self.acks.send(WriterMsg::Retrying {
                        partition: self.partition,
                        attempts: backoff.attempts(),
                        error: error.to_string(),
                    });
                    tokio::select! {
                        _ = self.stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => {
                    self.health.fatal(&error);
                    let _ = self.acks.send(WriterMsg::Failed(error));
                    return None;
                }
            }
        }
    }
}

/// The error of a write that did not finish within the call deadline.
fn timed_out(batch: &[Event], call_timeout: Duration) -> SinkError {
    SinkError::transient(format!(
        "the target did not answer a write of {} events (first: stream {}, position {}) within {}",
        batch.len(),
        batch[0].target_stream(),
        batch[0].position,
        short(call_timeout)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // Pinned: a change of hash moves streams between partitions.
        assert_eq!(partition_of("foobar", 7), 6);
    }

    #[test]
    fn partitioning_is_stable_and_in_range() {
        for p in 1..8 {
            let a = partition_of("orders-42", p);
            assert!(a < p);
            assert_eq!(a, partition_of("orders-42", p));
        }
    }
}
