//! Source and target outages mid-run: replication resumes by itself and the
//! target ends up an exact copy.

use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::Pipeline;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_then_target_outages_heal_by_themselves() {
    let source = source().await;
    let target = target().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 7, 1_500).await;

    let pipeline = Pipeline::builder(
        reader(&source, 50, true),
        sink(&target, 4),
        MemoryCheckpointStore::new(),
    )
    .config(pipeline_config(20))
    .build();
    let progress = pipeline.progress();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(cancel.clone()));

    let written_now = || progress.borrow().written;
    let source_failures = || progress.borrow().components.source.failures_total;
    let target_failures = || progress.borrow().components.target.failures_total;
    eventually("some progress", PATIENCE, || async { written_now() > 200 }).await;

    // Each server comes back only once the pipeline has failed against it,
    // so the outage is one the pipeline went through, however fast it runs.
    let failed = source_failures();
    source.stop().await;
    eventually("a failed read of the stopped source", PATIENCE, || async {
        source_failures() > failed
    })
    .await;
    source.restart().await.expect("source restarts");
    // Catch-up may have finished before the outage: new events prove that the
    // reader reconnected by itself.
    let before = written_now();
    populate(&source_client, 9, 300).await;
    eventually("progress after the source came back", PATIENCE, || async {
        written_now() > before + 200
    })
    .await;

    // Events written while the target is down: the pipeline has work for it.
    let failed = target_failures();
    target.stop().await;
    populate(&source_client, 8, 300).await;
    eventually("a failed write to the stopped target", PATIENCE, || async {
        target_failures() > failed
    })
    .await;
    target.restart().await.expect("target restarts");

    // Both sides drop every connection while the pipeline is mid-write: the
    // target's write gate holds a write, so one is in flight when they drop.
    // The held writes leave the gate writing nothing before it opens, so
    // each round is a failed write the pipeline must make again.
    let gate = target.faults();
    for round in 0..3u64 {
        gate.hold_writes_after(0);
        for i in 0..20 {
            let stream = format!("during-drops-{}", i % 7);
            let n = round * 20 + i;
            append_retrying(&source_client, &stream, &user_event(&stream, n, n)).await;
        }
        eventually("a write to the target held in flight", PATIENCE, || async {
            gate.held_writes() >= 1
        })
        .await;
        let gone = gate.dropped_writes() + gate.held_writes();
        source.faults().drop_connections();
        gate.drop_connections();
        tokio::time::timeout(PATIENCE, gate.wait_for_dropped_writes(gone))
            .await
            .expect("the held writes left the gate with their connections");
        gate.release_writes();
    }

    // Replicated once the pipeline has processed the source's last record;
    // then one comparison (two full snapshots, long on a slow machine) judges
    // the copy, rather than comparing again and again against a deadline. A
    // run that ended (failed) meanwhile shows its error below. (New clients:
    // the next call on one whose connection was just dropped fails.)
    let source_client = client(&source.connection_string());
    let head = all_positions(&source_client).await.last().copied();
    eventually(
        "the pipeline to process the source's last record",
        PATIENCE,
        || async { run.is_finished() || progress.borrow().processed >= head },
    )
    .await;
    let target_client = client(&target.connection_string());
    cancel.cancel();
    run.await
        .unwrap()
        .expect("the run ends cleanly after the outages");
    assert_replica(
        &snapshot(&source_client).await,
        &snapshot(&target_client).await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_while_both_servers_are_down_recovers_once_they_are_up() {
    let source = source().await;
    let target = target().await;
    let source_client = client(&source.connection_string());
    populate(&source_client, 10, 100).await;
    // A client whose first connection fails never connects again: the reader
    // and sink must build new ones.
    source.stop().await;
    target.stop().await;

    let pipeline = Pipeline::builder(
        reader(&source, 50, false),
        sink(&target, 2),
        MemoryCheckpointStore::new(),
    )
    .config(pipeline_config(10))
    .build();
    let progress = pipeline.progress();
    let run = tokio::spawn(pipeline.run(CancellationToken::new()));
    // Each server comes back only once the pipeline has failed against it (a
    // failed attempt counted in its health), so reconnecting is what is
    // tested. The start-up checks the target first, then the source.
    eventually(
        "a failed attempt against the stopped target",
        PATIENCE,
        || async { progress.borrow().components.target.failures_total >= 1 },
    )
    .await;
    target.restart().await.expect("target restarts");
    eventually(
        "a failed attempt against the stopped source",
        PATIENCE,
        || async { progress.borrow().components.source.failures_total >= 1 },
    )
    .await;
    source.restart().await.expect("source restarts");

    let summary = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the run finishes once both servers are up")
        .unwrap()
        .expect("no error");
    assert!(summary.completed);
    assert_replica(
        &snapshot(&source_client).await,
        &snapshot(&client(&target.connection_string())).await,
    );
}
