//! What a user of the pipeline sees: checkpoints, retries, failures, shutdown.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use replicator_core::memory::{MemoryCheckpointStore, MemoryReader, MemorySink, MemorySource};
use replicator_core::{
    ChangeKind, Checkpoint, CheckpointStore, Event, Pipeline, PipelineConfig, PipelineError,
    PipelineState, Position, Sink, SinkError, SkipReason, WriteAck,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::support::{event, source_with, wait_for, ChunkedReader, WAIT};

fn last_position(source: &MemorySource) -> Position {
    source.events().last().unwrap().position
}

fn fast() -> PipelineConfig {
    PipelineConfig {
        retry_initial: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        shutdown_deadline: Duration::from_secs(2),
        ..PipelineConfig::default()
    }
}

#[tokio::test]
async fn replicates_everything_and_stores_the_last_position() {
    let source = source_with(2_500, 7);
    let sink = MemorySink::new().with_partitions(3);
    let store = MemoryCheckpointStore::new();
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        // No idle flush on a slow machine: only `checkpoint_after` and the
        // final store count here.
        checkpoint_interval: Duration::from_secs(3600),
        ..fast()
    })
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(
        (summary.read, summary.written, summary.skipped),
        (2_500, 2_500, 0)
    );
    assert!(summary.completed);
    let stored = store.current().unwrap();
    assert_eq!(stored.source, last_position(&source));
    assert!(
        stored.target.is_some(),
        "the target position is recorded for the cutover"
    );
    // checkpointAfter 1000: a store once at least 1000 records are processed
    // since the last one (later when a batch crosses the threshold or the
    // checkpointer runs late: it is its own task), then the rest at the end.
    // So every store but the last is at least 1000 records after the one
    // before, which allows at most 3 of them for 2500 records.
    let history = store.history();
    let processed = |c: &Checkpoint| (c.source.commit - 100) / 37 + 1;
    let mut before = 0;
    for c in &history[..history.len() - 1] {
        assert!(
            processed(c) >= before + 1000,
            "a store before checkpointAfter: {history:?}"
        );
        before = processed(c);
    }
    assert!(history.len() <= 3, "{history:?}");
    for s in 0..7 {
        let ids: Vec<_> = sink
            .stream(&format!("s-{s}"))
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(
            ids,
            (0..ids.len() as u64).collect::<Vec<_>>(),
            "stream s-{s} in order"
        );
    }
}

#[tokio::test]
async fn resumes_strictly_after_the_stored_checkpoint() {
    let source = source_with(10, 2);
    let events = source.events();
    let store = MemoryCheckpointStore::new();
    store
        .store(&Checkpoint::processed(events[5].position, None))
        .await
        .unwrap();
    let sink = MemorySink::new();
    Pipeline::builder(MemoryReader::new(source, false), sink.clone(), store)
        .build()
        .run(CancellationToken::new())
        .await
        .unwrap();
    let written: Vec<_> = sink.log().iter().map(|e| e.position).collect();
    assert_eq!(
        written,
        events[6..].iter().map(|e| e.position).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_seed_starts_at_its_position_inclusive() {
    let source = source_with(10, 2);
    let events = source.events();
    let store = MemoryCheckpointStore::new();
    store
        .store(&Checkpoint::seeded(events[4].position))
        .await
        .unwrap();
    let sink = MemorySink::new();
    Pipeline::builder(
        MemoryReader::new(source, false),
        sink.clone(),
        store.clone(),
    )
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    let first = sink.log()[0].position;
    assert_eq!(
        first, events[4].position,
        "the event at the seed is replicated"
    );
    assert_eq!(sink.log().len(), 6, "nothing before the seed is");
    assert!(!store.current().unwrap().seed);
}

#[tokio::test]
async fn skipped_records_advance_the_checkpoint_without_a_write() {
    let source = MemorySource::new();
    source.push(event("orders", 0, 100, ChangeKind::Append));
    source.push(event(
        "$stats",
        0,
        200,
        ChangeKind::Skip(SkipReason::SystemStream),
    ));
    source.push(event("$et-x", 0, 300, ChangeKind::Skip(SkipReason::Link)));
    let sink = MemorySink::new();
    let store = MemoryCheckpointStore::new();
    let summary = Pipeline::builder(
        MemoryReader::new(source, false),
        sink.clone(),
        store.clone(),
    )
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!((summary.written, summary.skipped), (1, 2));
    assert_eq!(sink.log().len(), 1);
    assert_eq!(store.current().unwrap().source, Position::at(300));
}

/// A sink whose writes to one stream wait for a permit.
#[derive(Clone)]
struct GatedSink {
    inner: MemorySink,
    gated_stream: &'static str,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl Sink for GatedSink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        if batch.iter().any(|e| e.stream == self.gated_stream) {
            self.gate.acquire().await.unwrap().forget();
        }
        self.inner.write(batch).await
    }
    fn max_in_flight(&self) -> usize {
        4
    }
}

/// On a paused clock: time moves only when every task waits, so once the
/// clock has passed `checkpoint_interval` every writer that could write has
/// written and the checkpointer has had its idle flush, deterministically.
#[tokio::test(start_paused = true)]
async fn the_checkpoint_never_passes_an_event_still_in_flight() {
    let source = MemorySource::new();
    // The first event is held by the sink until the end; the 300 after it, on
    // any partition, are written if their partition is not behind "slow".
    source.push(event("slow", 0, 100, ChangeKind::Append));
    for i in 0..300u64 {
        source.push(event(
            &format!("fast-{}", i % 16),
            i,
            200 + i * 10,
            ChangeKind::Append,
        ));
    }
    let sink = GatedSink {
        inner: MemorySink::new(),
        gated_stream: "slow",
        gate: Arc::new(Semaphore::new(0)),
    };
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        checkpoint_after: 1,
        checkpoint_interval: Duration::from_millis(10),
        call_timeout: Duration::from_secs(3600),
        ..fast()
    })
    .build();
    let mut progress = pipeline.progress();
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    // Everything read and something written past the held event.
    wait_for(
        &mut progress,
        "the reader reads everything and the other partitions write",
        |p| p.read == 301 && p.written >= 1,
    )
    .await;
    // Past the idle flush (10 ms) on the paused clock: see above.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = progress.borrow().clone();
    assert!(
        seen.written >= 1 && seen.processed.is_none() && seen.checkpoints_stored == 0,
        "nothing processed or stored past the held event: {seen:?}"
    );
    assert!(
        store.current().is_none(),
        "nothing may be stored while the first event is unwritten: {:?}",
        store.current()
    );
    sink.gate.add_permits(1);
    run.await.unwrap().unwrap();
    assert_eq!(store.current().unwrap().source, last_position(&source));
    let history = store.history();
    assert!(
        history.windows(2).all(|w| w[0].source < w[1].source),
        "monotonic: {history:?}"
    );
}

/// Fails every write `failures` times with the given error, then writes.
#[derive(Clone)]
struct FlakySink {
    inner: MemorySink,
    failures: Arc<std::sync::Mutex<usize>>,
    permanent: bool,
}

#[async_trait]
impl Sink for FlakySink {
    async fn write(&self, batch: &[Event]) -> Result<WriteAck, SinkError> {
        {
            let mut left = self.failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(if self.permanent {
                    SinkError::permanent(format!("access denied writing to {}", batch[0].stream))
                } else {
                    SinkError::transient("target unavailable")
                });
            }
        }
        self.inner.write(batch).await
    }
}

#[tokio::test(start_paused = true)]
async fn transient_sink_errors_are_retried_and_reported_unhealthy_meanwhile() {
    let source = source_with(50, 3);
    let sink = FlakySink {
        inner: MemorySink::new(),
        failures: Arc::new(std::sync::Mutex::new(6)),
        permanent: false,
    };
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .config(fast())
    .build();
    let mut progress = pipeline.progress();
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    let seen = wait_for(&mut progress, "retrying", |p| {
        matches!(p.state, PipelineState::Retrying { .. })
    })
    .await;
    assert!(!seen.is_healthy(), "a retrying pipeline is not healthy");
    let summary = run.await.unwrap().unwrap();
    assert_eq!(summary.written, 50);
    assert_eq!(sink.inner.log().len(), 50);
    assert!(progress.borrow().sink_retries >= 6);
    assert_eq!(store.current().unwrap().source, last_position(&source));
}

#[tokio::test]
async fn a_permanent_sink_error_stops_after_storing_what_was_written() {
    let source = source_with(30, 1);
    let inner = MemorySink::new();
    // Write 10 events first, then fail permanently.
    let prefix = MemorySource::new();
    for e in source.events().into_iter().take(10) {
        prefix.push(e);
    }
    let store = MemoryCheckpointStore::new();
    Pipeline::builder(
        MemoryReader::new(prefix, false),
        inner.clone(),
        store.clone(),
    )
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    let sink = FlakySink {
        inner: inner.clone(),
        failures: Arc::new(std::sync::Mutex::new(usize::MAX)),
        permanent: true,
    };
    let err = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink,
        store.clone(),
    )
    .config(fast())
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap_err();
    match &err {
        PipelineError::Sink {
            last_processed,
            source: e,
        } => {
            assert_eq!(*last_processed, Some(source.events()[9].position));
            assert!(
                e.to_string().contains("access denied writing to s-0"),
                "{e}"
            );
        }
        other => panic!("expected a sink error, got {other}"),
    }
    assert_eq!(inner.log().len(), 10, "nothing written after the failure");
    assert_eq!(store.current().unwrap().source, source.events()[9].position);
}

#[tokio::test]
async fn cancellation_drains_and_stores_a_final_checkpoint_then_resumes() {
    let source = source_with(100, 4);
    let sink = MemorySink::new().with_partitions(2);
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(fast())
    .build();
    let mut progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    wait_for(&mut progress, "100 written", |p| p.written == 100).await;
    // Live: an event appended while running is replicated too.
    source.append_user_event("late", b"{}".to_vec());
    wait_for(&mut progress, "the live event written", |p| {
        p.written == 101
    })
    .await;
    cancel.cancel();
    let summary = run.await.unwrap().unwrap();
    assert!(!summary.completed);
    assert_eq!(store.current().unwrap().source, last_position(&source));
    assert_eq!(progress.borrow().state, PipelineState::Stopped);

    source.append_user_event("later", b"{}".to_vec());
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        sink.clone(),
        store.clone(),
    )
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(summary.written, 1, "only the new event");
    assert_eq!(sink.log().len(), 102);
}

#[tokio::test(start_paused = true)]
async fn idle_progress_is_stored_without_waiting_for_checkpoint_after() {
    let source = source_with(5, 1);
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        MemorySink::new(),
        store.clone(),
    )
    .config(PipelineConfig {
        checkpoint_after: 1000,
        ..fast()
    })
    .build();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        store.current().map(|c| c.source),
        Some(last_position(&source))
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_transient_store_failure_loses_no_progress() {
    let source = source_with(40, 2);
    let store = MemoryCheckpointStore::new();
    store.fail_next_stores(3);
    let summary = Pipeline::builder(
        MemoryReader::new(source.clone(), false),
        MemorySink::new(),
        store.clone(),
    )
    .config(PipelineConfig {
        checkpoint_after: 10,
        ..fast()
    })
    .build()
    .run(CancellationToken::new())
    .await
    .unwrap();
    assert_eq!(summary.written, 40);
    assert_eq!(store.current().unwrap().source, last_position(&source));
}

#[tokio::test(start_paused = true)]
async fn a_stuck_sink_hits_the_shutdown_deadline_and_keeps_acknowledged_progress() {
    let source = source_with(20, 1);
    let sink = GatedSink {
        inner: MemorySink::new(),
        gated_stream: "s-0",
        gate: Arc::new(Semaphore::new(1)),
    };
    let store = MemoryCheckpointStore::new();
    let pipeline = Pipeline::builder(
        MemoryReader::new(source.clone(), true),
        sink.clone(),
        store.clone(),
    )
    .config(PipelineConfig {
        max_batch_events: 5,
        ..fast()
    })
    .build();
    let mut progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    wait_for(&mut progress, "a first write", |p| p.written >= 1).await;
    let written = progress.borrow().written as usize;
    cancel.cancel();
    match run.await.unwrap() {
        Err(PipelineError::ShutdownTimeout { in_flight }) => assert!(in_flight > 0),
        other => panic!("expected a shutdown timeout, got {other:?}"),
    }
    assert_eq!(
        store.current().unwrap().source,
        source.events()[written - 1].position,
        "the acknowledged events are checkpointed"
    );
}

/// A reader that hands on records at the given log positions, whatever it
/// is asked to start from.
struct PositionsReader(Vec<u64>);

#[async_trait]
impl replicator_core::Reader for PositionsReader {
    async fn read(
        &mut self,
        _: replicator_core::StartFrom,
    ) -> Result<replicator_core::EventStream, replicator_core::ReaderError> {
        let events: Vec<_> = (self.0.iter().enumerate())
            .map(|(i, &p)| Ok(event("a", i as u64, p, ChangeKind::Append)))
            .collect();
        Ok(Box::pin(futures::stream::iter(events)))
    }
}

/// Runs a pipeline over a reader handing on `positions`, from `stored`.
async fn run_positions(
    positions: Vec<u64>,
    stored: Option<Checkpoint>,
) -> Result<replicator_core::RunSummary, PipelineError> {
    let store = MemoryCheckpointStore::new();
    if let Some(checkpoint) = stored {
        store.store(&checkpoint).await.unwrap();
    }
    Pipeline::builder(PositionsReader(positions), MemorySink::new(), store)
        .build()
        .run(CancellationToken::new())
        .await
}

#[tokio::test]
async fn a_reader_going_backwards_or_repeating_a_position_is_an_error() {
    for positions in [vec![500, 400], vec![500, 500]] {
        let err = run_positions(positions.clone(), None).await.unwrap_err();
        assert!(
            matches!(err, PipelineError::OutOfOrder { previous, position }
                if previous == Position::at(500) && position == Position::at(positions[1])),
            "{positions:?}: {err}"
        );
    }
}

#[tokio::test]
async fn a_resumed_reader_must_start_strictly_after_the_checkpoint_and_a_seeded_one_at_the_seed() {
    let err = run_positions(
        vec![500, 600],
        Some(Checkpoint::processed(Position::at(500), None)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, PipelineError::OutOfOrder { previous, position }
            if previous == Position::at(500) && position == Position::at(500)),
        "the checkpoint's own record is not replayed: {err}"
    );

    let summary = run_positions(vec![500, 600], Some(Checkpoint::seeded(Position::at(500))))
        .await
        .expect("the seed's own record is the first to replicate");
    assert_eq!(summary.written, 2);
    let err = run_positions(vec![400, 600], Some(Checkpoint::seeded(Position::at(500))))
        .await
        .unwrap_err();
    assert!(matches!(err, PipelineError::OutOfOrder { .. }), "{err}");
}

#[tokio::test]
async fn checkpoint_after_alone_triggers_stores_without_waiting_for_a_progress_tick() {
    // Progress ticks (the first comes at once) and the idle flush are an
    // hour apart: after the first store, only the count of processed records
    // can hand the frontier to the checkpointer.
    let config = PipelineConfig {
        checkpoint_after: 10,
        checkpoint_interval: Duration::from_secs(3600),
        publish_interval: Duration::from_secs(3600),
        ..PipelineConfig::default()
    };
    let source = source_with(95, 3);
    let (release, released) = tokio::sync::mpsc::unbounded_channel();
    let reader = ChunkedReader {
        source: source.clone(),
        chunks: vec![50, 45],
        release: Some(released),
        delivered_at: Arc::default(),
    };
    let store = MemoryCheckpointStore::new();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(
        Pipeline::builder(reader, MemorySink::new(), store.clone())
            .config(config)
            .build()
            .run(cancel.clone()),
    );
    let stored_at = |position: Position| {
        let store = store.clone();
        async move {
            tokio::time::timeout(WAIT, async {
                while store.current().map(|c| c.source) != Some(position) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await
            .is_ok()
        }
    };
    assert!(
        stored_at(source.events()[49].position).await,
        "the first 50 records checkpointed: {:?}",
        store.history()
    );
    release.send(()).unwrap();
    assert!(
        stored_at(source.events()[94].position).await,
        "45 more records checkpointed while the run goes on: {:?}",
        store.history()
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}
