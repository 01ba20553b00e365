//! Source and target outages mid-run: replication resumes by itself and the
//! target ends up an exact copy.

use std::time::Duration;

use replicator_core::memory::MemoryCheckpointStore;
use replicator_core::Pipeline;
use tokio_util::sync::CancellationToken;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_then_target_outages_heal_by_themselves() {
    let source = source().await;
    let target = target().await;
    let source_client = client(&source);
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
    eventually("some progress", || async { written_now() > 200 }).await;
    source.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    source.restart().await.expect("source restarts");
    // Catch-up may have finished before the outage: new events prove that the
    // reader reconnected by itself.
    let before = written_now();
    populate(&source_client, 9, 300).await;
    eventually("progress after the source came back", || async {
        written_now() > before + 200
    })
    .await;

    target.stop().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    target.restart().await.expect("target restarts");

    populate(&source_client, 8, 300).await;
    // Both sides drop every connection while new events keep coming.
    let more = async {
        for i in 0..60 {
            let stream = format!("during-drops-{}", i % 7);
            append_retrying(&source_client, &stream, &user_event(&stream, i, i)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let drops = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            source.faults().drop_connections();
            target.faults().drop_connections();
        }
    };
    tokio::join!(more, drops);

    let target_client = client(&target);
    eventually("the target to catch up", || async {
        in_sync(&source_client, &target_client).await
    })
    .await;
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
    let source_client = client(&source);
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
    eventually("a failed attempt against the stopped target", || async {
        progress.borrow().components.target.failures_total >= 1
    })
    .await;
    target.restart().await.expect("target restarts");
    eventually("a failed attempt against the stopped source", || async {
        progress.borrow().components.source.failures_total >= 1
    })
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
        &snapshot(&client(&target)).await,
    );
}
