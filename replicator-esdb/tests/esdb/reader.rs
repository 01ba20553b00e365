//! The reader: start positions, ordering, catching up then following live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::{ChangeKind, Event, Pipeline, Position, Reader, StartFrom};
use replicator_esdb::to_event_data;
use tokio_util::sync::CancellationToken;

use crate::common::*;

async fn read_to_end(
    server: &replicator_testkit::cluster::TestCluster,
    page_size: usize,
    from: StartFrom,
) -> Vec<Event> {
    let mut reader = reader(server, page_size, false);
    let stream = reader.read(from).await.expect("read");
    tokio::time::timeout(PATIENCE, stream.map(|e| e.expect("event")).collect())
        .await
        .expect("a reader that is not continuous ends once caught up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_handed_on_once_in_strictly_increasing_order() {
    let source = source().await;
    populate(&client(&source.connection_string()), 4, 300).await;
    let want = snapshot(&client(&source.connection_string())).await;
    for page_size in [1, 7, 1000] {
        let events = read_to_end(&source, page_size, StartFrom::Beginning).await;
        assert_eq!(events.len(), want.total_records, "page size {page_size}");
        for pair in events.windows(2) {
            assert!(pair[0].position < pair[1].position, "page size {page_size}");
        }
        assert!(events.iter().any(|e| e.kind == ChangeKind::Tombstone));
        assert!(events.iter().any(|e| e.kind == ChangeKind::SoftDelete));
        assert!(events.iter().any(|e| e.kind == ChangeKind::StreamMetadata));
        assert!(events.iter().any(|e| !e.kind.is_write()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_is_inclusive_and_a_checkpoint_exclusive() {
    let source = source().await;
    populate(&client(&source.connection_string()), 5, 120).await;
    let all = read_to_end(&source, 50, StartFrom::Beginning).await;
    let positions: Vec<Position> = all.iter().map(|e| e.position).collect();
    for k in [0, 1, positions.len() / 2, positions.len() - 1] {
        let p = positions[k];
        let at = read_to_end(&source, 10, StartFrom::At(p)).await;
        assert_eq!(
            at.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[k..],
            "At({p}) must start with the record at {p}"
        );
        let after = read_to_end(&source, 10, StartFrom::After(p)).await;
        assert_eq!(
            after.iter().map(|e| e.position).collect::<Vec<_>>(),
            positions[k + 1..],
            "After({p}) must start with the record after {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_past_the_end_hands_on_the_next_records_written() {
    let source = source().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 9, 40).await;
    let all = read_to_end(&source, 100, StartFrom::Beginning).await;
    let end = all.last().expect("records").position;
    let seed = Position {
        commit: end.commit + 1,
        prepare: end.prepare + 1,
    };

    // The reader's own logs tell when its live subscription is confirmed.
    // The stream is polled on this thread only, so a thread-local subscriber
    // sees them.
    let logs = CapturedLogs::default();
    let _logs = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("replicator_esdb=debug"))
            .with_ansi(false)
            .with_writer({
                let logs = logs.clone();
                move || logs.clone()
            })
            .finish(),
    );

    let mut reader = reader(&source, 100, true);
    let mut stream = reader.read(StartFrom::At(seed)).await.expect("read");
    let next = stream.next();
    tokio::pin!(next);
    // Drive the reader until it has caught up (nothing to read) and its live
    // subscription is confirmed: the record below must come from the live
    // branch.
    tokio::select! {
        early = &mut next => panic!("handed on before anything was written: {early:?}"),
        live = tokio::time::timeout(PATIENCE, async {
            while !logs.contains("Subscribed to $all") {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }) => live.unwrap_or_else(|_| panic!("the reader never went live:\n{}", logs.text())),
    }
    let event = user_event("after-seed", 0, 0);
    append_retrying(&source_client, "after-seed", &event).await;
    let first = tokio::time::timeout(PATIENCE, next)
        .await
        .expect("the new record is handed on")
        .expect("the stream is open")
        .expect("no error");
    assert_eq!(first.id, event.id, "nothing before the seed is handed on");
    assert!(first.position >= seed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_running_appear_on_the_target() {
    let source = source().await;
    let target = target().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 6, 200).await;

    let pipeline = Pipeline::builder(
        reader(&source, 100, true),
        sink(&target, 4),
        MemoryCheckpointStore::new(),
    )
    .config(pipeline_config(10))
    .build();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));
    let target_client = client(&target.connection_string());
    eventually("the initial catch-up", PATIENCE, || async {
        in_sync(&source_client, &target_client).await
    })
    .await;

    // Live: one event at a time, each must arrive while the replicator runs.
    let mut latencies = Vec::new();
    for i in 0..5 {
        let event = user_event("live", i, i);
        let id = event.id;
        let started = Instant::now();
        source_client
            .append_to_stream("live", &Default::default(), to_event_data(&event))
            .await
            .expect("live append");
        eventually("a live event on the target", PATIENCE, || async {
            matches!(read_stream(&target_client, "live").await,
                Readable::Events(events) if events.iter().any(|(_, e)| *e == id))
        })
        .await;
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("live replication latencies: {latencies:?}");

    cancel.cancel();
    let summary = run.await.unwrap().expect("clean stop");
    assert!(
        !summary.completed,
        "a continuous run ends only when cancelled"
    );
    assert_replica(
        &snapshot(&source_client).await,
        &snapshot(&target_client).await,
    );
}

/// Log output of the current thread's subscriber, to wait on.
#[derive(Clone, Default)]
struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    fn contains(&self, needle: &str) -> bool {
        self.text().contains(needle)
    }
}

impl std::io::Write for CapturedLogs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
