//! The transform stage and the partitioner: order kept with several records
//! in a transform, transient errors retried and reported, a permanent error
//! naming the record with the checkpoint just before it, dropped records
//! checkpointed, and a stream kept on its partition while it has records in
//! flight whatever keys a partitioner gives.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{
    ChangeKind, Event, Partitioner, Pipeline, PipelineConfig, PipelineError, Position, SkipReason,
    Transform, TransformError,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::support::{event, source_with, wait_for, Fault, ScriptedSink, WAIT};

/// A part whose state the test keeps a handle on.
struct Shared<T>(Arc<T>);

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

fn config() -> PipelineConfig {
    PipelineConfig {
        checkpoint_after: 10,
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        call_timeout: Duration::from_secs(5),
        publish_interval: Duration::from_millis(20),
        shutdown_deadline: Duration::from_secs(5),
        ..PipelineConfig::default()
    }
}

/// Appends `-v2` to the event type, up to `concurrency` records at once;
/// counts the most records seen in `apply` at once. The first record stays in
/// `apply` until another has gone through it (or [`WAIT`] has passed), so with
/// concurrency two or more records certainly overlap and finish out of source
/// order. Returns a changed id and position, which the pipeline must undo.
struct SlowRename {
    concurrency: usize,
    current: AtomicUsize,
    most: AtomicUsize,
    calls: AtomicUsize,
    /// Records that have gone through `apply`.
    done: tokio::sync::watch::Sender<usize>,
}

#[async_trait]
impl Transform for Shared<SlowRename> {
    fn name(&self) -> String {
        "slow rename".into()
    }
    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        /// Leaves `current` however the call ends, a timed-out one included.
        struct Inside<'a>(&'a AtomicUsize);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let first = self.calls.fetch_add(1, Ordering::SeqCst) == 0;
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        let inside = Inside(&self.current);
        self.most.fetch_max(now, Ordering::SeqCst);
        if first {
            // Without concurrency no other record comes in: the wait ends
            // after `WAIT` and the test fails on `most`, rather than hanging.
            let mut done = self.done.subscribe();
            let _ = tokio::time::timeout(WAIT, done.wait_for(|n| *n >= 1)).await;
        }
        drop(inside);
        self.done.send_modify(|n| *n += 1);
        event.event_type.push_str("-v2");
        event.id = Uuid::new_v4();
        event.position = Position::START;
        Ok(event)
    }
    fn concurrency(&self) -> usize {
        self.concurrency
    }
}

#[tokio::test]
async fn records_go_through_the_transforms_concurrently_and_are_written_in_source_order() {
    let source = source_with(400, 3);
    // System events are not passed to transforms.
    source.push(event(
        "$stats",
        0,
        100 + 400 * 37,
        ChangeKind::Skip(SkipReason::SystemEvent),
    ));
    let sink = MemorySink::new().with_partitions(2);
    let store = MemoryCheckpointStore::new();
    let rename = Arc::new(SlowRename {
        concurrency: 8,
        current: AtomicUsize::new(0),
        most: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
        done: tokio::sync::watch::Sender::new(0),
    });
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        // Longer than the first record's wait: it is never timed out and
        // retried, however slow the machine.
        call_timeout: WAIT * 3,
        ..config()
    })
    .transform(Shared(rename.clone()))
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!((summary.written, summary.skipped), (400, 1));
    assert_eq!(rename.calls.load(Ordering::SeqCst), 400);
    let most = rename.most.load(Ordering::SeqCst);
    assert!(
        (2..=8).contains(&most),
        "{most} records in the transform at once"
    );
    for s in 0..3 {
        let stream = format!("s-{s}");
        let want: Vec<(Uuid, Position)> = source
            .events()
            .into_iter()
            .filter(|e| e.stream == stream)
            .map(|e| (e.id, e.position))
            .collect();
        let got = sink.stream(&stream);
        assert!(got.iter().all(|e| e.event_type == "OrderPlaced-v2"));
        let got: Vec<(Uuid, Position)> = got.iter().map(|e| (e.id, e.position)).collect();
        assert_eq!(
            got, want,
            "{stream}: source order, original ids and positions"
        );
    }
    assert_eq!(store.current().unwrap().source, source.head().unwrap());
}

/// Fails transiently while `down` is set.
struct Flaky {
    down: AtomicBool,
    attempts: AtomicUsize,
}

#[async_trait]
impl Transform for Shared<Flaky> {
    fn name(&self) -> String {
        "flaky service".into()
    }
    async fn apply(&self, event: Event) -> Result<Event, TransformError> {
        if self.down.load(Ordering::SeqCst) {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            return Err(TransformError::transient("503 Service Unavailable"));
        }
        Ok(event)
    }
}

#[tokio::test]
async fn a_transient_transform_error_is_retried_and_reported_until_it_recovers() {
    let source = source_with(50, 2);
    let sink = MemorySink::new();
    let store = MemoryCheckpointStore::new();
    let flaky = Arc::new(Flaky {
        down: AtomicBool::new(true),
        attempts: AtomicUsize::new(0),
    });
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(config())
    .transform(Shared(flaky.clone()))
    .build();
    let mut progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));

    let p = wait_for(&mut progress, "the transform reported failing", |p| {
        p.components.transform.attempts >= 3
    })
    .await;
    let error = p.components.transform.last_error.clone().unwrap();
    assert!(error.contains("flaky service"), "{error}");
    assert!(error.contains("503"), "{error}");
    assert!(error.contains("`s-0`"), "names the stream: {error}");
    assert_eq!(p.written, 0, "the record is held, not skipped");
    assert!(store.current().is_none());

    flaky.down.store(false, Ordering::SeqCst);
    let p = wait_for(&mut progress, "everything written after recovery", |p| {
        p.written == 50 && p.components.transform.healthy
    })
    .await;
    assert!(p.components.transform.failures_total >= 3);
    cancel.cancel();
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.written, 50);
    assert_eq!(sink.log().len(), 50, "each event once");
    assert_eq!(store.current().unwrap().source, source.head().unwrap());
}

/// Throws on the record at `bad`.
struct Throws {
    bad: Position,
}

#[async_trait]
impl Transform for Throws {
    fn name(&self) -> String {
        "js transform t.js".into()
    }
    async fn apply(&self, event: Event) -> Result<Event, TransformError> {
        if event.position == self.bad {
            return Err(TransformError::permanent(
                "TypeError: x is undefined (line 3)",
            ));
        }
        Ok(event)
    }
    fn concurrency(&self) -> usize {
        4
    }
}

#[tokio::test]
async fn a_permanent_transform_error_stops_the_run_naming_the_record_with_everything_before_checkpointed(
) {
    let source = source_with(300, 4);
    let events = source.events();
    let bad = events[200].clone();
    let before = events[199].position;
    let sink = MemorySink::new().with_partitions(3);
    let store = MemoryCheckpointStore::new();
    let error = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        // Only the final store can cover the record before the bad one.
        checkpoint_after: 1000,
        checkpoint_interval: Duration::from_secs(3600),
        ..config()
    })
    .transform(Throws { bad: bad.position })
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    let PipelineError::Transform {
        stream,
        revision,
        event_id,
        position,
        last_processed,
        ..
    } = &error
    else {
        panic!("expected a transform error, got {error:?}");
    };
    assert_eq!(
        (stream, *revision, *event_id, *position),
        (&bad.stream, bad.revision, bad.id, bad.position)
    );
    assert_eq!(*last_processed, Some(before));
    let text = replicator_core_error_chain(&error);
    for word in [bad.stream.as_str(), &bad.id.to_string(), "line 3"] {
        assert!(text.contains(word), "{text} should name {word}");
    }
    assert_eq!(store.current().unwrap().source, before);
    assert_eq!(sink.log().len(), 200, "everything before it, nothing after");
    assert!(sink.log().iter().all(|e| e.position < bad.position));
}

fn replicator_core_error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Drops every record whose data's number is odd; counts its calls.
struct DropOdd {
    calls: AtomicUsize,
}

#[async_trait]
impl Transform for Shared<DropOdd> {
    fn name(&self) -> String {
        "drop odd".into()
    }
    async fn apply(&self, mut event: Event) -> Result<Event, TransformError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if event.revision % 2 == 1 {
            event.kind = ChangeKind::Skip(SkipReason::Dropped);
        }
        Ok(event)
    }
}

/// Counts the records it sees: it must not see the dropped ones.
struct Count(Arc<AtomicUsize>);

#[async_trait]
impl Transform for Count {
    fn name(&self) -> String {
        "count".into()
    }
    async fn apply(&self, event: Event) -> Result<Event, TransformError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(event)
    }
}

#[tokio::test]
async fn dropped_records_are_skipped_counted_and_checkpointed() {
    // One stream, revisions 0..=99: the last record (99) is dropped.
    let source = source_with(100, 1);
    let sink = MemorySink::new();
    let store = MemoryCheckpointStore::new();
    let drop_odd = Arc::new(DropOdd {
        calls: AtomicUsize::new(0),
    });
    let after = Arc::new(AtomicUsize::new(0));
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(config())
    .transforms(vec![
        Arc::new(Shared(drop_odd.clone())) as Arc<dyn Transform>,
        Arc::new(Count(after.clone())),
    ])
    .build();
    let progress = pipeline.progress();
    let summary = pipeline.run(CancellationToken::new()).await.unwrap();
    assert_eq!((summary.written, summary.skipped), (50, 50));
    assert_eq!(progress.borrow().skipped_by_reason.dropped, 50);
    assert_eq!(after.load(Ordering::SeqCst), 50, "dropped records stop");
    let revisions: Vec<u64> = sink.stream("s-0").iter().map(|e| e.revision).collect();
    assert_eq!(revisions, (0..100).step_by(2).collect::<Vec<_>>());
    assert_eq!(
        store.current().unwrap().source,
        source.head().unwrap(),
        "the last record, dropped, is checkpointed"
    );

    // A second run replays nothing.
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(config())
    .transform(Shared(drop_odd.clone()))
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(summary.read, 0);
    assert_eq!(drop_odd.calls.load(Ordering::SeqCst), 100);
}

/// A new random key for every record: one stream's records get many keys.
struct RandomKeys {
    keys: Mutex<HashSet<String>>,
}

impl Partitioner for Shared<RandomKeys> {
    fn key(&self, _event: &Event) -> Result<Option<String>, TransformError> {
        let key = fastrand::u64(..).to_string();
        self.keys.lock().unwrap().insert(key.clone());
        Ok(Some(key))
    }
}

#[tokio::test]
async fn a_stream_with_records_in_flight_stays_on_its_partition_whatever_the_partitioner_says() {
    let source = source_with(600, 3);
    let store = MemoryCheckpointStore::new();
    // Four writers whose writes take different times: records of one stream
    // sent to two writers would overtake each other.
    let sink = ScriptedSink::new(
        MemorySink::new().with_partitions(4),
        [3, 0, 1, 0, 2, 0]
            .into_iter()
            .map(|delay_ms| Fault {
                delay_ms,
                fail_after: None,
            })
            .collect(),
        store.clone(),
    );
    let partitioner = Arc::new(RandomKeys {
        keys: Mutex::new(HashSet::new()),
    });
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        max_batch_events: 5,
        ..config()
    })
    .partitioner(Arc::new(Shared(partitioner.clone())))
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(summary.written, 600);
    assert!(partitioner.keys.lock().unwrap().len() > 3);
    for s in 0..3 {
        let stream = format!("s-{s}");
        let revisions: Vec<u64> = sink
            .inner
            .stream(&stream)
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(revisions, (0..200).collect::<Vec<_>>(), "{stream} in order");
    }
}

/// A partitioner that groups streams by the prefix before `-`.
struct ByPrefix;

impl Partitioner for ByPrefix {
    fn key(&self, event: &Event) -> Result<Option<String>, TransformError> {
        if event.stream.starts_with("bad") {
            return Err(TransformError::permanent("partition is not a function"));
        }
        Ok(event
            .target_stream()
            .split_once('-')
            .map(|(prefix, _)| prefix.to_owned()))
    }
}

#[tokio::test]
async fn a_partitioner_error_stops_the_run_naming_the_record() {
    let source = MemorySource::new();
    for (i, stream) in ["a-1", "a-2", "nodash", "bad-1", "a-3"].iter().enumerate() {
        let mut e = event(stream, 0, 100 + i as u64 * 50, ChangeKind::Append);
        e.data = Bytes::from_static(b"{}");
        source.push(e);
    }
    let bad = source.events()[3].clone();
    let sink = MemorySink::new().with_partitions(2);
    let store = MemoryCheckpointStore::new();
    let error = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(config())
    .partitioner(Arc::new(ByPrefix))
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    assert!(
        matches!(&error, PipelineError::Transform { event_id, .. } if *event_id == bad.id),
        "{error:?}"
    );
    assert_eq!(sink.log().len(), 3);
    assert_eq!(store.current().unwrap().source, source.events()[2].position);
}
