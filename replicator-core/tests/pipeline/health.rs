//! Honest health: replication goes on while the checkpoint store hangs, a hung
//! write or probe is timed out and reported, a panicking task fails the run
//! naming it, a reader that stops delivering is noticed, and progress says how
//! far the copy is (percent, gap, ETA, lag).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{
    ChangeKind, Checkpoint, CheckpointError, CheckpointStore, Component, Event, EventStream,
    HeadProbe, Pipeline, PipelineConfig, PipelineError, Position, Progress, Reader, ReaderError,
    RunSummary, Sink, SinkError, StartFrom, WriteAck,
};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

use crate::support::{event, source_with, wait_for, ChunkedReader, WAIT};

fn config() -> PipelineConfig {
    PipelineConfig {
        checkpoint_after: 10,
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(50),
        call_timeout: Duration::from_millis(300),
        head_interval: Duration::from_millis(50),
        publish_interval: Duration::from_millis(20),
        shutdown_deadline: Duration::from_secs(5),
        ..PipelineConfig::default()
    }
}

/// A pipeline running in the background.
struct Started {
    progress: watch::Receiver<Progress>,
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<Result<RunSummary, PipelineError>>,
}

fn start(pipeline: Pipeline) -> Started {
    let progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    Started {
        progress,
        cancel,
        run,
    }
}

impl Started {
    /// Cancels the run and expects a clean stop.
    async fn stop(self) -> RunSummary {
        self.cancel.cancel();
        timeout(WAIT, self.run).await.unwrap().unwrap().unwrap()
    }
}

/// A memory store whose `store` hangs while the gate is closed.
#[derive(Clone)]
struct GatedStore {
    inner: MemoryCheckpointStore,
    open: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
}

impl GatedStore {
    fn closed() -> Self {
        GatedStore {
            inner: MemoryCheckpointStore::new(),
            open: Arc::new(AtomicBool::new(false)),
            attempts: Arc::default(),
        }
    }
}

#[async_trait]
impl CheckpointStore for GatedStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load().await
    }
    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !self.open.load(Ordering::SeqCst) {
            // A frozen server: the call never answers.
            std::future::pending::<()>().await;
        }
        self.inner.store(checkpoint).await
    }
    async fn delete(&self) -> Result<(), CheckpointError> {
        self.inner.delete().await
    }
}

#[tokio::test]
async fn replication_goes_on_while_the_checkpoint_store_hangs_and_catches_up_after() {
    let source = source_with(3_000, 5);
    let last = source.head().unwrap();
    let store = GatedStore::closed();
    // A checkpoint of an earlier run, before every record of the source.
    let earlier = Checkpoint::processed(Position::at(50), None);
    store.inner.store(&earlier).await.unwrap();
    let sink = MemorySink::new().with_partitions(2);
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(config())
    .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;

    let p = wait_for(progress, "everything written while the store hangs", |p| {
        p.written == 3_000
    })
    .await;
    assert_eq!(
        store.inner.current().as_ref(),
        Some(&earlier),
        "nothing could be stored"
    );
    assert!(p.unstored > 0, "the replay window is reported: {p:?}");
    assert_eq!(
        (p.stored.as_ref(), p.checkpoints_stored),
        (Some(&earlier), 0),
        "progress shows the last stored checkpoint: the one this run started from"
    );
    let p = wait_for(
        progress,
        "the checkpoint store retried and reported failing",
        |p| p.components.checkpoint.attempts >= 2,
    )
    .await;
    let error = p.components.checkpoint.last_error.clone().unwrap();
    assert!(error.contains("did not answer"), "{error}");
    assert_eq!(
        p.unhealthy_components(Duration::ZERO),
        vec![Component::Checkpoint]
    );
    assert!(p.components.target.healthy && p.components.source.healthy);
    assert!(store.attempts.load(Ordering::SeqCst) >= 2);

    store.open.store(true, Ordering::SeqCst);
    let p = wait_for(
        progress,
        "the checkpoint caught up and the store is healthy",
        |p| p.components.checkpoint.healthy && p.stored.as_ref().is_some_and(|c| c.source == last),
    )
    .await;
    assert_eq!(p.unstored, 0);
    assert_eq!(store.inner.current().unwrap().source, last);
    started.stop().await;
}

/// A sink whose first `hangs` writes never answer.
#[derive(Clone)]
struct HangingSink {
    inner: MemorySink,
    hangs: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for HangingSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        if self
            .hangs
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            std::future::pending::<()>().await;
        }
        self.inner.write(batch).await
    }
}

#[tokio::test]
async fn a_hung_write_is_timed_out_reported_and_retried() {
    let source = source_with(500, 3);
    let sink = HangingSink {
        inner: MemorySink::new(),
        hangs: Arc::new(AtomicUsize::new(3)),
    };
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        MemoryCheckpointStore::new(),
    )
    .config(config())
    .build();
    let mut progress = pipeline.progress();
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    let p = wait_for(&mut progress, "the target reported failing", |p| {
        !p.components.target.healthy
    })
    .await;
    let error = p.components.target.last_error.clone().unwrap();
    assert!(error.contains("did not answer a write"), "{error}");
    assert!(!p.is_healthy());
    let summary = timeout(WAIT, run).await.unwrap().unwrap().unwrap();
    assert_eq!(summary.written, 500);
    assert_eq!(sink.inner.log().len(), 500);
    let p = progress.borrow().clone();
    assert!(
        p.components.target.healthy,
        "recovered: {:?}",
        p.components.target
    );
    assert_eq!(p.components.target.failures_total, 3);
}

/// Yields `before` records of `source`, then panics (or hangs).
struct BrokenReader {
    source: MemorySource,
    before: usize,
    panic: bool,
}

#[async_trait]
impl Reader for BrokenReader {
    async fn read(&mut self, _from: StartFrom) -> Result<EventStream, ReaderError> {
        let events = self.source.events();
        let before = self.before;
        let panic = self.panic;
        Ok(
            futures::stream::iter(events.into_iter().take(before).map(Ok))
                .chain(futures::stream::once(async move {
                    if panic {
                        panic!("reader bug");
                    }
                    std::future::pending::<()>().await;
                    unreachable!()
                }))
                .boxed(),
        )
    }

    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        Some(Arc::new(self.source.clone()))
    }
}

#[tokio::test]
async fn a_panicking_reader_fails_the_run_naming_it_after_storing_what_was_written() {
    let source = source_with(100, 4);
    let store = MemoryCheckpointStore::new();
    let reader = BrokenReader {
        source: source.clone(),
        before: 40,
        panic: true,
    };
    let result = timeout(
        WAIT,
        Pipeline::builder(reader, MemorySink::new(), store.clone())
            .config(config())
            .build()
            .run(CancellationToken::new()),
    )
    .await
    .expect("the run ends");
    match result {
        Err(PipelineError::TaskEnded { task, reason }) => {
            assert_eq!(task, "reader");
            assert!(reason.contains("panicked: reader bug"), "{reason}");
        }
        other => panic!("expected the reader's panic, got {other:?}"),
    }
    assert_eq!(
        store.current().unwrap().source,
        source.events()[39].position
    );
}

#[tokio::test]
async fn a_reader_that_stops_delivering_while_the_source_has_more_is_reported() {
    let source = source_with(300, 4);
    let reader = BrokenReader {
        source: source.clone(),
        before: 150,
        panic: false,
    };
    let pipeline = Pipeline::builder(reader, MemorySink::new(), MemoryCheckpointStore::new())
        .config(config())
        .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    let p = wait_for(progress, "the source reported failing", |p| {
        !p.components.source.healthy
    })
    .await;
    let error = p.components.source.last_error.clone().unwrap();
    assert!(error.contains("delivered nothing"), "{error}");
    assert_eq!(p.processed, Some(source.events()[149].position));
    assert_eq!(p.percent.map(|x| x < 100.0), Some(true));
    assert!(!p.caught_up);
    let estimate = p.gap_events.expect("an estimate after 150 records");
    assert!(
        (135..=165).contains(&estimate),
        "150 records left, estimated {estimate}"
    );
    started.stop().await;
}

/// A sink that panics on one stream.
#[derive(Clone)]
struct PanickingSink {
    inner: MemorySink,
    stream: &'static str,
}

#[async_trait]
impl Sink for PanickingSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        if batch.iter().any(|e| e.stream == self.stream) {
            panic!("sink bug on {}", self.stream);
        }
        self.inner.write(batch).await
    }
    fn max_in_flight(&self) -> usize {
        4
    }
}

#[tokio::test]
async fn a_panicking_writer_among_several_fails_the_run_without_spinning() {
    let source = source_with(2_000, 16);
    let sink = PanickingSink {
        inner: MemorySink::new(),
        stream: "s-7",
    };
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink,
        MemoryCheckpointStore::new(),
    )
    .config(config())
    .build();
    let progress = pipeline.progress();
    let result = timeout(WAIT, pipeline.run(CancellationToken::new()))
        .await
        .expect("the run ends instead of spinning");
    match result {
        Err(PipelineError::TaskEnded { task, reason }) => {
            assert!(task.starts_with("writer "), "{task}");
            assert!(reason.contains("sink bug on s-7"), "{reason}");
        }
        other => panic!("expected the writer's panic, got {other:?}"),
    }
    assert!(matches!(
        progress.borrow().state,
        replicator_core::PipelineState::Failed(_)
    ));
}

#[tokio::test]
async fn caught_up_means_percent_100_eta_0_and_lag_0_whatever_the_age_of_the_events() {
    let source = MemorySource::new();
    for i in 0..300u64 {
        let mut e = event(
            &format!("s-{}", i % 3),
            i / 3,
            100 + i * 50,
            ChangeKind::Append,
        );
        e.created = SystemTime::now() - Duration::from_secs(86_400);
        source.push(e);
    }
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        MemorySink::new(),
        MemoryCheckpointStore::new(),
    )
    .config(config())
    .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    let p = wait_for(progress, "caught up", |p| p.caught_up).await;
    assert_eq!(p.written, 300);
    assert_eq!(p.source_head, source.head());
    assert_eq!(p.gap_bytes, Some(0));
    assert_eq!(p.gap_events, Some(0));
    assert_eq!(p.percent, Some(100.0));
    assert_eq!(p.eta, Some(Duration::ZERO));
    assert_eq!(
        p.lag,
        Some(Duration::ZERO),
        "day-old events, but nothing left to copy"
    );

    // New events: the gap opens, then closes again.
    for i in 300..310u64 {
        source.push(event("s-new", i - 300, 100 + i * 50, ChangeKind::Append));
    }
    let p = wait_for(
        progress,
        "the new events written and caught up again",
        |p| p.written == 310 && p.caught_up && p.source_head == source.head(),
    )
    .await;
    assert_eq!(p.percent, Some(100.0));
    started.stop().await;
}

/// A store whose `check` fails permanently, as a file under an unusable path.
struct UnusableStore;

#[async_trait]
impl CheckpointStore for UnusableStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        Ok(None)
    }
    async fn store(&self, _: &Checkpoint) -> Result<(), CheckpointError> {
        Ok(())
    }
    async fn delete(&self) -> Result<(), CheckpointError> {
        Ok(())
    }
    async fn check(&self) -> Result<(), CheckpointError> {
        Err(CheckpointError::permanent(
            "cannot write /data/sub/checkpoint: no such directory",
        ))
    }
}

#[tokio::test]
async fn a_store_that_cannot_work_stops_the_run_before_anything_is_replicated() {
    let source = source_with(50, 2);
    let sink = MemorySink::new();
    let result = timeout(
        WAIT,
        Pipeline::builder(MemoryReader::new(source, true), sink.clone(), UnusableStore)
            .config(config())
            .build()
            .run(CancellationToken::new()),
    )
    .await
    .unwrap();
    let error = result.unwrap_err();
    assert!(
        matches!(
            error,
            PipelineError::Check {
                component: Component::Checkpoint,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(format!("{:?}", error).contains("/data/sub/checkpoint"));
    assert!(sink.log().is_empty(), "nothing replicated");
}

/// A head probe that fails while `down` is set.
struct FlakyProbe {
    source: MemorySource,
    down: Arc<AtomicBool>,
}

#[async_trait]
impl HeadProbe for FlakyProbe {
    async fn head(&self) -> Result<Option<Position>, ReaderError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ReaderError::transient("source unavailable"));
        }
        Ok(self.source.head())
    }
}

struct ProbedReader {
    inner: MemoryReader,
    probe: Arc<FlakyProbe>,
}

#[async_trait]
impl Reader for ProbedReader {
    async fn read(&mut self, from: StartFrom) -> Result<EventStream, ReaderError> {
        self.inner.read(from).await
    }
    fn head_probe(&self) -> Option<Arc<dyn HeadProbe>> {
        Some(self.probe.clone())
    }
}

#[tokio::test]
async fn a_source_that_cannot_be_asked_for_its_head_is_unhealthy_until_it_answers() {
    let source = source_with(20, 2);
    let down = Arc::new(AtomicBool::new(false));
    let reader = ProbedReader {
        inner: MemoryReader::new(source.clone(), true),
        probe: Arc::new(FlakyProbe {
            source: source.clone(),
            down: down.clone(),
        }),
    };
    let pipeline = Pipeline::builder(reader, MemorySink::new(), MemoryCheckpointStore::new())
        .config(config())
        .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    wait_for(progress, "caught up", |p| p.caught_up && p.written == 20).await;
    down.store(true, Ordering::SeqCst);
    let p = wait_for(progress, "source unhealthy", |p| {
        !p.components.source.healthy
    })
    .await;
    assert_eq!(
        p.components.source.last_error.as_deref(),
        Some("transient reader error: source unavailable")
    );
    down.store(false, Ordering::SeqCst);
    wait_for(progress, "source healthy again", |p| {
        p.components.source.healthy
    })
    .await;
    started.stop().await;
}

/// A sink whose `check` fails while `down` is set.
#[derive(Clone)]
struct CheckedSink {
    inner: MemorySink,
    down: Arc<AtomicBool>,
    checks: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for CheckedSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        self.inner.write(batch).await
    }
    async fn check(&self) -> Result<(), SinkError> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::transient("target unavailable"));
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_idle_target_that_goes_away_is_reported_before_the_next_write() {
    let source = source_with(30, 3);
    let sink = CheckedSink {
        inner: MemorySink::new(),
        down: Arc::new(AtomicBool::new(false)),
        checks: Arc::default(),
    };
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        MemoryCheckpointStore::new(),
    )
    .config(PipelineConfig {
        idle_probe_interval: Duration::from_millis(100),
        ..config()
    })
    .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    wait_for(progress, "caught up", |p| p.caught_up && p.written == 30).await;
    sink.down.store(true, Ordering::SeqCst);
    let p = wait_for(progress, "the idle target reported failing", |p| {
        !p.components.target.healthy
    })
    .await;
    assert_eq!(
        p.components.target.last_error.as_deref(),
        Some("transient sink error: target unavailable")
    );
    assert!(
        sink.checks.load(Ordering::SeqCst) >= 2,
        "start-up check and idle checks"
    );
    sink.down.store(false, Ordering::SeqCst);
    wait_for(progress, "the target healthy again", |p| {
        p.components.target.healthy
    })
    .await;
    started.stop().await;
}

/// A store whose `store` fails while `failing` is set, transiently or not.
#[derive(Clone)]
struct FailingStore {
    inner: MemoryCheckpointStore,
    failing: Arc<AtomicBool>,
    permanent: bool,
    attempts: Arc<AtomicUsize>,
    /// When each failed attempt started.
    failed_at: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait]
impl CheckpointStore for FailingStore {
    async fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        self.inner.load().await
    }
    async fn store(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) {
            self.failed_at.lock().unwrap().push(Instant::now());
            return Err(if self.permanent {
                CheckpointError::permanent("the checkpoint file system is read-only")
            } else {
                CheckpointError::transient("the checkpoint store is restarting")
            });
        }
        self.inner.store(checkpoint).await
    }
    async fn delete(&self) -> Result<(), CheckpointError> {
        self.inner.delete().await
    }
}

#[tokio::test]
async fn a_permanent_store_error_during_the_run_stops_it_naming_the_error() {
    let store = FailingStore {
        inner: MemoryCheckpointStore::new(),
        failing: Arc::new(AtomicBool::new(true)),
        permanent: true,
        attempts: Arc::default(),
        failed_at: Arc::default(),
    };
    let result = timeout(
        WAIT,
        Pipeline::builder(
            MemoryReader::new(source_with(100, 2), true),
            MemorySink::new(),
            store.clone(),
        )
        .config(config())
        .build()
        .run(CancellationToken::new()),
    )
    .await
    .expect("a permanent store error ends the run instead of being retried for ever");
    match result {
        Err(PipelineError::StoreCheckpoint(error)) => {
            assert!(!error.is_transient());
            assert!(error.to_string().contains("read-only"), "{error}");
        }
        other => panic!("expected the store's permanent error, got {other:?}"),
    }
    assert_eq!(store.attempts.load(Ordering::SeqCst), 1, "not retried");
}

#[tokio::test]
async fn a_failing_store_is_retried_with_backoff_not_hammered() {
    let store = FailingStore {
        inner: MemoryCheckpointStore::new(),
        failing: Arc::new(AtomicBool::new(true)),
        permanent: false,
        attempts: Arc::default(),
        failed_at: Arc::default(),
    };
    let source = source_with(100, 2);
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        MemorySink::new(),
        store.clone(),
    )
    .config(PipelineConfig {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(100),
        ..config()
    })
    .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    wait_for(progress, "the store failed four times", |p| {
        p.components.checkpoint.attempts >= 4
    })
    .await;
    // Each retry comes after a wait of 50–100 ms (jitter), measured by the
    // store from one attempt to the next: a retry without backoff would come
    // within microseconds. A slow machine only makes the gaps longer.
    let failed_at = store.failed_at.lock().unwrap().clone();
    let gaps: Vec<Duration> = failed_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 3, "{gaps:?}");
    assert!(
        gaps.iter().all(|gap| *gap >= Duration::from_millis(50)),
        "retries without backoff: gaps {gaps:?}"
    );
    store.failing.store(false, Ordering::SeqCst);
    wait_for(progress, "the checkpoint stored after the failure", |p| {
        p.components.checkpoint.healthy && p.stored.as_ref().map(|c| c.source) == source.head()
    })
    .await;
    started.stop().await;
}

/// A sink whose writes wait until `open` is set.
#[derive(Clone)]
struct GatedSink {
    inner: MemorySink,
    open: Arc<tokio::sync::Notify>,
    opened: Arc<AtomicBool>,
    calls: Arc<AtomicUsize>,
}

#[async_trait]
impl Sink for GatedSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        while !self.opened.load(Ordering::SeqCst) {
            self.open.notified().await;
        }
        self.inner.write(batch).await
    }
}

#[tokio::test]
async fn a_stop_while_an_event_waits_for_a_full_queue_leaves_nothing_counted_in_flight() {
    let sink = GatedSink {
        inner: MemorySink::new(),
        open: Arc::new(tokio::sync::Notify::new()),
        opened: Arc::new(AtomicBool::new(false)),
        calls: Arc::default(),
    };
    let pipeline = Pipeline::builder(
        MemoryReader::new(source_with(50, 1), true),
        sink.clone(),
        MemoryCheckpointStore::new(),
    )
    .config(PipelineConfig {
        // One write of 2 in flight, 2 more queued, the next one waiting for
        // room: read but never handed to a writer.
        max_batch_events: 2,
        call_timeout: Duration::from_secs(30),
        ..config()
    })
    .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;
    wait_for(
        progress,
        "a full queue and an event waiting for room",
        |p| p.read >= 5 && p.in_flight >= 5,
    )
    .await;
    assert_eq!(sink.calls.load(Ordering::SeqCst), 1);
    started.cancel.cancel();
    sink.opened.store(true, Ordering::SeqCst);
    sink.open.notify_waiters();
    let summary = timeout(WAIT, started.run).await.unwrap().unwrap().unwrap();
    let p = started.progress.borrow().clone();
    assert_eq!(
        summary.written, 4,
        "the write in flight and the queued ones drain"
    );
    assert_eq!(
        p.in_flight, 0,
        "the event never handed to a writer is forgotten (re-read next run), not left in flight"
    );
    assert_eq!(sink.inner.log().len(), 4);
}

#[tokio::test]
async fn a_stall_is_reported_only_after_a_call_deadline_and_cleared_as_soon_as_records_flow_again()
{
    let source = source_with(300, 4);
    let (release, released) = tokio::sync::mpsc::unbounded_channel();
    let delivered_at = Arc::new(std::sync::Mutex::new(None));
    let reader = ChunkedReader {
        source: source.clone(),
        chunks: vec![100, 50, 150],
        release: Some(released),
        delivered_at: delivered_at.clone(),
    };
    let config = PipelineConfig {
        call_timeout: Duration::from_secs(2),
        ..config()
    };
    let pipeline = Pipeline::builder(reader, MemorySink::new(), MemoryCheckpointStore::new())
        .config(config.clone())
        .build();
    let mut started = start(pipeline);
    let progress = &mut started.progress;

    let p = wait_for(progress, "the source reported failing", |p| {
        !p.components.source.healthy
    })
    .await;
    let quiet = delivered_at
        .lock()
        .unwrap()
        .expect("records delivered")
        .elapsed();
    assert!(
        quiet >= config.call_timeout,
        "a reader quiet for {quiet:?} is not yet stalled (deadline {:?})",
        config.call_timeout
    );
    assert_eq!(p.processed, Some(source.events()[99].position));

    // 50 more records: the reader works again, though the source still has
    // more than it delivered. That clears the stall at once, not only once
    // the reader catches up.
    release.send(()).unwrap();
    let p = wait_for(progress, "the source healthy again", |p| {
        p.components.source.healthy
    })
    .await;
    assert!(
        p.processed < Some(source.events()[299].position),
        "recovered while still behind the head"
    );
    release.send(()).unwrap();
    wait_for(progress, "everything processed", |p| {
        p.processed == Some(source.events()[299].position)
    })
    .await;
    started.stop().await;
}
