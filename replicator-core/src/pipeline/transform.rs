//! The transform stage between the reader and the dispatcher, and the
//! partition choice of the dispatcher.
//!
//! Each configured [`Transform`] is one `buffered` step over the reader's
//! stream: up to [`Transform::concurrency`] records are in its
//! [`Transform::apply`] at once, but the step hands them on in source order.
//! So the dispatcher sees the records exactly as without transforms (same
//! positions, same order), and the tracker and checkpoint logic are unchanged.
//! Everything runs in the reader task: a full buffer towards the dispatcher
//! stops the stage as it stops the reader (backpressure), and stopping the
//! reader drops the records still in a transform (they are re-read next run).

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::{BoxStream, StreamExt};
use tokio::time::timeout;

use super::writer::partition_of;
use super::PipelineConfig;
use crate::error::{PipelineError, TransformError};
use crate::health::{short, HealthReporter};
use crate::model::Event;
use crate::traits::EventStream;
use crate::transform::{Partitioner, Transform};

/// What the reader task hands the dispatcher: a record, or the error that
/// ends the stream (the reader's, or a transform's permanent one).
pub(super) type Item = Result<Event, PipelineError>;

/// The reader's stream with every transform applied in order. Each
/// transform reports to its own reporter of `healths` (one per transform,
/// merged into the `transform` component): one transform's successes must
/// not hide another's lasting failure.
pub(super) fn transformed(
    stream: EventStream,
    transforms: &[Arc<dyn Transform>],
    config: &PipelineConfig,
    healths: &[HealthReporter],
) -> BoxStream<'static, Item> {
    let mut items: BoxStream<'static, Item> = stream
        .map(|item| {
            item.map_err(|source| PipelineError::Reader {
                last_processed: None,
                source,
            })
        })
        .boxed();
    for (transform, health) in transforms.iter().zip(healths) {
        let concurrency = transform.concurrency().max(1);
        let transform = transform.clone();
        let config = config.clone();
        let health = health.clone();
        items = items
            .map(move |item| {
                let transform = transform.clone();
                let config = config.clone();
                let health = health.clone();
                async move {
                    match item {
                        // Skipped records (system events, links, or left out by
                        // an earlier transform) pass untouched.
                        Ok(event) if event.kind.is_write() => {
                            apply(&*transform, event, &config, &health).await
                        }
                        other => other,
                    }
                }
            })
            .buffered(concurrency)
            .boxed();
    }
    items
}

/// One record through one transform: transient errors and timeouts retried
/// with backoff (the record held, the `transform` component failing), a
/// permanent error ends the stream naming the record.
async fn apply(
    transform: &dyn Transform,
    event: Event,
    config: &PipelineConfig,
    health: &HealthReporter,
) -> Item {
    let mut backoff = config.backoff();
    loop {
        let outcome = match timeout(config.call_timeout, transform.apply(event.clone())).await {
            Ok(outcome) => outcome,
            Err(_) => Err(TransformError::transient(format!(
                "no answer within {}",
                short(config.call_timeout)
            ))),
        };
        match outcome {
            Ok(mut out) => {
                health.success();
                // The checkpoint is taken from the position, the sink
                // recognises replays by id, and a commit stays one batch:
                // whatever the transform returned, they stay the original's.
                out.id = event.id;
                out.position = event.position;
                out.more_in_commit = event.more_in_commit;
                return Ok(out);
            }
            Err(error) if error.is_transient() => {
                health.failure(&format_args!(
                    "{} on event {} of `{}` (revision {}, position {}): {error}",
                    transform.name(),
                    event.id,
                    event.stream,
                    event.revision,
                    event.position
                ));
                backoff.wait().await;
            }
            Err(error) => {
                health.fatal(&format_args!(
                    "{} on event {} of `{}` (revision {}, position {}): {error}",
                    transform.name(),
                    event.id,
                    event.stream,
                    event.revision,
                    event.position
                ));
                return Err(failed(&event, error));
            }
        }
    }
}

/// The permanent error of a transform or partitioner on `event`.
/// `last_processed` is filled in when the run ends.
pub(super) fn failed(event: &Event, error: TransformError) -> PipelineError {
    PipelineError::Transform {
        stream: event.stream.clone(),
        revision: event.revision,
        event_id: event.id,
        position: event.position,
        last_processed: None,
        source: Box::new(error),
    }
}

/// Chooses each record's partition.
///
/// Without a partitioner the key is the target stream, so a stream always
/// maps to the same partition. A partitioner may give one stream's records
/// different keys; a stream whose records are still in flight then stays on
/// the partition it is on, so its records never overtake each other (and the
/// sink's exactly-once, which relies on each stream being written in order,
/// holds). The map of streams in flight is bounded by the records in flight.
pub(super) struct Partitions {
    count: usize,
    partitioner: Option<Arc<dyn Partitioner>>,
    /// Target stream → (partition, records in flight); only with a partitioner.
    in_flight: HashMap<String, (usize, usize)>,
    /// Sequence number → target stream of each record in flight.
    streams: HashMap<u64, String>,
}

impl Partitions {
    pub(super) fn new(count: usize, partitioner: Option<Arc<dyn Partitioner>>) -> Self {
        Partitions {
            count: count.max(1),
            partitioner,
            in_flight: HashMap::new(),
            streams: HashMap::new(),
        }
    }

    /// The partition of `event`.
    ///
    /// # Errors
    /// The partitioner's permanent error, naming the record.
    pub(super) fn choose(&self, event: &Event) -> Result<usize, PipelineError> {
        let stream = event.target_stream();
        let Some(partitioner) = &self.partitioner else {
            return Ok(partition_of(stream, self.count));
        };
        if let Some(&(partition, _)) = self.in_flight.get(stream) {
            return Ok(partition);
        }
        let key = partitioner.key(event).map_err(|e| failed(event, e))?;
        Ok(partition_of(key.as_deref().unwrap_or(stream), self.count))
    }

    /// `event` (sequence number `seq`) was handed to `partition`.
    pub(super) fn sent(&mut self, seq: u64, event: &Event, partition: usize) {
        if self.partitioner.is_none() {
            return;
        }
        let stream = event.target_stream();
        match self.in_flight.get_mut(stream) {
            Some(entry) => entry.1 += 1,
            None => {
                self.in_flight.insert(stream.to_owned(), (partition, 1));
            }
        }
        self.streams.insert(seq, stream.to_owned());
    }

    /// The record `seq` was written.
    pub(super) fn written(&mut self, seq: u64) {
        if self.partitioner.is_none() {
            return;
        }
        let Some(stream) = self.streams.remove(&seq) else {
            return;
        };
        if let Some(entry) = self.in_flight.get_mut(&stream) {
            entry.1 -= 1;
            if entry.1 == 0 {
                self.in_flight.remove(&stream);
            }
        }
    }

    /// Target streams with records in flight (for tests of the bound).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ChangeKind, Position};

    fn event(stream: &str, n: u64) -> Event {
        Event::new(stream, "E", bytes::Bytes::new())
            .with_revision(n)
            .with_position(Position::at(n))
    }

    /// Keys each record by its revision: one stream's records get many keys.
    struct ByRevision;
    impl Partitioner for ByRevision {
        fn key(&self, event: &Event) -> Result<Option<String>, TransformError> {
            Ok(Some(event.revision.to_string()))
        }
    }

    #[test]
    fn a_stream_in_flight_stays_on_its_partition_and_is_forgotten_when_written() {
        let mut p = Partitions::new(8, Some(Arc::new(ByRevision)));
        let first = event("orders", 0);
        let at = p.choose(&first).unwrap();
        p.sent(0, &first, at);
        // Revisions 1..20 have other keys, most of them on other partitions,
        // but the stream has a record in flight.
        for n in 1..20 {
            let e = event("orders", n);
            assert_eq!(p.choose(&e).unwrap(), at, "revision {n}");
            p.sent(n, &e, at);
        }
        assert_eq!(p.tracked(), 1);
        for n in 0..20 {
            p.written(n);
        }
        assert_eq!(p.tracked(), 0, "memory is bounded by records in flight");
        // Nothing in flight: the key decides again.
        let chosen: std::collections::HashSet<usize> = (20..40)
            .map(|n| p.choose(&event("orders", n)).unwrap())
            .collect();
        assert!(chosen.len() > 1, "{chosen:?}");
    }

    #[test]
    fn without_a_partitioner_the_target_stream_decides() {
        let p = Partitions::new(8, None);
        let mut meta = event("$$orders", 0);
        meta.kind = ChangeKind::StreamMetadata;
        assert_eq!(
            p.choose(&meta).unwrap(),
            p.choose(&event("orders", 1)).unwrap()
        );
        assert_eq!(
            p.choose(&event("orders", 1)).unwrap(),
            partition_of("orders", 8)
        );
    }
}
